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
    /// The document the row belongs to (absent when no document column was asked for).
    pub document: Option<String>,
}

/// The columns (CSV) or fields (JSON lines) to read.
#[derive(Debug, Clone, Copy)]
struct Columns<'a> {
    text: &'a str,
    label: Option<&'a str>,
    document: Option<&'a str>,
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
    /// Rows dropped because their text is not valid UTF-8 (CSV).
    pub dropped_invalid: usize,
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
    let columns = Columns {
        text: text_column,
        label: label_column,
        document: None,
    };
    read_rows(path, columns, labels)
}

/// Reads the text of every row and, if `document_column` is given, the document it belongs
/// to (language modelling: rows of one document stay in one split).
pub fn read_documents(
    path: &Path,
    text_column: &str,
    document_column: Option<&str>,
) -> Result<Table, TrainError> {
    let columns = Columns {
        text: text_column,
        label: None,
        document: document_column,
    };
    read_rows(path, columns, &[])
}

fn read_rows(path: &Path, columns: Columns<'_>, labels: &[String]) -> Result<Table, TrainError> {
    let raw = if is_jsonl(path) {
        read_jsonl(path, columns)?
    } else {
        read_csv(path, columns)?
    };
    let n_raw = raw.len();
    let mut table = Table {
        path: path.to_path_buf(),
        rows: Vec::with_capacity(n_raw),
        dropped_label: 0,
        dropped_empty: 0,
        dropped_invalid: 0,
    };
    for row in raw {
        let Some(row) = row else {
            table.dropped_invalid += 1;
            continue;
        };
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
            dropped_empty: table.dropped_empty + table.dropped_invalid,
        });
    }
    Ok(table)
}

/// The rows of a CSV file; `None` for a row whose text is not UTF-8 (labels and documents
/// are read lossily).
fn read_csv(path: &Path, columns: Columns<'_>) -> Result<Vec<Option<Row>>, TrainError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(open(path)?);
    let headers = reader
        .byte_headers()
        .map_err(|e| data_err(path, format!("cannot read the CSV header: {e}")))?
        .iter()
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .collect::<Vec<_>>();
    let column = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            data_err(
                path,
                format!("no column `{name}` (columns: {})", headers.join(", ")),
            )
        })
    };
    let t = column(columns.text)?;
    let l = columns.label.map(column).transpose()?;
    let d = columns.document.map(column).transpose()?;
    let mut rows = Vec::new();
    for (i, rec) in reader.byte_records().enumerate() {
        let rec = rec.map_err(|e| data_err(path, format!("record {}: {e}", i + 1)))?;
        let lossy = |c: usize| String::from_utf8_lossy(rec.get(c).unwrap_or_default()).into_owned();
        rows.push(
            std::str::from_utf8(rec.get(t).unwrap_or_default())
                .ok()
                .map(|text| Row {
                    text: text.to_string(),
                    label: l.map(lossy),
                    document: d.map(lossy),
                }),
        );
    }
    Ok(rows)
}

fn read_jsonl(path: &Path, columns: Columns<'_>) -> Result<Vec<Option<Row>>, TrainError> {
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
        rows.push(Some(Row {
            text: field(columns.text)?,
            label: columns.label.map(field).transpose()?,
            document: columns.document.map(field).transpose()?,
        }));
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

/// What a language model's corpus became: its files, documents and rows per split, and the
/// rows left out.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Corpus {
    /// The files read (`data.path`, then each `data.extra`).
    pub files: Vec<PathBuf>,
    /// Documents per split (train, validation, test).
    pub documents: [usize; 3],
    /// Rows (texts) per split, duplicates removed.
    pub rows: [usize; 3],
    /// Rows left out as duplicates of an earlier row: compared after lower-casing and
    /// collapsing white space, the first kept in the order train, validation, test (so no
    /// validation or test row repeats a training row).
    pub duplicates: usize,
    /// Rows left out because their text is not UTF-8.
    pub invalid: usize,
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
    /// Language modelling: how the corpus was split.
    pub corpus: Option<Corpus>,
}

