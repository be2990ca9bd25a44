//! Task models (a backbone with an optional classification head, gated or not), their loss
//! and their evaluation.

use burn::module::{AutodiffModule, ModuleMapper, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use shears_gates::{Draw, GateSet};
use shears_layers::{ModelConfig, ModelInput, ModelOutput};
use shears_pruners::{ClassifierHead, SizeMeasure};

use crate::data::{Split, make_batch};

pub use shears_pruners::{GatedTaskModel, TaskModel};

/// What the training loop needs of a model.
///
/// `Sync` because training passes run on a rayon worker (`kernels::on_workers`).
pub trait Net<B: Backend>: Module<B> + burn::module::ModuleDisplay + Sync {
    /// Forward pass (gates, if any, drawn as `draw` says).
    fn output(&self, input: ModelInput<B>, draw: Draw) -> ModelOutput<B>;
    /// The classification head, if any.
    fn head(&self) -> Option<&ClassifierHead<B>>;
    /// The backbone's config.
    fn config(&self) -> &ModelConfig;
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
    /// The layer map of a distilled model ([`crate::distill::Distilled`]).
    fn layer_map(&self) -> Option<&crate::distill::LayerMap<B>> {
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
    fn config(&self) -> &ModelConfig {
        self.backbone.config()
    }
}

impl<B: Backend> Net<B> for GatedTaskModel<B> {
    fn output(&self, input: ModelInput<B>, draw: Draw) -> ModelOutput<B> {
        self.gated.forward(input, draw)
    }
    fn head(&self) -> Option<&ClassifierHead<B>> {
        self.head.as_ref()
    }
    fn config(&self) -> &ModelConfig {
        self.gated.model.config()
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

/// What a forward pass scores: one row of logits per prediction with its target.
pub struct Scored<B: Backend> {
    /// Classification: the head's logits `[batch, classes]`; LM: the next-token logits of
    /// every position but the last, `[batch · (seq - 1), vocab]`.
    pub logits: Tensor<B, 2>,
    /// The classes, or the next tokens (`None`: a classifier run without labels).
    pub targets: Option<Tensor<B, 1, Int>>,
    /// The backbone's hidden states, when the input asked for them.
    pub hidden_states: Option<Vec<Tensor<B, 3>>>,
    /// Whether the rows are classes (accuracy is counted) rather than next tokens.
    pub classes: bool,
}

impl<B: Backend> Scored<B> {
    /// Mean cross entropy of the rows (`[1]`, differentiable) and its tally.
    ///
    /// # Panics
    /// Without targets.
    pub fn cross_entropy(&self) -> (Tensor<B, 1>, Tally) {
        let targets = self.targets.clone().expect("scoring needs targets");
        let n = targets.dims()[0];
        let ce = CrossEntropyLossConfig::new().init(&self.logits.device());
        let correct: i64 = self
            .logits
            .clone()
            .argmax(1)
            .reshape([n])
            .equal(targets.clone())
            .int()
            .sum()
            .into_scalar()
            .elem();
        let l = ce.forward(self.logits.clone(), targets);
        let lv: f64 = l.clone().into_scalar().elem();
        (
            l,
            Tally {
                loss_sum: lv * n as f64,
                correct: if self.classes { correct as usize } else { 0 },
                count: n,
            },
        )
    }
}

/// The logits of a batch and what they predict. Classification: the head on the pooled
/// output (with the classifier's dropout when the input has a dropout key); LM: the next
/// token at every position.
pub fn scored<B: Backend, M: Net<B>>(
    model: &M,
    input: ModelInput<B>,
    labels: Option<Tensor<B, 1, Int>>,
    draw: Draw,
) -> Scored<B> {
    let ids = input.ids.clone();
    let dropout = input.dropout;
    let out = model.output(input, draw);
    match model.head() {
        Some(head) => {
            let pooled = out
                .pooled
                .expect("a classification model needs an encoder backbone with a pooler");
            // The classifier's input dropout, as `BertForSequenceClassification`'s.
            let pooled = match dropout {
                Some(key) => shears_layers::dropout::dropout(
                    pooled,
                    model.config().dropout.hidden,
                    shears_layers::dropout::Site::Classifier.key(key),
                ),
                None => pooled,
            };
            Scored {
                logits: head.forward(pooled),
                targets: labels,
                hidden_states: out.hidden_states,
                classes: true,
            }
        }
        None => {
            let logits = out
                .logits
                .expect("a language model needs a GPT-2 backbone with its LM head");
            let [b, s, v] = logits.dims();
            Scored {
                logits: logits.slice([0..b, 0..s - 1]).reshape([b * (s - 1), v]),
                targets: Some(ids.slice([0..b, 1..s]).reshape([b * (s - 1)])),
                hidden_states: out.hidden_states,
                classes: false,
            }
        }
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
    scored(model, input, labels, draw).cross_entropy()
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

/// Per-example tallies of `model` on `split`, in the split's order (an LM block's rows
/// summed), for paired comparisons of two models on the same examples.
pub fn evaluate_rows<B: Backend, M: Net<B>>(
    model: &M,
    split: &Split,
    pad_id: u32,
    batch_size: usize,
    device: &B::Device,
) -> Vec<Tally> {
    let mut order: Vec<usize> = (0..split.len()).collect();
    order.sort_by_key(|&i| split.ids[i].len());
    let mut rows = vec![Tally::default(); split.len()];
    for idx in order.chunks(batch_size) {
        let b = make_batch::<B>(split, idx, pad_id, device);
        let s = scored(model, b.input, b.labels, Draw::Eval);
        let targets = s.targets.clone().expect("evaluation has targets");
        let n = targets.dims()[0];
        let nll: Vec<f32> = burn::tensor::activation::log_softmax(s.logits.clone(), 1)
            .gather(1, targets.clone().reshape([n, 1]))
            .neg()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 losses");
        // Through ints: wgpu stores booleans as u32, which `to_vec::<bool>` refuses.
        let hit: Vec<bool> = s
            .logits
            .argmax(1)
            .reshape([n])
            .equal(targets)
            .int()
            .into_data()
            .convert::<i32>()
            .to_vec::<i32>()
            .expect("hits")
            .into_iter()
            .map(|h| h != 0)
            .collect();
        let per_example = n / idx.len();
        for (k, &i) in idx.iter().enumerate() {
            for r in k * per_example..(k + 1) * per_example {
                rows[i].add(Tally {
                    loss_sum: nll[r] as f64,
                    correct: usize::from(s.classes && hit[r]),
                    count: 1,
                });
            }
        }
    }
    rows
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
