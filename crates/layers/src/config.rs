//! `ModelConfig`: the one shared config every module reads, and Hugging Face `config.json`
//! reading (a wire struct with aliases, then a resolved config with no `Option`s).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Family, LoadError};

/// The most layers, and heads per layer, a Hugging Face config may ask for (released models
/// have at most about a hundred): the layer and head lists are allocated from these counts
/// before the weights can confirm them.
pub const MAX_LAYERS_OR_HEADS: usize = 4096;

/// Feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x Φ(x)` with the exact normal CDF (erf); HF `gelu`.
    Gelu,
    /// The tanh approximation `0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³)))`; HF `gelu_new`,
    /// `gelu_pytorch_tanh`, `gelu_fast`.
    GeluTanh,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// Parses a Hugging Face activation name.
    pub fn from_hf(name: &str) -> Result<Self, LoadError> {
        match name {
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            other => Err(LoadError::UnknownActivation {
                found: other.to_string(),
                supported: "gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu",
            }),
        }
    }

    /// The Hugging Face name.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Gelu => "gelu",
            Self::GeluTanh => "gelu_new",
            Self::Relu => "relu",
        }
    }
}

/// Sizes of one transformer layer. Pruned models have different sizes in every layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerConfig {
    /// Attention heads in this layer.
    pub n_heads: usize,
    /// Width of each head.
    pub d_head: usize,
    /// Feed-forward (intermediate) width.
    pub d_ff: usize,
    /// For each remaining head, its index in the original (unpruned) layer, ascending.
    /// Head-pruning requests name original heads, as Hugging Face's `prune_heads` does.
    pub head_ids: Vec<usize>,
    /// Projections factorized to a low rank, by name (`attention.query`, `attention.key`,
    /// `attention.value`, `attention.output`, `ffn.up`, `ffn.down`); the rest are dense.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ranks: BTreeMap<String, usize>,
}

impl LayerConfig {
    /// A layer with heads `0..n_heads`.
    pub fn new(n_heads: usize, d_head: usize, d_ff: usize) -> Self {
        Self {
            n_heads,
            d_head,
            d_ff,
            head_ids: (0..n_heads).collect(),
            ranks: BTreeMap::new(),
        }
    }

    /// The rank of projection `name` if it is factorized.
    pub fn rank(&self, name: &str) -> Option<usize> {
        self.ranks.get(name).copied()
    }

    /// `(in, out)` of projection `name` in a model of width `d_model`.
    ///
    /// # Panics
    /// On a name that is not one of the six projections.
    pub fn projection_dims(&self, name: &str, d_model: usize) -> (usize, usize) {
        match name {
            "attention.query" | "attention.key" | "attention.value" => (d_model, self.d_attn()),
            "attention.output" => (self.d_attn(), d_model),
            "ffn.up" => (d_model, self.d_ff),
            "ffn.down" => (self.d_ff, d_model),
            other => panic!("`{other}` is not a projection of a layer"),
        }
    }

    /// Parameters (weights and bias) of projection `name`, dense or factorized.
    pub fn projection_params(&self, name: &str, d_model: usize) -> usize {
        let (i, o) = self.projection_dims(name, d_model);
        match self.rank(name) {
            Some(r) => r * (i + o) + o,
            None => i * o + o,
        }
    }

    /// Multiply-adds per token of projection `name`.
    pub fn projection_macs(&self, name: &str, d_model: usize) -> usize {
        let (i, o) = self.projection_dims(name, d_model);
        match self.rank(name) {
            Some(r) => r * (i + o),
            None => i * o,
        }
    }

    /// Width of the concatenated heads (`n_heads * d_head`).
    pub fn d_attn(&self) -> usize {
        self.n_heads * self.d_head
    }
}

