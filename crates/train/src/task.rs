//! Task models (a backbone with an optional classification head, gated or not), their loss
//! and their evaluation.

use burn::module::{AutodiffModule, ModuleMapper, Param};
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
    /// every position, `[batch · seq, vocab]`.
    pub logits: Tensor<B, 2>,
    /// One target per row of `logits`: the class, or the next token; -1 where a row has
    /// none (an LM's last position, or one followed by padding). `None`: a classifier run
    /// without labels.
    pub targets: Option<Vec<i64>>,
    /// The backbone's hidden states, when the input asked for them.
    pub hidden_states: Option<Vec<Tensor<B, 3>>>,
    /// Whether the rows are classes (accuracy is counted) rather than next tokens.
    pub classes: bool,
}

/// The values of an integer tensor, on the host.
fn host_ids<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Vec<i64> {
    t.into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("integer ids")
}

impl<B: Backend> Scored<B> {
    /// The rows' negative log-likelihoods (`[rows]`, differentiable; 0 for a row without a
    /// target) and the targets.
    ///
    /// # Panics
    /// Without targets.
    fn nll(&self) -> (Tensor<B, 1>, Vec<i64>) {
        let targets = self.targets.clone().expect("scoring needs targets");
        let nll = shears_layers::kernels::nll(self.logits.clone(), targets.clone());
        (nll, targets)
    }

    /// Whether each row's largest logit is its target's (classification; all `false` for
    /// an LM, whose accuracy is not counted).
    fn hits(&self, targets: &[i64]) -> Vec<bool> {
        if !self.classes {
            return vec![false; targets.len()];
        }
        let n = targets.len();
        host_ids(self.logits.clone().argmax(1).reshape([n]))
            .into_iter()
            .zip(targets)
            .map(|(p, &t)| p == t)
            .collect()
    }

    /// Mean cross entropy over the rows with a target (`[1]`, differentiable) and its tally.
    ///
    /// # Panics
    /// Without targets.
    pub fn cross_entropy(&self) -> (Tensor<B, 1>, Tally) {
        let (nll, targets) = self.nll();
        let count = targets.iter().filter(|&&t| t >= 0).count();
        let correct = self.hits(&targets).into_iter().filter(|&h| h).count();
        let l = nll.sum().div_scalar(count.max(1) as f64);
        let lv: f64 = l.clone().into_scalar().elem();
        (
            l,
            Tally {
                loss_sum: lv * count as f64,
                correct,
                count,
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
    let dropout = input.dropout;
    let lm_targets = model.head().is_none().then(|| {
        let [b, s] = input.ids.dims();
        let ids = host_ids(input.ids.clone());
        let real = input.real_tokens();
        (0..b * s)
            .map(|r| {
                let next = r + 1;
                if next % s != 0 && real[next] {
                    ids[next]
                } else {
                    -1
                }
            })
            .collect::<Vec<i64>>()
    });
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
                targets: labels.map(host_ids),
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
                logits: logits.reshape([b * s, v]),
                targets: lm_targets,
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
        let (nll, targets) = s.nll();
        let nll: Vec<f32> = nll
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 losses");
        let hit = s.hits(&targets);
        let per_example = targets.len() / idx.len();
        for (k, &i) in idx.iter().enumerate() {
            for r in k * per_example..(k + 1) * per_example {
                if targets[r] >= 0 {
                    rows[i].add(Tally {
                        loss_sum: nll[r] as f64,
                        correct: usize::from(hit[r]),
                        count: 1,
                    });
                }
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
