//! `prune`: post-training pruning of a fine-tuned model in minutes, without retraining
//! (Kwon et al. 2022, see [`shears_pruners::search`]): the diagonal Fisher of head and neuron
//! masks from training examples, the mask search to a FLOPs target or to a latency target
//! measured on this machine, the rearrangement inside each layer, physical removal; the task
//! metric and latency before and after, and the smaller model in shears' format and as a
//! Hugging Face directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::prelude::*;
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::Serialize;
use shears_gates::Draw;
use shears_layers::{Tokenizer, save};
use shears_pruners::{
    BlockFit, CurveGroup, FitOutcome, PrunerError, Selection, TaskModel, UnitCosts,
    apply_selection, fold_scales, mask_gradients, measure_curves, rearrange, search,
    teacher_target, tune_scales,
};

use crate::data::{Split, make_batch};
use crate::derived::{DataChoice, Metrics, dataset, task_and_len};
use crate::measure::{Latency, PairedDelta, latency_at, paired_delta, paired_latency, token_rows};
use crate::task::{evaluate, evaluate_rows, loss};
use crate::taskfile::{HF_DIR, save_task_model};
use crate::{Task, TrainError};

/// What to prune and how.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// The dataset: the model's recorded training data unless another file is allowed.
    pub data: DataChoice,
    /// What to prune to.
    pub target: PruneTarget,
    /// Training examples the Fisher information is estimated from (drawn without
    /// replacement with `data.seed`; all when the split has fewer).
    pub samples: usize,
    /// Examples per mini-batch of the Fisher estimate (one gradient per mini-batch).
    pub batch_size: usize,
    /// Rearrange the removed units inside each layer with the block-diagonal Fisher.
    pub rearrange: bool,
    /// Tune the kept units' scales layer by layer by least squares (mask tuning) and fold
    /// them into the output projections. Off by default: on a fine-tuned MiniLM it lowered
    /// validation accuracy at 60% and 50% of the FLOPs and raised it at 40%, for about five
    /// times the wall time (docs/POSTTRAIN.md).
    pub tune: bool,
    /// Examples per evaluation batch and per latency batch.
    pub eval_batch_size: usize,
    /// Timed forward-pass pairs.
    pub latency_repeats: usize,
    /// Refuse or replace an existing, non-empty output directory.
    pub existing: save::Existing,
    /// A line on stderr after each step.
    pub progress: bool,
}

/// What `prune` prunes to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PruneTarget {
    /// At most this fraction of the encoder's FLOPs per token at the model's recorded
    /// sequence length, in (0, 1].
    Flops {
        /// The fraction kept.
        fraction: f64,
    },
    /// At most this fraction of the dense model's latency, measured on this machine (the
    /// backend and threads `prune` runs with) at `batch` rows of `seq` tokens.
    Latency {
        /// The fraction of the dense latency, in (0, 1].
        ratio: f64,
        /// Rows per forward pass.
        batch: usize,
        /// Tokens per row (`None`: the model's recorded sequence length).
        seq: Option<usize>,
    },
}

impl PruneTarget {
    /// The fraction of the cost kept.
    pub fn fraction(&self) -> f64 {
        match *self {
            Self::Flops { fraction } => fraction,
            Self::Latency { ratio, .. } => ratio,
        }
    }
}

/// The latency model `prune --target-latency` searched with, and how it held.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyFit {
    /// Rows per timed forward pass.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// Timed pairs per point.
    pub repeats: usize,
    /// The measured curves, per group of layers of one shape.
    pub groups: Vec<CurveGroup>,
    /// The latency left with every head and neuron removed, as the curves predict it
    /// (a fraction of the dense model's).
    pub fixed: f64,
    /// The pruned model's latency the curves predict.
    pub predicted: f64,
    /// Its measured latency (median of paired ratios, timed after removal).
    pub measured: f64,
    /// The dense model's median latency, ms.
    pub dense_ms: f64,
    /// The pruned model's, ms.
    pub pruned_ms: f64,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            data: DataChoice {
                data: PathBuf::new(),
                text_column: None,
                label_column: None,
                seed: 42,
                split: [0.8, 0.1, 0.1],
                other_data: false,
            },
            target: PruneTarget::Flops { fraction: 0.6 },
            samples: 2048,
            batch_size: 32,
            rearrange: true,
            tune: false,
            eval_batch_size: 32,
            latency_repeats: 10,
            existing: save::Existing::Refuse,
            progress: false,
        }
    }
}

