//! Sparsity schedulers: change every name's sparsity level as training goes on, as torch's
//! `torch.ao.pruning.scheduler` (`LambdaSL`, `CubicSL`) do.
//!
//! Protocol (torch's): the scheduler captures each name's level as its *base* when made and
//! immediately applies epoch 0; each [`Scheduler::step`] advances the epoch by one and writes
//! the new levels. Masks change at the next [`DataSparsifier::step`], so a loop calls
//! `sparsifier.step()` and then `scheduler.step(&mut sparsifier)`. Calling the scheduler's
//! first step before the sparsifier has stepped since the scheduler was made is
//! [`SparsifyError::SchedulerBeforeSparsifier`] (torch only warns, once, and goes on); the
//! scheduler is then left unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{DataSparsifier, Sparsifier, SparsifyError};

/// A sparsity curve.
pub trait Schedule {
    /// The sparsity level at `epoch` for a name whose level was `base` when the scheduler was
    /// made.
    fn level(&self, base: f64, epoch: usize) -> f64;

    /// Checks the curve's parameters.
    fn validate(&self) -> Result<(), SparsifyError> {
        Ok(())
    }
}

/// `s(t) = base · f(t)` (torch's `LambdaSL`; not clamped: a level outside `[0, 1]` is an
/// error when written).
#[derive(Debug, Clone, Copy)]
pub struct Lambda<F>(pub F);

impl<F: Fn(usize) -> f64> Schedule for Lambda<F> {
    fn level(&self, base: f64, epoch: usize) -> f64 {
        base * (self.0)(epoch)
    }
}

/// The cubic schedule of Zhu & Gupta (2017, "To prune, or not to prune",
/// <https://arxiv.org/abs/1710.01878>), as torch's `CubicSL`. With `s_f` = the base level,
/// `s_0 = init_sl`, `t_0 = init_t`, `Δt = delta_t`, `n = total_t`:
///
/// `s_t = s_f + (s_0 − s_f) · (1 − (t − t_0) / (n Δt))³`, then `max(s_0, min(s_f, s_t))`,
///
/// so the level is `s_0` up to `t_0`, rises fastest at first, and stays at `s_f` from
/// `t_0 + n Δt` on; with `initially_zero` it is 0 before `t_0`. `Δt` only scales time (no
/// staircase). If `s_0 > s_f` the clamp gives `s_0` throughout (as in torch).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cubic {
    /// `s_0`, the initial level (default 0).
    pub init_sl: f64,
    /// `t_0`, the epoch the ramp starts (default 0).
    pub init_t: usize,
    /// `Δt`, epochs per ramp unit (default 10; must be positive).
    pub delta_t: usize,
    /// `n`, ramp units (default 100; must be positive).
    pub total_t: usize,
    /// Level 0 before `t_0` instead of `s_0` (default false).
    pub initially_zero: bool,
}

impl Default for Cubic {
    fn default() -> Self {
        Self {
            init_sl: 0.0,
            init_t: 0,
            delta_t: 10,
            total_t: 100,
            initially_zero: false,
        }
    }
}

impl Schedule for Cubic {
    fn level(&self, base: f64, epoch: usize) -> f64 {
        let (s0, sf) = (self.init_sl, base);
        let (t, t0) = (epoch as f64, self.init_t as f64);
        if self.initially_zero && t < t0 {
            return 0.0;
        }
        let span = (self.delta_t as f64) * (self.total_t as f64);
        let st = sf + (s0 - sf) * (1.0 - (t - t0) / span).powf(3.0);
        s0.max(sf.min(st))
    }

    fn validate(&self) -> Result<(), SparsifyError> {
        if self.delta_t == 0 {
            return Err(SparsifyError::BadSchedule {
                what: "delta_t",
                value: 0.0,
            });
        }
        if self.total_t == 0 {
            return Err(SparsifyError::BadSchedule {
                what: "total_t",
                value: 0.0,
            });
        }
        if !(0.0..=1.0).contains(&self.init_sl) {
            return Err(SparsifyError::BadSchedule {
                what: "init_sl",
                value: self.init_sl,
            });
        }
        Ok(())
    }
}

