//! AdamW for the weights, one fused pass per parameter where the backend allows.
//!
//! Burn's `AdamW` computes a step as about a dozen tensor operations per parameter, and
//! burn-flex runs each of them on one thread: with MiniLM's 22.7 million parameters (half
//! of them in the word embeddings) that was a quarter of a training step on 2 cores.
//! [`FusedAdamW`] computes the same update ([`shears_layers::kernels::adamw_step`]: one pass
//! over parameter, gradient and both moments on every thread on flex, Burn's operations
//! elsewhere) and keeps its state in Burn's `AdamWState`, so checkpoints keep their format.

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamWState, AdaptiveMomentumState, LearningRate, SimpleOptimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use shears_layers::kernels::{AdamWStep, adamw_step};

/// AdamW (decoupled weight decay) with Burn's defaults for the moments (β₁ 0.9, β₂ 0.999,
/// ε 1e-5).
#[derive(Debug, Clone, Copy)]
pub struct FusedAdamW {
    /// First moment's decay.
    pub beta_1: f32,
    /// Second moment's decay.
    pub beta_2: f32,
    /// Added to the square root of the second moment.
    pub epsilon: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

impl FusedAdamW {
    /// Burn's `AdamWConfig` defaults with this weight decay.
    pub fn new(weight_decay: f32) -> Self {
        FusedAdamW {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-5,
            weight_decay,
        }
    }

    /// The optimizer of a module's parameters.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(self) -> OptimizerAdaptor<Self, M, B> {
        OptimizerAdaptor::from(self)
    }
}

impl<B: Backend> SimpleOptimizer<B> for FusedAdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let (moments, time) = match state {
            Some(s) => {
                let m = s.momentum;
                (Some((m.moment_1, m.moment_2)), m.time + 1)
            }
            None => (None, 1),
        };
        let h = AdamWStep {
            lr,
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            time,
        };
        let (tensor, m, v) = adamw_step(tensor, grad, moments, h);
        let momentum = AdaptiveMomentumState::new(time, m, v);
        (tensor, Some(AdamWState::new(momentum)))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}
