//! `TrainError`: what a config, a dataset, a model directory or a checkpoint can get wrong.

use std::path::PathBuf;

use shears_gates::GateError;
use shears_layers::LoadError;
use shears_pruners::PrunerError;

/// Errors of the experiment pipeline. Each names the offending key, file or value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    /// The config file is missing or malformed, or has an unknown key.
    #[error("bad config ({source_name}): {message}")]
    Config {
        /// File, key or section.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// A config value is out of its range.
    #[error("config key `{key}` = {value} is out of range: expected {expected}")]
    OutOfRange {
        /// Dotted key.
        key: String,
        /// The value given.
        value: String,
        /// The range.
        expected: String,
    },
    /// A dataset file cannot be read as asked.
    #[error("dataset `{path}`: {reason}")]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A dataset file has no row with a text and a wanted label.
    #[error(
        "dataset `{path}` has no usable rows: {read} read, {dropped_label} with a label not in data.labels, {dropped_empty} with empty text"
    )]
    NoUsableRows {
        /// The file.
        path: PathBuf,
        /// Rows read.
        read: usize,
        /// Rows dropped for their label.
        dropped_label: usize,
        /// Rows dropped for empty text.
        dropped_empty: usize,
    },
    /// A model or tokenizer could not be loaded or saved.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Gates or pruning failed.
    #[error(transparent)]
    Pruner(#[from] PrunerError),
    /// Gate settings.
    #[error(transparent)]
    Gate(#[from] GateError),
    /// Masks.
    #[error(transparent)]
    Sparsify(#[from] shears_sparsify::SparsifyError),
    /// A file could not be read or written.
    #[error("cannot access `{path}`: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// A checkpoint is unreadable or belongs to another config.
    #[error("checkpoint `{path}`: {reason}")]
    Checkpoint {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `--dense-from`: the run cannot stand in for this experiment's dense phase.
    #[error("cannot reuse the dense phase of `{run}`: {reason}")]
    DenseFrom {
        /// The finished run given.
        run: PathBuf,
        /// Why not.
        reason: String,
    },
    /// An earlier run with this output was interrupted.
    #[error(
        "an interrupted run left `{staging}`; pass --resume to continue it, or delete it to start over"
    )]
    Interrupted {
        /// The staging directory.
        staging: PathBuf,
    },
    /// A failure injected by `RunOptions::fail_after_writes` (tests of crash safety).
    #[error("injected failure after write {after} (`{path}`)")]
    InjectedFailure {
        /// Writes done, this one included.
        after: usize,
        /// The file just written.
        path: PathBuf,
    },
    /// A dataset row's label is not one of the model's classes.
    #[error("dataset `{path}`: label `{label}` is not one of the model's classes {known:?}")]
    UnknownLabel {
        /// The file.
        path: PathBuf,
        /// The label in the file.
        label: String,
        /// The model's classes, in class order.
        known: Vec<String>,
    },
    /// A model's metrics were asked on another file than the one it was trained on.
    #[error(
        "the model was trained on `{recorded}` (its task.json says so), but `{given}` was given: its \"test\" split would not be the held-out one; pass the recorded file, or allow another file explicitly (--other-data)"
    )]
    OtherData {
        /// The file `task.json` records.
        recorded: PathBuf,
        /// The file given.
        given: PathBuf,
    },
}
