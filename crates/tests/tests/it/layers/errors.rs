//! Bad input gets typed errors naming the key, the expected and the found value.

use std::collections::BTreeMap;
use std::path::Path;

use burn::backend::NdArray;
use shears_layers::{BertModel, LoadError, ModelConfig, PruneError, hf};
use shears_spaces::{HostTensor, SpaceError};

use super::common::*;

type B = NdArray<f32>;

fn load(dir: &Path) -> Result<BertModel<B>, LoadError> {
    BertModel::<B>::load(dir, &Default::default())
}

/// A copy of the tiny GPT-2 fixture with its tensors changed by `edit`.
fn edited(edit: impl FnOnce(&mut shears_spaces::TensorMap)) -> tempfile::TempDir {
    let src = fixtures().join("tiny-gpt2");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut t = hf::read_safetensors(&src.join("model.safetensors")).unwrap();
    edit(&mut t);
    hf::write_safetensors(&tmp.path().join("model.safetensors"), &t).unwrap();
    tmp
}

#[test]
fn missing_extra_and_misshapen_tensors() {
    let key = "transformer.h.1.mlp.c_fc.weight";
    let dir = edited(|t| {
        t.remove(key);
    });
    assert_eq!(
        load(dir.path()).unwrap_err(),
        LoadError::MissingKey {
            key: "h.1.mlp.c_fc.weight".into(),
            expected: vec![48, 192]
        }
    );
    let dir = edited(|t| {
        t.insert(
            "transformer.h.0.attn.extra".into(),
            HostTensor::new(vec![2], vec![0.0; 2]),
        );
    });
    assert_eq!(
        load(dir.path()).unwrap_err(),
        LoadError::UnexpectedKey {
            key: "h.0.attn.extra".into(),
            found: vec![2]
        }
    );
    let dir = edited(|t| {
        t.insert(
            key.into(),
            HostTensor::new(vec![192, 48], vec![0.0; 192 * 48]),
        );
    });
    assert_eq!(
        load(dir.path()).unwrap_err(),
        LoadError::Shape {
            key: "h.1.mlp.c_fc.weight".into(),
            expected: vec![48, 192],
            found: vec![192, 48]
        }
    );
}

#[test]
fn truncated_file_wrong_dtype_and_missing_files() {
    let dir = edited(|_| {});
    let f = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        load(dir.path()).unwrap_err(),
        LoadError::Safetensors { .. }
    ));

    // An I32 tensor where floats are expected.
    let data = vec![0u8; 8];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![2], &data).unwrap();
    let bytes = safetensors::serialize(vec![("wte.weight".to_string(), view)], None).unwrap();
    std::fs::write(&f, bytes).unwrap();
    assert_eq!(
        load(dir.path()).unwrap_err(),
        LoadError::Dtype {
            key: "wte.weight".into(),
            expected: "F32, F16 or BF16",
            found: "I32".into()
        }
    );

    std::fs::remove_file(&f).unwrap();
    assert!(matches!(
        load(dir.path()).unwrap_err(),
        LoadError::Io { .. }
    ));
    let empty = tempfile::tempdir().unwrap();
    let err = load(empty.path()).unwrap_err().to_string();
    assert!(err.contains("no shears.json or config.json"), "{err}");
}

/// Each `config.json` option that changes the computation and that shears does not
/// implement is refused with a typed error naming key and value (issue 14); the value shears
/// computes as, or no value, loads. A file's error names the file.
#[test]
fn unsupported_config_options_are_refused() {
    let read = |file: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
    };
    let gpt2 = read(fixtures().join("tiny-gpt2/config.json"));
    let bert = read(asset("all-MiniLM-L6-v2/config.json"));
    let cases: [(
        &serde_json::Value,
        &str,
        serde_json::Value,
        serde_json::Value,
    ); 10] = [
        (
            &bert,
            "position_embedding_type",
            "relative_key".into(),
            "absolute".into(),
        ),
        (
            &bert,
            "position_embedding_type",
            "relative_key_query".into(),
            "absolute".into(),
        ),
        (
            &gpt2,
            "position_embedding_type",
            "rotary".into(),
            "absolute".into(),
        ),
        (&bert, "is_decoder", true.into(), false.into()),
        (&bert, "add_cross_attention", true.into(), false.into()),
        (&gpt2, "add_cross_attention", true.into(), false.into()),
        (
            &gpt2,
            "scale_attn_by_inverse_layer_idx",
            true.into(),
            false.into(),
        ),
        (&gpt2, "reorder_and_upcast_attn", true.into(), false.into()),
        (&gpt2, "scale_attn_weights", false.into(), true.into()),
        (&gpt2, "tie_word_embeddings", false.into(), true.into()),
    ];
    for (base, key, bad, good) in cases {
        let mut v = base.clone();
        v[key] = bad.clone();
        match ModelConfig::from_hf_value(v.clone()) {
            Err(LoadError::UnsupportedOption { key: k, value, .. }) => {
                assert_eq!((k.as_str(), value), (key, bad.to_string()));
            }
            other => panic!("{key} = {bad}: {other:?}"),
        }
        v[key] = good;
        ModelConfig::from_hf_value(v.clone()).unwrap_or_else(|e| panic!("{key}: {e}"));
        v[key] = serde_json::Value::Null;
        ModelConfig::from_hf_value(v).unwrap_or_else(|e| panic!("{key} = null: {e}"));
    }
    // BERT's encoder does not use the MLM head that `tie_word_embeddings` is about.
    let mut v = bert.clone();
    v["tie_word_embeddings"] = false.into();
    ModelConfig::from_hf_value(v).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let mut v = gpt2.clone();
    v["scale_attn_by_inverse_layer_idx"] = true.into();
    let file = tmp.path().join("config.json");
    std::fs::write(&file, v.to_string()).unwrap();
    let e = ModelConfig::from_hf_file(&file).unwrap_err().to_string();
    assert!(
        e.contains(&file.display().to_string())
            && e.contains("option `scale_attn_by_inverse_layer_idx` = true is not supported"),
        "{e}"
    );
}

