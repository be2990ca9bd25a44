//! The rank-r solutions of a layer: weight SVD, activation-aware SVD, and data-aware
//! (whitened or spectral start, then alternating least squares). See the crate docs for the
//! math.

use faer::{Mat, MatRef};
use shears_spaces::HostTensor;

use crate::linalg::{from_host, mul, spd_solve, svd, sym_eigen, tmul, to_host};
use crate::{Calibration, FactorizeError, Rank};

/// A layer's current weights: one matrix, or two factors whose product is the weight.
#[derive(Debug, Clone, Copy)]
pub enum Weights<'a> {
    /// `W: [in, out]`.
    Dense(&'a HostTensor),
    /// `A: [in, d]`, `B: [d, out]`, `W = A B`.
    Factored(&'a HostTensor, &'a HostTensor),
}

impl Weights<'_> {
    /// `(in, out)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Weights::Dense(w) => (w.shape[0], w.shape[1]),
            Weights::Factored(a, b) => (a.shape[0], b.shape[1]),
        }
    }

    fn check(&self) -> Result<(), FactorizeError> {
        let two_d = |t: &HostTensor, what: &str| {
            if t.shape.len() == 2 {
                Ok(())
            } else {
                Err(FactorizeError::Shape {
                    what: what.into(),
                    expected: vec![0, 0],
                    found: t.shape.clone(),
                })
            }
        };
        let finite = |t: &HostTensor, what: &str| match t.data.iter().position(|v| !v.is_finite()) {
            Some(i) => Err(FactorizeError::NonFinite {
                what: what.into(),
                value: t.data[i],
                row: i / t.shape[1],
                col: i % t.shape[1],
            }),
            None => Ok(()),
        };
        match self {
            Weights::Dense(w) => {
                two_d(w, "weight")?;
                finite(w, "weight")
            }
            Weights::Factored(a, b) => {
                two_d(a, "first factor")?;
                two_d(b, "second factor")?;
                if a.shape[1] != b.shape[0] {
                    return Err(FactorizeError::Shape {
                        what: "second factor (its rows must match the first factor's columns)"
                            .into(),
                        expected: vec![a.shape[1], b.shape[1]],
                        found: b.shape.clone(),
                    });
                }
                finite(a, "first factor")?;
                finite(b, "second factor")
            }
        }
    }

    /// The weight `[in, out]` in f64.
    fn matrix(&self) -> Mat<f64> {
        match self {
            Weights::Dense(w) => from_host(w),
            Weights::Factored(a, b) => mul(from_host(a).as_ref(), from_host(b).as_ref()),
        }
    }
}

/// Where the data-aware solution starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// The optimum of the output error (reduced-rank regression in whitened coordinates).
    Whitened,
    /// The weight SVD (Composer's start).
    Spectral,
}

/// How to find the rank-r factors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Truncated SVD of the weight alone; the bias is kept.
    WeightSvd,
    /// ASVD: SVD of the weight with input channel `j` scaled by `(mean |x_j|)^alpha`.
    ActivationAware {
        /// Exponent of the activation scale (ASVD uses 0.5).
        alpha: f64,
    },
    /// Minimise the output error on the calibration inputs.
    DataAware {
        /// The start.
        init: Init,
        /// Alternating least-squares refinements after the start.
        n_iters: usize,
    },
}

impl Default for Method {
    fn default() -> Self {
        Method::DataAware {
            init: Init::Whitened,
            n_iters: 2,
        }
    }
}

/// A rank-r replacement for a layer: `y = (x A) B + bias`.
#[derive(Debug, Clone, PartialEq)]
pub struct LowRankSolution {
    /// `A: [in, rank]`.
    pub first: HostTensor,
    /// `B: [rank, out]`.
    pub second: HostTensor,
    /// `[out]`: the bias to use with the factors (the original bias plus the mean error
    /// correction, for the data-driven methods).
    pub bias: Vec<f32>,
    /// The rank.
    pub rank: usize,
    /// Normalised mean squared error of the outputs on the calibration inputs,
    /// `mean((Y - Ŷ)²) / var(Y)`; `None` without calibration data.
    pub nmse: Option<f64>,
}

