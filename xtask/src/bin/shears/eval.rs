//! `cargo xtask eval --model DIR --data FILE`: accuracy (or perplexity) and latency of any
//! saved model on a CSV / JSON-lines file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use shears_train::{EvalOptions, eval_dir};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Model directory written by `train-gated` (`model/`, `dense-model/`, `hf-model/`), a
    /// Hugging Face `BertForSequenceClassification` / `RobertaForSequenceClassification`
    /// (classes from its `id2label`), or any GPT-2.
    #[arg(long)]
    model: PathBuf,
    /// CSV (with a header) or JSON-lines file, optionally `.bz2`.
    #[arg(long)]
    data: PathBuf,
    /// Text column (default: the one the model was trained with).
    #[arg(long)]
    text_column: Option<String>,
    /// Label column (default: the one the model was trained with).
    #[arg(long)]
    label_column: Option<String>,
    /// Batch size (evaluation and latency).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed forward passes.
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// Evaluate every row of a file other than the one the model was trained on (with that
    /// file, only its held-out test split is evaluated).
    #[arg(long)]
    other_data: bool,
    /// Tokens per example (default: the length the model was trained with, else the
    /// tokenizer's `model_max_length` capped at the position table).
    #[arg(long)]
    max_len: Option<usize>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `eval`.
pub fn main(backend: crate::Backend, args: Args) -> Result<()> {
    let opts = EvalOptions {
        text_column: args.text_column.clone(),
        label_column: args.label_column.clone(),
        batch_size: args.batch,
        repeats: args.repeats,
        other_data: args.other_data,
        max_len: args.max_len,
    };
    let s = crate::with_backend!(backend, |B, device| {
        eval_dir::<B>(&args.model, &args.data, &opts, &device)
            .with_context(|| format!("evaluating `{}`", args.model.display()))?
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("model       {}", args.model.display());
    println!(
        "data        {} ({}: {} examples, {} rows dropped)",
        args.data.display(),
        s.rows,
        s.examples,
        s.dropped
    );
    println!("tokens      {} per example at most", s.max_len);
    println!("parameters  {}", s.params);
    if let Some(a) = s.accuracy {
        println!("accuracy    {:.2}%", 100.0 * a);
    }
    if let Some(p) = s.perplexity {
        println!("perplexity  {p:.3}");
    }
    println!("loss        {:.4}", s.loss);
    println!(
        "latency     {:.2} ms per batch of {}",
        s.latency_ms, s.batch
    );
    Ok(())
}
