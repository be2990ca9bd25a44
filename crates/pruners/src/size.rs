//! The size of a gated model, for size targets: CoFi's expected parameter count (Xia et al.
//! 2022, <https://arxiv.org/abs/2204.00408>, §3.2) and the same for FLOPs, and hardening
//! that meets a size target.
//!
//! Every gate is open with probability `P(z ≠ 0)`, independently of the others, so the
//! expected number of open units of a space is the sum of its gates' open probabilities and
//! the expectation of a product of counts from different spaces is the product of their
//! expectations. A layer's attention width is `E[heads] · P(attention block open) · d_head`,
//! its FFN width `E[neurons] · P(FFN block open)`, and every projection's size is a
//! polynomial in these widths and `E[hidden]`: a head's cost shrinks with the hidden
//! dimensions kept, and a block gate multiplies all its units. With every `P(z ≠ 0)` at 0 or
//! 1 the expectation is exactly the size of the model that pruning the closed units gives
//! ([`SizeMeasure::of`] of its config). The same formula, on exact counts, sizes a candidate
//! kept set ([`GatedModel::kept_size`]) without pruning anything.

use std::collections::BTreeMap;
use std::ops::{Add, Mul};

use burn::prelude::*;
use shears_gates::Kept;
use shears_layers::{ModelConfig, SpaceName};

use crate::{GateSpec, GatedModel, PrunerError};

/// What a size target counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeMeasure {
    /// Parameters of the layer stack ([`ModelConfig::layer_params`]).
    Params,
    /// FLOPs per token of the layer stack at sequence length `seq`
    /// ([`ModelConfig::flops_per_token`]).
    Flops {
        /// Sequence length.
        seq: usize,
    },
}

impl SizeMeasure {
    /// The size of the model `config` describes.
    pub fn of(&self, config: &ModelConfig) -> usize {
        match *self {
            SizeMeasure::Params => config.layer_params(),
            SizeMeasure::Flops { seq } => config.flops_per_token(seq),
        }
    }
}

impl std::fmt::Display for SizeMeasure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SizeMeasure::Params => write!(f, "layer stack's parameters"),
            SizeMeasure::Flops { seq } => {
                write!(f, "layer stack's FLOPs per token at {seq} tokens")
            }
        }
    }
}

/// Numbers the size formula runs on: tensors (expected sizes, differentiable) and `f64`
/// (exact sizes of kept sets).
trait Amount: Clone + Add<Output = Self> + Mul<Output = Self> {
    fn times(self, k: f64) -> Self;
}

impl Amount for f64 {
    fn times(self, k: f64) -> Self {
        self * k
    }
}

impl<B: Backend> Amount for Tensor<B, 1> {
    fn times(self, k: f64) -> Self {
        self.mul_scalar(k)
    }
}

/// Units of every structure, expected or exact: the hidden width, and per layer the heads
/// and neurons with their block's gate multiplied in.
struct Widths<T> {
    hidden: T,
    heads: Vec<T>,
    ffn: Vec<T>,
}

/// The size of a model of `config`'s shape with these widths under `measure`; the same
/// arithmetic as [`ModelConfig::layer_params`] and [`ModelConfig::flops_per_token`].
fn size<T: Amount>(config: &ModelConfig, measure: SizeMeasure, w: Widths<T>, zero: T) -> T {
    let d = w.hidden;
    let mut total = zero;
    for ((lc, heads), ffn) in config.layers.iter().zip(w.heads).zip(w.ffn) {
        let attn = heads.times(lc.d_head as f64);
        // (projection, its input width, its output width), as `projection_dims` has them.
        let projections = [
            ("attention.query", d.clone(), attn.clone()),
            ("attention.key", d.clone(), attn.clone()),
            ("attention.value", d.clone(), attn.clone()),
            ("attention.output", attn.clone(), d.clone()),
            ("ffn.up", d.clone(), ffn.clone()),
            ("ffn.down", ffn, d.clone()),
        ];
        for (name, i, o) in projections {
            let macs = match lc.rank(name) {
                Some(r) => (i + o.clone()).times(r as f64),
                None => i * o.clone(),
            };
            total = total
                + match measure {
                    // Weights plus the output bias, which stays when the block goes.
                    SizeMeasure::Params => macs + o,
                    SizeMeasure::Flops { .. } => macs.times(2.0),
                };
        }
        total = total
            + match measure {
                SizeMeasure::Params => d.clone().times(4.0), // two LayerNorms
                // Attention scores and weighted sums.
                SizeMeasure::Flops { seq } => attn.times((4 * seq) as f64),
            };
    }
    total
}