impl LowRankSolution {
    /// The effective weight `A B`, `[in, out]`.
    pub fn weight(&self) -> HostTensor {
        to_host(
            mul(
                from_host(&self.first).as_ref(),
                from_host(&self.second).as_ref(),
            )
            .as_ref(),
        )
    }
}

/// The rank-`rank` factors of a layer with `weights` and `bias` (`None`: zeros) by
/// `method`, measured on `calibration` (required for the activation-aware and data-aware
/// methods, optional for the weight SVD).
pub fn factorize(
    weights: Weights<'_>,
    bias: Option<&[f32]>,
    rank: Rank,
    method: Method,
    calibration: Option<&Calibration>,
) -> Result<LowRankSolution, FactorizeError> {
    weights.check()?;
    let (n_in, n_out) = weights.dims();
    if let Some(b) = bias
        && b.len() != n_out
    {
        return Err(FactorizeError::Shape {
            what: "bias".into(),
            expected: vec![n_out],
            found: vec![b.len()],
        });
    }
    if let Some(c) = calibration {
        if c.width() != n_in {
            return Err(FactorizeError::Shape {
                what: "calibration inputs (their width must be the layer's input width)".into(),
                expected: vec![c.rows(), n_in],
                found: vec![c.rows(), c.width()],
            });
        }
        c.check()?;
    }
    let r = rank.resolve(n_in, n_out)?;
    let w = weights.matrix();
    let b0: Vec<f64> = bias.map_or(vec![0.0; n_out], |b| b.iter().map(|&v| v as f64).collect());
    let need_data =
        |method: &'static str| calibration.ok_or(FactorizeError::NoCalibration { method });
    let (a, bm) = match method {
        Method::WeightSvd => spectral(w.as_ref(), r)?,
        Method::ActivationAware { alpha } => {
            let c = need_data("activation-aware")?;
            let floor = 1e-6;
            let s: Vec<f64> = c
                .mean_abs()
                .iter()
                .map(|m| m.max(floor).powf(alpha))
                .collect();
            let scaled = Mat::from_fn(n_in, n_out, |i, j| s[i] * w[(i, j)]);
            let (a, bm) = spectral(scaled.as_ref(), r)?;
            let a = Mat::from_fn(n_in, r, |i, k| a[(i, k)] / s[i]);
            (a, bm)
        }
        Method::DataAware { init, n_iters } => {
            let c = need_data("data-aware")?;
            let g = c.scatter();
            let (mut a, mut bm) = match init {
                Init::Whitened => whitened(w.as_ref(), g.as_ref(), r)?,
                Init::Spectral => spectral(w.as_ref(), r)?,
            };
            for _ in 0..n_iters {
                // B = (Aᵀ G A)⁻¹ Aᵀ G W
                let ga = mul(g.as_ref(), a.as_ref());
                let lhs = tmul(a.as_ref(), ga.as_ref());
                let rhs = tmul(ga.as_ref(), w.as_ref());
                bm = spd_solve(lhs.as_ref(), rhs.as_ref());
                // A = W Bᵀ (B Bᵀ)⁻¹, solved as (B Bᵀ) Aᵀ = B Wᵀ.
                let bbt = mul(bm.as_ref(), bm.transpose());
                let bwt = mul(bm.as_ref(), w.transpose());
                a = spd_solve(bbt.as_ref(), bwt.as_ref()).transpose().to_owned();
            }
            (a, bm)
        }
    };
    let ab = mul(a.as_ref(), bm.as_ref());
    let d = Mat::from_fn(n_in, n_out, |i, j| w[(i, j)] - ab[(i, j)]);
    let (bias, nmse) = match (method, calibration) {
        (Method::WeightSvd, None) => (b0.clone(), None),
        (_, Some(c)) => {
            let mu = c.mean();
            // b' = b + μᵀ (W - A B), except for the data-free method, which keeps b.
            let bias = if method == Method::WeightSvd {
                b0.clone()
            } else {
                (0..n_out)
                    .map(|j| b0[j] + (0..n_in).map(|i| mu[i] * d[(i, j)]).sum::<f64>())
                    .collect()
            };
            let nmse = nmse(c, w.as_ref(), &b0, d.as_ref(), &bias)?;
            (bias, Some(nmse))
        }
        (_, None) => unreachable!("data methods checked for calibration above"),
    };
    Ok(LowRankSolution {
        first: to_host(a.as_ref()),
        second: to_host(bm.as_ref()),
        bias: bias.iter().map(|&v| v as f32).collect(),
        rank: r,
        nmse,
    })
}

