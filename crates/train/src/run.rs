//! The gated-training pipeline: dense fine-tune -> gated training toward a target sparsity ->
//! harden and remove -> fine-tune the pruned model -> evaluate, measure, report.
//!
//! Work happens in a staging directory beside the output (`.NAME.partial`), which holds the
//! checkpoints (`checkpoint.rs`); the output directory appears only when everything
//! succeeded, and an interrupted run continues from its last checkpoint with `resume`. The
//! training loop is in `trainer.rs`, measurements in `measure.rs`, the task-model files in
//! `taskfile.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use shears_gates::{Harden, Lagrangian, SparsityTarget};
use shears_layers::{ModelConfig, SpaceName, Tokenizer, Transformer, save};
use shears_pruners::ClassifierHead;

use crate::checkpoint::{Phase, Stage, State, ckpt_err};
use crate::data::{Dataset, load_dataset};
use crate::distill::{Distilled, LayerMap, with_map};
use crate::measure::paired_delta;
use crate::measure::{eval_all, gate_values, latency, randomize_gates, valid_scores};
use crate::report::{self, Report};
use crate::reuse::load_dense_phase;
use crate::task::{GatedTaskModel, TaskModel, evaluate_rows, trainable};
use crate::taskfile::{DENSE_DIR, DataSource, HF_DIR, TEACHER_DIR, TaskInfo, save_task_model};
use crate::trainer::{
    Budget, Ctx, PhaseParams, Purpose, Rec, Select, key, model_writer, steps, train_phase,
};
use crate::{Experiment, Task, TrainError};

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue an interrupted run from its checkpoint.
    pub resume: bool,
    /// Draw progress (a bar on a terminal, else a line every 5%).
    pub progress: bool,
    /// Stop after this many training steps of this invocation, keeping the checkpoint, as
    /// an interrupt would (used by tests and for time-boxed runs).
    pub stop_after: Option<usize>,
    /// Backend name for the report.
    pub backend: String,
    /// Set (by a Ctrl-C handler) to stop at the next step, saving a checkpoint first, so
    /// that `resume` loses no work.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Crash-safety testing: fail with [`TrainError::InjectedFailure`] right after the
    /// `n`-th file written to a checkpoint (as a crash there would), leaving the staging
    /// directory as it is.
    pub fail_after_writes: Option<usize>,
    /// Reuse the dense phase of this finished run (its `teacher-model` and `dense-model`,
    /// its dense epochs and evaluations) instead of training it, after checking that it was
    /// trained with the same keys (see `reuse.rs`). The rest of the run is then the same as
    /// with a dense phase of its own, bit for bit on a CPU backend.
    pub dense_from: Option<PathBuf>,
    /// What to do when the output directory exists and is not empty: refuse (the default,
    /// before anything runs) or replace it once the new one is complete (`--force`).
    pub existing: save::Existing,
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Everything ran; the output directory is complete.
    Done(Box<Report>),
    /// Stopped by `stop_after` or an interrupt, with a checkpoint; `resume` continues it.
    Stopped {
        /// Phase at the stop.
        phase: String,
        /// Steps done in that phase.
        step: usize,
    },
}

/// The staging directory of `out`.
pub fn staging_dir(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    parent.join(format!(".{name}.partial"))
}

/// Everything loaded and checked before any file is written.
struct Inputs<B: Backend> {
    tokenizer_dir: PathBuf,
    model: Transformer<B>,
    data: Dataset,
}

