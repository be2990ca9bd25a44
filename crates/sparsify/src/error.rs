//! `SparsifyError`: what a name, a config, a mask, a saved state or a schedule can get wrong.

/// Errors of sparsification. Each names the offending value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SparsifyError {
    /// A data name containing `.` (names are single path segments, as in torch, where the
    /// name becomes a buffer name).
    #[error("data name `{0}` contains '.'; use a name without dots")]
    DottedName(String),
    /// An empty data name.
    #[error("data name is empty")]
    EmptyName,
    /// A name the sparsifier does not hold.
    #[error("no data named `{0}`")]
    UnknownName(String),
    /// The original values or the mask of a squashed entry were asked for.
    #[error("the mask of `{0}` was squashed: the original values and the mask no longer exist")]
    Squashed(String),
    /// A sparsity level outside `[0, 1]` (or NaN).
    #[error("sparsity level {0} is not in [0, 1]")]
    BadSparsity(f64),
    /// A block shape with a zero side.
    #[error("block shape {block:?} has a zero side")]
    BadBlock {
        /// The block shape `[height, width]`.
        block: [usize; 2],
    },
    /// More zeros per block than the block has elements.
    #[error("{zeros} zeros per block do not fit in a block of shape {block:?}")]
    ZerosPerBlock {
        /// Zeros per block asked for.
        zeros: usize,
        /// The block shape `[height, width]`.
        block: [usize; 2],
    },
    /// A NaN threshold.
    #[error("threshold {0} is not a number")]
    BadThreshold(f64),
    /// N:M with `m == 0` or `n > m`.
    #[error("{n}:{m} sparsity needs 0 <= n <= m and m > 0")]
    BadNM {
        /// Zeros per group.
        n: usize,
        /// Group length.
        m: usize,
    },
    /// Data that is not a matrix once its size-1 axes are removed.
    #[error("`{name}` has shape {shape:?}, which is not 2-D after removing size-1 axes")]
    NotMatrix {
        /// The data name or parameter path.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// Values whose count does not match their shape.
    #[error("`{name}` has shape {shape:?} but {len} values")]
    DataLength {
        /// The data name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Number of values.
        len: usize,
    },
    /// Two things that must agree in shape do not.
    #[error("{what}: expected shape {expected:?}, found {found:?}")]
    Shape {
        /// What was checked.
        what: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Found shape.
        found: Vec<usize>,
    },
    /// A mask that cannot be decoded from its saved form.
    #[error("bad saved mask: {0}")]
    BadMask(String),
    /// A saved state whose names differ from the sparsifier's.
    #[error(
        "state does not match the sparsifier: names missing from the state {missing:?}, \
         names the sparsifier does not hold {unexpected:?}"
    )]
    StateMismatch {
        /// Names the sparsifier holds but the state does not.
        missing: Vec<String>,
        /// Names the state holds but the sparsifier does not.
        unexpected: Vec<String>,
    },
    /// Wanda was asked for a mask of a tensor it has no activation statistics for.
    #[error("no activation statistics for `{0}`: observe calibration inputs and insert them first")]
    MissingStats(String),
    /// A scheduler stepped before the sparsifier ever did since the scheduler was made.
    #[error(
        "scheduler.step() called before sparsifier.step(): call the sparsifier's step first, \
         then the scheduler's"
    )]
    SchedulerBeforeSparsifier,
    /// A schedule parameter that makes the curve undefined.
    #[error("schedule parameter {what} = {value} is invalid")]
    BadSchedule {
        /// Which parameter.
        what: &'static str,
        /// Its value.
        value: f64,
    },
    /// A mask for a parameter path the module does not have.
    #[error("the module has no float parameter at `{0}`")]
    UnknownPath(String),
    /// A parameter pattern that matches no parameter of the module.
    #[error("pattern `{0}` matches no float parameter of the module")]
    NoMatch(String),
}
