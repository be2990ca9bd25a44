//! `cargo xtask prune-heads --model DIR --heads L:H,H;L:H --out DIR`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use shears_layers::{BertModel, Family};

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
    /// Output directory (replaced only once the new one is complete).
    #[arg(long)]
    out: PathBuf,
}

/// `prune-heads`.
pub fn main(backend: crate::Backend, args: Args) -> Result<()> {
    let heads = xtask::parse_heads(&args.heads)?;
    let dir = match args.model {
        Some(d) => d,
        None => crate::fetch::minilm()?,
    };
    crate::with_backend!(backend, |B, device| {
        let model = BertModel::<B>::load(&dir, &device)
            .with_context(|| format!("loading {}", dir.display()))?;
        let before = model.config().param_count();
        let pruned = model.prune_heads(&heads)?;
        let config = pruned.config().clone();
        if config.family == Family::Bert {
            // One directory both shears and transformers load: HF keys + `pruned_heads`.
            pruned.export_hf(&args.out, Some(&dir))?;
        } else {
            pruned.save(&args.out)?;
        }
        println!("{}", crate::inspect::describe(&config, 128));
        println!(
            "parameters {before} -> {}  written to {}",
            config.param_count(),
            args.out.display()
        );
    });
    Ok(())
}
