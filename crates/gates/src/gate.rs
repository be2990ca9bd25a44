//! `HardConcreteGate`: the stretched, clipped binary-concrete distribution of Louizos et al.
//! (2018, <https://arxiv.org/abs/1712.01312>), as used by Voita et al. (2019,
//! <https://arxiv.org/abs/1905.09418>) for attention heads.
//!
//! For a unit with learnable `log α`, temperature β and stretch limits `l < 0 < 1 < h`:
//!
//! - training sample: `u ~ U(ε, 1 - ε)`, `s = σ((ln u - ln(1 - u) + log α) / β)`,
//!   `z = min(1, max(0, s (h - l) + l))`;
//! - evaluation value: `z = min(1, max(0, σ(log α) (h - l) + l))` (deterministic);
//! - `P(z = 0) = σ(β ln(-l / h) - log α)`, `P(z = 1) = σ(log α - β ln((1 - l) / (h - 1)))`;
//! - L0 penalty: `λ Σ P(z ≠ 0) = λ Σ σ(log α - β ln(-l / h))`, the expected number of open
//!   gates times a strength.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// How a forward pass draws its gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draw {
    /// The deterministic evaluation values.
    Eval,
    /// Noisy training samples. The uniform noise comes from a host generator seeded with this
    /// key, never from the backend's process-wide seed (`Backend::seed` is global, and tests
    /// run in parallel threads), so the same key gives the same sample on every run and
    /// every backend.
    Sample(u64),
}

impl Draw {
    /// Whether this draws noisy training samples.
    pub fn is_sample(self) -> bool {
        matches!(self, Draw::Sample(_))
    }

    /// The draw of the `index`-th of several gate groups: the same mode, an independent key.
    pub fn for_group(self, index: usize) -> Draw {
        match self {
            Draw::Eval => Draw::Eval,
            Draw::Sample(key) => Draw::Sample(mix(key ^ mix(index as u64 + 1))),
        }
    }
}

pub use shears_spaces::mix;

/// Settings of a Hard-Concrete gate.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GateConfig {
    /// Temperature β of the concrete distribution (default 0.33).
    pub temperature: f64,
    /// Lower stretch limit `l` (default -0.1; must be negative).
    pub low: f64,
    /// Upper stretch limit `h` (default 1.1; must exceed 1).
    pub high: f64,
    /// ε keeping the uniform noise away from 0 and 1 (default 1e-6).
    pub eps: f64,
    /// Initial `log α` of every gate (default 2.0). With the default β and stretch this gives
    /// `P(z ≠ 0) = σ(2 - 0.33 ln(0.1 / 1.1)) ≈ 0.94`, `P(z = 1) ≈ 0.77` and a deterministic
    /// value `σ(2) · 1.2 - 0.1 ≈ 0.96`: the model starts nearly dense, and the gates are far
    /// enough from saturation that the task gradient moves them from the first step.
    pub init_log_alpha: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            temperature: 0.33,
            low: -0.1,
            high: 1.1,
            eps: 1e-6,
            init_log_alpha: 2.0,
        }
    }
}

/// Errors of gate settings and hardening requests.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateError {
    /// The stretch limits do not satisfy `low < 0 < 1 < high`.
    #[error("stretch limits ({low}, {high}) must satisfy low < 0 and high > 1")]
    Stretch {
        /// Lower limit.
        low: f64,
        /// Upper limit.
        high: f64,
    },
    /// The temperature is not positive.
    #[error("temperature {0} must be positive")]
    Temperature(f64),
    /// A hardening count exceeds the number of gates.
    #[error("cannot keep {count} units: the gates cover only {total}")]
    Count {
        /// Requested.
        count: usize,
        /// Available.
        total: usize,
    },
    /// A target sparsity outside [0, 1).
    #[error("target sparsity {0} must be in [0, 1)")]
    Target(f64),
}

impl GateConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), GateError> {
        if !(self.low < 0.0 && self.high > 1.0) {
            return Err(GateError::Stretch {
                low: self.low,
                high: self.high,
            });
        }
        if self.temperature <= 0.0 || !self.temperature.is_finite() {
            return Err(GateError::Temperature(self.temperature));
        }
        Ok(())
    }

    /// `n` gates with these settings.
    pub fn init<B: Backend>(
        &self,
        n: usize,
        device: &B::Device,
    ) -> Result<HardConcreteGate<B>, GateError> {
        self.validate()?;
        Ok(HardConcreteGate {
            log_alpha: Param::from_tensor(Tensor::full([n], self.init_log_alpha, device)),
            config: *self,
        })
    }
}

