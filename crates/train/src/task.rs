//! Task models (a backbone with an optional classification head, gated or not), their loss
//! and their evaluation.

use burn::module::{AutodiffModule, ModuleMapper, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use shears_gates::{Draw, GateSet};
use shears_layers::{ModelInput, ModelOutput};
use shears_pruners::{ClassifierHead, SizeMeasure};

use crate::data::{Split, make_batch};

pub use shears_pruners::{GatedTaskModel, TaskModel};

/// What the training loop needs of a model.
pub trait Net<B: Backend>: Module<B> {
    /// Forward pass (gates, if any, drawn as `draw` says).
    fn output(&self, input: ModelInput<B>, draw: Draw) -> ModelOutput<B>;
    /// The classification head, if any.
    fn head(&self) -> Option<&ClassifierHead<B>>;
    /// The gates, if any.
    fn gates(&self) -> Option<&GateSet<B>> {
        None
    }
    /// Replaces the gates through `f` (no-op without gates).
    fn map_gates(self, _f: impl FnOnce(GateSet<B>) -> GateSet<B>) -> Self
    where
        Self: Sized,
    {
        self
    }
    /// The expected sparsity under the gates, `[1]`, differentiable: the fraction of gated
    /// units closed (`measure` `None`) or of the size removed. `None` without gates.
    fn expected_sparsity(&self, _measure: Option<SizeMeasure>) -> Option<Tensor<B, 1>> {
        None
    }
}

impl<B: Backend> Net<B> for TaskModel<B> {
    fn output(&self, input: ModelInput<B>, _draw: Draw) -> ModelOutput<B> {
        self.backbone.forward(input)
    }
    fn head(&self) -> Option<&ClassifierHead<B>> {
        self.head.as_ref()
    }
}

impl<B: Backend> Net<B> for GatedTaskModel<B> {
    fn output(&self, input: ModelInput<B>, draw: Draw) -> ModelOutput<B> {
        self.gated.forward(input, draw)
    }
    fn head(&self) -> Option<&ClassifierHead<B>> {
        self.head.as_ref()
    }
    fn gates(&self) -> Option<&GateSet<B>> {
        Some(&self.gated.gates)
    }
    fn map_gates(mut self, f: impl FnOnce(GateSet<B>) -> GateSet<B>) -> Self {
        self.gated.gates = f(self.gated.gates);
        self
    }
    fn expected_sparsity(&self, measure: Option<SizeMeasure>) -> Option<Tensor<B, 1>> {
        Some(match measure {
            None => self.gated.gates.expected_sparsity(),
            Some(m) => self.gated.expected_size_sparsity(m),
        })
    }
}

/// Sums over a batch, for running metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// Sum of per-item losses (examples or predicted tokens).
    pub loss_sum: f64,
    /// Correct predictions (classification).
    pub correct: usize,
    /// Items.
    pub count: usize,
}

impl Tally {
    /// Adds another tally.
    pub fn add(&mut self, o: Tally) {
        self.loss_sum += o.loss_sum;
        self.correct += o.correct;
        self.count += o.count;
    }
    /// Mean loss.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.count.max(1) as f64
    }
    /// Accuracy.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.count.max(1) as f64
    }
    /// Perplexity `exp(mean token NLL)`.
    pub fn perplexity(&self) -> f64 {
        self.loss().exp()
    }
}

/// Mean loss of a batch (`[1]`, differentiable) and its tally. Classification: cross
/// entropy of the head's logits; LM: next-token cross entropy over every position.
pub fn loss<B: Backend, M: Net<B>>(
    model: &M,
    input: ModelInput<B>,
    labels: Option<Tensor<B, 1, Int>>,
    draw: Draw,
) -> (Tensor<B, 1>, Tally) {
    let ids = input.ids.clone();
    let device = ids.device();
    let out = model.output(input, draw);
    let ce = CrossEntropyLossConfig::new().init(&device);
    match (model.head(), labels) {
        (Some(head), Some(labels)) => {
            let pooled = out
                .pooled
                .expect("a classification model needs a BERT backbone with a pooler");
            let logits = head.forward(pooled);
            let n = labels.dims()[0];
            let correct: i64 = logits
                .clone()
                .argmax(1)
                .reshape([n])
                .equal(labels.clone())
                .int()
                .sum()
                .into_scalar()
                .elem();
            let l = ce.forward(logits, labels);
            let lv: f64 = l.clone().into_scalar().elem();
            (
                l,
                Tally {
                    loss_sum: lv * n as f64,
                    correct: correct as usize,
                    count: n,
                },
            )
        }
        _ => {
            let logits = out
                .logits
                .expect("a language model needs a GPT-2 backbone with its LM head");
            let [b, s, v] = logits.dims();
            let pred = logits.slice([0..b, 0..s - 1]).reshape([b * (s - 1), v]);
            let target = ids.slice([0..b, 1..s]).reshape([b * (s - 1)]);
            let l = ce.forward(pred, target);
            let lv: f64 = l.clone().into_scalar().elem();
            let n = b * (s - 1);
            (
                l,
                Tally {
                    loss_sum: lv * n as f64,
                    correct: 0,
                    count: n,
                },
            )
        }
    }
}

/// Evaluates `model` on a whole split (no gradients, deterministic gates).
pub fn evaluate<B: Backend, M: Net<B>>(
    model: &M,
    split: &Split,
    pad_id: u32,
    batch_size: usize,
    device: &B::Device,
) -> Tally {
    // Sort by length so batches pad little; the result does not depend on the order.
    let mut order: Vec<usize> = (0..split.len()).collect();
    order.sort_by_key(|&i| split.ids[i].len());
    let mut tally = Tally::default();
    for idx in order.chunks(batch_size) {
        let b = make_batch::<B>(split, idx, pad_id, device);
        let (_, t) = loss(model, b.input, b.labels, Draw::Eval);
        tally.add(t);
    }
    tally
}

/// The autodiff twin of an inner-backend module with every parameter trainable. (Burn's
/// `from_inner` keeps each parameter's `require_grad` flag, and parameters created or loaded
/// on a backend without autodiff carry `false`: the model would silently not learn.)
pub fn trainable<B: AutodiffBackend, M: AutodiffModule<B>>(inner: M::InnerModule) -> M {
    struct RequireGrad;
    impl<B: Backend> ModuleMapper<B> for RequireGrad {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            p.set_require_grad(true)
        }
    }
    M::from_inner(inner).map(&mut RequireGrad)
}
