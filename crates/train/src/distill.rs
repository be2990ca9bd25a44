//! Knowledge distillation from the dense fine-tuned model (the teacher) into the model being
//! pruned (the student), as CoFi does it (Xia et al., ACL 2022, section 3.3):
//!
//! ```text
//! loss = ce_weight · CE(student, labels)
//!      + logit_weight · T² · KL(softmax(teacher / T) ‖ softmax(student / T))
//!      + layer_weight · Σ_t MSE(W h_student[m(t)], h_teacher[t])
//! ```
//!
//! - **Logits.** Classification: the head's logits per example; language modelling: the
//!   next-token distributions at every position. `KL` is averaged over those rows.
//! - **Layers.** `h[l]` is layer `l`'s output; the teacher layers `t` are
//!   `distill.teacher_layers` (default: every second layer, ending at the last: 1, 3, 5 of
//!   MiniLM's six). `W` is one learned linear map from the student's hidden width to the
//!   teacher's (CoFi's `layer_transformation`), initialised to the identity, so a student
//!   equal to its teacher has a loss of exactly 0. The MSE is over real tokens (padding
//!   excluded).
//! - **Matching.** CoFi's dynamic matching (its `layer_distill_version` 4): from the last
//!   teacher layer backwards, each takes the student layer with the smallest MSE among those
//!   not after the previous choice. Our student is the teacher with units removed in place,
//!   so layer `l` starts as the teacher's layer `l`; but when the gates remove both blocks of
//!   a layer its output equals the previous layer's, and a fixed `l -> l` matching would then
//!   ask one output to match two teacher layers. The matching finds the layer that still
//!   does the work. The choice is a host decision per step (a `[teachers, layers]` table of
//!   losses is read back); the chosen entries stay differentiable.
//!
//! The teacher runs on the inner backend, without autodiff, in the same step: no gradient
//! can reach it, and its outputs enter the student's graph as constants. Caching them per
//! example was not done: the hidden states of every layer for MiniLM's 10,246 training
//! sentences at 64 tokens would take 6 GB.

use burn::module::{AutodiffModule, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use shears_gates::{Draw, GateSet};
use shears_layers::{ModelConfig, ModelInput, ModelOutput};
use shears_pruners::{ClassifierHead, SizeMeasure};

use crate::task::{Net, Tally, TaskModel, scored};

/// `[distill]`: distillation in the gated phase and the fine-tune.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistillSection {
    /// Distil from the dense model (else the student trains on the labels alone).
    pub enabled: bool,
    /// Softmax temperature `T` of the logit term.
    pub temperature: f64,
    /// Weight of `T² · KL` on the logits.
    pub logit_weight: f64,
    /// Weight of the hidden-state term.
    pub layer_weight: f64,
    /// Weight of the cross entropy on the labels.
    pub ce_weight: f64,
    /// Teacher layers whose outputs the student matches (0-based); empty: every second
    /// layer ending at the last.
    pub teacher_layers: Vec<usize>,
}

impl Default for DistillSection {
    /// CoFi's settings: T = 2, 0.1 on the logits, 0.9 on the layers, no label loss.
    fn default() -> Self {
        Self {
            enabled: false,
            temperature: 2.0,
            logit_weight: 0.1,
            layer_weight: 0.9,
            ce_weight: 0.0,
            teacher_layers: Vec::new(),
        }
    }
}

impl DistillSection {
    /// The teacher layers for a teacher of `n_layers` layers.
    pub fn layers(&self, n_layers: usize) -> Vec<usize> {
        if self.teacher_layers.is_empty() {
            (0..n_layers).rev().step_by(2).rev().collect()
        } else {
            self.teacher_layers.clone()
        }
    }
}

