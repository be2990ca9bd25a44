//! `report.json`, `report.md` and its figures (see [`crate::figures`]): the head gate values
//! per layer, the structure kept per layer, and the training curves.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use shears_layers::{LoadError, ModelConfig, save::write_atomic};

use crate::data::Dataset;
use crate::task::Tally;
use crate::{Experiment, Task, figures};

/// One logged training point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Phase name.
    pub phase: String,
    /// Step within the phase (after the update).
    pub step: usize,
    /// Mean training loss since the previous point.
    pub loss: f64,
    /// Training accuracy since the previous point (classification).
    pub accuracy: Option<f64>,
    /// Expected fraction of gated units closed (gated phase).
    pub expected_sparsity: Option<f64>,
    /// The target at this step (gated phase).
    pub target_sparsity: Option<f64>,
    /// The Lagrange multiplier λ₁ after this step (gated phase).
    #[serde(default)]
    pub lambda1: Option<f64>,
    /// λ₂ (gated phase).
    #[serde(default)]
    pub lambda2: Option<f64>,
    /// Learning rate.
    pub lr: f64,
}

/// Validation and test metrics of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Validation loss.
    pub valid_loss: f64,
    /// Test loss.
    pub test_loss: f64,
    /// Validation accuracy (classification).
    pub valid_accuracy: Option<f64>,
    /// Test accuracy (classification).
    pub test_accuracy: Option<f64>,
    /// Validation perplexity (LM).
    pub valid_perplexity: Option<f64>,
    /// Test perplexity (LM).
    pub test_perplexity: Option<f64>,
}

impl EvalResult {
    /// From split tallies.
    pub fn from_tallies(task: Task, valid: Tally, test: Tally) -> Self {
        let cls = task == Task::Classification;
        Self {
            valid_loss: valid.loss(),
            test_loss: test.loss(),
            valid_accuracy: cls.then(|| valid.accuracy()),
            test_accuracy: cls.then(|| test.accuracy()),
            valid_perplexity: (!cls).then(|| valid.perplexity()),
            test_perplexity: (!cls).then(|| test.perplexity()),
        }
    }
}

