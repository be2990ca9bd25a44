//! The gated-training pipeline: dense fine-tune -> gated training toward a target sparsity ->
//! harden and remove -> fine-tune the pruned model -> evaluate, measure, report.
//!
//! Work happens in a staging directory beside the output (`.NAME.partial`), which holds the
//! checkpoints; the output directory appears only when everything succeeded, and an
//! interrupted run continues from its last checkpoint with `resume`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use shears_gates::{Harden, Lagrangian, SparsityTarget};
use shears_layers::{Family, ModelConfig, Tokenizer, Transformer, save, tensorio};
use shears_pruners::{ClassifierHead, GateSpec, GatedModel};

use crate::data::{Dataset, Split, load_dataset, make_batch, step_indices};
use crate::report::{self, EvalResult, Point, Report};
use crate::task::{GatedTaskModel, Net, Tally, TaskModel, evaluate, loss, trainable};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Dense,
    Gated,
    Finetune,
    Done,
}

/// What survives an interrupt, beside the model and optimizer records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    /// The experiment the checkpoint belongs to (a resume with another config is refused).
    experiment: serde_json::Value,
    phase: Phase,
    /// Steps done in `phase`.
    step: usize,
    history: Vec<Point>,
    lagrangian: Option<(f64, f64)>,
    dense: Option<EvalResult>,
    pruned: Option<EvalResult>,
    pruned_config: Option<ModelConfig>,
    gate_values: Vec<Vec<f64>>,
    rescued: Vec<String>,
    phase_seconds: BTreeMap<String, f64>,
    /// Wall seconds of earlier invocations.
    seconds_before: f64,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn ckpt_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

