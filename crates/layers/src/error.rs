//! `LoadError` and `PruneError`: what a user's file, config or request can get wrong.

use std::path::PathBuf;

/// Errors reading, writing or importing model files and parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read or written.
    #[error("cannot access `{path}`: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// An output would replace a file or a non-empty directory the caller did not ask to
    /// replace ([`crate::save::Existing::Refuse`]).
    #[error(
        "output `{path}` already exists and is not empty: refusing to replace it (pass `--force` to replace it; the replacement is atomic)"
    )]
    OutputExists {
        /// The output.
        path: PathBuf,
    },
    /// A config file is malformed.
    #[error("bad config `{path}`: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `config.json` asks for a computation shears does not implement: loading it anyway
    /// would give wrong numbers silently.
    #[error("`{path}`: option `{key}` = {value} is not supported ({reason})")]
    UnsupportedOption {
        /// The file (empty when the config did not come from a file).
        path: PathBuf,
        /// The key.
        key: String,
        /// Its value, as JSON.
        value: String,
        /// What shears computes instead.
        reason: &'static str,
    },
    /// A safetensors file is malformed or truncated.
    #[error("bad safetensors file `{path}`: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The config names an activation shears does not implement.
    #[error("unknown activation `{found}` (supported: {supported})")]
    UnknownActivation {
        /// The name found.
        found: String,
        /// The names supported.
        supported: &'static str,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("missing tensor `{key}` (expected shape {expected:?})")]
    MissingKey {
        /// Checkpoint key.
        key: String,
        /// Shape the model expects.
        expected: Vec<usize>,
    },
    /// The checkpoint holds a tensor the model has no place for.
    #[error("unexpected tensor `{key}` with shape {found:?}")]
    UnexpectedKey {
        /// Checkpoint key.
        key: String,
        /// Its shape.
        found: Vec<usize>,
    },
    /// A GPT-2 checkpoint's `lm_head.weight` differs from its `wte.weight`: shears' GPT-2
    /// ties the LM head to the token embedding and cannot hold a separate one.
    #[error(
        "`lm_head.weight` (shape {shape:?}) differs from `wte.weight`{}: untied language-model heads are not supported",
        max_diff.map(|d| format!(" (largest difference {d})")).unwrap_or_else(|| " (other shape)".into())
    )]
    UntiedLmHead {
        /// Shape of `lm_head.weight`.
        shape: Vec<usize>,
        /// Largest absolute difference to `wte.weight`, when the shapes agree.
        max_diff: Option<f32>,
    },
    /// A tensor has the wrong shape.
    #[error("tensor `{key}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// Checkpoint key.
        key: String,
        /// Shape the model expects.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has a dtype shears cannot load.
    #[error("tensor `{key}` has dtype {found}, expected {expected}")]
    Dtype {
        /// Checkpoint key.
        key: String,
        /// Accepted dtypes.
        expected: &'static str,
        /// Dtype in the file.
        found: String,
    },
    /// The model cannot be written in the requested format.
    #[error("cannot export: {0}")]
    NotRepresentable(String),
    /// A tokenizer could not be loaded or run.
    #[error("tokenizer `{path}`: {message}")]
    Tokenizer {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Errors of a pruning request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PruneError {
    /// The request is wrong for the model's spaces.
    #[error(transparent)]
    Space(#[from] shears_spaces::SpaceError),
    /// A head-pruning request names a layer the model does not have.
    #[error("layer {layer} does not exist (the model has {n_layers} layers)")]
    NoSuchLayer {
        /// The requested layer.
        layer: usize,
        /// Layers in the model.
        n_layers: usize,
    },
    /// A head-pruning request names a head that is not (or no longer) in the layer.
    #[error(
        "head {head} of layer {layer} is not in the model (remaining original heads: {remaining:?})"
    )]
    NoSuchHead {
        /// The layer.
        layer: usize,
        /// The requested original head.
        head: usize,
        /// The layer's remaining original heads.
        remaining: Vec<usize>,
    },
    /// A space whose size shears cannot change in the config: a block name (a block is
    /// one unit: prune its heads or neurons) or a space a user block declares.
    #[error(
        "space `{space}` cannot be resized: a block is removed by keeping none of its units, and a space a user block declares has no entry in the model config"
    )]
    NotResizable {
        /// The space.
        space: String,
    },
    /// Units of a block other than `[]` (remove it) or `[0]` (keep it).
    #[error("block `{block}` is one unit: keep [] removes it, [0] keeps it, not {keep:?}")]
    BlockUnits {
        /// The block.
        block: String,
        /// The units asked for.
        keep: Vec<usize>,
    },
    /// Re-importing the pruned parameters failed (a bug in a declaration).
    #[error(transparent)]
    Load(#[from] LoadError),
}