/// The one config of a BERT, RoBERTa or GPT-2 model. Modules read the parts they need from it
/// (`SelfAttention::new(config, layer, device)`), so nothing is threaded through
/// constructors, and per-layer sizes make a pruned model an ordinary model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Architecture.
    pub family: Family,
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Rows of the position table (`max_position_embeddings`).
    pub max_positions: usize,
    /// Position of a row's first token in the position table: 0, or RoBERTa's
    /// `pad_token_id + 1`. A row holds at most [`ModelConfig::max_len`] tokens, and rows
    /// are right-padded (see `family/roberta.rs` on padded positions).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub position_offset: usize,
    /// Token-type (segment) vocabulary; 0 for GPT-2.
    pub type_vocab_size: usize,
    /// Hidden width.
    pub d_model: usize,
    /// Output width of the BERT pooler; `None` for no pooler.
    pub d_pooler: Option<usize>,
    /// Per-layer sizes.
    pub layers: Vec<LayerConfig>,
    /// Feed-forward activation.
    pub activation: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Dropout probabilities in training (0 in configs saved before shears had dropout).
    #[serde(default)]
    pub dropout: crate::DropoutConfig,
    /// Standard deviation of the normal distribution fresh weights are drawn from
    /// (`initializer_range` in `config.json`; 0.02 for both families).
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// The original Hugging Face `config.json`, kept to write it back on export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_config: Option<serde_json::Value>,
}

impl ModelConfig {
    /// A BERT config with equal layers.
    pub fn bert(
        vocab_size: usize,
        d_model: usize,
        n_layers: usize,
        n_heads: usize,
        d_ff: usize,
    ) -> Self {
        Self {
            family: Family::Bert,
            vocab_size,
            max_positions: 512,
            position_offset: 0,
            type_vocab_size: 2,
            d_model,
            d_pooler: Some(d_model),
            layers: vec![LayerConfig::new(n_heads, d_model / n_heads, d_ff); n_layers],
            activation: Activation::Gelu,
            layer_norm_eps: 1e-12,
            dropout: crate::DropoutConfig::default(),
            initializer_range: default_initializer_range(),
            hf_config: None,
        }
    }

    /// A GPT-2 config with equal layers.
    pub fn gpt2(
        vocab_size: usize,
        d_model: usize,
        n_layers: usize,
        n_heads: usize,
        d_ff: usize,
    ) -> Self {
        Self {
            family: Family::Gpt2,
            vocab_size,
            max_positions: 1024,
            position_offset: 0,
            type_vocab_size: 0,
            d_model,
            d_pooler: None,
            layers: vec![LayerConfig::new(n_heads, d_model / n_heads, d_ff); n_layers],
            activation: Activation::GeluTanh,
            layer_norm_eps: 1e-5,
            dropout: crate::DropoutConfig::default(),
            initializer_range: default_initializer_range(),
            hf_config: None,
        }
    }

