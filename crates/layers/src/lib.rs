//! BERT, RoBERTa and GPT-2 for Burn, built from one shared [`ModelConfig`]; what differs
//! between families lives in one file per family (`src/family/`).
//!
//! - Modules read the one config (`SelfAttention::new(config, layer, device)`): per-layer
//!   `n_heads`, `d_head` and `d_ff` make a pruned model an ordinary model (seed 003).
//! - The attention and feed-forward blocks are type parameters
//!   (`Transformer<B, A, F>`): put your own in without touching the layers above.
//! - Forward inputs carry optional head, neuron and hidden masks ([`Masks`]); a 0 equals
//!   removing the unit. This crate knows nothing of gates.
//! - Every parameter axis is declared in a space ([`declare`]); [`Transformer::keep`]
//!   prunes any space, [`Transformer::prune_heads`] removes heads by original index.
//! - Hugging Face checkpoints load ([`Transformer::load`]); our own format saves and loads
//!   heterogeneous shapes; any pruned BERT, RoBERTa or GPT-2 exports for `transformers`.
//! - A GPT-2 generates text with a key/value cache ([`Transformer::generate`]).
//! - Any attention or feed-forward projection may be factorized to a low rank
//!   ([`Projection`], ranks in [`LayerConfig::ranks`]); [`Capture`] records the inputs of
//!   every projection for calibration.

mod attention;
mod config;
mod cost;
pub mod dropout;
mod error;
mod family;
mod ffn;
mod generate;
pub mod hf;
pub mod kernels;
mod model;
mod names;
mod norm;
mod projection;
mod prune;
pub mod save;
pub mod tensorio;
mod tokenizer;

pub use attention::*;
pub use config::*;
pub use cost::PROJECTIONS;
pub use dropout::DropoutConfig;
pub use error::*;
pub use family::{Arch, Family};
pub use ffn::*;
pub use generate::*;
pub use model::*;
pub use names::SpaceName;
pub use norm::*;
pub use projection::*;
pub use tokenizer::*;
