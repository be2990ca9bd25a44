//! N:M and magnitude properties on random shapes, threshold, Wanda and its statistics.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shears_sparsify::{
    Config, HostTensor, Layout, Magnitude, Mask, NM, Sparsifier, SparsifyError, Threshold, Wanda,
    WandaStats,
};

use super::random_values;

fn mask_of<S: Sparsifier>(s: &S, data: &HostTensor, config: &Config) -> Mask {
    let mut mask = Mask::ones(&data.shape);
    s.update_mask("w", data, config, &mut mask).unwrap();
    mask
}

/// Checks that each group (flat indices) has `min(n, len)` zeros, the lowest `|x|`.
fn check_group(values: &[f32], bits: &[bool], group: &[usize], n: usize, what: &str) {
    let zeros: Vec<usize> = group.iter().copied().filter(|&i| !bits[i]).collect();
    assert_eq!(zeros.len(), n.min(group.len()), "{what}: group {group:?}");
    let max_dropped = zeros
        .iter()
        .map(|&i| values[i].abs())
        .fold(0.0f32, f32::max);
    let min_kept = group
        .iter()
        .filter(|&&i| bits[i])
        .map(|&i| values[i].abs())
        .fold(f32::INFINITY, f32::min);
    assert!(
        max_dropped <= min_kept,
        "{what}: dropped {max_dropped} > kept {min_kept}"
    );
}

#[test]
fn nm_has_n_zeros_in_every_group_of_m() {
    let mut rng = StdRng::seed_from_u64(11);
    for trial in 0..300 {
        let rows = rng.random_range(2..20usize);
        let cols = rng.random_range(2..30usize);
        let m = rng.random_range(1..9usize);
        let n = rng.random_range(0..=m);
        let ties = if trial % 4 == 0 { Some(1) } else { None };
        let data = HostTensor::new(vec![rows, cols], random_values(&mut rng, rows * cols, ties));
        let what = format!("{n}:{m} on {rows}x{cols}");

        let mask = mask_of(&NM::new(n, m).unwrap(), &data, &Config::default());
        for r in 0..rows {
            for c0 in (0..cols).step_by(m) {
                let group: Vec<usize> = (c0..(c0 + m).min(cols)).map(|c| r * cols + c).collect();
                check_group(&data.data, mask.bits(), &group, n, &what);
            }
        }

        let mask = mask_of(&NM::along_columns(n, m).unwrap(), &data, &Config::default());
        for c in 0..cols {
            for r0 in (0..rows).step_by(m) {
                let group: Vec<usize> = (r0..(r0 + m).min(rows)).map(|r| r * cols + c).collect();
                check_group(&data.data, mask.bits(), &group, n, &what);
            }
        }
    }
}

#[test]
fn nm_rejects_bad_n_and_m() {
    assert_eq!(NM::new(3, 2), Err(SparsifyError::BadNM { n: 3, m: 2 }));
    assert_eq!(NM::new(0, 0), Err(SparsifyError::BadNM { n: 0, m: 0 }));
    assert!(NM::new(2, 4).is_ok());
}

#[test]
fn magnitude_drops_the_smallest_fraction_of_any_shape() {
    let mut rng = StdRng::seed_from_u64(12);
    for s in [0.0, 0.25, 0.5, 0.9, 1.0] {
        let data = HostTensor::new(vec![3, 4, 5], random_values(&mut rng, 60, None));
        let mask = mask_of(&Magnitude, &data, &Config::default().with_sparsity_level(s));
        let k = (s * 60.0f64).round_ties_even() as usize;
        let all: Vec<usize> = (0..60).collect();
        check_group(&data.data, mask.bits(), &all, k, &format!("magnitude {s}"));
        assert!((mask.sparsity() - k as f64 / 60.0).abs() < 1e-12);
    }
}

#[test]
fn threshold_drops_small_magnitudes() {
    let data = HostTensor::new(vec![5], vec![0.1, -0.5, 0.49, -0.2, f32::NAN]);
    let mask = mask_of(&Threshold, &data, &Config::default().with_threshold(0.49));
    assert_eq!(mask.bits(), &[false, true, true, false, true]);
}

#[test]
fn wanda_weighs_magnitude_by_input_norm_per_output() {
    // Three input features with norms sqrt(10), sqrt(20) and 10.
    let mut stats = WandaStats::new();
    stats.observe(&[1.0, 2.0, 0.0, 3.0, 4.0, 0.0], 3).unwrap();
    stats.observe(&[0.0, 0.0, 10.0], 3).unwrap();
    assert_eq!(stats.rows(), 3);
    assert_eq!(stats.width(), 3);
    let norms = stats.norms();
    assert!((norms[0] - 10f32.sqrt()).abs() < 1e-6);
    assert!((norms[1] - 20f32.sqrt()).abs() < 1e-6);
    assert!((norms[2] - 10.0).abs() < 1e-6);
    assert!(matches!(
        stats.observe(&[1.0, 2.0], 2),
        Err(SparsifyError::Shape { .. })
    ));
    assert!(matches!(
        stats.observe(&[1.0, 2.0], 3),
        Err(SparsifyError::Shape { .. })
    ));

    // Burn layout [in = 3, out = 2]. Output 0: |w| = 5, 1, 0.01 -> scores 15.8, 4.5, 0.1;
    // output 1: |w| = 0.1, 1, 1 -> scores 0.32, 4.5, 10.
    let w = HostTensor::new(vec![3, 2], vec![5.0, -0.1, 1.0, 1.0, 0.01, -1.0]);
    let mut wanda = Wanda::new(Layout::InOut);
    wanda.insert("w", &stats);
    let config = Config::default().with_sparsity_level(0.5); // floor(1.5) = 1 per output
    let mask = mask_of(&wanda, &w, &config);
    assert_eq!(mask.bits(), &[true, false, true, true, false, true]);

    // The same weight in PyTorch's layout gives the transposed mask.
    let wt = HostTensor::new(vec![2, 3], vec![5.0, 1.0, 0.01, -0.1, 1.0, -1.0]);
    let mut wanda_t = Wanda::new(Layout::OutIn);
    wanda_t.insert("w", &stats);
    let mask_t = mask_of(&wanda_t, &wt, &config);
    assert_eq!(mask_t.bits(), &[true, true, false, false, true, true]);

    // Errors: no statistics for the name, statistics of the wrong width.
    let mut mask = Mask::ones(&[3, 2]);
    assert_eq!(
        Wanda::new(Layout::InOut).update_mask("missing", &w, &config, &mut mask),
        Err(SparsifyError::MissingStats("missing".into()))
    );
    let mut short = Wanda::new(Layout::InOut);
    short.insert_norms("w", vec![1.0, 2.0]);
    assert!(matches!(
        short.update_mask("w", &w, &config, &mut mask),
        Err(SparsifyError::Shape { .. })
    ));
}
