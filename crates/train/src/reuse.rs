//! `RunOptions::dense_from`: a finished run stands in for this experiment's dense phase.
//!
//! The dense phase (fine-tune, teacher and baseline selection on validation) is two thirds of
//! the default run's time and depends on few keys. Runs that differ only after it (another
//! target, distillation on or off, another gate set: ablations, sweeps) start from the
//! teacher and the baseline a finished run wrote, and are then the same run bit for bit as if
//! they had trained the dense phase themselves (the test `reusing_a_dense_phase_is_exact`).

use std::path::Path;

use burn::prelude::*;
use serde_json::{Value, json};

use crate::report::Report;
use crate::summary::{first_difference, read_reports};
use crate::task::TaskModel;
use crate::taskfile::{DENSE_DIR, TEACHER_DIR, load_task_model};
use crate::{Experiment, TrainError};

/// The keys of `exp` that determine its dense phase: the task, seed, model, data, the dense
/// section and the baseline's length (with `baseline.match_path`, the gated and fine-tune
/// epochs too), and the evaluation batch (validation picks the teacher and the baseline).
/// Not: the gates, the target, distillation, the fine-tune's learning rate, checkpoints.
fn dense_identity(exp: &Experiment) -> Value {
    let mut v = json!({
        "task": exp.task,
        "seed": exp.seed,
        "model": exp.model,
        "data": exp.data,
        "dense": exp.dense,
        "baseline": exp.baseline,
        "eval": { "batch_size": exp.eval.batch_size },
    });
    if exp.baseline.match_path {
        v["gated"] = json!({ "epochs": exp.gated.epochs });
        v["finetune"] = json!({ "epochs": exp.finetune.epochs });
    }
    v
}

/// What a finished run's dense phase left: its teacher, its baseline and its report.
pub(crate) struct DensePhase<B: Backend> {
    pub teacher: TaskModel<B>,
    pub baseline: TaskModel<B>,
    pub report: Report,
}

/// Loads the dense phase of the finished run `run` for `exp`, after checking that `run`
/// trained it with the same keys ([`dense_identity`]; the first that differs is named with
/// both values) and that its models carry `labels`.
pub(crate) fn load_dense_phase<B: Backend>(
    run: &Path,
    exp: &Experiment,
    labels: &[String],
    device: &B::Device,
) -> Result<DensePhase<B>, TrainError> {
    let err = |reason: String| TrainError::DenseFrom {
        run: run.to_path_buf(),
        reason,
    };
    if !run.is_dir() {
        return Err(err("not a directory".into()));
    }
    let report = read_reports(&[run.to_path_buf()])
        .map_err(|e| {
            err(format!(
                "{e}; give the output directory of a finished `train-gated` run"
            ))
        })?
        .remove(0)
        .1;
    let (there, here) = (dense_identity(&report.config), dense_identity(exp));
    if let Some(key) = first_difference(&there, &here, "") {
        let at = |v: &Value| {
            v.pointer(&format!("/{}", key.replace('.', "/")))
                .map_or_else(|| "absent".to_string(), Value::to_string)
        };
        return Err(err(format!(
            "its dense phase was trained differently: `{key}` is {} there and {} here",
            at(&there),
            at(&here)
        )));
    }
    if report.eval_teacher.is_none() {
        return Err(err("its report has no teacher evaluation".into()));
    }
    let load = |name: &str| -> Result<TaskModel<B>, TrainError> {
        let dir = run.join(name);
        if !dir.is_dir() {
            return Err(err(format!(
                "it has no `{name}` directory (runs before `teacher-model` was written keep the baseline only; run it again to reuse it)"
            )));
        }
        match load_task_model::<B>(&dir, device)? {
            (model, Some(info)) if info.labels == labels => Ok(model),
            (_, info) => Err(err(format!(
                "`{name}` has the labels {:?}, this experiment {labels:?}",
                info.map(|i| i.labels).unwrap_or_default()
            ))),
        }
    };
    Ok(DensePhase {
        teacher: load(TEACHER_DIR)?,
        baseline: load(DENSE_DIR)?,
        report,
    })
}
