//! Joins the model-agnostic crates to shears' BERT and GPT-2: learned structured pruning (put
//! Hard-Concrete gates on a model, train them, harden them, and physically remove the closed
//! units through the model's spaces), and model-level low-rank factorization (calibrate,
//! choose ranks to a budget, replace the projections).
//!
//! A gated model is the plain model plus a [`shears_gates::GateSet`]; the gates act only
//! through the forward input's masks, so `shears-layers` never learns about gates. Gate
//! groups are keyed by [`shears_layers::SpaceName`]s; [`GatedModel::expected_size`] gives the
//! expected parameters or FLOPs under the gates, for size targets.

mod factorize;
mod gated;
mod posttrain;
mod size;
mod task;

pub use factorize::*;
pub use gated::*;
pub use posttrain::*;
pub use size::*;
pub use task::*;
