//! Experiments on real models and data: the config (`config` crate, TOML + environment +
//! flags), datasets (CSV / JSON lines, bzip2 allowed, seeded split), the gated-training
//! pipeline (dense fine-tune -> gated training toward a target sparsity -> harden and remove
//! -> fine-tune -> evaluate), checkpoints and resume, evaluation of saved models, and the
//! report with its figures; low-rank factorization of a saved model on real text.
//!
//! Training runs on `B: AutodiffBackend`; evaluation and latency on its inner backend.

mod checkpoint;
mod config;
pub mod data;
mod derived;
pub mod distill;
mod error;
mod eval;
mod factorize;
pub mod figures;
mod heads;
mod measure;
pub mod optim;
mod posttrain;
mod progress;
pub mod report;
mod reuse;
mod run;
pub mod sparsify;
pub mod summary;
pub mod task;
mod taskfile;
mod trainer;

pub use checkpoint::EpochScore;
pub use config::*;
pub use derived::{DataChoice, Metrics};
pub use error::*;
pub use eval::*;
pub use factorize::*;
pub use heads::{PrunedHeads, run_prune_heads};
pub use measure::{BOOTSTRAP_RESAMPLES, Latency, PairedDelta, paired_delta};
pub use posttrain::{
    LatencyFit, LayerKept, PruneOptions, PruneSummary, PruneTarget, PruneTimes, prune_markdown,
    run_prune,
};
pub use run::*;
pub use sparsify::{
    DEFAULT_PATTERNS, SparsifyMethod, SparsifyOptions, SparsifySummary, TensorSparsity,
    run_sparsify,
};
pub use taskfile::*;
pub use trainer::{MAX_GRAD_NORM, dense_step, weight_optimizer};
