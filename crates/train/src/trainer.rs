//! The training step and the loop of one phase: batches, gate noise and initialisation from
//! keyed host generators, global gradient-norm clipping, AdamW for the weights, Adam for the
//! gates, the Lagrangian's ascent, logging and checkpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use shears_gates::{Draw, GateSet, Lagrangian, mix};

use crate::checkpoint::{EpochScore, Stage, State, Writer, ckpt_err};
use crate::data::{Dataset, make_batch, step_indices};
use crate::distill::{DistillSection, distill_loss, teacher_targets};
use crate::progress::Progress;
use crate::report::Point;
use crate::task::{Net, Tally, TaskModel, evaluate, loss};
use crate::{Experiment, Task, TrainError};

pub(crate) type Rec = NamedMpkFileRecorder<FullPrecisionSettings>;

/// What a random draw is for: each purpose gets its own stream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Purpose {
    /// The order of training examples in a phase.
    DataOrder = 1,
    /// Hard-Concrete gate noise at a step.
    GateNoise = 2,
    /// A fresh classification head.
    Init = 3,
    /// The random kept set of the gate check.
    Control = 4,
    /// Dropout at a step.
    Dropout = 5,
    /// The resamples of the paired test comparison.
    Bootstrap = 6,
}

/// The key of the host generator for (`seed`, `step`, `purpose`). Every random draw of a run
/// comes from such a generator, never from the backend's process-wide seed, so a resumed
/// run draws exactly what the uninterrupted one would have.
pub(crate) fn key(seed: u64, step: usize, purpose: Purpose) -> u64 {
    mix(mix(seed) ^ mix((step as u64) << 8 | purpose as u64))
}

/// Global gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_` does: the norm is
/// taken over the gradients of every parameter of `module` together, and if it exceeds
/// `max_norm` all of them are scaled by `max_norm / (norm + 1e-6)`. (Burn's
/// `GradientClipping::Norm` clips each tensor on its own.) Returns the norm before clipping.
pub(crate) fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    struct SumSquares<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        total: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SumSquares<'_, B> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(p.id) {
                let s = shears_layers::kernels::sum_squares(g);
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let id: ParamId = p.id;
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(id) {
                self.grads
                    .register(id, shears_layers::kernels::scale(g, self.factor as f32));
            }
        }
    }

    let mut sum = SumSquares::<B> { grads, total: None };
    module.visit(&mut sum);
    let Some(total) = sum.total else {
        return 0.0;
    };
    let norm = total.into_scalar().elem::<f64>().sqrt();
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        module.visit(&mut Scale { grads, factor });
    }
    norm
}

/// Steps of a phase of `epochs` passes.
pub(crate) fn steps(epochs: f64, n_train: usize, batch: usize) -> usize {
    (epochs * n_train.div_ceil(batch) as f64).ceil() as usize
}

/// The settings of one phase.
pub(crate) struct PhaseParams {
    pub name: &'static str,
    /// Position of the phase in the pipeline (keys its data order).
    pub index: usize,
    pub steps: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub gate_lr: Option<f64>,
    pub every: usize,
    /// Validation at every epoch's end, keeping the best epochs (the dense phase).
    pub select: Option<Select>,
}

/// Which epochs of a phase to keep: the best on validation overall (the baseline, record
/// `baseline`) and the best among the first `teacher_steps` steps (the teacher and the
/// start of the gated phase, record `dense`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Select {
    /// Steps per epoch (validation after each, and after the last step).
    pub per_epoch: usize,
    /// Steps within which the teacher is chosen.
    pub teacher_steps: usize,
}

impl PhaseParams {
    pub(crate) fn plain(
        name: &'static str,
        index: usize,
        p: &crate::PhaseSection,
        n_train: usize,
        every: usize,
    ) -> PhaseParams {
        PhaseParams {
            name,
            index,
            steps: steps(p.epochs, n_train, p.batch_size),
            lr: p.lr,
            batch_size: p.batch_size,
            gate_lr: None,
            every,
            select: None,
        }
    }

