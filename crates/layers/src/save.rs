//! Model directories: loading Hugging Face checkpoints and our own format, saving ours, and
//! exporting any pruned model for `transformers`. Every write goes to a temporary file or
//! directory first and is renamed into place, so a failure never leaves half an output.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{AttentionBlock, FeedForwardBlock, LoadError, ModelConfig, Transformer, hf, tensorio};

/// File name of our config in a model directory.
pub const SHEARS_CONFIG: &str = "shears.json";
/// File name of the weights in a model directory (ours and Hugging Face's).
pub const WEIGHTS: &str = "model.safetensors";
/// Version of our directory format.
pub const FORMAT_VERSION: u32 = 1;

/// `shears.json`: the format version and the model config (per-layer sizes included).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShearsFile {
    format_version: u32,
    config: ModelConfig,
}

/// Writes `bytes` to `path` through a temporary sibling and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    let io = |e: std::io::Error| LoadError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

/// What writing an output does when something is already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Existing {
    /// Refuse a file or a non-empty directory ([`LoadError::OutputExists`]); an empty
    /// directory is replaced. What every command does without `--force`.
    #[default]
    Refuse,
    /// Replace it, once the new output is complete (`--force`).
    Replace,
}

impl Existing {
    /// `Replace` when `force`, else `Refuse`.
    pub fn from_force(force: bool) -> Self {
        if force { Self::Replace } else { Self::Refuse }
    }
}

