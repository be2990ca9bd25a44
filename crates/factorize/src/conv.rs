//! `FactorizedConv2d`: a `k x k` convolution to `r` channels (the original stride, padding
//! and dilation) followed by a `1 x 1` convolution with the bias; solved on the patches the
//! kernel sees (see [`crate::im2col`]).

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use shears_spaces::HostTensor;

use crate::linear::{device_tensor, host};
use crate::{
    Calibration, ConvGeometry, FactorizeError, LowRankSolution, Method, Rank, Weights, factorize,
    im2col, max_rank_with_speedup,
};

/// `y = second(first(x))`: `first` is `k x k` from `in` to `latent` channels without bias,
/// `second` is `1 x 1` from `latent` to `out` channels with the layer's bias.
#[derive(Module, Debug)]
pub struct FactorizedConv2d<B: Backend> {
    /// `[latent, in, kh, kw]`, no bias; carries the stride, padding and dilation.
    pub first: Conv2d<B>,
    /// `[out, latent, 1, 1]`, with the bias.
    pub second: Conv2d<B>,
}

/// The geometry of `conv`'s kernel for an input of `h x w` (Burn's `Same` padding resolved
/// as Burn resolves it).
pub fn conv_geometry<B: Backend>(conv: &Conv2d<B>, h: usize, w: usize) -> ConvGeometry {
    let same = |k: usize, s: usize, size: usize| {
        let out = size.div_ceil(s);
        let total = ((out.max(1) - 1) * s + k).saturating_sub(size);
        (total / 2, total - total / 2)
    };
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [0, 0, 0, 0],
        PaddingConfig2d::Explicit(t, l, b, r) => [t, l, b, r],
        PaddingConfig2d::Same => {
            let (t, b) = same(conv.kernel_size[0], conv.stride[0], h);
            let (l, r) = same(conv.kernel_size[1], conv.stride[1], w);
            [t, l, b, r]
        }
    };
    ConvGeometry {
        kernel: conv.kernel_size,
        stride: conv.stride,
        dilation: conv.dilation,
        padding,
    }
}

/// Conv weight `[out, in, kh, kw]` as the matrix `[in · kh · kw, out]`.
fn conv_matrix(w: &HostTensor) -> HostTensor {
    let out = w.shape[0];
    let fan_in = w.data.len() / out.max(1);
    let mut data = vec![0.0; fan_in * out];
    for o in 0..out {
        for f in 0..fan_in {
            data[f * out + o] = w.data[o * fan_in + f];
        }
    }
    HostTensor::new(vec![fan_in, out], data)
}

impl<B: Backend> FactorizedConv2d<B> {
    /// The dense convolution as two computing the same function (exact SVD split at rank
    /// `min(in · kh · kw, out)`). Grouped convolutions are refused.
    pub fn from_conv2d(conv: &Conv2d<B>) -> Result<Self, FactorizeError> {
        if conv.groups != 1 {
            return Err(FactorizeError::GroupedConv {
                groups: conv.groups,
            });
        }
        let w = conv_matrix(&host(conv.weight.val()));
        let (fan_in, n_out) = (w.shape[0], w.shape[1]);
        let full = fan_in.min(n_out);
        let (u, s, v) = crate::linalg::svd(crate::linalg::from_host(&w).as_ref())?;
        let a = faer::Mat::from_fn(fan_in, full, |i, k| u[(i, k)] * s[k].sqrt());
        let b = faer::Mat::from_fn(full, n_out, |k, j| s[k].sqrt() * v[(j, k)]);
        let bias = conv
            .bias
            .as_ref()
            .map(|b| host(b.val()).data)
            .unwrap_or_else(|| vec![0.0; n_out]);
        let sol = LowRankSolution {
            first: crate::linalg::to_host(a.as_ref()),
            second: crate::linalg::to_host(b.as_ref()),
            bias,
            rank: full,
            nmse: None,
        };
        Ok(Self::build(conv, &sol))
    }

