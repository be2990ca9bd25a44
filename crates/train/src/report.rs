//! `report.json`, `report.md` and its figures (SVG drawn here: a heatmap of gate values per
//! layer and head, and curves of loss and expected sparsity over the steps).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use shears_layers::{LoadError, ModelConfig, save::write_atomic};

use crate::data::Dataset;
use crate::task::Tally;
use crate::{Experiment, Task};

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
    /// Heads before pruning.
    pub heads_total: usize,
    /// Heads after.
    pub heads_kept: usize,
    /// Heads per layer after.
    pub kept_heads_per_layer: Vec<usize>,
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
    /// Encoder FLOPs per token at `data.max_len`, dense.
    pub flops_per_token_dense: usize,
    /// The same, pruned.
    pub flops_per_token_pruned: usize,
    /// Test accuracy of the dense fine-tuned model (classification).
    pub accuracy_dense: Option<f64>,
    /// Test accuracy of the pruned, fine-tuned model (classification).
    pub accuracy_pruned: Option<f64>,
    /// Test perplexity, dense (LM).
    pub perplexity_dense: Option<f64>,
    /// Test perplexity, pruned (LM).
    pub perplexity_pruned: Option<f64>,
    /// Validation and test metrics, dense.
    pub eval_dense: EvalResult,
    /// Validation and test metrics, pruned.
    pub eval_pruned: EvalResult,
    /// Expected sparsity of the gates at the end of the gated phase, before hardening.
    pub expected_sparsity_gated: Option<f64>,
    /// Mean validation loss of the hardened model before the fine-tune: what the gates
    /// chose.
    pub valid_loss_hardened: Option<f64>,
    /// The same, averaged over 3 seeded random kept sets of the same size on the same weights: the
    /// control that shows the gates learned which units matter.
    pub valid_loss_random_kept: Option<f64>,
    /// Median forward latency of the dense model (ms, `eval.latency_batch` test examples).
    pub latency_ms_dense: f64,
    /// The same, pruned.
    pub latency_ms_pruned: f64,
    /// Batch of the latency measurement.
    pub latency_batch: usize,
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
    /// Dense metrics.
    pub dense_eval: EvalResult,
    /// Pruned metrics.
    pub pruned_eval: EvalResult,
    /// Expected sparsity of the gates at the end of the gated phase.
    pub expected_sparsity: Option<f64>,
    /// Validation metric before the fine-tune: (learned kept set, random kept set).
    pub gate_check: Option<(f64, f64)>,
    /// Latencies (dense, pruned).
    pub latency_ms: (f64, f64),
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
}

/// Assembles the report.
pub fn build(p: Parts<'_>) -> Report {
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
        heads_total: p.dense_config.layers.iter().map(|l| l.n_heads).sum(),
        heads_kept: p.pruned_config.layers.iter().map(|l| l.n_heads).sum(),
        kept_heads_per_layer: p.pruned_config.layers.iter().map(|l| l.n_heads).collect(),
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
        params_dense: p.dense_config.param_count() + head_params,
        params_pruned: p.pruned_config.param_count() + head_params,
        flops_per_token_dense: p.dense_config.flops_per_token(p.exp.data.max_len),
        flops_per_token_pruned: p.pruned_config.flops_per_token(p.exp.data.max_len),
        accuracy_dense: p.dense_eval.test_accuracy,
        accuracy_pruned: p.pruned_eval.test_accuracy,
        perplexity_dense: p.dense_eval.test_perplexity,
        perplexity_pruned: p.pruned_eval.test_perplexity,
        eval_dense: p.dense_eval,
        eval_pruned: p.pruned_eval,
        expected_sparsity_gated: p.expected_sparsity,
        valid_loss_hardened: p.gate_check.map(|c| c.0),
        valid_loss_random_kept: p.gate_check.map(|c| c.1),
        latency_ms_dense: p.latency_ms.0,
        latency_ms_pruned: p.latency_ms.1,
        latency_batch: p.exp.eval.latency_batch.min(p.data.test.len()),
        wall_seconds: p.wall_seconds,
        phase_seconds: p.phase_seconds,
        gate_values: p.gate_values,
        history: p.history,
        config: p.exp.clone(),
    }
}

