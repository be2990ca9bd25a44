//! Position-wise feed-forward block, and the `FeedForwardBlock` trait for swapping it.

use burn::prelude::*;
use shears_spaces::Scope;

use crate::{Activation, Capture, LayerSpaces, ModelConfig, Projection};

/// A feed-forward implementation a model can be built with.
///
/// `Sync` because the forward pass runs on a rayon worker ([`crate::kernels::on_workers`]).
pub trait FeedForwardBlock<B: Backend>: Module<B> + burn::module::ModuleDisplay + Sync {
    /// Builds layer `layer`'s feed-forward block from the shared config.
    fn new(config: &ModelConfig, layer: usize, device: &B::Device) -> Self;

    /// # Shapes
    /// `x: [batch, seq, d_model]`, `neuron_mask: [d_ff]` -> `[batch, seq, d_model]`
    fn forward(&self, x: Tensor<B, 3>, neuron_mask: Option<&Tensor<B, 1>>) -> Tensor<B, 3>;

    /// [`FeedForwardBlock::forward`], recording the inputs of the block's projections in
    /// `capture` when given (calibration). The default records nothing.
    fn forward_captured(
        &self,
        x: Tensor<B, 3>,
        neuron_mask: Option<&Tensor<B, 1>>,
        capture: Option<&Capture<B>>,
    ) -> Tensor<B, 3> {
        let _ = capture;
        self.forward(x, neuron_mask)
    }

    /// Declares the spaces of this block's parameter axes (paths relative to the block).
    fn declare(config: &ModelConfig, layer: usize, scope: &mut Scope<'_>, spaces: &LayerSpaces);

    /// The fewest neurons this block can be pruned to (see
    /// [`crate::AttentionBlock::min_heads`]); 1 unless the block accepts `d_ff == 0`.
    fn min_neurons() -> usize {
        1
    }
}

/// `down(act(up(x)) ⊙ mask)`, each projection dense or factorized as the config says.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// `[d_model, d_ff]`.
    pub up: Projection<B>,
    /// `[d_ff, d_model]`.
    pub down: Projection<B>,
    /// Activation, read from the config.
    #[module(skip)]
    pub activation: Activation,
}

/// Applies an activation.
pub fn activate<B: Backend, const D: usize>(x: Tensor<B, D>, act: Activation) -> Tensor<B, D> {
    match act {
        Activation::Gelu => crate::kernels::gelu(x),
        Activation::GeluTanh => crate::kernels::gelu_tanh(x),
        Activation::Relu => burn::tensor::activation::relu(x),
    }
}

impl<B: Backend> FeedForwardBlock<B> for FeedForward<B> {
    fn new(config: &ModelConfig, layer: usize, device: &B::Device) -> Self {
        let l = &config.layers[layer];
        Self {
            up: Projection::new(
                config.d_model,
                l.d_ff,
                l.rank("ffn.up"),
                config.init_std(false),
                device,
            ),
            down: Projection::new(
                l.d_ff,
                config.d_model,
                l.rank("ffn.down"),
                config.init_std(true),
                device,
            ),
            activation: config.activation,
        }
    }

    fn forward(&self, x: Tensor<B, 3>, neuron_mask: Option<&Tensor<B, 1>>) -> Tensor<B, 3> {
        self.forward_captured(x, neuron_mask, None)
    }

    fn forward_captured(
        &self,
        x: Tensor<B, 3>,
        neuron_mask: Option<&Tensor<B, 1>>,
        capture: Option<&Capture<B>>,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        if self.up.d_out() == 0 {
            // Every neuron removed: only the output bias is left.
            return self.down.bias3(b, s, &x.device());
        }
        if let Some(c) = capture {
            c.record(&["up"], x.clone());
        }
        let mut h = match self.activation {
            Activation::Gelu => self.up.forward_act(x, true),
            act => activate(self.up.forward(x), act),
        };
        if let Some(m) = neuron_mask {
            let n = m.dims()[0];
            h = h * m.clone().reshape([1, 1, n]);
        }
        if let Some(c) = capture {
            c.record(&["down"], h.clone());
        }
        self.down.forward(h)
    }

    fn declare(config: &ModelConfig, layer: usize, scope: &mut Scope<'_>, spaces: &LayerSpaces) {
        let l = &config.layers[layer];
        Projection::<B>::declare(l.rank("ffn.up"), scope, "up", &spaces.hidden, &spaces.ffn);
        Projection::<B>::declare(
            l.rank("ffn.down"),
            scope,
            "down",
            &spaces.ffn,
            &spaces.hidden,
        );
    }

    /// A layer may lose every neuron: the block then adds only its output bias.
    fn min_neurons() -> usize {
        0
    }
}
