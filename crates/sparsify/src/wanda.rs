//! Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language
//! Models", <https://arxiv.org/abs/2306.11695>): prune by weight magnitude times input
//! activation norm, compared within each output.
//!
//! For a linear layer `y = W x` with calibration inputs `X` (`[n_rows, d_in]`), the score of
//! weight `W_ij` (output `i`, input `j`) is
//!
//! `S_ij = |W_ij| · ‖X_{:, j}‖₂`
//!
//! and each output `i` drops its `⌊s · d_in⌋` lowest-scoring weights (ties to the lower input
//! index, like the reference implementation's stable sort).

use std::collections::BTreeMap;

use shears_spaces::HostTensor;

use crate::block::order_key;
use crate::criteria::check_operands;
use crate::{Config, Mask, Sparsifier, SparsifyError};

/// Which axis of a weight matrix is the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// `[d_input, d_output]`: Burn's `Linear::weight`.
    #[default]
    InOut,
    /// `[d_output, d_input]`: PyTorch's `nn.Linear.weight`.
    OutIn,
}

/// Accumulates `Σ_rows x_j²` per input feature over calibration batches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WandaStats {
    sum_sq: Vec<f64>,
    rows: usize,
}

impl WandaStats {
    /// No observations yet; the width is fixed by the first [`WandaStats::observe`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a batch of inputs.
    ///
    /// # Arguments
    /// - `rows`: `[n, width]` row-major inputs of the layer (flatten batch and sequence).
    /// - `width`: the input width `d_in`.
    ///
    /// # Errors
    /// [`SparsifyError::Shape`] when `width` is 0, `rows.len()` is not a multiple of it, or
    /// it differs from the width of earlier batches.
    pub fn observe(&mut self, rows: &[f32], width: usize) -> Result<(), SparsifyError> {
        if width == 0 || !rows.len().is_multiple_of(width) {
            return Err(SparsifyError::Shape {
                what: "calibration rows".into(),
                expected: vec![rows.len() / width.max(1), width],
                found: vec![rows.len()],
            });
        }
        if self.rows == 0 && self.sum_sq.is_empty() {
            self.sum_sq = vec![0.0; width];
        } else if self.sum_sq.len() != width {
            return Err(SparsifyError::Shape {
                what: "calibration row width".into(),
                expected: vec![self.sum_sq.len()],
                found: vec![width],
            });
        }
        for row in rows.chunks_exact(width) {
            for (s, &x) in self.sum_sq.iter_mut().zip(row) {
                let x = x as f64;
                *s += x * x;
            }
        }
        self.rows += rows.len() / width;
        Ok(())
    }

    /// Input width (0 before the first batch).
    pub fn width(&self) -> usize {
        self.sum_sq.len()
    }

    /// Rows observed.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `‖X_{:, j}‖₂` per input feature, `[width]`.
    pub fn norms(&self) -> Vec<f32> {
        self.sum_sq.iter().map(|&s| s.sqrt() as f32).collect()
    }
}

/// The Wanda criterion. Holds the activation norms of each weight by name (parameter path
/// for Burn modules); reads [`Config::sparsity_level`] (fraction of each output's weights).
/// Weights must be 2-D in the given [`Layout`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wanda {
    layout: Layout,
    norms: BTreeMap<String, Vec<f32>>,
}

impl Wanda {
    /// No statistics yet.
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            norms: BTreeMap::new(),
        }
    }

    /// Uses the inputs observed in `stats` for the weight `name`.
    pub fn insert(&mut self, name: impl Into<String>, stats: &WandaStats) {
        self.norms.insert(name.into(), stats.norms());
    }

    /// Uses given input norms `[d_in]` for the weight `name`.
    pub fn insert_norms(&mut self, name: impl Into<String>, norms: Vec<f32>) {
        self.norms.insert(name.into(), norms);
    }

    /// The weight layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }
}

impl Sparsifier for Wanda {
    fn update_mask(
        &self,
        name: &str,
        data: &HostTensor,
        config: &Config,
        mask: &mut Mask,
    ) -> Result<(), SparsifyError> {
        let s = config.sparsity_level;
        if !(0.0..=1.0).contains(&s) {
            return Err(SparsifyError::BadSparsity(s));
        }
        check_operands(name, data, mask)?;
        if data.shape.len() != 2 {
            return Err(SparsifyError::NotMatrix {
                name: name.to_string(),
                shape: data.shape.clone(),
            });
        }
        let norms = self
            .norms
            .get(name)
            .ok_or_else(|| SparsifyError::MissingStats(name.to_string()))?;
        let layout = self.layout;
        let (d_in, d_out) = match layout {
            Layout::InOut => (data.shape[0], data.shape[1]),
            Layout::OutIn => (data.shape[1], data.shape[0]),
        };
        if norms.len() != d_in {
            return Err(SparsifyError::Shape {
                what: format!("activation norms of `{name}`"),
                expected: vec![d_in],
                found: vec![norms.len()],
            });
        }
        mask.fill(true);
        let k = ((s * d_in as f64).floor() as usize).min(d_in);
        if k == 0 {
            return Ok(());
        }
        let at = |o: usize, i: usize| match layout {
            Layout::InOut => i * d_out + o,
            Layout::OutIn => o * d_in + i,
        };
        let bits = mask.bits_mut();
        let mut scores: Vec<u64> = Vec::with_capacity(d_in);
        for o in 0..d_out {
            scores.clear();
            for (i, &norm) in norms.iter().enumerate() {
                let score = data.data[at(o, i)].abs() * norm;
                scores.push(((order_key(score) as u64) << 32) | i as u64);
            }
            if k < d_in {
                let _ = scores.select_nth_unstable(k - 1);
            }
            for &e in &scores[..k] {
                bits[at(o, (e & 0xFFFF_FFFF) as usize)] = false;
            }
        }
        Ok(())
    }
}