    /// The standard deviation of a fresh GPT-2 weight: `initializer_range`, divided by
    /// `sqrt(2 n_layers)` for the `residual` projections (attention and FFN outputs), as
    /// GPT-2 does so that the residual stream's variance does not grow with depth. `None`
    /// for BERT and RoBERTa: a fresh encoder keeps Burn's default initialisation (shears builds fresh BERTs
    /// only as skeletons that loaded weights replace, and as the tests' tiny models, whose
    /// calibrated margins were measured with that initialisation).
    pub fn init_std(&self, residual: bool) -> Option<f64> {
        match (self.family.arch().scaled_init, residual) {
            (true, true) => {
                Some(self.initializer_range / (2.0 * self.n_layers().max(1) as f64).sqrt())
            }
            (true, false) => Some(self.initializer_range),
            (false, _) => None,
        }
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// The largest head count of any layer (the width of a `[n_layers, n_heads]` head mask).
    pub fn max_heads(&self) -> usize {
        self.layers.iter().map(|l| l.n_heads).max().unwrap_or(0)
    }

    /// Whether attention is causal (GPT-2).
    pub fn causal(&self) -> bool {
        self.family.arch().causal
    }

    /// The most tokens a row may hold: the position table's rows after the offset.
    pub fn max_len(&self) -> usize {
        self.max_positions.saturating_sub(self.position_offset)
    }

    /// Reads a Hugging Face `config.json` (the [`Family`] its `model_type` names, or a
    /// `shears_*` export). Sizes are
    /// checked against the weights by [`crate::Transformer::load`] before a model is built.
    pub fn from_hf_file(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| LoadError::Config {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Self::from_hf_value(value).map_err(|e| match e {
            LoadError::Config { message, .. } => LoadError::Config {
                path: path.to_path_buf(),
                message,
            },
            LoadError::UnsupportedOption {
                key, value, reason, ..
            } => LoadError::UnsupportedOption {
                path: path.to_path_buf(),
                key,
                value,
                reason,
            },
            other => other,
        })
    }

    /// Resolves a parsed Hugging Face config.
    pub fn from_hf_value(value: serde_json::Value) -> Result<Self, LoadError> {
        let bad = |message: String| LoadError::Config {
            path: Default::default(),
            message,
        };
        let model_type = value.get("model_type").and_then(|t| t.as_str());
        if let Some(family) = model_type.and_then(|t| shears_family(&value, t).transpose()) {
            return Self::from_shears(value.clone(), family?);
        }
        let supported = || {
            Family::ALL
                .iter()
                .flat_map(|f| [f.model_type(), f.spec().shears_model_type()])
                .fold(Vec::<&str>::new(), |mut v, t| {
                    if !v.contains(&t) {
                        v.push(t);
                    }
                    v
                })
                .join(", ")
        };
        let family = match model_type {
            Some(t) => Family::from_model_type(t).ok_or_else(|| {
                bad(format!(
                    "unsupported model_type `{t}` (supported: {})",
                    supported()
                ))
            })?,
            None => {
                return Err(bad(format!(
                    "missing `model_type` (expected one of {})",
                    supported()
                )));
            }
        };
        let spec = family.spec();
        let wire: HfWire = serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))?;
        check_options(&value, family)?;
        // The layer and head lists are allocated from these counts before any weight is
        // read: an absurd value must be an error, not an allocation that aborts.
        for (key, v) in [
            ("num_hidden_layers", wire.n_layers),
            ("num_attention_heads", wire.n_heads),
        ] {
            if v > MAX_LAYERS_OR_HEADS {
                return Err(bad(format!(
                    "`{key}` = {v} is above the {MAX_LAYERS_OR_HEADS} shears supports"
                )));
            }
        }
        let n_heads = wire.n_heads;
        if n_heads == 0 || !wire.d_model.is_multiple_of(n_heads) {
            return Err(bad(format!(
                "hidden size {} is not a multiple of the head count {n_heads}",
                wire.d_model
            )));
        }
        let d_head = wire.d_model / n_heads;
        let d_ff = wire.d_ff.unwrap_or(4 * wire.d_model);
        let activation = Activation::from_hf(
            wire.activation
                .as_deref()
                .unwrap_or(spec.default_activation()),
        )?;
        let mut layers = Vec::with_capacity(wire.n_layers);
        for l in 0..wire.n_layers {
            let pruned = wire
                .pruned_heads
                .get(&l.to_string())
                .cloned()
                .unwrap_or_default();
            if let Some(&h) = pruned.iter().find(|&&h| h >= n_heads) {
                return Err(bad(format!(
                    "pruned_heads names head {h} of layer {l}, which has {n_heads}"
                )));
            }
            let head_ids: Vec<usize> = (0..n_heads).filter(|h| !pruned.contains(h)).collect();
            layers.push(LayerConfig {
                n_heads: head_ids.len(),
                d_head,
                d_ff,
                head_ids,
                ranks: BTreeMap::new(),
            });
        }
        let initializer_range = match wire.initializer_range {
            None => default_initializer_range(),
            Some(r) if r.is_finite() && r > 0.0 => r,
            Some(r) => {
                return Err(bad(format!(
                    "initializer_range {r} is not a positive number"
                )));
            }
        };
        // transformers' defaults where the file leaves a probability out.
        let hidden = wire.hidden_dropout.unwrap_or(0.1);
        let mut config = Self {
            family,
            vocab_size: wire.vocab_size,
            max_positions: wire.max_positions,
            position_offset: 0,
            type_vocab_size: 0,
            d_model: wire.d_model,
            d_pooler: None,
            layers,
            activation,
            layer_norm_eps: wire.layer_norm_eps.unwrap_or(spec.default_layer_norm_eps()),
            dropout: crate::DropoutConfig {
                hidden,
                attention: wire.attention_dropout.unwrap_or(0.1),
                embedding: hidden,
            },
            initializer_range,
            hf_config: None,
        };
        spec.read_hf(&value, &mut config).map_err(bad)?;
        for (key, p) in [
            ("hidden dropout", config.dropout.hidden),
            ("attention dropout", config.dropout.attention),
            ("embedding dropout", config.dropout.embedding),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(bad(format!("{key} probability {p} is not in [0, 1)")));
            }
        }
        config.hf_config = Some(value);
        Ok(config)
    }
}

