//! Learned structured pruning: put Hard-Concrete gates on a shears BERT or GPT-2, train them,
//! harden them, and physically remove the closed units through the model's spaces.
//!
//! A gated model is the plain model plus a [`shears_gates::GateSet`]; the gates act only
//! through the forward input's masks, so `shears-layers` never learns about gates.

mod gated;
mod task;

pub use gated::*;
pub use task::*;
