//! `Calibration`: the sufficient statistics of a layer's inputs (row count, mean, centred
//! scatter, mean absolute value per channel), accumulated batch by batch; and im2col, which
//! turns a convolution's input into the rows its kernel sees.

use faer::Mat;
use shears_spaces::HostTensor;

use crate::FactorizeError;
use crate::linalg::tmul;

/// Statistics of the inputs `x: [in]` a layer saw. Add rows with [`Calibration::add`]; the
/// solutions read [`Calibration::scatter`] and [`Calibration::mean`].
#[derive(Debug, Clone)]
pub struct Calibration {
    n: usize,
    width: usize,
    sum: Vec<f64>,
    abs_sum: Vec<f64>,
    /// `Σ x xᵀ` (uncentred), `[in, in]`.
    gram: Mat<f64>,
}

impl Calibration {
    /// No rows yet, for inputs of `width` channels.
    pub fn new(width: usize) -> Self {
        Self {
            n: 0,
            width,
            sum: vec![0.0; width],
            abs_sum: vec![0.0; width],
            gram: Mat::zeros(width, width),
        }
    }

    /// Statistics of the rows of one matrix `x: [n, in]`.
    pub fn from_rows(x: &HostTensor) -> Result<Self, FactorizeError> {
        if x.shape.len() != 2 {
            return Err(FactorizeError::Shape {
                what: "calibration inputs (rows x channels)".into(),
                expected: vec![0, 0],
                found: x.shape.clone(),
            });
        }
        let mut c = Self::new(x.shape[1]);
        c.add(x)?;
        Ok(c)
    }

    /// Adds the rows of `x: [rows, in]`. A NaN or infinity is an error naming its position,
    /// and nothing is added.
    pub fn add(&mut self, x: &HostTensor) -> Result<(), FactorizeError> {
        if x.shape.len() != 2 || x.shape[1] != self.width {
            return Err(FactorizeError::Shape {
                what: "calibration rows".into(),
                expected: vec![x.shape.first().copied().unwrap_or(0), self.width],
                found: x.shape.clone(),
            });
        }
        let (rows, w) = (x.shape[0], self.width);
        if let Some(i) = x.data.iter().position(|v| !v.is_finite()) {
            return Err(FactorizeError::NonFinite {
                what: "calibration input".into(),
                value: x.data[i],
                row: i / w,
                col: i % w,
            });
        }
        // Chunks keep the f64 copy small whatever the batch.
        for start in (0..rows).step_by(4096) {
            let end = (start + 4096).min(rows);
            let m = Mat::from_fn(end - start, w, |i, j| x.data[(start + i) * w + j] as f64);
            let g = tmul(m.as_ref(), m.as_ref());
            self.gram += &g;
            for i in 0..end - start {
                for j in 0..w {
                    let v = m[(i, j)];
                    self.sum[j] += v;
                    self.abs_sum[j] += v.abs();
                }
            }
        }
        self.n += rows;
        Ok(())
    }

    /// Rows added.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Input channels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Mean input `μ`, `[in]`.
    pub fn mean(&self) -> Vec<f64> {
        let n = self.n.max(1) as f64;
        self.sum.iter().map(|s| s / n).collect()
    }

    /// Mean absolute input per channel, `[in]` (ASVD's activation statistic).
    pub fn mean_abs(&self) -> Vec<f64> {
        let n = self.n.max(1) as f64;
        self.abs_sum.iter().map(|s| s / n).collect()
    }

    /// The L2 norm of each input channel over every row, `‖X_j‖₂ = sqrt(Σ x_j²)`, `[in]`
    /// (Wanda's activation statistic).
    pub fn input_norms(&self) -> Vec<f64> {
        (0..self.width).map(|j| self.gram[(j, j)].sqrt()).collect()
    }

    /// Centred scatter `G = Σ (x - μ)(x - μ)ᵀ = Σ x xᵀ - n μ μᵀ`, `[in, in]`.
    pub(crate) fn scatter(&self) -> Mat<f64> {
        let mu = self.mean();
        let n = self.n as f64;
        Mat::from_fn(self.width, self.width, |i, j| {
            self.gram[(i, j)] - n * mu[i] * mu[j]
        })
    }

    /// Errors unless at least two rows were added.
    pub(crate) fn check(&self) -> Result<(), FactorizeError> {
        if self.n < 2 {
            return Err(FactorizeError::TooFewRows { rows: self.n });
        }
        Ok(())
    }
}

/// Where a convolution's kernel reads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// `[dh, dw]`.
    pub dilation: [usize; 2],
    /// Zero padding `[top, left, bottom, right]`.
    pub padding: [usize; 4],
}

impl ConvGeometry {
    /// Output height and width for an input of `h x w`.
    pub fn output_size(&self, h: usize, w: usize) -> [usize; 2] {
        let out = |size: usize, pad: usize, k: usize, s: usize, d: usize| {
            let span = d * (k - 1) + 1;
            (size + pad).checked_sub(span).map_or(0, |v| v / s + 1)
        };
        [
            out(
                h,
                self.padding[0] + self.padding[2],
                self.kernel[0],
                self.stride[0],
                self.dilation[0],
            ),
            out(
                w,
                self.padding[1] + self.padding[3],
                self.kernel[1],
                self.stride[1],
                self.dilation[1],
            ),
        ]
    }
}

/// The patches a convolution's kernel sees (im2col): for `x: [n, c, h, w]`, one row per
/// sample and output position (sample-major, then positions row-major), one column per
/// `(channel, kernel row, kernel column)` (channel-major), i.e. the order of
/// `weight.reshape([out, c · kh · kw])`. Out-of-bounds taps read the zero padding.
pub fn im2col(x: &HostTensor, geometry: &ConvGeometry) -> Result<HostTensor, FactorizeError> {
    let [n, c, h, w] = match x.shape[..] {
        [n, c, h, w] => [n, c, h, w],
        _ => {
            return Err(FactorizeError::Shape {
                what: "convolution input [batch, channels, height, width]".into(),
                expected: vec![0, 0, 0, 0],
                found: x.shape.clone(),
            });
        }
    };
    let g = geometry;
    let [oh, ow] = g.output_size(h, w);
    let [kh, kw] = g.kernel;
    let cols = c * kh * kw;
    let mut data = vec![0.0f32; n * oh * ow * cols];
    let mut row = 0;
    for s in 0..n {
        for y in 0..oh {
            for xo in 0..ow {
                let out = &mut data[row * cols..(row + 1) * cols];
                for ch in 0..c {
                    for i in 0..kh {
                        let iy =
                            (y * g.stride[0] + i * g.dilation[0]) as isize - g.padding[0] as isize;
                        if iy < 0 || iy as usize >= h {
                            continue;
                        }
                        for j in 0..kw {
                            let ix = (xo * g.stride[1] + j * g.dilation[1]) as isize
                                - g.padding[1] as isize;
                            if ix < 0 || ix as usize >= w {
                                continue;
                            }
                            out[(ch * kh + i) * kw + j] =
                                x.data[((s * c + ch) * h + iy as usize) * w + ix as usize];
                        }
                    }
                }
                row += 1;
            }
        }
    }
    Ok(HostTensor::new(vec![n * oh * ow, cols], data))
}
