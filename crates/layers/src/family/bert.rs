//! BERT: post-norm encoder with token types and a pooler; `transformers`' `BertModel` /
//! `BertForSequenceClassification`, or `shears_bert` for any pruned shape.

use shears_spaces::{HostTensor, TensorMap};

use super::{Arch, FamilySpec, KeyRule, Transform, prefixed, set_architecture};
use crate::hf::{HfHead, HfParts, head_pruned_shape};
use crate::{LoadError, ModelConfig};

pub(crate) struct Bert;

/// BERT's key table (RoBERTa's too: its encoder has BERT's names).
pub(crate) const KEYS: &[KeyRule] = &[
    (
        "embeddings.word.weight",
        "embeddings.word_embeddings.weight",
        Transform::Same,
    ),
    (
        "embeddings.position.weight",
        "embeddings.position_embeddings.weight",
        Transform::Same,
    ),
    (
        "embeddings.token_type.weight",
        "embeddings.token_type_embeddings.weight",
        Transform::Same,
    ),
    (
        "embeddings.norm.weight",
        "embeddings.LayerNorm.weight",
        Transform::Same,
    ),
    (
        "embeddings.norm.bias",
        "embeddings.LayerNorm.bias",
        Transform::Same,
    ),
    (
        "layers.{}.attention.query.weight",
        "encoder.layer.{}.attention.self.query.weight",
        Transform::Transpose,
    ),
    (
        "layers.{}.attention.query.bias",
        "encoder.layer.{}.attention.self.query.bias",
        Transform::Same,
    ),
    (
        "layers.{}.attention.key.weight",
        "encoder.layer.{}.attention.self.key.weight",
        Transform::Transpose,
    ),
    (
        "layers.{}.attention.key.bias",
        "encoder.layer.{}.attention.self.key.bias",
        Transform::Same,
    ),
    (
        "layers.{}.attention.value.weight",
        "encoder.layer.{}.attention.self.value.weight",
        Transform::Transpose,
    ),
    (
        "layers.{}.attention.value.bias",
        "encoder.layer.{}.attention.self.value.bias",
        Transform::Same,
    ),
    (
        "layers.{}.attention.output.weight",
        "encoder.layer.{}.attention.output.dense.weight",
        Transform::Transpose,
    ),
    (
        "layers.{}.attention.output.bias",
        "encoder.layer.{}.attention.output.dense.bias",
        Transform::Same,
    ),
    (
        "layers.{}.attention_norm.weight",
        "encoder.layer.{}.attention.output.LayerNorm.weight",
        Transform::Same,
    ),
    (
        "layers.{}.attention_norm.bias",
        "encoder.layer.{}.attention.output.LayerNorm.bias",
        Transform::Same,
    ),
    (
        "layers.{}.ffn.up.weight",
        "encoder.layer.{}.intermediate.dense.weight",
        Transform::Transpose,
    ),
    (
        "layers.{}.ffn.up.bias",
        "encoder.layer.{}.intermediate.dense.bias",
        Transform::Same,
    ),
    (
        "layers.{}.ffn.down.weight",
        "encoder.layer.{}.output.dense.weight",
        Transform::Transpose,
    ),
    (
        "layers.{}.ffn.down.bias",
        "encoder.layer.{}.output.dense.bias",
        Transform::Same,
    ),
    (
        "layers.{}.ffn_norm.weight",
        "encoder.layer.{}.output.LayerNorm.weight",
        Transform::Same,
    ),
    (
        "layers.{}.ffn_norm.bias",
        "encoder.layer.{}.output.LayerNorm.bias",
        Transform::Same,
    ),
    ("pooler.weight", "pooler.dense.weight", Transform::Transpose),
    ("pooler.bias", "pooler.dense.bias", Transform::Same),
];

pub(crate) const ARCH: Arch = Arch {
    pre_norm: false,
    causal: false,
    token_types: true,
    lm_head: false,
    pooler: true,
    scaled_init: false,
    positions_after_pad: false,
};

/// Token types (default 2) and a pooler of the hidden width.
pub(crate) fn read_encoder(
    value: &serde_json::Value,
    config: &mut ModelConfig,
) -> Result<(), String> {
    config.type_vocab_size = super::get_count(value, "type_vocab_size")?.unwrap_or(2);
    config.d_pooler = Some(config.d_model);
    Ok(())
}

/// A sequence classifier's `classifier.*` is the task head; pre-training and masked-LM
/// heads (`skip`) are skipped.
pub(crate) fn encoder_extra(key: &str, t: &HostTensor, parts: &mut HfParts, skip: &str) -> bool {
    if key.starts_with("classifier.") {
        parts.head.insert(key.to_string(), t.clone());
    } else if key.starts_with(skip) {
        parts.skipped.push(key.to_string());
    } else {
        return false;
    }
    true
}