/// Whether `existing` allows writing `dir`: with [`Existing::Refuse`], `dir` must be
/// absent or an empty directory. Commands call it before their work, so a refusal costs
/// nothing; [`write_dir_atomic`] checks again before it puts the output in place.
pub fn check_output(dir: &Path, existing: Existing) -> Result<(), LoadError> {
    if existing == Existing::Replace {
        return Ok(());
    }
    let taken = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        // A file, or a directory we cannot list: not ours to replace.
        Err(_) => true,
    };
    if taken {
        return Err(LoadError::OutputExists {
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Fills a fresh temporary directory beside `dir` with `fill`, then puts it in place of
/// `dir`. What is already at `dir` is refused or replaced as `existing` says (checked before
/// `fill` and again before the rename); a replaced one goes only once the new one is
/// complete.
pub fn write_dir_atomic(
    dir: &Path,
    existing: Existing,
    fill: impl FnOnce(&Path) -> Result<(), LoadError>,
) -> Result<(), LoadError> {
    check_output(dir, existing)?;
    let io = |p: &Path, e: std::io::Error| LoadError::Io {
        path: p.to_path_buf(),
        reason: e.to_string(),
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| io(&parent, e))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Err(e) = check_output(dir, existing) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = dir.exists();
    if had_old && let Err(e) = std::fs::rename(dir, &old) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io(dir, e));
    }
    if let Err(e) = std::fs::rename(&tmp, dir) {
        // Put the old output back rather than leave it under a hidden name.
        if had_old {
            let _ = std::fs::rename(&old, dir);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io(dir, e));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// Reads the config of a model directory: ours (`shears.json`) if present, else Hugging
/// Face's `config.json`.
pub fn read_config(dir: &Path) -> Result<ModelConfig, LoadError> {
    let ours = dir.join(SHEARS_CONFIG);
    if ours.exists() {
        let text = std::fs::read_to_string(&ours).map_err(|e| LoadError::Io {
            path: ours.clone(),
            reason: e.to_string(),
        })?;
        let file: ShearsFile = serde_json::from_str(&text).map_err(|e| LoadError::Config {
            path: ours.clone(),
            message: e.to_string(),
        })?;
        if file.format_version != FORMAT_VERSION {
            return Err(LoadError::Config {
                path: ours,
                message: format!(
                    "format_version {} is not {FORMAT_VERSION}",
                    file.format_version
                ),
            });
        }
        return Ok(file.config);
    }
    let hf_config = dir.join("config.json");
    if !hf_config.exists() {
        return Err(LoadError::Io {
            path: dir.to_path_buf(),
            reason: format!("no {SHEARS_CONFIG} or config.json in the model directory"),
        });
    }
    ModelConfig::from_hf_file(&hf_config)
}

/// The sizes of `config`, checked against the weights read from `dir` before a model of
/// that size is allocated: a config whose sizes the weights cannot back (a `vocab_size` of
/// 10^15, say) is an error naming the key and both files, not an allocation that aborts.
/// Every size is an axis of a weight matrix whose other axis is `d_model` (the embeddings,
/// the projections), so none of these products can exceed the values the file holds, and
/// the parameter count cannot exceed twice them (buffers are not counted; extra tensors
/// such as a task head only add to what the file holds).
fn check_sizes(
    config: &ModelConfig,
    tensors: &shears_spaces::TensorMap,
    dir: &Path,
) -> Result<(), LoadError> {
    let held: usize = tensors.values().map(|t| t.data.len()).sum();
    let config_file = if dir.join(SHEARS_CONFIG).exists() {
        dir.join(SHEARS_CONFIG)
    } else {
        dir.join("config.json")
    };
    let bad = |what: String| LoadError::Config {
        path: config_file.clone(),
        message: format!(
            "{what}, but `{}` holds {held} values in {} tensors: the config does not describe these weights",
            dir.join(WEIGHTS).display(),
            tensors.len()
        ),
    };
    let d = config.d_model;
    if d > held {
        return Err(bad(format!("`d_model` is {d}")));
    }
    // Zero widths have no weights to initialise (Burn's initialisers divide by them).
    if d == 0 {
        return Err(bad("`d_model` is 0".into()));
    }
    if let Some((l, lc)) = config
        .layers
        .iter()
        .enumerate()
        .find(|(_, lc)| lc.n_heads > 0 && lc.d_head == 0)
    {
        return Err(bad(format!(
            "layer {l} has {} heads of width 0",
            lc.n_heads
        )));
    }
    if config.n_layers() > tensors.len().min(crate::MAX_LAYERS_OR_HEADS) {
        return Err(bad(format!("the config has {} layers", config.n_layers())));
    }
    // (key, size, the other axis of a weight it is an axis of): every product is a tensor.
    let mut sizes = vec![
        ("vocab_size", config.vocab_size, d),
        ("max_positions", config.max_positions, d),
        ("type_vocab_size", config.type_vocab_size, d),
    ];
    if let Some(p) = config.d_pooler {
        sizes.push(("d_pooler", p, d));
    }
    for lc in &config.layers {
        let attn = lc.n_heads.saturating_mul(lc.d_head);
        sizes.push(("d_ff", lc.d_ff, d));
        sizes.push(("n_heads x d_head", attn, d));
        // A factorized projection stores [in, rank] and [rank, out].
        let widest = d.max(lc.d_ff).max(attn);
        sizes.extend(lc.ranks.values().map(|&r| ("rank", r, widest)));
    }
    if let Some((key, v, other)) = sizes
        .into_iter()
        .find(|&(_, v, other)| v.saturating_mul(other.max(1)) > held)
    {
        return Err(bad(format!("`{key}` is {v} (a weight of {v} x {other})")));
    }
    // Every weight is at most `held` values and there are at most 4,096 layers, so the count
    // below stays under 2^16 `held` and cannot overflow. Twice the file: a model a tensor
    // or two short is left to the loader's error naming the missing key.
    let need = config.param_count();
    if need > held.saturating_mul(2) {
        return Err(bad(format!(
            "the config describes {need} parameters in {} layers",
            config.n_layers()
        )));
    }
    Ok(())
}

impl<B: Backend, A: AttentionBlock<B>, F: FeedForwardBlock<B>> Transformer<B, A, F> {
    /// Loads a model directory: ours (`shears.json` + `model.safetensors`) or a Hugging
    /// Face BERT / GPT-2 / RoBERTa (`config.json` + `model.safetensors`, `pruned_heads`
    /// honoured, task prefixes `bert.` / `transformer.` / `roberta.` stripped). A task head in a Hugging Face checkpoint
    /// is skipped with a logged note; [`Transformer::load_with_head`] returns it.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, LoadError> {
        let (model, head) = Self::load_with_head(dir, device)?;
        if !head.is_empty() {
            tracing::info!(
                "{}: task head {:?} not loaded (a backbone alone was asked for)",
                dir.display(),
                head.keys().collect::<Vec<_>>()
            );
        }
        Ok(model)
    }

    /// [`Transformer::load`], returning also a Hugging Face checkpoint's sequence-classifier
    /// head (`classifier.*`, Hugging Face keys and layout; empty when there is none, and
    /// always for our own format, whose head lives beside the backbone; RoBERTa's
    /// `classifier.out_proj` under these names, its `classifier.dense` being the pooler).
    /// An encoder checkpoint without a pooler loads as a model without one; BERT's `cls.*`
    /// and RoBERTa's `lm_head.*` heads, a stale pooler beside RoBERTa's classifier, and
    /// GPT-2's tied `lm_head.weight` are skipped with a logged note.
    pub fn load_with_head(
        dir: &Path,
        device: &B::Device,
    ) -> Result<(Self, shears_spaces::TensorMap), LoadError> {
        let mut config = read_config(dir)?;
        let weights = dir.join(WEIGHTS);
        let tensors = hf::read_safetensors(&weights)?;
        check_sizes(&config, &tensors, dir)?;
        if dir.join(SHEARS_CONFIG).exists() {
            let model = Self::new(&config, device);
            return Ok((
                tensorio::import(model, &tensors, device)?,
                Default::default(),
            ));
        }
        let checkpoint = hf::normalize(config.family, tensors);
        if config.d_pooler.is_some() && !hf::has_pooler(config.family, &checkpoint) {
            config.d_pooler = None;
        }
        let model = Self::new(&config, device);
        let parts = hf::from_hf(config.family, checkpoint, &tensorio::param_shapes(&model))?;
        if !parts.skipped.is_empty() {
            tracing::info!(
                "{}: skipped {} head tensor(s) shears does not use: {}",
                dir.display(),
                parts.skipped.len(),
                parts.skipped.join(", ")
            );
        }
        Ok((
            tensorio::import(model, &parts.backbone, device)?,
            parts.head,
        ))
    }

    /// Saves in our format: `shears.json` (config with per-layer sizes) and
    /// `model.safetensors` (our parameter paths, Burn layout). An existing `dir` is replaced
    /// once the new one is complete: commands check [`check_output`] first.
    pub fn save(&self, dir: &Path) -> Result<(), LoadError> {
        let file = ShearsFile {
            format_version: FORMAT_VERSION,
            config: self.config().clone(),
        };
        let json = serde_json::to_string_pretty(&file).expect("config serialises");
        let tensors = tensorio::export(self);
        write_dir_atomic(dir, Existing::Replace, |tmp| {
            write_atomic(&tmp.join(SHEARS_CONFIG), json.as_bytes())?;
            hf::write_safetensors(&tmp.join(WEIGHTS), &tensors)
        })
    }

    /// Writes a Hugging Face directory of the model's family. Tokenizer files from `copy_from` (if
    /// given) are copied alongside. An existing `dir` is replaced once the new one is
    /// complete: commands check [`check_output`] first.
    ///
    /// When only heads were removed ([`hf::plain`]): `config.json` with `pruned_heads` and
    /// weights under Hugging Face keys, which `BertModel` / `RobertaModel` /
    /// `GPT2LMHeadModel` load; a layer
    /// without heads gets one all-zero placeholder head, which `transformers` can run and
    /// which computes the same function (see [`hf::with_placeholder_heads`]). Any other
    /// pruned shape (per-layer FFN widths, a smaller hidden size, layers without neurons):
    /// a `shears_bert` (BERT, RoBERTa) / `shears_gpt2` config ([`hf::shears_hf_config`]) and its modeling
    /// file ([`hf::shears_modeling`]), which `transformers` loads with
    /// `trust_remote_code=True`, and shears loads back.
    pub fn export_hf(&self, dir: &Path, copy_from: Option<&Path>) -> Result<(), LoadError> {
        self.export_hf_with_head(dir, copy_from, None)
    }

    /// [`Transformer::export_hf`] with a task head on top (e.g.
    /// `BertForSequenceClassification`): the backbone's keys get the head's prefix, the
    /// head's tensors and config entries are added.
    pub fn export_hf_with_head(
        &self,
        dir: &Path,
        copy_from: Option<&Path>,
        head: Option<&hf::HfHead>,
    ) -> Result<(), LoadError> {
        self.export_hf_as(dir, copy_from, head, hf::Dtype::F32)
            .map(|_| ())
    }

    /// [`Transformer::export_hf_with_head`] with the weights written as `dtype` (recorded
    /// as `torch_dtype` in `config.json` when not F32); returns the cast error.
    pub fn export_hf_as(
        &self,
        dir: &Path,
        copy_from: Option<&Path>,
        head: Option<&hf::HfHead>,
        dtype: hf::Dtype,
    ) -> Result<hf::CastReport, LoadError> {
        hf::check_exportable(self.config())?;
        let family = self.config().family;
        let plain = hf::plain(self.config());
        // transformers' own classes run a layer without heads only with a placeholder head.
        let (config, ours) = if plain {
            hf::with_placeholder_heads(self.config(), &tensorio::export(self))
        } else {
            (self.config().clone(), tensorio::export(self))
        };
        let mut value = if plain {
            hf::plain_hf_config(&config)?
        } else {
            hf::shears_hf_config(&config)?
        };
        let tensors = hf::to_hf(family, &ours)?;
        let tensors = family
            .spec()
            .finish_export(plain, &mut value, tensors, head)?;
        if dtype != hf::Dtype::F32 {
            let obj = value.as_object_mut().expect("config.json is an object");
            obj.insert("torch_dtype".into(), dtype.torch_name().into());
            // transformers 4.56+ writes `dtype`.
            if obj.contains_key("dtype") {
                obj.insert("dtype".into(), dtype.torch_name().into());
            }
        }
        let json = serde_json::to_string_pretty(&value).expect("config serialises");
        let mut report = None;
        write_dir_atomic(dir, Existing::Replace, |tmp| {
            write_atomic(&tmp.join("config.json"), json.as_bytes())?;
            report = Some(hf::write_safetensors_as(
                &tmp.join(WEIGHTS),
                &tensors,
                dtype,
            )?);
            if !plain {
                let (file, code) = hf::shears_modeling(family);
                write_atomic(&tmp.join(file), code.as_bytes())?;
            }
            if let Some(src) = copy_from {
                for f in [
                    "tokenizer.json",
                    "vocab.txt",
                    "tokenizer_config.json",
                    "special_tokens_map.json",
                    "vocab.json",
                    "merges.txt",
                ] {
                    let from = src.join(f);
                    if from.exists() {
                        std::fs::copy(&from, tmp.join(f)).map_err(|e| LoadError::Io {
                            path: from.clone(),
                            reason: e.to_string(),
                        })?;
                    }
                }
            }
            Ok(())
        })?;
        Ok(report.expect("the weights were written"))
    }
}
