//! The experiment config: one TOML file (read with the `config` crate), overridden by
//! `SHEARS_<SECTION>__<KEY>` environment variables and then by `--set section.key=value`
//! flags. Every key is known: an unknown one is an error naming it, and every number is
//! range-checked before anything runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// What the experiment trains the model for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Sequence classification with a linear head on an encoder's pooled output; reports accuracy.
    Classification,
    /// Next-token language modelling with GPT-2's tied head; reports perplexity.
    Lm,
}

/// What `gated.target_sparsity` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetMeasure {
    /// The fraction of gated units closed (every head, neuron or block counts one).
    Units,
    /// The fraction of the layer stack's parameters removed.
    Params,
    /// The fraction of the layer stack's FLOPs per token at `data.max_len` removed.
    Flops,
}

/// A whole experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Experiment {
    /// Name, used in reports.
    pub name: String,
    /// Classification or language modelling.
    pub task: Task,
    /// Seed of the split, the data order, the head and the gates.
    pub seed: u64,
    /// The model to start from.
    pub model: ModelSection,
    /// The dataset.
    pub data: DataSection,
    /// Phase 1: fine-tune the dense model (or, for `init` models, train it from scratch).
    pub dense: PhaseSection,
    /// Phase 2: train with gates toward the target sparsity.
    pub gated: GatedSection,
    /// Phase 3: fine-tune the pruned model.
    pub finetune: PhaseSection,
    /// Distillation from the dense model in phases 2 and 3.
    pub distill: crate::distill::DistillSection,
    /// The dense baseline the pruned model is compared with.
    pub baseline: BaselineSection,
    /// Evaluation and latency measurement.
    pub eval: EvalSection,
    /// Checkpoints.
    pub checkpoint: CheckpointSection,
    /// Overrides applied by `--quick` (same keys as the rest of the file).
    #[serde(skip_serializing)]
    pub quick: Option<serde_json::Value>,
}

/// `[baseline]`: how long the dense baseline trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineSection {
    /// Train the dense model as long as the pruned model's whole path (`dense.epochs +
    /// gated.epochs + finetune.epochs`) and compare with its best validation epoch; the
    /// teacher and the gated phase's start stay the best epoch within `dense.epochs`.
    /// `false`: the baseline is the teacher itself (shorter, and flattering to the pruned
    /// model).
    pub match_path: bool,
}

impl Default for BaselineSection {
    fn default() -> Self {
        Self { match_path: true }
    }
}

/// Where the model comes from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// A checkpoint directory (Hugging Face BERT / RoBERTa / GPT-2, or shears' own format). Its
    /// tokenizer is read from the same directory unless `tokenizer` is set.
    pub path: Option<PathBuf>,
    /// A fresh GPT-2 to train from scratch instead of loading one.
    pub init: Option<InitSection>,
    /// Directory with `tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt`.
    pub tokenizer: Option<PathBuf>,
}

/// Sizes of a fresh GPT-2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitSection {
    /// Vocabulary size (the tokenizer's).
    pub vocab_size: usize,
    /// Longest sequence.
    pub max_positions: usize,
    /// Width.
    pub d_model: usize,
    /// Layers.
    pub n_layers: usize,
    /// Heads per layer.
    pub n_heads: usize,
    /// Feed-forward width.
    pub d_ff: usize,
    /// Dropout probability in training, of the blocks' outputs, the attention probabilities
    /// and the embeddings (GPT-2's `resid_pdrop`, `attn_pdrop` and `embd_pdrop`: 0.1).
    #[serde(default = "gpt2_dropout")]
    pub dropout: f64,
}

fn gpt2_dropout() -> f64 {
    0.1
}

