//! `cargo xtask export --model DIR --out DIR [--dtype f32|f16|bf16] [--force]`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use shears_layers::{hf::Dtype, save};
use shears_train::export_hf_dir;

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Model directory (ours, e.g. a `train-gated` `model/`, or a Hugging Face one).
    #[arg(long)]
    model: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Float type of the weights: f32 (exact), f16 or bf16 (the largest cast error is
    /// printed; a value beyond f16's range is an error).
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
    /// Replace an existing, non-empty output directory (only once the new one is complete);
    /// without it such an output is refused before any work.
    #[arg(long)]
    force: bool,
}

/// `export`.
pub fn main(backend: crate::Backend, args: Args) -> Result<()> {
    let existing = save::Existing::from_force(args.force);
    let s = crate::with_backend!(backend, |B, device| {
        export_hf_dir::<B>(&args.model, &args.out, args.dtype, existing, &device)
            .with_context(|| format!("exporting `{}`", args.model.display()))?
    });
    println!(
        "{} ({}) written to {}",
        s.architecture,
        s.model_type,
        args.out.display()
    );
    // Our own model types need the modeling file written beside the weights.
    let auto = match s.model_type.as_str() {
        shears_layers::hf::SHEARS_BERT if s.architecture.ends_with("SequenceClassification") => {
            Some("AutoModelForSequenceClassification")
        }
        shears_layers::hf::SHEARS_BERT => Some("AutoModel"),
        shears_layers::hf::SHEARS_GPT2 => Some("AutoModelForCausalLM"),
        _ => None,
    };
    if let Some(auto) = auto {
        println!("load it with {auto}.from_pretrained(dir, trust_remote_code=True)");
    }
    match &s.cast.worst_tensor {
        Some(t) => println!(
            "weights {}: largest cast error {:.3e} (in `{t}`)",
            s.cast.dtype.torch_name(),
            s.cast.max_abs_error
        ),
        None => println!("weights {}: exact", s.cast.dtype.torch_name()),
    }
    Ok(())
}
