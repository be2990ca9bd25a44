//! `sparsify`: masks on the weights of a saved model, squashed into plain weights. The
//! criterion reads the weights (and, for Wanda, projection-input statistics from the training
//! split of a dataset file); the task metric and latency are measured on the test split
//! before and after, and the sparsified model and a report are written.
//!
//! Masks zero weights but keep every shape, so a dense CPU kernel does the same work: the
//! report's latency shows it. Structured removal (`train-gated`, `prune-heads`) is what makes
//! a model faster.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use serde::Serialize;
use shears_layers::{Tokenizer, save};
use shears_sparsify::{
    BlockNorm, Config, Layout, Magnitude, MaskMap, NM, Norm, Sparsifier, Wanda, apply_masks,
    compute_masks, select_params,
};

use crate::derived::{DataChoice, Metrics, calibrate, dataset, task_and_len, test_metrics};
use crate::measure::paired_latency;
use crate::taskfile::{TaskInfo, load_task_model, save_task_model};
use shears_pruners::TaskModel;

use crate::{Task, TrainError};

/// The default selection: every attention and feed-forward projection weight of a shears
/// BERT or GPT-2 (embeddings, norms, biases and the task head stay dense).
pub const DEFAULT_PATTERNS: [&str; 2] = ["layers.*.attention.*.weight", "layers.*.ffn.*.weight"];

/// How masks are chosen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum SparsifyMethod {
    /// torch's `DataNormSparsifier`: the lowest-norm blocks, then the lowest elements inside
    /// each (`zeros_per_block`, default the whole block).
    BlockNorm {
        /// `[rows, cols]` of a block.
        block: [usize; 2],
        /// Zeros in each chosen block.
        zeros_per_block: Option<usize>,
        /// Block norm.
        norm: Norm,
    },
    /// `n` zeros in every `m` consecutive weights of one output (along the input axis, the
    /// layout sparse tensor cores use for 2:4). Ignores the sparsity level.
    NM {
        /// Zeros per group.
        n: usize,
        /// Group size.
        m: usize,
    },
    /// The smallest `|w|` of each tensor.
    Magnitude,
    /// Wanda: the smallest `|w_ij| · ‖x_j‖₂` of each output, input norms from calibration.
    Wanda,
}

impl std::str::FromStr for SparsifyMethod {
    type Err = TrainError;

    /// `block-norm[:RxC[:Z]]`, `nm:N:M` (e.g. `nm:2:4`), `magnitude`, `wanda`.
    fn from_str(s: &str) -> Result<Self, TrainError> {
        let bad = |why: &str| TrainError::Config {
            source_name: "--method".into(),
            message: format!(
                "`{s}`: {why} (expected block-norm[:RxC[:Z]], nm:N:M, magnitude or wanda)"
            ),
        };
        let num = |t: &str| {
            t.parse::<usize>()
                .map_err(|_| bad(&format!("`{t}` is not a count")))
        };
        let parts: Vec<&str> = s.split(':').collect();
        Ok(match parts.as_slice() {
            ["magnitude"] => Self::Magnitude,
            ["wanda"] => Self::Wanda,
            ["nm", n, m] => Self::NM {
                n: num(n)?,
                m: num(m)?,
            },
            ["block-norm", rest @ ..] if rest.len() <= 2 => {
                let block = match rest.first() {
                    None => [1, 4],
                    Some(b) => {
                        let (r, c) = b
                            .split_once('x')
                            .ok_or_else(|| bad(&format!("block `{b}` is not RxC")))?;
                        [num(r)?, num(c)?]
                    }
                };
                Self::BlockNorm {
                    block,
                    zeros_per_block: rest.get(1).map(|z| num(z)).transpose()?,
                    norm: Norm::L2,
                }
            }
            _ => return Err(bad("unknown method")),
        })
    }
}

