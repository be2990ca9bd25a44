//! Dimension identity for structured pruning.
//!
//! A [`Space`] is a vector space that parameter axes live in. It is an *identity*, not a
//! number: two dimensions of size 384 are different spaces unless one was built from the
//! other (seed 000). Modules take `impl Into<Dim>` (a plain size or a shared space) and pass
//! spaces down; a model declares, in a [`Registry`], every `(parameter, axis)` of every
//! space. Then "every parameter axis in the hidden space" is a query, [`Registry::validate`]
//! proves the declaration covers the real parameters exactly, and structured pruning is one
//! operation: [`Registry::plan_keep`] ("keep units K of space S") gives the slice of every
//! member tensor, and [`Registry::unit_mask`] the equivalent soft mask.
//!
//! The crate has no tensor-library dependency: plans are applied to exported host tensors
//! ([`TensorMap`]), so any framework can use it.

mod error;
mod hash;
mod registry;
mod space;
mod tensors;

pub use error::*;
pub use hash::*;
pub use registry::*;
pub use space::*;
pub use tensors::*;