/// Widths from per-structure amounts (`get(name)`, `None` for a structure without gates).
fn widths<T: Amount>(
    config: &ModelConfig,
    get: impl Fn(&SpaceName) -> Option<T>,
    all: impl Fn(usize) -> T,
) -> Widths<T> {
    let blocked = |units: T, block: SpaceName| match get(&block) {
        Some(p) => units * p,
        None => units,
    };
    let layers = config.layers.iter().enumerate();
    Widths {
        hidden: get(&SpaceName::Hidden).unwrap_or_else(|| all(config.d_model)),
        heads: layers
            .clone()
            .map(|(l, lc)| {
                let n = get(&SpaceName::Heads(l)).unwrap_or_else(|| all(lc.n_heads));
                blocked(n, SpaceName::AttentionBlock(l))
            })
            .collect(),
        ffn: layers
            .map(|(l, lc)| {
                let n = get(&SpaceName::Ffn(l)).unwrap_or_else(|| all(lc.d_ff));
                blocked(n, SpaceName::FfnBlock(l))
            })
            .collect(),
    }
}

impl GateSpec {
    /// The largest fraction of the size of a model of `config`'s shape (under `measure`)
    /// that closing every unit this spec gates removes: a size target above it cannot be
    /// met (see [`PrunerError::TargetOutOfReach`]). Heads alone, for example, hold only the
    /// attention projections and scores.
    pub fn reachable_sparsity(&self, config: &ModelConfig, measure: SizeMeasure) -> f64 {
        let gated = |name: &SpaceName| match name {
            SpaceName::Heads(_) => self.heads,
            SpaceName::Ffn(_) => self.neurons,
            SpaceName::Hidden => self.hidden,
            SpaceName::AttentionBlock(_) => self.attention_blocks,
            SpaceName::FfnBlock(_) => self.ffn_blocks,
            _ => false,
        };
        let w = widths(config, |n| gated(n).then_some(0.0), |n| n as f64);
        let dense = measure.of(config).max(1) as f64;
        1.0 - size(config, measure, w, 0.0) / dense
    }
}

impl<B: Backend> GatedModel<B> {
    /// The expected size under the gates' open probabilities (see the module docs), `[1]`,
    /// differentiable in every `log α`.
    pub fn expected_size(&self, measure: SizeMeasure) -> Tensor<B, 1> {
        let config = self.model.config();
        let device = self.model.devices()[0].clone();
        let constant = |v: usize| Tensor::<B, 1>::from_floats([v as f32], &device);
        let open: BTreeMap<SpaceName, Tensor<B, 1>> = self
            .gates
            .groups
            .iter()
            .map(|g| (SpaceName::parse(&g.space), g.gate.p_open().sum()))
            .collect();
        let w = widths(config, |n| open.get(n).cloned(), constant);
        size(config, measure, w, constant(0))
    }

    /// The expected fraction of the size removed, `1 - expected_size / size`, `[1]`,
    /// differentiable: the quantity a size target's Lagrangian steers.
    pub fn expected_size_sparsity(&self, measure: SizeMeasure) -> Tensor<B, 1> {
        let dense = measure.of(self.model.config()).max(1) as f64;
        self.expected_size(measure).div_scalar(dense).neg() + 1.0
    }

    /// The exact size of the model that keeping `kept` (one entry per gate group, as
    /// hardening gives) would leave, before the model's minimum sizes are applied.
    pub fn kept_size(&self, kept: &[Kept], measure: SizeMeasure) -> f64 {
        let counts: BTreeMap<SpaceName, f64> = kept
            .iter()
            .map(|k| (SpaceName::parse(&k.space), k.keep.len() as f64))
            .collect();
        let w = widths(
            self.model.config(),
            |n| counts.get(n).copied(),
            |n| n as f64,
        );
        size(self.model.config(), measure, w, 0.0)
    }

