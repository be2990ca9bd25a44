//! Runs of one experiment that differ only in their seed, as one table with the mean and the
//! spread of every column (`cargo xtask summarize RUN...`): how a result over several seeds
//! is reported (issue 13 asks for 3). The runs must share their whole config except `name`
//! and `seed`, and their seeds must differ: a table mixing configs, or one seed twice, would
//! be a claim the runs do not support.

use std::path::{Path, PathBuf};

use crate::report::Report;
use crate::{Task, TrainError};

/// A column of the table: its header and its value in a run.
struct Column {
    header: &'static str,
    value: fn(&Report) -> Option<f64>,
    /// Decimal places.
    places: usize,
    /// What the mean and sd rows show.
    summary: Summary,
}

/// What the mean and sd rows of a column show.
#[derive(Clone, Copy, PartialEq)]
enum Summary {
    /// The mean and the sample standard deviation of the column.
    MeanSd,
    /// A bound of one run's interval: the mean of bounds is no interval, so the mean row
    /// shows that bound of the 95% interval of the mean drop over the runs (Student's t)
    /// and the sd row nothing.
    Bound { high: bool },
    /// Wall time: a run that reused another's dense phase did not pay for it, so the mean
    /// and sd cover only tables where no run did.
    Wall,
}

/// Student's t quantile 0.975 for `df` degrees of freedom (df above 30: the value at 30,
/// which is conservative).
fn t975(df: usize) -> Option<f64> {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    (df > 0).then(|| T[df.min(30) - 1])
}

fn pct(x: Option<f64>) -> Option<f64> {
    x.map(|v| 100.0 * v)
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| 100.0 * a as f64 / b as f64)
}

fn columns(task: Task) -> Vec<Column> {
    let mut c = match task {
        Task::Classification => vec![
            Column {
                header: "baseline test acc %",
                value: |r| pct(r.accuracy_dense),
                places: 2,
                summary: Summary::MeanSd,
            },
            Column {
                header: "pruned test acc %",
                value: |r| pct(r.accuracy_pruned),
                places: 2,
                summary: Summary::MeanSd,
            },
            Column {
                header: "drop (points)",
                value: |r| pct(r.paired_delta.as_ref().map(|d| d.delta)),
                places: 2,
                summary: Summary::MeanSd,
            },
            Column {
                header: "95% low",
                value: |r| pct(r.paired_delta.as_ref().map(|d| d.low)),
                places: 2,
                summary: Summary::Bound { high: false },
            },
            Column {
                header: "95% high",
                value: |r| pct(r.paired_delta.as_ref().map(|d| d.high)),
                places: 2,
                summary: Summary::Bound { high: true },
            },
        ],
        Task::Lm => vec![
            Column {
                header: "baseline test ppl",
                value: |r| r.perplexity_dense,
                places: 2,
                summary: Summary::MeanSd,
            },
            Column {
                header: "pruned test ppl",
                value: |r| r.perplexity_pruned,
                places: 2,
                summary: Summary::MeanSd,
            },
            Column {
                header: "ppl increase %",
                value: |r| pct(r.paired_delta.as_ref().map(|d| d.delta)),
                places: 2,
                summary: Summary::MeanSd,
            },
        ],
    };
    c.extend([
        Column {
            header: "params %",
            value: |r| ratio(r.params_pruned, r.params_dense),
            places: 1,
            summary: Summary::MeanSd,
        },
        Column {
            header: "FLOPs %",
            value: |r| ratio(r.flops_per_token_pruned, r.flops_per_token_dense),
            places: 1,
            summary: Summary::MeanSd,
        },
        Column {
            header: "latency % (batch N)",
            value: |r| Some(100.0 * r.latency_ratio),
            places: 1,
            summary: Summary::MeanSd,
        },
        Column {
            header: "latency % (batch 1)",
            value: |r| Some(100.0 * r.latency_ratio_batch1),
            places: 1,
            summary: Summary::MeanSd,
        },
        Column {
            header: "wall s",
            value: |r| Some(r.wall_seconds),
            places: 0,
            summary: Summary::Wall,
        },
    ]);
    c
}

/// Mean and sample standard deviation (`n - 1`; 0 for one value).
pub fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Reads `report.json` of each run directory.
pub fn read_reports(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, Report)>, TrainError> {
    dirs.iter()
        .map(|d| {
            let path = d.join("report.json");
            let text = std::fs::read_to_string(&path).map_err(|e| TrainError::Io {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let r: Report = serde_json::from_str(&text).map_err(|e| TrainError::Config {
                source_name: path.display().to_string(),
                message: format!("not a train-gated report: {e}"),
            })?;
            Ok((d.clone(), r))
        })
        .collect()
}

/// The config of `r` as JSON, without the keys seeds may differ in.
fn comparable(r: &Report) -> serde_json::Value {
    let mut v = serde_json::to_value(&r.config).expect("a config serialises");
    if let Some(o) = v.as_object_mut() {
        o.remove("name");
        o.remove("seed");
    }
    v
}

/// The first key (dotted path) where `a` and `b` differ.
pub(crate) fn first_difference(
    a: &serde_json::Value,
    b: &serde_json::Value,
    at: &str,
) -> Option<String> {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => first_difference(p, q, &path),
                    _ => Some(path),
                }
            })
        }
        _ => (a != b).then(|| at.to_string()),
    }
}

