//! Experiments on real models and data: the config (`config` crate, TOML + environment +
//! flags), datasets (CSV / JSON lines, bzip2 allowed, seeded split), the gated-training
//! pipeline (dense fine-tune -> gated training toward a target sparsity -> harden and remove
//! -> fine-tune -> evaluate), checkpoints and resume, evaluation of saved models, and the
//! report with its figures.
//!
//! Training runs on `B: AutodiffBackend`; evaluation and latency on its inner backend.

mod config;
pub mod data;
mod error;
mod eval;
pub mod report;
mod run;
pub mod task;

pub use config::*;
pub use error::*;
pub use eval::*;
pub use run::*;
