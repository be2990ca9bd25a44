//! Measurements of trained models: metrics on the validation and test splits, paired
//! latency, gate values for the report.

use std::time::Instant;

use burn::module::Param;
use burn::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use shears_pruners::{GatedModel, GatedTaskModel};

use crate::Experiment;
use crate::data::{Dataset, Split, make_batch};
use crate::report::EvalResult;
use crate::task::{Net, TaskModel, evaluate};

pub(crate) fn eval_all<B: Backend, M: Net<B>>(
    model: &M,
    data: &Dataset,
    exp: &Experiment,
    device: &B::Device,
) -> EvalResult {
    let e = |split| evaluate(model, split, data.pad_id, exp.eval.batch_size, device);
    let (v, t) = (e(&data.valid), e(&data.test));
    EvalResult::from_tallies(exp.task, v, t)
}

/// Deterministic head gate values per layer (an attention-block gate multiplied in), for the
/// heatmap.
pub(crate) fn gate_values<B: Backend>(gated: &GatedModel<B>) -> Vec<Vec<f64>> {
    let Some(values) = gated.gate_values() else {
        return Vec::new();
    };
    let width = values.dims()[1];
    let flat: Vec<f64> = values
        .into_data()
        .convert::<f64>()
        .to_vec()
        .unwrap_or_default();
    flat.chunks(width)
        .zip(&gated.model.config().layers)
        .map(|(row, l)| row[..l.n_heads].to_vec())
        .collect()
}

/// Paired latencies of the dense and the pruned model on one input.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Latency {
    /// Examples in the batch.
    pub batch: usize,
    /// Its sequence length.
    pub seq: usize,
    /// Median forward latency of the dense model, ms.
    pub dense_ms: f64,
    /// The same, pruned.
    pub pruned_ms: f64,
    /// The median over the repeats of pruned / dense, each pair timed back to back: the
    /// ratio the machine's drift disturbs least.
    pub ratio: f64,
    /// Repeats (pairs) timed.
    pub repeats: usize,
}

/// Paired latency of the dense and the pruned model at `eval.latency_batch` (the first
/// test examples, padded to the longest) and at batch 1 with `data.max_len` tokens (test
/// examples packed end to end: the time depends on the shape, not on the ids).
///
/// Batch 1 is timed [`BATCH1_REPEATS`] times as often: each pass is tens of times
/// shorter, and a pass of a few milliseconds moves by up to 2x with the machine's load.
pub(crate) fn latency<B: Backend>(
    dense: &TaskModel<B>,
    pruned: &TaskModel<B>,
    data: &Dataset,
    exp: &Experiment,
    device: &B::Device,
) -> (Latency, Latency) {
    let e = &exp.eval;
    let (batch, max_len) = (e.latency_batch, exp.data.max_len);
    latency_at(
        dense,
        pruned,
        data,
        batch,
        max_len,
        e.latency_repeats,
        device,
    )
}

/// [`latency`] at batch `batch` and at batch 1 with `max_len` tokens, `repeats` pairs
/// (batch 1: [`BATCH1_REPEATS`] times as many).
pub(crate) fn latency_at<B: Backend>(
    dense: &TaskModel<B>,
    pruned: &TaskModel<B>,
    data: &Dataset,
    batch: usize,
    max_len: usize,
    repeats: usize,
    device: &B::Device,
) -> (Latency, Latency) {
    let time = |rows: &Split, batch: usize, repeats: usize| {
        let p = paired_latency(dense, pruned, rows, data.pad_id, batch, repeats, device);
        Latency {
            batch,
            seq: rows.ids[..batch].iter().map(Vec::len).max().unwrap_or(1),
            dense_ms: p.a_ms,
            pruned_ms: p.b_ms,
            ratio: p.ratio,
            repeats,
        }
    };
    let batched = time(&data.test, batch.min(data.test.len()), repeats);
    let packed = token_rows(&data.test, 1, max_len.max(1));
    let single = time(&packed, 1, repeats * BATCH1_REPEATS);
    (batched, single)
}

/// How many times `eval.latency_repeats` batch 1 is timed.
pub const BATCH1_REPEATS: usize = 5;

/// Two models timed in alternation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Paired {
    /// Median forward latency of the first model, ms.
    pub a_ms: f64,
    /// The same, second.
    pub b_ms: f64,
    /// Median over the pairs of second / first.
    pub ratio: f64,
}

