//! Hugging Face checkpoints: reading and writing safetensors, mapping a checkpoint onto our
//! parameter paths through a family's key table ([`crate::family`]), and the `config.json`
//! of an export that `transformers` 4.x loads with `from_pretrained`.

use std::path::Path;

use shears_spaces::{HostTensor, TensorMap};

use crate::family::Transform;
use crate::{Family, LoadError, ModelConfig};

/// Reads every tensor of a safetensors file as f32 (F32, F16 and BF16 accepted; the
/// families' buffers, such as the integer `position_ids`, are skipped).
pub fn read_safetensors(path: &Path) -> Result<TensorMap, LoadError> {
    let bytes = std::fs::read(path).map_err(|e| LoadError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| LoadError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut out = TensorMap::new();
    for (key, view) in st.tensors() {
        if Family::ALL.iter().any(|f| f.spec().is_buffer(&key)) {
            continue;
        }
        use safetensors::Dtype;
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(LoadError::Dtype {
                    key,
                    expected: "F32, F16 or BF16",
                    found: format!("{other:?}"),
                });
            }
        };
        out.insert(key, HostTensor::new(view.shape().to_vec(), data));
    }
    Ok(out)
}

/// The float type of a written weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dtype {
    /// 32-bit floats: exact.
    #[default]
    F32,
    /// IEEE half precision (largest finite value 65504).
    F16,
    /// bfloat16 (f32's range, 8 bits of mantissa).
    Bf16,
}

impl Dtype {
    /// The `torch_dtype` name `transformers` records.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" | "fp16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(format!("unknown dtype `{other}` (f32, f16 or bf16)")),
        }
    }
}

/// What writing in a narrower [`Dtype`] changed: the largest absolute difference between a
/// value and its cast (0 for F32), and the tensor that holds it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CastReport {
    /// The type written.
    pub dtype: Dtype,
    /// Largest `|cast(x) - x|` over every value.
    pub max_abs_error: f32,
    /// The tensor of that value (`None` when nothing changed).
    pub worst_tensor: Option<String>,
}

/// Writes tensors as an F32 safetensors file, through a temporary file and a rename.
pub fn write_safetensors(path: &Path, tensors: &TensorMap) -> Result<(), LoadError> {
    write_safetensors_as(path, tensors, Dtype::F32).map(|_| ())
}

