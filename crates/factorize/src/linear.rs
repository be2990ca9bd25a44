//! `FactorizedLinear`: a Burn `Linear` as two thinner ones, built from the dense layer (its
//! function kept), lowered in rank by fitting the layer's outputs on calibration inputs.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use shears_spaces::HostTensor;

use crate::{
    Calibration, FactorizeError, LowRankSolution, Method, Rank, Weights, factorize,
    max_rank_with_speedup,
};

/// `y = second(first(x))`: `first: [in, latent]` without bias, `second: [latent, out]` with
/// the layer's bias.
#[derive(Module, Debug)]
pub struct FactorizedLinear<B: Backend> {
    /// `[in, latent]`, no bias.
    pub first: Linear<B>,
    /// `[latent, out]`, with the bias.
    pub second: Linear<B>,
}

/// A 2-D host tensor of a device tensor.
pub(crate) fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
    let shape = t.dims().to_vec();
    let data = t
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 tensor data");
    HostTensor::new(shape, data)
}

/// A device tensor of a host tensor.
pub(crate) fn device_tensor<B: Backend, const D: usize>(
    t: &HostTensor,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

/// A `Linear` with the given weight `[in, out]` and optional bias.
fn linear_from<B: Backend>(w: &HostTensor, bias: Option<&[f32]>, device: &B::Device) -> Linear<B> {
    let mut l = LinearConfig::new(w.shape[0], w.shape[1])
        .with_bias(bias.is_some())
        .init(device);
    l.weight = Param::from_tensor(device_tensor(w, device));
    l.bias = bias.map(|b| {
        Param::from_tensor(Tensor::from_data(
            TensorData::new(b.to_vec(), [b.len()]),
            device,
        ))
    });
    l
}

impl<B: Backend> FactorizedLinear<B> {
    /// The dense layer as two layers computing the same function: the exact SVD split
    /// `W = (U Σ^½)(Σ^½ Vᵀ)` at rank `min(in, out)`. Lower the rank with
    /// [`FactorizedLinear::set_rank`].
    pub fn from_linear(linear: &Linear<B>) -> Result<Self, FactorizeError> {
        let w = host(linear.weight.val());
        let bias = linear.bias.as_ref().map(|b| host(b.val()).data);
        let (n_in, n_out) = (w.shape[0], w.shape[1]);
        let full = n_in.min(n_out);
        let device = linear.weight.device();
        let (u, s, v) = crate::linalg::svd(crate::linalg::from_host(&w).as_ref())?;
        let first = faer::Mat::from_fn(n_in, full, |i, k| u[(i, k)] * s[k].sqrt());
        let second = faer::Mat::from_fn(full, n_out, |k, j| s[k].sqrt() * v[(j, k)]);
        Ok(Self::from_parts(
            &crate::linalg::to_host(first.as_ref()),
            &crate::linalg::to_host(second.as_ref()),
            &bias.unwrap_or_else(|| vec![0.0; n_out]),
            &device,
        ))
    }

    /// A layer from a solution.
    pub fn from_solution(solution: &LowRankSolution, device: &B::Device) -> Self {
        Self::from_parts(&solution.first, &solution.second, &solution.bias, device)
    }

    fn from_parts(
        first: &HostTensor,
        second: &HostTensor,
        bias: &[f32],
        device: &B::Device,
    ) -> Self {
        Self {
            first: linear_from(first, None, device),
            second: linear_from(second, Some(bias), device),
        }
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.first.weight.dims()[0]
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.second.weight.dims()[1]
    }

    /// The rank (width between the two layers).
    pub fn latent_features(&self) -> usize {
        self.first.weight.dims()[1]
    }

    /// Parameters.
    pub fn num_params(&self) -> usize {
        Module::num_params(self)
    }

    /// The largest rank at which this shape is still cheaper than dense.
    pub fn max_rank_with_speedup(&self) -> usize {
        max_rank_with_speedup(self.in_features(), self.out_features(), [1, 1])
    }

    /// The current factors and bias.
    pub fn parts(&self) -> (HostTensor, HostTensor, Vec<f32>) {
        let bias = self
            .second
            .bias
            .as_ref()
            .map(|b| host(b.val()).data)
            .unwrap_or_else(|| vec![0.0; self.out_features()]);
        (
            host(self.first.weight.val()),
            host(self.second.weight.val()),
            bias,
        )
    }

    /// The best rank-`rank` factors for this layer's outputs on `calibration`.
    pub fn solution_for_rank(
        &self,
        calibration: &Calibration,
        rank: Rank,
        method: Method,
    ) -> Result<LowRankSolution, FactorizeError> {
        let (a, b, bias) = self.parts();
        factorize(
            Weights::Factored(&a, &b),
            Some(&bias),
            rank,
            method,
            Some(calibration),
        )
    }

    /// Replaces the factors and bias by `solution`'s (same input and output widths).
    pub fn apply_solution(self, solution: &LowRankSolution) -> Result<Self, FactorizeError> {
        let (n_in, n_out) = (self.in_features(), self.out_features());
        let found = vec![solution.first.shape[0], solution.second.shape[1]];
        if found != [n_in, n_out] || solution.bias.len() != n_out {
            return Err(FactorizeError::Shape {
                what: "solution (input and output widths must match the layer)".into(),
                expected: vec![n_in, n_out],
                found,
            });
        }
        let device = self.first.weight.device();
        Ok(Self::from_solution(solution, &device))
    }

    /// Lowers the rank to `rank`, fitted to the layer's current outputs on `calibration`.
    /// Asking for the current rank changes nothing; a higher one is an error.
    pub fn set_rank(
        self,
        calibration: &Calibration,
        rank: Rank,
        method: Method,
    ) -> Result<Self, FactorizeError> {
        let r = rank.resolve(self.in_features(), self.out_features())?;
        let current = self.latent_features();
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
    /// `x: [..., in]` -> `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.second.forward(self.first.forward(x))
    }
}
