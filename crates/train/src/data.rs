//! Datasets: a CSV (with a header) or JSON-lines file, optionally bzip2-compressed, with a
//! text column and a label column; a seeded train / validation / test split; token-id
//! examples; padded batches.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use burn::prelude::*;
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use shears_layers::{ModelInput, Tokenizer};

use crate::{DataSection, Task, TrainError};

/// One text and its label as read from the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The text.
    pub text: String,
    /// The label (absent when no label column was asked for).
    pub label: Option<String>,
}

/// A dataset file read and checked.
#[derive(Debug, Clone)]
pub struct Table {
    /// The file.
    pub path: PathBuf,
    /// Usable rows.
    pub rows: Vec<Row>,
    /// Rows dropped because their label is not one of the configured labels.
    pub dropped_label: usize,
    /// Rows dropped because their text is empty.
    pub dropped_empty: usize,
}

fn data_err(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Data {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Opens `path`, decompressing `.bz2`.
fn open(path: &Path) -> Result<Box<dyn Read>, TrainError> {
    let f = std::fs::File::open(path).map_err(|e| data_err(path, e.to_string()))?;
    if path.extension().is_some_and(|e| e == "bz2") {
        Ok(Box::new(bzip2::read::MultiBzDecoder::new(BufReader::new(
            f,
        ))))
    } else {
        Ok(Box::new(BufReader::new(f)))
    }
}

/// Whether the file is JSON lines (`.jsonl` / `.json`, before an optional `.bz2`).
fn is_jsonl(path: &Path) -> bool {
    let name = path.to_string_lossy().to_lowercase();
    let name = name.strip_suffix(".bz2").unwrap_or(&name);
    name.ends_with(".jsonl") || name.ends_with(".json") || name.ends_with(".ndjson")
}

/// The class of a data label: the class of that name, or, for classes named as
/// `transformers` names them when a config gives no `id2label` (`LABEL_0`, `LABEL_1`, ...),
/// the class whose id the label spells (`0`, `1`, ...).
pub fn class_index(classes: &[String], label: &str) -> Option<usize> {
    classes.iter().position(|c| c == label).or_else(|| {
        let placeholders = classes
            .iter()
            .enumerate()
            .all(|(i, c)| *c == format!("LABEL_{i}"));
        label
            .parse::<usize>()
            .ok()
            .filter(|&i| placeholders && i < classes.len())
    })
}

/// Reads the text (and, if `label_column` is given, label) of every row. `labels`, when not
/// empty, keeps only rows with one of those labels ([`class_index`]: placeholder classes
/// `LABEL_i` take the data label `i`).
pub fn read_table(
    path: &Path,
    text_column: &str,
    label_column: Option<&str>,
    labels: &[String],
) -> Result<Table, TrainError> {
    let raw = if is_jsonl(path) {
        read_jsonl(path, text_column, label_column)?
    } else {
        read_csv(path, text_column, label_column)?
    };
    let n_raw = raw.len();
    let mut table = Table {
        path: path.to_path_buf(),
        rows: Vec::with_capacity(n_raw),
        dropped_label: 0,
        dropped_empty: 0,
    };
    for row in raw {
        if row.text.trim().is_empty() {
            table.dropped_empty += 1;
        } else if !labels.is_empty()
            && row
                .label
                .as_ref()
                .is_none_or(|l| class_index(labels, l).is_none())
        {
            table.dropped_label += 1;
        } else {
            table.rows.push(row);
        }
    }
    if table.rows.is_empty() {
        return Err(TrainError::NoUsableRows {
            path: path.to_path_buf(),
            read: n_raw,
            dropped_label: table.dropped_label,
            dropped_empty: table.dropped_empty,
        });
    }
    Ok(table)
}

fn read_csv(
    path: &Path,
    text_column: &str,
    label_column: Option<&str>,
) -> Result<Vec<Row>, TrainError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(open(path)?);
    let headers = reader
        .headers()
        .map_err(|e| data_err(path, format!("cannot read the CSV header: {e}")))?
        .clone();
    let column = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            data_err(
                path,
                format!(
                    "no column `{name}` (columns: {})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    };
    let t = column(text_column)?;
    let l = label_column.map(column).transpose()?;
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| data_err(path, format!("record {}: {e}", i + 1)))?;
        rows.push(Row {
            text: rec.get(t).unwrap_or_default().to_string(),
            label: l.map(|l| rec.get(l).unwrap_or_default().to_string()),
        });
    }
    Ok(rows)
}

fn read_jsonl(
    path: &Path,
    text_column: &str,
    label_column: Option<&str>,
) -> Result<Vec<Row>, TrainError> {
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(open(path)?).lines().enumerate() {
        let line = line.map_err(|e| data_err(path, e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| data_err(path, format!("line {}: {e}", i + 1)))?;
        let field = |name: &str| -> Result<String, TrainError> {
            match v.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(serde_json::Value::Null) | None => {
                    Err(data_err(path, format!("line {}: no field `{name}`", i + 1)))
                }
                Some(other) => Ok(other.to_string()),
            }
        };
        rows.push(Row {
            text: field(text_column)?,
            label: label_column.map(field).transpose()?,
        });
    }
    Ok(rows)
}

/// Tokenized examples of one split.
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// Token ids per example (classification: one text, truncated; LM: one block).
    pub ids: Vec<Vec<u32>>,
    /// Class per example (classification only).
    pub labels: Vec<usize>,
}