/// `n` Hard-Concrete gates with learnable `log α` (see the module docs for the formulas).
#[derive(Module, Debug)]
pub struct HardConcreteGate<B: Backend> {
    /// `[n]` learnable log-odds.
    pub log_alpha: Param<Tensor<B, 1>>,
    /// Settings.
    #[module(skip)]
    pub config: GateConfig,
}

impl<B: Backend> HardConcreteGate<B> {
    /// Number of gates.
    pub fn len(&self) -> usize {
        self.log_alpha.dims()[0]
    }

    /// Whether there are no gates.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn stretch_clip(&self, s: Tensor<B, 1>) -> Tensor<B, 1> {
        let c = &self.config;
        (s * (c.high - c.low) + c.low).clamp(0.0, 1.0)
    }

    /// A noisy sample (training): differentiable in `log α`, exactly 0 or 1 with positive
    /// probability. The noise `u` is drawn on the host from a generator seeded with `key`.
    pub fn sample(&self, key: u64) -> Tensor<B, 1> {
        let c = &self.config;
        let la = self.log_alpha.val();
        let mut rng = StdRng::seed_from_u64(key);
        let noise: Vec<f32> = (0..self.len())
            .map(|_| rng.random_range(c.eps..1.0 - c.eps) as f32)
            .collect();
        let u = Tensor::<B, 1>::from_data(TensorData::new(noise, [self.len()]), &la.device());
        let logit = u.clone().log() - (u.neg() + 1.0).log();
        self.stretch_clip(sigmoid((logit + la) / c.temperature))
    }

    /// The deterministic value used in evaluation.
    pub fn value(&self) -> Tensor<B, 1> {
        self.stretch_clip(sigmoid(self.log_alpha.val()))
    }

    /// `sample(key)` for [`Draw::Sample`], `value()` for [`Draw::Eval`].
    pub fn gates(&self, draw: Draw) -> Tensor<B, 1> {
        match draw {
            Draw::Sample(key) => self.sample(key),
            Draw::Eval => self.value(),
        }
    }

    /// `P(z ≠ 0)` per gate, `[n]`, differentiable.
    pub fn p_open(&self) -> Tensor<B, 1> {
        let c = &self.config;
        sigmoid(self.log_alpha.val() - c.temperature * (-c.low / c.high).ln())
    }

    /// `P(z = 0)` per gate.
    pub fn p_closed(&self) -> Tensor<B, 1> {
        self.p_open().neg() + 1.0
    }

    /// `P(z = 1)` per gate.
    pub fn p_one(&self) -> Tensor<B, 1> {
        let c = &self.config;
        sigmoid(self.log_alpha.val() - c.temperature * ((1.0 - c.low) / (c.high - 1.0)).ln())
    }

    /// The L0 penalty `strength · Σ P(z ≠ 0)`, a scalar `[1]`.
    pub fn l0_penalty(&self, strength: f64) -> Tensor<B, 1> {
        self.p_open().sum() * strength
    }

    /// Expected number of open gates, `Σ P(z ≠ 0)`, `[1]`.
    pub fn expected_open(&self) -> Tensor<B, 1> {
        self.p_open().sum()
    }

    /// Gates whose evaluation value exceeds `threshold` (ascending indices).
    pub fn harden_threshold(&self, threshold: f64) -> Vec<usize> {
        let v: Vec<f32> = self
            .value()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 gates");
        (0..v.len()).filter(|&i| v[i] as f64 > threshold).collect()
    }

    /// The `count` gates with the largest `log α` (ascending indices).
    pub fn harden_count(&self, count: usize) -> Result<Vec<usize>, GateError> {
        if count > self.len() {
            return Err(GateError::Count {
                count,
                total: self.len(),
            });
        }
        let la = self.log_alpha_host();
        let mut order: Vec<usize> = (0..la.len()).collect();
        order.sort_by(|&a, &b| la[b].total_cmp(&la[a]).then(a.cmp(&b)));
        let mut keep = order[..count].to_vec();
        keep.sort_unstable();
        Ok(keep)
    }

    /// `log α` on the host.
    pub fn log_alpha_host(&self) -> Vec<f32> {
        self.log_alpha
            .val()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 gates")
    }
}
