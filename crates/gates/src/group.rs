//! `GateSet`: groups of gates, each keyed to the space it masks (by the space's name, e.g.
//! `layers.3.heads`), so hardening yields "keep these units of that space".

use burn::prelude::*;

use crate::{GateConfig, GateError, HardConcreteGate};

/// One group of gates over the units of one space.
#[derive(Module, Debug)]
pub struct GateGroup<B: Backend> {
    /// The gates, one per unit of the space.
    pub gate: HardConcreteGate<B>,
    /// Name of what the gates mask: an opaque key that the model's pruner gives and reads
    /// (a space of its `Registry`, or a whole block).
    #[module(skip)]
    pub space: String,
}

/// Units to keep of one space, from hardening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// The space.
    pub space: String,
    /// Units kept (ascending).
    pub keep: Vec<usize>,
    /// Units the space had.
    pub total: usize,
}

/// How to turn gates into 0/1 decisions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Harden {
    /// Keep units whose deterministic gate value exceeds the threshold.
    Threshold(f64),
    /// Keep exactly this many units across all groups, those with the largest `log α`.
    Count(usize),
    /// Keep `round(Σ P(open))` units across all groups, by `log α` (CoFi's expected-L0
    /// top-k).
    ExpectedL0,
}

/// Every gate group of a model.
#[derive(Module, Debug)]
pub struct GateSet<B: Backend> {
    /// The groups.
    pub groups: Vec<GateGroup<B>>,
}

impl<B: Backend> Default for GateSet<B> {
    fn default() -> Self {
        Self { groups: Vec::new() }
    }
}

impl<B: Backend> GateSet<B> {
    /// Adds a group of `n_units` gates for space `space`.
    pub fn add(
        &mut self,
        space: impl Into<String>,
        n_units: usize,
        config: &GateConfig,
        device: &B::Device,
    ) -> Result<(), GateError> {
        self.groups.push(GateGroup {
            gate: config.init(n_units, device)?,
            space: space.into(),
        });
        Ok(())
    }

    /// The group for `space`.
    pub fn group(&self, space: &str) -> Option<&GateGroup<B>> {
        self.groups.iter().find(|g| g.space == space)
    }

    /// Total number of gates.
    pub fn total_units(&self) -> usize {
        self.groups.iter().map(|g| g.gate.len()).sum()
    }

    /// Sum of the L0 penalties of every group, `strength · E[open gates]`, `[1]`.
    pub fn l0_penalty(&self, strength: f64) -> Tensor<B, 1> {
        self.expected_open() * strength
    }

    /// Expected number of open gates over all groups, `[1]`, differentiable.
    pub fn expected_open(&self) -> Tensor<B, 1> {
        let mut it = self.groups.iter().map(|g| g.gate.expected_open());
        let first = it
            .next()
            .expect("a gate set with no groups has no expectation");
        it.fold(first, |a, b| a + b)
    }

    /// Expected fraction of closed gates, `1 - E[open] / total`, `[1]`, differentiable.
    pub fn expected_sparsity(&self) -> Tensor<B, 1> {
        self.expected_open()
            .div_scalar(self.total_units() as f64)
            .neg()
            + 1.0
    }

    /// Hardens every group into units to keep.
    pub fn harden(&self, mode: Harden) -> Result<Vec<Kept>, GateError> {
        let kept_of = |g: &GateGroup<B>, keep: Vec<usize>| Kept {
            space: g.space.clone(),
            keep,
            total: g.gate.len(),
        };
        let count = match mode {
            Harden::Threshold(t) => {
                return Ok(self
                    .groups
                    .iter()
                    .map(|g| kept_of(g, g.gate.harden_threshold(t)))
                    .collect());
            }
            Harden::Count(c) => c,
            Harden::ExpectedL0 => {
                let e: f32 = self.expected_open().into_scalar().elem();
                e.round() as usize
            }
        };
        let total = self.total_units();
        if count > total {
            return Err(GateError::Count { count, total });
        }
        // Rank every unit of every group by log α, keep the top `count`.
        let mut all: Vec<(f32, usize, usize)> = Vec::with_capacity(total);
        for (gi, g) in self.groups.iter().enumerate() {
            for (u, la) in g.gate.log_alpha_host().into_iter().enumerate() {
                all.push((la, gi, u));
            }
        }
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        let mut keeps = vec![Vec::new(); self.groups.len()];
        for &(_, gi, u) in &all[..count] {
            keeps[gi].push(u);
        }
        Ok(self
            .groups
            .iter()
            .zip(keeps)
            .map(|(g, mut k)| {
                k.sort_unstable();
                kept_of(g, k)
            })
            .collect())
    }
}