/// The report of one run. Accuracies and perplexities are on the test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Experiment name.
    pub name: String,
    /// Model source.
    pub model: String,
    /// Dataset file.
    pub dataset: String,
    /// Task.
    pub task: Task,
    /// Backend.
    pub backend: String,
    /// Whether this was an optimised build (latencies are only meaningful then).
    pub release_build: bool,
    /// Examples (classification) or blocks (LM) per split.
    pub split_sizes: [usize; 3],
    /// Rows dropped for an unlisted label / empty text.
    pub rows_dropped: [usize; 2],
    /// Tokens per split (classification: after truncation; LM: in whole blocks).
    #[serde(default)]
    pub tokens_per_split: [usize; 3],
    /// Language modelling: the corpus's files, documents and rows per split, duplicates and
    /// rows that are not UTF-8.
    #[serde(default)]
    pub corpus: Option<crate::data::Corpus>,
    /// Heads before pruning.
    pub heads_total: usize,
    /// Heads after.
    pub heads_kept: usize,
    /// Heads per layer after.
    pub kept_heads_per_layer: Vec<usize>,
    /// Heads per layer before.
    #[serde(default)]
    pub heads_per_layer_dense: Vec<usize>,
    /// Feed-forward width per layer after.
    pub ffn_per_layer: Vec<usize>,
    /// Feed-forward width per layer before.
    pub ffn_per_layer_dense: Vec<usize>,
    /// Hidden width before pruning.
    pub hidden_dense: usize,
    /// Hidden width after.
    pub hidden_pruned: usize,
    /// Layers whose heads all closed: their attention block is gone (its output bias and
    /// the residual path stay).
    pub headless_layers: Vec<usize>,
    /// Spaces where the gates closed more units than the model allows (the most open units
    /// were kept); empty for heads and neurons of the built-in blocks.
    pub rescued: Vec<String>,
    /// Directory (in the output) of the pruned model in the layout `transformers` loads
    /// (`BertForSequenceClassification` with `pruned_heads`); `None` when the model cannot
    /// be represented there (GPT-2, pruned hidden dimensions, per-layer FFN widths).
    pub hf_model: Option<String>,
    /// Why there is no `hf_model`.
    pub hf_model_missing: Option<String>,
    /// Parameters of the dense backbone (+ head).
    pub params_dense: usize,
    /// Parameters of the pruned backbone (+ head).
    pub params_pruned: usize,
    /// Parameters of the layer stack alone (the transformer blocks: their projections and
    /// LayerNorms; no embeddings, pooler, final norm or head), dense and pruned: what a
    /// `params` target counts.
    #[serde(default)]
    pub block_params: [usize; 2],
    /// Encoder FLOPs per token at `data.max_len`, dense.
    pub flops_per_token_dense: usize,
    /// The same, pruned.
    pub flops_per_token_pruned: usize,
    /// FLOPs per token of the tied LM head, dense and pruned (GPT-2; not in the encoder
    /// FLOPs above: a pruned hidden width shrinks it, nothing else does).
    #[serde(default)]
    pub lm_head_flops_per_token: Option<[usize; 2]>,
    /// Test accuracy of the dense fine-tuned model (classification).
    pub accuracy_dense: Option<f64>,
    /// Test accuracy of the pruned, fine-tuned model (classification).
    pub accuracy_pruned: Option<f64>,
    /// Test perplexity, dense (LM).
    pub perplexity_dense: Option<f64>,
    /// Test perplexity, pruned (LM).
    pub perplexity_pruned: Option<f64>,
    /// Validation and test metrics, dense (the baseline).
    pub eval_dense: EvalResult,
    /// Validation and test metrics, pruned.
    pub eval_pruned: EvalResult,
    /// The pruned model's test metric against the baseline's on the same test examples,
    /// with its paired-bootstrap 95% interval.
    #[serde(default)]
    pub paired_delta: Option<crate::measure::PairedDelta>,
    /// The teacher (the best validation epoch within `dense.epochs`: the gated phase's
    /// start and, with `distill.enabled`, the distillation teacher).
    #[serde(default)]
    pub eval_teacher: Option<EvalResult>,
    /// The dense run's validation at each epoch's end.
    #[serde(default)]
    pub dense_epochs: Vec<crate::checkpoint::EpochScore>,
    /// Training steps of the baseline's chosen epoch and of the teacher's.
    #[serde(default)]
    pub baseline_step: usize,
    /// See `baseline_step`.
    #[serde(default)]
    pub teacher_step: usize,
    /// Epochs the dense run trained (the baseline's budget) and epochs of the pruned
    /// model's path (`dense.epochs + gated.epochs + finetune.epochs`).
    #[serde(default)]
    pub epochs_baseline_pruned: [f64; 2],
    /// Expected sparsity of the gates at the end of the gated phase, before hardening.
    pub expected_sparsity_gated: Option<f64>,
    /// Mean validation loss of the hardened model before the fine-tune: what the gates
    /// chose.
    pub valid_loss_hardened: Option<f64>,
    /// The same, averaged over 3 seeded random kept sets of the same size on the same weights: the
    /// control that shows the gates learned which units matter.
    pub valid_loss_random_kept: Option<f64>,
    /// Validation accuracy (per example; LM: per token) of the hardened model before the
    /// fine-tune, and the mean over the random kept sets.
    #[serde(default)]
    pub valid_accuracy_hardened: Option<f64>,
    /// See `valid_accuracy_hardened`.
    #[serde(default)]
    pub valid_accuracy_random_kept: Option<f64>,
    /// Median forward latency of the dense model (ms, `eval.latency_batch` test examples).
    pub latency_ms_dense: f64,
    /// The same, pruned.
    pub latency_ms_pruned: f64,
    /// Batch of the latency measurement.
    pub latency_batch: usize,
    /// Sequence length of that batch (its longest example).
    #[serde(default)]
    pub latency_seq: usize,
    /// Median forward latency of the dense model on one sequence of `data.max_len` tokens
    /// (test examples packed end to end), ms.
    #[serde(default)]
    pub latency_ms_dense_batch1: f64,
    /// The same, pruned.
    #[serde(default)]
    pub latency_ms_pruned_batch1: f64,
    /// Median over the paired repeats of pruned / dense latency at `latency_batch`.
    #[serde(default)]
    pub latency_ratio: f64,
    /// The same at batch 1 (timed `measure::BATCH1_REPEATS` times as often).
    #[serde(default)]
    pub latency_ratio_batch1: f64,
    /// Pairs timed at `latency_batch` and at batch 1.
    #[serde(default)]
    pub latency_repeats: [usize; 2],
    /// A language model's greedy samples from held-out text and its time per generated
    /// token (batch 1, key/value cache), dense and pruned; `None` for a classifier.
    #[serde(default)]
    pub generation: Option<crate::measure::Generation>,
    /// Whole run, seconds (all invocations of a resumed run).
    pub wall_seconds: f64,
    /// Seconds per phase.
    pub phase_seconds: BTreeMap<String, f64>,
    /// Deterministic head gate values at the end of the gated phase, per layer.
    pub gate_values: Vec<Vec<f64>>,
    /// Training curve.
    pub history: Vec<Point>,
    /// The full config.
    pub config: Experiment,
    /// The finished run whose dense phase (teacher, baseline, their epochs and evaluations)
    /// this run reused instead of training it; its seconds are not in `wall_seconds`.
    #[serde(default)]
    pub dense_from: Option<std::path::PathBuf>,
}