/// Writes `report.json`, `report.md`, `gates.svg` and `curves.svg` into `dir`.
pub fn write(r: &Report, dir: &Path) -> Result<(), LoadError> {
    let json = serde_json::to_string_pretty(r).expect("report serialises");
    write_atomic(&dir.join("report.json"), json.as_bytes())?;
    write_atomic(
        &dir.join("gates.svg"),
        heatmap_svg(&r.gate_values).as_bytes(),
    )?;
    write_atomic(&dir.join("curves.svg"), curves_svg(&r.history).as_bytes())?;
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
    let _ = writeln!(
        s,
        "| latency, batch {} (ms) | {:.1} | {:.1} | {} |",
        r.latency_batch,
        r.latency_ms_dense,
        r.latency_ms_pruned,
        pct(r.latency_ms_pruned, r.latency_ms_dense)
    );
    if let (Some(a), Some(b)) = (r.accuracy_dense, r.accuracy_pruned) {
        let _ = writeln!(
            s,
            "| test accuracy | {:.2}% | {:.2}% | {:+.2} points |",
            100.0 * a,
            100.0 * b,
            100.0 * (b - a)
        );
    }
    if let (Some(a), Some(b)) = (r.perplexity_dense, r.perplexity_pruned) {
        let _ = writeln!(s, "| test perplexity | {a:.2} | {b:.2} | {} |", pct(b, a));
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
    match (&r.hf_model, &r.hf_model_missing) {
        (Some(dir), _) => {
            let _ = writeln!(
                s,
                "\nThe pruned model is in `model/` (shears) and `{dir}/` (transformers: `BertForSequenceClassification.from_pretrained`, removed heads in `pruned_heads`)."
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
    }
    let _ = writeln!(s, "\nSeconds per phase: {:?}.\n", r.phase_seconds);
    let _ = writeln!(
        s,
        "## Gate values per layer and head (end of gated training)\n\n![gate values](gates.svg)\n"
    );
    let _ = writeln!(
        s,
        "## Training loss and expected sparsity\n\n![curves](curves.svg)"
    );
    s
}

/// A heatmap, rows = layers, columns = heads, value in [0, 1], with the value printed.
pub fn heatmap_svg(values: &[Vec<f64>]) -> String {
    let cols = values.iter().map(Vec::len).max().unwrap_or(0);
    let (cell, left, top) = (44.0, 70.0, 40.0);
    let w = left + cell * cols as f64 + 20.0;
    let h = top + cell * values.len() as f64 + 20.0;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<text x="{left}" y="16">gate value (white = closed, dark = open)</text>"#
    );
    for c in 0..cols {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">h{c}</text>"#,
            left + cell * (c as f64 + 0.5),
            top - 6.0
        );
    }
    for (l, row) in values.iter().enumerate() {
        let y = top + cell * l as f64;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">layer {l}</text>"#,
            left - 8.0,
            y + cell * 0.6
        );
        for (c, &v) in row.iter().enumerate() {
            let v = v.clamp(0.0, 1.0);
            let shade = (255.0 * (1.0 - v)) as u8;
            let color = format!("rgb({shade},{shade},255)");
            let text = if v > 0.5 { "white" } else { "black" };
            let x = left + cell * c as f64;
            let _ = write!(
                s,
                r#"<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{color}" stroke="white"/><text x="{}" y="{}" text-anchor="middle" fill="{text}">{v:.2}</text>"#,
                x + cell / 2.0,
                y + cell * 0.6
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Two stacked line charts over the global step: training loss (every phase, phases
/// separated by dashed lines) and expected vs target sparsity (gated phase).
pub fn curves_svg(history: &[Point]) -> String {
    let (w, ph, left, gap) = (720.0, 200.0, 60.0, 50.0);
    let h = 2.0 * ph + 2.0 * gap + 20.0;
    // Global x: phases laid end to end.
    let mut xs = Vec::with_capacity(history.len());
    let mut offset = 0usize;
    let mut bounds = Vec::new();
    let mut prev: Option<&str> = None;
    let mut last_step = 0;
    for p in history {
        if prev.is_some_and(|q| q != p.phase) {
            offset += last_step;
            bounds.push((offset, p.phase.clone()));
        } else if prev.is_none() {
            bounds.push((0, p.phase.clone()));
        }
        prev = Some(&p.phase);
        last_step = p.step;
        xs.push(offset + p.step);
    }
    let xmax = xs.last().copied().unwrap_or(1).max(1) as f64;
    let sx = |x: usize| left + (w - left - 20.0) * x as f64 / xmax;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let panel = |s: &mut String,
                 y0: f64,
                 title: &str,
                 ymax: f64,
                 series: &[(&str, Vec<(usize, f64)>)]| {
        let sy = |v: f64| y0 + ph - ph * (v / ymax).clamp(0.0, 1.0);
        let _ = write!(
            s,
            r##"<text x="{left}" y="{}">{title}</text><rect x="{left}" y="{y0}" width="{}" height="{ph}" fill="none" stroke="#999"/>"##,
            y0 - 8.0,
            w - left - 20.0
        );
        for k in 0..=4 {
            let v = ymax * k as f64 / 4.0;
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{v:.2}</text>"#,
                left - 6.0,
                sy(v) + 4.0
            );
        }
        for (b, name) in &bounds {
            let x = sx(*b);
            let _ = write!(
                s,
                r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{}" stroke="#bbb" stroke-dasharray="4"/><text x="{}" y="{}" fill="#666">{name}</text>"##,
                y0 + ph,
                x + 4.0,
                y0 + 14.0
            );
        }
        for (i, (label, pts)) in series.iter().enumerate() {
            let color = ["#1f77b4", "#d62728", "#2ca02c"][i % 3];
            let path: Vec<String> = pts
                .iter()
                .map(|&(x, v)| format!("{:.1},{:.1}", sx(x), sy(v)))
                .collect();
            if !path.is_empty() {
                let _ = write!(
                    s,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                    path.join(" ")
                );
            }
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" fill="{color}">{label}</text>"#,
                w - 200.0,
                y0 + 16.0 * (i as f64 + 1.0)
            );
        }
    };
    let loss: Vec<(usize, f64)> = xs.iter().zip(history).map(|(&x, p)| (x, p.loss)).collect();
    let lmax = loss.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-6) * 1.05;
    panel(&mut s, gap, "training loss", lmax, &[("loss", loss)]);
    let sparse: Vec<(usize, f64)> = xs
        .iter()
        .zip(history)
        .filter_map(|(&x, p)| p.expected_sparsity.map(|v| (x, v)))
        .collect();
    let target: Vec<(usize, f64)> = xs
        .iter()
        .zip(history)
        .filter_map(|(&x, p)| p.target_sparsity.map(|v| (x, v)))
        .collect();
    panel(
        &mut s,
        2.0 * gap + ph,
        "expected sparsity of the gated units",
        1.0,
        &[("expected", sparse), ("target", target)],
    );
    s.push_str("</svg>\n");
    s
}
