//! Any pruned BERT shape exports for `transformers` (issue 14): per-layer head counts and
//! FFN widths, a pruned hidden size and a layer without heads are written as a `shears_bert`
//! directory with its modeling file. The committed fixture `crates/layers/tests/fixtures/
//! shears-bert/` is this test's export, and its `logits.json` is what `transformers` computes
//! on it (`tools/fixtures/make_shears_bert_fixture.py`), so the test proves that shears and
//! `transformers` give the same logits on what shears writes today.

use std::path::Path;

use burn::backend::NdArray;
use burn::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use shears_layers::{
    BertModel, Family, Gpt2Model, ModelConfig, ModelInput, SpaceName, hf, tensorio,
};
use shears_pruners::{ClassifierHead, TaskModel};
use shears_train::load_task_model;

use crate::layers::common::{irregular, randomised};

type B = NdArray<f32>;

const LABELS: [&str; 3] = ["low", "mid", "high"];

/// A tiny BERT classifier, every parameter drawn from a seeded host generator, pruned to
/// an irregular shape: layer 0 keeps heads 0, 2, 3 and 10 of 24 neurons, layer 1 no head and
/// 17 neurons, the hidden size 12 of 16.
fn mixed_shape_classifier(device: &burn::backend::ndarray::NdArrayDevice) -> TaskModel<B> {
    let mut config = ModelConfig::bert(50, 16, 2, 4, 24);
    config.max_positions = 16;
    let model = BertModel::<B>::new(&config, device);
    let mut rng = StdRng::seed_from_u64(41);
    let mut t = tensorio::export(&model);
    for v in t.values_mut() {
        for x in &mut v.data {
            *x = rng.random_range(-0.5..0.5);
        }
    }
    let model = tensorio::import(model, &t, device)
        .unwrap()
        .keep(SpaceName::Heads(0), &[0, 2, 3])
        .unwrap()
        .keep(SpaceName::Heads(1), &[])
        .unwrap()
        .keep(SpaceName::Ffn(0), &[1, 3, 4, 8, 9, 12, 15, 16, 20, 23])
        .unwrap()
        .keep(
            SpaceName::Ffn(1),
            &(0..17).map(|i| i + i / 3).collect::<Vec<_>>(),
        )
        .unwrap()
        .keep(SpaceName::Hidden, &[0, 1, 2, 4, 5, 7, 8, 9, 11, 12, 13, 15])
        .unwrap();
    TaskModel::classifier(model, ClassifierHead::new(16, 3, 9, device))
}

/// Ids `[3, 7]` and a padding mask with row `i` padded by `2 i` tokens.
fn input() -> (Vec<i64>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(5);
    let ids = (0..21).map(|_| rng.random_range(0..50)).collect();
    let mask = (0..21)
        .map(|i| if i % 7 < 7 - 2 * (i / 7) { 1.0 } else { 0.0 })
        .collect();
    (ids, mask)
}