/// Inputs of [`build`].
pub struct Parts<'a> {
    /// Experiment.
    pub exp: &'a Experiment,
    /// Backend name.
    pub backend: &'a str,
    /// Data.
    pub data: &'a Dataset,
    /// Dense config.
    pub dense_config: &'a ModelConfig,
    /// Pruned config.
    pub pruned_config: &'a ModelConfig,
    /// Dense (baseline) metrics.
    pub dense_eval: EvalResult,
    /// The teacher's metrics.
    pub teacher_eval: Option<EvalResult>,
    /// Validation per epoch of the dense run, and the baseline's and the teacher's indices.
    pub dense_epochs: (
        Vec<crate::checkpoint::EpochScore>,
        Option<usize>,
        Option<usize>,
    ),
    /// Paired test comparison.
    pub paired_delta: Option<crate::measure::PairedDelta>,
    /// Pruned metrics.
    pub pruned_eval: EvalResult,
    /// Expected sparsity of the gates at the end of the gated phase.
    pub expected_sparsity: Option<f64>,
    /// Validation metric before the fine-tune: (learned kept set, random kept set).
    pub gate_check: Option<(f64, f64)>,
    /// Validation accuracy before the fine-tune: (learned kept set, random kept sets).
    pub gate_check_accuracy: Option<(f64, f64)>,
    /// Latencies at `eval.latency_batch`.
    pub latency: crate::measure::Latency,
    /// Latencies at batch 1, `data.max_len` tokens.
    pub latency_batch1: crate::measure::Latency,
    /// A language model's samples and time per generated token.
    pub generation: Option<crate::measure::Generation>,
    /// Wall time.
    pub wall_seconds: f64,
    /// Per phase.
    pub phase_seconds: BTreeMap<String, f64>,
    /// Curve.
    pub history: Vec<Point>,
    /// Gate values.
    pub gate_values: Vec<Vec<f64>>,
    /// Spaces kept above the gates' decision.
    pub rescued: Vec<String>,
    /// The Hugging Face export's directory, or why there is none.
    pub hf_export: Result<String, String>,
    /// See [`Report::dense_from`].
    pub dense_from: Option<std::path::PathBuf>,
}

