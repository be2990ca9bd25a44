//! Position-wise feed-forward block, and the `FeedForwardBlock` trait for swapping it.

use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use shears_spaces::Scope;

use crate::{Activation, LayerSpaces, ModelConfig};

/// A feed-forward implementation a model can be built with.
pub trait FeedForwardBlock<B: Backend>: Module<B> + burn::module::ModuleDisplay {
    /// Builds layer `layer`'s feed-forward block from the shared config.
    fn new(config: &ModelConfig, layer: usize, device: &B::Device) -> Self;

    /// # Shapes
    /// `x: [batch, seq, d_model]`, `neuron_mask: [d_ff]` -> `[batch, seq, d_model]`
    fn forward(&self, x: Tensor<B, 3>, neuron_mask: Option<&Tensor<B, 1>>) -> Tensor<B, 3>;

    /// Declares the spaces of this block's parameter axes (paths relative to the block).
    fn declare(config: &ModelConfig, layer: usize, scope: &mut Scope<'_>, spaces: &LayerSpaces);

    /// The fewest neurons this block can be pruned to (see
    /// [`crate::AttentionBlock::min_heads`]); 1 unless the block accepts `d_ff == 0`.
    fn min_neurons() -> usize {
        1
    }
}

/// `down(act(up(x)) ⊙ mask)`.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// `[d_model, d_ff]`.
    pub up: Linear<B>,
    /// `[d_ff, d_model]`.
    pub down: Linear<B>,
    /// Activation, read from the config.
    #[module(skip)]
    pub activation: Activation,
}

/// Applies an activation.
pub fn activate<B: Backend, const D: usize>(x: Tensor<B, D>, act: Activation) -> Tensor<B, D> {
    match act {
        Activation::Gelu => x.clone() * ((x / std::f64::consts::SQRT_2).erf() + 1.0) * 0.5,
        Activation::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * c;
            x * (inner.tanh() + 1.0) * 0.5
        }
        Activation::Relu => burn::tensor::activation::relu(x),
    }
}

impl<B: Backend> FeedForwardBlock<B> for FeedForward<B> {
    fn new(config: &ModelConfig, layer: usize, device: &B::Device) -> Self {
        let d_ff = config.layers[layer].d_ff;
        // Without neurons the default initialiser's bounds (1 / fan-in) are infinite.
        let init = |c: LinearConfig| {
            if d_ff == 0 {
                c.with_initializer(Initializer::Zeros)
            } else {
                c
            }
            .init(device)
        };
        Self {
            up: init(LinearConfig::new(config.d_model, d_ff)),
            down: init(LinearConfig::new(d_ff, config.d_model)),
            activation: config.activation,
        }
    }

    fn forward(&self, x: Tensor<B, 3>, neuron_mask: Option<&Tensor<B, 1>>) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        if self.up.weight.dims()[1] == 0 {
            // Every neuron removed: only the output bias is left.
            let bias = match &self.down.bias {
                Some(bias) => bias.val().reshape([1, 1, d]),
                None => Tensor::zeros([1, 1, d], &x.device()),
            };
            return bias.expand([b, s, d]);
        }
        let mut h = activate(crate::linear3(&self.up, x), self.activation);
        if let Some(m) = neuron_mask {
            let n = m.dims()[0];
            h = h * m.clone().reshape([1, 1, n]);
        }
        crate::linear3(&self.down, h)
    }

    fn declare(_: &ModelConfig, _: usize, scope: &mut Scope<'_>, spaces: &LayerSpaces) {
        let mut up = scope.child("up");
        up.claim("weight", 0, &spaces.hidden);
        up.claim("weight", 1, &spaces.ffn);
        up.claim("bias", 0, &spaces.ffn);
        let mut down = scope.child("down");
        down.claim("weight", 0, &spaces.ffn);
        down.claim("weight", 1, &spaces.hidden);
        down.claim("bias", 0, &spaces.hidden);
    }

    /// A layer may lose every neuron: the block then adds only its output bias.
    fn min_neurons() -> usize {
        0
    }
}
