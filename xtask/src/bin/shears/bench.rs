//! `cargo xtask bench forward|factorize|sparsify [--peer VENV]`: times our side (the optimised `shears` binary), and
//! the Python reference in the same run when a peer venv is given, and prints the ratio.
//!
//! - `forward`: the dense MiniLM forward pass against transformers' `BertModel`.
//! - `factorize`: the data-aware low-rank solution of a 384 x 1536 and a 768 x 3072 layer
//!   from 4096 calibration rows against Composer's `factorize_matrix`, same inputs, same rank
//!   (a quarter of the input width, Composer's default).
//! - `sparsify`: one block-norm `step` on a 1,000,000 x 128 embedding (block 1 x 4, 50%)
//!   against torch's `DataNormSparsifier`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use shears_layers::{BertModel, ModelInput};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// What to time: `forward`, `factorize` or `sparsify`.
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
    if !["forward", "factorize", "sparsify"].contains(&args.what.as_str()) {
        bail!(
            "unknown benchmark `{}` (available: forward, factorize, sparsify)",
            args.what
        );
    }
    if cfg!(debug_assertions) {
        bail!(
            "benchmarks need the optimised build that `cargo xtask bench` runs (this one has debug assertions)"
        );
    }
    if args.what == "factorize" {
        return factorize(&args);
    }
    if args.what == "sparsify" {
        return sparsify(&args);
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

/// Seeded normal values (Box-Muller on a small LCG: the bench needs no extra crate).
fn normals(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect()
}

/// `factorize`: ours against Composer's `factorize_matrix` on the same inputs.
fn factorize(args: &Args) -> Result<()> {
    use shears_factorize::{Calibration, Method, Rank, Weights};
    use shears_spaces::{HostTensor, TensorMap};
    let rows = 4096;
    let tmp = tempfile::tempdir()?;
    for (n_in, n_out) in [(384usize, 1536usize), (768, 3072)] {
        // Inputs with correlated channels and a decaying spectrum, like real activations:
        // x = z M, M's rows scaled by exp(-i / 48), plus a per-channel offset.
        let z = normals(rows * n_in, 1);
        let mut mix = normals(n_in * n_in, 2);
        for i in 0..n_in {
            let scale = (-(i as f32) / 48.0).exp();
            for v in &mut mix[i * n_in..(i + 1) * n_in] {
                *v *= scale;
            }
        }
        let mut x = vec![0.0f32; rows * n_in];
        for r in 0..rows {
            for k in 0..n_in {
                let a = z[r * n_in + k];
                let row = &mix[k * n_in..(k + 1) * n_in];
                for (o, m) in x[r * n_in..(r + 1) * n_in].iter_mut().zip(row) {
                    *o += a * m;
                }
            }
        }
        for (i, v) in x.iter_mut().enumerate() {
            *v += 0.1 * ((i % n_in) as f32 / n_in as f32);
        }
        let x = HostTensor::new(vec![rows, n_in], x);
        let w = HostTensor::new(
            vec![n_in, n_out],
            normals(n_in * n_out, 3).iter().map(|v| v * 0.05).collect(),
        );
        let b = normals(n_out, 4);
        let rank = n_in / 4;
        let solve = || -> Result<(f64, f64)> {
            let t = Instant::now();
            let cal = Calibration::from_rows(&x)?;
            let s = shears_factorize::factorize(
                Weights::Dense(&w),
                Some(&b),
                Rank::Count(rank),
                Method::default(),
                Some(&cal),
            )?;
            Ok((t.elapsed().as_secs_f64() * 1e3, s.nmse.unwrap_or(f64::NAN)))
        };
        solve()?;
        let mut times = Vec::new();
        let mut nmse = 0.0;
        for _ in 0..args.iters.clamp(1, 5) {
            let (t, e) = solve()?;
            times.push(t);
            nmse = e;
        }
        let ours = median(times);
        println!(
            "shears  data-aware factorization {n_in} x {n_out}, {rows} rows, rank {rank}: {ours:.1} ms, nmse {nmse:.5}"
        );
        if let Some(venv) = &args.peer {
            let input = tmp.path().join(format!("f{n_in}.safetensors"));
            let mut map = TensorMap::new();
            map.insert("x".into(), x.clone());
            map.insert("w".into(), w.clone());
            map.insert("b".into(), HostTensor::new(vec![n_out], b.clone()));
            shears_layers::hf::write_safetensors(&input, &map)?;
            let py = venv.join("bin/python");
            let out = Command::new(&py)
                .arg(crate::root().join("tools/bench/factorize_peer.py"))
                .arg(&input)
                .args([rank, 3, args.iters.clamp(1, 5)].map(|v| v.to_string()))
                .output()
                .with_context(|| format!("running {}", py.display()))?;
            if !out.status.success() {
                bail!(
                    "reference benchmark failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).context("reading the reference's JSON line")?;
            let theirs = v["median_ms"].as_f64().context("median_ms")?;
            println!(
                "torch   composer factorize_matrix (3 iterations, 2 threads): {theirs:.1} ms, nmse {:.5} (composer reports {:.5}: it compares y - b with a prediction that includes b)",
                v["nmse_true"].as_f64().unwrap_or(f64::NAN),
                v["nmse"].as_f64().unwrap_or(f64::NAN)
            );
            println!(
                "ratio   shears / composer = {:.2} (below 1 means shears is faster)",
                ours / theirs
            );
        }
    }
    Ok(())
}

/// `sparsify`: one `step` of a block-norm data sparsifier on a 1,000,000 x 128 embedding
/// (block 1 x 4, 50%, L1 as torch's default) against torch's `DataNormSparsifier`.
fn sparsify(args: &Args) -> Result<()> {
    use shears_sparsify::{BlockNorm, Config, DataSparsifier, HostTensor, TensorMap};
    let (rows, cols) = (1_000_000usize, 128usize);
    let (sparsity, block) = (0.5, [1usize, 4usize]);
    let data = HostTensor::new(vec![rows, cols], normals(rows * cols, 7));
    let config = Config::default()
        .with_sparsity_level(sparsity)
        .with_block(block);
    let mut sp = DataSparsifier::new(BlockNorm, config)?;
    sp.add_data("embedding", data.clone(), None, true)?;
    sp.step()?;
    let mut times = Vec::new();
    for _ in 0..args.iters.clamp(1, 10) {
        let t = Instant::now();
        sp.step()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let ours = median(times);
    let mask = sp.mask("embedding")?;
    println!(
        "shears  block-norm step, {rows} x {cols}, block 1 x 4, sparsity {sparsity}: {ours:.1} ms, zero fraction {:.4}",
        mask.sparsity()
    );
    if let Some(venv) = &args.peer {
        let tmp = tempfile::tempdir()?;
        let input = tmp.path().join("embedding.safetensors");
        let mut map = TensorMap::new();
        map.insert("data".into(), data);
        shears_layers::hf::write_safetensors(&input, &map)?;
        let py = venv.join("bin/python");
        let out = Command::new(&py)
            .arg(crate::root().join("tools/bench/sparsify_peer.py"))
            .arg(&input)
            .arg(sparsity.to_string())
            .args(
                [
                    block[0],
                    block[1],
                    block[0] * block[1],
                    args.iters.clamp(1, 10),
                ]
                .map(|v| v.to_string()),
            )
            .output()
            .with_context(|| format!("running {}", py.display()))?;
        if !out.status.success() {
            bail!(
                "reference benchmark failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("reading the reference's JSON line")?;
        let theirs = v["median_ms"].as_f64().context("median_ms")?;
        println!(
            "torch   DataNormSparsifier step (2 threads): {theirs:.1} ms, zero fraction {:.4}",
            v["zero_fraction"].as_f64().unwrap_or(f64::NAN)
        );
        println!(
            "ratio   shears / torch = {:.2} (below 1 means shears is faster)",
            ours / theirs
        );
    }
    Ok(())
}
