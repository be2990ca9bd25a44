//! The block-norm mask of torch's `DataNormSparsifier.update_mask`, bit-exact and in linear
//! time (a radix selection instead of torch's full sort).
//!
//! For an `[H, W]` score matrix (`|x|` or `x²`) and blocks `[bh, bw]`:
//!
//! 1. Blocks are anchored at `(0, 0)`; the grid has `⌈H/bh⌉ × ⌈W/bw⌉` blocks, numbered
//!    row-major. Edge blocks may be partial (torch pads at the bottom and right only).
//! 2. A block's score is the **mean** of its in-bounds scores (torch's `avg_pool2d` with
//!    `ceil_mode=True`: the divisor of a partial block is its number of in-bounds elements),
//!    summed in f32 in row-major order inside the block, then divided.
//! 3. `k = round_half_even(s · n_blocks)` blocks with the lowest scores are chosen; among
//!    equal scores the lower block number goes first (torch's sort is stable for the ≤ 16
//!    element sorts its fixture covers; beyond that its order is introsort's and undefined).
//! 4. In a chosen block, the `z` lowest in-bounds elements are zeroed, ties to the lower
//!    row-major in-block position; out-of-bounds positions of a partial block sort after
//!    every real value (torch pads with NaN), so a partial block loses `min(z, in-bounds)`
//!    elements. `z = bh · bw` zeroes the whole (in-bounds) block.
//!
//! Float order: `-0.0 == +0.0`, NaN sorts after every number (torch's NaN-last sort).

use std::cmp::Ordering;

use crate::Norm;

/// What [`block_mask`] computes.
pub(crate) struct BlockSpec {
    /// Fraction of blocks to choose.
    pub sparsity: f64,
    /// `[bh, bw]`, both at least 1.
    pub block: [usize; 2],
    /// Zeros per chosen block, at most `bh · bw`.
    pub zeros: usize,
    /// Element score.
    pub norm: Norm,
}