/// CoFi's learned map from the student's hidden states to the teacher's: `h W + b`, `W`
/// `[d_student, d_teacher]`, starting as the identity.
#[derive(Module, Debug)]
pub struct LayerMap<B: Backend> {
    /// `[d_student, d_teacher]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_teacher]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> LayerMap<B> {
    /// The identity on `d` dimensions.
    pub fn identity(d: usize, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::eye(d, device)),
            bias: Param::from_tensor(Tensor::zeros([d], device)),
        }
    }

    /// `x: [batch, seq, d_student]` -> `[batch, seq, d_teacher]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let w = self.weight.val();
        let o = w.dims()[1];
        (x.reshape([b * s, d]).matmul(w) + self.bias.val().reshape([1, o])).reshape([b, s, o])
    }

    /// The map restricted to the student dimensions `kept` (ascending), for a student
    /// whose hidden dimensions were pruned to those.
    pub fn keep_inputs(self, kept: &[usize]) -> Self {
        let w = self.weight.val();
        let device = w.device();
        let idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                kept.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [kept.len()],
            ),
            &device,
        );
        Self {
            weight: Param::from_tensor(w.select(0, idx)),
            bias: self.bias,
        }
    }
}

/// A student and its layer map: what trains in a distilled phase.
#[derive(Module, Debug)]
pub struct Distilled<B: Backend, M> {
    /// The model being trained.
    pub student: M,
    /// Student hidden states to the teacher's.
    pub map: LayerMap<B>,
}

impl<B: Backend, M: Net<B>> Net<B> for Distilled<B, M> {
    fn output(&self, input: ModelInput<B>, draw: Draw) -> ModelOutput<B> {
        self.student.output(input, draw)
    }
    fn head(&self) -> Option<&ClassifierHead<B>> {
        self.student.head()
    }
    fn config(&self) -> &ModelConfig {
        self.student.config()
    }
    fn gates(&self) -> Option<&GateSet<B>> {
        self.student.gates()
    }
    fn map_gates(self, f: impl FnOnce(GateSet<B>) -> GateSet<B>) -> Self {
        Self {
            student: self.student.map_gates(f),
            map: self.map,
        }
    }
    fn expected_sparsity(&self, measure: Option<SizeMeasure>) -> Option<Tensor<B, 1>> {
        self.student.expected_sparsity(measure)
    }
    fn layer_map(&self) -> Option<&LayerMap<B>> {
        Some(&self.map)
    }
}

/// The terms of a distillation loss (each before its weight), for logs and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DistillTerms {
    /// Cross entropy on the labels.
    pub ce: f64,
    /// `T² · KL` on the logits.
    pub logits: f64,
    /// The hidden-state term.
    pub layers: f64,
    /// The student layer matched to each teacher layer.
    pub matching: Vec<usize>,
}

/// What the teacher computed for one batch: detached tensors (constants in the student's
/// graph).
pub struct Targets<B: Backend> {
    /// Teacher logits, scored rows as the student's (see [`scored`]).
    pub logits: Tensor<B, 2>,
    /// The teacher's layer outputs at `distill.teacher_layers`.
    pub hidden: Vec<Tensor<B, 3>>,
}

/// Runs the teacher on `input` (its ids and padding only; no dropout, no masks).
pub fn teacher_targets<B: AutodiffBackend>(
    teacher: &TaskModel<B::InnerBackend>,
    input: &ModelInput<B>,
    cfg: &DistillSection,
) -> Targets<B> {
    let mut t_input = ModelInput::new(input.ids.clone().inner());
    t_input.token_types = input.token_types.clone().map(|t| t.inner());
    t_input.attention_mask = input.attention_mask.clone().map(|m| m.inner());
    let t_input = t_input.with_hidden_states();
    let s = scored(teacher, t_input, None, Draw::Eval);
    let states = s.hidden_states.expect("asked for hidden states");
    let hidden = cfg
        .layers(states.len() - 1)
        .into_iter()
        .map(|l| Tensor::from_inner(states[l + 1].clone()))
        .collect();
    Targets {
        logits: Tensor::from_inner(s.logits),
        hidden,
    }
}

