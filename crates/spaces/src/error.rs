//! `SpaceError`: everything a declaration, a validation or a pruning request can get wrong.

/// Errors of the `spaces` crate. Every variant names the offending space, path or value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpaceError {
    /// No space of that name is registered.
    #[error("unknown space `{name}` (known: {known})")]
    UnknownSpace {
        /// The requested name.
        name: String,
        /// The registered names, comma-separated.
        known: String,
    },
    /// A member or request names a parameter the model does not have.
    #[error("unknown parameter `{path}`")]
    UnknownParameter {
        /// The parameter path.
        path: String,
    },
    /// A parameter axis is claimed by no space and not marked free.
    #[error("axis {axis} of parameter `{path}` (shape {shape:?}) is claimed by no space")]
    Unclaimed {
        /// The parameter path.
        path: String,
        /// The axis.
        axis: usize,
        /// The parameter's shape.
        shape: Vec<usize>,
    },
    /// A parameter axis is claimed twice.
    #[error("axis {axis} of parameter `{path}` is claimed by both `{first}` and `{second}`")]
    ClaimedTwice {
        /// The parameter path.
        path: String,
        /// The axis.
        axis: usize,
        /// The first claimant (a space name, or `free`).
        first: String,
        /// The second claimant.
        second: String,
    },
    /// A claimed axis does not exist on the parameter.
    #[error("space `{space}` claims axis {axis} of `{path}`, which has only {rank} axes")]
    AxisOutOfRange {
        /// The parameter path.
        path: String,
        /// The claimed axis.
        axis: usize,
        /// The parameter's rank.
        rank: usize,
        /// The claiming space.
        space: String,
    },
    /// A member axis has the wrong length for its space.
    #[error("axis {axis} of `{path}` has length {found} but space `{space}` has size {expected}")]
    SizeMismatch {
        /// The parameter path.
        path: String,
        /// The axis.
        axis: usize,
        /// The space.
        space: String,
        /// The space's size.
        expected: usize,
        /// The axis length found.
        found: usize,
    },
    /// A unit index is not below the space's number of units.
    #[error("unit {unit} is out of range for space `{space}` of {n_units} units")]
    UnitOutOfRange {
        /// The space.
        space: String,
        /// The bad unit.
        unit: usize,
        /// The number of units.
        n_units: usize,
    },
    /// A unit index appears twice in one request.
    #[error("unit {unit} of space `{space}` is listed twice")]
    DuplicateUnit {
        /// The space.
        space: String,
        /// The repeated unit.
        unit: usize,
    },
    /// Keeping this few units would break the model.
    #[error(
        "keeping {kept} of {n_units} units of space `{space}` is below its minimum of {min}{hint}"
    )]
    TooFewUnits {
        /// The space.
        space: String,
        /// Units requested.
        kept: usize,
        /// Units in the space.
        n_units: usize,
        /// The smallest allowed.
        min: usize,
        /// What to do instead, starting with `: ` (or empty).
        hint: String,
    },
}