fn logits(model: &TaskModel<B>, device: &burn::backend::ndarray::NdArrayDevice) -> Vec<f32> {
    let (ids, mask) = input();
    let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [21]), device).reshape([3, 7]);
    let mask = Tensor::<B, 1>::from_data(TensorData::new(mask, [21]), device).reshape([3, 7]);
    let input = ModelInput::new(ids).with_attention_mask(mask);
    model
        .class_logits(input)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn any_pruned_shape_exports_for_transformers() {
    let device = Default::default();
    let model = mixed_shape_classifier(&device);
    let c = model.backbone.config();
    assert_eq!(
        (
            c.d_model,
            c.layers[0].d_ff,
            c.layers[1].d_ff,
            c.layers[1].n_heads
        ),
        (12, 10, 17, 0)
    );
    let labels: Vec<String> = LABELS.iter().map(|l| l.to_string()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hf");
    model.export_hf(&dir, &labels, None).unwrap();

    let config: serde_json::Value =
        serde_json::from_slice(&read(&dir.join("config.json"))).unwrap();
    assert_eq!(config["model_type"], hf::SHEARS_BERT);
    assert_eq!(
        config["architectures"],
        serde_json::json!(["ShearsBertForSequenceClassification"])
    );
    assert_eq!(
        config["auto_map"]["AutoModelForSequenceClassification"],
        "modeling_shears_bert.ShearsBertForSequenceClassification"
    );
    assert_eq!(config["layer_num_heads"], serde_json::json!([3, 0]));
    assert_eq!(config["layer_head_ids"], serde_json::json!([[0, 2, 3], []]));
    assert_eq!(
        config["layer_intermediate_sizes"],
        serde_json::json!([10, 17])
    );
    assert_eq!(config["id2label"]["2"], "high");
    let (module, code) = hf::shears_modeling(Family::Bert);
    assert_eq!(read(&dir.join(module)), code.as_bytes());

    // shears -> HF -> shears: the same tensors and the same logits, exactly.
    let ours = logits(&model, &device);
    let (back, info) = load_task_model::<B>(&dir, &device).unwrap();
    assert_eq!(info.unwrap().labels, labels);
    assert_eq!(back.backbone.config().layers, c.layers);
    assert_eq!(
        tensorio::export(&back.backbone),
        tensorio::export(&model.backbone)
    );
    assert_eq!(logits(&back, &device), ours);
    // HF -> shears -> HF writes every tensor and the config unchanged.
    let again = tmp.path().join("again");
    back.export_hf(&again, &labels, None).unwrap();
    for f in ["config.json", "model.safetensors"] {
        assert!(read(&dir.join(f)) == read(&again.join(f)), "{f} changed");
    }

    // The committed fixture is this export, and transformers' logits on it are ours.
    let (module, _) = hf::shears_modeling(Family::Bert);
    let theirs = committed_fixture(
        &dir,
        "shears-bert",
        &["config.json", "model.safetensors", module],
        "make_shears_bert_fixture.py",
    );
    let theirs = flat(&theirs["logits"]);
    assert_eq!(theirs.len(), ours.len());
    let diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    println!(
        "max |shears - transformers| = {diff:e} over {} logits",
        ours.len()
    );
    assert!(
        diff <= 1e-4,
        "shears {ours:?} vs transformers {theirs:?}: {diff}"
    );
}

/// `--dtype`: F16 and BF16 exports hold each value's nearest cast, report the largest cast
/// error, load back as a model within that error; a value beyond F16's range is refused
/// naming the tensor, and nothing is written.
#[test]
fn exports_in_f16_and_bf16_report_the_cast_error() {
    use shears_layers::hf::Dtype;
    let device = Default::default();
    let model = mixed_shape_classifier(&device);
    let labels: Vec<String> = LABELS.iter().map(|l| l.to_string()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let f32_dir = tmp.path().join("f32");
    model.export_hf(&f32_dir, &labels, None).unwrap();
    let exact = hf::read_safetensors(&f32_dir.join("model.safetensors")).unwrap();
    let ours = logits(&model, &device);
    for (dtype, cast) in [
        (
            Dtype::F16,
            (|v: f32| half::f16::from_f32(v).to_f32()) as fn(f32) -> f32,
        ),
        (Dtype::Bf16, |v: f32| half::bf16::from_f32(v).to_f32()),
    ] {
        let dir = tmp.path().join(dtype.torch_name());
        let report = model.export_hf_as(&dir, &labels, None, dtype).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&read(&dir.join("config.json"))).unwrap();
        assert_eq!(config["torch_dtype"], dtype.torch_name());
        let narrow = hf::read_safetensors(&dir.join("model.safetensors")).unwrap();
        let mut worst = 0.0f32;
        for (k, t) in &exact {
            let n = &narrow[k];
            assert_eq!(n.shape, t.shape, "{k}");
            for (a, b) in t.data.iter().zip(&n.data) {
                assert_eq!(*b, cast(*a), "{k}");
                worst = worst.max((b - a).abs());
            }
        }
        assert_eq!(report.dtype, dtype);
        assert_eq!(report.max_abs_error, worst);
        assert!(worst > 0.0 && report.worst_tensor.is_some());
        let (back, _) = load_task_model::<B>(&dir, &device).unwrap();
        let theirs = logits(&back, &device);
        let diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        println!("{dtype:?}: largest cast error {worst:e}, logits moved by {diff:e}");
        assert!(diff < 0.05, "{dtype:?}: {diff}");
    }
    // 1e5 is past F16's largest value (65504).
    let mut t = tensorio::export(&model.backbone);
    t.get_mut("layers.0.ffn.up.bias").unwrap().data[3] = 1e5;
    let big = TaskModel {
        backbone: tensorio::import(model.backbone.clone(), &t, &device).unwrap(),
        head: model.head.clone(),
    };
    let dir = tmp.path().join("big");
    let e = big
        .export_hf_as(&dir, &labels, None, Dtype::F16)
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("intermediate.dense.bias")
            && text.contains("100000")
            && text.contains("float16"),
        "{text}"
    );
    assert!(!dir.exists(), "a refused export left {}", dir.display());
    assert!(big.export_hf_as(&dir, &labels, None, Dtype::Bf16).is_ok());
}

