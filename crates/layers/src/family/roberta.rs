//! RoBERTa: BERT's encoder computation with positions counted from `pad_token_id + 1`
//! (transformers numbers the real tokens of a right-padded row `pad + 1, pad + 2, ...`),
//! keys under `roberta.`, and a sequence classifier (`classifier.dense` + tanh, then
//! `classifier.out_proj`, on the first token) that is BERT's pooler + classifier under
//! other names. `transformers`' `RobertaModel` / `RobertaForSequenceClassification`, or
//! the `shears_bert` modeling file (with the position offset) for any pruned shape.
//!
//! Positions: shears gives position `offset + i` to every token of a row; transformers
//! gives padding tokens `pad_token_id` and numbers the others. Every real token of a
//! right-padded row (what shears' tokenizer batches are) gets the same position either
//! way, and padded keys are masked, so real tokens compute the same; the outputs at padded
//! positions, and left-padded rows, differ.

use shears_spaces::{HostTensor, TensorMap};

use super::bert::{
    KEYS, bert_with_head, encoder_extra, encoder_plain_config, read_encoder, shears_bert_config,
};
use super::{Arch, FamilySpec, KeyRule, prefixed, set_architecture};
use crate::hf::{HfHead, HfParts};
use crate::{LoadError, ModelConfig};

pub(crate) struct Roberta;

/// (RoBERTa classifier key, BERT key): the classifier's dense layer is the pooler, its
/// output projection the classifier.
const HEAD_KEYS: [(&str, &str); 4] = [
    ("classifier.dense.weight", "pooler.dense.weight"),
    ("classifier.dense.bias", "pooler.dense.bias"),
    ("classifier.out_proj.weight", "classifier.weight"),
    ("classifier.out_proj.bias", "classifier.bias"),
];

impl FamilySpec for Roberta {
    fn model_type(&self) -> &'static str {
        "roberta"
    }

    fn arch(&self) -> Arch {
        Arch {
            positions_after_pad: true,
            ..super::bert::ARCH
        }
    }

    fn default_activation(&self) -> &'static str {
        "gelu"
    }

    fn default_layer_norm_eps(&self) -> f64 {
        1e-12
    }

    fn read_hf(&self, value: &serde_json::Value, config: &mut ModelConfig) -> Result<(), String> {
        read_encoder(value, config)?;
        // RobertaConfig's default padding id.
        let pad = super::get_count(value, "pad_token_id")?.unwrap_or(1);
        config.position_offset = pad + 1;
        if config.max_positions <= config.position_offset {
            return Err(format!(
                "max_position_embeddings {} leaves no position after RoBERTa's offset \
                 (pad_token_id {pad} + 1)",
                config.max_positions
            ));
        }
        Ok(())
    }

    fn keys(&self) -> &'static [KeyRule] {
        KEYS
    }

    /// `roberta.`, and `bert.` in its `shears_bert` export.
    fn prefixes(&self) -> &'static [&'static str] {
        &["roberta.", "bert."]
    }

    /// A `RobertaForSequenceClassification`'s head under BERT's names. Its model has no
    /// pooler; a checkpoint that still carries one (transformers 2.x and early 3.x saved
    /// the pretrained pooler, unused) has it skipped, as transformers skips it.
    fn normalize(&self, mut checkpoint: TensorMap, skipped: &mut Vec<String>) -> TensorMap {
        if HEAD_KEYS.iter().all(|(k, _)| checkpoint.contains_key(*k)) {
            for key in ["pooler.dense.weight", "pooler.dense.bias"] {
                if checkpoint.remove(key).is_some() {
                    skipped.push(key.to_string());
                }
            }
            for (theirs, bert) in HEAD_KEYS {
                if let Some(t) = checkpoint.remove(theirs) {
                    checkpoint.insert(bert.to_string(), t);
                }
            }
        }
        checkpoint
    }

    fn extra_tensor(
        &self,
        key: &str,
        t: &HostTensor,
        parts: &mut HfParts,
    ) -> Result<bool, LoadError> {
        Ok(encoder_extra(key, t, parts, "lm_head."))
    }

    fn plain_config(&self, config: &ModelConfig) -> Result<serde_json::Value, LoadError> {
        encoder_plain_config(
            config,
            "RoBERTa",
            serde_json::json!({
                "model_type": "roberta",
                "architectures": ["RobertaModel"],
                "hidden_act": config.activation.hf_name(),
                "layer_norm_eps": config.layer_norm_eps,
                "pad_token_id": config.position_offset.saturating_sub(1),
            }),
        )
    }

    fn shears_model_type(&self) -> &'static str {
        "shears_bert"
    }

    fn modeling(&self) -> (&'static str, &'static str) {
        super::bert::Bert.modeling()
    }

    /// `shears_bert`'s entries with the position offset, RoBERTa's padding and special
    /// tokens, and `shears_family` so that shears reads it back as RoBERTa.
    fn shears_config(&self, config: &ModelConfig) -> serde_json::Value {
        let mut value = shears_bert_config(config);
        let obj = value.as_object_mut().expect("a JSON object");
        obj.insert("position_offset".into(), config.position_offset.into());
        obj.insert(
            "pad_token_id".into(),
            config.position_offset.saturating_sub(1).into(),
        );
        obj.insert("shears_family".into(), self.model_type().into());
        obj.insert("tokenizer_class".into(), "RobertaTokenizer".into());
        for key in ["bos_token_id", "eos_token_id"] {
            if let Some(v) = config.hf_config.as_ref().and_then(|v| v.get(key)) {
                obj.insert(key.into(), v.clone());
            }
        }
        value
    }

    fn finish_export(
        &self,
        plain: bool,
        value: &mut serde_json::Value,
        tensors: TensorMap,
        head: Option<&HfHead>,
    ) -> Result<TensorMap, LoadError> {
        if !plain {
            return Ok(bert_with_head(false, value, tensors, head));
        }
        let Some(head) = head else {
            return Ok(tensors);
        };
        set_architecture(value, "RobertaForSequenceClassification");
        value
            .as_object_mut()
            .expect("config.json is an object")
            .extend(head.config.clone());
        let rename = |key: &str| {
            HEAD_KEYS
                .iter()
                .find(|(_, bert)| *bert == key)
                .map(|(theirs, _)| theirs.to_string())
        };
        let (pooler, backbone): (TensorMap, TensorMap) = tensors
            .into_iter()
            .partition(|(k, _)| k.starts_with("pooler."));
        let mut out = prefixed(backbone, "roberta.");
        for (k, t) in pooler.into_iter().chain(head.tensors.clone()) {
            let key = rename(&k).ok_or_else(|| {
                LoadError::NotRepresentable(format!(
                    "RobertaForSequenceClassification has no place for `{k}`"
                ))
            })?;
            out.insert(key, t);
        }
        Ok(out)
    }
}
