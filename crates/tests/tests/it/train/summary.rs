//! `cargo xtask summarize`: runs that differ only in their seed as one table with mean and
//! sample standard deviation.

use std::path::PathBuf;

use shears_train::report::Report;
use shears_train::summary::{read_reports, summarize};

/// The report of the joint, distilled run at 40% of the FLOPs documented in docs/TRAINING.md
/// (2026-12-06, seed 42), its training curve cut to 3 points.
fn fixture() -> Report {
    let path = crate::fixtures("train").join("report-joint-distill-f40.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn run(base: &Report, seed: u64, dense: f64, pruned: f64) -> (PathBuf, Report) {
    let mut r = base.clone();
    r.config.seed = seed;
    r.name = format!("s{seed}");
    r.config.name = r.name.clone();
    r.accuracy_dense = Some(dense);
    r.accuracy_pruned = Some(pruned);
    r.paired_delta.as_mut().unwrap().delta = pruned - dense;
    (PathBuf::from(format!("runs/s{seed}")), r)
}

#[test]
fn seeds_table_has_mean_and_spread() {
    let base = fixture();
    let runs = vec![
        run(&base, 1, 0.84, 0.83),
        run(&base, 2, 0.85, 0.83),
        run(&base, 3, 0.86, 0.86),
    ];
    let table = summarize(&runs).unwrap();
    // Baseline 84, 85, 86; pruned 83, 83, 86; drops -1, -2, 0 (points): mean -1, sd 1, and
    // the mean drop's 95% interval over the runs -1 -+ 4.303 / sqrt(3) = [-3.48, 1.48] (the
    // runs' own bounds are not averaged).
    assert!(
        table.contains("| mean | 85.00 | 84.00 | -1.00 | -3.48 | 1.48 | 70.5 |"),
        "{table}"
    );
    assert!(
        table.contains("| sd | 1.00 | 1.73 | 1.00 | - | - | 0.0 |"),
        "{table}"
    );
    assert!(table.contains("| 3311 |\n| sd |"), "{table}");
    assert!(!table.contains('*'), "{table}");
    // The fixture's own interval, sizes, latency ratios and wall time.
    assert!(
        table.contains(
            "| 1 | 84.00 | 83.00 | -1.00 | -3.43 | 0.08 | 70.5 | 40.0 | 53.4 | 45.4 | 3311 |"
        ),
        "{table}"
    );

    // A run that reused another's dense phase: its wall time is marked and not averaged.
    let mut reused = runs.clone();
    reused[1].1.dense_from = Some(PathBuf::from("runs/s1"));
    let table = summarize(&reused).unwrap();
    assert!(table.contains("| 3311* |"), "{table}");
    assert!(table.contains("| 45.4 | - |\n| sd |"), "{table}");
    assert!(table.contains("--dense-from"), "{table}");

    let mut other = runs.clone();
    other[2].1.config.gated.target_sparsity = 0.5;
    let e = summarize(&other).unwrap_err().to_string();
    assert!(
        e.contains("`gated.target_sparsity`") && e.contains("runs/s3"),
        "{e}"
    );

    let mut twice = runs.clone();
    twice[1].1.config.seed = 1;
    let e = summarize(&twice).unwrap_err().to_string();
    assert!(e.contains("seed 1 appears twice"), "{e}");

    assert!(summarize(&[]).is_err());
    let e = read_reports(&[PathBuf::from("/nonexistent/run")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/run/report.json"), "{e}");
}
