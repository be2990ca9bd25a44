//! The adapters of seed 004's pruners: a model with its task head ([`TaskModel`]: a BERT
//! sequence classifier, a GPT-2 language model, or a bare backbone), its gated twin
//! ([`GatedTaskModel`]), and the way from one to the other and back, smaller.

use std::path::Path;

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use shears_gates::{Draw, Harden};
use shears_layers::hf::{CastReport, Dtype, HfHead};
use shears_layers::{LoadError, ModelInput, ModelOutput, Transformer, tensorio};
use shears_spaces::TensorMap;

use crate::{GateSpec, GatedModel, PruneReport, PrunerError};

/// `logits = W · pooled + b`, on the encoder's pooled output (BERT's pooler, RoBERTa's
/// classifier.dense).
#[derive(Module, Debug)]
pub struct ClassifierHead<B: Backend> {
    /// `[d_pooler, n_classes]`.
    pub linear: Linear<B>,
}

impl<B: Backend> ClassifierHead<B> {
    /// A fresh head, initialised as Burn's `Linear` is (weight and bias uniform in
    /// `±1/sqrt(d_pooler)`), from a host generator seeded with `seed` rather than the
    /// backend's process-wide seed, so the same seed gives the same head on every run.
    pub fn new(d_pooler: usize, n_classes: usize, seed: u64, device: &B::Device) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let bound = 1.0 / (d_pooler.max(1) as f64).sqrt();
        let mut draw = |shape: Vec<usize>| {
            let n = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            TensorData::new(v, shape)
        };
        let mut linear = LinearConfig::new(d_pooler, n_classes).init(device);
        linear.weight =
            Param::from_tensor(Tensor::from_data(draw(vec![d_pooler, n_classes]), device));
        linear.bias = Some(Param::from_tensor(Tensor::from_data(
            draw(vec![n_classes]),
            device,
        )));
        Self { linear }
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.linear.weight.dims()[1]
    }

    /// # Shapes
    /// `pooled: [batch, d_pooler]` -> `[batch, n_classes]`
    pub fn forward(&self, pooled: Tensor<B, 2>) -> Tensor<B, 2> {
        self.linear.forward(pooled)
    }
}

/// A backbone and what its task puts on top: a classification head on an encoder's pooled
/// output, or nothing (GPT-2's language-model head is tied to its token embedding and
/// lives in the backbone; a bare BERT is a feature extractor).
#[derive(Module, Debug)]
pub struct TaskModel<B: Backend> {
    /// The backbone.
    pub backbone: Transformer<B>,
    /// The classification head (BERT sequence classification).
    pub head: Option<ClassifierHead<B>>,
}

impl<B: Backend> TaskModel<B> {
    /// A bare backbone (a GPT-2 keeps its LM head).
    pub fn backbone(backbone: Transformer<B>) -> Self {
        Self {
            backbone,
            head: None,
        }
    }

    /// A BERT sequence classifier.
    ///
    /// # Panics
    /// If the backbone has no pooler to put the head on.
    pub fn classifier(backbone: Transformer<B>, head: ClassifierHead<B>) -> Self {
        assert!(
            backbone.config().d_pooler.is_some(),
            "a sequence classifier needs an encoder backbone with a pooler"
        );
        Self {
            backbone,
            head: Some(head),
        }
    }

    /// The backbone's output.
    pub fn forward(&self, input: ModelInput<B>) -> ModelOutput<B> {
        self.backbone.forward(input)
    }

    /// Class logits `[batch, n_classes]`, for a classifier.
    pub fn class_logits(&self, input: ModelInput<B>) -> Option<Tensor<B, 2>> {
        class_logits(self.head.as_ref(), self.forward(input))
    }

    /// Writes a directory `transformers` loads: `BertForSequenceClassification` /
    /// `RobertaForSequenceClassification` (with `id2label` from `labels`, in class order)
    /// for a classifier, `BertModel` / `RobertaModel` for a bare encoder, `GPT2LMHeadModel`
    /// for a GPT-2 LM. Removed heads are listed in `pruned_heads`;
    /// tokenizer files are copied from `copy_from`. Another pruned shape is written as
    /// `shears_bert` / `shears_gpt2` with its modeling file (see
    /// [`Transformer::export_hf`]); factorized models are refused
    /// ([`LoadError::NotRepresentable`]).
    pub fn export_hf(
        &self,
        dir: &Path,
        labels: &[String],
        copy_from: Option<&Path>,
    ) -> Result<(), LoadError> {
        self.export_hf_as(dir, labels, copy_from, Dtype::F32)
            .map(|_| ())
    }