/// Kept units of one layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerKept {
    /// Heads kept (of the model's heads before).
    pub heads: usize,
    /// Heads before.
    pub heads_before: usize,
    /// Neurons kept.
    pub neurons: usize,
    /// Neurons before.
    pub neurons_before: usize,
}

/// Seconds per step of `prune`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PruneTimes {
    /// Loading the model and data.
    pub load: f64,
    /// The mask gradients.
    pub fisher: f64,
    /// Measuring the latency curves (latency target only).
    pub curves: f64,
    /// Search and rearrangement.
    pub search: f64,
    /// Mask tuning.
    pub tune: f64,
    /// Physical removal.
    pub remove: f64,
    /// Validation and test metrics of both models.
    pub evaluate: f64,
    /// Latency.
    pub latency: f64,
    /// Writing the outputs.
    pub write: f64,
}

/// What `prune` measured (`report.json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PruneSummary {
    /// Model directory.
    pub model: String,
    /// Dataset file.
    pub dataset: String,
    /// Backend.
    pub backend: String,
    /// The task.
    pub task: Task,
    /// The target.
    pub target: PruneTarget,
    /// The latency curves, prediction and measurement (latency target only).
    pub latency_fit: Option<LatencyFit>,
    /// Sequence length the FLOPs are counted at (the model's recorded `max_len`).
    pub seq: usize,
    /// Training examples and mini-batches of the Fisher estimate.
    pub samples: usize,
    /// Mini-batches.
    pub batches: usize,
    /// Whether the removed units were rearranged inside each layer.
    pub rearranged: bool,
    /// Mask tuning, per block (empty without it).
    pub fits: Vec<BlockFit>,
    /// Per layer.
    pub layers: Vec<LayerKept>,
    /// Encoder FLOPs per token before.
    pub flops_per_token_before: usize,
    /// After.
    pub flops_per_token_after: usize,
    /// Parameters before (embeddings and head included).
    pub params_before: usize,
    /// After.
    pub params_after: usize,
    /// Parameters of the layer stack before (what pruning can remove).
    pub layer_params_before: usize,
    /// After.
    pub layer_params_after: usize,
    /// Summed Fisher importance of the kept units over that of all units.
    pub importance_kept: f64,
    /// Validation metrics before.
    pub valid_before: Metrics,
    /// After.
    pub valid_after: Metrics,
    /// Test metrics before.
    pub test_before: Metrics,
    /// After.
    pub test_after: Metrics,
    /// The test metric's change with its paired 95% interval (accuracy points as a
    /// fraction, or the relative perplexity change).
    pub test_delta: PairedDelta,
    /// Latency at the evaluation batch (padded test examples).
    pub latency_batch: Latency,
    /// Latency at batch 1, `seq` tokens.
    pub latency_single: Latency,
    /// Seconds per step.
    pub seconds: PruneTimes,
    /// The whole command.
    pub wall_seconds: f64,
}

fn metrics(task: Task, t: crate::task::Tally) -> Metrics {
    Metrics {
        loss: t.loss(),
        accuracy: (task == Task::Classification).then(|| t.accuracy()),
        perplexity: (task == Task::Lm).then(|| t.perplexity()),
    }
}

