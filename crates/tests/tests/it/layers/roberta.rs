//! RoBERTa (`Family::Roberta`) against transformers on a seeded random
//! `RobertaForSequenceClassification` and its byte-level BPE tokenizer (`tiny-roberta/`,
//! `roberta.safetensors`, made by `tools/fixtures/make_roberta_fixture.py`): the tokenizer,
//! the classifier's logits, `prune_heads`, and the round trips through the Hugging Face
//! layout (plain `RobertaForSequenceClassification` and `shears_bert` with the position
//! offset).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use shears_layers::save::WEIGHTS;
use shears_layers::{BertModel, Family, ModelInput, SpaceName, Tokenizer, hf};
use shears_spaces::{HostTensor, TensorMap};

use super::common::*;

fn tiny() -> PathBuf {
    fixtures().join("tiny-roberta")
}

fn sentences() -> Vec<String> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("roberta.json")).unwrap())
            .unwrap();
    serde_json::from_value(meta["sentences"].clone()).unwrap()
}

fn input<B: Backend>(device: &B::Device) -> ModelInput<B> {
    let f = fixture("roberta.safetensors");
    ModelInput::new(ids::<B>(&f["input_ids"], device))
        .with_attention_mask(dev(&f["attention_mask"], device))
}

/// The classifier's logits: `classifier.weight` `[classes, d]` and `classifier.bias` (the
/// Hugging Face layout) on the pooled first token, on the host.
fn logits<B: Backend>(model: &BertModel<B>, head: &TensorMap, device: &B::Device) -> HostTensor {
    let pooled = host(model.forward(input(device)).pooled.expect("a pooler"));
    let (w, b) = (&head["classifier.weight"], &head["classifier.bias"]);
    let (n, d, c) = (pooled.shape[0], pooled.shape[1], w.shape[0]);
    let mut out = Vec::with_capacity(n * c);
    for i in 0..n {
        for k in 0..c {
            let dot: f32 = (0..d)
                .map(|j| pooled.data[i * d + j] * w.data[k * d + j])
                .sum();
            out.push(dot + b.data[k]);
        }
    }
    HostTensor::new(vec![n, c], out)
}

fn pruned_heads() -> BTreeMap<usize, Vec<usize>> {
    [(0, vec![1, 3]), (1, vec![0, 1, 2])].into_iter().collect()
}

#[test]
fn roberta_tokenizer_matches_transformers() {
    let f = fixture("roberta.safetensors");
    let tok = Tokenizer::from_dir(&tiny()).unwrap();
    assert_eq!(tok.pad_id(), 1, "RoBERTa pads with <pad> = 1");
    let texts = sentences();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch = tok
        .batch::<burn::backend::NdArray<f32>>(&texts, 32, &Default::default())
        .unwrap();
    let ours: Vec<i64> = batch.ids.into_data().convert::<i64>().to_vec().unwrap();
    let theirs: Vec<i64> = f["input_ids"].data.iter().map(|&x| x as i64).collect();
    assert_eq!(ours, theirs);
    let mask: Vec<f32> = batch.attention_mask.into_data().to_vec().unwrap();
    assert_eq!(mask, f["attention_mask"].data);
    // <s> ... </s>, and the text back.
    let one = tok.encode(texts[2]).unwrap();
    assert_eq!((one[0], *one.last().unwrap()), (0, 2));
    assert_eq!(tok.decode(&one).unwrap(), texts[2]);
}

fn roberta_parity<B: Backend>(device: &B::Device) {
    let f = fixture("roberta.safetensors");
    let (model, head) = BertModel::<B>::load_with_head(&tiny(), device).unwrap();
    let config = model.config().clone();
    assert_eq!(config.family, Family::Roberta);
    assert_eq!((config.position_offset, config.max_len()), (2, 32));
    assert_eq!(config.type_vocab_size, 1);
    assert_eq!(
        head.keys().collect::<Vec<_>>(),
        ["classifier.bias", "classifier.weight"],
        "classifier.out_proj is the head, classifier.dense the pooler"
    );
    let d_logits = max_diff(&logits(&model, &head, device), &f["logits"]);
    // Hidden states of real tokens (transformers gives pads the padding position).
    let hidden = host(model.forward(input(device)).hidden);
    let mask = &f["attention_mask"].data;
    let d = hidden.shape[2];
    let d_hidden = (0..mask.len())
        .filter(|&t| mask[t] > 0.5)
        .flat_map(|t| (0..d).map(move |j| t * d + j))
        .map(|i| (hidden.data[i] - f["last_hidden"].data[i]).abs())
        .fold(0.0, f32::max);
    let pruned = model.prune_heads(&pruned_heads()).unwrap();
    let d_pruned = max_diff(&logits(&pruned, &head, device), &f["pruned_logits"]);
    eprintln!(
        "RoBERTa parity: logits {d_logits:.2e}, hidden {d_hidden:.2e}, head-pruned logits {d_pruned:.2e}"
    );
    assert!(d_logits <= 1e-4, "logits differ by {d_logits}");
    assert!(d_hidden <= 1e-4, "hidden states differ by {d_hidden}");
    assert!(d_pruned <= 1e-4, "head-pruned logits differ by {d_pruned}");
}