fn prepare<B: Backend>(exp: &Experiment, device: &B::Device) -> Result<Inputs<B>, TrainError> {
    let tokenizer_dir = exp
        .model
        .tokenizer
        .clone()
        .or_else(|| exp.model.path.clone())
        .ok_or_else(|| TrainError::Config {
            source_name: "model.tokenizer".into(),
            message: "a fresh model needs `model.tokenizer`".into(),
        })?;
    let tokenizer = Tokenizer::from_dir(&tokenizer_dir)?;
    let model = match (&exp.model.path, &exp.model.init) {
        (Some(path), _) => {
            if !path.is_dir() {
                return Err(TrainError::Config {
                    source_name: "model.path".into(),
                    message: format!("`{}` is not a directory", path.display()),
                });
            }
            Transformer::<B>::load(path, device)?
        }
        (None, Some(init)) => {
            B::seed(device, exp.seed);
            let mut c = ModelConfig::gpt2(
                init.vocab_size,
                init.d_model,
                init.n_layers,
                init.n_heads,
                init.d_ff,
            );
            c.max_positions = init.max_positions;
            c.dropout = shears_layers::DropoutConfig::all(init.dropout);
            Transformer::new(&c, device)
        }
        (None, None) => unreachable!("validated"),
    };
    let config = model.config();
    let arch = config.family.arch();
    match exp.task {
        Task::Classification if arch.pooler && config.d_pooler.is_some() => {}
        Task::Classification => {
            return Err(TrainError::Config {
                source_name: "task".into(),
                message: format!(
                    "classification needs an encoder checkpoint with a pooler (BERT or RoBERTa), \
                     not this {}",
                    config.family
                ),
            });
        }
        Task::Lm if arch.lm_head => {}
        Task::Lm => {
            return Err(TrainError::Config {
                source_name: "task".into(),
                message: "language modelling needs a GPT-2 model".into(),
            });
        }
    }
    let n_layers = config.n_layers();
    if let Some(&l) = exp.distill.teacher_layers.iter().find(|&&l| l >= n_layers) {
        return Err(TrainError::OutOfRange {
            key: "distill.teacher_layers".into(),
            value: l.to_string(),
            expected: format!("layer indices below the model's {n_layers} layers"),
        });
    }
    if exp.data.max_len > config.max_len() {
        return Err(TrainError::OutOfRange {
            key: "data.max_len".into(),
            value: exp.data.max_len.to_string(),
            expected: format!("<= the model's position table ({})", config.max_len()),
        });
    }
    // A size target the gated structures cannot reach would fail only at hardening, after
    // the dense and gated phases: refuse it now.
    if let Some(measure) = exp.size_measure() {
        let reachable = exp.gate_spec().reachable_sparsity(config, measure);
        if exp.gated.target_sparsity > reachable {
            return Err(TrainError::OutOfRange {
                key: "gated.target_sparsity".into(),
                value: exp.gated.target_sparsity.to_string(),
                expected: format!(
                    "at most {reachable:.4}: closing every gated unit removes only that much of the {measure}; gate more structures (gated.neurons, gated.hidden, gated.attention_blocks, gated.ffn_blocks) or lower the target"
                ),
            });
        }
    }
    let data = load_dataset(&exp.data, exp.task, &tokenizer, exp.seed)?;
    let max_id = [&data.train, &data.valid, &data.test]
        .iter()
        .flat_map(|s| s.ids.iter().flatten())
        .copied()
        .max()
        .unwrap_or(0) as usize;
    if max_id >= config.vocab_size {
        return Err(TrainError::Config {
            source_name: "model.tokenizer".into(),
            message: format!(
                "the tokenizer produced id {max_id} but the model's vocabulary has {} entries",
                config.vocab_size
            ),
        });
    }
    Ok(Inputs {
        tokenizer_dir,
        model,
        data,
    })
}