/// Prunes the model in `model_dir` to `opts.target_flops` and writes the smaller model
/// (`model/`, `hf-model/`) and its report to `out` (nothing is written unless everything
/// succeeds).
pub fn run_prune<B: Backend>(
    model_dir: &Path,
    opts: &PruneOptions,
    out: &Path,
    backend: &str,
    device: &B::Device,
) -> Result<PruneSummary, TrainError> {
    let started = Instant::now();
    let (key, what) = match opts.target {
        PruneTarget::Flops { .. } => ("target-flops", "a fraction of the FLOPs kept"),
        PruneTarget::Latency { .. } => ("target-latency", "a fraction of the dense latency"),
    };
    let fraction = opts.target.fraction();
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(TrainError::OutOfRange {
            key: key.into(),
            value: fraction.to_string(),
            expected: format!("{what} in (0, 1]"),
        });
    }
    if let PruneTarget::Latency { batch: 0, .. } = opts.target {
        return Err(TrainError::OutOfRange {
            key: "latency-batch".into(),
            value: "0".into(),
            expected: "at least 1".into(),
        });
    }
    for (key, v) in [("samples", opts.samples), ("batch-size", opts.batch_size)] {
        if v == 0 {
            return Err(TrainError::OutOfRange {
                key: key.into(),
                value: "0".into(),
                expected: "at least 1".into(),
            });
        }
    }
    save::check_output(out, opts.existing)?;
    let (model, info) = crate::taskfile::load_task_model::<B>(model_dir, device)?;
    let tokenizer = Tokenizer::from_dir(model_dir)?;
    let config = model.backbone.config().clone();
    let (task, seq) = task_and_len(&model, info.as_ref());
    let latency_shape = match opts.target {
        PruneTarget::Latency { batch, seq: s, .. } => {
            let s = s.unwrap_or(seq);
            if s == 0 || s > config.max_len() {
                return Err(TrainError::OutOfRange {
                    key: "latency-seq".into(),
                    value: s.to_string(),
                    expected: format!("1 to the model's {} positions", config.max_len()),
                });
            }
            Some((batch, s))
        }
        PruneTarget::Flops { .. } => None,
    };
    let say = |what: String| {
        if opts.progress {
            eprintln!("{what}");
        }
    };
    let Some(task) = task else {
        return Err(TrainError::Config {
            source_name: model_dir.display().to_string(),
            message: "a bare encoder has no task loss to rank its units with: prune a \
                      sequence classifier (a `train-gated` output or a Hugging Face \
                      `...ForSequenceClassification`) or a GPT-2 language model"
                .into(),
        });
    };
    // The recorded training data unless another file is given.
    let mut choice = opts.data.clone();
    if choice.data.as_os_str().is_empty() {
        choice.data = info
            .as_ref()
            .and_then(|i| i.data.as_ref())
            .map(|d| d.path.clone())
            .ok_or_else(|| TrainError::Config {
                source_name: model_dir.display().to_string(),
                message: "the model records no training data (no `data` in its task.json): \
                          name the dataset to draw the Fisher samples from (--data)"
                    .into(),
            })?;
    }
    let data = dataset(&choice, Some(task), info.as_ref(), &tokenizer, seq)?;
    let mut order: Vec<usize> = (0..data.train.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(opts.data.seed));
    order.truncate(opts.samples);
    let batches: Vec<&[usize]> = order.chunks(opts.batch_size).collect();
    let t_load = started.elapsed().as_secs_f64();
    say(format!(
        "    load {t_load:.1} s ({} training examples, {} in {} Fisher batches)",
        data.train.len(),
        order.len(),
        batches.len()
    ));

    // The Fisher information of the masks: the model's weights do not require gradients
    // (`from_inner` keeps the loaded parameters' flag, false), only the masks do.
    let t = Instant::now();
    let ad_model = TaskModel::<Autodiff<B>>::from_inner(model.clone());
    let grads = mask_gradients::<Autodiff<B>>(&config, batches.len(), device, |i, masks| {
        let b = make_batch::<Autodiff<B>>(&data.train, batches[i], data.pad_id, device);
        loss(&ad_model, b.input.with_masks(masks), b.labels, Draw::Eval).0
    });
    drop(ad_model);
    let importance = grads.fisher();
    let t_fisher = t.elapsed().as_secs_f64();
    say(format!("  fisher {t_fisher:.1} s"));

    // The costs: FLOPs, or latency curves timed on rows of the target's shape.
    let t = Instant::now();
    let timed_rows = latency_shape.map(|(b, s)| token_rows(&data.train, b, s));
    // The dense model against `variant` on all of `rows`.
    let against_dense = |variant: &TaskModel<B>, rows: &Split| {
        paired_latency(
            &model,
            variant,
            rows,
            data.pad_id,
            rows.len(),
            opts.latency_repeats,
            device,
        )
    };
    let (costs, groups) = match &timed_rows {
        None => (UnitCosts::flops(&config, seq)?, None),
        Some(rows) => {
            say(format!(
                "  curves: timing the model with each layer group pruned to each point of its \
                 curves, against the dense model, at batch {} x {} tokens (a minute or more)",
                rows.len(),
                rows.ids[0].len()
            ));
            let groups = measure_curves(&config, |sel| -> Result<f64, TrainError> {
                let variant = TaskModel {
                    backbone: apply_selection(model.backbone.clone(), sel)?,
                    head: model.head.clone(),
                };
                Ok(against_dense(&variant, rows).ratio)
            })?;
            (UnitCosts::latency(&config, &groups)?, Some(groups))
        }
    };
    let t_curves = t.elapsed().as_secs_f64();
    if groups.is_some() {
        say(format!("  curves {t_curves:.1} s"));
    }

    let t = Instant::now();
    let out_of_reach = |e: PrunerError| match e {
        PrunerError::TargetOutOfReach { reachable, .. } => TrainError::OutOfRange {
            key: key.into(),
            value: fraction.to_string(),
            expected: format!(
                "at least {:.4}: what stays with every head and neuron removed{}",
                1.0 - reachable,
                if groups.is_some() { " (measured)" } else { "" }
            ),
        },
        e => e.into(),
    };
    let mut selection =
        search(&importance, &costs, fraction * costs.total).map_err(out_of_reach)?;
    if opts.rearrange {
        selection = rearrange(&selection, &grads);
    }
    let t_search = t.elapsed().as_secs_f64();
    say(format!("  search {t_search:.2} s"));

    // Mask tuning toward the same model pruned about half as far (the reference's target),
    // on the Fisher samples.
    let t = Instant::now();
    let mut backbone = model.backbone.clone();
    let mut fits = Vec::new();
    if opts.tune {
        let teacher = teacher_target(&importance, &costs, fraction)?;
        let inputs: Vec<_> = batches
            .iter()
            .map(|idx| make_batch::<B>(&data.train, idx, data.pad_id, device).input)
            .collect();
        let classifier = task == Task::Classification;
        let (scales, f) = tune_scales(
            &backbone, &selection, &backbone, &teacher, &inputs, classifier,
        );
        backbone = fold_scales(backbone, &scales)?;
        fits = f;
    }
    let t_tune = t.elapsed().as_secs_f64();
    if opts.tune {
        say(format!("    tune {t_tune:.1} s"));
    }

    let t = Instant::now();
    let pruned = TaskModel {
        backbone: apply_selection(backbone, &selection)?,
        head: model.head.clone(),
    };
    let new_config = pruned.backbone.config().clone();
    let t_remove = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let bs = opts.eval_batch_size.max(1);
    let valid = |m: &TaskModel<B>| metrics(task, evaluate(m, &data.valid, data.pad_id, bs, device));
    let (valid_before, valid_after) = (valid(&model), valid(&pruned));
    let rows = |m: &TaskModel<B>| evaluate_rows(m, &data.test, data.pad_id, bs, device);
    let (rows_before, rows_after) = (rows(&model), rows(&pruned));
    let sum = |r: &[crate::task::Tally]| {
        let mut t = crate::task::Tally::default();
        r.iter().for_each(|x| t.add(*x));
        t
    };
    let test_before = metrics(task, sum(&rows_before));
    let test_after = metrics(task, sum(&rows_after));
    let test_delta = paired_delta(&rows_before, &rows_after, task, opts.data.seed);
    let t_eval = t.elapsed().as_secs_f64();
    say(format!("evaluate {t_eval:.1} s"));

    let t = Instant::now();
    let (latency_batch, latency_single) = latency_at(
        &model,
        &pruned,
        &data,
        bs,
        seq,
        opts.latency_repeats,
        device,
    );
    let latency_fit = timed_rows.zip(groups).map(|(rows, groups)| {
        let p = against_dense(&pruned, &rows);
        LatencyFit {
            batch: rows.len(),
            seq: rows.ids[0].len(),
            repeats: opts.latency_repeats,
            groups,
            fixed: costs.fixed,
            predicted: costs.of(&selection),
            measured: p.ratio,
            dense_ms: p.a_ms,
            pruned_ms: p.b_ms,
        }
    });
    let t_latency = t.elapsed().as_secs_f64();
    say(format!(" latency {t_latency:.1} s"));

    let layers = selection
        .heads_kept()
        .into_iter()
        .zip(selection.neurons_kept())
        .zip(&config.layers)
        .map(|((heads, neurons), l)| LayerKept {
            heads,
            heads_before: l.n_heads,
            neurons,
            neurons_before: l.d_ff,
        })
        .collect();
    let all = Selection::all(&config);
    let mut summary = PruneSummary {
        model: model_dir.display().to_string(),
        dataset: choice.data.display().to_string(),
        backend: backend.to_string(),
        task,
        target: match opts.target {
            PruneTarget::Latency { ratio, batch, .. } => PruneTarget::Latency {
                ratio,
                batch,
                seq: latency_shape.map(|(_, s)| s),
            },
            t => t,
        },
        latency_fit,
        seq,
        samples: order.len(),
        batches: batches.len(),
        rearranged: opts.rearrange,
        fits,
        layers,
        flops_per_token_before: config.flops_per_token(seq),
        flops_per_token_after: new_config.flops_per_token(seq),
        params_before: config.param_count(),
        params_after: new_config.param_count(),
        layer_params_before: config.layer_params(),
        layer_params_after: new_config.layer_params(),
        importance_kept: selection.score(&importance)
            / all.score(&importance).max(f64::MIN_POSITIVE),
        valid_before,
        valid_after,
        test_before,
        test_after,
        test_delta,
        latency_batch,
        latency_single,
        seconds: PruneTimes {
            load: t_load,
            fisher: t_fisher,
            curves: t_curves,
            search: t_search,
            tune: t_tune,
            remove: t_remove,
            evaluate: t_eval,
            latency: t_latency,
            write: 0.0,
        },
        wall_seconds: 0.0,
    };

    let t = Instant::now();
    let info = info.unwrap_or_else(|| crate::taskfile::TaskInfo {
        task,
        labels: data.label_names.clone(),
        text_column: opts
            .data
            .text_column
            .clone()
            .unwrap_or_else(|| "text".into()),
        label_column: opts
            .data
            .label_column
            .clone()
            .unwrap_or_else(|| "label".into()),
        max_len: seq,
        data: Some(crate::taskfile::DataSource::rows(
            choice.data.clone(),
            choice.seed,
            choice.split,
        )),
        all_classes: false,
    });
    save::write_dir_atomic(out, opts.existing, |tmp| {
        save_task_model(&pruned, &info, model_dir, &tmp.join("model"))?;
        pruned.export_hf_as(
            &tmp.join(HF_DIR),
            &info.labels,
            Some(model_dir),
            shears_layers::hf::Dtype::F32,
        )?;
        summary.seconds.write = t.elapsed().as_secs_f64();
        summary.wall_seconds = started.elapsed().as_secs_f64();
        let json = serde_json::to_string_pretty(&summary).expect("summary serialises");
        save::write_atomic(&tmp.join("report.json"), json.as_bytes())?;
        save::write_atomic(&tmp.join("report.md"), prune_markdown(&summary).as_bytes())
    })?;
    Ok(summary)
}