/// `batch` rows of exactly `seq` tokens: `split`'s examples end to end, repeated as often as
/// needed (a latency depends on the shape, not on the ids), labelled as the first example.
pub(crate) fn token_rows(split: &Split, batch: usize, seq: usize) -> Split {
    let mut tokens = split.ids.iter().flatten().copied().cycle();
    let ids = (0..batch)
        .map(|_| (0..seq).map(|_| tokens.next().unwrap_or(0)).collect())
        .collect();
    Split {
        ids,
        labels: match split.labels.first() {
            Some(&l) => vec![l; batch],
            None => Vec::new(),
        },
    }
}

/// Median forward latency (ms) of two models on the same batch (the first `batch`
/// examples of `split`), alternating the two so that drift affects both alike, and the
/// median of the per-pair ratios; one warm-up run each.
pub(crate) fn paired_latency<B: Backend>(
    a: &TaskModel<B>,
    b: &TaskModel<B>,
    split: &Split,
    pad_id: u32,
    batch: usize,
    repeats: usize,
    device: &B::Device,
) -> Paired {
    let n = batch.min(split.len());
    let idx: Vec<usize> = (0..n).collect();
    let batch = make_batch::<B>(split, &idx, pad_id, device);
    let time = |m: &TaskModel<B>| {
        let t = Instant::now();
        let out = m.output(batch.input.clone(), shears_gates::Draw::Eval);
        let s = match (&m.head, out.pooled) {
            (Some(h), Some(p)) => h.forward(p).sum(),
            _ => out.logits.unwrap_or_else(|| out.hidden.clone()).sum(),
        };
        // Reading the result forces the computation on lazy backends.
        let _: f32 = s.into_scalar().elem();
        t.elapsed().as_secs_f64() * 1e3
    };
    time(a);
    time(b);
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..repeats.max(1) {
        ta.push(time(a));
        tb.push(time(b));
    }
    let mut ratios: Vec<f64> = ta.iter().zip(&tb).map(|(a, b)| b / a).collect();
    Paired {
        a_ms: median(&mut ta),
        b_ms: median(&mut tb),
        ratio: median(&mut ratios),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The mean validation loss of `model` (cross entropy per example or per token) and its
/// accuracy (per example or per token): the gate check's measures. The loss is continuous
/// where accuracy saturates; the accuracy still reads right when the loss does not, as
/// after distillation without cross entropy, which leaves the logits' scale free.
pub(crate) fn valid_scores<B: Backend, M: Net<B>>(
    model: &M,
    data: &Dataset,
    exp: &Experiment,
    device: &B::Device,
) -> (f64, f64) {
    let t = evaluate(model, &data.valid, data.pad_id, exp.eval.batch_size, device);
    (t.loss(), t.accuracy())
}

/// `model` with every gate's `log α` replaced by a seeded random value: hardening it by
/// count keeps a random set of units of the size asked.
pub(crate) fn randomize_gates<B: Backend>(
    mut model: GatedTaskModel<B>,
    seed: u64,
) -> GatedTaskModel<B> {
    let mut rng = StdRng::seed_from_u64(seed);
    for g in &mut model.gated.gates.groups {
        let n = g.gate.len();
        let device = g.gate.log_alpha.val().device();
        let la: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        g.gate.log_alpha = Param::from_tensor(Tensor::from_data(TensorData::new(la, [n]), &device));
    }
    model
}

/// The pruned model's test metric against the baseline's on the same examples, with a 95%
/// interval from a paired bootstrap (the same resampled examples for both models).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairedDelta {
    /// Classification: accuracy pruned - dense (a fraction; ×100 for points). LM:
    /// perplexity pruned / dense - 1.
    pub delta: f64,
    /// 2.5th percentile of the resampled deltas.
    pub low: f64,
    /// 97.5th percentile.
    pub high: f64,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// Examples resampled (test rows or LM blocks).
    pub examples: usize,
}

/// Resamples of [`paired_delta`].
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;

/// [`PairedDelta`] from per-example tallies of both models (same order), resampled with a
/// generator seeded by `seed`.
pub fn paired_delta(
    dense: &[crate::task::Tally],
    pruned: &[crate::task::Tally],
    task: crate::Task,
    seed: u64,
) -> PairedDelta {
    use crate::task::Tally;
    assert_eq!(
        dense.len(),
        pruned.len(),
        "paired tallies of different lengths"
    );
    let n = dense.len();
    let metric = |d: &Tally, p: &Tally| match task {
        crate::Task::Classification => p.accuracy() - d.accuracy(),
        crate::Task::Lm => p.perplexity() / d.perplexity() - 1.0,
    };
    let all = |rows: &[Tally]| {
        let mut t = Tally::default();
        for r in rows {
            t.add(*r);
        }
        t
    };
    let delta = metric(&all(dense), &all(pruned));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut deltas: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            let (mut d, mut p) = (Tally::default(), Tally::default());
            for _ in 0..n {
                let i = rng.random_range(0..n.max(1));
                d.add(dense[i]);
                p.add(pruned[i]);
            }
            metric(&d, &p)
        })
        .collect();
    deltas.sort_by(f64::total_cmp);
    let q =
        |f: f64| deltas[((f * BOOTSTRAP_RESAMPLES as f64) as usize).min(BOOTSTRAP_RESAMPLES - 1)];
    PairedDelta {
        delta,
        low: q(0.025),
        high: q(0.975),
        resamples: BOOTSTRAP_RESAMPLES,
        examples: n,
    }
}