/// The family of a `shears_*` export (`model_type` `shears_bert` is BERT, or the family
/// its `shears_family` names); `None` when `model_type` is no `shears_*` type.
fn shears_family(value: &serde_json::Value, model_type: &str) -> Result<Option<Family>, LoadError> {
    let mut candidates = Family::ALL
        .into_iter()
        .filter(|f| f.spec().shears_model_type() == model_type);
    let Some(first) = candidates.next() else {
        return Ok(None);
    };
    match value.get("shears_family").and_then(|v| v.as_str()) {
        None => Ok(Some(first)),
        Some(name) => std::iter::once(first)
            .chain(candidates)
            .find(|f| f.model_type() == name)
            .map(Some)
            .ok_or_else(|| LoadError::Config {
                path: Default::default(),
                message: format!("`shears_family` `{name}` is not a family of `{model_type}`"),
            }),
    }
}

impl ModelConfig {
    /// Resolves the `config.json` of a `shears_*` export (see
    /// [`crate::hf::shears_hf_config`]).
    fn from_shears(value: serde_json::Value, family: Family) -> Result<Self, LoadError> {
        let bad = |message: String| LoadError::Config {
            path: Default::default(),
            message,
        };
        let w: ShearsWire =
            serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))?;
        check_options(&value, family)?;
        let arch = family.arch();
        if (!arch.token_types && w.type_vocab_size != 0)
            || (!arch.pooler && w.pooler_size.is_some())
        {
            return Err(bad(format!(
                "a {family} has no token types and no pooler, but the file gives \
                 type_vocab_size {} and pooler_size {:?}",
                w.type_vocab_size, w.pooler_size
            )));
        }
        match (arch.positions_after_pad, w.position_offset) {
            (false, 0) | (true, 1..) => {}
            (false, n) => {
                return Err(bad(format!(
                    "a {family} counts positions from 0, but the file gives position_offset {n}"
                )));
            }
            (true, _) => {
                return Err(bad(format!(
                    "a {family} counts positions from pad_token_id + 1, but the file gives no \
                     position_offset"
                )));
            }
        }
        if w.position_offset >= w.max_position_embeddings.max(1) {
            return Err(bad(format!(
                "position_offset {} leaves no row of the {} positions",
                w.position_offset, w.max_position_embeddings
            )));
        }
        let n_layers = w.layer_num_heads.len();
        if n_layers > MAX_LAYERS_OR_HEADS || w.layer_intermediate_sizes.len() != n_layers {
            return Err(bad(format!(
                "`layer_num_heads` has {n_layers} layers and `layer_intermediate_sizes` {}: \
                 they must agree, at most {MAX_LAYERS_OR_HEADS}",
                w.layer_intermediate_sizes.len()
            )));
        }
        let mut layers = Vec::with_capacity(n_layers);
        for (l, (&n_heads, &d_ff)) in w
            .layer_num_heads
            .iter()
            .zip(&w.layer_intermediate_sizes)
            .enumerate()
        {
            if n_heads > MAX_LAYERS_OR_HEADS {
                return Err(bad(format!(
                    "layer {l} has {n_heads} heads, above the {MAX_LAYERS_OR_HEADS} shears supports"
                )));
            }
            let head_ids = match w.layer_head_ids.as_ref().map(|ids| ids.get(l)) {
                None => (0..n_heads).collect(),
                Some(Some(ids)) if ids.len() == n_heads && ids.is_sorted_by(|a, b| a < b) => {
                    ids.clone()
                }
                Some(ids) => {
                    return Err(bad(format!(
                        "`layer_head_ids` of layer {l} is {ids:?}: expected {n_heads} ascending ids"
                    )));
                }
            };
            layers.push(LayerConfig {
                n_heads,
                d_head: w.attention_head_size,
                d_ff,
                head_ids,
                ranks: BTreeMap::new(),
            });
        }
        let dropout = crate::DropoutConfig {
            hidden: w.hidden_dropout_prob,
            attention: w.attention_probs_dropout_prob,
            embedding: w.embedding_dropout_prob.unwrap_or(w.hidden_dropout_prob),
        };
        for (key, p) in [
            ("hidden_dropout_prob", dropout.hidden),
            ("attention_probs_dropout_prob", dropout.attention),
            ("embedding_dropout_prob", dropout.embedding),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(bad(format!("`{key}` {p} is not in [0, 1)")));
            }
        }
        if !(w.initializer_range.is_finite() && w.initializer_range > 0.0) {
            return Err(bad(format!(
                "initializer_range {} is not a positive number",
                w.initializer_range
            )));
        }
        Ok(Self {
            family,
            vocab_size: w.vocab_size,
            max_positions: w.max_position_embeddings,
            position_offset: w.position_offset,
            type_vocab_size: w.type_vocab_size,
            d_model: w.hidden_size,
            d_pooler: w.pooler_size,
            layers,
            activation: Activation::from_hf(&w.hidden_act)?,
            layer_norm_eps: w.layer_norm_eps,
            dropout,
            initializer_range: w.initializer_range,
            hf_config: Some(value),
        })
    }
}

