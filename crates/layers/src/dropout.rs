//! Training-time dropout whose draws are a function of a key, not of a generator's state.
//!
//! A training step gives the model one key ([`crate::ModelInput::with_dropout`]); every
//! place that drops units (a [`Site`]) derives its own key from it, and element `i` of that
//! site is kept when [`shears_spaces::uniform`]`(site key, i) >= p`. So the same step draws
//! the same units on every backend, thread count and kernel (the CPU attention kernel and the
//! generic path drop the same probabilities), and a resumed run draws exactly what the
//! uninterrupted one would have. Without a key (evaluation) nothing is dropped.
//!
//! Where (as Hugging Face's BERT and GPT-2 do): the embeddings' output (`embedding`), the
//! attention probabilities (`attention`), each attention and feed-forward block's output
//! before it joins the residual stream (`hidden`), and a classifier's pooled input
//! (`hidden`, as `BertForSequenceClassification` without `classifier_dropout`).

use burn::prelude::*;
use serde::{Deserialize, Serialize};
use shears_spaces::{mix, uniform};

/// Dropout probabilities of a model, used in training only.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropoutConfig {
    /// Blocks' outputs and a classifier's input (HF `hidden_dropout_prob`, `resid_pdrop`).
    pub hidden: f64,
    /// Attention probabilities (HF `attention_probs_dropout_prob`, `attn_pdrop`).
    pub attention: f64,
    /// The embeddings' output (HF BERT: `hidden_dropout_prob`; GPT-2: `embd_pdrop`).
    pub embedding: f64,
}

impl DropoutConfig {
    /// Every probability `p`.
    pub fn all(p: f64) -> Self {
        Self {
            hidden: p,
            attention: p,
            embedding: p,
        }
    }

    /// Whether nothing is ever dropped.
    pub fn is_off(&self) -> bool {
        self.hidden == 0.0 && self.attention == 0.0 && self.embedding == 0.0
    }
}

/// A place in the model where units are dropped; each has its own stream of draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// The embeddings' output.
    Embeddings,
    /// Layer `l`'s attention probabilities.
    AttentionProbs(usize),
    /// Layer `l`'s attention block output.
    AttentionOutput(usize),
    /// Layer `l`'s feed-forward block output.
    FfnOutput(usize),
    /// A classification head's input.
    Classifier,
}

impl Site {
    /// The key of this site's draws under a step's key.
    pub fn key(self, step_key: u64) -> u64 {
        let (kind, layer) = match self {
            Site::Embeddings => (1u64, 0usize),
            Site::AttentionProbs(l) => (2, l),
            Site::AttentionOutput(l) => (3, l),
            Site::FfnOutput(l) => (4, l),
            Site::Classifier => (5, 0),
        };
        mix(mix(step_key) ^ mix((layer as u64) << 8 | kind))
    }
}

/// Whether element `index` is kept at probability `p` under `key`.
#[inline]
pub fn kept(key: u64, index: u64, p: f32) -> bool {
    uniform(key, index) >= p
}

/// The multipliers of elements `0..n`: `1 / (1 - p)` where kept, 0 where dropped.
pub fn mask_values(key: u64, p: f64, n: usize) -> Vec<f32> {
    let scale = (1.0 / (1.0 - p)) as f32;
    let p = p as f32;
    (0..n as u64)
        .map(|i| if kept(key, i, p) { scale } else { 0.0 })
        .collect()
}

/// `x` with each element zeroed with probability `p` and the others scaled by `1 / (1 - p)`,
/// elements numbered in row-major order; `x` itself when `p` is 0.
///
/// # Panics
/// When `p` is not in `[0, 1)`.
pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, p: f64, key: u64) -> Tensor<B, D> {
    assert!(
        (0.0..1.0).contains(&p),
        "dropout probability {p} is not in [0, 1)"
    );
    if p == 0.0 {
        return x;
    }
    let shape = x.dims();
    let n = shape.iter().product();
    let mask =
        Tensor::<B, D>::from_data(TensorData::new(mask_values(key, p, n), shape), &x.device());
    x * mask
}
