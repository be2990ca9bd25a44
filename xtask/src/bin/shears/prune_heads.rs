//! `cargo xtask prune-heads --model DIR --heads L:H,H;L:H --out DIR`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use shears_layers::save;
use shears_train::run_prune_heads;

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Model directory (ours or Hugging Face); defaults to the fetched all-MiniLM-L6-v2.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Heads to remove: `LAYER:H,H[;LAYER:H,...]`. Head numbers are those of the original
    /// (unpruned) model, as in transformers' `prune_heads`.
    #[arg(long)]
    heads: String,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing, non-empty output directory (only once the new one is complete);
    /// without it such an output is refused before any work.
    #[arg(long)]
    force: bool,
}

/// `prune-heads`.
pub fn main(backend: crate::Backend, args: Args) -> Result<()> {
    let heads = xtask::parse_heads(&args.heads)?;
    let dir = match args.model {
        Some(d) => d,
        None => crate::fetch::minilm()?,
    };
    let existing = save::Existing::from_force(args.force);
    let done = crate::with_backend!(backend, |B, device| {
        run_prune_heads::<B>(&dir, &heads, &args.out, existing, &device)
            .with_context(|| format!("pruning heads of `{}`", dir.display()))?
    });
    println!(
        "{}",
        crate::inspect::describe(&done.config, done.config.max_len().min(128))
    );
    println!(
        "parameters {} -> {}  written to {}",
        done.params_before,
        done.config.param_count(),
        args.out.display()
    );
    Ok(())
}
