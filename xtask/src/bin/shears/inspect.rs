//! `cargo xtask inspect --model DIR`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use shears_layers::{BertModel, ModelConfig, tensorio};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Model directory (ours or Hugging Face); defaults to the fetched all-MiniLM-L6-v2.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Sequence length for FLOPs per token.
    #[arg(long, default_value_t = 128)]
    seq: usize,
}

/// Per-layer table, totals and the space summary of a config.
pub fn describe(config: &ModelConfig, seq: usize) -> String {
    let mut out = format!(
        "family {:?}  d_model {}  vocab {}  positions {}  layers {}\n\nlayer  heads  d_head  d_ff  original heads\n",
        config.family,
        config.d_model,
        config.vocab_size,
        config.max_positions,
        config.n_layers()
    );
    for (l, lc) in config.layers.iter().enumerate() {
        out += &format!(
            "{l:>5}  {:>5}  {:>6}  {:>4}  {:?}\n",
            lc.n_heads, lc.d_head, lc.d_ff, lc.head_ids
        );
    }
    out += &format!(
        "\nparameters {}\nFLOPs per token (seq {seq}) {}\n",
        config.param_count(),
        config.flops_per_token(seq)
    );
    out
}

/// `inspect`.
pub fn main(backend: crate::Backend, args: Args) -> Result<()> {
    let dir = match args.model {
        Some(d) => d,
        None => crate::fetch::minilm()?,
    };
    crate::with_backend!(backend, |B, device| {
        let model = BertModel::<B>::load(&dir, &device)
            .with_context(|| format!("loading {}", dir.display()))?;
        let config = model.config();
        print!("{}", describe(config, args.seq));
        let registry = BertModel::<B>::registry(config);
        let validation = registry.validate(&tensorio::param_shapes(&model));
        println!(
            "\nspaces ({}):",
            if validation.is_ok() {
                "validated against the parameters"
            } else {
                "INVALID"
            }
        );
        println!(
            "{:<22} {:>6} {:>6} {:>8}",
            "space", "units", "width", "members"
        );
        for s in registry.spaces() {
            println!(
                "{:<22} {:>6} {:>6} {:>8}",
                s.name(),
                s.n_units(),
                s.unit_width(),
                registry.members(s).count()
            );
        }
        validation?;
        println!(
            "\nparameters counted on the loaded model: {}",
            model.param_count()
        );
    });
    Ok(())
}
