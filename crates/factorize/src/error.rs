//! `FactorizeError`: what a rank, a calibration input, a weight or a module can get wrong.

/// Errors of factorization. Each names the offending value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FactorizeError {
    /// A rank of 0.
    #[error("rank 0 is not a factorization: the layer would output its bias only")]
    RankZero,
    /// A rank that cannot reduce anything: `rank >= min(in, out)`.
    #[error("rank {rank} is not below min(in, out) = {max} of a {n_in} x {n_out} layer")]
    RankTooLarge {
        /// The rank asked for.
        rank: usize,
        /// `min(in, out)`.
        max: usize,
        /// Input width.
        n_in: usize,
        /// Output width.
        n_out: usize,
    },
    /// A rank given as a fraction outside (0, 1).
    #[error("rank fraction {0} is not in (0, 1)")]
    BadFraction(f64),
    /// `set_rank` asked for a larger rank than the layer has.
    #[error("cannot raise the rank from {current} to {requested}: set_rank only lowers it")]
    RankIncrease {
        /// The layer's rank.
        current: usize,
        /// The rank asked for.
        requested: usize,
    },
    /// Two inputs disagree in shape.
    #[error("{what}: expected shape {expected:?}, found {found:?}")]
    Shape {
        /// Which input.
        what: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Found shape.
        found: Vec<usize>,
    },
    /// A NaN or infinity in an input.
    #[error("{what} holds a non-finite value ({value}) at row {row}, column {col}")]
    NonFinite {
        /// Which input.
        what: String,
        /// The value.
        value: f32,
        /// Row.
        row: usize,
        /// Column.
        col: usize,
    },
    /// Too few calibration rows.
    #[error("calibration has {rows} rows; at least 2 are needed to measure the output error")]
    TooFewRows {
        /// Rows seen.
        rows: usize,
    },
    /// A method that needs calibration inputs was given none.
    #[error("the {method} solution needs calibration inputs")]
    NoCalibration {
        /// The method.
        method: &'static str,
    },
    /// A grouped convolution.
    #[error("cannot factorize a grouped convolution (groups = {groups})")]
    GroupedConv {
        /// Its groups.
        groups: usize,
    },
    /// A decomposition did not converge.
    #[error("{what} did not converge")]
    Numerical {
        /// Which decomposition.
        what: &'static str,
    },
}
