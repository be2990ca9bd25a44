//! Numerical parity with the reference (fixtures from tools/fixtures/make_layers_fixtures.py)
//! and head-pruning semantics equal to transformers' `prune_heads`.

use std::collections::BTreeMap;

use burn::prelude::*;
use shears_layers::{BertModel, Gpt2Model, ModelInput, Tokenizer};

use super::common::*;

fn minilm_input<B: Backend>(device: &B::Device) -> ModelInput<B> {
    let f = fixture("minilm.safetensors");
    let mut input = ModelInput::new(ids::<B>(&f["input_ids"], device))
        .with_attention_mask(dev(&f["attention_mask"], device));
    input.token_types = Some(ids::<B>(&f["token_type_ids"], device));
    input
}

fn minilm_parity<B: Backend>(device: &B::Device) {
    let f = fixture("minilm.safetensors");
    let model = BertModel::<B>::load(&asset("all-MiniLM-L6-v2"), device).unwrap();
    let out = model.forward(minilm_input(device));
    let d_hidden = max_diff(&host(out.hidden), &f["last_hidden"]);
    let d_pooled = max_diff(&host(out.pooled.unwrap()), &f["pooled"]);
    eprintln!("MiniLM parity: last hidden max |diff| {d_hidden:.2e}, pooled {d_pooled:.2e}");
    assert!(d_hidden <= 1e-4, "last hidden differs by {d_hidden}");
    assert!(d_pooled <= 1e-4, "pooled differs by {d_pooled}");
}

#[test]
fn minilm_tokenizer_matches_reference() {
    let f = fixture("minilm.safetensors");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("meta.json")).unwrap())
            .unwrap();
    let tok = Tokenizer::from_dir(&asset("all-MiniLM-L6-v2")).unwrap();
    let texts: Vec<String> = serde_json::from_value(meta["sentences"].clone()).unwrap();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch = tok
        .batch::<burn::backend::NdArray<f32>>(&texts, 512, &Default::default())
        .unwrap();
    let ours: Vec<i64> = batch.ids.into_data().convert::<i64>().to_vec().unwrap();
    let theirs: Vec<i64> = f["input_ids"].data.iter().map(|&x| x as i64).collect();
    assert_eq!(ours, theirs);
    let mask: Vec<f32> = batch.attention_mask.into_data().to_vec().unwrap();
    assert_eq!(mask, f["attention_mask"].data);
}

#[test]
fn gpt2_tokenizer_is_the_real_bpe() {
    let tok = Tokenizer::from_dir(&asset("gpt2-tokenizer")).unwrap();
    assert_eq!(tok.encode("Hello world").unwrap(), [15496, 995]);
    // No special tokens: truncation is a plain cut.
    assert_eq!(
        tok.encode_truncated("Hello world again", 2).unwrap(),
        [15496, 995]
    );
}

#[test]
fn truncation_keeps_the_special_tokens() {
    // As transformers' `truncation=True, max_length=N`: [CLS] + the first N - 2 word pieces
    // + [SEP] (a bare cut would drop [SEP], which the model was trained to see).
    let tok = Tokenizer::from_dir(&asset("all-MiniLM-L6-v2")).unwrap();
    let text = "An uneven but often thrilling ride through the wreckage of a once great career.";
    let full = tok.encode(text).unwrap();
    assert!(full.len() > 10);
    let cut = tok.encode_truncated(text, 8).unwrap();
    let mut expected = full[..7].to_vec();
    expected.push(*full.last().unwrap());
    assert_eq!(cut, expected);
    assert_eq!((cut[0], cut[7]), (101, 102));
    assert_eq!(tok.encode_truncated(text, 512).unwrap(), full);
}

fn gpt2_parity<B: Backend>(device: &B::Device) {
    let f = fixture("gpt2.safetensors");
    let model = Gpt2Model::<B>::load(&fixtures().join("tiny-gpt2"), device).unwrap();
    let out = model.forward(ModelInput::new(ids::<B>(&f["input_ids"], device)));
    let d = max_diff(&host(out.logits.unwrap()), &f["logits"]);
    eprintln!("GPT-2 parity: logits max |diff| {d:.2e}");
    assert!(d <= 1e-4, "logits differ by {d}");
}

fn heads(spec: &[(usize, &[usize])]) -> BTreeMap<usize, Vec<usize>> {
    spec.iter().map(|(l, h)| (*l, h.to_vec())).collect()
}

fn prune_heads_like_reference<B: Backend>(device: &B::Device) {
    let f = fixture("minilm.safetensors");
    let dir = asset("all-MiniLM-L6-v2");
    let once = BertModel::<B>::load(&dir, device)
        .unwrap()
        .prune_heads(&heads(&[
            (0, &[0, 2, 5]),
            (3, &[1]),
            (5, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ]))
        .unwrap();
    assert_eq!(once.config().layers[5].head_ids, [10, 11]);
    let d_once = max_diff(
        &host(once.forward(minilm_input(device)).hidden),
        &f["pruned_once_hidden"],
    );
    // Two rounds: the second round's indices are original heads, as in transformers.
    let twice = BertModel::<B>::load(&dir, device)
        .unwrap()
        .prune_heads(&heads(&[(0, &[0, 2]), (4, &[11])]))
        .unwrap()
        .prune_heads(&heads(&[(0, &[5]), (2, &[3, 4]), (4, &[0])]))
        .unwrap();
    assert_eq!(
        twice.config().layers[0].head_ids,
        [1, 3, 4, 6, 7, 8, 9, 10, 11]
    );
    let d_twice = max_diff(
        &host(twice.forward(minilm_input(device)).hidden),
        &f["pruned_twice_hidden"],
    );
    eprintln!("prune_heads parity: once {d_once:.2e}, two rounds {d_twice:.2e}");
    assert!(d_once <= 1e-4, "pruned once differs by {d_once}");
    assert!(d_twice <= 1e-4, "pruned twice differs by {d_twice}");

    // The Hugging Face export loads back (through `pruned_heads`) with the same outputs.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pruned");
    twice.export_hf(&out, Some(&dir)).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["pruned_heads"],
        serde_json::json!({"0": [0, 2, 5], "2": [3, 4], "4": [0, 11]})
    );
    assert_eq!(cfg["num_attention_heads"], 12);
    let back = BertModel::<B>::load(&out, device).unwrap();
    assert_eq!(back.config().layers, twice.config().layers);
    let d_back = max_diff(
        &host(back.forward(minilm_input(device)).hidden),
        &f["pruned_twice_hidden"],
    );
    assert!(d_back <= 1e-4, "exported model differs by {d_back}");
}

/// Tests that run on every backend CI covers: `cargo xtask test` runs the `backend::` tests on
/// each backend, everything else once.
mod backend {
    use super::*;

    #[test]
    fn minilm_matches_reference() {
        on_backend!(minilm_parity);
    }

    #[test]
    fn gpt2_matches_reference() {
        on_backend!(gpt2_parity);
    }

    #[test]
    fn prune_heads_matches_reference_prune_heads() {
        on_backend!(prune_heads_like_reference);
    }
}
