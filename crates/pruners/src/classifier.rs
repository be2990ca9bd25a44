//! `SequenceClassifier`: a BERT with a linear head on its pooled output, the task model the
//! gated-training pipeline fine-tunes.

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use shears_layers::{ModelInput, Transformer};

use crate::GatedModel;

/// `logits = W · pooled + b`.
#[derive(Module, Debug)]
pub struct ClassifierHead<B: Backend> {
    /// `[d_pooler, n_classes]`.
    pub linear: Linear<B>,
}

impl<B: Backend> ClassifierHead<B> {
    /// A fresh head.
    pub fn new(d_pooler: usize, n_classes: usize, device: &B::Device) -> Self {
        Self {
            linear: LinearConfig::new(d_pooler, n_classes).init(device),
        }
    }

    /// # Shapes
    /// `pooled: [batch, d_pooler]` -> `[batch, n_classes]`
    pub fn forward(&self, pooled: Tensor<B, 2>) -> Tensor<B, 2> {
        self.linear.forward(pooled)
    }
}

/// A BERT backbone and a classification head.
#[derive(Module, Debug)]
pub struct SequenceClassifier<B: Backend> {
    /// The backbone (must have a pooler).
    pub backbone: Transformer<B>,
    /// The head.
    pub head: ClassifierHead<B>,
}

impl<B: Backend> SequenceClassifier<B> {
    /// Logits, `[batch, n_classes]`.
    ///
    /// # Panics
    /// If the backbone has no pooler (GPT-2).
    pub fn forward(&self, input: ModelInput<B>) -> Tensor<B, 2> {
        let pooled = self
            .backbone
            .forward(input)
            .pooled
            .expect("a classifier needs a BERT with a pooler");
        self.head.forward(pooled)
    }
}

/// A gated backbone and a classification head.
#[derive(Module, Debug)]
pub struct GatedClassifier<B: Backend> {
    /// Gated backbone.
    pub gated: GatedModel<B>,
    /// The head.
    pub head: ClassifierHead<B>,
}

impl<B: Backend> GatedClassifier<B> {
    /// Logits with the gates as masks (noisy when `training`).
    pub fn forward(&self, input: ModelInput<B>, training: bool) -> Tensor<B, 2> {
        let pooled = self
            .gated
            .forward(input, training)
            .pooled
            .expect("a classifier needs a BERT with a pooler");
        self.head.forward(pooled)
    }
}