/// The original `config.json` (else `defaults`) with the head-pruned sizes and
/// `pruned_heads` of `config`, under `name`'s keys.
pub(crate) fn encoder_plain_config(
    config: &ModelConfig,
    name: &str,
    defaults: serde_json::Value,
) -> Result<serde_json::Value, LoadError> {
    let mut value = config.hf_config.clone().unwrap_or(defaults);
    let (n_orig_heads, d_ff, pruned) = head_pruned_shape(config, "hidden_size", name)?;
    let obj = value.as_object_mut().expect("config.json is an object");
    obj.insert("vocab_size".into(), config.vocab_size.into());
    obj.insert("hidden_size".into(), config.d_model.into());
    obj.insert("num_hidden_layers".into(), config.n_layers().into());
    obj.insert("num_attention_heads".into(), n_orig_heads.into());
    obj.insert("intermediate_size".into(), d_ff.into());
    obj.insert(
        "max_position_embeddings".into(),
        config.max_positions.into(),
    );
    obj.insert("type_vocab_size".into(), config.type_vocab_size.into());
    obj.insert("pruned_heads".into(), serde_json::Value::Object(pruned));
    Ok(value)
}

/// `shears_bert`'s entries (RoBERTa adds its own on top).
pub(crate) fn shears_bert_config(config: &ModelConfig) -> serde_json::Value {
    let module = Bert.modeling().0.trim_end_matches(".py");
    serde_json::json!({
        "model_type": Bert.shears_model_type(),
        "architectures": ["ShearsBertModel"],
        "auto_map": {
            "AutoConfig": format!("{module}.ShearsBertConfig"),
            "AutoModel": format!("{module}.ShearsBertModel"),
            "AutoModelForSequenceClassification":
                format!("{module}.ShearsBertForSequenceClassification"),
        },
        "type_vocab_size": config.type_vocab_size,
        "pooler_size": config.d_pooler,
        "pad_token_id": 0,
        // AutoTokenizer finds no tokenizer for an unknown model_type without it.
        "tokenizer_class": "BertTokenizer",
    })
}

/// A BERT-layout export with a classifier: the backbone under `bert.`, the head's
/// `classifier.*` and config entries added.
pub(crate) fn bert_with_head(
    plain: bool,
    value: &mut serde_json::Value,
    tensors: TensorMap,
    head: Option<&HfHead>,
) -> TensorMap {
    let Some(head) = head else {
        return tensors;
    };
    set_architecture(
        value,
        if plain {
            "BertForSequenceClassification"
        } else {
            "ShearsBertForSequenceClassification"
        },
    );
    value
        .as_object_mut()
        .expect("config.json is an object")
        .extend(head.config.clone());
    prefixed(tensors, "bert.")
        .into_iter()
        .chain(head.tensors.clone())
        .collect()
}

impl FamilySpec for Bert {
    fn model_type(&self) -> &'static str {
        "bert"
    }

    fn arch(&self) -> Arch {
        ARCH
    }

    fn default_activation(&self) -> &'static str {
        "gelu"
    }

    fn default_layer_norm_eps(&self) -> f64 {
        1e-12
    }

    fn read_hf(&self, value: &serde_json::Value, config: &mut ModelConfig) -> Result<(), String> {
        read_encoder(value, config)
    }

    fn keys(&self) -> &'static [KeyRule] {
        KEYS
    }

    fn prefixes(&self) -> &'static [&'static str] {
        &["bert."]
    }

    fn extra_tensor(
        &self,
        key: &str,
        t: &HostTensor,
        parts: &mut HfParts,
    ) -> Result<bool, LoadError> {
        Ok(encoder_extra(key, t, parts, "cls."))
    }

    fn plain_config(&self, config: &ModelConfig) -> Result<serde_json::Value, LoadError> {
        encoder_plain_config(
            config,
            "BERT",
            serde_json::json!({
                "model_type": "bert",
                "architectures": ["BertModel"],
                "hidden_act": config.activation.hf_name(),
                "layer_norm_eps": config.layer_norm_eps,
                "pad_token_id": 0,
            }),
        )
    }

    fn shears_model_type(&self) -> &'static str {
        "shears_bert"
    }

    fn modeling(&self) -> (&'static str, &'static str) {
        (
            "modeling_shears_bert.py",
            include_str!("../../python/modeling_shears_bert.py"),
        )
    }

    fn shears_config(&self, config: &ModelConfig) -> serde_json::Value {
        shears_bert_config(config)
    }

    fn finish_export(
        &self,
        plain: bool,
        value: &mut serde_json::Value,
        tensors: TensorMap,
        head: Option<&HfHead>,
    ) -> Result<TensorMap, LoadError> {
        Ok(bert_with_head(plain, value, tensors, head))
    }
}
