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
    /// Whether `labels` are all the model's classes, so that a row with another label is
    /// an error rather than a row left out: true for a Hugging Face classifier (its
    /// `id2label`), false for ours (`data.labels` may choose some of a file's labels).
    #[serde(skip)]
    pub all_classes: bool,
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
    /// Language modelling: the column naming each row's document (empty: a row is a
    /// document).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub document_column: String,
    /// Language modelling: the corpus's other files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<crate::ExtraSource>,
}

impl DataSource {
    /// All rows of `path`, split by `seed` into `split`, each row its own document.
    pub fn rows(path: std::path::PathBuf, seed: u64, split: [f64; 3]) -> Self {
        DataSource {
            path,
            seed,
            split,
            limit: 0,
            document_column: String::new(),
            extra: Vec::new(),
        }
    }

    /// The record of an experiment's data (split with `seed`).
    pub fn of(data: &crate::DataSection, seed: u64) -> Self {
        DataSource {
            path: data.path.clone(),
            seed,
            split: data.split,
            limit: data.limit,
            document_column: data.document_column.clone(),
            extra: data.extra.clone(),
        }
    }

    /// The data section that splits `path` (this record's file, however it is named now)
    /// exactly as recorded.
    pub fn section(
        &self,
        path: &std::path::Path,
        text_column: String,
        label_column: String,
        labels: Vec<String>,
        max_len: usize,
    ) -> crate::DataSection {
        crate::DataSection {
            path: path.to_path_buf(),
            text_column,
            label_column,
            labels,
            split: self.split,
            max_len,
            limit: self.limit,
            document_column: self.document_column.clone(),
            extra: self.extra.clone(),
        }
    }
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

/// Loads a model directory written by [`run`], or any Hugging Face BERT / RoBERTa / GPT-2
/// checkpoint. Without `task.json`: a GPT-2 is a language model; an encoder with a
/// `classifier.*` head (`BertForSequenceClassification`) is a classifier whose classes are
/// its `config.json` `id2label` (see [`hf_task_info`]); an encoder without one has no head.
pub fn load_task_model<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(TaskModel<B>, Option<TaskInfo>), TrainError> {
    if !dir.is_dir() {
        return Err(io_err(dir, "not a directory"));
    }
    let (backbone, hf_head) = Transformer::<B>::load_with_head(dir, device)?;
    let info_path = dir.join(TASK_FILE);
    let info: Option<TaskInfo> = if info_path.exists() {
        let text = std::fs::read_to_string(&info_path).map_err(|e| io_err(&info_path, e))?;
        Some(serde_json::from_str(&text).map_err(|e| TrainError::Config {
            source_name: info_path.display().to_string(),
            message: e.to_string(),
        })?)
    } else if !hf_head.is_empty() {
        Some(hf_task_info(dir, backbone.config())?)
    } else {
        None
    };
    let head = match &info {
        Some(i) if i.task == Task::Classification => {
            let d = backbone
                .config()
                .d_pooler
                .ok_or_else(|| TrainError::Config {
                    source_name: dir.display().to_string(),
                    message: "a classification model without a pooler".into(),
                })?;
            let head = ClassifierHead::new(d, i.labels.len(), 0, device);
            let tensors = if hf_head.is_empty() {
                shears_layers::hf::read_safetensors(&dir.join(HEAD_FILE))?
            } else {
                hf_classifier_tensors(&hf_head, d, i.labels.len())?
            };
            Some(tensorio::import(head, &tensors, device)?)
        }
        _ => None,
    };
    Ok((TaskModel { backbone, head }, info))
}

/// The task of a Hugging Face sequence classifier, from its `config.json`: single-label
/// classification (a `problem_type` of `regression` or `multi_label_classification`, or
/// one label without a `problem_type`, which `transformers` treats as regression, is
/// [`LoadError::UnsupportedOption`]); the classes are `id2label` in id order (ids `0..n`,
/// each once; `LABEL_0`, `LABEL_1`, ... when absent, as `transformers` names them). Columns
/// `text` and `label`; tokens per example: [`default_max_len`].
pub fn hf_task_info(
    dir: &Path,
    config: &shears_layers::ModelConfig,
) -> Result<TaskInfo, TrainError> {
    let config_path = dir.join("config.json");
    let value = config.hf_config.clone().unwrap_or_default();
    let unsupported = |key: &str, value: &serde_json::Value, reason: &'static str| {
        TrainError::Load(shears_layers::LoadError::UnsupportedOption {
            path: config_path.clone(),
            key: key.into(),
            value: value.to_string(),
            reason,
        })
    };
    let bad = |message: String| TrainError::Config {
        source_name: config_path.display().to_string(),
        message,
    };
    let id2label = value.get("id2label").and_then(|v| v.as_object());
    let n = match (id2label, value.get("num_labels").and_then(|v| v.as_u64())) {
        (Some(m), _) => m.len(),
        (None, Some(n)) => n as usize,
        (None, None) => 2,
    };
    let problem = value.get("problem_type").filter(|v| !v.is_null());
    match problem.and_then(|v| v.as_str()) {
        None if problem.is_some() => {
            return Err(bad(format!(
                "`problem_type` = {} is not a string",
                problem.unwrap()
            )));
        }
        None | Some("single_label_classification") => {}
        Some(_) => {
            return Err(unsupported(
                "problem_type",
                problem.unwrap(),
                "shears evaluates single-label classification only",
            ));
        }
    }
    if n == 1 && problem.is_none() {
        return Err(unsupported(
            "num_labels",
            &serde_json::json!(1),
            "one label without a problem_type is regression in transformers; shears evaluates single-label classification only",
        ));
    }
    let labels = match id2label {
        None => (0..n).map(|i| format!("LABEL_{i}")).collect(),
        Some(m) => {
            let mut labels = vec![None; n];
            for (id, name) in m {
                let i = id
                    .parse::<usize>()
                    .ok()
                    .filter(|&i| i < n)
                    .ok_or_else(|| bad(format!("`id2label` has id `{id}`; ids are 0..{n}")))?;
                let name = name
                    .as_str()
                    .ok_or_else(|| bad(format!("`id2label` {id} is {name}, not a string")))?;
                labels[i] = Some(name.to_string());
            }
            labels
                .into_iter()
                .map(|l| l.unwrap_or_default())
                .collect::<Vec<_>>()
        }
    };
    if let Some(dup) = labels
        .iter()
        .enumerate()
        .find(|(i, l)| labels[..*i].contains(l))
        .map(|(_, l)| l)
    {
        return Err(bad(format!("`id2label` names class `{dup}` twice")));
    }
    Ok(TaskInfo {
        task: Task::Classification,
        labels,
        text_column: "text".into(),
        label_column: "label".into(),
        max_len: default_max_len(dir, config),
        data: None,
        all_classes: true,
    })
}