/// How much output error each rank-one component of a layer removes: the squared singular
/// values `σ̃_i²` of the whitened weight `Sᵀ W` (descending) and the total output variation
/// `Σ (Y - Ȳ)²`. The optimal rank-r solution leaves `Σ_{i>r} σ̃_i²` of error, so
/// `Σ_{i>r} σ̃_i² / total` is its normalised error; comparing these across layers is how a
/// parameter budget is spread over them.
#[derive(Debug, Clone, PartialEq)]
pub struct Spectrum {
    /// `σ̃_i²`, descending.
    pub energy: Vec<f64>,
    /// `Σ (Y - Ȳ)²` over all outputs.
    pub total: f64,
}

impl Spectrum {
    /// The normalised output error of the optimal rank-`r` solution.
    pub fn error_at(&self, r: usize) -> f64 {
        let rest: f64 = self.energy.iter().skip(r).sum();
        if self.total > 0.0 {
            rest / self.total
        } else {
            0.0
        }
    }
}

/// The [`Spectrum`] of a layer on `calibration`.
pub fn spectrum(
    weights: Weights<'_>,
    bias: Option<&[f32]>,
    calibration: &Calibration,
) -> Result<Spectrum, FactorizeError> {
    weights.check()?;
    calibration.check()?;
    let (n_in, n_out) = weights.dims();
    if calibration.width() != n_in {
        return Err(FactorizeError::Shape {
            what: "calibration inputs (their width must be the layer's input width)".into(),
            expected: vec![calibration.rows(), n_in],
            found: vec![calibration.rows(), calibration.width()],
        });
    }
    let w = weights.matrix();
    let g = calibration.scatter();
    let (l, v) = sym_eigen(g.as_ref())?;
    let root: Vec<f64> = l.iter().map(|&x| x.max(0.0).sqrt()).collect();
    let vtw = tmul(v.as_ref(), w.as_ref());
    let m = Mat::from_fn(n_in, n_out, |i, j| root[i] * vtw[(i, j)]);
    let (_, s, _) = svd(m.as_ref())?;
    let b: Vec<f64> = bias.map_or(vec![0.0; n_out], |b| b.iter().map(|&v| v as f64).collect());
    let total = output_variation(calibration, w.as_ref(), &b);
    Ok(Spectrum {
        energy: s.iter().map(|x| x * x).collect(),
        total,
    })
}

/// `Σ (Y - Ȳ)²` over all `n · out` outputs of `Y = X W + b`.
fn output_variation(c: &Calibration, w: MatRef<'_, f64>, b: &[f64]) -> f64 {
    let n = c.rows() as f64;
    let (n_in, n_out) = (w.nrows(), w.ncols());
    let g = c.scatter();
    let mu = c.mean();
    // Σ_j w_jᵀ G w_j + n Σ_j (m_j - m̄)², m_j = μᵀ w_j + b_j.
    let gw = mul(g.as_ref(), w);
    let mut within = 0.0;
    let mut means = Vec::with_capacity(n_out);
    for j in 0..n_out {
        let mut m = b[j];
        for i in 0..n_in {
            within += w[(i, j)] * gw[(i, j)];
            m += mu[i] * w[(i, j)];
        }
        means.push(m);
    }
    let grand = means.iter().sum::<f64>() / n_out as f64;
    within + n * means.iter().map(|m| (m - grand).powi(2)).sum::<f64>()
}