/// Assembles the report.
pub fn build(p: Parts<'_>) -> Report {
    let accuracy = p
        .gate_check_accuracy
        .filter(|_| p.exp.task == Task::Classification);
    let head_params = if p.exp.task == Task::Classification {
        p.dense_config.d_pooler.unwrap_or(0) * p.data.label_names.len() + p.data.label_names.len()
    } else {
        0
    };
    let model = match (&p.exp.model.path, &p.exp.model.init) {
        (Some(path), _) => path.display().to_string(),
        (None, Some(i)) => format!(
            "fresh GPT-2 ({} layers x {} heads, d_model {}, d_ff {})",
            i.n_layers, i.n_heads, i.d_model, i.d_ff
        ),
        _ => String::new(),
    };
    Report {
        name: p.exp.name.clone(),
        model,
        dataset: p.data.path.display().to_string(),
        task: p.exp.task,
        backend: p.backend.to_string(),
        release_build: !cfg!(debug_assertions),
        split_sizes: [p.data.train.len(), p.data.valid.len(), p.data.test.len()],
        rows_dropped: [p.data.dropped_label, p.data.dropped_empty],
        tokens_per_split: [
            p.data.train.tokens(),
            p.data.valid.tokens(),
            p.data.test.tokens(),
        ],
        corpus: p.data.corpus.clone(),
        heads_total: p.dense_config.layers.iter().map(|l| l.n_heads).sum(),
        heads_kept: p.pruned_config.layers.iter().map(|l| l.n_heads).sum(),
        kept_heads_per_layer: p.pruned_config.layers.iter().map(|l| l.n_heads).collect(),
        heads_per_layer_dense: p.dense_config.layers.iter().map(|l| l.n_heads).collect(),
        ffn_per_layer: p.pruned_config.layers.iter().map(|l| l.d_ff).collect(),
        ffn_per_layer_dense: p.dense_config.layers.iter().map(|l| l.d_ff).collect(),
        hidden_dense: p.dense_config.d_model,
        hidden_pruned: p.pruned_config.d_model,
        headless_layers: p
            .pruned_config
            .layers
            .iter()
            .enumerate()
            .filter(|(_, l)| l.n_heads == 0)
            .map(|(i, _)| i)
            .collect(),
        rescued: p.rescued,
        hf_model: p.hf_export.clone().ok(),
        hf_model_missing: p.hf_export.err(),
        dense_from: p.dense_from,
        params_dense: p.dense_config.param_count() + head_params,
        params_pruned: p.pruned_config.param_count() + head_params,
        block_params: [
            p.dense_config.layer_params(),
            p.pruned_config.layer_params(),
        ],
        flops_per_token_dense: p.dense_config.flops_per_token(p.exp.data.max_len),
        flops_per_token_pruned: p.pruned_config.flops_per_token(p.exp.data.max_len),
        lm_head_flops_per_token: p.dense_config.family.arch().lm_head.then(|| {
            [
                p.dense_config.lm_head_flops_per_token(),
                p.pruned_config.lm_head_flops_per_token(),
            ]
        }),
        accuracy_dense: p.dense_eval.test_accuracy,
        accuracy_pruned: p.pruned_eval.test_accuracy,
        perplexity_dense: p.dense_eval.test_perplexity,
        perplexity_pruned: p.pruned_eval.test_perplexity,
        eval_dense: p.dense_eval,
        eval_pruned: p.pruned_eval,
        paired_delta: p.paired_delta,
        eval_teacher: p.teacher_eval,
        baseline_step: p.dense_epochs.1.map_or(0, |i| p.dense_epochs.0[i].step),
        teacher_step: p.dense_epochs.2.map_or(0, |i| p.dense_epochs.0[i].step),
        dense_epochs: p.dense_epochs.0,
        epochs_baseline_pruned: {
            let e = &p.exp;
            let path = e.dense.epochs + e.gated.epochs + e.finetune.epochs;
            [
                if e.baseline.match_path {
                    path
                } else {
                    e.dense.epochs
                },
                path,
            ]
        },
        expected_sparsity_gated: p.expected_sparsity,
        valid_loss_hardened: p.gate_check.map(|c| c.0),
        valid_loss_random_kept: p.gate_check.map(|c| c.1),
        // An LM has no accuracy to report.
        valid_accuracy_hardened: accuracy.map(|c| c.0),
        valid_accuracy_random_kept: accuracy.map(|c| c.1),
        latency_ms_dense: p.latency.dense_ms,
        latency_ms_pruned: p.latency.pruned_ms,
        latency_batch: p.latency.batch,
        latency_seq: p.latency.seq,
        latency_ms_dense_batch1: p.latency_batch1.dense_ms,
        latency_ms_pruned_batch1: p.latency_batch1.pruned_ms,
        latency_ratio: p.latency.ratio,
        latency_ratio_batch1: p.latency_batch1.ratio,
        latency_repeats: [p.latency.repeats, p.latency_batch1.repeats],
        generation: p.generation,
        wall_seconds: p.wall_seconds,
        phase_seconds: p.phase_seconds,
        gate_values: p.gate_values,
        history: p.history,
        config: p.exp.clone(),
    }
}