type Rec = NamedMpkFileRecorder<FullPrecisionSettings>;

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
            Transformer::new(&c, device)
        }
        (None, None) => unreachable!("validated"),
    };
    let config = model.config();
    match (exp.task, config.family) {
        (Task::Classification, Family::Bert) if config.d_pooler.is_some() => {}
        (Task::Classification, _) => {
            return Err(TrainError::Config {
                source_name: "task".into(),
                message: "classification needs a BERT checkpoint with a pooler".into(),
            });
        }
        (Task::Lm, Family::Gpt2) => {}
        (Task::Lm, _) => {
            return Err(TrainError::Config {
                source_name: "task".into(),
                message: "language modelling needs a GPT-2 model".into(),
            });
        }
    }
    if exp.data.max_len > config.max_positions {
        return Err(TrainError::OutOfRange {
            key: "data.max_len".into(),
            value: exp.data.max_len.to_string(),
            expected: format!("<= the model's max_positions ({})", config.max_positions),
        });
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
    let started = Instant::now();
    let inputs = prepare::<B::InnerBackend>(exp, device)?;
    let data = &inputs.data;
    let stage = staging_dir(out);
    let state_path = stage.join("state.json");
    let exp_json = serde_json::to_value(exp).expect("config serialises");
    let mut state = if stage.exists() {
        if !opts.resume {
            return Err(TrainError::Interrupted { staging: stage });
        }
        let text = std::fs::read_to_string(&state_path).map_err(|e| ckpt_err(&state_path, e))?;
        let s: State = serde_json::from_str(&text).map_err(|e| ckpt_err(&state_path, e))?;
        if s.experiment != exp_json {
            return Err(ckpt_err(
                &state_path,
                "the checkpoint was made with a different config; delete the staging directory to start over",
            ));
        }
        tracing::info!(phase = ?s.phase, step = s.step, "resuming");
        s
    } else {
        std::fs::create_dir_all(&stage).map_err(|e| io_err(&stage, e))?;
        State {
            experiment: exp_json,
            phase: Phase::Dense,
            step: 0,
            history: Vec::new(),
            lagrangian: None,
            dense: None,
            pruned: None,
            pruned_config: None,
            gate_values: Vec::new(),
            rescued: Vec::new(),
            phase_seconds: BTreeMap::new(),
            seconds_before: 0.0,
        }
    };
    let n_classes = data.label_names.len();
    let base_config = inputs.model.config().clone();
    let fresh_head = |device: &B::Device| {
        (exp.task == Task::Classification).then(|| {
            ClassifierHead::<B>::new(
                base_config.d_pooler.expect("checked in prepare"),
                n_classes,
                device,
            )
        })
    };
    B::seed(device, exp.seed);
    let mut budget = Budget {
        left: opts.stop_after,
        interrupt: opts.interrupt.clone(),
    };
    let recorder = Rec::new();
    let n_train = data.train.len();

    // Phase 1: the dense baseline.
    if state.phase == Phase::Dense {
        let t = Instant::now();
        let start: TaskModel<B> = TaskModel {
            backbone: trainable(inputs.model.clone()),
            head: fresh_head(device),
        };
        let phase = PhaseParams::plain("dense", &exp.dense, n_train, exp.checkpoint.every);
        let done = train_phase(
            start,
            &phase,
            None,
            exp,
            data,
            &mut state,
            &stage,
            opts,
            &mut budget,
            device,
        )?;
        let Some(model) = done else {
            return stopped(&state, &stage, started);
        };
        let model = model.valid();
        state.dense = Some(eval_all(&model, data, exp, device));
        model
            .clone()
            .save_file(stage.join("dense"), &recorder)
            .map_err(|e| ckpt_err(&stage, e))?;
        *state.phase_seconds.entry("dense".into()).or_default() += t.elapsed().as_secs_f64();
        state.phase = Phase::Gated;
        state.step = 0;
        save_state(&state, &state_path)?;
    }
    let dense_skeleton = || -> TaskModel<B::InnerBackend> {
        TaskModel {
            backbone: inputs.model.clone(),
            head: fresh_head(device).map(|h| h.valid()),
        }
    };

    // Phase 2: gates toward the target sparsity, then hardening and removal.
    if state.phase == Phase::Gated {
        let t = Instant::now();
        let dense = dense_skeleton()
            .load_file(stage.join("dense"), &recorder, device)
            .map_err(|e| ckpt_err(&stage, e))?;
        let spec = GateSpec {
            heads: exp.gated.heads,
            neurons: exp.gated.neurons,
            layers: exp.gated.layers,
            ..GateSpec::default()
        };
        let gated: GatedTaskModel<B> =
            trainable::<B, TaskModel<B>>(dense).with_gates(&spec, device)?;
        let g = &exp.gated;
        let phase = PhaseParams {
            name: "gated",
            steps: steps(g.epochs, n_train, g.batch_size),
            lr: g.lr,
            batch_size: g.batch_size,
            gate_lr: Some(g.gate_lr),
            every: exp.checkpoint.every,
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
            (lag.l1, lag.l2) = (l1, l2);
        }
        let done = train_phase(
            gated,
            &phase,
            Some(&mut lag),
            exp,
            data,
            &mut state,
            &stage,
            opts,
            &mut budget,
            device,
        )?;
        let Some(gated) = done else {
            return stopped(&state, &stage, started);
        };
        let gated = gated.valid();
        state.gate_values = gate_values(&gated.gated);
        let total = gated.gated.gates.total_units();
        let keep = total - (g.target_sparsity * total as f64).round() as usize;
        let (model, report) = gated.prune(Harden::Count(keep.max(1)))?;
        state.rescued = report.rescued;
        state.pruned_config = Some(model.backbone.config().clone());
        model
            .save_file(stage.join("pruned"), &recorder)
            .map_err(|e| ckpt_err(&stage, e))?;
        *state.phase_seconds.entry("gated".into()).or_default() += t.elapsed().as_secs_f64();
        state.phase = Phase::Finetune;
        state.step = 0;
        save_state(&state, &state_path)?;
    }
    let pruned_config = state
        .pruned_config
        .clone()
        .ok_or_else(|| ckpt_err(&state_path, "no pruned config in the state"))?;
    let pruned_skeleton = || -> TaskModel<B::InnerBackend> {
        TaskModel {
            backbone: Transformer::new(&pruned_config, device),
            head: fresh_head(device).map(|h| h.valid()),
        }
    };

    // Phase 3: fine-tune the smaller model.
    if state.phase == Phase::Finetune {
        let t = Instant::now();
        let pruned = pruned_skeleton()
            .load_file(stage.join("pruned"), &recorder, device)
            .map_err(|e| ckpt_err(&stage, e))?;
        let phase = PhaseParams::plain("finetune", &exp.finetune, n_train, exp.checkpoint.every);
        let done = train_phase(
            trainable::<B, TaskModel<B>>(pruned),
            &phase,
            None,
            exp,
            data,
            &mut state,
            &stage,
            opts,
            &mut budget,
            device,
        )?;
        let Some(model) = done else {
            return stopped(&state, &stage, started);
        };
        let model = model.valid();
        state.pruned = Some(eval_all(&model, data, exp, device));
        model
            .save_file(stage.join("final"), &recorder)
            .map_err(|e| ckpt_err(&stage, e))?;
        *state.phase_seconds.entry("finetune".into()).or_default() += t.elapsed().as_secs_f64();
        state.phase = Phase::Done;
        state.step = 0;
        save_state(&state, &state_path)?;
    }

    // Measure and write the output.
    let dense = dense_skeleton()
        .load_file(stage.join("dense"), &recorder, device)
        .map_err(|e| ckpt_err(&stage, e))?;
    let pruned = pruned_skeleton()
        .load_file(stage.join("final"), &recorder, device)
        .map_err(|e| ckpt_err(&stage, e))?;
    let (lat_dense, lat_pruned) = latency(&dense, &pruned, data, exp, device);
    // The pruned BERT also goes out in the layout transformers loads, when it can.
    let hf_export = match pruned.backbone.config().family {
        Family::Bert => shears_layers::hf::bert_hf_config(pruned.backbone.config())
            .map(|_| HF_DIR.to_string())
            .map_err(|e| e.to_string()),
        Family::Gpt2 => Err("GPT-2 models are saved in shears' format only".to_string()),
    };
    let wall = state.seconds_before + started.elapsed().as_secs_f64();
    let report = report::build(report::Parts {
        exp,
        backend: &opts.backend,
        data,
        dense_config: dense.backbone.config(),
        pruned_config: pruned.backbone.config(),
        dense_eval: state.dense.clone().expect("dense phase ran"),
        pruned_eval: state.pruned.clone().expect("finetune phase ran"),
        latency_ms: (lat_dense, lat_pruned),
        wall_seconds: wall,
        phase_seconds: state.phase_seconds.clone(),
        history: state.history.clone(),
        gate_values: state.gate_values.clone(),
        rescued: state.rescued.clone(),
        hf_export: hf_export.clone(),
    });
    let task_info = TaskInfo {
        task: exp.task,
        labels: data.label_names.clone(),
        text_column: exp.data.text_column.clone(),
        label_column: exp.data.label_column.clone(),
        max_len: exp.data.max_len,
    };
    save::write_dir_atomic(out, |tmp| {
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
            &tmp.join("dense-model"),
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
    let _ = std::fs::remove_dir_all(&stage);
    Ok(Outcome::Done(Box::new(report)))
}

fn stopped(state: &State, stage: &Path, started: Instant) -> Result<Outcome, TrainError> {
    let mut s = state.clone();
    s.seconds_before += started.elapsed().as_secs_f64();
    save_state(&s, &stage.join("state.json"))?;
    Ok(Outcome::Stopped {
        phase: format!("{:?}", state.phase).to_lowercase(),
        step: state.step,
    })
}

fn save_state(state: &State, path: &Path) -> Result<(), TrainError> {
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    save::write_atomic(path, json.as_bytes())?;
    Ok(())
}

/// What `eval` needs to know about a saved task model (`task.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskInfo {
    /// The task.
    pub task: Task,
    /// Class names in class order.
    pub labels: Vec<String>,
    /// Text column of the training data.
    pub text_column: String,
    /// Label column of the training data.
    pub label_column: String,
    /// Tokens per example.
    pub max_len: usize,
}

/// Directory of the Hugging Face export of the pruned BERT in a run's output.
pub const HF_DIR: &str = "hf-model";
/// File of the classification head in a model directory.
pub const HEAD_FILE: &str = "head.safetensors";
/// File of the task description in a model directory.
pub const TASK_FILE: &str = "task.json";

pub(crate) fn save_task_model<B: Backend>(
    model: &TaskModel<B>,
    info: &TaskInfo,
    tokenizer_dir: &Path,
    dir: &Path,
) -> Result<(), shears_layers::LoadError> {
    model.backbone.save(dir)?;
    if let Some(head) = &model.head {
        shears_layers::hf::write_safetensors(&dir.join(HEAD_FILE), &tensorio::export(head))?;
    }
    let json = serde_json::to_string_pretty(info).expect("task info serialises");
    save::write_atomic(&dir.join(TASK_FILE), json.as_bytes())?;
    for f in ["tokenizer.json", "vocab.json", "merges.txt"] {
        let from = tokenizer_dir.join(f);
        if from.exists() {
            std::fs::copy(&from, dir.join(f)).map_err(|e| shears_layers::LoadError::Io {
                path: from.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    Ok(())
}

/// Loads a model directory written by [`run`] (or any BERT / GPT-2 checkpoint; without
/// `task.json` a GPT-2 is a language model and a BERT has no head).
pub fn load_task_model<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(TaskModel<B>, Option<TaskInfo>), TrainError> {
    if !dir.is_dir() {
        return Err(io_err(dir, "not a directory"));
    }
    let backbone = Transformer::<B>::load(dir, device)?;
    let info_path = dir.join(TASK_FILE);
    let info: Option<TaskInfo> = if info_path.exists() {
        let text = std::fs::read_to_string(&info_path).map_err(|e| io_err(&info_path, e))?;
        Some(serde_json::from_str(&text).map_err(|e| TrainError::Config {
            source_name: info_path.display().to_string(),
            message: e.to_string(),
        })?)
    } else {
        None
    };
    let head = match &info {
        Some(i) if i.task == Task::Classification => {
            let d = backbone
                .config()
                .d_pooler
                .ok_or_else(|| TrainError::Config {
                    source_name: info_path.display().to_string(),
                    message: "a classification model without a pooler".into(),
                })?;
            let head = ClassifierHead::new(d, i.labels.len(), device);
            let tensors = shears_layers::hf::read_safetensors(&dir.join(HEAD_FILE))?;
            Some(tensorio::import(head, &tensors, device)?)
        }
        _ => None,
    };
    Ok((TaskModel { backbone, head }, info))
}

fn eval_all<B: Backend, M: Net<B>>(
    model: &M,
    data: &Dataset,
    exp: &Experiment,
    device: &B::Device,
) -> EvalResult {
    let e = |split| evaluate(model, split, data.pad_id, exp.eval.batch_size, device);
    let (v, t) = (e(&data.valid), e(&data.test));
    EvalResult::from_tallies(exp.task, v, t)
}

/// Deterministic head gate values per layer (a whole-layer gate multiplied in), for the
/// heatmap.
fn gate_values<B: Backend>(gated: &GatedModel<B>) -> Vec<Vec<f64>> {
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

/// Median forward latency (ms) of the dense and the pruned model on the same batch (the
/// first `latency_batch` test examples).
fn latency<B: Backend>(
    dense: &TaskModel<B>,
    pruned: &TaskModel<B>,
    data: &Dataset,
    exp: &Experiment,
    device: &B::Device,
) -> (f64, f64) {
    paired_latency(
        dense,
        pruned,
        &data.test,
        data.pad_id,
        exp.eval.latency_batch,
        exp.eval.latency_repeats,
        device,
    )
}

/// Median forward latency (ms) of two models on the same batch (the first `batch`
/// examples of `split`), alternating the two so that drift affects both alike; one warm-up
/// run each.
pub(crate) fn paired_latency<B: Backend>(
    a: &TaskModel<B>,
    b: &TaskModel<B>,
    split: &Split,
    pad_id: u32,
    batch: usize,
    repeats: usize,
    device: &B::Device,
) -> (f64, f64) {
    let n = batch.min(split.len());
    let idx: Vec<usize> = (0..n).collect();
    let batch = make_batch::<B>(split, &idx, pad_id, device);
    let time = |m: &TaskModel<B>| {
        let t = Instant::now();
        let out = m.output(batch.input.clone(), false);
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
    (median(&mut ta), median(&mut tb))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn steps(epochs: f64, n_train: usize, batch: usize) -> usize {
    (epochs * n_train.div_ceil(batch) as f64).ceil() as usize
}

struct PhaseParams {
    name: &'static str,
    steps: usize,
    lr: f64,
    batch_size: usize,
    gate_lr: Option<f64>,
    every: usize,
}

impl PhaseParams {
    fn plain(
        name: &'static str,
        p: &crate::PhaseSection,
        n_train: usize,
        every: usize,
    ) -> PhaseParams {
        PhaseParams {
            name,
            steps: steps(p.epochs, n_train, p.batch_size),
            lr: p.lr,
            batch_size: p.batch_size,
            gate_lr: None,
            every,
        }
    }

    /// Linear warm-up over 6% of the steps, then linear decay to 0.
    fn lr_at(&self, step: usize) -> f64 {
        let warm = ((self.steps as f64) * 0.06).ceil().max(1.0);
        let s = step as f64 + 1.0;
        if s <= warm {
            self.lr * s / warm
        } else {
            self.lr * ((self.steps as f64 - s + 1.0) / (self.steps as f64 - warm + 1.0)).max(0.0)
        }
    }
}

/// When to stop early: after a number of steps, or when interrupted.
struct Budget {
    left: Option<usize>,
    interrupt: Option<Arc<AtomicBool>>,
}

impl Budget {
    /// Whether another step may run.
    fn take(&mut self) -> bool {
        if self
            .interrupt
            .as_ref()
            .is_some_and(|i| i.load(Ordering::SeqCst))
        {
            return false;
        }
        match &mut self.left {
            None => true,
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
        }
    }
}

/// Trains `model` for the rest of `phase` (from `state.step`), checkpointing every
/// `phase.every` steps. `None` when the step budget ran out (checkpoint saved).
#[allow(clippy::too_many_arguments)]
fn train_phase<B: AutodiffBackend, M: Net<B> + AutodiffModule<B>>(
    mut model: M,
    phase: &PhaseParams,
    mut lag: Option<&mut Lagrangian>,
    exp: &Experiment,
    data: &Dataset,
    state: &mut State,
    stage: &Path,
    opts: &RunOptions,
    budget: &mut Budget,
    device: &B::Device,
) -> Result<Option<M>, TrainError> {
    let recorder = Rec::new();
    let clip = || Some(GradientClippingConfig::Norm(1.0));
    let mut opt = AdamWConfig::new()
        .with_weight_decay(0.01)
        .with_grad_clipping(clip())
        .init::<B, M>();
    let mut gate_opt = AdamConfig::new().init::<B, shears_gates::GateSet<B>>();
    let ckpt = stage.join(format!("ckpt-{}", phase.name));
    if state.step > 0 {
        model = model
            .load_file(ckpt.join("model"), &recorder, device)
            .map_err(|e| ckpt_err(&ckpt, e))?;
        let rec = recorder
            .load(ckpt.join("optim"), device)
            .map_err(|e| ckpt_err(&ckpt, e))?;
        opt = opt.load_record(rec);
        if phase.gate_lr.is_some() {
            let rec = recorder
                .load(ckpt.join("gate-optim"), device)
                .map_err(|e| ckpt_err(&ckpt, e))?;
            gate_opt = gate_opt.load_record(rec);
        }
    }
    let total_units = model.gates().map(|g| g.total_units()).unwrap_or(0);
    let bar = Progress::new(phase.name, phase.steps, state.step, opts.progress);
    let mut window = Tally::default();
    let mut last_s = 0.0;
    let log_every = (phase.steps / 100).max(1);
    while state.step < phase.steps {
        if !budget.take() {
            save_ckpt(&model, &opt, &gate_opt, phase, &ckpt, state, stage)?;
            bar.finish();
            return Ok(None);
        }
        let step = state.step;
        let idx = step_indices(data.train.len(), phase.batch_size, exp.seed, step);
        let batch = make_batch::<B>(&data.train, &idx, data.pad_id, device);
        let (task_loss, tally) = loss(&model, batch.input, batch.labels, true);
        let total = match (&lag, model.gates()) {
            (Some(l), Some(g)) => task_loss + l.term(g.expected_sparsity(), step),
            _ => task_loss,
        };
        let mut grads = total.backward();
        if let (Some(gate_lr), Some(g)) = (phase.gate_lr, model.gates()) {
            let gg = GradientsParams::from_module(&mut grads, g);
            model = model.map_gates(|gs| gate_opt.step(gate_lr, gs, gg));
        }
        let rest = GradientsParams::from_grads(grads, &model);
        model = opt.step(phase.lr_at(step), model, rest);
        if let (Some(l), Some(g)) = (lag.as_deref_mut(), model.gates()) {
            last_s = g.expected_sparsity().into_scalar().elem::<f64>();
            l.ascend(last_s, step);
            state.lagrangian = Some((l.l1, l.l2));
        }
        window.add(tally);
        state.step += 1;
        if state.step.is_multiple_of(log_every) || state.step == phase.steps {
            let point = Point {
                phase: phase.name.into(),
                step: state.step,
                loss: window.loss(),
                accuracy: (exp.task == Task::Classification).then(|| window.accuracy()),
                expected_sparsity: lag.as_ref().map(|_| last_s),
                target_sparsity: lag.as_ref().map(|l| l.target.at(step)),
                lr: phase.lr_at(step),
            };
            let mut msg = format!("loss {:.4}", point.loss);
            if let Some(a) = point.accuracy {
                msg += &format!(" acc {:.3}", a);
            }
            if lag.is_some() {
                msg += &format!(
                    " open {:.1}/{} (target {:.1})",
                    (1.0 - last_s) * total_units as f64,
                    total_units,
                    (1.0 - point.target_sparsity.unwrap_or(0.0)) * total_units as f64
                );
            }
            bar.update(state.step, &msg);
            state.history.push(point);
            window = Tally::default();
        }
        if phase.every > 0 && state.step.is_multiple_of(phase.every) && state.step < phase.steps {
            save_ckpt(&model, &opt, &gate_opt, phase, &ckpt, state, stage)?;
        }
    }
    bar.finish();
    Ok(Some(model))
}

#[allow(clippy::too_many_arguments)]
fn save_ckpt<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>, G>(
    model: &M,
    opt: &O,
    gate_opt: &G,
    phase: &PhaseParams,
    ckpt: &Path,
    state: &State,
    stage: &Path,
) -> Result<(), TrainError>
where
    G: Optimizer<shears_gates::GateSet<B>, B>,
{
    let recorder = Rec::new();
    let tmp = stage.join(format!("ckpt-{}.tmp", phase.name));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    model
        .clone()
        .save_file(tmp.join("model"), &recorder)
        .map_err(|e| ckpt_err(&tmp, e))?;
    recorder
        .record(opt.to_record(), tmp.join("optim"))
        .map_err(|e| ckpt_err(&tmp, e))?;
    if phase.gate_lr.is_some() {
        recorder
            .record(gate_opt.to_record(), tmp.join("gate-optim"))
            .map_err(|e| ckpt_err(&tmp, e))?;
    }
    let _ = std::fs::remove_dir_all(ckpt);
    std::fs::rename(&tmp, ckpt).map_err(|e| io_err(ckpt, e))?;
    save_state(state, &stage.join("state.json"))?;
    tracing::info!(phase = phase.name, step = state.step, "checkpoint saved");
    Ok(())
}

/// A progress bar on a terminal; a line every 5% otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
    name: &'static str,
    total: usize,
    started: Instant,
    start_step: usize,
    /// The step of the previous update.
    last: std::cell::Cell<usize>,
}

impl Progress {
    fn new(name: &'static str, total: usize, at: usize, show: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = (show && tty).then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>8} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(name);
            b.set_position(at as u64);
            b
        });
        Self {
            bar,
            lines: show && !tty,
            name,
            total,
            started: Instant::now(),
            start_step: at,
            last: std::cell::Cell::new(at),
        }
    }

    fn update(&self, step: usize, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_position(step as u64);
            b.set_message(msg.to_string());
        } else if self.lines {
            // A line whenever another 5% is done (updates come every 1% of the phase, so a
            // test on exact multiples would miss most of them).
            let twentieth = |s: usize| s * 20 / self.total.max(1);
            if twentieth(step) > twentieth(self.last.replace(step)) || step == self.total {
                let done = (step - self.start_step).max(1) as f64;
                let rate = self.started.elapsed().as_secs_f64() / done;
                let eta = rate * (self.total - step) as f64;
                eprintln!(
                    "{:>8} {step}/{} ({:.1} s/step, eta {:.0} s) {msg}",
                    self.name, self.total, rate, eta
                );
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}