/// Greedy continuations of held-out text by the dense and the pruned language model, and
/// the time each takes per generated token (batch 1, key/value cache).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Generation {
    /// Prompt tokens (the start of a test block) and new tokens asked for.
    pub prompt_tokens: usize,
    /// See `prompt_tokens`.
    pub new_tokens: usize,
    /// Mean over the prompts of the dense model's seconds per token after the first, in ms.
    pub dense_ms_per_token: f64,
    /// The same, pruned.
    pub pruned_ms_per_token: f64,
    /// The samples.
    pub samples: Vec<Sample>,
}

/// One prompt and both continuations.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// The prompt's text.
    pub prompt: String,
    /// The dense model's continuation.
    pub dense: String,
    /// The pruned model's.
    pub pruned: String,
}

/// Prompts of [`generation`].
pub(crate) const SAMPLE_PROMPTS: usize = 3;

/// [`Generation`] for a language model (`None` for a classifier): the first
/// [`SAMPLE_PROMPTS`] test blocks cut to 8 tokens, continued greedily by up to 24 tokens
/// (fewer when the position table is shorter), stopping at the padding token
/// (`<|endoftext|>`).
pub(crate) fn generation<B: Backend>(
    dense: &TaskModel<B>,
    pruned: &TaskModel<B>,
    data: &Dataset,
    tokenizer: &shears_layers::Tokenizer,
) -> Result<Option<Generation>, crate::TrainError> {
    let config = dense.backbone.config();
    if !config.family.arch().lm_head {
        return Ok(None);
    }
    let prompt_tokens = 8.min(config.max_len() / 2);
    let new_tokens = 24.min(config.max_len() - prompt_tokens);
    let opts = shears_layers::GenerateOptions {
        max_tokens: new_tokens,
        stop: Some(data.pad_id),
        ..Default::default()
    };
    let gen_err = |e: shears_layers::GenerateError| crate::TrainError::Config {
        source_name: "generation".into(),
        message: e.to_string(),
    };
    let mut samples = Vec::new();
    let (mut dense_s, mut pruned_s) = (0.0, 0.0);
    for ids in data
        .test
        .ids
        .iter()
        .filter(|ids| ids.len() >= prompt_tokens && prompt_tokens > 0)
        .take(SAMPLE_PROMPTS)
    {
        let prompt = &ids[..prompt_tokens];
        let d = dense.backbone.generate(prompt, &opts).map_err(gen_err)?;
        let p = pruned.backbone.generate(prompt, &opts).map_err(gen_err)?;
        dense_s += d.seconds_per_token;
        pruned_s += p.seconds_per_token;
        samples.push(Sample {
            prompt: tokenizer.decode(prompt)?,
            dense: tokenizer.decode(&d.tokens)?,
            pruned: tokenizer.decode(&p.tokens)?,
        });
    }
    let n = samples.len().max(1) as f64;
    Ok(Some(Generation {
        prompt_tokens,
        new_tokens,
        dense_ms_per_token: 1e3 * dense_s / n,
        pruned_ms_per_token: 1e3 * pruned_s / n,
        samples,
    }))
}