/// The dataset file and how to read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// A CSV (with a header) or JSON-lines file, optionally bzip2-compressed (`.bz2`).
    pub path: PathBuf,
    /// Column (CSV) or field (JSON) holding the text.
    pub text_column: String,
    /// Column or field holding the label (classification only).
    pub label_column: String,
    /// The labels to use, in class order. Rows with any other label are dropped (the
    /// Rotten Tomatoes file's `plot` rows). Empty: every label seen, sorted.
    pub labels: Vec<String>,
    /// Train / validation / test fractions (they must sum to 1).
    pub split: [f64; 3],
    /// Tokens per example (classification: truncation; LM: block length).
    pub max_len: usize,
    /// Use at most this many usable rows (0: all). Applied after shuffling (a language
    /// model's: whole documents, the last cut).
    pub limit: usize,
    /// Language modelling: the column (field) naming the document a row belongs to; the
    /// rows of one document stay in one split. Empty: every row is a document.
    pub document_column: String,
    /// Language modelling: more files of the corpus (`[[data.extra]]`), read as `path` is
    /// and split with it.
    pub extra: Vec<ExtraSource>,
}

/// Another file of a language model's corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraSource {
    /// A CSV or JSON-lines file, optionally bzip2-compressed.
    pub path: PathBuf,
    /// Column (field) holding the text.
    #[serde(default = "text_column")]
    pub text_column: String,
    /// Column (field) naming the document of a row; empty: every row is a document.
    #[serde(default)]
    pub document_column: String,
}

fn text_column() -> String {
    "text".into()
}

/// One training phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PhaseSection {
    /// Passes over the training split (fractions allowed; 0 skips the phase).
    pub epochs: f64,
    /// Peak learning rate (AdamW; linear warm-up over 6% of the steps, then linear decay).
    pub lr: f64,
    /// Examples per step.
    pub batch_size: usize,
}

/// The gated phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatedSection {
    /// Passes over the training split.
    pub epochs: f64,
    /// Learning rate of the model weights.
    pub lr: f64,
    /// Learning rate of the gates (`log α`), which must move much faster than the weights.
    pub gate_lr: f64,
    /// Ascent rate of the Lagrange multipliers.
    pub lagrangian_lr: f64,
    /// Initial λ₂: a quadratic penalty on the gap to the target from the first step.
    pub quadratic_init: f64,
    /// Fraction to remove, in [0, 1), of what `target_measure` counts.
    pub target_sparsity: f64,
    /// What the target counts: `units` (closed gates), `params` or `flops` (the size of the
    /// layer stack, each unit weighed by what it costs; hardening then meets the target
    /// within one unit's cost).
    pub target_measure: TargetMeasure,
    /// Fraction of the phase over which the target rises linearly from 0.
    pub warmup_fraction: f64,
    /// Keep every FFN width and the hidden width at a multiple of this many units (or at
    /// its full width) when hardening to a `params` or `flops` target; 1: any width.
    pub round_to: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Gate attention heads.
    pub heads: bool,
    /// Gate feed-forward neurons too.
    pub neurons: bool,
    /// Gate the hidden dimensions too (one gate per dimension, shared by every layer).
    pub hidden: bool,
    /// Gate each layer's whole attention block too (closed, it removes every head).
    pub attention_blocks: bool,
    /// Gate each layer's whole feed-forward block too (closed, it removes every neuron).
    pub ffn_blocks: bool,
}

/// Evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Examples per evaluation batch.
    pub batch_size: usize,
    /// Batch size of the latency measurement.
    pub latency_batch: usize,
    /// Timed forward passes (the median is reported).
    pub latency_repeats: usize,
}

/// Checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Save a checkpoint every this many steps (and at the end of every phase); 0: only at
    /// phase ends.
    pub every: usize,
}

impl Default for Experiment {
    fn default() -> Self {
        Self {
            name: "experiment".into(),
            task: Task::Classification,
            seed: 42,
            model: ModelSection::default(),
            data: DataSection::default(),
            dense: PhaseSection::default(),
            gated: GatedSection::default(),
            finetune: PhaseSection {
                epochs: 1.0,
                ..PhaseSection::default()
            },
            distill: crate::distill::DistillSection::default(),
            baseline: BaselineSection::default(),
            eval: EvalSection::default(),
            checkpoint: CheckpointSection::default(),
            quick: None,
        }
    }
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            text_column: "text".into(),
            label_column: "label".into(),
            labels: Vec::new(),
            split: [0.8, 0.1, 0.1],
            max_len: 64,
            limit: 0,
            document_column: String::new(),
            extra: Vec::new(),
        }
    }
}

