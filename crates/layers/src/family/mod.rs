//! Model families. Everything that differs between BERT, GPT-2 and RoBERTa lives in one
//! file per family (`bert.rs`, `gpt2.rs`, `roberta.rs`) behind [`FamilySpec`]: how its
//! layers compute ([`Arch`], read by the model, the cost model and the space
//! declarations), its Hugging Face `config.json` entries and unsupported options, its
//! checkpoint key table, task prefixes, buffers and task heads, and its export (the plain
//! `transformers` class and the `shears_*` modeling file). The generic code in `config.rs`,
//! `hf.rs`, `model.rs` and `save.rs` asks the spec and never matches on a family.
//!
//! A new family is one new file here, a variant of [`Family`] and its line in
//! [`Family::spec`], plus its tokenizer when it needs a new kind.

use serde::{Deserialize, Serialize};
use shears_spaces::{HostTensor, TensorMap};

use crate::hf::{HfHead, HfParts};
use crate::{LoadError, ModelConfig};

mod bert;
mod gpt2;
mod roberta;

/// Which architecture a config describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// BERT encoder: post-norm, bidirectional, token-type embeddings, pooler.
    Bert,
    /// GPT-2 decoder: pre-norm, causal, final LayerNorm, LM head tied to the token embedding.
    Gpt2,
    /// RoBERTa encoder: BERT's computation with positions counted from
    /// `pad_token_id + 1`, one token type, and a classification head whose dense + tanh
    /// layer is the pooler.
    Roberta,
}

impl Family {
    /// Every family, in the order `model_type`s are looked up.
    pub const ALL: [Family; 3] = [Family::Bert, Family::Gpt2, Family::Roberta];

    /// What this family is, for the generic code.
    pub(crate) fn spec(self) -> &'static dyn FamilySpec {
        match self {
            Family::Bert => &bert::Bert,
            Family::Gpt2 => &gpt2::Gpt2,
            Family::Roberta => &roberta::Roberta,
        }
    }

    /// How the family's layers compute.
    pub fn arch(self) -> Arch {
        self.spec().arch()
    }

    /// Its Hugging Face `model_type` (`bert`, `gpt2`, `roberta`).
    pub fn model_type(self) -> &'static str {
        self.spec().model_type()
    }

    /// The family whose Hugging Face `model_type` is `model_type`.
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        Self::ALL.into_iter().find(|f| f.model_type() == model_type)
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.model_type())
    }
}

/// How a family's model computes, as the generic model reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    /// LayerNorm before each block and a final LayerNorm (GPT-2); otherwise after each
    /// residual sum and on the embeddings (BERT).
    pub pre_norm: bool,
    /// Each position attends to itself and earlier ones only.
    pub causal: bool,
    /// Token-type (segment) embeddings.
    pub token_types: bool,
    /// A language-model head tied to the token embedding.
    pub lm_head: bool,
    /// A pooler (dense + tanh on the first token) feeding a classifier.
    pub pooler: bool,
    /// Fresh weights drawn as GPT-2 draws them (see [`ModelConfig::init_std`]).
    pub scaled_init: bool,
    /// Positions counted from `pad_token_id + 1` ([`ModelConfig::position_offset`] > 0,
    /// RoBERTa); otherwise from 0.
    pub positions_after_pad: bool,
}

/// How a checkpoint tensor becomes ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transform {
    /// Same layout.
    Same,
    /// PyTorch `Linear` `[out, in]` to Burn `[in, out]`.
    Transpose,
    /// Part `i` of 3 along the last axis (GPT-2's fused `c_attn`, Conv1D `[in, 3 * out]`).
    Third(usize),
}

/// Our path pattern, the Hugging Face key pattern, the transform; `{}` is the layer.
pub(crate) type KeyRule = (&'static str, &'static str, Transform);