    /// Hardening to a size target. The gates decide first: every unit whose deterministic
    /// gate value exceeds 0.5 stays. Then the least open kept units close, in order of
    /// `log α`, until at least `target` of the size is removed, and the most open closed
    /// units reopen, in order, wherever one fits without going back over the budget; so the
    /// result removes at least `target` and no single closed unit could be reopened within
    /// it. One [`Kept`] per gate group, in group order. A target that closing every gated
    /// unit does not reach is [`PrunerError::TargetOutOfReach`].
    ///
    /// With `round_to` above 1, every FFN width and the hidden width is kept at a multiple
    /// of `round_to` units (or at its full width): units of those spaces close and reopen
    /// `round_to` at a time, the least (most) open first, so no step of that many units
    /// could be reopened within the budget. Torch-Pruning calls this `round_to`: GEMM
    /// kernels split a width into vector registers and tiles, and a ragged last tile costs
    /// nearly a full one (docs/PERFORMANCE.md measures what it buys here).
    pub fn harden_to_size(
        &self,
        measure: SizeMeasure,
        target: f64,
        round_to: usize,
    ) -> Result<Vec<Kept>, PrunerError> {
        if !(0.0..1.0).contains(&target) {
            return Err(shears_gates::GateError::Target(target).into());
        }
        if round_to == 0 {
            return Err(PrunerError::RoundTo(round_to));
        }
        let budget = (1.0 - target) * measure.of(self.model.config()) as f64;
        let groups = &self.gates.groups;
        let names: Vec<SpaceName> = groups.iter().map(|g| SpaceName::parse(&g.space)).collect();
        // The units a step of each group opens or closes.
        let step: Vec<usize> = names
            .iter()
            .map(|n| match n {
                SpaceName::Ffn(_) | SpaceName::Hidden => round_to,
                _ => 1,
            })
            .collect();
        // Each group's units, least open first (ties by unit).
        let ranked: Vec<Vec<usize>> = groups
            .iter()
            .map(|g| {
                let la = g.gate.log_alpha_host();
                let mut units: Vec<usize> = (0..la.len()).collect();
                units.sort_by(|&a, &b| la[a].total_cmp(&la[b]).then(a.cmp(&b)));
                units
            })
            .collect();
        let mut open: Vec<Vec<bool>> = groups
            .iter()
            .map(|g| {
                let kept = g.gate.harden_threshold(0.5);
                (0..g.gate.len()).map(|u| kept.contains(&u)).collect()
            })
            .collect();
        let config = self.model.config();
        let size_of = |counts: &[usize]| {
            let by_name: BTreeMap<&SpaceName, f64> = names
                .iter()
                .zip(counts)
                .map(|(n, &c)| (n, c as f64))
                .collect();
            let w = widths(config, |n| by_name.get(n).copied(), |n| n as f64);
            size(config, measure, w, 0.0)
        };
        let mut counts: Vec<usize> = open
            .iter()
            .map(|o| o.iter().filter(|&&x| x).count())
            .collect();
        // The allowed count below / above `c` in group `gi`: multiples of its step, and
        // its full width.
        let lens: Vec<usize> = open.iter().map(Vec::len).collect();
        let below = |gi: usize, c: usize| {
            let s = step[gi];
            if c.is_multiple_of(s) {
                c.saturating_sub(s)
            } else {
                c - c % s
            }
        };
        let above = |gi: usize, c: usize, n: usize| (c - c % step[gi] + step[gi]).min(n);
        // Closes (opens) the `k` least (most) open units of group `gi` that are open
        // (closed).
        let set = |open: &mut Vec<Vec<bool>>, gi: usize, k: usize, to: bool| {
            let units: Vec<usize> = if to {
                ranked[gi].iter().rev().copied().collect()
            } else {
                ranked[gi].clone()
            };
            let mut left = k;
            for u in units {
                if left == 0 {
                    break;
                }
                if open[gi][u] != to {
                    open[gi][u] = to;
                    left -= 1;
                }
            }
        };
        // The gates' own decision, rounded down to an allowed width.
        for gi in 0..groups.len() {
            let c = counts[gi];
            if c != lens[gi] && !c.is_multiple_of(step[gi]) {
                let to = below(gi, c);
                set(&mut open, gi, c - to, false);
                counts[gi] = to;
            }
        }
        // Every unit, least open first (ties by group, then unit).
        let mut order: Vec<(f32, usize, usize)> = groups
            .iter()
            .enumerate()
            .flat_map(|(gi, g)| {
                g.gate
                    .log_alpha_host()
                    .into_iter()
                    .enumerate()
                    .map(move |(u, la)| (la, gi, u))
            })
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        let mut current = size_of(&counts);
        for &(_, gi, u) in &order {
            if current <= budget {
                break;
            }
            if open[gi][u] {
                // `u` is the least open unit still open in its group: it goes first.
                let to = below(gi, counts[gi]);
                set(&mut open, gi, counts[gi] - to, false);
                counts[gi] = to;
                current = size_of(&counts);
            }
        }
        for &(_, gi, u) in order.iter().rev() {
            if !open[gi][u] {
                let c = counts[gi];
                let to = above(gi, c, lens[gi]);
                counts[gi] = to;
                let with = size_of(&counts);
                if with <= budget {
                    set(&mut open, gi, to - c, true);
                    current = with;
                } else {
                    counts[gi] = c;
                }
            }
        }
        if current > budget {
            // Every gated unit closed and the size is still above the budget.
            let dense = measure.of(config).max(1) as f64;
            return Err(PrunerError::TargetOutOfReach {
                target,
                reachable: 1.0 - current / dense,
            });
        }
        Ok(groups
            .iter()
            .zip(&open)
            .map(|(g, o)| Kept {
                space: g.space.clone(),
                keep: (0..o.len()).filter(|&u| o[u]).collect(),
                total: o.len(),
            })
            .collect())
    }
}
