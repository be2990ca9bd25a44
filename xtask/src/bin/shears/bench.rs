//! `cargo xtask bench forward|train-step|pruned|factorize|sparsify [--peer VENV]`: times our
//! side (the optimised `shears` binary), and the Python reference in the same run when a peer
//! venv is given, and prints the ratio. Each time is the median, with the minimum and maximum,
//! of `--iters` runs after two warm-up runs, next to the peak resident memory of the process
//! during them. Against the reference, each of our runs alternates with one run of each of
//! its processes (the machine's drift then affects both sides alike), and the ratio is the
//! median of the per-round ratios.
//!
//! - `forward`: the dense MiniLM forward pass against transformers' `BertModel` with eager and
//!   with sdpa attention (`inference_mode`, fp32), at batch 1 x 32, 8 x 128 and 32 x 64.
//! - `train-step`: one step of the classifier as training runs it
//!   ([`shears_train::dense_step`]) against the same step of `BertForSequenceClassification`
//!   (`tools/bench/bert_peer.py`), batch 32 x 64.
//! - `pruned`: fresh models of irregular pruned shapes (odd FFN widths, hidden 301, a headless
//!   layer) against the dense one: latency ratio next to the FLOPs ratio, batch 1 and 32.
//! - `factorize`: the data-aware low-rank solution of a 384 x 1536 and a 768 x 3072 layer
//!   from 4096 calibration rows against Composer's `factorize_matrix`, same inputs, same rank
//!   (a quarter of the input width, Composer's default).
//! - `sparsify`: one block-norm `step` on a 1,000,000 x 128 embedding (block 1 x 4, 50%)
//!   against torch's `DataNormSparsifier`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use burn::prelude::*;
use serde::Serialize;
use shears_layers::{BertModel, LayerConfig, ModelConfig, ModelInput, Transformer};
use shears_train::data::Batch;
use shears_train::task::{TaskModel, trainable};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// What to time: `forward`, `train-step`, `pruned`, `factorize` or `sparsify`.
    what: String,
    /// A Python venv with torch and transformers (shared/peer/setup_peer_venv.sh).
    #[arg(long)]
    peer: Option<PathBuf>,
    /// Batch size (with or without `--seq`: one size instead of the default set).
    #[arg(long)]
    batch: Option<usize>,
    /// Sequence length (with or without `--batch`: one size instead of the default set).
    #[arg(long)]
    seq: Option<usize>,
    /// Timed iterations (after 2 warm-up runs).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Threads for both sides of `forward` and `train-step` (ours: rayon's pool and
    /// ndarray's GEMM; torch: `set_num_threads`). Default: every core. (`factorize` and
    /// `sparsify` use every core here and 2 torch threads.)
    #[arg(long)]
    threads: Option<usize>,
    /// `forward` and `train-step` on flex: also time each size with shears-layers' fused
    /// kernels off and on, in alternation, and print the ratio of the times (off / on).
    #[arg(long)]
    fused_ab: bool,
    /// Also write the results as JSON to this file (`-` for standard output).
    #[arg(long)]
    json: Option<PathBuf>,
    /// `pruned`: only the shapes whose name contains this text (e.g. `joint`, `hidden`).
    #[arg(long)]
    shape: Option<String>,
}

/// The milliseconds one call of `f` takes.
fn elapsed_ms(f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1000.0
}

/// The median over the rounds of `b[i] / a[i]` (times of two sides measured in alternation).
fn median_ratio(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(a, b)| b / a).collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times of one piece of work over the repeats, and the peak memory while it ran.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
struct Timing {
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    /// Peak resident memory of the process during the warm-up and timed runs, MiB.
    peak_mib: f64,
}

impl Timing {
    fn from_times(times: &[f64], peak_mib: f64) -> Timing {
        Timing {
            min_ms: times.iter().copied().fold(f64::INFINITY, f64::min),
            max_ms: times.iter().copied().fold(0.0, f64::max),
            median_ms: median(times.to_vec()),
            peak_mib,
        }
    }

