//! GPT-2: pre-norm causal decoder with a final LayerNorm and an LM head tied to the token
//! embedding; `transformers`' `GPT2LMHeadModel`, or `shears_gpt2` for any pruned shape.

use shears_spaces::{HostTensor, TensorMap};

use super::{Arch, FamilySpec, KeyRule, Transform, Unsupported, prefixed, set_architecture};
use crate::hf::{HfHead, HfParts, head_pruned_shape};
use crate::{LoadError, ModelConfig};

pub(crate) struct Gpt2;

/// Conv1D weights are already `[in, out]`: never transposed.
const KEYS: &[KeyRule] = &[
    ("embeddings.word.weight", "wte.weight", Transform::Same),
    ("embeddings.position.weight", "wpe.weight", Transform::Same),
    (
        "layers.{}.attention_norm.weight",
        "h.{}.ln_1.weight",
        Transform::Same,
    ),
    (
        "layers.{}.attention_norm.bias",
        "h.{}.ln_1.bias",
        Transform::Same,
    ),
    (
        "layers.{}.attention.query.weight",
        "h.{}.attn.c_attn.weight",
        Transform::Third(0),
    ),
    (
        "layers.{}.attention.query.bias",
        "h.{}.attn.c_attn.bias",
        Transform::Third(0),
    ),
    (
        "layers.{}.attention.key.weight",
        "h.{}.attn.c_attn.weight",
        Transform::Third(1),
    ),
    (
        "layers.{}.attention.key.bias",
        "h.{}.attn.c_attn.bias",
        Transform::Third(1),
    ),
    (
        "layers.{}.attention.value.weight",
        "h.{}.attn.c_attn.weight",
        Transform::Third(2),
    ),
    (
        "layers.{}.attention.value.bias",
        "h.{}.attn.c_attn.bias",
        Transform::Third(2),
    ),
    (
        "layers.{}.attention.output.weight",
        "h.{}.attn.c_proj.weight",
        Transform::Same,
    ),
    (
        "layers.{}.attention.output.bias",
        "h.{}.attn.c_proj.bias",
        Transform::Same,
    ),
    (
        "layers.{}.ffn_norm.weight",
        "h.{}.ln_2.weight",
        Transform::Same,
    ),
    ("layers.{}.ffn_norm.bias", "h.{}.ln_2.bias", Transform::Same),
    (
        "layers.{}.ffn.up.weight",
        "h.{}.mlp.c_fc.weight",
        Transform::Same,
    ),
    (
        "layers.{}.ffn.up.bias",
        "h.{}.mlp.c_fc.bias",
        Transform::Same,
    ),
    (
        "layers.{}.ffn.down.weight",
        "h.{}.mlp.c_proj.weight",
        Transform::Same,
    ),
    (
        "layers.{}.ffn.down.bias",
        "h.{}.mlp.c_proj.bias",
        Transform::Same,
    ),
    ("final_norm.weight", "ln_f.weight", Transform::Same),
    ("final_norm.bias", "ln_f.bias", Transform::Same),
];

