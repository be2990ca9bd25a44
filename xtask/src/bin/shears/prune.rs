//! `cargo xtask prune --model DIR --target-flops F | --target-latency R --out DIR`:
//! post-training pruning of a fine-tuned model in minutes, without retraining (see
//! `shears_train::run_prune`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use shears_train::{DataChoice, PruneOptions, PruneTarget, prune_markdown, run_prune};

/// Arguments.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["target_flops", "target_latency"])))]
pub struct Args {
    /// A fine-tuned model directory: a `train-gated` output (`dense-model/`, `model/`), a
    /// Hugging Face `BertForSequenceClassification` / `RobertaForSequenceClassification`,
    /// or a GPT-2 language model.
    #[arg(long)]
    model: PathBuf,
    /// Keep at most this fraction of the encoder's FLOPs per token, at the sequence length
    /// the model was trained with (e.g. 0.6).
    #[arg(long)]
    target_flops: Option<f64>,
    /// Or: at most this fraction of the dense model's latency (e.g. 0.5), measured on this
    /// machine with the backend and threads this run uses, at `--latency-batch` rows of
    /// `--latency-seq` tokens: per-layer latency curves are timed first (a minute or two).
    #[arg(long)]
    target_latency: Option<f64>,
    /// Rows per forward pass of the latency target.
    #[arg(long, default_value_t = 32, requires = "target_latency")]
    latency_batch: usize,
    /// Tokens per row of the latency target (default: the model's recorded sequence
    /// length).
    #[arg(long, requires = "target_latency")]
    latency_seq: Option<usize>,
    /// Timed pairs (dense, pruned) per latency measurement: each point of the latency
    /// curves and the reported latencies.
    #[arg(long, default_value_t = 10)]
    latency_repeats: usize,
    /// Output directory: the smaller model (`model/`, `hf-model/`), `report.json`,
    /// `report.md`.
    #[arg(long)]
    out: PathBuf,
    /// Dataset (CSV or JSON lines, `.bz2` allowed). Default: the training data recorded in
    /// the model's `task.json`. The Fisher samples always come from its training split;
    /// the metrics from its validation and test splits.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Text column (default: the model's, else `text`).
    #[arg(long)]
    text_column: Option<String>,
    /// Label column (default: the model's, else `label`).
    #[arg(long)]
    label_column: Option<String>,
    /// Training examples the Fisher information is estimated from.
    #[arg(long, default_value_t = 2048)]
    samples: usize,
    /// Examples per mini-batch of the Fisher estimate (one gradient each).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Skip the rearrangement of removed units inside each layer (the paper's ablation).
    #[arg(long)]
    no_rearrange: bool,
    /// Mask tuning: least-squares scales of the kept units toward the model pruned half as
    /// far, layer by layer, folded into the weights (the paper's last step; off by default,
    /// see docs/POSTTRAIN.md for what it measured).
    #[arg(long)]
    tune: bool,
    /// Seed of the Fisher samples (and of the split, for a model that records none).
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

/// `prune`.
pub fn main(backend: crate::Backend, args: Args) -> Result<()> {
    let opts = PruneOptions {
        data: DataChoice {
            data: args.data.clone().unwrap_or_default(),
            text_column: args.text_column.clone(),
            label_column: args.label_column.clone(),
            seed: args.seed,
            split: [0.8, 0.1, 0.1],
            other_data: args.other_data,
        },
        target: match (args.target_flops, args.target_latency) {
            (Some(fraction), _) => PruneTarget::Flops { fraction },
            (None, Some(ratio)) => PruneTarget::Latency {
                ratio,
                batch: args.latency_batch,
                seq: args.latency_seq,
            },
            (None, None) => unreachable!("clap requires one target"),
        },
        latency_repeats: args.latency_repeats,
        progress: true,
        samples: args.samples,
        batch_size: args.batch_size,
        rearrange: !args.no_rearrange,
        tune: args.tune,
        existing: shears_layers::save::Existing::from_force(args.force),
        ..PruneOptions::default()
    };
    let name = format!("{backend:?}").to_lowercase();
    let summary = crate::with_backend!(backend, |B, device| {
        run_prune::<B>(&args.model, &opts, &args.out, &name, &device)
            .with_context(|| format!("pruning `{}`", args.model.display()))?
    });
    println!("{}", prune_markdown(&summary));
    println!("written: {}", args.out.display());
    Ok(())
}
