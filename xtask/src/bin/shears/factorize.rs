//! `cargo xtask factorize --model DIR --ratio R --out DIR`: low-rank factorization of a saved
//! model, calibrated on real text (see `shears_train::run_factorize`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use shears_factorize::{Init, Method, Rank};
use shears_pruners::RankPlan;
use shears_train::{FactorizeOptions, run_factorize};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Model directory: written by `train-gated` (`model/`, `dense-model/`: accuracy is
    /// measured), or any Hugging Face BERT / RoBERTa / GPT-2.
    #[arg(long)]
    model: PathBuf,
    /// Keep this fraction of the attention and feed-forward parameters (ranks chosen
    /// across projections by output error per parameter).
    #[arg(long, conflicts_with = "rank")]
    ratio: Option<f64>,
    /// Instead of `--ratio`: this rank (integer) or fraction of min(in, out) everywhere it
    /// saves work.
    #[arg(long)]
    rank: Option<Rank>,
    /// Output directory (the factorized model in `model/`, `report.json`, `report.md`).
    #[arg(long)]
    out: PathBuf,
    /// Calibration and test text: CSV or JSON lines (default: the Rotten Tomatoes
    /// sentences).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Text column (default: the model's, else `text`).
    #[arg(long)]
    text_column: Option<String>,
    /// Label column (default: the model's, else `label`).
    #[arg(long)]
    label_column: Option<String>,
    /// `data` (fit the outputs, whitened start), `composer` (fit the outputs, Composer's
    /// spectral start and 3 refinements), `asvd` (activation-aware SVD), `svd` (weights only).
    #[arg(long, default_value = "data")]
    method: String,
    /// Calibration tokens from the training split.
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

/// Parses `--method`.
pub fn method(name: &str) -> Result<Method> {
    Ok(match name {
        "data" => Method::default(),
        "composer" => Method::DataAware {
            init: Init::Spectral,
            n_iters: 3,
        },
        "asvd" => Method::ActivationAware { alpha: 0.5 },
        "svd" => Method::WeightSvd,
        other => bail!("unknown method `{other}` (data, composer, asvd, svd)"),
    })
}

/// `factorize`.
pub fn main(backend: crate::Backend, args: Args) -> Result<()> {
    let plan = match (args.ratio, args.rank) {
        (Some(r), None) => RankPlan::Budget(r),
        (None, Some(r)) => RankPlan::Uniform(r),
        (None, None) => bail!("give --ratio (a parameter budget) or --rank"),
        (Some(_), Some(_)) => unreachable!("clap refuses both"),
    };
    let data = match &args.data {
        Some(d) => d.clone(),
        None => {
            crate::fetch::ensure()?;
            crate::fetch::assets_dir().join("data/rotten_tomatoes_corpus_full.csv.bz2")
        }
    };
    let opts = FactorizeOptions {
        data,
        text_column: args.text_column.clone(),
        label_column: args.label_column.clone(),
        plan,
        method: method(&args.method)?,
        calibration_tokens: args.calibration_tokens,
        seed: args.seed,
        other_data: args.other_data,
        existing: shears_layers::save::Existing::from_force(args.force),
        ..FactorizeOptions::default()
    };
    let name = format!("{backend:?}").to_lowercase();
    let summary = crate::with_backend!(backend, |B, device| {
        run_factorize::<B>(&args.model, &opts, &args.out, &name, &device)
            .with_context(|| format!("factorizing `{}`", args.model.display()))?
    });
    println!("{}", shears_train::markdown(&summary));
    println!("written: {}", args.out.display());
    Ok(())
}
