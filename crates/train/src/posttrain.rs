//! `prune`: post-training pruning of a fine-tuned model in minutes, without retraining
//! (Kwon et al. 2022, see [`shears_pruners::search`]): the diagonal Fisher of head and neuron
//! masks from training examples, the mask search to a FLOPs target, the rearrangement inside
//! each layer, physical removal; the task metric and latency before and after, and the
//! smaller model in shears' format and as a Hugging Face directory.

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
    BlockFit, FitOutcome, Selection, TaskModel, UnitCosts, apply_selection, fold_scales,
    mask_gradients, rearrange, search, teacher_target, tune_scales,
};

use crate::data::make_batch;
use crate::derived::{DataChoice, Metrics, dataset, task_and_len};
use crate::measure::{Latency, PairedDelta, latency_at, paired_delta};
use crate::task::{evaluate, evaluate_rows, loss};
use crate::taskfile::{HF_DIR, save_task_model};
use crate::{Task, TrainError};

/// What to prune and how.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// The dataset: the model's recorded training data unless another file is allowed.
    pub data: DataChoice,
    /// Keep at most this fraction of the encoder's FLOPs per token (at the model's recorded
    /// sequence length), in (0, 1].
    pub target_flops: f64,
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
            target_flops: 0.6,
            samples: 2048,
            batch_size: 32,
            rearrange: true,
            tune: false,
            eval_batch_size: 32,
            latency_repeats: 10,
            existing: save::Existing::Refuse,
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
    /// FLOPs target: the fraction of the encoder's FLOPs per token kept.
    pub target_flops: f64,
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
    if !(opts.target_flops > 0.0 && opts.target_flops <= 1.0) {
        return Err(TrainError::OutOfRange {
            key: "target-flops".into(),
            value: opts.target_flops.to_string(),
            expected: "a fraction of the FLOPs kept in (0, 1]".into(),
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

    let t = Instant::now();
    let costs = UnitCosts::flops(&config, seq)?;
    let mut selection = search(&importance, &costs, opts.target_flops * costs.total)?;
    if opts.rearrange {
        selection = rearrange(&selection, &grads);
    }
    let t_search = t.elapsed().as_secs_f64();

    // Mask tuning toward the same model pruned about half as far (the reference's target),
    // on the Fisher samples.
    let t = Instant::now();
    let mut backbone = model.backbone.clone();
    let mut fits = Vec::new();
    if opts.tune {
        let teacher = teacher_target(&importance, &costs, opts.target_flops)?;
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
    let t_latency = t.elapsed().as_secs_f64();

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
        target_flops: opts.target_flops,
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
        "Model `{}`, data `{}`. Target: at most {:.0}% of the encoder FLOPs per token at {} tokens. Fisher information from {} training examples in {} mini-batches; {}. Backend {}. Wall time {:.1} s.\n",
        s.model,
        s.dataset,
        100.0 * s.target_flops,
        s.seq,
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
        "\n## Time (s)\n\n| load | Fisher | search | tune | remove | evaluate | latency | write |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n| {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        t.load, t.fisher, t.search, t.tune, t.remove, t.evaluate, t.latency, t.write
    );
    m
}
