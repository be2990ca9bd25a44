//! `cargo xtask sparsify --model DIR --method M --sparsity S --out DIR`: masks on a saved
//! model's projection weights, squashed into its weights (see `shears_train::run_sparsify`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use shears_train::{SparsifyMethod, SparsifyOptions, run_sparsify};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Model directory: written by `train-gated` (`model/`, `dense-model/`: accuracy is
    /// measured), or any Hugging Face BERT / RoBERTa / GPT-2.
    #[arg(long)]
    model: PathBuf,
    /// `magnitude`, `wanda`, `block-norm[:RxC[:Z]]` (torch's DataNormSparsifier, default
    /// block 1x4 with every element of a chosen block zeroed), `nm:N:M` (N zeros in every M
    /// inputs of each output, e.g. nm:2:4).
    #[arg(long)]
    method: SparsifyMethod,
    /// Fraction of each selected tensor to zero (ignored by nm).
    #[arg(long, default_value_t = 0.5)]
    sparsity: f64,
    /// Parameter path patterns (`*` one segment, `**` any number; repeatable). Default:
    /// every attention and feed-forward projection weight.
    #[arg(long = "pattern")]
    patterns: Vec<String>,
    /// Output directory (the sparsified model in `model/`, `report.json`, `report.md`).
    #[arg(long)]
    out: PathBuf,
    /// Test (and Wanda calibration) text: CSV or JSON lines (default: the Rotten Tomatoes
    /// sentences).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Text column (default: the model's, else `text`).
    #[arg(long)]
    text_column: Option<String>,
    /// Label column (default: the model's, else `label`).
    #[arg(long)]
    label_column: Option<String>,
    /// Wanda's calibration tokens from the training split.
    #[arg(long, default_value_t = 4096)]
    calibration_tokens: usize,
    /// Seed of the train / validation / test split, for a model whose `task.json` does not
    /// record the split it was trained with (otherwise the recorded one is used).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Allow `--data` to be another file than the one the model was trained on (its "test"
    /// split is then not held out from training).
    #[arg(long)]
    other_data: bool,
    /// Replace an existing, non-empty output directory (only once the new one is complete);
    /// without it such an output is refused before any work.
    #[arg(long)]
    force: bool,
}

/// `sparsify`.
pub fn main(backend: crate::Backend, args: Args) -> Result<()> {
    let data = match &args.data {
        Some(d) => d.clone(),
        None => {
            crate::fetch::ensure()?;
            crate::fetch::assets_dir().join("data/rotten_tomatoes_corpus_full.csv.bz2")
        }
    };
    let mut opts = SparsifyOptions {
        data,
        text_column: args.text_column.clone(),
        label_column: args.label_column.clone(),
        method: args.method.clone(),
        sparsity: args.sparsity,
        calibration_tokens: args.calibration_tokens,
        seed: args.seed,
        other_data: args.other_data,
        existing: shears_layers::save::Existing::from_force(args.force),
        ..SparsifyOptions::default()
    };
    if !args.patterns.is_empty() {
        opts.patterns = args.patterns.clone();
    }
    let name = format!("{backend:?}").to_lowercase();
    let summary = crate::with_backend!(backend, |B, device| {
        run_sparsify::<B>(&args.model, &opts, &args.out, &name, &device)
            .with_context(|| format!("sparsifying `{}`", args.model.display()))?
    });
    println!("{}", shears_train::sparsify::markdown(&summary));
    println!("written: {}", args.out.display());
    Ok(())
}
