//! Checkpoints of a run: versioned directories in the staging directory and an atomically
//! replaced pointer to the latest complete one.
//!
//! ```text
//! .NAME.partial/
//!   latest              "ckpt-000131": the newest complete checkpoint
//!   ckpt-000131/        state.json, the records of the phase in progress (model, optim,
//!                       gate-optim) and the models of finished phases (dense, pruned, final)
//! ```
//!
//! A checkpoint is filled in `ckpt-<step>.tmp/`, renamed into place, and only then does the
//! pointer move (write to a temporary file, rename); older checkpoints are removed after
//! that. A crash at any moment leaves the pointer on a complete checkpoint (or no pointer,
//! when none was complete yet: the run starts over).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use shears_layers::{ModelConfig, save};

use crate::TrainError;
use crate::report::{EvalResult, Point};

/// The phases of the pipeline, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Phase {
    Dense,
    Gated,
    Finetune,
    Done,
}

impl Phase {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Dense => "dense",
            Phase::Gated => "gated",
            Phase::Finetune => "finetune",
            Phase::Done => "done",
        }
    }
}

/// What a checkpoint holds beside the records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct State {
    /// The experiment the checkpoint belongs to (a resume with another config is refused).
    pub experiment: serde_json::Value,
    pub phase: Phase,
    /// Steps done in `phase`.
    pub step: usize,
    /// Steps done in all phases.
    pub global_step: usize,
    pub history: Vec<Point>,
    /// The multipliers (λ₁, λ₂) as the bits of their `f64`s, so that a resume continues
    /// with exactly the same values (a decimal round trip through JSON need not).
    pub lagrangian: Option<(u64, u64)>,
    pub dense: Option<EvalResult>,
    pub pruned: Option<EvalResult>,
    pub pruned_config: Option<ModelConfig>,
    pub gate_values: Vec<Vec<f64>>,
    /// Expected sparsity of the gates at the end of the gated phase.
    pub expected_sparsity: Option<f64>,
    /// Validation loss before the fine-tune: (learned kept set, random kept sets).
    pub gate_check: Option<(f64, f64)>,
    /// Validation accuracy before the fine-tune: (learned kept set, random kept sets).
    #[serde(default)]
    pub gate_check_accuracy: Option<(f64, f64)>,
    pub rescued: Vec<String>,
    /// Wall seconds spent in each phase, over every invocation.
    pub phase_seconds: BTreeMap<String, f64>,
    /// Wall seconds of the whole pipeline, over every invocation.
    pub seconds: f64,
    /// The dense phase's validation at each epoch's end.
    #[serde(default)]
    pub epochs: Vec<EpochScore>,
    /// Index in `epochs` of the teacher (the best within `dense.epochs`).
    #[serde(default)]
    pub teacher_epoch: Option<usize>,
    /// Index in `epochs` of the baseline (the best of the whole dense run).
    #[serde(default)]
    pub baseline_epoch: Option<usize>,
    /// The baseline's metrics.
    #[serde(default)]
    pub baseline: Option<EvalResult>,
    /// The finished run whose dense phase this one reused (`RunOptions::dense_from`).
    #[serde(default)]
    pub dense_from: Option<PathBuf>,
}

/// Validation of the dense model at an epoch's end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochScore {
    /// Steps done in the dense phase.
    pub step: usize,
    /// Validation loss.
    pub valid_loss: f64,
    /// Validation accuracy (classification).
    pub valid_accuracy: Option<f64>,
    /// What the best epoch maximises (accuracy, or the negative loss) and its tie-break.
    pub score: f64,
    /// Tie-break of `score` (the negative loss for accuracy).
    pub tie: f64,
}

impl State {
    pub(crate) fn new(experiment: serde_json::Value) -> Self {
        State {
            experiment,
            phase: Phase::Dense,
            step: 0,
            global_step: 0,
            history: Vec::new(),
            lagrangian: None,
            dense: None,
            pruned: None,
            pruned_config: None,
            gate_values: Vec::new(),
            expected_sparsity: None,
            gate_check: None,
            gate_check_accuracy: None,
            rescued: Vec::new(),
            phase_seconds: BTreeMap::new(),
            seconds: 0.0,
            epochs: Vec::new(),
            teacher_epoch: None,
            baseline_epoch: None,
            baseline: None,
            dense_from: None,
        }
    }

    /// Adds the time since `clock` to the current phase and the total, and restarts the
    /// clock (so wall times survive a stop and a resume).
    pub(crate) fn account(&mut self, clock: &mut Instant) {
        let s = clock.elapsed().as_secs_f64();
        *clock = Instant::now();
        if self.phase != Phase::Done {
            *self
                .phase_seconds
                .entry(self.phase.name().into())
                .or_default() += s;
        }
        self.seconds += s;
    }
}

pub(crate) fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

pub(crate) fn ckpt_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Records of finished phases, carried from one checkpoint to the next.
pub(crate) const ARTIFACTS: [&str; 5] = ["dense", "baseline", "pruned", "map", "final"];
const POINTER: &str = "latest";
const STATE: &str = "state.json";
/// Burn's `NamedMpkFileRecorder` adds this extension to the paths it is given.
const EXT: &str = "mpk";