impl FamilySpec for Gpt2 {
    fn model_type(&self) -> &'static str {
        "gpt2"
    }

    fn arch(&self) -> Arch {
        Arch {
            pre_norm: true,
            causal: true,
            token_types: false,
            lm_head: true,
            pooler: false,
            scaled_init: true,
            positions_after_pad: false,
        }
    }

    fn default_activation(&self) -> &'static str {
        "gelu_new"
    }

    fn default_layer_norm_eps(&self) -> f64 {
        1e-5
    }

    fn read_hf(&self, value: &serde_json::Value, config: &mut ModelConfig) -> Result<(), String> {
        // transformers' default where the file leaves it out.
        config.dropout.embedding = super::get_number(value, "embd_pdrop")?.unwrap_or(0.1);
        Ok(())
    }

    fn unsupported(&self) -> &'static [Unsupported] {
        &[
            (
                "scale_attn_by_inverse_layer_idx",
                "false",
                "shears scales attention scores by 1/sqrt(d_head) only",
            ),
            (
                "reorder_and_upcast_attn",
                "false",
                "shears computes attention scores in the model's dtype, scaled after the product",
            ),
            (
                "scale_attn_weights",
                "true",
                "shears always scales attention scores by 1/sqrt(d_head)",
            ),
            (
                "tie_word_embeddings",
                "true",
                "shears' GPT-2 language-model head is its token embedding",
            ),
        ]
    }

    fn keys(&self) -> &'static [KeyRule] {
        KEYS
    }

    fn prefixes(&self) -> &'static [&'static str] {
        &["transformer."]
    }

    fn is_buffer(&self, key: &str) -> bool {
        key.ends_with(".attn.bias") || key.ends_with(".attn.masked_bias")
    }

    /// `lm_head.weight` is skipped when it equals `wte.weight`, else
    /// [`LoadError::UntiedLmHead`]: shears' GPT-2 ties them.
    fn extra_tensor(
        &self,
        key: &str,
        t: &HostTensor,
        parts: &mut HfParts,
    ) -> Result<bool, LoadError> {
        if key != "lm_head.weight" {
            return Ok(false);
        }
        let wte = parts.backbone.get("embeddings.word.weight");
        if wte.map(|w| (&w.shape, &w.data)) != Some((&t.shape, &t.data)) {
            return Err(LoadError::UntiedLmHead {
                shape: t.shape.clone(),
                max_diff: wte.filter(|w| w.shape == t.shape).map(|w| {
                    w.data
                        .iter()
                        .zip(&t.data)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f32::max)
                }),
            });
        }
        parts.skipped.push(key.to_string());
        Ok(true)
    }

    /// The original `config.json` with `pruned_heads` (original head indices per layer).
    fn plain_config(&self, config: &ModelConfig) -> Result<serde_json::Value, LoadError> {
        let (n_orig_heads, d_ff, pruned) = head_pruned_shape(config, "n_embd", "GPT-2")?;
        let mut value = config.hf_config.clone().unwrap_or_else(|| {
            serde_json::json!({
                "model_type": "gpt2",
                "architectures": ["GPT2LMHeadModel"],
                "activation_function": config.activation.hf_name(),
                "layer_norm_epsilon": config.layer_norm_eps,
                "resid_pdrop": config.dropout.hidden,
                "attn_pdrop": config.dropout.attention,
                "embd_pdrop": config.dropout.embedding,
                "initializer_range": config.initializer_range,
            })
        });
        let obj = value.as_object_mut().expect("config.json is an object");
        obj.insert("vocab_size".into(), config.vocab_size.into());
        obj.insert("n_embd".into(), config.d_model.into());
        obj.insert("n_layer".into(), config.n_layers().into());
        obj.insert("n_head".into(), n_orig_heads.into());
        obj.insert("n_inner".into(), d_ff.into());
        obj.insert("n_positions".into(), config.max_positions.into());
        obj.insert("pruned_heads".into(), serde_json::Value::Object(pruned));
        Ok(value)
    }

    fn shears_model_type(&self) -> &'static str {
        "shears_gpt2"
    }

    fn modeling(&self) -> (&'static str, &'static str) {
        (
            "modeling_shears_gpt2.py",
            include_str!("../../python/modeling_shears_gpt2.py"),
        )
    }

    fn shears_config(&self, config: &ModelConfig) -> serde_json::Value {
        // The original's special tokens (GPT-2's <|endoftext|> by default), which
        // `generate` stops at.
        let token = |key: &str| {
            config
                .hf_config
                .as_ref()
                .and_then(|v| v.get(key))
                .filter(|v| v.is_u64())
                .cloned()
                .unwrap_or_else(|| (config.vocab_size.min(50257).saturating_sub(1)).into())
        };
        let module = self.modeling().0.trim_end_matches(".py");
        serde_json::json!({
            "model_type": self.shears_model_type(),
            "architectures": ["ShearsGpt2LMHeadModel"],
            "auto_map": {
                "AutoConfig": format!("{module}.ShearsGpt2Config"),
                "AutoModel": format!("{module}.ShearsGpt2Model"),
                "AutoModelForCausalLM": format!("{module}.ShearsGpt2LMHeadModel"),
            },
            "embedding_dropout_prob": config.dropout.embedding,
            "bos_token_id": token("bos_token_id"),
            "eos_token_id": token("eos_token_id"),
            "tie_word_embeddings": true,
            "tokenizer_class": "GPT2Tokenizer",
        })
    }

    /// A causal LM under `transformer.`; its LM head is tied to `wte` and not stored.
    fn finish_export(
        &self,
        plain: bool,
        value: &mut serde_json::Value,
        tensors: TensorMap,
        head: Option<&HfHead>,
    ) -> Result<TensorMap, LoadError> {
        if head.is_some() {
            return Err(LoadError::NotRepresentable(
                "a GPT-2 exports as a causal LM, without another task head".into(),
            ));
        }
        set_architecture(
            value,
            if plain {
                "GPT2LMHeadModel"
            } else {
                "ShearsGpt2LMHeadModel"
            },
        );
        Ok(prefixed(tensors, "transformer."))
    }
}