/// Sizes in `config.json` that its weights cannot back are typed errors naming the value,
/// raised before a model of that size is allocated (before this check, a `vocab_size` of
/// 10^15 aborted the process on the allocation).
#[test]
fn config_sizes_the_weights_cannot_back_are_refused_before_allocating() {
    let src = fixtures().join("tiny-gpt2");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let huge: u64 = 1_000_000_000_000_000;
    for (key, value, names) in [
        ("vocab_size", huge, "vocab_size"),
        ("n_positions", huge, "max_positions"),
        ("n_inner", huge, "d_ff"),
        ("n_embd", 4 * huge, "d_model"),
        ("n_layer", huge, "num_hidden_layers"),
        ("n_head", huge, "num_attention_heads"),
        // Under the cap, but more layers than the file has tensors.
        ("n_layer", 1000, "1000 layers"),
        // Each size fits, together they are far more than the file holds.
        ("n_layer", 20, "parameters"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = config.clone();
        c[key] = value.into();
        std::fs::write(tmp.path().join("config.json"), c.to_string()).unwrap();
        std::fs::copy(
            src.join("model.safetensors"),
            tmp.path().join("model.safetensors"),
        )
        .unwrap();
        let e = load(tmp.path()).unwrap_err();
        let message = e.to_string();
        assert!(matches!(e, LoadError::Config { .. }), "{key}: {e:?}");
        assert!(
            message.contains(names) && message.contains(&value.to_string()),
            "{key} = {value}: {message}"
        );
    }
}

#[test]
fn unknown_activation_and_malformed_config() {
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny-gpt2/config.json")).unwrap(),
    )
    .unwrap();
    v["activation_function"] = "swishy".into();
    assert_eq!(
        ModelConfig::from_hf_value(v.clone())
            .unwrap_err()
            .to_string(),
        "unknown activation `swishy` (supported: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu)"
    );
    v["activation_function"] = "gelu_new".into();
    v["model_type"] = "t5".into();
    assert!(
        ModelConfig::from_hf_value(v)
            .unwrap_err()
            .to_string()
            .contains("unsupported model_type `t5`")
    );
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), "{ not json").unwrap();
    assert!(matches!(
        load(tmp.path()).unwrap_err(),
        LoadError::Config { .. }
    ));
}

#[test]
fn bad_pruning_requests() {
    let device = Default::default();
    let model = tiny_bert::<B>(&device, 0);
    let err = model.clone().keep("hidden", &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "keeping 0 of 16 units of space `hidden` is below its minimum of 1"
    );
    // The built-in blocks may lose every head or neuron of a layer (the block is removed,
    // its output bias stays); prune_heads says so in the config.
    let all: BTreeMap<usize, Vec<usize>> = [(1, vec![0, 1, 2, 3])].into();
    let headless = model.clone().prune_heads(&all).unwrap();
    assert_eq!(headless.config().layers[1].n_heads, 0);
    assert!(headless.config().layers[1].head_ids.is_empty());
    assert!(matches!(
        headless.prune_heads(&[(1, vec![0])].into()).unwrap_err(),
        PruneError::NoSuchHead {
            layer: 1,
            head: 0,
            ..
        }
    ));
    assert!(matches!(
        model.clone().keep("layers.9.heads", &[0]).unwrap_err(),
        PruneError::Space(SpaceError::UnknownSpace { .. })
    ));
    assert!(matches!(
        model.clone().keep("hidden", &[16]).unwrap_err(),
        PruneError::Space(SpaceError::UnitOutOfRange { unit: 16, .. })
    ));
    assert_eq!(
        model
            .clone()
            .prune_heads(&[(5, vec![0])].into())
            .unwrap_err(),
        PruneError::NoSuchLayer {
            layer: 5,
            n_layers: 2
        }
    );
    let once = model.prune_heads(&[(0, vec![1])].into()).unwrap();
    assert_eq!(
        once.prune_heads(&[(0, vec![1])].into()).unwrap_err(),
        PruneError::NoSuchHead {
            layer: 0,
            head: 1,
            remaining: vec![0, 2, 3]
        }
    );
}