/// Writes one file of a checkpoint into the directory it is given.
pub(crate) type Writer<'a> = Box<dyn FnOnce(&Path) -> Result<(), TrainError> + 'a>;

/// The staging directory of a run and its checkpoints.
pub(crate) struct Stage {
    pub dir: PathBuf,
    /// The checkpoint the pointer names (loaded from, or last written).
    current: Option<PathBuf>,
    writes: Cell<usize>,
    fail_after: Option<usize>,
}

impl Stage {
    /// A stage in `dir` (created); `fail_after` injects a failure after that many writes.
    pub(crate) fn create(dir: &Path, fail_after: Option<usize>) -> Result<Self, TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        Ok(Stage {
            dir: dir.to_path_buf(),
            current: None,
            writes: Cell::new(0),
            fail_after,
        })
    }

    /// The newest complete checkpoint's state, if the pointer names one.
    pub(crate) fn load_latest(&mut self) -> Result<Option<State>, TrainError> {
        let pointer = self.dir.join(POINTER);
        if !pointer.exists() {
            return Ok(None);
        }
        let name = std::fs::read_to_string(&pointer).map_err(|e| ckpt_err(&pointer, e))?;
        let ckpt = self.dir.join(name.trim());
        let path = ckpt.join(STATE);
        let text = std::fs::read_to_string(&path).map_err(|e| ckpt_err(&path, e))?;
        let state = serde_json::from_str(&text).map_err(|e| ckpt_err(&path, e))?;
        self.current = Some(ckpt);
        Ok(Some(state))
    }

    /// The path (without Burn's extension) of record `name` in the current checkpoint.
    pub(crate) fn record(&self, name: &str) -> Result<PathBuf, TrainError> {
        let ckpt = self
            .current
            .as_ref()
            .ok_or_else(|| ckpt_err(&self.dir, "no checkpoint to load from"))?;
        let path = ckpt.join(name);
        if !path.with_extension(EXT).exists() {
            return Err(ckpt_err(
                &path.with_extension(EXT),
                "missing from the checkpoint",
            ));
        }
        Ok(path)
    }

    /// Counts a write; fails if the failure injection says so.
    fn wrote(&self, what: &Path) -> Result<(), TrainError> {
        let n = self.writes.get() + 1;
        self.writes.set(n);
        if self.fail_after == Some(n) {
            return Err(TrainError::InjectedFailure {
                after: n,
                path: what.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Writes a checkpoint of `state` with the records `files` (name, writer), carrying the
    /// finished phases' records of the current checkpoint that `files` does not replace,
    /// then moves the pointer to it and removes the older checkpoints.
    pub(crate) fn save(
        &mut self,
        state: &State,
        files: Vec<(&str, Writer<'_>)>,
    ) -> Result<(), TrainError> {
        let mut name = format!("ckpt-{:06}", state.global_step);
        if self.current.as_deref() == Some(self.dir.join(&name).as_path()) {
            if files.is_empty() {
                // Nothing new since this checkpoint (a stop right after a phase boundary):
                // only the clock moved.
                let path = self.dir.join(&name).join(STATE);
                write_state(state, &path)?;
                return self.wrote(&path);
            }
            // A phase of no steps ended at the step of the current checkpoint: a new one
            // beside it, never over it.
            let base = name.clone();
            let mut k = 1;
            while self.dir.join(&name).exists() {
                name = format!("{base}-{k}");
                k += 1;
            }
        }
        let dir = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        for stale in [&tmp, &dir] {
            if stale.exists() {
                std::fs::remove_dir_all(stale).map_err(|e| io_err(stale, e))?;
            }
        }
        std::fs::create_dir(&tmp).map_err(|e| io_err(&tmp, e))?;
        let mut written = Vec::new();
        for (file, write) in files {
            write(&tmp.join(file))?;
            written.push(file.to_string());
            self.wrote(&tmp.join(file))?;
        }
        if let Some(cur) = &self.current {
            for a in ARTIFACTS {
                let from = cur.join(a).with_extension(EXT);
                if written.iter().any(|w| w == a) || !from.exists() {
                    continue;
                }
                let to = tmp.join(a).with_extension(EXT);
                // A hard link costs nothing; a copy where the file system has none.
                if std::fs::hard_link(&from, &to).is_err() {
                    std::fs::copy(&from, &to).map_err(|e| io_err(&to, e))?;
                }
                self.wrote(&to)?;
            }
        }
        let state_path = tmp.join(STATE);
        write_state(state, &state_path)?;
        self.wrote(&state_path)?;
        std::fs::rename(&tmp, &dir).map_err(|e| io_err(&dir, e))?;
        let pointer = self.dir.join(POINTER);
        save::write_atomic(&pointer, name.as_bytes())?;
        self.current = Some(dir.clone());
        self.wrote(&pointer)?;
        // Only now may the older checkpoints go.
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        for e in entries.flatten() {
            let p = e.path();
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("ckpt-") && p != dir {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
        tracing::info!(checkpoint = %dir.display(), "checkpoint saved");
        Ok(())
    }
}

fn write_state(state: &State, path: &Path) -> Result<(), TrainError> {
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    save::write_atomic(path, json.as_bytes())?;
    Ok(())
}