/// Runs the experiment `exp` and writes `out`.
pub fn run<B: AutodiffBackend>(
    exp: &Experiment,
    out: &Path,
    opts: &RunOptions,
    device: &B::Device,
) -> Result<Outcome, TrainError> {
    let clock = Instant::now();
    // A user's files at `out` are not replaced unless asked: refused before any work.
    save::check_output(out, opts.existing)?;
    let inputs = prepare::<B::InnerBackend>(exp, device)?;
    if opts.progress {
        let d = &inputs.data;
        let (what, n) = match &d.corpus {
            Some(c) => (
                format!(
                    " ({} / {} / {} documents; {} duplicate and {} non-UTF-8 rows left out)",
                    c.documents[0], c.documents[1], c.documents[2], c.duplicates, c.invalid
                ),
                "blocks",
            ),
            None => (String::new(), "examples"),
        };
        eprintln!(
            "    data {} / {} / {} {n}, {} / {} / {} tokens{what}",
            d.train.len(),
            d.valid.len(),
            d.test.len(),
            d.train.tokens(),
            d.valid.tokens(),
            d.test.tokens(),
        );
    }
    let data = &inputs.data;
    let stage_dir = staging_dir(out);
    let exp_json = serde_json::to_value(exp).expect("config serialises");
    if stage_dir.exists() && !opts.resume {
        return Err(TrainError::Interrupted { staging: stage_dir });
    }
    // Checked (and loaded) before anything is written.
    let reused = match &opts.dense_from {
        Some(from) => Some((
            from,
            load_dense_phase::<B::InnerBackend>(from, exp, &data.label_names, device)?,
        )),
        None => None,
    };
    let mut stage = Stage::create(&stage_dir, opts.fail_after_writes)?;
    let mut state = match stage.load_latest()? {
        Some(s) => {
            if s.experiment != exp_json {
                return Err(ckpt_err(
                    &stage_dir,
                    "the checkpoint was made with a different config; delete the staging directory to start over",
                ));
            }
            tracing::info!(phase = ?s.phase, step = s.step, "resuming");
            s
        }
        // No complete checkpoint yet (or a fresh run): start from the beginning.
        None => State::new(exp_json),
    };
    let n_classes = data.label_names.len();
    let base_config = inputs.model.config().clone();
    let fresh_head = |device: &B::Device| {
        (exp.task == Task::Classification).then(|| {
            ClassifierHead::<B>::new(
                base_config.d_pooler.expect("checked in prepare"),
                n_classes,
                key(exp.seed, 0, Purpose::Init),
                device,
            )
        })
    };
    let recorder = Rec::new();
    let n_train = data.train.len();
    let mut ctx = Ctx::<B> {
        exp,
        data,
        stage: &mut stage,
        progress: opts.progress,
        budget: Budget {
            left: opts.stop_after,
            interrupt: opts.interrupt.clone(),
        },
        clock,
        device,
    };
    let dense_skeleton = || -> TaskModel<B::InnerBackend> {
        TaskModel {
            backbone: inputs.model.clone(),
            head: fresh_head(device).map(|h| h.valid()),
        }
    };
    let load = |skeleton: TaskModel<B::InnerBackend>, stage: &Stage, name: &str| {
        let path = stage.record(name)?;
        skeleton
            .load_file(&path, &recorder, device)
            .map_err(|e| ckpt_err(&path, e))
    };
    let d_teacher = base_config.d_model;
    let load_map = |stage: &Stage, d_student: usize| {
        let path = stage.record("map")?;
        LayerMap::<B::InnerBackend> {
            weight: burn::module::Param::from_tensor(Tensor::zeros([d_student, d_teacher], device)),
            bias: burn::module::Param::from_tensor(Tensor::zeros([d_teacher], device)),
        }
        .load_file(&path, &recorder, device)
        .map_err(|e| ckpt_err(&path, e))
    };

    // Phase 1: the dense model. It trains as long as the pruned model's whole path
    // (`baseline.match_path`), validated at every epoch's end: the best epoch within
    // `dense.epochs` is the teacher and the gated phase's start (record `dense`), the best
    // of all is the baseline the pruned model is compared with (record `baseline`).
    if let (Phase::Dense, Some((from, reused))) = (state.phase, &reused) {
        let r = &reused.report;
        let epoch_at = |step: usize| r.dense_epochs.iter().position(|e| e.step == step);
        state.epochs = r.dense_epochs.clone();
        state.teacher_epoch = epoch_at(r.teacher_step);
        state.baseline_epoch = epoch_at(r.baseline_step);
        state.dense = r.eval_teacher.clone();
        state.baseline = Some(r.eval_dense.clone());
        state.history = (r.history.iter())
            .filter(|p| p.phase == "dense")
            .cloned()
            .collect();
        // Dropout and gate noise are keyed by the global step: where the dense phase would
        // have left it, so that the gated phase draws what it would have drawn.
        state.global_step = steps(dense_section(exp).epochs, n_train, exp.dense.batch_size);
        state.dense_from = Some(from.to_path_buf());
        state.account(&mut ctx.clock);
        state.phase = Phase::Gated;
        state.step = 0;
        tracing::info!(run = %from.display(), "dense phase reused");
        ctx.stage.save(
            &state,
            vec![
                ("dense", model_writer(&reused.teacher)),
                ("baseline", model_writer(&reused.baseline)),
            ],
        )?;
    }
    if state.phase == Phase::Dense {
        let start: TaskModel<B> = TaskModel {
            backbone: trainable(inputs.model.clone()),
            head: fresh_head(device),
        };
        let section = dense_section(exp);
        let mut phase = PhaseParams::plain("dense", 0, &section, n_train, exp.checkpoint.every);
        let teacher_steps = steps(exp.dense.epochs, n_train, exp.dense.batch_size);
        phase.select = Some(Select {
            per_epoch: n_train.div_ceil(exp.dense.batch_size),
            teacher_steps,
        });
        if state.step == 0 && (teacher_steps == 0 || phase.steps == 0) {
            // No epoch to choose from: the starting model is the teacher (and the baseline
            // when nothing trains at all).
            let m = start.valid();
            let mut files = vec![("dense", model_writer(&m))];
            if phase.steps == 0 {
                files.push(("baseline", model_writer(&m)));
            }
            ctx.stage.save(&state, files)?;
        }
        let Some(_) = train_phase(start, &phase, None, None, &mut ctx, &mut state)? else {
            return Ok(stopped(&state));
        };
        let teacher = load(dense_skeleton(), ctx.stage, "dense")?;
        let baseline = load(dense_skeleton(), ctx.stage, "baseline")?;
        state.dense = Some(eval_all(&teacher, data, exp, device));
        state.baseline = Some(eval_all(&baseline, data, exp, device));
        state.account(&mut ctx.clock);
        state.phase = Phase::Gated;
        state.step = 0;
        ctx.stage.save(&state, Vec::new())?;
    }

    // Phase 2: gates toward the target sparsity, then hardening and removal.
    if state.phase == Phase::Gated {
        let spec = exp.gate_spec();
        let dense = load(dense_skeleton(), ctx.stage, "dense")?;
        let teacher = exp.distill.enabled.then(|| dense.clone());
        let gated: GatedTaskModel<B> =
            trainable::<B, TaskModel<B>>(dense).with_gates(&spec, device)?;
        // The layer map trains beside the student (unused without distillation).
        let gated = with_map::<B, _>(gated, LayerMap::identity(d_teacher, device));
        let g = &exp.gated;
        let phase = PhaseParams {
            name: "gated",
            index: 1,
            steps: steps(g.epochs, n_train, g.batch_size),
            lr: g.lr,
            batch_size: g.batch_size,
            gate_lr: Some(g.gate_lr),
            every: exp.checkpoint.every,
            select: None,
        };
        let mut lag = Lagrangian::new(
            SparsityTarget::new(
                g.target_sparsity,
                (phase.steps as f64 * g.warmup_fraction).round() as usize,
            )?,
            g.lagrangian_lr,
        )
        .with_quadratic(g.quadratic_init);
        if let Some((l1, l2)) = state.lagrangian {
            (lag.l1, lag.l2) = (f64::from_bits(l1), f64::from_bits(l2));
        }
        let teacher = teacher.as_ref().map(|t| (t, &exp.distill));
        let Some(gated) =
            train_phase(gated, &phase, Some(&mut lag), teacher, &mut ctx, &mut state)?
        else {
            return Ok(stopped(&state));
        };
        let Distilled {
            student: gated,
            map,
        } = gated.valid();
        state.gate_values = gate_values(&gated.gated);
        let measure = exp.size_measure();
        state.expected_sparsity = Some(match measure {
            None => gated.gated.expected_sparsity(),
            Some(m) => gated.gated.expected_size_sparsity(m).into_scalar().elem(),
        });
        let total = gated.gated.gates.total_units();
        let keep = (total - (g.target_sparsity * total as f64).round() as usize).max(1);
        // Units: the `keep` most open units. A size: the gates' decision adjusted to the
        // target (see `GatedModel::harden_to_size`).
        let prune = |m: GatedTaskModel<_>| match measure {
            None => m.prune(Harden::Count(keep)),
            Some(size) => m.prune_to_size(size, g.target_sparsity, g.round_to),
        };
        // The control of what the gates learned: the same weights with a random kept set
        // of the same size (the mean of a few), both before the fine-tune, on the validation
        // split.
        let mut random = (0.0, 0.0);
        for k in 0..CONTROL_SETS {
            let g = randomize_gates(gated.clone(), key(exp.seed, k, Purpose::Control));
            let (control, _) = prune(g)?;
            let (loss, acc) = valid_scores(&control, data, exp, device);
            random.0 += loss / CONTROL_SETS as f64;
            random.1 += acc / CONTROL_SETS as f64;
        }
        let (model, report) = prune(gated)?;
        // The map reads the student's hidden dimensions: only the kept ones are left.
        let map = match report.keeps.get(&SpaceName::Hidden) {
            Some(kept) => map.keep_inputs(kept),
            None => map,
        };
        let learned = valid_scores(&model, data, exp, device);
        state.gate_check = Some((learned.0, random.0));
        state.gate_check_accuracy = Some((learned.1, random.1));
        state.rescued = report.rescued;
        state.pruned_config = Some(model.backbone.config().clone());
        state.account(&mut ctx.clock);
        state.phase = Phase::Finetune;
        state.step = 0;
        ctx.stage.save(
            &state,
            vec![
                ("pruned", model_writer(&model)),
                ("map", model_writer(&map)),
            ],
        )?;
    }
    let pruned_config = state
        .pruned_config
        .clone()
        .ok_or_else(|| ckpt_err(&stage_dir, "no pruned config in the state"))?;
    let pruned_skeleton = || -> TaskModel<B::InnerBackend> {
        TaskModel {
            backbone: Transformer::new(&pruned_config, device),
            head: fresh_head(device).map(|h| h.valid()),
        }
    };

    // Phase 3: fine-tune the smaller model.
    if state.phase == Phase::Finetune {
        let pruned = load(pruned_skeleton(), ctx.stage, "pruned")?;
        let map = load_map(ctx.stage, pruned.backbone.config().d_model)?;
        let teacher = match exp.distill.enabled {
            true => Some(load(dense_skeleton(), ctx.stage, "dense")?),
            false => None,
        };
        let phase = PhaseParams::plain("finetune", 2, &exp.finetune, n_train, exp.checkpoint.every);
        let start = with_map::<B, _>(trainable::<B, TaskModel<B>>(pruned), map);
        let teacher = teacher.as_ref().map(|t| (t, &exp.distill));
        let Some(model) = train_phase(start, &phase, None, teacher, &mut ctx, &mut state)? else {
            return Ok(stopped(&state));
        };
        let model = model.valid().student;
        state.pruned = Some(eval_all(&model, data, exp, device));
        state.account(&mut ctx.clock);
        state.phase = Phase::Done;
        state.step = 0;
        ctx.stage
            .save(&state, vec![("final", model_writer(&model))])?;
    }

    // Measure and write the output: the pruned model against the baseline.
    let dense = load(dense_skeleton(), ctx.stage, "baseline")?;
    let teacher = load(dense_skeleton(), ctx.stage, "dense")?;
    let pruned = load(pruned_skeleton(), ctx.stage, "final")?;
    let (lat, lat1) = latency(&dense, &pruned, data, exp, device);
    let generation = crate::measure::generation(
        &dense,
        &pruned,
        data,
        &Tokenizer::from_dir(&inputs.tokenizer_dir)?,
    )?;
    let rows = |m: &TaskModel<B::InnerBackend>| {
        evaluate_rows(m, &data.test, data.pad_id, exp.eval.batch_size, device)
    };
    let paired = paired_delta(
        &rows(&dense),
        &rows(&pruned),
        exp.task,
        key(exp.seed, 0, Purpose::Bootstrap),
    );
    // The pruned model also goes out in the layout transformers loads, when it can.
    let hf_export = shears_layers::hf::check_exportable(pruned.backbone.config())
        .map(|_| HF_DIR.to_string())
        .map_err(|e| e.to_string());
    state.account(&mut ctx.clock);
    let report = report::build(report::Parts {
        exp,
        backend: &opts.backend,
        data,
        dense_config: dense.backbone.config(),
        pruned_config: pruned.backbone.config(),
        dense_eval: state.baseline.clone().expect("dense phase ran"),
        teacher_eval: state.dense.clone(),
        dense_epochs: (
            state.epochs.clone(),
            state.baseline_epoch,
            state.teacher_epoch,
        ),
        paired_delta: Some(paired),
        pruned_eval: state.pruned.clone().expect("finetune phase ran"),
        expected_sparsity: state.expected_sparsity,
        gate_check: state.gate_check,
        gate_check_accuracy: state.gate_check_accuracy,
        latency: lat,
        latency_batch1: lat1,
        generation,
        wall_seconds: state.seconds,
        phase_seconds: state.phase_seconds.clone(),
        history: state.history.clone(),
        gate_values: state.gate_values.clone(),
        rescued: state.rescued.clone(),
        hf_export: hf_export.clone(),
        dense_from: state.dense_from.clone(),
    });
    let task_info = TaskInfo {
        task: exp.task,
        labels: data.label_names.clone(),
        text_column: exp.data.text_column.clone(),
        label_column: exp.data.label_column.clone(),
        max_len: exp.data.max_len,
        data: Some(DataSource::of(&exp.data, exp.seed)),
        all_classes: false,
    };
    save::write_dir_atomic(out, opts.existing, |tmp| {
        save_task_model(
            &pruned,
            &task_info,
            &inputs.tokenizer_dir,
            &tmp.join("model"),
        )?;
        save_task_model(
            &dense,
            &task_info,
            &inputs.tokenizer_dir,
            &tmp.join(DENSE_DIR),
        )?;
        save_task_model(
            &teacher,
            &task_info,
            &inputs.tokenizer_dir,
            &tmp.join(TEACHER_DIR),
        )?;
        if hf_export.is_ok() {
            pruned.export_hf(
                &tmp.join(HF_DIR),
                &data.label_names,
                Some(&inputs.tokenizer_dir),
            )?;
        }
        report::write(&report, tmp)
    })?;
    let _ = std::fs::remove_dir_all(&stage_dir);
    Ok(Outcome::Done(Box::new(report)))
}

/// The dense phase's section: `dense`, as long as the pruned model's whole path with
/// `baseline.match_path`.
fn dense_section(exp: &Experiment) -> crate::PhaseSection {
    let mut section = exp.dense.clone();
    if exp.baseline.match_path {
        section.epochs += exp.gated.epochs + exp.finetune.epochs;
    }
    section
}

/// Random kept sets whose mean validation metric is the gate check's control.
const CONTROL_SETS: usize = 3;

/// The outcome of a stop (the checkpoint is already written).
fn stopped(state: &State) -> Outcome {
    Outcome::Stopped {
        phase: state.phase.name().to_string(),
        step: state.step,
    }
}