/// What to sparsify and how.
#[derive(Debug, Clone)]
pub struct SparsifyOptions {
    /// The dataset file (CSV or JSON lines, `.bz2` allowed): test metric, latency, and
    /// Wanda's calibration.
    pub data: PathBuf,
    /// Text column (default: the model's `task.json`, else `text`).
    pub text_column: Option<String>,
    /// Label column (default: the model's `task.json`, else `label`).
    pub label_column: Option<String>,
    /// The criterion.
    pub method: SparsifyMethod,
    /// Fraction of each selected tensor to zero, in [0, 1] (ignored by N:M).
    pub sparsity: f64,
    /// Parameter path patterns (`*` one segment, `**` any number).
    pub patterns: Vec<String>,
    /// Wanda: calibrate on at least this many training tokens.
    pub calibration_tokens: usize,
    /// Seed of the train / validation / test split (see [`FactorizeOptions::seed`]).
    pub seed: u64,
    /// Split fractions.
    pub split: [f64; 3],
    /// Allow another file than the model's training data (see
    /// [`FactorizeOptions::other_data`]).
    pub other_data: bool,
    /// Examples per evaluation batch.
    pub batch_size: usize,
    /// Timed forward passes.
    pub latency_repeats: usize,
    /// What to do when the output directory exists and is not empty: refuse (the default,
    /// before any work) or replace it once the new one is complete (`--force`).
    pub existing: save::Existing,
}

impl Default for SparsifyOptions {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            text_column: None,
            label_column: None,
            method: SparsifyMethod::Magnitude,
            sparsity: 0.5,
            patterns: DEFAULT_PATTERNS.iter().map(|p| p.to_string()).collect(),
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

/// One sparsified tensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorSparsity {
    /// Parameter path.
    pub path: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Zeroed elements.
    pub zeros: usize,
    /// `zeros / elements`.
    pub sparsity: f64,
}

/// What `sparsify` measured (`report.json`).
#[derive(Debug, Clone, Serialize)]
pub struct SparsifySummary {
    /// Model directory.
    pub model: String,
    /// Dataset file.
    pub dataset: String,
    /// Method.
    pub method: SparsifyMethod,
    /// Requested sparsity.
    pub sparsity: f64,
    /// Patterns.
    pub patterns: Vec<String>,
    /// Backend.
    pub backend: String,
    /// Per tensor.
    pub tensors: Vec<TensorSparsity>,
    /// Elements of the selected tensors.
    pub selected_elements: usize,
    /// Zeros among them.
    pub selected_zeros: usize,
    /// Parameters of the whole model (backbone and head).
    pub params_total: usize,
    /// Wanda's calibration tokens (0 for other methods).
    pub calibration_tokens: usize,
    /// Median forward latency before (ms).
    pub latency_ms_before: f64,
    /// After (the same shapes: expect the same).
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

/// Sparsifies the model in `model_dir` and writes the result (masks squashed into its
/// weights) and a report to `out` (nothing is written unless everything succeeds).
pub fn run_sparsify<B: Backend>(
    model_dir: &Path,
    opts: &SparsifyOptions,
    out: &Path,
    backend: &str,
    device: &B::Device,
) -> Result<SparsifySummary, TrainError> {
    let started = Instant::now();
    save::check_output(out, opts.existing)?;
    if !(0.0..=1.0).contains(&opts.sparsity) {
        return Err(TrainError::OutOfRange {
            key: "sparsity".into(),
            value: opts.sparsity.to_string(),
            expected: "a fraction in [0, 1]".into(),
        });
    }
    let (model, info) = load_task_model::<B>(model_dir, device)?;
    let tokenizer = Tokenizer::from_dir(model_dir)?;
    let (task, max_len) = task_and_len(&model, info.as_ref());
    let choice = DataChoice {
        data: opts.data.clone(),
        text_column: opts.text_column.clone(),
        label_column: opts.label_column.clone(),
        seed: opts.seed,
        split: opts.split,
        other_data: opts.other_data,
    };
    let data = dataset(&choice, task, info.as_ref(), &tokenizer, max_len)?;
    let patterns: Vec<&str> = opts.patterns.iter().map(String::as_str).collect();
    let config = Config::default().with_sparsity_level(opts.sparsity);

    let mut calibration_tokens = 0;
    let masks = match &opts.method {
        SparsifyMethod::BlockNorm {
            block,
            zeros_per_block,
            norm,
        } => {
            let mut c = config.with_block(*block).with_norm(*norm);
            if let Some(z) = zeros_per_block {
                c = c.with_zeros_per_block(*z);
            }
            masks_for(&model, &patterns, &BlockNorm, &c)?
        }
        SparsifyMethod::NM { n, m } => masks_for(
            &model,
            &patterns,
            &NM::along_columns(*n, *m).map_err(sparsify_err)?,
            &config,
        )?,
        SparsifyMethod::Magnitude => masks_for(&model, &patterns, &Magnitude, &config)?,
        SparsifyMethod::Wanda => {
            let cal = calibrate(
                &model,
                &data,
                opts.calibration_tokens,
                opts.batch_size,
                device,
            )?;
            calibration_tokens = cal.tokens();
            let mut wanda = Wanda::new(Layout::InOut);
            let selected =
                select_params::<B, _>(&model.backbone, &patterns).map_err(sparsify_err)?;
            for path in selected.keys() {
                let projection = path.strip_suffix(".weight").unwrap_or(path);
                let stats = cal.get(projection).ok_or_else(|| TrainError::Config {
                    source_name: "--method wanda".into(),
                    message: format!(
                        "`{path}` is not a projection weight with calibration inputs (Wanda needs one; select projections with --pattern)"
                    ),
                })?;
                let norms = stats.input_norms().iter().map(|&v| v as f32).collect();
                wanda.insert_norms(path.clone(), norms);
            }
            masks_for(&model, &patterns, &wanda, &config)?
        }
    };
    let sparse = TaskModel {
        backbone: apply_masks(model.backbone.clone(), &masks).map_err(sparsify_err)?,
        head: model.head.clone(),
    };
    let tensors: Vec<TensorSparsity> = masks
        .iter()
        .map(|(path, mask)| TensorSparsity {
            path: path.clone(),
            shape: mask.shape().to_vec(),
            zeros: mask.count_zeros(),
            sparsity: mask.sparsity(),
        })
        .collect();

    let before = test_metrics(&model, task, &data, opts.batch_size, device);
    let after = test_metrics(&sparse, task, &data, opts.batch_size, device);
    let lat = paired_latency(
        &model,
        &sparse,
        &data.test,
        data.pad_id,
        opts.batch_size,
        opts.latency_repeats,
        device,
    );
    let summary = SparsifySummary {
        model: model_dir.display().to_string(),
        dataset: opts.data.display().to_string(),
        method: opts.method.clone(),
        sparsity: opts.sparsity,
        patterns: opts.patterns.clone(),
        backend: backend.to_string(),
        selected_elements: masks.values().map(|m| m.len()).sum(),
        selected_zeros: tensors.iter().map(|t| t.zeros).sum(),
        tensors,
        params_total: model.num_params(),
        calibration_tokens,
        latency_ms_before: lat.a_ms,
        latency_ms_after: lat.b_ms,
        latency_batch: opts.batch_size.min(data.test.len()),
        test_examples: task.map(|_| data.test.len()),
        before,
        after,
        wall_seconds: started.elapsed().as_secs_f64(),
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
        save_task_model(&sparse, &info, model_dir, &tmp.join("model"))?;
        save::write_atomic(&tmp.join("report.json"), json.as_bytes())?;
        save::write_atomic(&tmp.join("report.md"), md.as_bytes())
    })?;
    Ok(summary)
}