impl Split {
    /// Examples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// No examples.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Tokens in the split.
    pub fn tokens(&self) -> usize {
        self.ids.iter().map(Vec::len).sum()
    }
}

/// A dataset ready for training.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The file.
    pub path: PathBuf,
    /// Class names in class order (classification).
    pub label_names: Vec<String>,
    /// Train split.
    pub train: Split,
    /// Validation split.
    pub valid: Split,
    /// Test split.
    pub test: Split,
    /// Rows dropped for an unlisted label.
    pub dropped_label: usize,
    /// Rows dropped for empty text.
    pub dropped_empty: usize,
    /// Id the batches pad with.
    pub pad_id: u32,
}

/// Reads `cfg.path`, splits it with `seed` and tokenizes it for `task`.
pub fn load_dataset(
    cfg: &DataSection,
    task: Task,
    tokenizer: &Tokenizer,
    seed: u64,
) -> Result<Dataset, TrainError> {
    let label_column = (task == Task::Classification).then_some(cfg.label_column.as_str());
    let mut table = read_table(&cfg.path, &cfg.text_column, label_column, &cfg.labels)?;
    let label_names: Vec<String> = match task {
        Task::Lm => Vec::new(),
        Task::Classification if !cfg.labels.is_empty() => cfg.labels.clone(),
        Task::Classification => {
            let set: std::collections::BTreeSet<&String> =
                table.rows.iter().filter_map(|r| r.label.as_ref()).collect();
            set.into_iter().cloned().collect()
        }
    };
    if task == Task::Classification && label_names.len() < 2 {
        return Err(data_err(
            &cfg.path,
            format!(
                "column `{}` has {} distinct label(s) among the usable rows; a classifier needs at least 2",
                cfg.label_column,
                label_names.len()
            ),
        ));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    table.rows.shuffle(&mut rng);
    if cfg.limit > 0 {
        table.rows.truncate(cfg.limit);
    }
    let n = table.rows.len();
    let n_train = (n as f64 * cfg.split[0]).round() as usize;
    let n_valid = (n as f64 * cfg.split[1]).round() as usize;
    if n_train == 0 || n_valid == 0 || n_train + n_valid >= n {
        return Err(data_err(
            &cfg.path,
            format!(
                "{n} usable rows cannot be split {:?} into three non-empty parts",
                cfg.split
            ),
        ));
    }
    let parts = [
        &table.rows[..n_train],
        &table.rows[n_train..n_train + n_valid],
        &table.rows[n_train + n_valid..],
    ];
    let mut splits = Vec::new();
    for rows in parts {
        let mut split = Split::default();
        match task {
            Task::Classification => {
                for r in rows {
                    split
                        .ids
                        .push(tokenizer.encode_truncated(&r.text, cfg.max_len)?);
                    let label = r.label.as_deref().unwrap_or_default();
                    split.labels.push(
                        class_index(&label_names, label)
                            .expect("read_table kept only rows of the classes"),
                    );
                }
            }
            Task::Lm => {
                // Texts joined by the end-of-text token, cut into blocks of max_len tokens
                // (the model sees tokens 0..L-1 and predicts 1..L).
                let mut stream = Vec::new();
                for r in rows {
                    stream.extend(tokenizer.encode(&r.text)?);
                    stream.push(tokenizer.pad_id());
                }
                for block in stream.chunks_exact(cfg.max_len) {
                    split.ids.push(block.to_vec());
                }
            }
        }
        if split.is_empty() {
            return Err(data_err(
                &cfg.path,
                format!(
                    "a split has no examples (blocks of {} tokens); use more data or a smaller data.max_len",
                    cfg.max_len
                ),
            ));
        }
        splits.push(split);
    }
    let test = splits.pop().unwrap_or_default();
    let valid = splits.pop().unwrap_or_default();
    let train = splits.pop().unwrap_or_default();
    Ok(Dataset {
        path: cfg.path.clone(),
        label_names,
        train,
        valid,
        test,
        dropped_label: table.dropped_label,
        dropped_empty: table.dropped_empty,
        pad_id: tokenizer.pad_id(),
    })
}

/// A padded batch.
#[derive(Debug, Clone)]
pub struct Batch<B: Backend> {
    /// Ids and padding mask.
    pub input: ModelInput<B>,
    /// Classes `[batch]` (classification only).
    pub labels: Option<Tensor<B, 1, Int>>,
    /// Real (non-padding) tokens.
    pub tokens: usize,
}

/// Pads the examples `idx` of `split` to the longest one.
pub fn make_batch<B: Backend>(
    split: &Split,
    idx: &[usize],
    pad_id: u32,
    device: &B::Device,
) -> Batch<B> {
    let s = idx
        .iter()
        .map(|&i| split.ids[i].len())
        .max()
        .unwrap_or(1)
        .max(1);
    let b = idx.len();
    let mut ids = Vec::with_capacity(b * s);
    let mut mask = Vec::with_capacity(b * s);
    let mut tokens = 0;
    for &i in idx {
        let row = &split.ids[i];
        tokens += row.len();
        for j in 0..s {
            ids.push(row.get(j).copied().unwrap_or(pad_id) as i64);
            mask.push(if j < row.len() { 1.0f32 } else { 0.0 });
        }
    }
    let input = ModelInput::new(Tensor::from_data(TensorData::new(ids, [b, s]), device))
        .with_attention_mask(Tensor::from_data(TensorData::new(mask, [b, s]), device));
    let labels = (!split.labels.is_empty()).then(|| {
        let l: Vec<i64> = idx.iter().map(|&i| split.labels[i] as i64).collect();
        Tensor::from_data(TensorData::new(l, [b]), device)
    });
    Batch {
        input,
        labels,
        tokens,
    }
}

/// The order of training examples in `epoch` (a seeded shuffle, so a resumed run sees the
/// same order).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(
        seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64),
    ));
    order
}

/// The example indices of training step `step` (steps run through shuffled epochs).
pub fn step_indices(n: usize, batch: usize, seed: u64, step: usize) -> Vec<usize> {
    let per_epoch = n.div_ceil(batch);
    let (epoch, k) = (step / per_epoch, step % per_epoch);
    let order = epoch_order(n, seed, epoch);
    order[k * batch..((k + 1) * batch).min(n)].to_vec()
}
