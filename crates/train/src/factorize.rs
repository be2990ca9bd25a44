//! `factorize`: low-rank factorization of a saved model on real text. Calibration statistics
//! come from the training split of a dataset file, the task metric (accuracy or perplexity)
//! and latency are measured on its test split before and after, and the factorized model and
//! a report are written (the split is the one `train-gated` uses for the same file and seed,
//! so a `train-gated` model is evaluated on rows it never trained on).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use serde::Serialize;
use shears_factorize::Method;
use shears_layers::{Tokenizer, save};
use shears_pruners::{FactorizeReport, RankPlan, TaskModel, factorize_model};

use crate::derived::{DataChoice, Metrics, calibrate, dataset, task_and_len, test_metrics};
use crate::measure::paired_latency;
use crate::taskfile::{TaskInfo, load_task_model, save_task_model};
use crate::{Task, TrainError};

/// What to factorize and how.
#[derive(Debug, Clone)]
pub struct FactorizeOptions {
    /// The dataset file (CSV or JSON lines, `.bz2` allowed).
    pub data: PathBuf,
    /// Text column (default: the model's `task.json`, else `text`).
    pub text_column: Option<String>,
    /// Label column (default: the model's `task.json`, else `label`).
    pub label_column: Option<String>,
    /// Ranks.
    pub plan: RankPlan,
    /// Solution method.
    pub method: Method,
    /// Calibrate on at least this many training tokens (padding excluded).
    pub calibration_tokens: usize,
    /// Seed of the train / validation / test split (used only when the model does not
    /// record its data in `task.json`, or with `other_data`).
    pub seed: u64,
    /// Split fractions (the same rule as `seed`).
    pub split: [f64; 3],
    /// Allow `data` to be another file than the one the model was trained on (its "test"
    /// split is then not the held-out split of training). Without it that is an error.
    pub other_data: bool,
    /// Examples per evaluation / calibration batch.
    pub batch_size: usize,
    /// Timed forward passes.
    pub latency_repeats: usize,
    /// What to do when the output directory exists and is not empty: refuse (the default,
    /// before any work) or replace it once the new one is complete (`--force`).
    pub existing: save::Existing,
}

impl FactorizeOptions {
    /// The dataset part of the options.
    pub fn data_choice(&self) -> DataChoice {
        DataChoice {
            data: self.data.clone(),
            text_column: self.text_column.clone(),
            label_column: self.label_column.clone(),
            seed: self.seed,
            split: self.split,
            other_data: self.other_data,
        }
    }
}

impl Default for FactorizeOptions {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            text_column: None,
            label_column: None,
            plan: RankPlan::Budget(0.5),
            method: Method::default(),
            calibration_tokens: 4096,
            seed: 42,
            split: [0.8, 0.1, 0.1],
            other_data: false,
            batch_size: 32,
            latency_repeats: 10,
            existing: save::Existing::Refuse,
        }
    }
}

/// What `factorize` measured (`report.json`).
#[derive(Debug, Clone, Serialize)]
pub struct FactorizeSummary {
    /// Model directory.
    pub model: String,
    /// Dataset file.
    pub dataset: String,
    /// Method.
    pub method: String,
    /// Plan.
    pub plan: String,
    /// Backend.
    pub backend: String,
    /// Per projection, and totals.
    pub factorization: FactorizeReport,
    /// Encoder FLOPs per token before (at the evaluation length).
    pub flops_per_token_before: usize,
    /// After.
    pub flops_per_token_after: usize,
    /// Median forward latency before (ms).
    pub latency_ms_before: f64,
    /// After.
    pub latency_ms_after: f64,
    /// Examples per timed batch.
    pub latency_batch: usize,
    /// Test-split examples evaluated (`None`: a bare backbone, no task metric).
    pub test_examples: Option<usize>,
    /// Test metrics before.
    pub before: Option<Metrics>,
    /// After.
    pub after: Option<Metrics>,
    /// Whole command, seconds.
    pub wall_seconds: f64,
}

