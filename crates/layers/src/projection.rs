//! `Projection`: the linear maps inside attention and feed-forward blocks, `x W + b` (dense)
//! or `x A B + b` (factorized to a rank recorded in the config, see
//! [`crate::LayerConfig::ranks`]). A dense projection has the parameter paths of Burn's
//! `Linear` (`weight [in, out]`, `bias`); a factorized one has `first [in, rank]`,
//! `second [rank, out]` and `bias`.

use burn::module::Param;
use burn::nn::{Initializer, LinearConfig};
use burn::prelude::*;
use shears_spaces::{Scope, Space};

use crate::kernels;

/// `x W + b`, or `x A B + b`.
#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    /// `[in, out]` when dense.
    pub weight: Option<Param<Tensor<B, 2>>>,
    /// `[in, rank]` when factorized.
    pub first: Option<Param<Tensor<B, 2>>>,
    /// `[rank, out]` when factorized.
    pub second: Option<Param<Tensor<B, 2>>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Projection<B> {
    /// A freshly initialised projection, dense or of rank `rank`: with `std`, weights drawn
    /// from Normal(0, `std`) and biases 0 (GPT-2's initialisation,
    /// [`crate::ModelConfig::init_std`]); without, Burn's `Linear` initialisation (weights and
    /// biases uniform in `±1/sqrt(fan_in)`).
    pub fn new(
        d_in: usize,
        d_out: usize,
        rank: Option<usize>,
        std: Option<f64>,
        device: &B::Device,
    ) -> Self {
        // A zero-width projection (a block without heads or neurons) has nothing to draw,
        // and the default initialiser's bounds divide by the fan-in: zeros.
        let empty = |i: usize, o: usize| i == 0 || o == 0;
        let weight = |i: usize, o: usize| {
            match std {
                _ if empty(i, o) => Initializer::Zeros,
                Some(std) => Initializer::Normal { mean: 0.0, std },
                None => LinearConfig::new(i, o).initializer,
            }
            .init_with::<B, 2, _>([i, o], Some(i), Some(o), device)
        };
        let bias = |i: usize, o: usize| {
            Some(
                match std {
                    _ if empty(i, o) => Initializer::Zeros,
                    Some(_) => Initializer::Zeros,
                    None => LinearConfig::new(i, o).initializer,
                }
                .init_with::<B, 1, _>([o], Some(i), Some(o), device),
            )
        };
        match rank {
            None => Self {
                weight: Some(weight(d_in, d_out)),
                first: None,
                second: None,
                bias: bias(d_in, d_out),
            },
            Some(r) => Self {
                weight: None,
                first: Some(weight(d_in, r)),
                second: Some(weight(r, d_out)),
                bias: bias(r, d_out),
            },
        }
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        match (&self.weight, &self.first) {
            (Some(w), _) => w.dims()[0],
            (None, Some(a)) => a.dims()[0],
            _ => unreachable!("a projection is dense or factorized"),
        }
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        match (&self.weight, &self.second) {
            (Some(w), _) => w.dims()[1],
            (None, Some(b)) => b.dims()[1],
            _ => unreachable!("a projection is dense or factorized"),
        }
    }

    /// The rank of a factorized projection.
    pub fn rank(&self) -> Option<usize> {
        self.first.as_ref().map(|a| a.dims()[1])
    }

    /// The bias broadcast to `[batch, seq, out]` (what the projection gives for a zero input,
    /// and all a block without heads or neurons adds; see [`kernels::expand_row`]).
    pub fn bias3(&self, batch: usize, seq: usize, device: &B::Device) -> Tensor<B, 3> {
        let bias = match &self.bias {
            Some(b) => b.val(),
            None => Tensor::zeros([self.d_out()], device),
        };
        kernels::expand_row(bias, [batch, seq])
    }

    /// `x W + b` for `x: [batch, seq, in]` as one `[batch · seq, in]` matrix product per
    /// factor (Burn's `Linear` on a 3-D input broadcasts the weight and runs one small
    /// product per batch row, which on the CPU backend is markedly slower).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_act(x, false)
    }

    /// [`Self::forward`], then the exact GELU when `gelu` (fused into the product's output
    /// pass on flex, see [`crate::kernels::linear`]).
    pub fn forward_act(&self, x: Tensor<B, 3>, gelu: bool) -> Tensor<B, 3> {
        let bias = self.bias.as_ref().map(|b| b.val());
        match (&self.weight, &self.first, &self.second) {
            (Some(w), _, _) => kernels::linear(x, w.val(), bias, gelu),
            (None, Some(a), Some(bm)) => kernels::linear(
                kernels::linear(x, a.val(), None, false),
                bm.val(),
                bias,
                gelu,
            ),
            _ => unreachable!("a projection is dense or factorized"),
        }
    }

    /// Declares this projection's axes under `name`: inputs in `input`, outputs in `output`,
    /// a factorized projection's rank axis free (not prunable through spaces).
    pub fn declare(
        rank: Option<usize>,
        scope: &mut Scope<'_>,
        name: &str,
        input: &Space,
        output: &Space,
    ) {
        let mut s = scope.child(name);
        match rank {
            None => {
                s.claim("weight", 0, input);
                s.claim("weight", 1, output);
            }
            Some(_) => {
                s.claim("first", 0, input);
                s.free("first", 1);
                s.free("second", 0);
                s.claim("second", 1, output);
            }
        }
        s.claim("bias", 0, output);
    }
}