/// Writes `report.json`, `report.md`, `gates.svg`, `kept.svg` and `curves.svg` into `dir`.
pub fn write(r: &Report, dir: &Path) -> Result<(), LoadError> {
    let json = serde_json::to_string_pretty(r).expect("report serialises");
    write_atomic(&dir.join("report.json"), json.as_bytes())?;
    let layers: Vec<figures::LayerKept> = (0..r.ffn_per_layer.len())
        .map(|l| figures::LayerKept {
            heads: (r.heads_per_layer_dense[l], r.kept_heads_per_layer[l]),
            ffn: (r.ffn_per_layer_dense[l], r.ffn_per_layer[l]),
        })
        .collect();
    let figures = [
        ("gates.svg", figures::gate_heatmap(&r.gate_values)),
        (
            "kept.svg",
            figures::kept_structure(&layers, (r.hidden_dense, r.hidden_pruned)),
        ),
        ("curves.svg", figures::curves(&r.history)),
    ];
    for (name, svg) in figures {
        let path = dir.join(name);
        let svg = svg.map_err(|e| LoadError::Io {
            path: path.clone(),
            reason: format!("drawing the figure failed: {e}"),
        })?;
        write_atomic(&path, svg.as_bytes())?;
    }
    write_atomic(&dir.join("report.md"), markdown(r).as_bytes())?;
    Ok(())
}

fn pct(a: f64, b: f64) -> String {
    format!("{:.1}%", 100.0 * a / b.max(1e-12))
}