/// Drives the sparsity levels of a [`DataSparsifier`] along a [`Schedule`].
#[derive(Debug, Clone)]
pub struct Scheduler<P> {
    schedule: P,
    base: BTreeMap<String, f64>,
    epoch: usize,
    steps: usize,
    sparsifier_steps_at_start: usize,
    last: BTreeMap<String, f64>,
}

/// A [`Scheduler`] with `s(t) = base · f(t)`.
pub type LambdaScheduler<F> = Scheduler<Lambda<F>>;

/// A [`Scheduler`] with Zhu & Gupta's cubic curve.
pub type CubicScheduler = Scheduler<Cubic>;

impl<P: Schedule> Scheduler<P> {
    /// Captures every name's sparsity level as its base and applies epoch 0.
    ///
    /// # Errors
    /// An invalid schedule, or a level outside `[0, 1]` at epoch 0 (nothing changes then).
    pub fn new<S: Sparsifier>(
        schedule: P,
        sparsifier: &mut DataSparsifier<S>,
    ) -> Result<Self, SparsifyError> {
        schedule.validate()?;
        let mut base = BTreeMap::new();
        for name in sparsifier.names() {
            base.insert(name.to_string(), sparsifier.config(name)?.sparsity_level);
        }
        let mut s = Self {
            schedule,
            base,
            epoch: 0,
            steps: 0,
            sparsifier_steps_at_start: sparsifier.step_count(),
            last: BTreeMap::new(),
        };
        s.write(0, sparsifier)?;
        Ok(s)
    }

    /// Computes and validates the levels of `epoch`, then writes them.
    fn write<S: Sparsifier>(
        &mut self,
        epoch: usize,
        sparsifier: &mut DataSparsifier<S>,
    ) -> Result<(), SparsifyError> {
        let levels: BTreeMap<String, f64> = self
            .base
            .iter()
            .map(|(n, &b)| (n.clone(), self.schedule.level(b, epoch)))
            .collect();
        for (name, &l) in &levels {
            if !(0.0..=1.0).contains(&l) {
                return Err(SparsifyError::BadSparsity(l));
            }
            sparsifier.config(name)?;
        }
        for (name, &l) in &levels {
            sparsifier.set_sparsity_level(name, l)?;
        }
        self.last = levels;
        Ok(())
    }

    /// Advances one epoch and writes the new levels into `sparsifier`.
    ///
    /// # Errors
    /// [`SparsifyError::SchedulerBeforeSparsifier`] on the first call if `sparsifier` has
    /// not stepped since this scheduler was made; [`SparsifyError::BadSparsity`] for a level
    /// outside `[0, 1]`. The scheduler and the levels are unchanged on error.
    pub fn step<S: Sparsifier>(
        &mut self,
        sparsifier: &mut DataSparsifier<S>,
    ) -> Result<(), SparsifyError> {
        if self.steps == 0 && sparsifier.step_count() <= self.sparsifier_steps_at_start {
            return Err(SparsifyError::SchedulerBeforeSparsifier);
        }
        self.write(self.epoch + 1, sparsifier)?;
        self.epoch += 1;
        self.steps += 1;
        Ok(())
    }

    /// The current epoch (0 after construction, +1 per step; torch's `last_epoch`).
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// The levels last written, by name (torch's `get_last_sl`).
    pub fn last_levels(&self) -> &BTreeMap<String, f64> {
        &self.last
    }

    /// The base levels captured at construction.
    pub fn base_levels(&self) -> &BTreeMap<String, f64> {
        &self.base
    }

    /// The curve.
    pub fn schedule(&self) -> &P {
        &self.schedule
    }
}