/// A factorized (low-rank) BERT has no Hugging Face layout: a typed error naming the
/// projection, and nothing written. (Every pruned shape exports: `train::hf_export`.)
#[test]
fn factorized_bert_refuses_hf_export() {
    let mut config = tiny_bert::<B>(&Default::default(), 0).config().clone();
    config.layers[1].ranks.insert("ffn.up".into(), 4);
    let model = BertModel::<B>::new(&config, &Default::default());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    let e = model.export_hf(&out, None).unwrap_err();
    assert!(
        matches!(&e, LoadError::NotRepresentable(m) if m.contains("layers.1.ffn.up")),
        "{e}"
    );
    assert!(
        !out.exists(),
        "a failed export left {} behind",
        out.display()
    );
}

/// Task checkpoints load (issue 14): a `BertForSequenceClassification` / pre-training layout
/// (`bert.` prefix, `classifier.*`, `cls.*`, no pooler) gives the encoder, the classifier
/// head apart, the `cls.*` heads skipped; a GPT-2 `lm_head.weight` must equal `wte`.
#[test]
fn task_checkpoints_load_their_backbone() {
    let device = Default::default();
    let model = tiny_bert::<B>(&device, 11);
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    model.export_hf(&plain, None).unwrap();
    let tensors = hf::read_safetensors(&plain.join("model.safetensors")).unwrap();
    let d = model.config().d_model;
    let vocab = model.config().vocab_size;
    let task = tmp.path().join("task");
    std::fs::create_dir(&task).unwrap();
    std::fs::copy(plain.join("config.json"), task.join("config.json")).unwrap();
    let mut t: shears_spaces::TensorMap = tensors
        .iter()
        .filter(|(k, _)| !k.starts_with("pooler."))
        .map(|(k, v)| (format!("bert.{k}"), v.clone()))
        .collect();
    let classifier = HostTensor::new(vec![3, d], (0..3 * d).map(|i| i as f32).collect());
    t.insert("classifier.weight".into(), classifier.clone());
    t.insert(
        "classifier.bias".into(),
        HostTensor::new(vec![3], vec![1.0, 2.0, 3.0]),
    );
    t.insert(
        "cls.predictions.bias".into(),
        HostTensor::new(vec![vocab], vec![0.5; vocab]),
    );
    t.insert(
        "cls.seq_relationship.weight".into(),
        HostTensor::new(vec![2, d], vec![0.0; 2 * d]),
    );
    hf::write_safetensors(&task.join("model.safetensors"), &t).unwrap();
    let (back, head) = BertModel::<B>::load_with_head(&task, &device).unwrap();
    assert_eq!(
        back.config().d_pooler,
        None,
        "no pooler in the file, none in the model"
    );
    assert_eq!(
        head.keys().collect::<Vec<_>>(),
        ["classifier.bias", "classifier.weight"]
    );
    assert_eq!(head["classifier.weight"], classifier);
    let (ids, pad) = random_input::<B>(&device, vocab, 2, 5, 4);
    let input = shears_layers::ModelInput::new(ids).with_attention_mask(pad);
    let diff = max_diff(
        &host(model.forward(input.clone()).hidden),
        &host(back.forward(input).hidden),
    );
    assert_eq!(diff, 0.0, "the encoder is the exported one");
    // `load` keeps the backbone and leaves the head (with a logged note).
    assert!(load(&task).unwrap().config().d_pooler.is_none());
    // A key of no known head is still an error.
    t.insert(
        "qa_outputs.weight".into(),
        HostTensor::new(vec![2, d], vec![0.0; 2 * d]),
    );
    hf::write_safetensors(&task.join("model.safetensors"), &t).unwrap();
    assert_eq!(
        load(&task).unwrap_err(),
        LoadError::UnexpectedKey {
            key: "qa_outputs.weight".into(),
            found: vec![2, d]
        }
    );

    // GPT-2: a tied `lm_head.weight` loads, an untied one is refused with the difference.
    let src = fixtures().join("tiny-gpt2");
    let wte =
        hf::read_safetensors(&src.join("model.safetensors")).unwrap()["transformer.wte.weight"]
            .clone();
    let dir = edited(|t| {
        t.insert("lm_head.weight".into(), wte.clone());
    });
    assert!(load(dir.path()).is_ok());
    let mut untied = wte.clone();
    untied.data[7] += 0.25;
    let dir = edited(|t| {
        t.insert("lm_head.weight".into(), untied.clone());
    });
    match load(dir.path()).unwrap_err() {
        LoadError::UntiedLmHead {
            shape,
            max_diff: Some(d),
        } => assert!(
            shape == wte.shape && (d - 0.25).abs() < 1e-6,
            "{shape:?} {d}"
        ),
        other => panic!("{other}"),
    }
    let dir = edited(|t| {
        t.insert(
            "lm_head.weight".into(),
            HostTensor::new(vec![2, 3], vec![0.0; 6]),
        );
    });
    let e = load(dir.path()).unwrap_err();
    assert!(e.to_string().contains("untied"), "{e}");
}
