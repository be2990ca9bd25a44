//! The shared front end of commands that derive a model from a saved task model
//! (`factorize`, `sparsify`, `prune`): the model's task and length, the data split it was trained
//! with, calibration batches, test metrics.

use std::path::PathBuf;

use burn::prelude::*;
use serde::Serialize;
use shears_layers::Tokenizer;
use shears_pruners::{Calibrator, TaskModel};

use crate::data::{Dataset, Split, load_dataset, make_batch, read_table};
use crate::task::evaluate;
use crate::taskfile::{DataSource, TaskInfo};
use crate::{Task, TrainError};

/// Which data file a derived model is calibrated and measured on.
#[derive(Debug, Clone)]
pub struct DataChoice {
    /// The dataset file (CSV or JSON lines, `.bz2` allowed).
    pub data: PathBuf,
    /// Text column (default: the model's `task.json`, else `text`).
    pub text_column: Option<String>,
    /// Label column (default: the model's `task.json`, else `label`).
    pub label_column: Option<String>,
    /// Seed of the split, when the model records none (or with `other_data`).
    pub seed: u64,
    /// Split fractions (the same rule).
    pub split: [f64; 3],
    /// Allow another file than the model's recorded training data.
    pub other_data: bool,
}

/// Test metrics of one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Mean loss.
    pub loss: f64,
    /// Accuracy (classification).
    pub accuracy: Option<f64>,
    /// Perplexity (language model).
    pub perplexity: Option<f64>,
}

/// The model's task (`None`: a bare encoder) and the sequence length it was trained at.
pub(crate) fn task_and_len<B: Backend>(
    model: &TaskModel<B>,
    info: Option<&TaskInfo>,
) -> (Option<Task>, usize) {
    let config = model.backbone.config();
    let task = match info {
        Some(i) => Some(i.task),
        None => config.family.arch().lm_head.then_some(Task::Lm),
    };
    (task, info.map_or(config.max_len().min(128), |i| i.max_len))
}

/// Projection-input statistics from training examples, until `tokens` tokens were seen.
pub(crate) fn calibrate<B: Backend>(
    model: &TaskModel<B>,
    data: &Dataset,
    tokens: usize,
    batch_size: usize,
    device: &B::Device,
) -> Result<Calibrator, TrainError> {
    let mut calibrator = Calibrator::new();
    for idx in (0..data.train.len())
        .collect::<Vec<_>>()
        .chunks(batch_size.max(1))
    {
        if calibrator.tokens() >= tokens {
            break;
        }
        let b = make_batch::<B>(&data.train, idx, data.pad_id, device);
        calibrator.observe(&model.backbone, b.input)?;
    }
    tracing::info!(tokens = calibrator.tokens(), "calibrated");
    Ok(calibrator)
}

/// The task metric on the test split (`None` without a task).
pub(crate) fn test_metrics<B: Backend>(
    model: &TaskModel<B>,
    task: Option<Task>,
    data: &Dataset,
    batch_size: usize,
    device: &B::Device,
) -> Option<Metrics> {
    task.map(|t| {
        let tally = evaluate(model, &data.test, data.pad_id, batch_size, device);
        Metrics {
            loss: tally.loss(),
            accuracy: (t == Task::Classification).then(|| tally.accuracy()),
            perplexity: (t == Task::Lm).then(|| tally.perplexity()),
        }
    })
}

/// How to split `opts.data`: as `train-gated` split it when the model's `task.json` records
/// it and `opts.data` is that file; `opts`' own when the model records nothing or
/// `opts.other_data` allows another file; otherwise a typed error naming both.
pub(crate) fn split_of(
    opts: &DataChoice,
    info: Option<&TaskInfo>,
) -> Result<DataSource, TrainError> {
    let own = DataSource::rows(opts.data.clone(), opts.seed, opts.split);
    let Some(src) = info.and_then(|i| i.data.as_ref()) else {
        return Ok(own);
    };
    let same = |a: &std::path::Path, b: &std::path::Path| match (a.canonicalize(), b.canonicalize())
    {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if same(&src.path, &opts.data) {
        Ok(src.clone())
    } else if opts.other_data {
        Ok(own)
    } else {
        Err(TrainError::OtherData {
            recorded: src.path.clone(),
            given: opts.data.clone(),
        })
    }
}

/// The dataset split as `train-gated` split it; a bare BERT (no task) gets its texts only.
pub(crate) fn dataset(
    opts: &DataChoice,
    task: Option<Task>,
    info: Option<&TaskInfo>,
    tokenizer: &Tokenizer,
    max_len: usize,
) -> Result<Dataset, TrainError> {
    let text_column = opts
        .text_column
        .clone()
        .or_else(|| info.map(|i| i.text_column.clone()))
        .unwrap_or_else(|| "text".into());
    let label_column = opts
        .label_column
        .clone()
        .or_else(|| info.map(|i| i.label_column.clone()))
        .unwrap_or_else(|| "label".into());
    let src = split_of(opts, info)?;
    let section = src.section(
        &opts.data,
        text_column.clone(),
        label_column,
        info.map(|i| i.labels.clone()).unwrap_or_default(),
        max_len,
    );
    // A Hugging Face classifier's classes are its `id2label`: a data label outside them is
    // an error (as in `eval`), not a row silently left out.
    if let (Some(info), Some(Task::Classification)) = (info.filter(|i| i.all_classes), task) {
        let table = read_table(&opts.data, &text_column, Some(&section.label_column), &[])?;
        if let Some(label) = table
            .rows
            .iter()
            .filter_map(|r| r.label.as_deref())
            .find(|l| crate::data::class_index(&info.labels, l).is_none())
        {
            return Err(TrainError::UnknownLabel {
                path: opts.data.clone(),
                label: label.to_string(),
                known: info.labels.clone(),
            });
        }
    }
    match task {
        Some(t) => load_dataset(&section, t, tokenizer, src.seed),
        None => {
            // Texts only: the first 80% calibrate, the rest time the forward pass.
            let table = read_table(&opts.data, &text_column, None, &[])?;
            let mut ids = Vec::with_capacity(table.rows.len());
            for r in &table.rows {
                ids.push(tokenizer.encode_truncated(&r.text, max_len)?);
            }
            let cut = (ids.len() * 4 / 5).max(1).min(ids.len());
            let test = ids.split_off(cut);
            let test = if test.is_empty() { ids.clone() } else { test };
            Ok(Dataset {
                path: opts.data.clone(),
                label_names: Vec::new(),
                train: Split {
                    ids,
                    labels: Vec::new(),
                },
                valid: Split::default(),
                test: Split {
                    ids: test,
                    labels: Vec::new(),
                },
                dropped_label: 0,
                dropped_empty: table.dropped_empty,
                pad_id: tokenizer.pad_id(),
                corpus: None,
            })
        }
    }
}