/// A head-pruned GPT-2 exports as transformers' own `GPT2LMHeadModel` with `pruned_heads`
/// (a headless layer keeps one all-zero placeholder head): shears loads it back with the
/// same logits, and the committed export (`crates/layers/tests/fixtures/gpt2-pruned/`,
/// guarded byte for byte) gives transformers' next-token logits
/// (`tools/fixtures/make_gpt2_export_fixture.py`).
#[test]
fn head_pruned_gpt2_exports_for_transformers() {
    let device = Default::default();
    let mut config = ModelConfig::gpt2(40, 16, 2, 4, 24);
    config.max_positions = 16;
    let model = randomised(&config, &device, 43)
        .keep(SpaceName::Heads(0), &[1, 3])
        .unwrap()
        .keep(SpaceName::Heads(1), &[])
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gpt2");
    model.export_hf(&dir, None).unwrap();
    let hf_config: serde_json::Value =
        serde_json::from_slice(&read(&dir.join("config.json"))).unwrap();
    assert_eq!(hf_config["architectures"][0], "GPT2LMHeadModel");
    assert_eq!(
        hf_config["pruned_heads"],
        serde_json::json!({"0": [0, 2], "1": [1, 2, 3]})
    );
    let ours = lm_logits(&model, &device);
    let back = Gpt2Model::<B>::load(&dir, &device).unwrap();
    assert_eq!(back.config().layers[1].n_heads, 1, "the placeholder head");
    let d = ours
        .iter()
        .zip(lm_logits(&back, &device))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d <= 1e-5, "shears -> HF -> shears moved the logits by {d}");

    let theirs = committed_fixture(
        &dir,
        "gpt2-pruned",
        &["config.json", "model.safetensors"],
        "make_gpt2_export_fixture.py",
    );
    let diff = real_token_diff(&ours, &flat(&theirs["logits"]), 40);
    println!("GPT-2: max |shears - transformers| = {diff:e} over real tokens");
    assert!(diff <= 1e-4, "{diff}");
}

/// The input of the export tests, ids below `vocab`, as `input.json` holds it for the
/// fixture scripts.
fn input_json(vocab: i64) -> serde_json::Value {
    let (ids, mask) = input();
    let ids: Vec<i64> = ids.iter().map(|i| i % vocab).collect();
    serde_json::json!({
        "input_ids": ids.chunks(7).collect::<Vec<_>>(),
        "attention_mask": mask
            .chunks(7)
            .map(|r| r.iter().map(|&m| m as i64).collect::<Vec<_>>())
            .collect::<Vec<_>>(),
    })
}

/// Checks that the export in `dir` is, byte for byte in `files`, the committed fixture
/// `crates/layers/tests/fixtures/NAME/`, and returns what transformers computed on that
/// fixture (its `logits.json`). With `SHEARS_UPDATE_FIXTURES` set, writes
/// the fixture (and `input.json`) instead and stops, naming the `tools/fixtures/` script
/// that computes the logits with the peer.
fn committed_fixture(dir: &Path, name: &str, files: &[&str], script: &str) -> serde_json::Value {
    let fixture = crate::fixtures("layers").join(name);
    if std::env::var_os("SHEARS_UPDATE_FIXTURES").is_some() {
        std::fs::create_dir_all(&fixture).unwrap();
        for f in files {
            std::fs::copy(dir.join(f), fixture.join(f)).unwrap();
        }
        let config: serde_json::Value =
            serde_json::from_slice(&read(&dir.join("config.json"))).unwrap();
        let vocab = config["vocab_size"].as_i64().unwrap();
        std::fs::write(fixture.join("input.json"), input_json(vocab).to_string()).unwrap();
        panic!(
            "fixture written to {}: now run tools/fixtures/{script} with the peer",
            fixture.display()
        );
    }
    for f in files {
        assert!(
            read(&dir.join(f)) == read(&fixture.join(f)),
            "the export's {f} differs from the committed fixture's: rerun this test with \
             SHEARS_UPDATE_FIXTURES=1, then tools/fixtures/{script}"
        );
    }
    serde_json::from_slice(&read(&fixture.join("logits.json"))).unwrap()
}