    /// Two pieces of work timed in alternation (`a`, `b`, `a`, `b`, ...), so that the
    /// machine's drift affects both alike; each warmed up twice on its own, with its peak
    /// memory taken then. Also the median of the per-pair ratios `b / a`.
    fn paired(iters: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (Timing, Timing, f64) {
        let warm = |f: &mut dyn FnMut()| {
            reset_peak();
            f();
            f();
            peak_mib()
        };
        let (peak_a, peak_b) = (warm(&mut a), warm(&mut b));
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        for _ in 0..iters.max(1) {
            ta.push(elapsed_ms(&mut a));
            tb.push(elapsed_ms(&mut b));
        }
        (
            Timing::from_times(&ta, peak_a),
            Timing::from_times(&tb, peak_b),
            median_ratio(&ta, &tb),
        )
    }

    fn cell(&self) -> String {
        format!(
            "{:.1} ({:.1}-{:.1}) {:.0} MiB",
            self.median_ms, self.min_ms, self.max_ms, self.peak_mib
        )
    }
}

/// Resets the peak resident memory the kernel records for this process (Linux; elsewhere
/// the peak is the process's whole life).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak resident memory of this process (`VmHWM`), MiB; NaN where unknown.
fn peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// One row of a forward / train-step table.
#[derive(Debug, Serialize)]
struct Row {
    batch: usize,
    seq: usize,
    ours: Timing,
    eager: Option<Timing>,
    sdpa: Option<Timing>,
    /// Ours over the faster (by median) of eager and sdpa: the median over the rounds of
    /// ours / theirs, each round one run of each side.
    ratio: Option<f64>,
}

/// One row of the pruned-shapes table.
#[derive(Debug, Serialize)]
struct PrunedRow {
    shape: String,
    batch: usize,
    seq: usize,
    dense: Timing,
    pruned: Timing,
    /// The median over the paired repeats of pruned / dense.
    latency_ratio: f64,
    flops_ratio: f64,
}

/// The JSON document of a run.
#[derive(Debug, Serialize)]
struct Report<'a> {
    what: &'a str,
    backend: String,
    threads: usize,
    iters: usize,
    rows: Vec<Row>,
    pruned: Vec<PrunedRow>,
}

/// The deterministic ids both sides use: `(i * 7919 + 13) % (vocab - 1000) + 1000`.
fn ids<B: Backend>(vocab: usize, b: usize, s: usize, device: &B::Device) -> Tensor<B, 2, Int> {
    let ids: Vec<i64> = (0..b * s)
        .map(|i| ((i * 7919 + 13) % (vocab - 1000) + 1000) as i64)
        .collect();
    Tensor::from_data(TensorData::new(ids, [b, s]), device)
}

/// One forward pass of `model` at batch `b` x seq `s` on fixed ids, read back.
fn forward_once<'a, B: Backend>(
    model: &'a Transformer<B>,
    b: usize,
    s: usize,
    device: &B::Device,
) -> impl FnMut() + 'a {
    let ids = ids::<B>(model.config().vocab_size, b, s, device);
    let mask = Tensor::<B, 2>::ones([b, s], device);
    move || {
        let out = model.forward(ModelInput::new(ids.clone()).with_attention_mask(mask.clone()));
        // Reading the result back forces the computation on lazy backends.
        let _ = out.hidden.into_data();
    }
}

/// `f` with the fused kernels off and on, timed in alternation; prints both and the
/// median ratio of the pairs (off / on). Leaves them on.
fn fused_ab(b: usize, s: usize, iters: usize, f: &mut dyn FnMut()) {
    let cell = std::cell::RefCell::new(f);
    let (off, on, ratio) = Timing::paired(
        iters,
        || {
            shears_layers::kernels::set_fused(false);
            (cell.borrow_mut())()
        },
        || {
            shears_layers::kernels::set_fused(true);
            (cell.borrow_mut())()
        },
    );
    shears_layers::kernels::set_fused(true);
    println!(
        "shears  batch {b} x seq {s}, fused kernels off {} / on {}: on is {:.3}x as fast (median of the paired ratios)",
        off.cell(),
        on.cell(),
        1.0 / ratio
    );
}