impl Default for PhaseSection {
    fn default() -> Self {
        Self {
            epochs: 2.0,
            lr: 5e-5,
            batch_size: 32,
        }
    }
}

impl Default for GatedSection {
    fn default() -> Self {
        Self {
            epochs: 3.0,
            lr: 3e-5,
            gate_lr: 0.1,
            lagrangian_lr: 0.05,
            quadratic_init: 100.0,
            target_sparsity: 0.5,
            target_measure: TargetMeasure::Units,
            warmup_fraction: 0.5,
            round_to: 1,
            batch_size: 32,
            heads: true,
            neurons: false,
            hidden: false,
            attention_blocks: false,
            ffn_blocks: false,
        }
    }
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            batch_size: 64,
            latency_batch: 32,
            latency_repeats: 10,
        }
    }
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self { every: 200 }
    }
}

/// Where a config comes from and what overrides it.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// The TOML file.
    pub file: PathBuf,
    /// Apply the file's `[quick]` table.
    pub quick: bool,
    /// Environment variables to consider (normally `std::env::vars()`); only
    /// `SHEARS_<SECTION>__<KEY>` ones (with a double underscore) are config overrides.
    pub env: Vec<(String, String)>,
    /// `section.key=value` overrides, applied last.
    pub set: Vec<String>,
}

impl Experiment {
    /// The structures the gated phase gates.
    pub fn gate_spec(&self) -> shears_pruners::GateSpec {
        shears_pruners::GateSpec {
            heads: self.gated.heads,
            neurons: self.gated.neurons,
            hidden: self.gated.hidden,
            attention_blocks: self.gated.attention_blocks,
            ffn_blocks: self.gated.ffn_blocks,
            ..Default::default()
        }
    }

    /// The size measure of the gated phase's target; `None` when it counts units.
    pub fn size_measure(&self) -> Option<shears_pruners::SizeMeasure> {
        match self.gated.target_measure {
            TargetMeasure::Units => None,
            TargetMeasure::Params => Some(shears_pruners::SizeMeasure::Params),
            TargetMeasure::Flops => Some(shears_pruners::SizeMeasure::Flops {
                seq: self.data.max_len,
            }),
        }
    }

