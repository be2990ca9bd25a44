//! Penalties: the fixed-strength L0 penalty of seed 004, and CoFi's target-sparsity
//! Lagrangian (Xia et al. 2022, <https://arxiv.org/abs/2204.00408>, after Wang et al. 2020).
//!
//! With expected sparsity `s` (differentiable in the gates) and target `t(step)`, the term
//! added to the loss is `λ₁ (s - t) + λ₂ (s - t)²`. The model and gates minimise it; the
//! multipliers maximise it by gradient ascent, `λ₁ += η (s - t)`, `λ₂ += η (s - t)²`, so
//! any lasting gap between `s` and `t` grows a force that closes it. The target warms up
//! linearly from 0 to its final value, so the model is not cut all at once.

use burn::prelude::*;

use crate::GateError;

/// A target sparsity reached linearly over `warmup_steps`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SparsityTarget {
    /// Final fraction of units to remove, in [0, 1).
    pub target: f64,
    /// Steps over which the target rises from 0.
    pub warmup_steps: usize,
}

impl SparsityTarget {
    /// A checked target.
    pub fn new(target: f64, warmup_steps: usize) -> Result<Self, GateError> {
        if !(0.0..1.0).contains(&target) {
            return Err(GateError::Target(target));
        }
        Ok(Self {
            target,
            warmup_steps,
        })
    }

    /// The target at `step`.
    pub fn at(&self, step: usize) -> f64 {
        if self.warmup_steps == 0 {
            return self.target;
        }
        self.target * (step as f64 / self.warmup_steps as f64).min(1.0)
    }
}

/// How the gates are pushed closed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Penalty {
    /// `strength · E[open gates]` (seed 004): a strength to tune by hand.
    Fixed {
        /// λ.
        strength: f64,
    },
    /// Steer the expected sparsity to a target (CoFi).
    Lagrangian(Lagrangian),
}

/// CoFi's Lagrangian controller (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lagrangian {
    /// The target schedule.
    pub target: SparsityTarget,
    /// λ₁.
    pub l1: f64,
    /// λ₂.
    pub l2: f64,
    /// Ascent step size η of the multipliers.
    pub lr: f64,
}

impl Lagrangian {
    /// Multipliers at 0.
    pub fn new(target: SparsityTarget, lr: f64) -> Self {
        Self {
            target,
            l1: 0.0,
            l2: 0.0,
            lr,
        }
    }

    /// Starts λ₂ at `l2` instead of 0: a quadratic penalty `l2 (s - t)²` from the first step
    /// (the augmented-Lagrangian form). It pulls the expected sparsity toward the target in
    /// proportion to the gap, so the gates follow the warm-up at once instead of waiting
    /// for λ₁ to integrate a large gap, which then overshoots the target (the integral has to
    /// unwind before the gates reopen).
    pub fn with_quadratic(mut self, l2: f64) -> Self {
        self.l2 = l2;
        self
    }

    /// The term `λ₁ (s - t) + λ₂ (s - t)²` at `step`, `[1]`, differentiable in `s`.
    pub fn term<B: Backend>(&self, expected_sparsity: Tensor<B, 1>, step: usize) -> Tensor<B, 1> {
        let gap = expected_sparsity - self.target.at(step);
        gap.clone() * self.l1 + gap.powi_scalar(2) * self.l2
    }

    /// One ascent step of the multipliers from the current expected sparsity.
    pub fn ascend(&mut self, expected_sparsity: f64, step: usize) {
        let gap = expected_sparsity - self.target.at(step);
        self.l1 += self.lr * gap;
        self.l2 += self.lr * gap * gap;
    }
}