/// One training step of the classifier (`shears_train::dense_step`: forward,
/// cross-entropy, backward, global-norm clipping, AdamW) at batch `b` x seq `s`, as a
/// closure that takes a step each call.
fn train_step<'a, B: Backend>(
    dir: &Path,
    b: usize,
    s: usize,
    device: &'a B::Device,
) -> Result<impl FnMut() + 'a> {
    type M<B> = TaskModel<Autodiff<B>>;
    let backbone = BertModel::<B>::load(dir, device)?;
    let d_pooler = backbone.config().d_pooler.context("MiniLM has a pooler")?;
    let vocab = backbone.config().vocab_size;
    let head = shears_pruners::ClassifierHead::new(d_pooler, 2, 0, device);
    let mut model: Option<M<B>> = Some(trainable::<Autodiff<B>, M<B>>(TaskModel::classifier(
        backbone, head,
    )));
    let mut opt = shears_train::weight_optimizer::<Autodiff<B>, M<B>>();
    let ids = ids::<Autodiff<B>>(vocab, b, s, device);
    let mask = Tensor::<Autodiff<B>, 2>::ones([b, s], device);
    let labels: Vec<i64> = (0..b as i64).map(|i| i % 2).collect();
    let labels = Tensor::<Autodiff<B>, 1, Int>::from_data(TensorData::new(labels, [b]), device);
    Ok(move || {
        let batch = Batch {
            input: ModelInput::new(ids.clone()).with_attention_mask(mask.clone()),
            labels: Some(labels.clone()),
            tokens: b * s,
        };
        let m = model.take().expect("the model is put back after each step");
        let (m, _) = shears_train::dense_step(m, &mut opt, batch, 2e-5);
        model = Some(m);
    })
}

