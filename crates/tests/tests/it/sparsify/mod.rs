//! Integration tests of `shears-sparsify`: masks identical to torch's DataNormSparsifier on
//! the committed fixture, block-norm against a plain stable-sort re-implementation, N:M and
//! magnitude properties, Wanda, the data sparsifier (replace, squash, state, errors),
//! schedulers against their formulas, and masks on Burn modules through optimizer steps.

mod criteria;
mod data;
mod fixture;
mod module;
mod scheduler;

use shears_sparsify::{HostTensor, Norm};

/// Seeded random values, integer-valued in `-spread..=spread` when `ties`, else uniform
/// in (-1, 1).
pub fn random_values(rng: &mut rand::rngs::StdRng, n: usize, ties: Option<i32>) -> Vec<f32> {
    use rand::Rng;
    (0..n)
        .map(|_| match ties {
            Some(spread) => rng.random_range(-spread..=spread) as f32,
            None => rng.random::<f32>() * 2.0 - 1.0,
        })
        .collect()
}

/// The block-norm rule written as plainly as possible (stable sorts, as
/// `notes/respec_data_norm.py`): the yardstick for the linear-time implementation.
pub fn reference_block_mask(
    data: &HostTensor,
    rows: usize,
    cols: usize,
    sparsity: f64,
    [bh, bw]: [usize; 2],
    zeros: usize,
    norm: Norm,
) -> Vec<bool> {
    let v = &data.data;
    let score = |x: f32| match norm {
        Norm::L1 => x.abs(),
        Norm::L2 => x * x,
    };
    let nbh = rows.div_ceil(bh);
    let nbw = cols.div_ceil(bw);
    let cells = |b: usize| {
        let (bi, bj) = (b / nbw, b % nbw);
        let mut out = Vec::new();
        for r in bi * bh..((bi + 1) * bh).min(rows) {
            for c in bj * bw..((bj + 1) * bw).min(cols) {
                out.push(r * cols + c);
            }
        }
        out
    };
    let means: Vec<f32> = (0..nbh * nbw)
        .map(|b| {
            let cs = cells(b);
            let mut sum = 0.0f32;
            for &i in &cs {
                sum += score(v[i]);
            }
            sum / cs.len() as f32
        })
        .collect();
    let k = ((sparsity * means.len() as f64).round_ties_even() as usize).min(means.len());
    let mut order: Vec<usize> = (0..means.len()).collect();
    order.sort_by(|&a, &b| means[a].total_cmp(&means[b]));
    let mut mask = vec![true; rows * cols];
    for &b in &order[..k] {
        let cs = cells(b);
        let mut idx: Vec<usize> = (0..cs.len()).collect();
        idx.sort_by(|&a, &b| score(v[cs[a]]).total_cmp(&score(v[cs[b]])));
        for &i in idx.iter().take(zeros) {
            mask[cs[i]] = false;
        }
    }
    mask
}