/// Tokens per example for a model directory that records none: the tokenizer's
/// `model_max_length` (`tokenizer_config.json`) capped at the position table, else the
/// position table.
pub fn default_max_len(dir: &Path, config: &shears_layers::ModelConfig) -> usize {
    shears_layers::Tokenizer::model_max_length(dir)
        .map_or(config.max_len(), |n| n.min(config.max_len()))
}

/// `classifier.weight` `[classes, hidden]` and `classifier.bias` as our head's tensors.
fn hf_classifier_tensors(
    hf: &shears_spaces::TensorMap,
    d_pooler: usize,
    n_classes: usize,
) -> Result<shears_spaces::TensorMap, TrainError> {
    use shears_layers::LoadError;
    let get = |key: &str, shape: Vec<usize>| {
        let t = hf.get(key).ok_or_else(|| LoadError::MissingKey {
            key: key.into(),
            expected: shape.clone(),
        })?;
        if t.shape != shape {
            return Err(LoadError::Shape {
                key: key.into(),
                expected: shape,
                found: t.shape.clone(),
            });
        }
        Ok(t.clone())
    };
    let weight = get("classifier.weight", vec![n_classes, d_pooler])?;
    let bias = get("classifier.bias", vec![n_classes])?;
    if let Some(extra) = hf
        .keys()
        .find(|k| *k != "classifier.weight" && *k != "classifier.bias")
    {
        return Err(LoadError::UnexpectedKey {
            key: extra.clone(),
            found: hf[extra].shape.clone(),
        }
        .into());
    }
    Ok([
        ("linear.weight".to_string(), weight.transpose()),
        ("linear.bias".to_string(), bias),
    ]
    .into_iter()
    .collect())
}

/// What [`export_hf_dir`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    /// `config.json`'s `model_type`: `bert` / `roberta` / `gpt2` (transformers' own class) or
    /// `shears_bert` / `shears_gpt2` (the modeling file written beside the weights).
    pub model_type: String,
    /// Its `architectures` entry.
    pub architecture: String,
    /// The cast of the weights.
    pub cast: shears_layers::hf::CastReport,
}

/// Writes the model directory `model_dir` (ours, or a Hugging Face one) as a Hugging Face
/// directory `out` with weights of `dtype`: a classifier with its `id2label`, tokenizer
/// files copied. `out` is refused or replaced as `existing` says, atomically either way.
pub fn export_hf_dir<B: Backend>(
    model_dir: &Path,
    out: &Path,
    dtype: shears_layers::hf::Dtype,
    existing: save::Existing,
    device: &B::Device,
) -> Result<ExportSummary, TrainError> {
    save::check_output(out, existing)?;
    let (model, info) = load_task_model::<B>(model_dir, device)?;
    let labels = info.map(|i| i.labels).unwrap_or_default();
    // `export_hf_as` replaces what is there once complete; `out` was checked above.
    let cast = model.export_hf_as(out, &labels, Some(model_dir), dtype)?;
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("config.json")).map_err(|e| io_err(out, e))?,
    )
    .map_err(|e| io_err(out, e))?;
    Ok(ExportSummary {
        model_type: config["model_type"].as_str().unwrap_or_default().into(),
        architecture: config["architectures"][0]
            .as_str()
            .unwrap_or_default()
            .into(),
        cast,
    })
}