fn masks_for<B: Backend, S: Sparsifier>(
    model: &TaskModel<B>,
    patterns: &[&str],
    criterion: &S,
    config: &Config,
) -> Result<MaskMap, TrainError> {
    compute_masks::<B, _, S>(&model.backbone, patterns, criterion, config).map_err(sparsify_err)
}

fn sparsify_err(e: shears_sparsify::SparsifyError) -> TrainError {
    TrainError::Sparsify(e)
}

/// The readable report.
pub fn markdown(s: &SparsifySummary) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# Sparsification\n");
    let _ = writeln!(
        m,
        "Model `{}`, data `{}`. Method {:?}, requested sparsity {}, patterns `{}`. Backend {}. Wall time {:.0} s.\n",
        s.model,
        s.dataset,
        s.method,
        s.sparsity,
        s.patterns.join("`, `"),
        s.backend,
        s.wall_seconds
    );
    let pct = |a: f64, b: f64| format!("{:.1}%", 100.0 * a / b.max(1e-12));
    let _ = writeln!(m, "| | before | after | after / before |");
    let _ = writeln!(m, "|---|---:|---:|---:|");
    let _ = writeln!(
        m,
        "| zeros in the selected weights | 0 | {} of {} | {} |",
        s.selected_zeros,
        s.selected_elements,
        pct(s.selected_zeros as f64, s.selected_elements as f64)
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
        "\nThe masked weights are stored as zeros in dense tensors: the model has {} parameters before and after, and a dense kernel does the same work (hence the latency). Structured pruning (`train-gated`) removes work.",
        s.params_total
    );
    let _ = writeln!(
        m,
        "\n## Per tensor\n\n| tensor | shape | zeros | sparsity |\n|---|---|---:|---:|"
    );
    for t in &s.tensors {
        let _ = writeln!(
            m,
            "| {} | {:?} | {} | {:.3} |",
            t.path, t.shape, t.zeros, t.sparsity
        );
    }
    m
}