fn head_of(head: &TensorMap) -> hf::HfHead {
    let config = serde_json::json!({
        "id2label": {"0": "negative", "1": "neutral", "2": "positive"},
        "label2id": {"negative": 0, "neutral": 1, "positive": 2},
    });
    hf::HfHead {
        tensors: head.clone(),
        config: config.as_object().unwrap().clone(),
    }
}

/// Checks that the export in `dir` is, byte for byte in `files`, the committed fixture
/// `crates/layers/tests/fixtures/NAME/`, and returns the logits transformers computed on
/// that fixture for [`input`] (its `logits.json`, written by
/// `tools/fixtures/make_roberta_export_fixtures.py`). With `SHEARS_UPDATE_FIXTURES` set,
/// writes the fixture instead and returns `None`.
fn committed(dir: &Path, name: &str, files: &[&str]) -> Option<HostTensor> {
    let fixture = fixtures().join(name);
    let script = "tools/fixtures/make_roberta_export_fixtures.py";
    if std::env::var_os("SHEARS_UPDATE_FIXTURES").is_some() {
        std::fs::create_dir_all(&fixture).unwrap();
        for f in files {
            std::fs::copy(dir.join(f), fixture.join(f)).unwrap();
        }
        return None;
    }
    for f in files {
        assert!(
            std::fs::read(dir.join(f)).unwrap() == std::fs::read(fixture.join(f)).unwrap(),
            "the export's {f} differs from the committed fixture {name}: rerun this test with \
             SHEARS_UPDATE_FIXTURES=1, then {script}"
        );
    }
    let logits: Vec<Vec<f32>> =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("logits.json")).unwrap())
            .unwrap();
    let n = logits.len();
    Some(HostTensor::new(vec![n, logits[0].len()], logits.concat()))
}