/// The key two rows are duplicates under: lower case, white space collapsed.
pub fn duplicate_key(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// A language model's texts per split.
#[derive(Debug, Clone)]
pub struct LmTexts {
    /// Train, validation and test texts.
    pub splits: [Vec<String>; 3],
    /// How they were split.
    pub corpus: Corpus,
    /// Rows left out because their text is empty.
    pub dropped_empty: usize,
}

/// A language model's texts per split: every file's rows grouped into documents (by
/// `document_column`, else one row per document), documents shuffled with `seed` (the
/// first `limit` rows kept), cut into train / validation / test at document boundaries by
/// rows, duplicates removed ([`Corpus::duplicates`]).
pub fn lm_texts(cfg: &DataSection, seed: u64) -> Result<LmTexts, TrainError> {
    let sources = std::iter::once((&cfg.path, &cfg.text_column, &cfg.document_column)).chain(
        cfg.extra
            .iter()
            .map(|x| (&x.path, &x.text_column, &x.document_column)),
    );
    let mut corpus = Corpus::default();
    let mut empty = 0;
    let mut docs: Vec<Vec<String>> = Vec::new();
    for (path, text, document) in sources {
        let table = read_documents(
            path,
            text,
            (!document.is_empty()).then_some(document.as_str()),
        )?;
        corpus.files.push(path.clone());
        corpus.invalid += table.dropped_invalid;
        empty += table.dropped_empty;
        let mut index = std::collections::HashMap::new();
        for row in table.rows {
            match row.document.filter(|d| !d.trim().is_empty()) {
                Some(d) => {
                    let k = *index.entry(d).or_insert_with(|| {
                        docs.push(Vec::new());
                        docs.len() - 1
                    });
                    docs[k].push(row.text);
                }
                None => docs.push(vec![row.text]),
            }
        }
    }
    docs.shuffle(&mut StdRng::seed_from_u64(seed));
    if cfg.limit > 0 {
        let mut left = cfg.limit;
        docs.retain_mut(|d| {
            d.truncate(left);
            left -= d.len();
            !d.is_empty()
        });
    }
    let n: usize = docs.iter().map(Vec::len).sum();
    let cuts = [
        cfg.split[0] * n as f64,
        (cfg.split[0] + cfg.split[1]) * n as f64,
    ];
    let mut parts: [Vec<String>; 3] = Default::default();
    let mut seen = std::collections::HashSet::new();
    let mut before = 0;
    for doc in docs {
        let s = cuts.iter().filter(|&&c| before as f64 >= c).count();
        before += doc.len();
        corpus.documents[s] += 1;
        for text in doc {
            if seen.insert(duplicate_key(&text)) {
                parts[s].push(text);
            } else {
                corpus.duplicates += 1;
            }
        }
    }
    corpus.rows = [parts[0].len(), parts[1].len(), parts[2].len()];
    Ok(LmTexts {
        splits: parts,
        corpus,
        dropped_empty: empty,
    })
}

/// Reads `cfg.path` (and, for a language model, `cfg.extra`), splits it with `seed` and
/// tokenizes it for `task`.
pub fn load_dataset(
    cfg: &DataSection,
    task: Task,
    tokenizer: &Tokenizer,
    seed: u64,
) -> Result<Dataset, TrainError> {
    if task == Task::Lm {
        return load_lm(cfg, tokenizer, seed);
    }
    let mut table = read_table(
        &cfg.path,
        &cfg.text_column,
        Some(&cfg.label_column),
        &cfg.labels,
    )?;
    let label_names: Vec<String> = if cfg.labels.is_empty() {
        let set: std::collections::BTreeSet<&String> =
            table.rows.iter().filter_map(|r| r.label.as_ref()).collect();
        set.into_iter().cloned().collect()
    } else {
        cfg.labels.clone()
    };
    if label_names.len() < 2 {
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
        for r in rows {
            split
                .ids
                .push(tokenizer.encode_truncated(&r.text, cfg.max_len)?);
            let label = r.label.as_deref().unwrap_or_default();
            split.labels.push(
                class_index(&label_names, label).expect("read_table kept only rows of the classes"),
            );
        }
        splits.push(split);
    }
    let [train, valid, test] = <[Split; 3]>::try_from(splits).expect("three splits");
    Ok(Dataset {
        path: cfg.path.clone(),
        label_names,
        train,
        valid,
        test,
        dropped_label: table.dropped_label,
        dropped_empty: table.dropped_empty,
        pad_id: tokenizer.pad_id(),
        corpus: None,
    })
}

/// [`load_dataset`] for a language model: [`lm_texts`], each split's texts joined by the
/// end-of-text token and cut into blocks of `max_len` tokens (the model sees tokens 0..L-1
/// and predicts 1..L; a split's last partial block is left out).
fn load_lm(cfg: &DataSection, tokenizer: &Tokenizer, seed: u64) -> Result<Dataset, TrainError> {
    let LmTexts {
        splits: parts,
        corpus,
        dropped_empty,
    } = lm_texts(cfg, seed)?;
    let mut splits = Vec::new();
    for texts in parts {
        let mut stream = Vec::new();
        for t in texts {
            stream.extend(tokenizer.encode(&t)?);
            stream.push(tokenizer.pad_id());
        }
        let split = Split {
            ids: stream
                .chunks_exact(cfg.max_len)
                .map(<[u32]>::to_vec)
                .collect(),
            labels: Vec::new(),
        };
        if split.is_empty() {
            return Err(data_err(
                &cfg.path,
                format!(
                    "a split has no examples (blocks of {} tokens; documents per split {:?}); use more data or a smaller data.max_len",
                    cfg.max_len, corpus.documents
                ),
            ));
        }
        splits.push(split);
    }
    let [train, valid, test] = <[Split; 3]>::try_from(splits).expect("three splits");
    Ok(Dataset {
        path: cfg.path.clone(),
        label_names: Vec::new(),
        train,
        valid,
        test,
        dropped_label: 0,
        dropped_empty,
        pad_id: tokenizer.pad_id(),
        corpus: Some(corpus),
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