/// The readable report.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {}: gated structured pruning\n", r.name);
    let _ = writeln!(
        s,
        "Model `{}`, data `{}` (train / valid / test: {} / {} / {}; dropped rows: {} with other labels, {} empty). Backend {}, {} build. Wall time {:.0} s.\n",
        r.model,
        r.dataset,
        r.split_sizes[0],
        r.split_sizes[1],
        r.split_sizes[2],
        r.rows_dropped[0],
        r.rows_dropped[1],
        r.backend,
        if r.release_build { "release" } else { "debug" },
        r.wall_seconds
    );
    let [t0, t1, t2] = r.tokens_per_split;
    let _ = writeln!(s, "Tokens per split: {t0} / {t1} / {t2}.");
    if let Some(c) = &r.corpus {
        let files: Vec<String> = c
            .files
            .iter()
            .map(|f| format!("`{}`", f.display()))
            .collect();
        let _ = writeln!(
            s,
            "Corpus {}: documents per split {} / {} / {}, rows {} / {} / {} (split by document; {} duplicate rows and {} rows that are not UTF-8 left out).",
            files.join(" + "),
            c.documents[0],
            c.documents[1],
            c.documents[2],
            c.rows[0],
            c.rows[1],
            c.rows[2],
            c.duplicates,
            c.invalid
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "| | dense | pruned | pruned / dense |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    let _ = writeln!(
        s,
        "| attention heads | {} | {} | {} |",
        r.heads_total,
        r.heads_kept,
        pct(r.heads_kept as f64, r.heads_total as f64)
    );
    let (ffn_dense, ffn_kept): (usize, usize) = (
        r.ffn_per_layer_dense.iter().sum(),
        r.ffn_per_layer.iter().sum(),
    );
    let _ = writeln!(
        s,
        "| FFN neurons | {ffn_dense} | {ffn_kept} | {} |",
        pct(ffn_kept as f64, ffn_dense as f64)
    );
    let _ = writeln!(
        s,
        "| hidden width | {} | {} | {} |",
        r.hidden_dense,
        r.hidden_pruned,
        pct(r.hidden_pruned as f64, r.hidden_dense as f64)
    );
    let _ = writeln!(
        s,
        "| parameters | {} | {} | {} |",
        r.params_dense,
        r.params_pruned,
        pct(r.params_pruned as f64, r.params_dense as f64)
    );
    let [bd, bp] = r.block_params;
    let _ = writeln!(
        s,
        "| parameters of the transformer blocks (no embeddings) | {bd} | {bp} | {} |",
        pct(bp as f64, bd as f64)
    );
    let _ = writeln!(
        s,
        "| encoder FLOPs / token | {} | {} | {} |",
        r.flops_per_token_dense,
        r.flops_per_token_pruned,
        pct(
            r.flops_per_token_pruned as f64,
            r.flops_per_token_dense as f64
        )
    );
    if let Some([dense, pruned]) = r.lm_head_flops_per_token {
        let _ = writeln!(
            s,
            "| tied LM head FLOPs / token (not above) | {dense} | {pruned} | {} |",
            pct(pruned as f64, dense as f64)
        );
    }
    let _ = writeln!(
        s,
        "| latency, batch {} x seq {} (ms, median of {}) | {:.1} | {:.1} | {:.1}% (median of the paired ratios) |",
        r.latency_batch,
        r.latency_seq,
        r.latency_repeats[0],
        r.latency_ms_dense,
        r.latency_ms_pruned,
        100.0 * r.latency_ratio
    );
    let _ = writeln!(
        s,
        "| latency, batch 1 x seq {} (ms, median of {}) | {:.1} | {:.1} | {:.1}% (median of the paired ratios) |",
        r.config.data.max_len,
        r.latency_repeats[1],
        r.latency_ms_dense_batch1,
        r.latency_ms_pruned_batch1,
        100.0 * r.latency_ratio_batch1
    );
    if let Some(g) = &r.generation {
        let _ = writeln!(
            s,
            "| generation, batch 1, key/value cache (ms per token, mean of {} prompts) | {:.2} | {:.2} | {:.1}% |",
            g.samples.len(),
            g.dense_ms_per_token,
            g.pruned_ms_per_token,
            100.0 * g.pruned_ms_per_token / g.dense_ms_per_token.max(f64::MIN_POSITIVE)
        );
    }
    let interval = |scale: f64, unit: &str| match &r.paired_delta {
        Some(d) => format!(
            ", 95% interval [{:+.2}, {:+.2}]{unit} (paired bootstrap, {} examples)",
            scale * d.low,
            scale * d.high,
            d.examples
        ),
        None => String::new(),
    };
    if let (Some(a), Some(b)) = (r.accuracy_dense, r.accuracy_pruned) {
        let _ = writeln!(
            s,
            "| test accuracy | {:.2}% | {:.2}% | {:+.2} points{} |",
            100.0 * a,
            100.0 * b,
            100.0 * (b - a),
            interval(100.0, "")
        );
    }
    if let (Some(a), Some(b)) = (r.perplexity_dense, r.perplexity_pruned) {
        let _ = writeln!(
            s,
            "| test perplexity | {a:.2} | {b:.2} | {}{} |",
            pct(b, a),
            interval(100.0, "%")
        );
    }
    let [e_base, e_path] = r.epochs_baseline_pruned;
    let _ = writeln!(
        s,
        "\nThe dense baseline trained {e_base} epochs (the pruned model's whole path: {e_path}) and is its best validation epoch (step {}); the teacher and the gated phase's start is the best within `dense.epochs` (step {}).",
        r.baseline_step, r.teacher_step
    );
    if r.config.distill.enabled {
        let d = &r.config.distill;
        let _ = writeln!(
            s,
            "Distilled from the teacher in the gated phase and the fine-tune: {} T² KL(T = {}) on the logits + {} hidden-state MSE (teacher layers {:?}, dynamic matching) + {} cross entropy.",
            d.logit_weight,
            d.temperature,
            d.layer_weight,
            d.layers(r.heads_per_layer_dense.len()),
            d.ce_weight
        );
    }
    let _ = writeln!(s, "\nHeads kept per layer: {:?}.", r.kept_heads_per_layer);
    let _ = writeln!(s, "\nFFN neurons kept per layer: {:?}.", r.ffn_per_layer);
    if !r.headless_layers.is_empty() {
        let _ = writeln!(
            s,
            "Layers {:?} lost every head: their attention block was removed (output bias and residual path kept).",
            r.headless_layers
        );
    }
    if !r.rescued.is_empty() {
        let _ = writeln!(
            s,
            "The gates closed every unit of {:?}; the most open unit of each was kept.",
            r.rescued
        );
    }
    if let Some(g) = r.generation.as_ref().filter(|g| !g.samples.is_empty()) {
        let _ = writeln!(
            s,
            "\nGreedy continuations of held-out text ({} prompt tokens, up to {} new):\n",
            g.prompt_tokens, g.new_tokens
        );
        let line = |t: &str| t.replace(['\n', '\r'], " ");
        for x in &g.samples {
            let _ = writeln!(
                s,
                "- prompt: `{}`\n  - dense: `{}`\n  - pruned: `{}`",
                line(&x.prompt),
                line(&x.dense),
                line(&x.pruned)
            );
        }
    }
    match (&r.hf_model, &r.hf_model_missing) {
        (Some(dir), _) => {
            let (auto, own, modeling) = match r.task {
                Task::Classification => (
                    "AutoModelForSequenceClassification",
                    "BertForSequenceClassification / RobertaForSequenceClassification",
                    "shears_bert",
                ),
                Task::Lm => ("AutoModelForCausalLM", "GPT2LMHeadModel", "shears_gpt2"),
            };
            let _ = writeln!(
                s,
                "\nThe pruned model is in `model/` (shears) and `{dir}/` (transformers: `{auto}.from_pretrained(dir, trust_remote_code=True)`; transformers' own `{own}` with `pruned_heads` when only heads were removed, else the `{modeling}` modeling file written beside the weights)."
            );
        }
        (None, Some(why)) => {
            let _ = writeln!(
                s,
                "\nThe pruned model is in `model/`; no transformers export: {why}."
            );
        }
        (None, None) => {}
    }
    if let (Some(h), Some(c)) = (r.valid_loss_hardened, r.valid_loss_random_kept) {
        let _ = writeln!(
            s,
            "\nGate check (mean validation loss before the fine-tune, same weights): the learned kept set {h:.4}, random kept sets of the same size {c:.4} (mean of 3). Expected sparsity at the end of the gated phase: {:.4}.",
            r.expected_sparsity_gated.unwrap_or(f64::NAN)
        );
        if let (Some(h), Some(c)) = (r.valid_accuracy_hardened, r.valid_accuracy_random_kept) {
            let _ = writeln!(
                s,
                "Validation accuracy of the same models: learned {:.2}%, random {:.2}% (after distillation without cross entropy the logits' scale is free, so the loss alone can mislead).",
                100.0 * h,
                100.0 * c
            );
        }
    }
    let _ = writeln!(s, "\nSeconds per phase: {:?}.", r.phase_seconds);
    if let Some(from) = &r.dense_from {
        let _ = writeln!(
            s,
            "The dense phase (teacher, baseline and their evaluations) was reused from `{}`, not trained in this run; its seconds are in that run's report.",
            from.display()
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "## What was kept per layer\n\n![kept structure](kept.svg)\n"
    );
    let _ = writeln!(
        s,
        "## Gate values per layer and head (end of gated training)\n\n![gate values](gates.svg)\n"
    );
    let _ = writeln!(
        s,
        "## Training loss, size under the gates and the Lagrange multipliers\n\n![curves](curves.svg)"
    );
    s
}
