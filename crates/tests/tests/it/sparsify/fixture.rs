//! Parity with torch 2.15's `DataNormSparsifier` on `tests/fixtures/torch_data_norm.*`
//! (made by `tools/fixtures/make_sparsify_fixture.py`), and with a plain stable-sort
//! re-implementation on random data with many ties (small inputs and the radix path).

use std::path::PathBuf;

use rand::SeedableRng;
use rand::rngs::StdRng;
use safetensors::SafeTensors;
use serde::Deserialize;
use shears_sparsify::{BlockNorm, Config, DataSparsifier, HostTensor, Mask, Norm, Sparsifier};

use super::{random_values, reference_block_mask};

/// One line of `torch_data_norm.json`.
#[derive(Deserialize)]
struct Case {
    name: String,
    tensor_key: String,
    mask_key: String,
    data_shape: Vec<usize>,
    mask_shape: Vec<usize>,
    sparsity_level: f64,
    sparse_block_shape: [usize; 2],
    zeros_per_block: usize,
    norm: String,
    tie_rule: String,
    zeros: usize,
}

fn fixtures() -> PathBuf {
    crate::fixtures("sparsify")
}

fn tensor(st: &SafeTensors, key: &str) -> HostTensor {
    let v = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    let data = v
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    HostTensor::new(v.shape().to_vec(), data)
}

fn norm(name: &str) -> Norm {
    match name {
        "L1" => Norm::L1,
        "L2" => Norm::L2,
        other => panic!("unknown norm {other}"),
    }
}

#[test]
fn block_norm_masks_equal_torch() {
    let bytes = std::fs::read(fixtures().join("torch_data_norm.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let json = std::fs::read_to_string(fixtures().join("torch_data_norm.json")).unwrap();
    let cases: Vec<Case> = serde_json::from_str(&json).unwrap();
    assert_eq!(cases.len(), 143);
    let mut failures = Vec::new();
    let mut compared = 0;
    for c in &cases {
        let data = tensor(&st, &c.tensor_key);
        assert_eq!(data.shape, c.data_shape, "{}", c.name);
        let want = tensor(&st, &c.mask_key);
        assert_eq!(want.shape, c.mask_shape, "{}", c.name);
        let config = Config {
            sparsity_level: c.sparsity_level,
            sparse_block_shape: c.sparse_block_shape,
            zeros_per_block: Some(c.zeros_per_block),
            norm: norm(&c.norm),
            threshold: 0.0,
        };
        let mut mask = Mask::ones(&data.shape);
        BlockNorm
            .update_mask("d", &data, &config, &mut mask)
            .unwrap();
        // Our mask keeps the data's shape; torch's is the squeezed one. Same flags.
        assert_eq!(mask.shape(), data.shape.as_slice());
        assert_eq!(mask.count_zeros(), c.zeros, "{}: number of zeros", c.name);

        // The same through the data sparsifier.
        let mut sp = DataSparsifier::new(BlockNorm, config).unwrap();
        sp.add_data("d", data.clone(), None, true).unwrap();
        sp.step().unwrap();
        assert_eq!(sp.mask("d").unwrap(), &mask, "{}", c.name);

        if c.tie_rule == "unstable" {
            // torch's order among > 16 equal keys is its introsort's: not reproducible.
            continue;
        }
        compared += 1;
        if mask.to_f32() != want.data {
            failures.push(c.name.clone());
        }
    }
    assert_eq!(compared, 142);
    assert!(failures.is_empty(), "masks differ from torch: {failures:?}");
}

fn check_against_reference(rng: &mut StdRng, shape: &[usize], config: &Config, ties: Option<i32>) {
    let n: usize = shape.iter().product();
    let data = HostTensor::new(shape.to_vec(), random_values(rng, n, ties));
    let dims: Vec<usize> = shape.iter().copied().filter(|&d| d != 1).collect();
    let (rows, cols) = match dims.len() {
        0 => (1, 1),
        1 => (1, dims[0]),
        _ => (dims[0], dims[1]),
    };
    let mut mask = Mask::ones(shape);
    BlockNorm
        .update_mask("d", &data, config, &mut mask)
        .unwrap();
    let want = reference_block_mask(
        &data,
        rows,
        cols,
        config.sparsity_level,
        config.sparse_block_shape,
        config.zeros(),
        config.norm,
    );
    assert_eq!(mask.bits(), want.as_slice(), "shape {shape:?}, {config:?}");
}

#[test]
fn block_norm_equals_stable_reference_on_small_random_inputs() {
    use rand::Rng;
    let mut rng = StdRng::seed_from_u64(5);
    for trial in 0..600 {
        let rows = rng.random_range(1..12usize);
        let cols = rng.random_range(1..14usize);
        let block = [rng.random_range(1..5usize), rng.random_range(1..6usize)];
        let zeros = rng.random_range(0..=block[0] * block[1]);
        let sparsity = [0.0, 0.1, 0.3, 0.5, 0.77, 1.0][trial % 6];
        let config = Config::default()
            .with_sparsity_level(sparsity)
            .with_block(block)
            .with_zeros_per_block(zeros)
            .with_norm(if trial % 2 == 0 { Norm::L1 } else { Norm::L2 });
        let ties = if trial % 3 == 0 { None } else { Some(2) };
        check_against_reference(&mut rng, &[rows, cols], &config, ties);
    }
}

#[test]
fn block_norm_equals_stable_reference_on_the_radix_path() {
    // 300 x 1000 in [1, 4] blocks: 75,000 blocks, above the small-input selection, with
    // integer data so that thousands of block means tie at the threshold.
    let mut rng = StdRng::seed_from_u64(6);
    for (block, zeros, s) in [([1, 4], 2, 0.5), ([1, 4], 4, 0.3), ([2, 3], 5, 0.61)] {
        let config = Config::default()
            .with_sparsity_level(s)
            .with_block(block)
            .with_zeros_per_block(zeros);
        check_against_reference(&mut rng, &[300, 1000], &config, Some(2));
        check_against_reference(&mut rng, &[300, 1000], &config, None);
    }
}

#[test]
fn block_norm_squeezes_like_torch() {
    // [n], [1, n], [n, 1] and [1, n, 1] all give the flags of the row [1, n].
    let mut rng = StdRng::seed_from_u64(7);
    let values = random_values(&mut rng, 11, None);
    let config = Config::default().with_zeros_per_block(2);
    let flags = |shape: Vec<usize>| {
        let data = HostTensor::new(shape.clone(), values.clone());
        let mut mask = Mask::ones(&shape);
        BlockNorm
            .update_mask("v", &data, &config, &mut mask)
            .unwrap();
        mask.bits().to_vec()
    };
    let row = flags(vec![1, 11]);
    assert_eq!(flags(vec![11]), row);
    assert_eq!(flags(vec![11, 1]), row);
    assert_eq!(flags(vec![1, 11, 1]), row);
}