/// The numbers of a nested JSON array, in order.
fn flat(v: &serde_json::Value) -> Vec<f32> {
    fn walk(v: &serde_json::Value, out: &mut Vec<f32>) {
        match v {
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            v => out.push(v.as_f64().unwrap() as f32),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

/// The largest difference of two LMs' `[batch, seq, vocab]` logits over the real tokens of
/// [`input`]. Padded positions are not compared: causal attention reads only earlier
/// tokens, so a real token's logits are the same in both; transformers and shears mask
/// padded keys differently for the padded queries themselves.
fn real_token_diff(ours: &[f32], theirs: &[f32], vocab: usize) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    let (_, mask) = input();
    let mut diff = 0.0f32;
    for (p, m) in mask.iter().enumerate() {
        if *m > 0.0 {
            for v in 0..vocab {
                diff = diff.max((ours[p * vocab + v] - theirs[p * vocab + v]).abs());
            }
        }
    }
    diff
}

/// Next-token logits of `m` on [`input`] (ids below 40), flattened.
fn lm_logits(m: &Gpt2Model<B>, device: &burn::backend::ndarray::NdArrayDevice) -> Vec<f32> {
    let (ids, mask) = input();
    let ids = Tensor::<B, 1, Int>::from_data(
        TensorData::new(ids.iter().map(|i| i % 40).collect::<Vec<_>>(), [21]),
        device,
    )
    .reshape([3, 7]);
    let mask = Tensor::<B, 1>::from_data(TensorData::new(mask, [21]), device).reshape([3, 7]);
    m.forward(ModelInput::new(ids).with_attention_mask(mask))
        .logits
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap()
}

/// Any pruned GPT-2 shape exports for transformers (issue 14): per-layer head counts, a
/// layer without heads, per-layer FFN widths, a layer without neurons and a pruned hidden
/// size are written as `shears_gpt2` with its modeling file. shears -> HF -> shears gives
/// the same tensors and logits exactly, HF -> shears -> HF the same bytes, and the committed
/// export (`crates/layers/tests/fixtures/shears-gpt2/`) gives transformers' next-token
/// logits and greedy continuation (`tools/fixtures/make_shears_gpt2_fixture.py`), which
/// shears' cached decoding reproduces.
#[test]
fn any_pruned_gpt2_shape_exports_for_transformers() {
    let device = Default::default();
    let mut config = ModelConfig::gpt2(40, 16, 3, 4, 24);
    config.max_positions = 16;
    let model = irregular(randomised(&config, &device, 47));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gpt2");
    model.export_hf(&dir, None).unwrap();
    let hf_config: serde_json::Value =
        serde_json::from_slice(&read(&dir.join("config.json"))).unwrap();
    assert_eq!(hf_config["model_type"], hf::SHEARS_GPT2);
    assert_eq!(hf_config["architectures"][0], "ShearsGpt2LMHeadModel");
    assert_eq!(
        hf_config["auto_map"]["AutoModelForCausalLM"],
        "modeling_shears_gpt2.ShearsGpt2LMHeadModel"
    );
    assert_eq!(hf_config["hidden_size"], 12);
    assert_eq!(hf_config["layer_num_heads"], serde_json::json!([2, 0, 4]));
    assert_eq!(
        hf_config["layer_head_ids"],
        serde_json::json!([[1, 3], [], [0, 1, 2, 3]])
    );
    assert_eq!(
        hf_config["layer_intermediate_sizes"],
        serde_json::json!([9, 24, 0])
    );
    let (module, code) = hf::shears_modeling(Family::Gpt2);
    assert_eq!(read(&dir.join(module)), code.as_bytes());

    let ours = lm_logits(&model, &device);
    let back = Gpt2Model::<B>::load(&dir, &device).unwrap();
    assert_eq!(back.config().layers, model.config().layers);
    assert_eq!(back.config().d_model, 12);
    assert_eq!(tensorio::export(&back), tensorio::export(&model));
    assert_eq!(lm_logits(&back, &device), ours);
    let again = tmp.path().join("again");
    back.export_hf(&again, None).unwrap();
    for f in ["config.json", "model.safetensors"] {
        assert!(read(&dir.join(f)) == read(&again.join(f)), "{f} changed");
    }

    let theirs = committed_fixture(
        &dir,
        "shears-gpt2",
        &["config.json", "model.safetensors", module],
        "make_shears_gpt2_fixture.py",
    );
    let diff = real_token_diff(&ours, &flat(&theirs["logits"]), 40);
    println!("shears_gpt2: max |shears - transformers| = {diff:e} over real tokens");
    assert!(diff <= 1e-4, "{diff}");
    // The same greedy continuation of the first row (7 real tokens) as transformers'
    // `generate`, from shears' cached decoding.
    let prompt: Vec<u32> = input().0[..7].iter().map(|&i| (i % 40) as u32).collect();
    let opts = shears_layers::GenerateOptions {
        max_tokens: 8,
        ..Default::default()
    };
    let ours = model.generate(&prompt, &opts).unwrap().tokens;
    let greedy: Vec<u32> = theirs["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ours, greedy, "greedy continuations differ");
}