/// A `u32` whose unsigned order is torch's ascending float order: `-0.0` equals `+0.0`,
/// every NaN is above `+inf`.
#[inline]
pub(crate) fn order_key(x: f32) -> u32 {
    if x.is_nan() {
        return u32::MAX;
    }
    let x = if x == 0.0 { 0.0f32 } else { x };
    let b = x.to_bits();
    if (b & 0x8000_0000) != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// `round_half_even(fraction · n)`, clamped to `[0, n]` (Python's `round` on the product).
pub(crate) fn n_select(fraction: f64, n: usize) -> usize {
    let k = (fraction * n as f64).round_ties_even();
    if k.is_nan() || k <= 0.0 {
        0
    } else if k >= n as f64 {
        n
    } else {
        k as usize
    }
}

/// The `[rows, cols]` torch works on: every size-1 axis removed (`squeeze()`), a vector as
/// one row, a single element as `[1, 1]`. `None` when more than two axes remain.
pub(crate) fn squeezed_matrix(shape: &[usize]) -> Option<(usize, usize)> {
    let mut dims = shape.iter().copied().filter(|&d| d != 1);
    match (dims.next(), dims.next(), dims.next()) {
        (None, _, _) => Some((1, 1)),
        (Some(n), None, _) => Some((1, n)),
        (Some(r), Some(c), None) => Some((r, c)),
        _ => None,
    }
}

/// Writes the block-norm mask of the row-major `[rows, cols]` matrix `values` into `mask`
/// (every flag is overwritten).
pub(crate) fn block_mask(
    values: &[f32],
    rows: usize,
    cols: usize,
    spec: &BlockSpec,
    mask: &mut [bool],
) {
    debug_assert_eq!(values.len(), rows * cols);
    debug_assert_eq!(mask.len(), rows * cols);
    match spec.norm {
        Norm::L1 => block_mask_with(values, rows, cols, spec, mask, |x: f32| x.abs()),
        Norm::L2 => block_mask_with(values, rows, cols, spec, mask, |x: f32| x * x),
    }
}

fn block_mask_with<F: Fn(f32) -> f32 + Copy>(
    values: &[f32],
    rows: usize,
    cols: usize,
    spec: &BlockSpec,
    mask: &mut [bool],
    score: F,
) {
    mask.fill(true);
    let [bh, bw] = spec.block;
    if rows == 0 || cols == 0 || spec.zeros == 0 {
        return;
    }
    let nbh = rows.div_ceil(bh);
    let nbw = cols.div_ceil(bw);
    let nb = nbh * nbw;
    let k = n_select(spec.sparsity, nb);
    if k == 0 {
        return;
    }
    let keys = block_keys(values, rows, cols, spec.block, score);
    // Chosen: every key below `limit`, and the first `ties_left` keys equal to it in block
    // order (this is exactly the first k of a stable ascending sort).
    let (limit, mut ties_left) = if k >= nb {
        (u32::MAX, usize::MAX)
    } else {
        let (t, less) = kth_key(&keys, k);
        (t, k - less)
    };
    let blocks = Blocks {
        values,
        cols,
        zeros: spec.zeros,
        score,
    };
    let mut scratch = Vec::new();
    for bi in 0..nbh {
        let r0 = bi * bh;
        let r1 = (r0 + bh).min(rows);
        for bj in 0..nbw {
            let chosen = match keys[bi * nbw + bj].cmp(&limit) {
                Ordering::Less => true,
                Ordering::Equal if ties_left > 0 => {
                    ties_left -= 1;
                    true
                }
                _ => false,
            };
            if chosen {
                let c0 = bj * bw;
                let c1 = (c0 + bw).min(cols);
                blocks.zero(r0, r1, c0, c1, mask, &mut scratch);
            }
        }
    }
}

/// Order keys of the block means, row-major over the block grid.
fn block_keys<F: Fn(f32) -> f32>(
    values: &[f32],
    rows: usize,
    cols: usize,
    [bh, bw]: [usize; 2],
    score: F,
) -> Vec<u32> {
    let nbh = rows.div_ceil(bh);
    let nbw = cols.div_ceil(bw);
    let mut keys = Vec::with_capacity(nbh * nbw);
    let mut sums = vec![0.0f32; nbw];
    for bi in 0..nbh {
        let r0 = bi * bh;
        let r1 = (r0 + bh).min(rows);
        sums.fill(0.0);
        // Row by row into per-block sums: each block is summed in row-major order inside
        // the block, as avg_pool2d does.
        for r in r0..r1 {
            let row = &values[r * cols..(r + 1) * cols];
            for (sum, chunk) in sums.iter_mut().zip(row.chunks(bw)) {
                let mut s = *sum;
                for &x in chunk {
                    s += score(x);
                }
                *sum = s;
            }
        }
        let h = r1 - r0;
        for (bj, &s) in sums.iter().enumerate() {
            let w = (cols - bj * bw).min(bw);
            keys.push(order_key(s / (h * w) as f32));
        }
    }
    keys
}

/// The key of rank `k - 1` (0-based) in ascending order and the number of keys below it,
/// for `1 <= k < keys.len()`.
fn kth_key(keys: &[u32], k: usize) -> (u32, usize) {
    let rank = k - 1;
    if keys.len() <= 1 << 16 {
        let mut v = keys.to_vec();
        let (below, &mut t, _) = v.select_nth_unstable(rank);
        let less = below.iter().filter(|&&x| x < t).count();
        return (t, less);
    }
    // Two 16-bit histogram passes: linear, no copy, no permutation.
    let mut hist = vec![0usize; 1 << 16];
    for &x in keys {
        hist[(x >> 16) as usize] += 1;
    }
    let (hi, below_hi) = bucket_of(&hist, rank);
    hist.fill(0);
    for &x in keys {
        if (x >> 16) as usize == hi {
            hist[(x & 0xFFFF) as usize] += 1;
        }
    }
    let (lo, below_lo) = bucket_of(&hist, rank - below_hi);
    (((hi << 16) | lo) as u32, below_hi + below_lo)
}

/// The bucket holding the element of 0-based `rank`, and the count in lower buckets.
fn bucket_of(hist: &[usize], rank: usize) -> (usize, usize) {
    let mut below = 0;
    for (b, &c) in hist.iter().enumerate() {
        if below + c > rank {
            return (b, below);
        }
        below += c;
    }
    unreachable!("rank {rank} is beyond the histogram total {below}")
}

/// The in-block step over one matrix.
struct Blocks<'a, F> {
    values: &'a [f32],
    cols: usize,
    zeros: usize,
    score: F,
}