    /// Builds both convolutions from a solution, taking the kernel geometry from `like`.
    fn build(like: &Conv2d<B>, sol: &LowRankSolution) -> Self {
        let device = like.weight.device();
        let [_, c_in, kh, kw] = like.weight.dims();
        let (r, n_out) = (sol.rank, sol.second.shape[1]);
        let mut first = Conv2dConfig::new([c_in, r], [kh, kw])
            .with_stride(like.stride)
            .with_dilation(like.dilation)
            .with_padding(like.padding.clone())
            .with_bias(false)
            .init::<B>(&device);
        // A: [c_in · kh · kw, r] -> [r, c_in, kh, kw]
        let a = &sol.first;
        let fan_in = c_in * kh * kw;
        let mut wa = vec![0.0f32; r * fan_in];
        for f in 0..fan_in {
            for k in 0..r {
                wa[k * fan_in + f] = a.data[f * r + k];
            }
        }
        first.weight = Param::from_tensor(device_tensor(
            &HostTensor::new(vec![r, c_in, kh, kw], wa),
            &device,
        ));
        let mut second = Conv2dConfig::new([r, n_out], [1, 1]).init::<B>(&device);
        // B: [r, out] -> [out, r, 1, 1]
        let b = &sol.second;
        let mut wb = vec![0.0f32; n_out * r];
        for k in 0..r {
            for o in 0..n_out {
                wb[o * r + k] = b.data[k * n_out + o];
            }
        }
        second.weight = Param::from_tensor(device_tensor(
            &HostTensor::new(vec![n_out, r, 1, 1], wb),
            &device,
        ));
        second.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(sol.bias.clone(), [n_out]),
            &device,
        )));
        Self { first, second }
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.first.weight.dims()[1]
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.second.weight.dims()[0]
    }

    /// The rank (channels between the two convolutions).
    pub fn latent_channels(&self) -> usize {
        self.first.weight.dims()[0]
    }

    /// `[kh, kw]`.
    pub fn kernel_size(&self) -> [usize; 2] {
        self.first.kernel_size
    }

    /// The largest rank at which this shape is still cheaper than dense.
    pub fn max_rank_with_speedup(&self) -> usize {
        max_rank_with_speedup(self.in_channels(), self.out_channels(), self.kernel_size())
    }

    /// Calibration statistics of this layer's kernel patches for inputs `x: [n, in, h, w]`.
    pub fn calibration(&self, x: &HostTensor) -> Result<Calibration, FactorizeError> {
        if x.shape.len() != 4 || x.shape[1] != self.in_channels() {
            return Err(FactorizeError::Shape {
                what: "convolution input [batch, channels, height, width]".into(),
                expected: vec![
                    x.shape.first().copied().unwrap_or(0),
                    self.in_channels(),
                    0,
                    0,
                ],
                found: x.shape.clone(),
            });
        }
        let geometry = conv_geometry(&self.first, x.shape[2], x.shape[3]);
        Calibration::from_rows(&im2col(x, &geometry)?)
    }

    /// The best rank-`rank` factors for this layer's outputs on the patches in `calibration`
    /// (from [`FactorizedConv2d::calibration`]).
    pub fn solution_for_rank(
        &self,
        calibration: &Calibration,
        rank: Rank,
        method: Method,
    ) -> Result<LowRankSolution, FactorizeError> {
        let c_in = self.in_channels();
        let [kh, kw] = self.kernel_size();
        let r = self.latent_channels();
        let fan_in = c_in * kh * kw;
        // Current factors as matrices: A [fan_in, r] from [r, c_in, kh, kw], B [r, out].
        let wa = host(self.first.weight.val());
        let mut a = vec![0.0f32; fan_in * r];
        for k in 0..r {
            for f in 0..fan_in {
                a[f * r + k] = wa.data[k * fan_in + f];
            }
        }
        let b = conv_matrix(&host(self.second.weight.val()));
        let bias = self
            .second
            .bias
            .as_ref()
            .map(|b| host(b.val()).data)
            .unwrap_or_else(|| vec![0.0; self.out_channels()]);
        factorize(
            Weights::Factored(&HostTensor::new(vec![fan_in, r], a), &b),
            Some(&bias),
            rank,
            method,
            Some(calibration),
        )
    }

    /// Replaces the factors and bias by `solution`'s.
    pub fn apply_solution(self, solution: &LowRankSolution) -> Result<Self, FactorizeError> {
        let [kh, kw] = self.kernel_size();
        let fan_in = self.in_channels() * kh * kw;
        let n_out = self.out_channels();
        let found = vec![solution.first.shape[0], solution.second.shape[1]];
        if found != [fan_in, n_out] || solution.bias.len() != n_out {
            return Err(FactorizeError::Shape {
                what:
                    "solution (patch width in · kh · kw and output channels must match the layer)"
                        .into(),
                expected: vec![fan_in, n_out],
                found,
            });
        }
        Ok(Self::build(&self.first, solution))
    }

    /// Lowers the rank to `rank`, fitted on `calibration`; the current rank changes
    /// nothing, a higher one is an error.
    pub fn set_rank(
        self,
        calibration: &Calibration,
        rank: Rank,
        method: Method,
    ) -> Result<Self, FactorizeError> {
        let [kh, kw] = self.kernel_size();
        let r = rank.resolve(self.in_channels() * kh * kw, self.out_channels())?;
        let current = self.latent_channels();
        if r > current {
            return Err(FactorizeError::RankIncrease {
                current,
                requested: r,
            });
        }
        if r == current {
            return Ok(self);
        }
        let solution = self.solution_for_rank(calibration, Rank::Count(r), method)?;
        self.apply_solution(&solution)
    }

    /// # Shapes
    /// `x: [batch, in, h, w]` -> `[batch, out, h', w']`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.second.forward(self.first.forward(x))
    }
}
