//! `LayerNorm` that can normalise over a subset of the hidden dimensions (CoFi's pruned
//! LayerNorm), so a hidden-dimension mask equals removing those dimensions.

use burn::module::Param;
use burn::prelude::*;

/// Layer normalisation over the last axis, `y = (x - μ) / √(σ² + ε) · weight + bias`.
///
/// With a hidden mask `m` (0 = pruned), μ and σ² are taken over the kept dimensions only
/// and pruned dimensions output 0, which is exactly the LayerNorm of the model with those
/// dimensions removed (Xia et al. 2022, CoFi, <https://arxiv.org/abs/2204.00408>).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// Scale, `[d_model]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Shift, `[d_model]`.
    pub bias: Param<Tensor<B, 1>>,
    /// ε.
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Weight 1, bias 0.
    pub fn new(d_model: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([d_model], device)),
            bias: Param::from_tensor(Tensor::zeros([d_model], device)),
            eps,
        }
    }

    /// Normalises `x`.
    ///
    /// # Shapes
    /// `x: [batch, seq, d_model]`, `hidden_mask: [d_model]` -> `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<B, 3>, hidden_mask: Option<&Tensor<B, 1>>) -> Tensor<B, 3> {
        let d = x.dims()[2];
        match hidden_mask {
            // One pass per row on flex (with and without autodiff), Burn's layer-norm
            // operation elsewhere.
            None => crate::kernels::layer_norm(x, self.weight.val(), self.bias.val(), self.eps),
            Some(mask) => {
                let w = self.weight.val().reshape([1, 1, d]);
                let b = self.bias.val().reshape([1, 1, d]);
                let keep = mask.clone().not_equal_elem(0.0).float().reshape([1, 1, d]);
                let n = keep.clone().sum().reshape([1, 1, 1]);
                let mean = (x.clone() * keep.clone()).sum_dim(2) / n.clone();
                let xc = (x - mean) * keep.clone();
                let var = xc.clone().powi_scalar(2).sum_dim(2) / n;
                (xc / (var + self.eps).sqrt() * w + b) * keep
            }
        }
    }

    /// `self.forward(x + a, hidden_mask)`: BERT's residual and post-norm, one pass per row
    /// on flex without a hidden mask ([`crate::kernels::add_layer_norm`]).
    pub fn forward_residual(
        &self,
        x: Tensor<B, 3>,
        a: Tensor<B, 3>,
        hidden_mask: Option<&Tensor<B, 1>>,
    ) -> Tensor<B, 3> {
        match hidden_mask {
            None => {
                crate::kernels::add_layer_norm(x, a, self.weight.val(), self.bias.val(), self.eps)
            }
            Some(_) => self.forward(x + a, hidden_mask),
        }
    }
}
