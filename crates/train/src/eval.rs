//! Evaluating a saved model on a dataset file: accuracy (classification) or perplexity (LM),
//! and forward latency.

use std::path::Path;
use std::time::Instant;

use burn::prelude::*;
use serde::Serialize;
use shears_layers::Tokenizer;

use crate::data::{Split, make_batch, read_table};
use crate::task::{Net, evaluate};
use crate::taskfile::load_task_model;
use crate::{Task, TrainError};

/// What `eval` measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalSummary {
    /// The task.
    pub task: Task,
    /// Examples (classification) or blocks (LM) evaluated.
    pub examples: usize,
    /// Rows dropped (a label the model does not know, or empty text).
    pub dropped: usize,
    /// Mean loss.
    pub loss: f64,
    /// Accuracy (classification).
    pub accuracy: Option<f64>,
    /// Perplexity (LM).
    pub perplexity: Option<f64>,
    /// Median forward latency of one batch of `batch` examples (ms).
    pub latency_ms: f64,
    /// Batch size.
    pub batch: usize,
    /// Tokens per example (classification: longer texts are truncated) or per block (LM).
    pub max_len: usize,
    /// Parameters.
    pub params: usize,
    /// Which rows were evaluated: `test split` (the held-out split of the model's recorded
    /// training data) or `all rows` (another file, or a model that records no data).
    pub rows: String,
}

/// Column overrides for [`eval_dir`].
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    /// Text column (default: the one the model was trained with, else `text`).
    pub text_column: Option<String>,
    /// Label column (default: the one the model was trained with, else `label`).
    pub label_column: Option<String>,
    /// Batch size.
    pub batch_size: usize,
    /// Timed forward passes.
    pub repeats: usize,
    /// Evaluate every row of a file other than the model's recorded training data (without
    /// it, that is an error; with the recorded file only its test split is evaluated).
    pub other_data: bool,
    /// Tokens per example (default: the length the model was trained with, else the
    /// tokenizer's `model_max_length` capped at the position table).
    pub max_len: Option<usize>,
}