impl<F: Fn(f32) -> f32> Blocks<'_, F> {
    /// Zeroes the `zeros` lowest in-bounds elements of the block `[r0, r1) × [c0, c1)`.
    fn zero(
        &self,
        r0: usize,
        r1: usize,
        c0: usize,
        c1: usize,
        mask: &mut [bool],
        scratch: &mut Vec<u64>,
    ) {
        let cols = self.cols;
        let width = c1 - c0;
        let valid = (r1 - r0) * width;
        if self.zeros >= valid {
            for r in r0..r1 {
                mask[r * cols + c0..r * cols + c1].fill(false);
            }
            return;
        }
        let at = |i: usize| (r0 + i / width) * cols + c0 + i % width;
        if valid <= 16 {
            // Rank by (key, position): no sort, no allocation.
            let mut keys = [0u32; 16];
            let mut n = 0;
            for r in r0..r1 {
                for &x in &self.values[r * cols + c0..r * cols + c1] {
                    keys[n] = order_key((self.score)(x));
                    n += 1;
                }
            }
            for i in 0..n {
                let ki = keys[i];
                let rank = (0..n)
                    .filter(|&j| keys[j] < ki || (keys[j] == ki && j < i))
                    .count();
                if rank < self.zeros {
                    mask[at(i)] = false;
                }
            }
        } else {
            scratch.clear();
            for r in r0..r1 {
                for &x in &self.values[r * cols + c0..r * cols + c1] {
                    let i = scratch.len() as u64;
                    scratch.push(((order_key((self.score)(x)) as u64) << 32) | i);
                }
            }
            // `zeros` is in 1..valid here; packed (key, position) values are distinct.
            let _ = scratch.select_nth_unstable(self.zeros - 1);
            for &e in &scratch[..self.zeros] {
                mask[at((e & 0xFFFF_FFFF) as usize)] = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_key_is_torch_order() {
        let xs = [
            f32::NEG_INFINITY,
            -2.0,
            -0.5,
            0.0,
            1e-30,
            0.5,
            3.0,
            f32::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(order_key(w[0]) < order_key(w[1]), "{w:?}");
        }
        assert_eq!(order_key(-0.0), order_key(0.0));
        assert!(order_key(f32::NAN) > order_key(f32::INFINITY));
    }

    #[test]
    fn n_select_rounds_half_to_even() {
        for (s, n, k) in [
            (0.5, 21, 10),
            (0.5, 9, 4),
            (0.5, 3, 2),
            (0.5, 7, 4),
            (0.25, 10, 2),
            (0.35, 10, 4),
            (0.15, 10, 2),
            (0.3, 10, 3),
            (1.0, 5, 5),
            (0.0, 5, 0),
        ] {
            assert_eq!(n_select(s, n), k, "{s} x {n}");
        }
    }

    #[test]
    fn radix_and_select_agree() {
        // Keys with many ties, above the small-input threshold.
        let keys: Vec<u32> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 20) | ((i % 3) << 30))
            .collect();
        for k in [1, 2, 17, 35_000, 69_999] {
            let (t, less) = kth_key(&keys, k);
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            assert_eq!(t, sorted[k - 1]);
            assert_eq!(less, sorted.iter().filter(|&&x| x < t).count());
        }
    }
}
