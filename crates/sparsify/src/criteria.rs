//! The `Sparsifier` trait (one method: compute a tensor's mask) and the built-in criteria
//! `Threshold`, `BlockNorm`, `NM` and `Magnitude`. `Wanda` lives in `wanda.rs`.

use shears_spaces::HostTensor;

use crate::block::{BlockSpec, block_mask, squeezed_matrix};
use crate::{Config, Mask, Norm, SparsifyError};

/// A mask criterion. Writing your own is implementing this one method (see
/// `examples/threshold.rs`).
///
/// [`crate::DataSparsifier::step`] calls it for every name with the **original** (unmasked)
/// data, that name's config and its mask, which still holds the previous step's flags:
/// a criterion that computes from scratch overwrites every flag (all the built-ins do); one
/// that only ever drops more can just clear flags.
pub trait Sparsifier {
    /// Computes the mask of the tensor `name` into `mask` (same shape as `data`).
    ///
    /// # Arguments
    /// - `name`: the data name (or the parameter path, for masks on Burn modules).
    /// - `data`: the original values.
    /// - `config`: the settings of this tensor.
    /// - `mask`: the mask to update in place.
    fn update_mask(
        &self,
        name: &str,
        data: &HostTensor,
        config: &Config,
        mask: &mut Mask,
    ) -> Result<(), SparsifyError>;
}

impl<S: Sparsifier + ?Sized> Sparsifier for &S {
    fn update_mask(
        &self,
        name: &str,
        data: &HostTensor,
        config: &Config,
        mask: &mut Mask,
    ) -> Result<(), SparsifyError> {
        (**self).update_mask(name, data, config, mask)
    }
}

impl<S: Sparsifier + ?Sized> Sparsifier for Box<S> {
    fn update_mask(
        &self,
        name: &str,
        data: &HostTensor,
        config: &Config,
        mask: &mut Mask,
    ) -> Result<(), SparsifyError> {
        (**self).update_mask(name, data, config, mask)
    }
}

/// Checks that `data` is consistent and `mask` has its shape.
pub(crate) fn check_operands(
    name: &str,
    data: &HostTensor,
    mask: &Mask,
) -> Result<(), SparsifyError> {
    if data.data.len() != data.shape.iter().product::<usize>() {
        return Err(SparsifyError::DataLength {
            name: name.to_string(),
            shape: data.shape.clone(),
            len: data.data.len(),
        });
    }
    if mask.shape() != data.shape.as_slice() {
        return Err(SparsifyError::Shape {
            what: format!("mask of `{name}`"),
            expected: data.shape.clone(),
            found: mask.shape().to_vec(),
        });
    }
    Ok(())
}

/// Drops every element with `|x| < threshold` ([`Config::threshold`]); keeps the rest
/// (NaN included). Any shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Threshold;

impl Sparsifier for Threshold {
    fn update_mask(
        &self,
        name: &str,
        data: &HostTensor,
        config: &Config,
        mask: &mut Mask,
    ) -> Result<(), SparsifyError> {
        config.validate()?;
        check_operands(name, data, mask)?;
        let t = config.threshold;
        for (keep, &x) in mask.bits_mut().iter_mut().zip(&data.data) {
            *keep = x.is_nan() || (x.abs() as f64) >= t;
        }
        Ok(())
    }
}

/// torch's `DataNormSparsifier` (and, for dividing block shapes, `WeightNormSparsifier`):
/// the `round(s · n_blocks)` blocks with the lowest mean score lose `zeros_per_block`
/// elements each, their lowest.
///
/// Reads [`Config::sparsity_level`] (fraction of blocks), [`Config::sparse_block_shape`],
/// [`Config::zeros_per_block`] and [`Config::norm`] (`|x|` or `x²`). Masks equal torch's
/// bit for bit (the crate's fixture test checks 142 cases).
///
/// # Shapes
/// Like torch, the data is first squeezed (every size-1 axis removed): `[n]`, `[1, n]` and
/// `[n, 1]` are all treated as one row `[1, n]`, `[1, r, c]` as `[r, c]`. More than two
/// remaining axes is [`SparsifyError::NotMatrix`]. Unlike torch, the mask keeps the
/// data's own shape (torch's becomes the squeezed shape); the flags, row-major, are the same.
///
/// # Padding and ties
/// Blocks are anchored at `(0, 0)`. A block shape that does not divide the matrix (or is
/// larger than it) makes partial blocks at the bottom and right edges, as torch's padding
/// does: a partial block is ranked by the mean over its in-bounds elements, and loses
/// `min(zeros_per_block, in-bounds elements)` elements. `n_blocks · s` is rounded half to
/// even (Python's `round`). Equal scores are ordered by position: the lower block number
/// (row-major over the block grid) is chosen first, and inside a block the lower row-major
/// position is zeroed first. This is torch's order whenever its sorts see ties only among at
/// most 16 values; for longer tied sorts torch's order is its introsort's, which no stable
/// rule reproduces. Scores compare with `-0 == +0` and NaN above everything.
///
/// # Cost
/// Linear in the number of elements: block means, a two-pass radix selection of the
/// threshold block score (no sort), then one pass over the chosen blocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockNorm;