/// Evaluates the model in `model_dir` on every usable row of `data`.
pub fn eval_dir<B: Backend>(
    model_dir: &Path,
    data: &Path,
    opts: &EvalOptions,
    device: &B::Device,
) -> Result<EvalSummary, TrainError> {
    let (model, info) = load_task_model::<B>(model_dir, device)?;
    let config = model.backbone.config().clone();
    let task = match &info {
        Some(i) => i.task,
        None if config.family.arch().lm_head => Task::Lm,
        None => {
            return Err(TrainError::Config {
                source_name: model_dir.display().to_string(),
                message: format!(
                    "a {} without a task head (no task.json, no `classifier.*` tensors): \
                     evaluate a sequence classifier (a `train-gated` output or a Hugging Face \
                     `BertForSequenceClassification` / `RobertaForSequenceClassification`)",
                    config.family
                ),
            });
        }
    };
    let tokenizer = Tokenizer::from_dir(model_dir)?;
    let text = opts
        .text_column
        .clone()
        .or_else(|| info.as_ref().map(|i| i.text_column.clone()))
        .unwrap_or_else(|| "text".into());
    let max_len = opts
        .max_len
        .or(info.as_ref().map(|i| i.max_len))
        .unwrap_or_else(|| crate::taskfile::default_max_len(model_dir, &config));
    if max_len == 0 || max_len > config.max_len() {
        return Err(TrainError::OutOfRange {
            key: "max_len".into(),
            value: max_len.to_string(),
            expected: format!("1..={} (the model's position table)", config.max_len()),
        });
    }
    let recorded = info.as_ref().and_then(|i| i.data.clone());
    let same_file =
        recorded
            .as_ref()
            .is_some_and(|src| match (src.path.canonicalize(), data.canonicalize()) {
                (Ok(a), Ok(b)) => a == b,
                _ => src.path == data,
            });
    if let (Some(src), false, false) = (&recorded, same_file, opts.other_data) {
        return Err(TrainError::OtherData {
            recorded: src.path.clone(),
            given: data.to_path_buf(),
        });
    }
    let mut split = Split::default();
    let dropped;
    if let (Some(src), true, Some(i)) = (&recorded, same_file, &info) {
        // The held-out test split, exactly as training split the file.
        let label_column = opts
            .label_column
            .clone()
            .unwrap_or_else(|| i.label_column.clone());
        let section = src.section(data, text.clone(), label_column, i.labels.clone(), max_len);
        let ds = crate::data::load_dataset(&section, task, &tokenizer, src.seed)?;
        return finish(
            &model,
            ds.test,
            ds.dropped_label + ds.dropped_empty,
            task,
            "test split".into(),
            config.param_count(),
            opts,
            tokenizer.pad_id(),
            max_len,
            device,
        );
    }
    match task {
        Task::Classification => {
            let labels = info.as_ref().map(|i| i.labels.clone()).unwrap_or_default();
            let label = opts
                .label_column
                .clone()
                .or_else(|| info.as_ref().map(|i| i.label_column.clone()))
                .unwrap_or_else(|| "label".into());
            let all_classes = info.as_ref().is_some_and(|i| i.all_classes);
            let keep: &[String] = if all_classes { &[] } else { &labels };
            let table = read_table(data, &text, Some(&label), keep)?;
            dropped = table.dropped_label + table.dropped_empty;
            for r in &table.rows {
                let l = r.label.as_deref().unwrap_or_default();
                let class = crate::data::class_index(&labels, l).ok_or_else(|| {
                    TrainError::UnknownLabel {
                        path: data.to_path_buf(),
                        label: l.to_string(),
                        known: labels.clone(),
                    }
                })?;
                split
                    .ids
                    .push(tokenizer.encode_truncated(&r.text, max_len)?);
                split.labels.push(class);
            }
        }
        Task::Lm => {
            let table = read_table(data, &text, None, &[])?;
            dropped = table.dropped_empty;
            let mut stream = Vec::new();
            for r in &table.rows {
                stream.extend(tokenizer.encode(&r.text)?);
                stream.push(tokenizer.pad_id());
            }
            split.ids = stream.chunks_exact(max_len).map(<[u32]>::to_vec).collect();
            if split.is_empty() {
                return Err(TrainError::Data {
                    path: data.to_path_buf(),
                    reason: format!("fewer than {max_len} tokens: no block to evaluate"),
                });
            }
        }
    }
    finish(
        &model,
        split,
        dropped,
        task,
        "all rows".into(),
        config.param_count(),
        opts,
        tokenizer.pad_id(),
        max_len,
        device,
    )
}

/// Metrics and latency of `model` on `split`.
#[allow(clippy::too_many_arguments)]
fn finish<B: Backend>(
    model: &crate::task::TaskModel<B>,
    split: Split,
    dropped: usize,
    task: Task,
    rows: String,
    params: usize,
    opts: &EvalOptions,
    pad_id: u32,
    max_len: usize,
    device: &B::Device,
) -> Result<EvalSummary, TrainError> {
    let batch = opts.batch_size.max(1);
    let tally = evaluate(model, &split, pad_id, batch, device);
    let n = batch.min(split.len());
    let idx: Vec<usize> = (0..n).collect();
    let b = make_batch::<B>(&split, &idx, pad_id, device);
    let mut times = Vec::new();
    for i in 0..=opts.repeats.max(1) {
        let t = Instant::now();
        let out = model.output(b.input.clone(), shears_gates::Draw::Eval);
        let _: f32 = out.hidden.sum().into_scalar().elem();
        if i > 0 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(EvalSummary {
        task,
        examples: split.len(),
        dropped,
        loss: tally.loss(),
        accuracy: (task == Task::Classification).then(|| tally.accuracy()),
        perplexity: (task == Task::Lm).then(|| tally.perplexity()),
        latency_ms: times[times.len() / 2],
        batch: n,
        max_len,
        params,
        rows,
    })
}
