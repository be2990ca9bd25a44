//! A task model's directory: the backbone (shears' format), the classification head, the
//! tokenizer and `task.json` (the task, its labels and where its data came from).

use std::path::Path;

use burn::prelude::*;
use serde::{Deserialize, Serialize};
use shears_layers::{Transformer, save, tensorio};
use shears_pruners::ClassifierHead;

use crate::checkpoint::io_err;
use crate::task::TaskModel;
use crate::{Task, TrainError};

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
    /// Where the training data came from and how it was split (absent in directories
    /// written before it was recorded).
    #[serde(default)]
    pub data: Option<DataSource>,
}

/// The dataset a task model was trained on: enough to rebuild its exact train /
/// validation / test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// The dataset file.
    pub path: std::path::PathBuf,
    /// Seed of the shuffle before the split.
    pub seed: u64,
    /// Train / validation / test fractions.
    pub split: [f64; 3],
    /// Rows used (0: all), applied after the shuffle.
    pub limit: usize,
}

/// Directory of the Hugging Face export of the pruned BERT in a run's output.
pub const HF_DIR: &str = "hf-model";
/// The dense baseline in a `train-gated` output (the best validation epoch of the dense run).
pub const DENSE_DIR: &str = "dense-model";
/// The teacher in a `train-gated` output (the best validation epoch within `dense.epochs`,
/// where the gated phase started; `--dense-from` reuses it).
pub const TEACHER_DIR: &str = "teacher-model";
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
            let head = ClassifierHead::new(d, i.labels.len(), 0, device);
            let tensors = shears_layers::hf::read_safetensors(&dir.join(HEAD_FILE))?;
            Some(tensorio::import(head, &tensors, device)?)
        }
        _ => None,
    };
    Ok((TaskModel { backbone, head }, info))
}