    /// Linear warm-up over 6% of the steps, then linear decay to 0.
    pub(crate) fn lr_at(&self, step: usize) -> f64 {
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
pub(crate) struct Budget {
    pub left: Option<usize>,
    pub interrupt: Option<Arc<AtomicBool>>,
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

/// What every phase shares.
pub(crate) struct Ctx<'a, B: AutodiffBackend> {
    pub exp: &'a Experiment,
    pub data: &'a Dataset,
    pub stage: &'a mut Stage,
    pub progress: bool,
    pub budget: Budget,
    pub clock: std::time::Instant,
    pub device: &'a B::Device,
}

/// The teacher of a distilled phase and the distillation settings.
pub(crate) type Teacher<'a, B> = (
    &'a TaskModel<<B as AutodiffBackend>::InnerBackend>,
    &'a DistillSection,
);

/// Maximum global gradient norm of the weights.
pub const MAX_GRAD_NORM: f64 = 1.0;

/// The optimizer of the weights in every phase: AdamW with weight decay 0.01 (one fused pass
/// per parameter on flex, [`crate::optim::FusedAdamW`]).
pub fn weight_optimizer<B: AutodiffBackend, M: AutodiffModule<B>>() -> impl Optimizer<M, B> {
    crate::optim::FusedAdamW::new(0.01).init::<B, M>()
}

/// One training step of a model without gates, as every phase without gates runs it:
/// forward, loss (with its tally: one read-back of the loss and, for a classifier, of the
/// correct count), backward, global-norm clipping at [`MAX_GRAD_NORM`], one step of `opt`
/// at `lr`. `cargo xtask bench train-step` times this function.
pub fn dense_step<B: AutodiffBackend, M: Net<B> + AutodiffModule<B>>(
    model: M,
    opt: &mut impl Optimizer<M, B>,
    batch: crate::data::Batch<B>,
    lr: f64,
) -> (M, Tally) {
    // On a rayon worker: see `kernels::on_workers`.
    shears_layers::kernels::on_workers::<B, _>(|| {
        let (l, tally) = loss(&model, batch.input, batch.labels, Draw::Eval);
        let mut grads = GradientsParams::from_grads(l.backward(), &model);
        clip_global_norm(&model, &mut grads, MAX_GRAD_NORM);
        (opt.step(lr, model, grads), tally)
    })
}

/// Trains `model` for the rest of `phase` (from `state.step`; from the current
/// checkpoint's records when that is past 0), checkpointing every `phase.every` steps.
/// `None` when the step budget ran out or an interrupt came (a checkpoint is saved first).
pub(crate) fn train_phase<B: AutodiffBackend, M: Net<B> + AutodiffModule<B>>(
    mut model: M,
    phase: &PhaseParams,
    mut lag: Option<&mut Lagrangian>,
    teacher: Option<Teacher<'_, B>>,
    ctx: &mut Ctx<'_, B>,
    state: &mut State,
) -> Result<Option<M>, TrainError>
where
    M::InnerModule: Net<B::InnerBackend>,
{
    let (exp, data, device) = (ctx.exp, ctx.data, ctx.device);
    let recorder = Rec::new();
    let mut opt = weight_optimizer::<B, M>();
    let mut gate_opt = AdamConfig::new().init::<B, GateSet<B>>();
    if state.step > 0 {
        let path = ctx.stage.record("model")?;
        model = model
            .load_file(&path, &recorder, device)
            .map_err(|e| ckpt_err(&path, e))?;
        let path = ctx.stage.record("optim")?;
        let rec = recorder
            .load(path.clone(), device)
            .map_err(|e| ckpt_err(&path, e))?;
        opt = opt.load_record(rec);
        if phase.gate_lr.is_some() {
            let path = ctx.stage.record("gate-optim")?;
            let rec = recorder
                .load(path.clone(), device)
                .map_err(|e| ckpt_err(&path, e))?;
            gate_opt = gate_opt.load_record(rec);
        }
    }
    let total_units = model.gates().map(|g| g.total_units()).unwrap_or(0);
    let measure = exp.size_measure();
    let bar = Progress::new(phase.name, phase.steps, state.step, ctx.progress);
    let mut window = Tally::default();
    let mut last_s = 0.0;
    let log_every = (phase.steps / 100).max(1);
    let order_seed = key(exp.seed, phase.index, Purpose::DataOrder);
    while state.step < phase.steps {
        if !ctx.budget.take() {
            save_mid_phase(&model, &opt, &gate_opt, phase, ctx, state, Vec::new())?;
            bar.finish();
            return Ok(None);
        }
        let step = state.step;
        let idx = step_indices(data.train.len(), phase.batch_size, order_seed, step);
        let mut batch = make_batch::<B>(&data.train, &idx, data.pad_id, device);
        batch.input = batch
            .input
            .with_dropout(key(exp.seed, state.global_step, Purpose::Dropout));
        if model.gates().is_none() && teacher.is_none() {
            let (next, tally) = dense_step(model, &mut opt, batch, phase.lr_at(step));
            model = next;
            window.add(tally);
        } else {
            let draw = match model.gates() {
                Some(_) => Draw::Sample(key(exp.seed, state.global_step, Purpose::GateNoise)),
                None => Draw::Eval,
            };
            let (task_loss, tally) = shears_layers::kernels::on_workers::<B, _>(|| match teacher {
                Some((t, cfg)) => {
                    let targets = teacher_targets::<B>(t, &batch.input, cfg);
                    let (l, tally, _) =
                        distill_loss(&model, batch.input, batch.labels, draw, targets, cfg);
                    (l, tally)
                }
                None => loss(&model, batch.input, batch.labels, draw),
            });
            let total = match (&lag, model.expected_sparsity(measure)) {
                (Some(l), Some(s)) => task_loss + l.term(s, step),
                _ => task_loss,
            };
            let mut grads = shears_layers::kernels::on_workers::<B, _>(|| total.backward());
            if let (Some(gate_lr), Some(g)) = (phase.gate_lr, model.gates()) {
                let gg = GradientsParams::from_module(&mut grads, g);
                model = model.map_gates(|gs| gate_opt.step(gate_lr, gs, gg));
            }
            // The weights' gradients (the gates', if any, were taken out above: CoFi clips the
            // model's parameters, not the L0 module's).
            let mut rest = GradientsParams::from_grads(grads, &model);
            clip_global_norm(&model, &mut rest, MAX_GRAD_NORM);
            let lr = phase.lr_at(step);
            model = shears_layers::kernels::on_workers::<B, _>(|| opt.step(lr, model, rest));
            if let (Some(l), Some(s)) = (lag.as_deref_mut(), model.expected_sparsity(measure)) {
                last_s = s.into_scalar().elem::<f64>();
                l.ascend(last_s, step);
                state.lagrangian = Some((l.l1.to_bits(), l.l2.to_bits()));
            }
            window.add(tally);
        }
        state.step += 1;
        state.global_step += 1;
        if state.step.is_multiple_of(log_every) || state.step == phase.steps {
            let point = Point {
                phase: phase.name.into(),
                step: state.step,
                loss: window.loss(),
                accuracy: (exp.task == Task::Classification).then(|| window.accuracy()),
                expected_sparsity: lag.as_ref().map(|_| last_s),
                target_sparsity: lag.as_ref().map(|l| l.target.at(step)),
                lambda1: lag.as_ref().map(|l| l.l1),
                lambda2: lag.as_ref().map(|l| l.l2),
                lr: phase.lr_at(step),
            };
            let mut msg = format!("loss {:.4}", point.loss);
            if let Some(a) = point.accuracy {
                msg += &format!(" acc {:.3}", a);
            }
            if lag.is_some() {
                let target = point.target_sparsity.unwrap_or(0.0);
                msg += &match measure {
                    None => format!(
                        " open {:.1}/{} (target {:.1})",
                        (1.0 - last_s) * total_units as f64,
                        total_units,
                        (1.0 - target) * total_units as f64
                    ),
                    Some(_) => format!(" size {:.3} (target {:.3})", 1.0 - last_s, 1.0 - target),
                };
            }
            bar.update(state.step, &msg);
            state.history.push(point);
            window = Tally::default();
        }
        let epoch_end = phase
            .select
            .filter(|s| state.step.is_multiple_of(s.per_epoch.max(1)) || state.step == phase.steps);
        if let Some(select) = epoch_end {
            let best = select_epoch(&model, select, ctx, state);
            let inner = model.valid();
            let mut files: Vec<(&str, Writer<'_>)> = Vec::new();
            if best.0 {
                files.push(("baseline", model_writer(&inner)));
            }
            if best.1 {
                files.push(("dense", model_writer(&inner)));
            }
            save_mid_phase(&model, &opt, &gate_opt, phase, ctx, state, files)?;
        } else if phase.every > 0
            && state.step.is_multiple_of(phase.every)
            && state.step < phase.steps
        {
            save_mid_phase(&model, &opt, &gate_opt, phase, ctx, state, Vec::new())?;
        }
    }
    bar.finish();
    Ok(Some(model))
}

/// Validation at an epoch's end (see [`Select`]): records the score and returns whether
/// this epoch is the best so far (the baseline) and the best within the teacher's steps.
fn select_epoch<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    select: Select,
    ctx: &Ctx<'_, B>,
    state: &mut State,
) -> (bool, bool)
where
    M::InnerModule: Net<B::InnerBackend>,
{
    let (exp, data) = (ctx.exp, ctx.data);
    let inner = model.valid();
    let t = evaluate(
        &inner,
        &data.valid,
        data.pad_id,
        exp.eval.batch_size,
        ctx.device,
    );
    // Higher is better: accuracy (ties to the lower loss), or the negative loss.
    let score = match exp.task {
        Task::Classification => (t.accuracy(), -t.loss()),
        Task::Lm => (-t.loss(), 0.0),
    };
    let better = |best: Option<usize>| {
        best.is_none_or(|i| {
            let b: &EpochScore = &state.epochs[i];
            score > (b.score, b.tie)
        })
    };
    let is_baseline = better(state.baseline_epoch);
    let in_teacher = state.step <= select.teacher_steps;
    let is_teacher = in_teacher && better(state.teacher_epoch);
    state.epochs.push(EpochScore {
        step: state.step,
        valid_loss: t.loss(),
        valid_accuracy: (exp.task == Task::Classification).then(|| t.accuracy()),
        score: score.0,
        tie: score.1,
    });
    let i = state.epochs.len() - 1;
    if is_baseline {
        state.baseline_epoch = Some(i);
    }
    if is_teacher {
        state.teacher_epoch = Some(i);
    }
    (is_baseline, is_teacher)
}

/// A checkpoint inside a phase: the model, both optimizers' state, `extra` records and
/// `state`.
fn save_mid_phase<'w, B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>, G>(
    model: &'w M,
    opt: &'w O,
    gate_opt: &'w G,
    phase: &PhaseParams,
    ctx: &mut Ctx<'_, B>,
    state: &mut State,
    extra: Vec<(&'w str, Writer<'w>)>,
) -> Result<(), TrainError>
where
    G: Optimizer<GateSet<B>, B>,
{
    state.account(&mut ctx.clock);
    let mut files: Vec<(&str, Writer<'_>)> = vec![
        (
            "model",
            Box::new(|p: &std::path::Path| {
                model
                    .clone()
                    .save_file(p, &Rec::new())
                    .map_err(|e| ckpt_err(p, e))
            }),
        ),
        (
            "optim",
            Box::new(|p: &std::path::Path| {
                Rec::new()
                    .record(opt.to_record(), p.to_path_buf())
                    .map_err(|e| ckpt_err(p, e))
            }),
        ),
    ];
    files.extend(extra);
    if phase.gate_lr.is_some() {
        files.push((
            "gate-optim",
            Box::new(|p: &std::path::Path| {
                Rec::new()
                    .record(gate_opt.to_record(), p.to_path_buf())
                    .map_err(|e| ckpt_err(p, e))
            }),
        ));
    }
    ctx.stage.save(state, files)
}

/// A writer of a finished phase's model record.
pub(crate) fn model_writer<'a, B: Backend, M: Module<B> + 'a>(model: &'a M) -> Writer<'a> {
    Box::new(move |p: &std::path::Path| {
        model
            .clone()
            .save_file(p, &Rec::new())
            .map_err(|e| ckpt_err(p, e))
    })
}