    /// Reads, overrides and validates a config.
    pub fn load(src: &ConfigSources) -> Result<Self, TrainError> {
        let bad = |message: String| TrainError::Config {
            source_name: src.file.display().to_string(),
            message,
        };
        if !src.file.is_file() {
            return Err(bad("no such file".into()));
        }
        let file = || {
            config::File::from(src.file.as_path())
                .format(config::FileFormat::Toml)
                .required(true)
        };
        let mut builder = config::Config::builder().add_source(file());
        if src.quick {
            let base = config::Config::builder()
                .add_source(file())
                .build()
                .map_err(|e| bad(e.to_string()))?;
            let quick = base
                .get_table("quick")
                .map_err(|_| bad("`--quick` was given but the file has no [quick] table".into()))?;
            let mut flat = BTreeMap::new();
            flatten("", config::Value::from(quick), &mut flat);
            for (k, v) in flat {
                builder = builder
                    .set_override(k.as_str(), v)
                    .map_err(|e| bad(e.to_string()))?;
            }
        }
        for (k, v) in &src.env {
            let Some(rest) = k.strip_prefix("SHEARS_") else {
                continue;
            };
            if !rest.contains("__") {
                continue; // SHEARS_BACKEND, SHEARS_LOG, SHEARS_ASSETS: not config keys
            }
            let key = rest.to_lowercase().replace("__", ".");
            builder = builder
                .set_override(key.as_str(), parse_scalar(v))
                .map_err(|e| bad(format!("environment variable {k}: {e}")))?;
        }
        for s in &src.set {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| bad(format!("`--set {s}` is not key=value")))?;
            builder = builder
                .set_override(k.trim(), parse_scalar(v.trim()))
                .map_err(|e| bad(format!("`--set {s}`: {e}")))?;
        }
        let merged = builder.build().map_err(|e| bad(e.to_string()))?;
        let exp: Experiment = merged.try_deserialize().map_err(|e| bad(e.to_string()))?;
        exp.validate()?;
        Ok(exp)
    }

    /// Resolves relative paths against `base` (the workspace root for `cargo xtask`), and
    /// `@assets/...` against `assets`.
    pub fn resolve_paths(&mut self, base: &Path, assets: &Path) {
        let fix = |p: &mut PathBuf| {
            if let Ok(rest) = p.strip_prefix("@assets") {
                *p = assets.join(rest);
            } else if p.is_relative() && !p.as_os_str().is_empty() && !p.exists() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data.path);
        for x in &mut self.data.extra {
            fix(&mut x.path);
        }
        if let Some(p) = &mut self.model.path {
            fix(p);
        }
        if let Some(p) = &mut self.model.tokenizer {
            fix(p);
        }
    }

    /// Checks every value's range and the combinations.
    pub fn validate(&self) -> Result<(), TrainError> {
        let range = |key: &str, value: f64, ok: bool, expected: &str| {
            if ok {
                Ok(())
            } else {
                Err(TrainError::OutOfRange {
                    key: key.into(),
                    value: value.to_string(),
                    expected: expected.into(),
                })
            }
        };
        let g = &self.gated;
        range(
            "gated.target_sparsity",
            g.target_sparsity,
            (0.0..1.0).contains(&g.target_sparsity),
            "in [0, 1)",
        )?;
        range(
            "gated.warmup_fraction",
            g.warmup_fraction,
            (0.0..=1.0).contains(&g.warmup_fraction),
            "in [0, 1]",
        )?;
        for (name, p) in [("dense", &self.dense), ("finetune", &self.finetune)] {
            range(
                &format!("{name}.epochs"),
                p.epochs,
                p.epochs >= 0.0 && p.epochs.is_finite(),
                ">= 0",
            )?;
            range(&format!("{name}.lr"), p.lr, p.lr > 0.0, "> 0")?;
            range(
                &format!("{name}.batch_size"),
                p.batch_size as f64,
                p.batch_size > 0,
                ">= 1",
            )?;
        }
        range(
            "gated.epochs",
            g.epochs,
            g.epochs > 0.0 && g.epochs.is_finite(),
            "> 0",
        )?;
        for (k, v) in [
            ("gated.lr", g.lr),
            ("gated.gate_lr", g.gate_lr),
            ("gated.lagrangian_lr", g.lagrangian_lr),
        ] {
            range(k, v, v > 0.0, "> 0")?;
        }
        range(
            "gated.quadratic_init",
            g.quadratic_init,
            g.quadratic_init >= 0.0 && g.quadratic_init.is_finite(),
            ">= 0",
        )?;
        range(
            "gated.batch_size",
            g.batch_size as f64,
            g.batch_size > 0,
            ">= 1",
        )?;
        range("gated.round_to", g.round_to as f64, g.round_to >= 1, ">= 1")?;
        let d = &self.distill;
        range(
            "distill.temperature",
            d.temperature,
            d.temperature > 0.0 && d.temperature.is_finite(),
            "> 0",
        )?;
        for (k, v) in [
            ("distill.logit_weight", d.logit_weight),
            ("distill.layer_weight", d.layer_weight),
            ("distill.ce_weight", d.ce_weight),
        ] {
            range(k, v, v >= 0.0 && v.is_finite(), ">= 0")?;
        }
        if d.enabled && d.logit_weight + d.layer_weight + d.ce_weight == 0.0 {
            return Err(TrainError::OutOfRange {
                key: "distill.logit_weight".into(),
                value: "0".into(),
                expected: "> 0 (or distill.layer_weight / ce_weight > 0): every weight is 0".into(),
            });
        }
        if g.round_to > 1 && g.target_measure == TargetMeasure::Units {
            return Err(TrainError::OutOfRange {
                key: "gated.round_to".into(),
                value: g.round_to.to_string(),
                expected: "1 with target_measure = \"units\" (rounding widths needs a params or flops target)".into(),
            });
        }
        if !(g.heads || g.neurons || g.hidden || g.attention_blocks || g.ffn_blocks) {
            return Err(TrainError::OutOfRange {
                key: "gated.heads".into(),
                value: "false".into(),
                expected: "true (or gated.neurons / hidden / attention_blocks / ffn_blocks = true): something must be gated"
                    .into(),
            });
        }
        if let Some(i) = &self.model.init {
            range(
                "model.init.dropout",
                i.dropout,
                (0.0..1.0).contains(&i.dropout),
                "in [0, 1)",
            )?;
        }
        let d = &self.data;
        let sum: f64 = d.split.iter().sum();
        if d.split.iter().any(|&f| f <= 0.0) || (sum - 1.0).abs() > 1e-6 {
            return Err(TrainError::OutOfRange {
                key: "data.split".into(),
                value: format!("{:?}", d.split),
                expected: "three positive fractions summing to 1".into(),
            });
        }
        range("data.max_len", d.max_len as f64, d.max_len >= 2, ">= 2")?;
        range(
            "eval.batch_size",
            self.eval.batch_size as f64,
            self.eval.batch_size > 0,
            ">= 1",
        )?;
        range(
            "eval.latency_batch",
            self.eval.latency_batch as f64,
            self.eval.latency_batch > 0,
            ">= 1",
        )?;
        range(
            "eval.latency_repeats",
            self.eval.latency_repeats as f64,
            self.eval.latency_repeats > 0,
            ">= 1",
        )?;
        if d.path.as_os_str().is_empty() {
            return Err(TrainError::Config {
                source_name: "data.path".into(),
                message: "no dataset file given".into(),
            });
        }
        if self.task == Task::Classification {
            let lm_only = [
                ("data.document_column", !d.document_column.is_empty()),
                ("data.extra", !d.extra.is_empty()),
            ];
            if let Some((key, _)) = lm_only.iter().find(|(_, set)| *set) {
                return Err(TrainError::Config {
                    source_name: (*key).into(),
                    message: "only a language model (task = \"lm\") reads documents and extra files; a classifier splits the rows of `data.path`".into(),
                });
            }
        }
        if let Some((i, _)) = d
            .extra
            .iter()
            .enumerate()
            .find(|(_, x)| x.path.as_os_str().is_empty())
        {
            return Err(TrainError::Config {
                source_name: format!("data.extra[{i}].path"),
                message: "no file given".into(),
            });
        }
        match (&self.model.path, &self.model.init, self.task) {
            (None, None, _) => Err(TrainError::Config {
                source_name: "model".into(),
                message: "set `model.path` (a checkpoint directory) or `[model.init]`".into(),
            }),
            (Some(_), Some(_), _) => Err(TrainError::Config {
                source_name: "model".into(),
                message: "set only one of `model.path` and `[model.init]`".into(),
            }),
            (None, Some(_), Task::Classification) => Err(TrainError::Config {
                source_name: "model.init".into(),
                message: "a fresh model is only supported for task = \"lm\"".into(),
            }),
            _ => Ok(()),
        }
    }
}

/// Flattens a table into dotted keys.
fn flatten(prefix: &str, v: config::Value, out: &mut BTreeMap<String, config::Value>) {
    match v.kind {
        config::ValueKind::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), v);
        }
    }
}

/// Environment and `--set` values arrive as text: numbers, booleans and `[a, b]` lists are
/// parsed as TOML values so they deserialize into the typed fields.
fn parse_scalar(s: &str) -> config::Value {
    let parsed = config::Config::builder()
        .add_source(config::File::from_str(
            &format!("v = {s}"),
            config::FileFormat::Toml,
        ))
        .build()
        .ok()
        .and_then(|c| c.get::<config::Value>("v").ok());
    parsed.unwrap_or_else(|| config::Value::from(s.to_string()))
}