/// The readable report.
pub fn prune_markdown(s: &PruneSummary) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# Post-training pruning (Fisher mask search)\n");
    let _ = writeln!(
        m,
        "Model `{}`, data `{}`. Target: {}. Fisher information from {} training examples in {} mini-batches; {}. Backend {}. Wall time {:.1} s.\n",
        s.model,
        s.dataset,
        match s.target {
            PruneTarget::Flops { fraction } => format!(
                "at most {:.0}% of the encoder FLOPs per token at {} tokens",
                100.0 * fraction,
                s.seq
            ),
            PruneTarget::Latency { ratio, batch, seq } => format!(
                "at most {:.0}% of the dense model's latency on this machine at batch {batch} x {} tokens",
                100.0 * ratio,
                seq.unwrap_or(s.seq)
            ),
        },
        s.samples,
        s.batches,
        match (s.rearranged, !s.fits.is_empty()) {
            (true, true) => "removed units rearranged inside each layer, kept ones tuned",
            (true, false) => "removed units rearranged inside each layer, no mask tuning",
            (false, true) => "no rearrangement, kept units tuned",
            (false, false) => "no rearrangement, no mask tuning",
        },
        s.backend,
        s.wall_seconds
    );
    let pct = |a: f64, b: f64| format!("{:.1}%", 100.0 * a / b.max(1e-12));
    let _ = writeln!(m, "| | before | after | after / before |");
    let _ = writeln!(m, "|---|---:|---:|---:|");
    let row = |m: &mut String, name: &str, a: usize, b: usize| {
        let _ = writeln!(m, "| {name} | {a} | {b} | {} |", pct(b as f64, a as f64));
    };
    row(
        &mut m,
        "encoder FLOPs / token",
        s.flops_per_token_before,
        s.flops_per_token_after,
    );
    row(&mut m, "parameters", s.params_before, s.params_after);
    row(
        &mut m,
        "layer-stack parameters",
        s.layer_params_before,
        s.layer_params_after,
    );
    for l in [&s.latency_batch, &s.latency_single] {
        let _ = writeln!(
            m,
            "| latency, batch {} x {} tokens (ms, median of {}) | {:.1} | {:.1} | {:.1}% (median of paired ratios) |",
            l.batch,
            l.seq,
            l.repeats,
            l.dense_ms,
            l.pruned_ms,
            100.0 * l.ratio
        );
    }
    let d = &s.test_delta;
    match s.task {
        Task::Classification => {
            let acc = |x: &Metrics| 100.0 * x.accuracy.unwrap_or(0.0);
            let _ = writeln!(
                m,
                "| validation accuracy | {:.2}% | {:.2}% | {:+.2} points |",
                acc(&s.valid_before),
                acc(&s.valid_after),
                acc(&s.valid_after) - acc(&s.valid_before)
            );
            let _ = writeln!(
                m,
                "| test accuracy ({} examples) | {:.2}% | {:.2}% | {:+.2} points, 95% interval [{:+.2}, {:+.2}] (paired bootstrap) |",
                d.examples,
                acc(&s.test_before),
                acc(&s.test_after),
                100.0 * d.delta,
                100.0 * d.low,
                100.0 * d.high
            );
        }
        Task::Lm => {
            let ppl = |x: &Metrics| x.perplexity.unwrap_or(f64::NAN);
            let _ = writeln!(
                m,
                "| validation perplexity | {:.2} | {:.2} | {} |",
                ppl(&s.valid_before),
                ppl(&s.valid_after),
                pct(ppl(&s.valid_after), ppl(&s.valid_before))
            );
            let _ = writeln!(
                m,
                "| test perplexity ({} blocks) | {:.2} | {:.2} | {:+.2}%, 95% interval [{:+.2}, {:+.2}]% (paired bootstrap) |",
                d.examples,
                ppl(&s.test_before),
                ppl(&s.test_after),
                100.0 * d.delta,
                100.0 * d.low,
                100.0 * d.high
            );
        }
    }
    let _ = writeln!(
        m,
        "\nThe kept units hold {:.1}% of the summed Fisher importance.\n",
        100.0 * s.importance_kept
    );
    let _ = writeln!(
        m,
        "## Kept per layer\n\n| layer | heads | neurons |\n|---:|---:|---:|"
    );
    for (l, k) in s.layers.iter().enumerate() {
        let _ = writeln!(
            m,
            "| {l} | {} / {} | {} / {} |",
            k.heads, k.heads_before, k.neurons, k.neurons_before
        );
    }
    if let Some(f) = &s.latency_fit {
        let _ = writeln!(
            m,
            "\n## Latency curves\n\nEach group's layers were pruned to each count of one kind of unit, the rest of the model whole, and timed against the dense model at batch {} x {} tokens (median of {} paired ratios per point); a layer's curve is the group's latency saved, divided among its layers, in % of the dense latency, made non-decreasing and interpolated linearly in the search.\n",
            f.batch, f.seq, f.repeats
        );
        for g in &f.groups {
            for (kind, c) in [("heads", &g.heads), ("neurons", &g.neurons)] {
                let points: Vec<String> = c
                    .kept
                    .iter()
                    .zip(&c.time)
                    .map(|(k, t)| format!("{k}: {:.2}", 100.0 * t))
                    .collect();
                let _ = writeln!(
                    m,
                    "- layers {:?}, {kind} kept: {}",
                    g.layers,
                    points.join(", ")
                );
            }
        }
        let _ = writeln!(
            m,
            "\nWith every head and neuron removed the curves leave {:.1}% of the dense latency. The pruned model: predicted {:.1}%, measured {:.1}% ({:.1} ms against {:.1} ms).",
            100.0 * f.fixed,
            100.0 * f.predicted,
            100.0 * f.measured,
            f.pruned_ms,
            f.dense_ms
        );
    }
    if !s.fits.is_empty() {
        let _ = writeln!(
            m,
            "\n## Mask tuning\n\nPer block, the squared error of its output (plus the residual stream) against the target model's, over the target's squared norm, with the binary mask and with the fitted scales.\n\n| layer | block | units | error before | error after | scales |\n|---:|---|---:|---:|---:|---|"
        );
        for f in &s.fits {
            let (before, after, note) = match &f.outcome {
                FitOutcome::Tuned {
                    error_before,
                    error_after,
                    range,
                } => (
                    format!("{error_before:.4}"),
                    format!("{error_after:.4}"),
                    format!("{:.3} to {:.3}", range[0], range[1]),
                ),
                FitOutcome::NothingKept => ("-".into(), "-".into(), "nothing kept".into()),
                FitOutcome::OutOfRange { scale } => (
                    "-".into(),
                    "-".into(),
                    format!("scale {scale:.3} out of range: not tuned from here on"),
                ),
                FitOutcome::Stopped => ("-".into(), "-".into(), "not tuned".into()),
            };
            let _ = writeln!(
                m,
                "| {} | {:?} | {} | {before} | {after} | {note} |",
                f.layer, f.block, f.units
            );
        }
    }
    let t = &s.seconds;
    let _ = writeln!(
        m,
        "\n## Time (s)\n\n| load | Fisher | latency curves | search | tune | remove | evaluate | latency | write |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n| {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        t.load, t.fisher, t.curves, t.search, t.tune, t.remove, t.evaluate, t.latency, t.write
    );
    m
}