    /// [`TaskModel::export_hf`] with the weights written as `dtype`; returns the cast error.
    pub fn export_hf_as(
        &self,
        dir: &Path,
        labels: &[String],
        copy_from: Option<&Path>,
        dtype: Dtype,
    ) -> Result<CastReport, LoadError> {
        let Some(head) = &self.head else {
            return self.backbone.export_hf_as(dir, copy_from, None, dtype);
        };
        if labels.len() != head.n_classes() {
            return Err(LoadError::NotRepresentable(format!(
                "{} labels given for a head of {} classes",
                labels.len(),
                head.n_classes()
            )));
        }
        let mut tensors = TensorMap::new();
        let t = tensorio::export(head);
        // Burn's Linear is [in, out]; torch's is [out, in].
        tensors.insert("classifier.weight".into(), t["linear.weight"].transpose());
        tensors.insert("classifier.bias".into(), t["linear.bias"].clone());
        let id2label: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone().into()))
            .collect();
        let label2id: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i.into()))
            .collect();
        let config = [
            ("id2label".to_string(), id2label.into()),
            ("label2id".to_string(), label2id.into()),
            (
                "problem_type".to_string(),
                "single_label_classification".into(),
            ),
        ]
        .into_iter()
        .collect();
        let hf_head = HfHead { tensors, config };
        self.backbone
            .export_hf_as(dir, copy_from, Some(&hf_head), dtype)
    }

    /// The seed's `apply_gates`: wraps the backbone in fresh gates (the weights move, the
    /// head comes along).
    pub fn with_gates(
        self,
        spec: &GateSpec,
        device: &B::Device,
    ) -> Result<GatedTaskModel<B>, PrunerError> {
        Ok(GatedTaskModel {
            gated: GatedModel::new(self.backbone, spec, device)?,
            head: self.head,
        })
    }
}

/// A [`TaskModel`] whose backbone carries gates.
#[derive(Module, Debug)]
pub struct GatedTaskModel<B: Backend> {
    /// The gated backbone.
    pub gated: GatedModel<B>,
    /// The classification head.
    pub head: Option<ClassifierHead<B>>,
}

impl<B: Backend> GatedTaskModel<B> {
    /// The backbone's output with the gates as masks (noisy samples for [`Draw::Sample`]).
    pub fn forward(&self, input: ModelInput<B>, draw: Draw) -> ModelOutput<B> {
        self.gated.forward(input, draw)
    }

    /// Class logits `[batch, n_classes]`, for a classifier.
    pub fn class_logits(&self, input: ModelInput<B>, draw: Draw) -> Option<Tensor<B, 2>> {
        class_logits(self.head.as_ref(), self.forward(input, draw))
    }

    /// Hardens the gates and removes the closed units (see [`GatedModel::prune`]); the
    /// head is kept as it is.
    pub fn prune(self, harden: Harden) -> Result<(TaskModel<B>, PruneReport), PrunerError> {
        let (backbone, report) = self.gated.prune(harden)?;
        Ok((
            TaskModel {
                backbone,
                head: self.head,
            },
            report,
        ))
    }

    /// [`GatedModel::prune_to_size`]; the head is kept as it is.
    pub fn prune_to_size(
        self,
        measure: crate::SizeMeasure,
        target: f64,
        round_to: usize,
    ) -> Result<(TaskModel<B>, PruneReport), PrunerError> {
        let (backbone, report) = self.gated.prune_to_size(measure, target, round_to)?;
        Ok((
            TaskModel {
                backbone,
                head: self.head,
            },
            report,
        ))
    }

    /// The seed's `remove_gates`: the task model with every unit.
    pub fn without_gates(self) -> TaskModel<B> {
        TaskModel {
            backbone: self.gated.into_model(),
            head: self.head,
        }
    }
}

fn class_logits<B: Backend>(
    head: Option<&ClassifierHead<B>>,
    out: ModelOutput<B>,
) -> Option<Tensor<B, 2>> {
    Some(head?.forward(out.pooled?))
}
