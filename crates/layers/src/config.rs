//! `ModelConfig`: the one shared config every module reads, and Hugging Face `config.json`
//! reading (a wire struct with aliases, then a resolved config with no `Option`s).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::LoadError;

/// The most layers, and heads per layer, a Hugging Face config may ask for (released models
/// have at most about a hundred): the layer and head lists are allocated from these counts
/// before the weights can confirm them.
pub const MAX_LAYERS_OR_HEADS: usize = 4096;

/// Which architecture a config describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// BERT encoder: post-norm, bidirectional, token-type embeddings, pooler.
    Bert,
    /// GPT-2 decoder: pre-norm, causal, final LayerNorm, LM head tied to the token embedding.
    Gpt2,
}

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

/// The one config of a BERT or GPT-2 model. Modules read the parts they need from it
/// (`SelfAttention::new(config, layer, device)`), so nothing is threaded through
/// constructors, and per-layer sizes make a pruned model an ordinary model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Architecture.
    pub family: Family,
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Maximum sequence length (position embeddings).
    pub max_positions: usize,
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
    /// for BERT: a fresh BERT keeps Burn's default initialisation (shears builds fresh BERTs
    /// only as skeletons that loaded weights replace, and as the tests' tiny models, whose
    /// calibrated margins were measured with that initialisation).
    pub fn init_std(&self, residual: bool) -> Option<f64> {
        match (self.family, residual) {
            (Family::Gpt2, true) => {
                Some(self.initializer_range / (2.0 * self.n_layers().max(1) as f64).sqrt())
            }
            (Family::Gpt2, false) => Some(self.initializer_range),
            (Family::Bert, _) => None,
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
        self.family == Family::Gpt2
    }

    /// Reads a Hugging Face `config.json` (BERT or GPT-2, chosen by `model_type`). Sizes are
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
        match value.get("model_type").and_then(|t| t.as_str()) {
            Some(crate::hf::SHEARS_BERT) => return Self::from_shears(value, Family::Bert),
            Some(crate::hf::SHEARS_GPT2) => return Self::from_shears(value, Family::Gpt2),
            _ => {}
        }
        let wire: HfWire = serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))?;
        let family = match wire.model_type.as_deref() {
            Some("bert") => Family::Bert,
            Some("gpt2") => Family::Gpt2,
            Some(other) => {
                return Err(bad(format!(
                    "unsupported model_type `{other}` (supported: bert, gpt2, shears_bert, shears_gpt2)"
                )));
            }
            None => {
                return Err(bad(
                    "missing `model_type` (expected `bert` or `gpt2`)".into()
                ));
            }
        };
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
        let activation = Activation::from_hf(wire.activation.as_deref().unwrap_or(match family {
            Family::Bert => "gelu",
            Family::Gpt2 => "gelu_new",
        }))?;
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
        Ok(Self {
            family,
            vocab_size: wire.vocab_size,
            max_positions: wire.max_positions,
            type_vocab_size: if family == Family::Bert {
                wire.type_vocab_size.unwrap_or(2)
            } else {
                0
            },
            d_model: wire.d_model,
            d_pooler: (family == Family::Bert).then_some(wire.d_model),
            layers,
            activation,
            layer_norm_eps: wire.layer_norm_eps.unwrap_or(match family {
                Family::Bert => 1e-12,
                Family::Gpt2 => 1e-5,
            }),
            dropout: {
                // transformers' defaults where the file leaves a probability out.
                let hidden = wire.hidden_dropout.unwrap_or(0.1);
                let dropout = crate::DropoutConfig {
                    hidden,
                    attention: wire.attention_dropout.unwrap_or(0.1),
                    embedding: match family {
                        Family::Bert => hidden,
                        Family::Gpt2 => wire.embd_pdrop.unwrap_or(0.1),
                    },
                };
                for (key, p) in [
                    ("hidden dropout", dropout.hidden),
                    ("attention dropout", dropout.attention),
                    ("embedding dropout", dropout.embedding),
                ] {
                    if !(0.0..1.0).contains(&p) {
                        return Err(bad(format!("{key} probability {p} is not in [0, 1)")));
                    }
                }
                dropout
            },
            initializer_range: match wire.initializer_range {
                None => default_initializer_range(),
                Some(r) if r.is_finite() && r > 0.0 => r,
                Some(r) => {
                    return Err(bad(format!(
                        "initializer_range {r} is not a positive number"
                    )));
                }
            },
            hf_config: Some(value),
        })
    }
}

