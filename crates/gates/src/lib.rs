//! Hard-Concrete gates for learning which structured units (attention heads, neurons,
//! hidden dimensions, whole blocks) a model can lose.
//!
//! A gate per unit multiplies the unit's output; training adds an L0 penalty (the expected
//! number of open gates) or a Lagrangian that steers the expected sparsity to a target;
//! hardening turns the learned gates into the units to keep, per space. The crate knows
//! spaces only by name and knows nothing of models: `shears-pruners` connects the two.

mod control;
mod gate;
mod group;

pub use control::*;
pub use gate::*;
pub use group::*;