/// Writes tensors as a safetensors file of `dtype`, through a temporary file and a rename,
/// and reports the cast error. A finite value the type cannot hold (beyond 65504 in F16) is
/// [`LoadError::NotRepresentable`] naming the tensor and the value, and nothing is written.
pub fn write_safetensors_as(
    path: &Path,
    tensors: &TensorMap,
    dtype: Dtype,
) -> Result<CastReport, LoadError> {
    let mut report = CastReport {
        dtype,
        ..Default::default()
    };
    let mut bytes: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::with_capacity(tensors.len());
    for (k, t) in tensors {
        let encoded: Vec<u8> = match dtype {
            Dtype::F32 => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F16 | Dtype::Bf16 => {
                let mut out = Vec::with_capacity(2 * t.data.len());
                for &v in &t.data {
                    let (b, back) = match dtype {
                        Dtype::F16 => {
                            let h = half::f16::from_f32(v);
                            (h.to_le_bytes(), h.to_f32())
                        }
                        _ => {
                            let h = half::bf16::from_f32(v);
                            (h.to_le_bytes(), h.to_f32())
                        }
                    };
                    if v.is_finite() && !back.is_finite() {
                        return Err(LoadError::NotRepresentable(format!(
                            "`{k}` holds {v}, beyond the range of {}",
                            dtype.torch_name()
                        )));
                    }
                    let err = (back - v).abs();
                    if err > report.max_abs_error {
                        report.max_abs_error = err;
                        report.worst_tensor = Some(k.clone());
                    }
                    out.extend_from_slice(&b);
                }
                out
            }
        };
        bytes.push((k.clone(), encoded, t.shape.clone()));
    }
    let st_dtype = match dtype {
        Dtype::F32 => safetensors::Dtype::F32,
        Dtype::F16 => safetensors::Dtype::F16,
        Dtype::Bf16 => safetensors::Dtype::BF16,
    };
    let views = bytes
        .iter()
        .map(|(k, b, s)| {
            safetensors::tensor::TensorView::new(st_dtype, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| LoadError::Safetensors {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = safetensors::serialize(views, None).map_err(|e| LoadError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    crate::save::write_atomic(path, &out)?;
    Ok(report)
}

/// Our path -> (checkpoint key, transform) in `family`'s key table.
fn lookup(family: Family, ours: &str) -> Option<(String, Transform)> {
    let (pattern, layer) = pattern_of(ours);
    family
        .spec()
        .keys()
        .iter()
        .find(|(o, _, _)| *o == pattern)
        .map(|(_, hf, t)| {
            let key = match layer {
                Some(l) => hf.replacen("{}", l, 1),
                None => hf.to_string(),
            };
            (key, *t)
        })
}

/// `layers.3.ffn.up.weight` -> (`layers.{}.ffn.up.weight`, Some("3")).
fn pattern_of(path: &str) -> (String, Option<&str>) {
    let mut layer = None;
    let parts: Vec<&str> = path
        .split('.')
        .map(|p| {
            if layer.is_none() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                layer = Some(p);
                "{}"
            } else {
                p
            }
        })
        .collect();
    (parts.join("."), layer)
}

/// A Hugging Face checkpoint split into what the backbone uses and what it leaves.
#[derive(Debug, Clone, Default)]
pub struct HfParts {
    /// The backbone's tensors under our parameter paths, in our layouts.
    pub backbone: TensorMap,
    /// A sequence classifier's head (`classifier.weight` `[classes, hidden]`,
    /// `classifier.bias`; RoBERTa's `classifier.out_proj.*` under these names), in the
    /// Hugging Face layout; empty when absent.
    pub head: TensorMap,
    /// Keys of heads shears does not use and skips (BERT's pre-training and masked-LM
    /// `cls.*`, RoBERTa's `lm_head.*`, GPT-2's `lm_head.weight` once checked equal to
    /// `wte.weight`).
    pub skipped: Vec<String>,
}

/// A Hugging Face checkpoint with its family's task prefixes stripped and its task head
/// under the names the key table and [`HfParts::head`] use ([`normalize`]).
#[derive(Debug, Clone, Default)]
pub struct Normalized {
    /// The tensors.
    pub tensors: TensorMap,
    /// Keys dropped on the way (a stale pooler beside RoBERTa's classifier head).
    pub skipped: Vec<String>,
}

/// Strips `family`'s task prefixes from `checkpoint`'s keys and puts its task head under
/// the names the key table and [`HfParts::head`] use (moving the tensors, not copying).
pub fn normalize(family: Family, checkpoint: TensorMap) -> Normalized {
    let spec = family.spec();
    let stripped = checkpoint
        .into_iter()
        .map(|(k, v)| {
            let k = spec
                .prefixes()
                .iter()
                .find_map(|p| k.strip_prefix(p))
                .map_or(k.clone(), str::to_string);
            (k, v)
        })
        .collect();
    let mut skipped = Vec::new();
    let tensors = spec.normalize(stripped, &mut skipped);
    Normalized { tensors, skipped }
}

/// Whether a normalized checkpoint of `family` has a pooler (RoBERTa's classifier's dense
/// layer is one): `BertForMaskedLM`, `RobertaModel` without one and some task checkpoints
/// have none.
pub fn has_pooler(family: Family, checkpoint: &Normalized) -> bool {
    family.arch().pooler
        && lookup(family, "pooler.weight")
            .is_some_and(|(key, _)| checkpoint.tensors.contains_key(&key))
}

/// Maps a [`normalize`]d Hugging Face checkpoint onto our parameter paths, for a model whose parameters
/// have shapes `expected`. Every parameter must be found with the right shape and every
/// checkpoint tensor used, except buffers, a sequence classifier's head (returned in
/// [`HfParts::head`]) and the heads the family skips (listed in [`HfParts::skipped`]:
/// BERT's `cls.*`, RoBERTa's `lm_head.*`, a GPT-2 `lm_head.weight` equal to
/// `wte.weight`). A GPT-2 `lm_head.weight` that differs from `wte.weight` is
/// [`LoadError::UntiedLmHead`]: shears' GPT-2 ties them.
pub fn from_hf(
    family: Family,
    checkpoint: Normalized,
    expected: &std::collections::BTreeMap<String, Vec<usize>>,
) -> Result<HfParts, LoadError> {
    let Normalized {
        tensors: ckpt,
        skipped,
    } = checkpoint;
    let mut used = std::collections::BTreeSet::new();
    let mut parts = HfParts {
        skipped,
        ..Default::default()
    };
    for (ours, shape) in expected {
        let (key, transform) = lookup(family, ours).ok_or_else(|| LoadError::MissingKey {
            key: ours.clone(),
            expected: shape.clone(),
        })?;
        let t = ckpt.get(&key).ok_or_else(|| LoadError::MissingKey {
            key: key.clone(),
            expected: expected_hf_shape(shape, transform),
        })?;
        used.insert(key.clone());
        let converted = match transform {
            Transform::Same => t.clone(),
            Transform::Transpose if t.shape.len() == 2 => t.transpose(),
            Transform::Third(i) if t.shape.last().is_some_and(|n| n.is_multiple_of(3)) => {
                let last = t.shape.len() - 1;
                let n = t.shape[last] / 3;
                t.select(last, &(i * n..(i + 1) * n).collect::<Vec<_>>())
            }
            _ => t.clone(),
        };
        if &converted.shape != shape {
            return Err(LoadError::Shape {
                key,
                expected: expected_hf_shape(shape, transform),
                found: t.shape.clone(),
            });
        }
        parts.backbone.insert(ours.clone(), converted);
    }
    for (key, t) in &ckpt {
        if used.contains(key) || family.spec().is_buffer(key) {
            continue;
        }
        if !family.spec().extra_tensor(key, t, &mut parts)? {
            return Err(LoadError::UnexpectedKey {
                key: key.clone(),
                found: t.shape.clone(),
            });
        }
    }
    Ok(parts)
}

fn expected_hf_shape(ours: &[usize], t: Transform) -> Vec<usize> {
    match t {
        Transform::Same => ours.to_vec(),
        Transform::Transpose => ours.iter().rev().copied().collect(),
        Transform::Third(_) => {
            let mut s = ours.to_vec();
            if let Some(l) = s.last_mut() {
                *l *= 3;
            }
            s
        }
    }
}

/// Our tensors under `family`'s Hugging Face keys (no task prefix) and layouts: Linear
/// weights `[out, in]`, GPT-2's query, key and value joined into `c_attn` (Conv1D,
/// `[in, 3 x out]`).
pub fn to_hf(family: Family, tensors: &TensorMap) -> Result<TensorMap, LoadError> {
    let mut out = TensorMap::new();
    let mut fused: std::collections::BTreeMap<String, [Option<&HostTensor>; 3]> =
        Default::default();
    for (ours, t) in tensors {
        let (key, transform) = lookup(family, ours).ok_or_else(|| {
            if ours.ends_with(".first") || ours.ends_with(".second") {
                LoadError::NotRepresentable(format!(
                    "`{ours}` belongs to a factorized (low-rank) projection, which the Hugging Face export cannot represent"
                ))
            } else {
                LoadError::NotRepresentable(format!("no Hugging Face {family} key for `{ours}`"))
            }
        })?;
        match transform {
            Transform::Same => {
                out.insert(key, t.clone());
            }
            Transform::Transpose => {
                out.insert(key, t.transpose());
            }
            Transform::Third(i) => fused.entry(key).or_default()[i] = Some(t),
        }
    }
    for (key, parts) in fused {
        let [Some(q), Some(k), Some(v)] = parts else {
            return Err(LoadError::NotRepresentable(format!(
                "`{key}` lacks one of query, key and value"
            )));
        };
        out.insert(key, concat_last(&[q, k, v]));
    }
    Ok(out)
}

/// A sequence-classifier head added to a Hugging Face export (see
/// [`crate::Transformer::export_hf_with_head`]); the family puts it under its own names
/// and `architectures` (`BertForSequenceClassification`,
/// `RobertaForSequenceClassification`, ...).
#[derive(Debug, Clone)]
pub struct HfHead {
    /// `classifier.weight` `[classes, d_pooler]` and `classifier.bias`, in the Hugging
    /// Face layout.
    pub tensors: TensorMap,
    /// Config entries of the head (`id2label`, `label2id`, ...).
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// `transformers` 4.x cannot run a BERT or GPT-2 layer without heads (BERT's attention
/// reshapes the empty `[batch, seq, 0]` projection with a `-1` axis and fails), so a
/// headless layer is exported with one placeholder head (original head 0) whose query, key,
/// value and output weights and biases are all zero. Its context is zero whatever it
/// attends to, so the layer computes exactly what the headless layer computes: the output
/// bias alone. Returns the config and tensors to export (unchanged when every layer has a
/// head).
pub fn with_placeholder_heads(
    config: &ModelConfig,
    tensors: &TensorMap,
) -> (ModelConfig, TensorMap) {
    let mut config = config.clone();
    let mut tensors = tensors.clone();
    let d = config.d_model;
    for (l, lc) in config.layers.iter_mut().enumerate() {
        if lc.n_heads > 0 {
            continue;
        }
        let dh = lc.d_head;
        lc.n_heads = 1;
        lc.head_ids = vec![0];
        let zeros =
            |shape: Vec<usize>| HostTensor::new(shape.clone(), vec![0.0; shape.iter().product()]);
        for p in ["query", "key", "value"] {
            let base = format!("layers.{l}.attention.{p}");
            tensors.insert(format!("{base}.weight"), zeros(vec![d, dh]));
            tensors.insert(format!("{base}.bias"), zeros(vec![dh]));
        }
        tensors.insert(
            format!("layers.{l}.attention.output.weight"),
            zeros(vec![dh, d]),
        );
    }
    (config, tensors)
}

/// The shape transformers' own BERT / GPT-2 hold after `prune_heads`: the original head
/// count (hidden size / head size), the FFN width every layer shares, and `pruned_heads`
/// (the original heads each layer lost). Refuses per-layer FFN widths or head sizes, a
/// pruned hidden size (read from `hidden_key` of the original config), and kept heads
/// beyond the original count, naming what differs.
pub(crate) fn head_pruned_shape(
    config: &ModelConfig,
    hidden_key: &str,
    name: &str,
) -> Result<(usize, usize, serde_json::Map<String, serde_json::Value>), LoadError> {
    let first = &config.layers[0];
    let (d_head, d_ff) = (first.d_head, first.d_ff);
    // transformers has hidden = heads x d_head before pruning.
    let n_orig_heads = config.d_model / d_head.max(1);
    for (l, lc) in config.layers.iter().enumerate() {
        if let Some(&h) = lc.head_ids.iter().find(|&&h| h >= n_orig_heads) {
            return Err(LoadError::NotRepresentable(format!(
                "layer {l} keeps original head {h}, but hidden size {} holds only {n_orig_heads} heads \
                 of {d_head}: Hugging Face {name} cannot represent pruned hidden dimensions",
                config.d_model
            )));
        }
        if lc.d_head != d_head || lc.d_ff != d_ff {
            return Err(LoadError::NotRepresentable(format!(
                "layer {l} has d_head {} and d_ff {} but layer 0 has {d_head} and {d_ff}; \
                 Hugging Face {name} needs equal sizes in every layer",
                lc.d_head, lc.d_ff
            )));
        }
    }
    let orig_hidden = config
        .hf_config
        .as_ref()
        .and_then(|v| v.get(hidden_key))
        .and_then(|v| v.as_u64())
        .map_or(config.d_model, |v| v as usize);
    if orig_hidden != config.d_model || n_orig_heads * d_head != config.d_model {
        return Err(LoadError::NotRepresentable(format!(
            "hidden size {} is not {n_orig_heads} heads x {d_head}: Hugging Face {name} cannot \
             represent pruned hidden dimensions",
            config.d_model
        )));
    }
    let pruned = config
        .layers
        .iter()
        .enumerate()
        .filter_map(|(l, lc)| {
            let gone: Vec<usize> = (0..n_orig_heads)
                .filter(|h| !lc.head_ids.contains(h))
                .collect();
            (!gone.is_empty()).then(|| (l.to_string(), serde_json::json!(gone)))
        })
        .collect();
    Ok((n_orig_heads, d_ff, pruned))
}

/// `model_type` of the BERT (and RoBERTa) that shears exports when `transformers`' own
/// classes cannot hold the shape (per-layer FFN widths, a pruned hidden size, layers
/// without heads or neurons).
pub const SHEARS_BERT: &str = "shears_bert";
/// `model_type` of the GPT-2 that shears exports when `transformers`' own GPT-2 cannot hold
/// the shape.
pub const SHEARS_GPT2: &str = "shears_gpt2";

/// The modeling file written beside a `shears_*` export of `family`: its file name and its
/// code, a model with per-layer head counts and FFN widths that `transformers` loads with
/// `trust_remote_code=True` through the config's `auto_map`.
pub fn shears_modeling(family: Family) -> (&'static str, &'static str) {
    family.spec().modeling()
}

/// The `config.json` of `transformers`' own class of the family (`BertModel`,
/// `GPT2LMHeadModel`, `RobertaModel`) for a model whose only change is removed heads:
/// the original config with `pruned_heads` (original head indices per layer). Refuses
/// other shapes, naming what differs.
pub fn plain_hf_config(config: &ModelConfig) -> Result<serde_json::Value, LoadError> {
    config.family.spec().plain_config(config)
}

/// Whether `transformers`' own class of the family (with `pruned_heads` and placeholder
/// heads) can hold `config`: every layer of the same FFN width and head size, the hidden
/// size the original's (heads x head size, every kept head one of them), no factorized
/// projection, and a checkpoint that was not itself a `shears_*` export.
pub fn plain(config: &ModelConfig) -> bool {
    let spec = config.family.spec();
    spec.plain_config(&with_placeholder_heads(config, &TensorMap::new()).0)
        .is_ok()
        && config
            .hf_config
            .as_ref()
            .is_none_or(|v| v.get("model_type").and_then(|t| t.as_str()) == Some(spec.model_type()))
        && config.layers.iter().all(|l| l.ranks.is_empty())
}

/// The `config.json` of a model of any pruned shape, for the family's
/// [`shears_modeling`] file: per-layer head counts (`layer_num_heads`, with the original
/// head of each kept one in `layer_head_ids`) and FFN widths (`layer_intermediate_sizes`),
/// the hidden size, and an `auto_map` naming the modeling file's classes. The keys are the
/// same for every family (BERT's names); the family adds its own (BERT its pooler and
/// token types, RoBERTa its position offset, GPT-2 its embedding dropout and special
/// tokens).
pub fn shears_hf_config(config: &ModelConfig) -> Result<serde_json::Value, LoadError> {
    let d_head = config.layers.first().map_or(64, |l| l.d_head);
    if let Some((l, lc)) = config
        .layers
        .iter()
        .enumerate()
        .find(|(_, lc)| lc.d_head != d_head)
    {
        return Err(LoadError::NotRepresentable(format!(
            "layer {l} has heads of {} but layer 0 of {d_head}: the export has one head size",
            lc.d_head
        )));
    }
    let mut value = serde_json::json!({
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "layer_num_heads": config.layers.iter().map(|l| l.n_heads).collect::<Vec<_>>(),
        "layer_head_ids": config.layers.iter().map(|l| l.head_ids.clone()).collect::<Vec<_>>(),
        "attention_head_size": d_head,
        "layer_intermediate_sizes": config.layers.iter().map(|l| l.d_ff).collect::<Vec<_>>(),
        "hidden_act": config.activation.hf_name(),
        "hidden_dropout_prob": config.dropout.hidden,
        "attention_probs_dropout_prob": config.dropout.attention,
        "max_position_embeddings": config.max_positions,
        "initializer_range": config.initializer_range,
        "layer_norm_eps": config.layer_norm_eps,
    });
    let extra = config.family.spec().shears_config(config);
    value
        .as_object_mut()
        .expect("a JSON object")
        .extend(extra.as_object().expect("a JSON object").clone());
    Ok(value)
}

/// Whether [`crate::Transformer::export_hf`] can write `config`: a model without factorized
/// projections, of any pruned shape.
pub fn check_exportable(config: &ModelConfig) -> Result<(), LoadError> {
    if let Some((l, name)) = config
        .layers
        .iter()
        .enumerate()
        .find_map(|(l, lc)| lc.ranks.keys().next().map(|n| (l, n)))
    {
        return Err(LoadError::NotRepresentable(format!(
            "`layers.{l}.{name}` is factorized (low-rank), which the Hugging Face export cannot represent"
        )));
    }
    if plain(config) {
        return Ok(());
    }
    shears_hf_config(config).map(|_| ())
}

/// Concatenates tensors along their last axis (equal leading axes).
fn concat_last(parts: &[&HostTensor]) -> HostTensor {
    let lead: Vec<usize> = parts[0].shape[..parts[0].shape.len() - 1].to_vec();
    let rows: usize = lead.iter().product();
    let widths: Vec<usize> = parts
        .iter()
        .map(|p| *p.shape.last().unwrap_or(&0))
        .collect();
    let mut data = Vec::with_capacity(rows * widths.iter().sum::<usize>());
    for r in 0..rows {
        for (p, &w) in parts.iter().zip(&widths) {
            data.extend_from_slice(&p.data[r * w..(r + 1) * w]);
        }
    }
    let mut shape = lead;
    shape.push(widths.iter().sum());
    HostTensor::new(shape, data)
}
