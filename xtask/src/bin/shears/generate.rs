//! `cargo xtask generate --model DIR --prompt TEXT`: continues a prompt with a saved GPT-2
//! (ours or Hugging Face), one cached position per new token.

use std::path::PathBuf;

use anyhow::{Context, Result};
use shears_layers::{GenerateOptions, Gpt2Model, Tokenizer};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// GPT-2 model directory: a `train-gated` `model/` or `dense-model/`, its `hf-model/`,
    /// or any Hugging Face GPT-2 (with its tokenizer files).
    #[arg(long)]
    model: PathBuf,
    /// Text to continue.
    #[arg(long)]
    prompt: String,
    /// New tokens (the prompt plus these must fit the model's position table).
    #[arg(long, default_value_t = 40)]
    max_tokens: usize,
    /// 0 (default): greedy; above 0: sample with this temperature.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// When sampling, only the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Seed of the sampling draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON (prompt, tokens, text, timings) instead of text.
    #[arg(long)]
    json: bool,
}

/// `generate`.
pub fn main(backend: crate::Backend, args: Args) -> Result<()> {
    let tokenizer = Tokenizer::from_dir(&args.model)
        .with_context(|| format!("loading the tokenizer of `{}`", args.model.display()))?;
    let prompt = tokenizer.encode(&args.prompt)?;
    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        seed: args.seed,
        // GPT-2's end of text, which is also the id it pads with.
        stop: Some(tokenizer.pad_id()),
    };
    let g = crate::with_backend!(backend, |B, device| {
        let model = Gpt2Model::<B>::load(&args.model, &device)
            .with_context(|| format!("loading `{}`", args.model.display()))?;
        model
            .generate(&prompt, &opts)
            .with_context(|| format!("generating with `{}`", args.model.display()))?
    });
    let text = tokenizer.decode(&g.tokens)?;
    if args.json {
        let value = serde_json::json!({
            "prompt": args.prompt,
            "prompt_tokens": prompt.len(),
            "tokens": g.tokens,
            "text": text,
            "prompt_ms": g.prompt_seconds * 1e3,
            "ms_per_token": g.seconds_per_token * 1e3,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{}{}", args.prompt, text);
        eprintln!(
            "{} prompt tokens in {:.1} ms, then {} tokens at {:.2} ms each (batch 1, cached)",
            prompt.len(),
            g.prompt_seconds * 1e3,
            g.tokens.len().saturating_sub(1),
            g.seconds_per_token * 1e3
        );
    }
    Ok(())
}
