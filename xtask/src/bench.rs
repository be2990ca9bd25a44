//! `cargo xtask bench forward [--peer VENV]`: times the dense MiniLM forward pass (release
//! build), and the reference in the same run when a peer venv is given, and prints the ratio.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use shears_layers::{BertModel, ModelInput};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// What to time: `forward`.
    what: String,
    /// A Python venv with torch and transformers (shared/peer/setup_peer_venv.sh).
    #[arg(long)]
    peer: Option<PathBuf>,
    /// Batch size.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed iterations (after 2 warm-up runs).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Threads for the reference (ours uses rayon's default: every core).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `bench`.
pub fn main(backend: crate::Backend, args: Args) -> Result<()> {
    if args.what != "forward" {
        bail!("unknown benchmark `{}` (available: forward)", args.what);
    }
    if cfg!(debug_assertions) {
        // Benchmarks mean nothing in a debug build: run ourselves again in release.
        eprintln!("bench: rebuilding in release");
        let status = Command::new(env!("CARGO"))
            .args(["run", "--release", "--package", "xtask", "--"])
            .args(std::env::args().skip(1))
            .current_dir(crate::root())
            .status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let dir = crate::fetch::minilm()?;
    let (b, s) = (args.batch, args.seq);
    let ours = crate::with_backend!(backend, |B, device| {
        let model = BertModel::<B>::load(&dir, &device)?;
        let vocab = model.config().vocab_size;
        let ids: Vec<i64> = (0..b * s)
            .map(|i| ((i * 7919 + 13) % (vocab - 1000) + 1000) as i64)
            .collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, s]), &device);
        let mask = Tensor::<B, 2>::ones([b, s], &device);
        let run = || {
            let out = model.forward(ModelInput::new(ids.clone()).with_attention_mask(mask.clone()));
            // Reading the result back forces the computation on lazy backends.
            let _ = out.hidden.into_data();
        };
        run();
        run();
        let mut times = Vec::new();
        for _ in 0..args.iters {
            let t = Instant::now();
            run();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        median(times)
    });
    println!(
        "shears  MiniLM-L6 forward, batch {b} x seq {s}, {backend:?}: {ours:.1} ms (median of {})",
        args.iters
    );
    if let Some(venv) = args.peer {
        let py = venv.join("bin/python");
        let out = Command::new(&py)
            .arg(crate::root().join("tools/bench/forward_peer.py"))
            .arg(&dir)
            .args([b, s, args.iters, args.threads].map(|v| v.to_string()))
            .output()
            .with_context(|| format!("running {}", py.display()))?;
        if !out.status.success() {
            bail!(
                "reference benchmark failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let theirs: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("reading the reference time")?;
        println!(
            "torch   transformers BertModel, {} threads: {theirs:.1} ms",
            args.threads
        );
        println!(
            "ratio   shears / torch = {:.2} (below 1 means shears is faster)",
            ours / theirs
        );
    }
    Ok(())
}