/// A `config.json` option that changes what the model computes and that shears does not
/// implement: the key, the value shears computes as (a JSON literal; the option may also
/// be absent or null) and why.
pub(crate) type Unsupported = (&'static str, &'static str, &'static str);

/// What a family is to the generic code (see the module documentation).
pub(crate) trait FamilySpec: Sync {
    /// Hugging Face `model_type`.
    fn model_type(&self) -> &'static str;
    /// How the layers compute.
    fn arch(&self) -> Arch;
    /// `hidden_act` when `config.json` gives none.
    fn default_activation(&self) -> &'static str;
    /// LayerNorm epsilon when `config.json` gives none.
    fn default_layer_norm_eps(&self) -> f64;
    /// Sets what only this family's `config.json` says (token types, the pooler, the
    /// embedding dropout, the position offset) on `config`, which the generic reader
    /// filled with: no token types, no pooler, embedding dropout = hidden dropout, offset 0.
    fn read_hf(&self, value: &serde_json::Value, config: &mut ModelConfig) -> Result<(), String>;
    /// Options of this family's `config.json` that shears refuses unless they equal its
    /// computation (on top of the ones every family refuses).
    fn unsupported(&self) -> &'static [Unsupported] {
        &[]
    }
    /// The checkpoint key table.
    fn keys(&self) -> &'static [KeyRule];
    /// Task-model prefixes stripped from checkpoint keys (`bert.`, `transformer.`).
    fn prefixes(&self) -> &'static [&'static str];
    /// Checkpoint keys that hold buffers, not parameters.
    fn is_buffer(&self, key: &str) -> bool {
        key.ends_with("position_ids") || key.ends_with("embeddings.token_type_ids")
    }
    /// Renames a task checkpoint's keys (prefixes already stripped) onto the backbone's
    /// table and [`HfParts::head`]'s `classifier.weight` / `classifier.bias` where the
    /// family's head differs (RoBERTa's `classifier.dense` is our pooler); keys it drops
    /// go to `skipped`.
    fn normalize(&self, checkpoint: TensorMap, skipped: &mut Vec<String>) -> TensorMap {
        let _ = skipped;
        checkpoint
    }
    /// Takes a checkpoint tensor the backbone did not use (a task head, a head to skip):
    /// `Ok(false)` when it is none of those, which makes it an unexpected key.
    fn extra_tensor(
        &self,
        key: &str,
        t: &HostTensor,
        parts: &mut HfParts,
    ) -> Result<bool, LoadError>;
    /// `config.json` for `transformers`' own class of the family, when only heads were
    /// removed ([`crate::hf::head_pruned_shape`]); an error names what it cannot hold.
    fn plain_config(&self, config: &ModelConfig) -> Result<serde_json::Value, LoadError>;
    /// `model_type` of the `shears_*` export for any pruned shape.
    fn shears_model_type(&self) -> &'static str;
    /// The modeling file of that export: file name and code.
    fn modeling(&self) -> (&'static str, &'static str);
    /// Entries of the `shears_*` `config.json` on top of the shared ones
    /// ([`crate::hf::shears_hf_config`]): `model_type`, `architectures`, `auto_map`, ...
    fn shears_config(&self, config: &ModelConfig) -> serde_json::Value;
    /// Puts exported tensors (under the family's keys, no prefix) and `config.json` in
    /// their final form: task prefix, `architectures`, and the task head's tensors and
    /// entries when there is one. `plain`: `transformers`' own class, else the modeling
    /// file's.
    fn finish_export(
        &self,
        plain: bool,
        value: &mut serde_json::Value,
        tensors: TensorMap,
        head: Option<&HfHead>,
    ) -> Result<TensorMap, LoadError>;
}

/// The options every family refuses unless they equal shears' computation.
pub(crate) const UNSUPPORTED_ALWAYS: &[Unsupported] = &[
    (
        "position_embedding_type",
        "\"absolute\"",
        "shears implements absolute position embeddings only",
    ),
    (
        "is_decoder",
        "false",
        "shears' encoders attend to every position, not causally",
    ),
    (
        "add_cross_attention",
        "false",
        "shears has no cross-attention layers",
    ),
];

/// Sets `architectures` to `[name]`.
fn set_architecture(value: &mut serde_json::Value, name: &str) {
    value
        .as_object_mut()
        .expect("config.json is an object")
        .insert("architectures".into(), serde_json::json!([name]));
}

/// Prefixes every key.
fn prefixed(tensors: TensorMap, prefix: &str) -> TensorMap {
    tensors
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect()
}

/// `value[key]` as a count; `None` when absent or null, an error naming it when it is not
/// a non-negative integer.
fn get_count(value: &serde_json::Value, key: &str) -> Result<Option<usize>, String> {
    match value.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or_else(|| format!("`{key}` is {v}, not a non-negative integer")),
    }
}

/// `value[key]` as a number; `None` when absent or null.
fn get_number(value: &serde_json::Value, key: &str) -> Result<Option<f64>, String> {
    match value.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("`{key}` is {v}, not a number")),
    }
}