impl Sparsifier for BlockNorm {
    fn update_mask(
        &self,
        name: &str,
        data: &HostTensor,
        config: &Config,
        mask: &mut Mask,
    ) -> Result<(), SparsifyError> {
        config.validate()?;
        check_operands(name, data, mask)?;
        let (rows, cols) = matrix(name, data)?;
        let spec = BlockSpec {
            sparsity: config.sparsity_level,
            block: config.sparse_block_shape,
            zeros: config.zeros(),
            norm: config.norm,
        };
        block_mask(&data.data, rows, cols, &spec, mask.bits_mut());
        Ok(())
    }
}

fn matrix(name: &str, data: &HostTensor) -> Result<(usize, usize), SparsifyError> {
    squeezed_matrix(&data.shape).ok_or_else(|| SparsifyError::NotMatrix {
        name: name.to_string(),
        shape: data.shape.clone(),
    })
}

/// N:M sparsity: exactly `n` zeros, the lowest `|x|`, in every group of `m` consecutive
/// elements along each row (or, with `columns`, down each column).
///
/// It is [`BlockNorm`] with block `[1, m]` (`[m, 1]`), sparsity 1 and `n` zeros per block;
/// it ignores the config. A row whose length is not a multiple of `m` ends in a partial
/// group of `v < m` elements, which gets `min(n, v)` zeros. Shapes as in [`BlockNorm`].
///
/// Which axis matters for hardware: NVIDIA's 2:4 sparse kernels want groups along the
/// reduction (input) axis. A PyTorch `Linear` weight is `[out, in]` (groups along rows); a
/// Burn `Linear` weight is `[in, out]`, so use [`NM::along_columns`] for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NM {
    /// Zeros per group.
    pub n: usize,
    /// Group length.
    pub m: usize,
    /// Groups run down columns instead of along rows.
    pub columns: bool,
}

impl NM {
    /// `n` zeros in every `m` consecutive elements of a row.
    ///
    /// # Errors
    /// [`SparsifyError::BadNM`] unless `n <= m` and `m > 0`.
    pub fn new(n: usize, m: usize) -> Result<Self, SparsifyError> {
        let nm = Self {
            n,
            m,
            columns: false,
        };
        nm.validate()?;
        Ok(nm)
    }

    /// `n` zeros in every `m` consecutive elements of a column.
    ///
    /// # Errors
    /// [`SparsifyError::BadNM`] unless `n <= m` and `m > 0`.
    pub fn along_columns(n: usize, m: usize) -> Result<Self, SparsifyError> {
        let nm = Self {
            n,
            m,
            columns: true,
        };
        nm.validate()?;
        Ok(nm)
    }

    fn validate(&self) -> Result<(), SparsifyError> {
        if self.m == 0 || self.n > self.m {
            return Err(SparsifyError::BadNM {
                n: self.n,
                m: self.m,
            });
        }
        Ok(())
    }
}

impl Sparsifier for NM {
    fn update_mask(
        &self,
        name: &str,
        data: &HostTensor,
        _config: &Config,
        mask: &mut Mask,
    ) -> Result<(), SparsifyError> {
        self.validate()?;
        check_operands(name, data, mask)?;
        let (rows, cols) = matrix(name, data)?;
        let spec = BlockSpec {
            sparsity: 1.0,
            block: if self.columns {
                [self.m, 1]
            } else {
                [1, self.m]
            },
            zeros: self.n,
            norm: Norm::L1,
        };
        block_mask(&data.data, rows, cols, &spec, mask.bits_mut());
        Ok(())
    }
}

/// Unstructured magnitude pruning: the `round(s · len)` elements with the lowest `|x|` over
/// the whole tensor are dropped, ties to the lower flat index. Reads
/// [`Config::sparsity_level`] only; any shape. (Equal to [`BlockNorm`] with block `[1, 1]`.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Magnitude;

impl Sparsifier for Magnitude {
    fn update_mask(
        &self,
        name: &str,
        data: &HostTensor,
        config: &Config,
        mask: &mut Mask,
    ) -> Result<(), SparsifyError> {
        if !(0.0..=1.0).contains(&config.sparsity_level) {
            return Err(SparsifyError::BadSparsity(config.sparsity_level));
        }
        check_operands(name, data, mask)?;
        let spec = BlockSpec {
            sparsity: config.sparsity_level,
            block: [1, 1],
            zeros: 1,
            norm: Norm::L1,
        };
        let n = data.data.len();
        block_mask(&data.data, 1, n, &spec, mask.bits_mut());
        Ok(())
    }
}