/// The distillation loss of a batch (`[1]`, differentiable in the student and the map
/// only), its tally (the student's cross entropy and accuracy) and its terms.
pub fn distill_loss<B: Backend, M: Net<B>>(
    model: &M,
    input: ModelInput<B>,
    labels: Option<Tensor<B, 1, Int>>,
    draw: Draw,
    targets: Targets<B>,
    cfg: &DistillSection,
) -> (Tensor<B, 1>, Tally, DistillTerms) {
    let mask = input.attention_mask.clone();
    let s = scored(model, input.with_hidden_states(), labels, draw);
    let (ce, tally) = match &s.targets {
        Some(_) => s.cross_entropy(),
        None => (Tensor::zeros([1], &s.logits.device()), Tally::default()),
    };
    let mut terms = DistillTerms {
        ce: ce.clone().into_scalar().elem(),
        ..Default::default()
    };
    let mut total = ce * cfg.ce_weight;
    if cfg.logit_weight > 0.0 {
        let t = cfg.temperature;
        let n = s.logits.dims()[0];
        // An LM's rows without a next token (its last positions, padding) do not count.
        let keep: Vec<bool> = match s.targets.as_ref().filter(|_| !s.classes) {
            Some(tg) => tg.iter().map(|&x| x >= 0).collect(),
            None => vec![true; n],
        };
        let rows = keep.iter().filter(|&&k| k).count().max(1) as f64;
        let per_row = shears_layers::kernels::soft_kl(s.logits.clone(), targets.logits, t, keep);
        let kl = per_row.sum() * (t * t / rows);
        terms.logits = kl.clone().into_scalar().elem();
        total = total + kl * cfg.logit_weight;
    }
    if cfg.layer_weight > 0.0 && !targets.hidden.is_empty() {
        let map = model
            .layer_map()
            .expect("a distilled model has a layer map");
        let states = s.hidden_states.expect("asked for hidden states");
        let (layer, matching) = layer_loss(map, &states[1..], &targets.hidden, mask);
        terms.layers = layer.clone().into_scalar().elem();
        terms.matching = matching;
        total = total + layer * cfg.layer_weight;
    }
    (total, tally, terms)
}

/// CoFi's matched hidden-state loss: `Σ_t MSE(W h_s[m(t)], h_t)` over real tokens, with
/// the matching `m` described in the module docs. Returns the loss and `m`.
fn layer_loss<B: Backend>(
    map: &LayerMap<B>,
    student: &[Tensor<B, 3>],
    teacher: &[Tensor<B, 3>],
    mask: Option<Tensor<B, 2>>,
) -> (Tensor<B, 1>, Vec<usize>) {
    let [b, s, _] = student[0].dims();
    let d_t = teacher[0].dims()[2];
    let device = student[0].device();
    let mask = mask
        .unwrap_or_else(|| Tensor::ones([b, s], &device))
        .reshape([b, s, 1]);
    let denom = mask.clone().sum().into_scalar().elem::<f64>().max(1.0) * d_t as f64;
    let mapped: Vec<Tensor<B, 3>> = student.iter().map(|h| map.forward(h.clone())).collect();
    // losses[t][l]
    let losses: Vec<Vec<Tensor<B, 1>>> = teacher
        .iter()
        .map(|t| {
            mapped
                .iter()
                .map(|m| {
                    let d = m.clone() - t.clone();
                    ((d.clone() * d) * mask.clone()).sum().reshape([1]) / denom
                })
                .collect()
        })
        .collect();
    let table: Vec<Vec<f32>> = losses
        .iter()
        .map(|row| {
            Tensor::cat(row.clone(), 0)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("f32 losses")
        })
        .collect();
    let matching = match_layers(&table);
    let total = losses
        .into_iter()
        .zip(&matching)
        .map(|(row, &l)| row[l].clone())
        .reduce(|a, b| a + b)
        .expect("at least one teacher layer");
    (total, matching)
}

/// CoFi's monotone matching on a `[teacher layers, student layers]` table of losses: from
/// the last teacher layer backwards, the student layer of least loss among those not after
/// the one chosen for the next teacher layer.
pub fn match_layers(table: &[Vec<f32>]) -> Vec<usize> {
    let mut matching = vec![0; table.len()];
    let mut limit = table.first().map_or(0, Vec::len);
    for (t, row) in table.iter().enumerate().rev() {
        let best = (0..limit.max(1))
            .min_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap_or(0);
        matching[t] = best;
        limit = best + 1;
    }
    matching
}

/// The phase's model with its layer map, both trainable.
pub fn with_map<B: AutodiffBackend, M: AutodiffModule<B>>(
    student: M,
    map: LayerMap<B::InnerBackend>,
) -> Distilled<B, M> {
    Distilled {
        student,
        map: crate::task::trainable::<B, LayerMap<B>>(map),
    }
}