fn read_config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// HF -> shears -> HF writes every tensor unchanged; a head-pruned RoBERTa exports as
/// `RobertaForSequenceClassification` with `pruned_heads`, any other shape as `shears_bert`
/// with the position offset, and both load back with the same logits.
#[test]
fn roberta_round_trips_through_the_hugging_face_layout() {
    type B = burn::backend::Flex;
    let device = Default::default();
    let tmp = tempfile::tempdir().unwrap();
    let (model, head) = BertModel::<B>::load_with_head(&tiny(), &device).unwrap();
    let hf_head = head_of(&head);

    let same = tmp.path().join("same");
    model
        .export_hf_with_head(&same, Some(&tiny()), Some(&hf_head))
        .unwrap();
    let original = hf::read_safetensors(&tiny().join("model.safetensors")).unwrap();
    let written = hf::read_safetensors(&same.join("model.safetensors")).unwrap();
    assert_eq!(
        written.keys().collect::<Vec<_>>(),
        original.keys().collect::<Vec<_>>()
    );
    for (k, t) in &original {
        assert_eq!(
            (&written[k].shape, &written[k].data),
            (&t.shape, &t.data),
            "{k}"
        );
    }
    let config = read_config(&same);
    assert_eq!(config["model_type"], "roberta");
    assert_eq!(
        config["architectures"][0],
        "RobertaForSequenceClassification"
    );
    assert!(same.join("tokenizer.json").exists());

    let expected = logits(&model, &head, &device);
    let pruned = model.clone().prune_heads(&pruned_heads()).unwrap();
    let pruned_logits = logits(&pruned, &head, &device);
    let plain = tmp.path().join("plain");
    pruned
        .export_hf_with_head(&plain, Some(&tiny()), Some(&hf_head))
        .unwrap();
    let config = read_config(&plain);
    assert_eq!(config["model_type"], "roberta");
    assert_eq!(
        config["pruned_heads"],
        serde_json::json!({"0": [1, 3], "1": [0, 1, 2]})
    );
    let (back, back_head) = BertModel::<B>::load_with_head(&plain, &device).unwrap();
    assert_eq!(back.config().family, Family::Roberta);
    let d_plain = max_diff(&logits(&back, &back_head, &device), &pruned_logits);
    let theirs_plain = committed(&plain, "roberta-pruned-heads", &["config.json", WEIGHTS]);

    // Per-layer FFN widths: only the modeling file can hold them.
    let ffn = model
        .keep(SpaceName::Ffn(0), &(0..20).collect::<Vec<_>>())
        .unwrap();
    let ffn_logits = logits(&ffn, &head, &device);
    let any = tmp.path().join("any");
    ffn.export_hf_with_head(&any, Some(&tiny()), Some(&hf_head))
        .unwrap();
    let config = read_config(&any);
    assert_eq!(config["model_type"], hf::SHEARS_BERT);
    assert_eq!(config["shears_family"], "roberta");
    assert_eq!(config["position_offset"], 2);
    assert_eq!(config["pad_token_id"], 1);
    let (back, back_head) = BertModel::<B>::load_with_head(&any, &device).unwrap();
    assert_eq!(back.config().family, Family::Roberta);
    assert_eq!(back.config().position_offset, 2);
    let d_any = max_diff(&logits(&back, &back_head, &device), &ffn_logits);
    let (modeling, _) = hf::shears_modeling(Family::Roberta);
    let theirs_any = committed(&any, "roberta-shears", &["config.json", WEIGHTS, modeling]);
    let (Some(theirs_plain), Some(theirs_any)) = (theirs_plain, theirs_any) else {
        panic!(
            "fixtures roberta-pruned-heads and roberta-shears written: now run \
             tools/fixtures/make_roberta_export_fixtures.py with the peer"
        );
    };
    let t_plain = max_diff(&pruned_logits, &theirs_plain);
    let t_any = max_diff(&ffn_logits, &theirs_any);
    eprintln!(
        "RoBERTa round trips: pruned_heads {d_plain:.2e}, shears_bert {d_any:.2e}; \
         transformers on the exports: RobertaForSequenceClassification {t_plain:.2e}, \
         ShearsBertForSequenceClassification {t_any:.2e}"
    );
    assert!(d_plain <= 1e-6, "{d_plain}");
    assert!(d_any <= 1e-6, "{d_any}");
    assert!(
        t_plain <= 1e-4,
        "transformers differs on the pruned_heads export by {t_plain}"
    );
    assert!(
        t_any <= 1e-4,
        "transformers differs on the shears_bert export by {t_any}"
    );
    // The logits changed at all: the pruned models are not the original.
    assert!(max_diff(&pruned_logits, &expected) > 1e-3);
}

/// A CSV of the fixture's sentences, each labelled with the top class of `logits`
/// (`[4, classes]`, transformers') but the last, labelled with its lowest class, and the
/// mean cross-entropy those logits give.
fn labelled_rows(logits: &HostTensor, path: &Path) -> f64 {
    let labels = ["negative", "neutral", "positive"];
    let c = logits.shape[1];
    let mut rows = vec!["text,label".to_string()];
    let mut loss = 0.0f64;
    for (i, text) in sentences().iter().enumerate() {
        let row: Vec<f64> = logits.data[i * c..(i + 1) * c]
            .iter()
            .map(|&x| x as f64)
            .collect();
        let pick = |better: fn(f64, f64) -> bool| {
            (0..c).fold(0, |k, j| if better(row[j], row[k]) { j } else { k })
        };
        let label = if i == 3 {
            pick(|a, b| a < b)
        } else {
            pick(|a, b| a > b)
        };
        let max = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        loss += lse - row[label];
        rows.push(format!("\"{text}\",{}", labels[label]));
    }
    std::fs::write(path, rows.join("\n")).unwrap();
    loss / 4.0
}