/// `A = U_r Σ_r^½`, `B = Σ_r^½ V_rᵀ` from the SVD of `w`.
fn spectral(w: MatRef<'_, f64>, r: usize) -> Result<(Mat<f64>, Mat<f64>), FactorizeError> {
    let (u, s, v) = svd(w)?;
    let a = Mat::from_fn(w.nrows(), r, |i, k| u[(i, k)] * s[k].sqrt());
    let b = Mat::from_fn(r, w.ncols(), |k, j| s[k].sqrt() * v[(j, k)]);
    Ok((a, b))
}

/// The minimiser of `tr(Dᵀ G D)`, `D = W - A B`, over rank-r products (see the crate docs).
fn whitened(
    w: MatRef<'_, f64>,
    g: MatRef<'_, f64>,
    r: usize,
) -> Result<(Mat<f64>, Mat<f64>), FactorizeError> {
    let n_in = w.nrows();
    let (l, v) = sym_eigen(g)?;
    let top = l.iter().cloned().fold(0.0f64, f64::max);
    let floor = (1e-10 * top).max(f64::MIN_POSITIVE);
    let root: Vec<f64> = l.iter().map(|&x| x.max(floor).sqrt()).collect();
    // M = Sᵀ W = Λ^½ Vᵀ W
    let vtw = tmul(v.as_ref(), w);
    let m = Mat::from_fn(n_in, w.ncols(), |i, j| root[i] * vtw[(i, j)]);
    let (u, s, vv) = svd(m.as_ref())?;
    // A = S⁻ᵀ U_r Σ_r^½ = V Λ^-½ U_r Σ_r^½
    let scaled = Mat::from_fn(n_in, r, |i, k| u[(i, k)] * s[k].sqrt() / root[i]);
    let a = mul(v.as_ref(), scaled.as_ref());
    let b = Mat::from_fn(r, w.ncols(), |k, j| s[k].sqrt() * vv[(j, k)]);
    Ok((a, b))
}

/// `mean((Y - Ŷ)²) / var(Y)` over all `n · out` outputs, in closed form from the
/// calibration statistics: `Y = X W + b`, `Ŷ = X (W - D) + b'`.
fn nmse(
    c: &Calibration,
    w: MatRef<'_, f64>,
    b: &[f64],
    d: MatRef<'_, f64>,
    b_new: &[f64],
) -> Result<f64, FactorizeError> {
    let n = c.rows() as f64;
    let (n_in, n_out) = (w.nrows(), w.ncols());
    let g = c.scatter();
    let mu = c.mean();
    // Residual row i: (x_i - μ)ᵀ D + (μᵀ D + b - b'), so
    // SSE = tr(Dᵀ G D) + n ‖μᵀ D + b - b'‖² (the cross term vanishes: Σ (x_i - μ) = 0).
    let gd = mul(g.as_ref(), d);
    let mut sse = 0.0;
    for j in 0..n_out {
        let mut col = 0.0;
        let mut shift = b[j] - b_new[j];
        for i in 0..n_in {
            col += d[(i, j)] * gd[(i, j)];
            shift += mu[i] * d[(i, j)];
        }
        sse += col + n * shift * shift;
    }
    let sst = output_variation(c, w, b);
    let total = n * n_out as f64;
    let var = sst / (total - 1.0);
    let mse = sse.max(0.0) / total;
    Ok(if var > 0.0 {
        mse / var
    } else if mse == 0.0 {
        0.0
    } else {
        f64::INFINITY
    })
}
