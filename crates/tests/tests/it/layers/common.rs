//! Backend choice, fixtures and comparison helpers.

use std::path::PathBuf;

use burn::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use shears_layers::{BertModel, ModelConfig, SpaceName, tensorio};
use shears_spaces::{HostTensor, TensorMap};

/// `crates/layers/tests/fixtures`.
pub fn fixtures() -> PathBuf {
    crate::fixtures("layers")
}

/// The fetched assets (`cargo xtask fetch`); a missing asset fails the test, never skips it.
pub fn asset(rel: &str) -> PathBuf {
    let p = crate::assets().join(rel);
    assert!(
        p.exists(),
        "asset {} is missing: run `cargo xtask fetch` first",
        p.display()
    );
    p
}

/// A fixture tensor file.
pub fn fixture(name: &str) -> TensorMap {
    shears_layers::hf::read_safetensors(&fixtures().join(name)).expect("fixture reads")
}

/// Largest absolute difference; panics on a shape mismatch.
pub fn max_diff(a: &HostTensor, b: &HostTensor) -> f32 {
    assert_eq!(a.shape, b.shape, "shapes differ");
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A host tensor on the device.
pub fn dev<B: Backend, const D: usize>(t: &HostTensor, device: &B::Device) -> Tensor<B, D> {
    tensorio::to_device(t, device)
}

/// An int tensor from a float fixture of ids.
pub fn ids<B: Backend>(t: &HostTensor, device: &B::Device) -> Tensor<B, 2, Int> {
    let v: Vec<i64> = t.data.iter().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(v, t.shape.clone()), device)
}

/// A host copy of a device tensor.
pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
    tensorio::to_host(t)
}

/// A tiny BERT with every parameter (LayerNorms and biases included) random.
pub fn tiny_bert<B: Backend>(device: &B::Device, seed: u64) -> BertModel<B> {
    let mut config = ModelConfig::bert(50, 16, 2, 4, 24);
    config.max_positions = 16;
    randomised(&config, device, seed)
}

/// A tiny RoBERTa (BERT's layers, positions from 2, one token type) with every parameter
/// random.
pub fn tiny_roberta<B: Backend>(device: &B::Device, seed: u64) -> BertModel<B> {
    let mut config = ModelConfig::bert(50, 16, 2, 4, 24);
    config.family = shears_layers::Family::Roberta;
    config.max_positions = 18;
    config.position_offset = 2;
    config.type_vocab_size = 1;
    randomised(&config, device, seed)
}

/// A tiny GPT-2 with every parameter random.
pub fn tiny_gpt2<B: Backend>(device: &B::Device, seed: u64) -> BertModel<B> {
    let mut config = ModelConfig::gpt2(40, 16, 2, 4, 24);
    config.max_positions = 16;
    randomised(&config, device, seed)
}

/// A model of `config` with every parameter drawn from U(-0.5, 0.5) by a seeded host
/// generator.
pub fn randomised<B: Backend>(config: &ModelConfig, device: &B::Device, seed: u64) -> BertModel<B> {
    let model = BertModel::<B>::new(config, device);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = tensorio::export(&model);
    for v in t.values_mut() {
        for x in &mut v.data {
            *x = rng.random_range(-0.5..0.5);
        }
    }
    tensorio::import(model, &t, device).unwrap()
}

/// `model` (3 layers of 4 heads, 24 neurons, hidden 16) pruned to an irregular shape:
/// heads 1 and 3 of layer 0, no head in layer 1, 9 neurons in layer 0, none in layer 2,
/// 12 of 16 hidden dimensions.
pub fn irregular<B: Backend>(model: BertModel<B>) -> BertModel<B> {
    model
        .keep(SpaceName::Heads(0), &[1, 3])
        .unwrap()
        .keep(SpaceName::Heads(1), &[])
        .unwrap()
        .keep(SpaceName::Ffn(0), &[0, 2, 5, 7, 11, 13, 17, 19, 23])
        .unwrap()
        .keep(SpaceName::Ffn(2), &[])
        .unwrap()
        .keep(
            SpaceName::Hidden,
            &[0, 1, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15],
        )
        .unwrap()
}

/// Random ids `[batch, seq]` below `vocab`, and a padding mask with row `i` padded by `i`.
pub fn random_input<B: Backend>(
    device: &B::Device,
    vocab: usize,
    batch: usize,
    seq: usize,
    seed: u64,
) -> (Tensor<B, 2, Int>, Tensor<B, 2>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let ids: Vec<i64> = (0..batch * seq)
        .map(|_| rng.random_range(0..vocab as i64))
        .collect();
    let mask: Vec<f32> = (0..batch * seq)
        .map(|i| {
            if i % seq < seq - (i / seq).min(seq - 1) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    (
        Tensor::from_data(TensorData::new(ids, [batch, seq]), device),
        Tensor::from_data(TensorData::new(mask, [batch, seq]), device),
    )
}