/// `eval` on the Hugging Face `RobertaForSequenceClassification` directory as a user runs
/// it: classes from `id2label`, the length from the tokenizer's `model_max_length` (32, all
/// the position table holds after RoBERTa's offset), and the loss transformers' logits give.
/// `prune-heads` keeps the classifier: its output scores as transformers' `prune_heads` does.
#[test]
fn eval_and_prune_heads_score_a_roberta_classifier_as_transformers_does() {
    let f = fixture("roberta.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let opts = shears_train::EvalOptions {
        batch_size: 4,
        repeats: 1,
        ..Default::default()
    };
    let device = Default::default();
    let data = tmp.path().join("rows.csv");
    let loss = labelled_rows(&f["logits"], &data);
    let e = shears_train::eval_dir::<burn::backend::Flex>(&tiny(), &data, &opts, &device).unwrap();
    eprintln!("eval on tiny-roberta: {e:?}; transformers' loss {loss:.6}");
    assert_eq!((e.examples, e.max_len), (4, 32));
    assert_eq!(e.accuracy, Some(0.75));
    assert!((e.loss - loss).abs() < 1e-5, "loss {} vs {loss}", e.loss);

    let out = tmp.path().join("pruned");
    shears_train::run_prune_heads::<burn::backend::Flex>(
        &tiny(),
        &pruned_heads(),
        &out,
        shears_layers::save::Existing::Refuse,
        &device,
    )
    .unwrap();
    let loss = labelled_rows(&f["pruned_logits"], &data);
    let e = shears_train::eval_dir::<burn::backend::Flex>(&out, &data, &opts, &device).unwrap();
    assert_eq!(e.accuracy, Some(0.75));
    assert!(
        (e.loss - loss).abs() < 1e-5,
        "pruned loss {} vs {loss}",
        e.loss
    );
}

/// RoBERTa's `config.json` entries are checked: a position table the offset leaves empty,
/// a padding id that is not an id, and a `shears_family` that is not a family of the type
/// are errors naming the value.
#[test]
fn roberta_config_errors_name_the_value() {
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny().join("config.json")).unwrap())
            .unwrap();
    let with = |key: &str, v: serde_json::Value| {
        let mut c = base.clone();
        c[key] = v;
        shears_layers::ModelConfig::from_hf_value(c)
            .unwrap_err()
            .to_string()
    };
    let e = with("max_position_embeddings", 2.into());
    assert!(
        e.contains("max_position_embeddings 2") && e.contains("pad_token_id 1"),
        "{e}"
    );
    let e = with("pad_token_id", "one".into());
    assert!(e.contains("pad_token_id") && e.contains("\"one\""), "{e}");
    let exported: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("roberta-shears/config.json")).unwrap(),
    )
    .unwrap();
    let mut bad = exported.clone();
    bad["shears_family"] = "gpt2".into();
    let e = shears_layers::ModelConfig::from_hf_value(bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`gpt2`") && e.contains("shears_bert"), "{e}");
    // The offset belongs to RoBERTa: missing for it, or given for a BERT, is an error.
    let mut bad = exported.clone();
    bad.as_object_mut().unwrap().remove("position_offset");
    let e = shears_layers::ModelConfig::from_hf_value(bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("roberta") && e.contains("no position_offset"),
        "{e}"
    );
    let mut bad = exported.clone();
    bad.as_object_mut().unwrap().remove("shears_family");
    let e = shears_layers::ModelConfig::from_hf_value(bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bert") && e.contains("position_offset 2"), "{e}");
    let config = shears_layers::ModelConfig::from_hf_value(exported).unwrap();
    assert_eq!(
        (config.family, config.position_offset),
        (Family::Roberta, 2)
    );
}

/// A `RobertaForSequenceClassification` checkpoint that still carries the pretrained
/// `roberta.pooler.dense.*` (transformers 2.x and early 3.x saved it; the model does not
/// use it) loads with `classifier.dense` as the pooler and the stale one skipped.
#[test]
fn a_stale_pooler_beside_the_classifier_is_skipped() {
    type B = burn::backend::Flex;
    let device = Default::default();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stale");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(tiny().join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors = hf::read_safetensors(&tiny().join(WEIGHTS)).unwrap();
    let d = 32;
    let junk = |shape: Vec<usize>| {
        let n = shape.iter().product();
        HostTensor::new(shape, (0..n).map(|i| (i % 7) as f32 - 3.0).collect())
    };
    tensors.insert("roberta.pooler.dense.weight".into(), junk(vec![d, d]));
    tensors.insert("roberta.pooler.dense.bias".into(), junk(vec![d]));
    hf::write_safetensors(&dir.join(WEIGHTS), &tensors).unwrap();
    let (model, head) = BertModel::<B>::load_with_head(&dir, &device).unwrap();
    let d_logits = max_diff(
        &logits(&model, &head, &device),
        &fixture("roberta.safetensors")["logits"],
    );
    assert!(d_logits <= 1e-4, "logits differ by {d_logits}");
}

mod backend {
    use super::*;

    #[test]
    fn roberta_matches_transformers() {
        on_backend!(roberta_parity);
    }
}