/// `config.json` of a `shears_bert` or `shears_gpt2` export.
#[derive(Deserialize)]
struct ShearsWire {
    vocab_size: usize,
    hidden_size: usize,
    layer_num_heads: Vec<usize>,
    #[serde(default)]
    layer_head_ids: Option<Vec<Vec<usize>>>,
    attention_head_size: usize,
    layer_intermediate_sizes: Vec<usize>,
    hidden_act: String,
    hidden_dropout_prob: f64,
    attention_probs_dropout_prob: f64,
    /// GPT-2's; BERT's embeddings use `hidden_dropout_prob`.
    #[serde(default)]
    embedding_dropout_prob: Option<f64>,
    max_position_embeddings: usize,
    /// RoBERTa's; 0 (absent) for the others.
    #[serde(default)]
    position_offset: usize,
    /// 0 (absent) for GPT-2.
    #[serde(default)]
    type_vocab_size: usize,
    initializer_range: f64,
    layer_norm_eps: f64,
    #[serde(default)]
    pooler_size: Option<usize>,
}

/// `config.json` as Hugging Face writes it for BERT and GPT-2 (GPT-2 names as aliases).
#[derive(Deserialize)]
struct HfWire {
    vocab_size: usize,
    #[serde(alias = "n_embd", rename = "hidden_size")]
    d_model: usize,
    #[serde(alias = "n_layer", rename = "num_hidden_layers")]
    n_layers: usize,
    #[serde(alias = "n_head", rename = "num_attention_heads")]
    n_heads: usize,
    #[serde(alias = "n_inner", rename = "intermediate_size", default)]
    d_ff: Option<usize>,
    #[serde(alias = "activation_function", rename = "hidden_act", default)]
    activation: Option<String>,
    #[serde(alias = "n_positions", rename = "max_position_embeddings")]
    max_positions: usize,
    #[serde(alias = "layer_norm_epsilon", default)]
    layer_norm_eps: Option<f64>,
    #[serde(default)]
    pruned_heads: BTreeMap<String, Vec<usize>>,
    #[serde(alias = "resid_pdrop", rename = "hidden_dropout_prob", default)]
    hidden_dropout: Option<f64>,
    #[serde(alias = "attn_pdrop", rename = "attention_probs_dropout_prob", default)]
    attention_dropout: Option<f64>,
    #[serde(default)]
    initializer_range: Option<f64>,
}

/// Refuses the options of `value` that change what the model computes, which shears does
/// not implement ([`crate::family::UNSUPPORTED_ALWAYS`] and the family's own), set to
/// anything but shears' computation.
fn check_options(value: &serde_json::Value, family: Family) -> Result<(), LoadError> {
    let own = family.spec().unsupported();
    for (key, ours, reason) in crate::family::UNSUPPORTED_ALWAYS.iter().chain(own) {
        let Some(v) = value.get(*key).filter(|v| !v.is_null()) else {
            continue;
        };
        let ours: serde_json::Value = serde_json::from_str(ours).expect("a JSON literal");
        if *v != ours {
            return Err(LoadError::UnsupportedOption {
                path: Default::default(),
                key: (*key).into(),
                value: v.to_string(),
                reason,
            });
        }
    }
    Ok(())
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn default_initializer_range() -> f64 {
    0.02
}