impl ModelConfig {
    /// Resolves the `config.json` of a `shears_bert` or `shears_gpt2` export (see
    /// [`crate::hf::shears_hf_config`]).
    fn from_shears(value: serde_json::Value, family: Family) -> Result<Self, LoadError> {
        let bad = |message: String| LoadError::Config {
            path: Default::default(),
            message,
        };
        let w: ShearsWire =
            serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))?;
        check_options(&value, family)?;
        if family == Family::Gpt2 && (w.type_vocab_size != 0 || w.pooler_size.is_some()) {
            return Err(bad(format!(
                "a shears_gpt2 has no token types and no pooler, but the file gives \
                 type_vocab_size {} and pooler_size {:?}",
                w.type_vocab_size, w.pooler_size
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
    model_type: Option<String>,
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
    #[serde(default)]
    type_vocab_size: Option<usize>,
    #[serde(alias = "layer_norm_epsilon", default)]
    layer_norm_eps: Option<f64>,
    #[serde(default)]
    pruned_heads: BTreeMap<String, Vec<usize>>,
    #[serde(alias = "resid_pdrop", rename = "hidden_dropout_prob", default)]
    hidden_dropout: Option<f64>,
    #[serde(alias = "attn_pdrop", rename = "attention_probs_dropout_prob", default)]
    attention_dropout: Option<f64>,
    #[serde(default)]
    embd_pdrop: Option<f64>,
    #[serde(default)]
    initializer_range: Option<f64>,
}

/// The `config.json` options that change what the model computes and that shears does not
/// implement, with the value shears computes as (`None`: the option must be absent or null).
/// A file that sets one to anything else is refused.
const UNSUPPORTED: [(Option<Family>, &str, &str, &str); 7] = [
    (
        None,
        "position_embedding_type",
        "\"absolute\"",
        "shears implements absolute position embeddings only",
    ),
    (
        None,
        "is_decoder",
        "false",
        "shears' BERT attends to every position, not causally",
    ),
    (
        None,
        "add_cross_attention",
        "false",
        "shears has no cross-attention layers",
    ),
    (
        Some(Family::Gpt2),
        "scale_attn_by_inverse_layer_idx",
        "false",
        "shears scales attention scores by 1/sqrt(d_head) only",
    ),
    (
        Some(Family::Gpt2),
        "reorder_and_upcast_attn",
        "false",
        "shears computes attention scores in the model's dtype, scaled after the product",
    ),
    (
        Some(Family::Gpt2),
        "scale_attn_weights",
        "true",
        "shears always scales attention scores by 1/sqrt(d_head)",
    ),
    (
        Some(Family::Gpt2),
        "tie_word_embeddings",
        "true",
        "shears' GPT-2 language-model head is its token embedding",
    ),
];

/// Refuses the [`UNSUPPORTED`] options `value` sets to anything but shears' computation.
fn check_options(value: &serde_json::Value, family: Family) -> Result<(), LoadError> {
    for (only, key, ours, reason) in UNSUPPORTED {
        if only.is_some_and(|f| f != family) {
            continue;
        }
        let Some(v) = value.get(key).filter(|v| !v.is_null()) else {
            continue;
        };
        let ours: serde_json::Value = serde_json::from_str(ours).expect("a JSON literal");
        if *v != ours {
            return Err(LoadError::UnsupportedOption {
                path: Default::default(),
                key: key.into(),
                value: v.to_string(),
                reason,
            });
        }
    }
    Ok(())
}

fn default_initializer_range() -> f64 {
    0.02
}
