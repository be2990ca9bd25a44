//! Dropout: drawn from a key, off without one, and the probabilities read from Hugging Face
//! configs.

use burn::prelude::*;
use shears_layers::dropout::{Site, dropout, mask_values};
use shears_layers::{DropoutConfig, ModelConfig, ModelInput, Transformer};

fn input<B: Backend>(device: &B::Device) -> ModelInput<B> {
    let ids: Vec<i64> = (0..2 * 7).map(|i| (i * 5 + 3) % 40).collect();
    let mut mask = vec![1.0f32; 14];
    mask[13] = 0.0;
    ModelInput::new(Tensor::from_data(TensorData::new(ids, [2, 7]), device))
        .with_attention_mask(Tensor::from_data(TensorData::new(mask, [2, 7]), device))
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// A model with dropout in its config computes exactly what it computes without dropout
/// unless the input carries a key; with one, each kind of dropout (embeddings, attention
/// probabilities, block outputs) draws as a function of the key alone: the same key gives
/// the same output, another key another output.
fn dropout_follows_the_key<B: Backend>(device: &B::Device) {
    for base in [
        ModelConfig::bert(40, 16, 2, 4, 12),
        ModelConfig::gpt2(40, 16, 2, 4, 12),
    ] {
        let plain = ModelConfig {
            max_positions: 16,
            ..base
        };
        let model = crate::materialized(Transformer::<B>::new(&plain, device));
        let eval_plain = values(model.forward(input(device)).hidden);
        // A key on a model whose config has no dropout changes nothing.
        let keyed_plain = values(model.forward(input(device).with_dropout(9)).hidden);
        assert_eq!(keyed_plain, eval_plain, "{:?}: p = 0", plain.family);
        let only = |hidden, attention, embedding| DropoutConfig {
            hidden,
            attention,
            embedding,
        };
        for (what, dropout) in [
            ("hidden", only(0.3, 0.0, 0.0)),
            ("attention", only(0.0, 0.3, 0.0)),
            ("embedding", only(0.0, 0.0, 0.3)),
        ] {
            let with = ModelConfig {
                dropout,
                ..plain.clone()
            };
            let case = format!("{:?}, {what} dropout", plain.family);
            let dropping =
                Transformer::<B>::new(&with, device).load_record(model.clone().into_record());
            let eval_drop = values(dropping.forward(input(device)).hidden);
            assert_eq!(eval_plain, eval_drop, "{case}: without a key");
            let a = values(dropping.forward(input(device).with_dropout(9)).hidden);
            let b = values(dropping.forward(input(device).with_dropout(9)).hidden);
            let c = values(dropping.forward(input(device).with_dropout(10)).hidden);
            assert_eq!(a, b, "{case}: the same key");
            assert_ne!(a, c, "{case}: another key");
            assert_ne!(a, eval_plain, "{case}: a key drops units");
        }
    }
}

/// `dropout` drops a fraction `p` of the elements, scales the rest by `1 / (1 - p)` (so the
/// mean is kept), and each site of a step draws its own elements.
fn dropout_drops_p_and_keeps_the_mean<B: Backend>(device: &B::Device) {
    let n = 200_000;
    let x = Tensor::<B, 2>::ones([400, 500], device);
    let p = 0.3;
    let y = values(dropout(x, p, 1234));
    let zeros = y.iter().filter(|v| **v == 0.0).count() as f64 / n as f64;
    let mean = y.iter().map(|v| *v as f64).sum::<f64>() / n as f64;
    // Binomial spread at n = 200,000: sd 0.001.
    assert!((zeros - p).abs() < 0.005, "dropped fraction {zeros}");
    assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
    let kept = y.iter().find(|v| **v != 0.0).copied().unwrap();
    assert!(
        (kept - 1.0 / 0.7).abs() < 1e-6,
        "kept values scaled: {kept}"
    );
    let a = mask_values(Site::AttentionOutput(0).key(5), p, 1000);
    let b = mask_values(Site::FfnOutput(0).key(5), p, 1000);
    let c = mask_values(Site::AttentionOutput(1).key(5), p, 1000);
    assert_ne!(a, b, "sites of one layer");
    assert_ne!(a, c, "one site of two layers");
    assert_eq!(
        values(dropout(Tensor::<B, 1>::ones([10], device), 0.0, 1)),
        vec![1.0; 10]
    );
}

#[test]
fn hugging_face_dropout_probabilities_are_read() {
    let bert = serde_json::json!({
        "model_type": "bert", "vocab_size": 30, "hidden_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 4, "intermediate_size": 32, "max_position_embeddings": 16,
        "hidden_dropout_prob": 0.15, "attention_probs_dropout_prob": 0.05
    });
    let c = ModelConfig::from_hf_value(bert.clone()).unwrap();
    assert_eq!(
        c.dropout,
        DropoutConfig {
            hidden: 0.15,
            attention: 0.05,
            embedding: 0.15
        }
    );
    let gpt2 = serde_json::json!({
        "model_type": "gpt2", "vocab_size": 30, "n_embd": 16, "n_layer": 1, "n_head": 4,
        "n_positions": 16, "resid_pdrop": 0.2, "attn_pdrop": 0.1, "embd_pdrop": 0.05
    });
    let c = ModelConfig::from_hf_value(gpt2).unwrap();
    assert_eq!(
        c.dropout,
        DropoutConfig {
            hidden: 0.2,
            attention: 0.1,
            embedding: 0.05
        }
    );
    let mut bad = bert;
    bad["hidden_dropout_prob"] = serde_json::json!(1.5);
    let e = ModelConfig::from_hf_value(bad).unwrap_err().to_string();
    assert!(e.contains("1.5"), "{e}");
}

mod backend {
    use super::*;

    #[test]
    fn dropout_is_off_without_a_key_and_follows_it() {
        on_backend!(dropout_follows_the_key)
    }

    #[test]
    fn dropout_drops_its_fraction_and_keeps_the_mean() {
        on_backend!(dropout_drops_p_and_keeps_the_mean)
    }
}