/// A reference process (`tools/bench/bert_peer.py`, one attention implementation) that
/// runs one timed step per request.
struct Peer {
    attn: &'static str,
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Peer {
    fn start(
        venv: &Path,
        dir: &Path,
        what: &str,
        attn: &'static str,
        threads: usize,
    ) -> Result<Peer> {
        let py = venv.join("bin/python");
        let mut child = peer_command(&py)
            .arg(crate::root().join("tools/bench/bert_peer.py"))
            .arg(dir)
            .args([what, attn, &threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", py.display()))?;
        let input = child
            .stdin
            .take()
            .context("the reference's standard input")?;
        let output = BufReader::new(child.stdout.take().context("the reference's output")?);
        Ok(Peer {
            attn,
            child,
            input,
            output,
        })
    }

    /// Sends `cmd` and returns the reply's value under `key` (`true` reads as 1).
    fn ask(&mut self, cmd: &str, key: &str) -> Result<f64> {
        let attn = self.attn;
        let stopped = || {
            format!("the reference ({attn}) stopped before answering `{cmd}` (its error is above)")
        };
        writeln!(self.input, "{cmd}")
            .and_then(|()| self.input.flush())
            .with_context(stopped)?;
        let mut line = String::new();
        if self.output.read_line(&mut line).with_context(stopped)? == 0 {
            bail!(stopped());
        }
        let reply: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("reading the reference's ({attn}) reply `{}`", line.trim()))?;
        match &reply[key] {
            serde_json::Value::Bool(true) => Some(1.0),
            v => v.as_f64(),
        }
        .with_context(|| {
            format!(
                "the reference ({attn}) answered `{cmd}` with `{}`",
                line.trim()
            )
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Times `ours` at batch `b` x seq `s`; with `peers`, each of our runs is followed by one
/// run of each peer, every run starting after a short pause so that the other side's threads
/// are idle, and the row gets the median of the per-round ratios against the faster peer.
fn measure(
    ours: &mut dyn FnMut(),
    peers: &mut [Peer],
    (b, s): (usize, usize),
    iters: usize,
) -> Result<Row> {
    for p in peers.iter_mut() {
        p.ask(&format!("size {b} {s}"), "ready")?;
    }
    let pause = !peers.is_empty();
    let settle = || {
        if pause {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    reset_peak();
    ours();
    ours();
    let mut times = vec![Vec::new(); 1 + peers.len()];
    for _ in 0..iters.max(1) {
        settle();
        times[0].push(elapsed_ms(ours));
        for (i, p) in peers.iter_mut().enumerate() {
            settle();
            times[i + 1].push(p.ask("run", "ms")?);
        }
    }
    let ours_t = Timing::from_times(&times[0], peak_mib());
    let mut theirs = Vec::new();
    for (p, t) in peers.iter_mut().zip(&times[1..]) {
        theirs.push(Timing::from_times(t, p.ask("peak", "peak_mib")?));
    }
    let ratio = (0..theirs.len())
        .min_by(|&i, &j| theirs[i].median_ms.total_cmp(&theirs[j].median_ms))
        .map(|best| median_ratio(&times[1 + best], &times[0]));
    Ok(Row {
        batch: b,
        seq: s,
        ours: ours_t,
        eager: theirs.first().copied(),
        sdpa: theirs.get(1).copied(),
        ratio,
    })
}

/// The thread count of this run; re-runs this process with `RAYON_NUM_THREADS` and
/// `MATMUL_NUM_THREADS` (ndarray's GEMM) set when `--threads` asks for other values (both
/// are read once, at the first parallel call). Returns `None` in the parent that re-ran.
fn bind_threads(threads: Option<usize>) -> Result<Option<usize>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Some(n) = threads else {
        return Ok(Some(
            std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(cores),
        ));
    };
    if n == 0 {
        bail!("--threads 0: give at least one thread");
    }
    let want = n.to_string();
    let bound = ["RAYON_NUM_THREADS", "MATMUL_NUM_THREADS"]
        .iter()
        .all(|v| std::env::var(v).ok().as_deref() == Some(want.as_str()));
    if bound {
        return Ok(Some(n));
    }
    let status = Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env("RAYON_NUM_THREADS", &want)
        .env("MATMUL_NUM_THREADS", &want)
        .status()
        .context("re-running the benchmark with its thread count")?;
    if !status.success() {
        bail!("the benchmark with --threads {n} failed");
    }
    Ok(None)
}

/// `bench`.
pub fn main(backend: crate::Backend, args: Args) -> Result<()> {
    let known = ["forward", "train-step", "pruned", "factorize", "sparsify"];
    if !known.contains(&args.what.as_str()) {
        bail!(
            "unknown benchmark `{}` (available: {})",
            args.what,
            known.join(", ")
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
    let Some(threads) = bind_threads(args.threads)? else {
        return Ok(());
    };
    let dir = crate::fetch::minilm()?;
    let what = args.what.as_str();
    let sizes: Vec<(usize, usize)> = match (args.batch, args.seq, what) {
        (None, None, "forward") => vec![(1, 32), (8, 128), (32, 64)],
        (None, None, "train-step") => vec![(32, 64)],
        (None, None, _) => vec![(1, 64), (32, 64)],
        (b, s, "train-step") => vec![(b.unwrap_or(32), s.unwrap_or(64))],
        (b, s, _) => vec![(b.unwrap_or(8), s.unwrap_or(128))],
    };
    let name = format!("{backend:?}").to_lowercase();
    let mut report = Report {
        what,
        backend: name.clone(),
        threads,
        iters: args.iters,
        rows: Vec::new(),
        pruned: Vec::new(),
    };
    if what == "pruned" {
        report.pruned = pruned(backend, &dir, &sizes, args.iters, args.shape.as_deref())?;
    } else {
        let mut peers = Vec::new();
        if let Some(venv) = &args.peer {
            for attn in ["eager", "sdpa"] {
                peers.push(Peer::start(venv, &dir, what, attn, threads)?);
            }
        }
        report.rows = crate::with_backend!(backend, |B, device| {
            let model = if what == "forward" {
                Some(BertModel::<B>::load(&dir, &device)?)
            } else {
                None
            };
            let mut rows = Vec::new();
            for &(b, s) in &sizes {
                let mut run: Box<dyn FnMut()> = match &model {
                    Some(model) => Box::new(forward_once(model, b, s, &device)),
                    None => Box::new(train_step::<B>(&dir, b, s, &device)?),
                };
                let row = measure(&mut run, &mut peers, (b, s), args.iters)?;
                let work = if what == "forward" {
                    "forward"
                } else {
                    "train step"
                };
                println!(
                    "shears  MiniLM-L6 {work}, batch {b} x seq {s}, {backend:?}: {:.1} ms (median of {})",
                    row.ours.median_ms, args.iters
                );
                rows.push(row);
                if args.fused_ab {
                    fused_ab(b, s, args.iters, &mut run);
                }
            }
            rows
        });
        drop(peers);
        println!(
            "\n{what} on {name}, {threads} threads; ms as median (min-max) of {} runs, peak resident memory",
            args.iters
        );
        println!(
            "| batch x seq | shears ({name}) | torch eager | torch sdpa | ratio to the best (median of the paired rounds) |"
        );
        println!("|---|---:|---:|---:|---:|");
        let dash = || "-".to_string();
        for r in &report.rows {
            println!(
                "| {} x {} | {} | {} | {} | {} |",
                r.batch,
                r.seq,
                r.ours.cell(),
                r.eager.map_or_else(dash, |t| t.cell()),
                r.sdpa.map_or_else(dash, |t| t.cell()),
                r.ratio.map_or_else(dash, |v| format!("{v:.2}")),
            );
        }
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            shears_layers::save::write_atomic(path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

/// The irregular pruned shapes of MiniLM (6 layers, hidden 384, 12 heads of 32, FFN 1536)
/// that the latency-against-FLOPs check runs on.
fn pruned_shapes(dense: &ModelConfig) -> Vec<(&'static str, ModelConfig)> {
    let with = |f: &dyn Fn(usize, &mut LayerConfig)| {
        let mut c = dense.clone();
        for (l, layer) in c.layers.iter_mut().enumerate() {
            f(l, layer);
            layer.head_ids = (0..layer.n_heads).collect();
        }
        c
    };
    let hidden = |d: usize| {
        let mut c = dense.clone();
        c.d_model = d;
        c.d_pooler = Some(d);
        c
    };
    // A run's pruned shape (heads and FFN width per layer, hidden width), its widths rounded
    // up to multiples of `round`.
    let run = |heads: [usize; 6], ffn: [usize; 6], d: usize, round: usize| {
        let up = |n: usize| n.div_ceil(round) * round;
        let mut c = with(&|i, l| {
            l.n_heads = heads[i];
            l.d_ff = up(ffn[i]);
        });
        (c.d_model, c.d_pooler) = (up(d), Some(up(d)));
        c
    };
    // The shapes the joint config's run (2026-12-02), the f50 config's and the 3x config's
    // (2026-12-07) pruned MiniLM to (docs/TRAINING.md).
    let joint = run([11, 11, 9, 5, 5, 7], [1367, 1349, 1299, 0, 0, 0], 371, 1);
    let f50 = |round| {
        run(
            [7, 11, 4, 4, 2, 7],
            [1356, 1340, 942, 818, 0, 294],
            380,
            round,
        )
    };
    let three_x = run([5, 6, 3, 3, 1, 4], [1177, 0, 622, 438, 0, 189], 344, 1);
    let heads = [12, 7, 0, 5, 12, 3];
    let ffn = [517, 1023, 1536, 777, 300, 1023];
    // Each odd width next to its neighbours at multiples of 8 (`gated.round_to = 8`
    // rounds to one of them): does a round width pay for its FLOPs?
    vec![
        ("ffn 512", with(&|_, l| l.d_ff = 512)),
        ("ffn 517", with(&|_, l| l.d_ff = 517)),
        ("ffn 520", with(&|_, l| l.d_ff = 520)),
        ("ffn 1016", with(&|_, l| l.d_ff = 1016)),
        ("ffn 1023", with(&|_, l| l.d_ff = 1023)),
        ("ffn 1024", with(&|_, l| l.d_ff = 1024)),
        ("hidden 296", hidden(296)),
        ("hidden 301", hidden(301)),
        ("hidden 304", hidden(304)),
        ("heads 6 per layer", with(&|_, l| l.n_heads = 6)),
        (
            "layer 2 headless",
            with(&|i, l| {
                if i == 2 {
                    l.n_heads = 0
                }
            }),
        ),
        (
            "mixed (heads 12,7,0,5,12,3; ffn 517,1023,1536,777,300,1023)",
            with(&|i, l| {
                l.n_heads = heads[i];
                l.d_ff = ffn[i];
            }),
        ),
        (
            "joint run (TRAINING.md: heads 11,11,9,5,5,7; ffn 1367,1349,1299,0,0,0; hidden 371)",
            joint,
        ),
        (
            "f50 run (TRAINING.md: heads 7,11,4,4,2,7; ffn 1356,1340,942,818,0,294; hidden 380)",
            f50(1),
        ),
        ("f50 run, widths rounded up to multiples of 32", f50(32)),
        (
            "3x run (TRAINING.md: heads 5,6,3,3,1,4; ffn 1177,0,622,438,0,189; hidden 344)",
            three_x,
        ),
        // No head and no neuron left: what no pruning of heads and neurons removes
        // (embeddings, the layer norms and residual adds, the pooler).
        (
            "floor (every layer without heads and FFN)",
            with(&|_, l| {
                l.n_heads = 0;
                l.d_ff = 0;
            }),
        ),
    ]
}

/// `pruned`: the latency of each pruned shape over the dense model's, against the ratio of
/// their FLOPs per token, at each size.
fn pruned(
    backend: crate::Backend,
    dir: &Path,
    sizes: &[(usize, usize)],
    iters: usize,
    only: Option<&str>,
) -> Result<Vec<PrunedRow>> {
    let dense = ModelConfig::from_hf_file(&dir.join("config.json"))?;
    let shapes: Vec<_> = pruned_shapes(&dense)
        .into_iter()
        .filter(|(name, _)| only.is_none_or(|o| name.contains(o)))
        .collect();
    if shapes.is_empty() {
        bail!(
            "--shape {}: no pruned shape's name contains it (names: {})",
            only.unwrap_or_default(),
            pruned_shapes(&dense)
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let mut rows = Vec::new();
    crate::with_backend!(backend, |B, device| {
        let model = Transformer::<B>::new(&dense, &device);
        for &(b, s) in sizes {
            for (shape, config) in &shapes {
                let small = Transformer::<B>::new(config, &device);
                let (base, t, ratio) = Timing::paired(
                    iters,
                    forward_once(&model, b, s, &device),
                    forward_once(&small, b, s, &device),
                );
                rows.push(PrunedRow {
                    shape: shape.to_string(),
                    batch: b,
                    seq: s,
                    dense: base,
                    pruned: t,
                    latency_ratio: ratio,
                    flops_ratio: config.flops_per_token(s) as f64 / dense.flops_per_token(s) as f64,
                });
            }
        }
    });
    println!(
        "\npruned shapes on {backend:?} (fresh weights), latency and FLOPs per token as ratios to the dense model; each shape timed in alternation with the dense model, ms as median (min-max) of {iters} runs, the latency ratio the median of the paired ratios"
    );
    println!(
        "| shape | batch x seq | dense | pruned | latency ratio | FLOPs ratio | latency / FLOPs |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        let per_flops = if r.flops_ratio > 0.0 {
            format!("{:.3}", r.latency_ratio / r.flops_ratio)
        } else {
            "-".into()
        };
        println!(
            "| {} | {} x {} | {} | {} | {:.3} | {:.3} | {per_flops} |",
            r.shape,
            r.batch,
            r.seq,
            r.dense.cell(),
            r.pruned.cell(),
            r.latency_ratio,
            r.flops_ratio,
        );
    }
    Ok(rows)
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
            let out = peer_command(&py)
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

/// The Python reference as its users run it: without the allocator settings `cargo xtask`
/// gives shears (`xtask::MALLOC_ENV`).
fn peer_command(py: &Path) -> Command {
    let mut cmd = Command::new(py);
    for (k, _) in xtask::MALLOC_ENV {
        cmd.env_remove(k);
    }
    cmd
}