/// The markdown table of `runs` (one row per seed, then the mean and the sample standard
/// deviation of each column). Refuses runs whose configs differ in anything but `name` and
/// `seed` (naming the first differing key), a seed that appears twice, and an empty list.
pub fn summarize(runs: &[(PathBuf, Report)]) -> Result<String, TrainError> {
    let bad = |message: String| TrainError::Config {
        source_name: "summarize".into(),
        message,
    };
    let Some((first_dir, first)) = runs.first() else {
        return Err(bad("no runs given".into()));
    };
    let base = comparable(first);
    let mut seeds = Vec::new();
    for (dir, r) in runs {
        if let Some(key) = first_difference(&base, &comparable(r), "") {
            return Err(bad(format!(
                "`{}` and `{}` differ in config key `{key}`: only the seed (and the name) may differ",
                show(first_dir),
                show(dir)
            )));
        }
        if seeds.contains(&r.config.seed) {
            return Err(bad(format!(
                "seed {} appears twice (`{}`): each run must have its own seed",
                r.config.seed,
                show(dir)
            )));
        }
        seeds.push(r.config.seed);
    }
    let cols = columns(first.config.task);
    let mut s = format!(
        "{} runs of `{}` (config identical but for the seed), backend {}\n\n| seed |",
        runs.len(),
        first.name,
        first.backend
    );
    for c in &cols {
        s += &format!(" {} |", c.header);
    }
    s += "\n|---|";
    s += &"---:|".repeat(cols.len());
    s += "\n";
    let cell = |v: Option<f64>, places: usize| match v {
        Some(x) => format!(" {x:.places$} |"),
        None => " - |".to_string(),
    };
    for (_, r) in runs {
        s += &format!("| {} |", r.config.seed);
        for c in &cols {
            let mut v = cell((c.value)(r), c.places);
            if c.summary == Summary::Wall && r.dense_from.is_some() {
                v.insert(v.len() - 2, '*');
            }
            s += &v;
        }
        s += "\n";
    }
    let reused = runs.iter().any(|(_, r)| r.dense_from.is_some());
    let values =
        |c: &Column| -> Option<Vec<f64>> { runs.iter().map(|(_, r)| (c.value)(r)).collect() };
    // The mean drop and its 95% interval over the runs (t with n - 1 degrees of freedom).
    let drop_interval = cols
        .iter()
        .find(|c| c.header == "drop (points)")
        .and_then(values)
        .and_then(|v| {
            let (mean, sd) = mean_sd(&v);
            let half = t975(v.len() - 1)? * sd / (v.len() as f64).sqrt();
            Some((mean - half, mean + half))
        });
    let stat = |c: &Column, sd: bool| -> Option<f64> {
        match c.summary {
            Summary::Bound { .. } if sd => None,
            Summary::Bound { high } => drop_interval.map(|(lo, hi)| if high { hi } else { lo }),
            Summary::Wall if reused => None,
            Summary::MeanSd | Summary::Wall => values(c).map(|v| {
                let (mean, spread) = mean_sd(&v);
                if sd { spread } else { mean }
            }),
        }
    };
    s += "| mean |";
    for c in &cols {
        s += &cell(stat(c, false), c.places);
    }
    s += "\n| sd |";
    for c in &cols {
        s += &cell(stat(c, true), c.places);
    }
    s += "\n\nsd: sample standard deviation over the runs (n - 1). The seed also draws the train / validation / test split, the head and the data order, so the spread covers all three. ";
    s += match first.config.task {
        Task::Classification => {
            "The drop (pruned - baseline) and its 95% interval are each run's paired bootstrap over the same test rows; the mean drop is the difference of the mean accuracies, and the interval in its row is the 95% interval of the mean drop over the runs (Student's t, n - 1 degrees of freedom), which covers the training noise between seeds.\n"
        }
        Task::Lm => {
            "The perplexity increase (pruned / baseline - 1) and its interval are each run's paired bootstrap over the same test blocks.\n"
        }
    };
    if reused {
        s += "\n*: the run reused another run's dense phase (`--dense-from`); its wall time leaves that phase out, so the wall column has no mean.\n";
    }
    Ok(s)
}

fn show(p: &Path) -> String {
    p.display().to_string()
}
