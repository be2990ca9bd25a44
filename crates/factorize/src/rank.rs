//! Ranks (a count or a fraction) and the cost model: which ranks can make a layer faster.

use crate::FactorizeError;

/// A target rank: a number of latent units, or a fraction of `min(in, out)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rank {
    /// Exactly this many latent units.
    Count(usize),
    /// `max(1, floor(f · min(in, out)))` latent units, `f` in (0, 1).
    Fraction(f64),
}

impl Rank {
    /// The number of latent units for a layer of `n_in` inputs and `n_out` outputs.
    ///
    /// Errors: rank 0, a rank `>= min(in, out)` (nothing to gain: the layer already has
    /// that rank at most), a fraction outside (0, 1).
    pub fn resolve(self, n_in: usize, n_out: usize) -> Result<usize, FactorizeError> {
        let max = n_in.min(n_out);
        let r = match self {
            Rank::Count(0) => return Err(FactorizeError::RankZero),
            Rank::Count(r) => r,
            Rank::Fraction(f) if !(f > 0.0 && f < 1.0) => {
                return Err(FactorizeError::BadFraction(f));
            }
            Rank::Fraction(f) => ((f * max as f64).floor() as usize).max(1),
        };
        if r >= max {
            return Err(FactorizeError::RankTooLarge {
                rank: r,
                max,
                n_in,
                n_out,
            });
        }
        Ok(r)
    }
}

impl std::str::FromStr for Rank {
    type Err = String;

    /// `"64"` is a count, `"0.25"` a fraction.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(n) = s.parse::<usize>() {
            return Ok(Rank::Count(n));
        }
        s.parse::<f64>()
            .map(Rank::Fraction)
            .map_err(|_| format!("`{s}` is neither a rank (integer) nor a fraction"))
    }
}

/// Multiply-adds per output position of a dense layer: `in · kh · kw · out`.
pub fn dense_cost(n_in: usize, n_out: usize, kernel: [usize; 2]) -> usize {
    n_in * kernel[0] * kernel[1] * n_out
}

/// Multiply-adds per output position of the factorized layer: `r (in · kh · kw + out)`.
pub fn factorized_cost(n_in: usize, n_out: usize, kernel: [usize; 2], rank: usize) -> usize {
    rank * (n_in * kernel[0] * kernel[1] + n_out)
}

/// The largest rank whose factorization does fewer multiply-adds than the dense layer: the
/// largest integer strictly below `fan_in · out / (fan_in + out)`, `fan_in = in · kh · kw`
/// (`[1, 1]` for a Linear). 0 when no rank helps.
pub fn max_rank_with_speedup(n_in: usize, n_out: usize, kernel: [usize; 2]) -> usize {
    let fan_in = n_in * kernel[0] * kernel[1];
    if fan_in == 0 || n_out == 0 {
        return 0;
    }
    // r (f + o) < f o  <=>  r < f o / (f + o); exact in integers.
    let (num, den) = (fan_in * n_out, fan_in + n_out);
    (num - 1) / den
}

/// Whether factorizing a layer to `rank` could make it faster (fewer multiply-adds).
pub fn could_speed_up(
    n_in: usize,
    n_out: usize,
    kernel: [usize; 2],
    rank: Rank,
) -> Result<bool, FactorizeError> {
    let r = rank.resolve(n_in, n_out)?;
    Ok(r <= max_rank_with_speedup(n_in, n_out, kernel))
}