/// Factorizes the model in `model_dir` and writes the result and its report to `out`
/// (nothing is written unless everything succeeds).
pub fn run_factorize<B: Backend>(
    model_dir: &Path,
    opts: &FactorizeOptions,
    out: &Path,
    backend: &str,
    device: &B::Device,
) -> Result<FactorizeSummary, TrainError> {
    let started = Instant::now();
    save::check_output(out, opts.existing)?;
    let (model, info) = load_task_model::<B>(model_dir, device)?;
    let tokenizer = Tokenizer::from_dir(model_dir)?;
    let config = model.backbone.config().clone();
    let (task, max_len) = task_and_len(&model, info.as_ref());
    let data = dataset(
        &opts.data_choice(),
        task,
        info.as_ref(),
        &tokenizer,
        max_len,
    )?;
    let calibrator = calibrate(
        &model,
        &data,
        opts.calibration_tokens,
        opts.batch_size,
        device,
    )?;
    let (backbone, report) =
        factorize_model(model.backbone.clone(), &calibrator, &opts.plan, opts.method)?;
    let factorized = TaskModel {
        backbone,
        head: model.head.clone(),
    };

    let before = test_metrics(&model, task, &data, opts.batch_size, device);
    let after = test_metrics(&factorized, task, &data, opts.batch_size, device);
    let lat = paired_latency(
        &model,
        &factorized,
        &data.test,
        data.pad_id,
        opts.batch_size,
        opts.latency_repeats,
        device,
    );
    let new_config = factorized.backbone.config();
    let summary = FactorizeSummary {
        model: model_dir.display().to_string(),
        dataset: opts.data.display().to_string(),
        method: format!("{:?}", opts.method),
        plan: format!("{:?}", opts.plan),
        backend: backend.to_string(),
        flops_per_token_before: config.flops_per_token(max_len),
        flops_per_token_after: new_config.flops_per_token(max_len),
        latency_ms_before: lat.a_ms,
        latency_ms_after: lat.b_ms,
        latency_batch: opts.batch_size.min(data.test.len()),
        test_examples: task.map(|_| data.test.len()),
        before,
        after,
        wall_seconds: started.elapsed().as_secs_f64(),
        factorization: report,
    };
    let info = info.unwrap_or(TaskInfo {
        task: task.unwrap_or(Task::Lm),
        labels: data.label_names.clone(),
        text_column: opts.text_column.clone().unwrap_or_else(|| "text".into()),
        label_column: opts.label_column.clone().unwrap_or_else(|| "label".into()),
        max_len,
        data: Some(crate::taskfile::DataSource::rows(
            opts.data.clone(),
            opts.seed,
            opts.split,
        )),
        all_classes: false,
    });
    let json = serde_json::to_string_pretty(&summary).expect("summary serialises");
    let md = markdown(&summary);
    save::write_dir_atomic(out, opts.existing, |tmp| {
        save_task_model(&factorized, &info, model_dir, &tmp.join("model"))?;
        save::write_atomic(&tmp.join("report.json"), json.as_bytes())?;
        save::write_atomic(&tmp.join("report.md"), md.as_bytes())
    })?;
    Ok(summary)
}

/// The readable report.
pub fn markdown(s: &FactorizeSummary) -> String {
    let r = &s.factorization;
    let mut m = String::new();
    let _ = writeln!(m, "# Low-rank factorization\n");
    let _ = writeln!(
        m,
        "Model `{}`, calibration and test data `{}`, {} calibration tokens. Method {}, plan {}. Backend {}. Wall time {:.0} s.\n",
        s.model, s.dataset, r.calibration_tokens, s.method, s.plan, s.backend, s.wall_seconds
    );
    let pct = |a: f64, b: f64| format!("{:.1}%", 100.0 * a / b.max(1e-12));
    let _ = writeln!(m, "| | before | after | after / before |");
    let _ = writeln!(m, "|---|---:|---:|---:|");
    let _ = writeln!(
        m,
        "| parameters | {} | {} | {} |",
        r.params_before,
        r.params_after,
        pct(r.params_after as f64, r.params_before as f64)
    );
    let _ = writeln!(
        m,
        "| encoder FLOPs / token | {} | {} | {} |",
        s.flops_per_token_before,
        s.flops_per_token_after,
        pct(
            s.flops_per_token_after as f64,
            s.flops_per_token_before as f64
        )
    );
    let _ = writeln!(
        m,
        "| latency, batch {} (ms) | {:.1} | {:.1} | {} |",
        s.latency_batch,
        s.latency_ms_before,
        s.latency_ms_after,
        pct(s.latency_ms_after, s.latency_ms_before)
    );
    if let (Some(b), Some(a)) = (&s.before, &s.after) {
        if let (Some(x), Some(y)) = (b.accuracy, a.accuracy) {
            let _ = writeln!(
                m,
                "| test accuracy ({} examples) | {:.2}% | {:.2}% | {:+.2} points |",
                s.test_examples.unwrap_or(0),
                100.0 * x,
                100.0 * y,
                100.0 * (y - x)
            );
        }
        if let (Some(x), Some(y)) = (b.perplexity, a.perplexity) {
            let _ = writeln!(m, "| test perplexity | {x:.2} | {y:.2} | {} |", pct(y, x));
        }
    }
    let _ = writeln!(
        m,
        "\n## Per projection\n\n| projection | in x out | rank | params before | params after | nmse |\n|---|---|---:|---:|---:|---:|"
    );
    for p in &r.projections {
        let rank = |r: Option<usize>| r.map_or("dense".to_string(), |r| r.to_string());
        let _ = writeln!(
            m,
            "| {} | {} x {} | {} -> {} | {} | {} | {} |",
            p.path,
            p.n_in,
            p.n_out,
            rank(p.rank_before),
            rank(p.rank_after),
            p.params_before,
            p.params_after,
            p.nmse.map_or("-".into(), |e| format!("{e:.4}"))
        );
    }
    m
}
