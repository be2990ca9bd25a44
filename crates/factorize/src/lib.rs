//! Low-rank factorization of `Linear` and `Conv2d` layers that keeps what the layer learned.
//!
//! A dense layer `y = x W + b` (`W: [in, out]`) is replaced by two thinner ones,
//! `y = (x A) B + b'` with `A: [in, r]`, `B: [r, out]`, which costs `r (in + out)` instead of
//! `in · out` multiply-adds per row. Composer's factorization (seed 002) builds the two layers
//! from fresh random weights; here they start from the trained weights and are fitted to the
//! layer's outputs on real inputs.
//!
//! # The problem
//!
//! With calibration inputs `X: [n, in]` (rows are samples), mean `μ` and centred scatter
//! `G = Σ (x - μ)(x - μ)ᵀ`, the output error of the factorized layer is
//!
//! `E(A, B, b') = ‖X (A B) + 1 b'ᵀ - (X W + 1 bᵀ)‖²_F`.
//!
//! For any `A B`, the best bias is `b' = b + μᵀ (W - A B)` (it removes the mean error), and
//! then `E = tr(Dᵀ G D)` with `D = W - A B`. Everything below works from `(n, μ, G)`
//! ([`Calibration`]), which is accumulated batch by batch, so calibration data never has to
//! be held in memory, and the layer's outputs never have to be formed.
//!
//! # Solutions ([`Method`])
//!
//! - **Weight SVD** (data-free): the truncated SVD `W ≈ U_r Σ_r V_rᵀ`, split as
//!   `A = U_r Σ_r^½`, `B = Σ_r^½ V_rᵀ`; best in `‖W - A B‖_F`, blind to which inputs occur.
//! - **Activation-aware** (ASVD, Yuan et al. 2023, <https://arxiv.org/abs/2312.05821>): scale
//!   input channel `j` by `s_j = (mean |x_j|)^α`, take the truncated SVD of `diag(s) W`, undo
//!   the scaling in `A`. Channels with large activations are approximated better.
//! - **Data-aware** (the default): minimise `E` itself.
//!   - *Whitened start* (SVD-LLM, Wang et al. 2024, <https://arxiv.org/abs/2403.07378>, here
//!     with centring and the bias update): with `G = S Sᵀ` (`S = V Λ^½` from the
//!     eigendecomposition of `G`), `E = ‖Sᵀ W - Sᵀ A B‖²_F`, so the truncated SVD of
//!     `M = Sᵀ W = Ũ Σ̃ Ṽᵀ` gives the optimum (Eckart–Young): `A = S⁻ᵀ Ũ_r Σ̃_r^½`,
//!     `B = Σ̃_r^½ Ṽ_rᵀ`. This is reduced-rank regression; its error is `Σ_{i>r} σ̃_i²`.
//!   - *Spectral start* (Composer's): the weight SVD above.
//!   - *Refinement* (Composer's alternating least squares), `n_iters` times: the best `B` for
//!     the current `A`, `B = (Aᵀ G A)⁻¹ Aᵀ G W`, then the best `A` for that `B`,
//!     `A = W Bᵀ (B Bᵀ)⁻¹` (the minimiser of `E` over `A` when `G` is invertible). Each step
//!     minimises `E` over one factor, so `E` never rises; from the whitened start there is
//!     nothing left to gain beyond the ridge below, from the spectral start it closes most
//!     of the gap.
//!
//!   Eigenvalues of `G` below `1e-10 · λ_max` (directions the calibration data never
//!   exercises) are raised to that floor, which keeps `S` invertible.
//!
//! The normalised error reported ([`LowRankSolution::nmse`]) is `mean((Y - Ŷ)²) / var(Y)`
//! over all `n · out` outputs (unbiased variance, as `torch.var`), computed in closed form.
//!
//! # Conv2d
//!
//! A `k × k` convolution from `C` to `O` channels is a matrix `W: [C k k, O]` applied to
//! every `C k k` patch of its input (im2col), so the same solutions apply to the patches: the
//! factorized layer is a `k × k` convolution to `r` channels (with the original stride,
//! padding and dilation) followed by a `1 × 1` convolution to `O` with the bias. Grouped
//! convolutions are refused.
//!
//! # Cost model
//!
//! Dense: `fan_in · out` multiply-adds per output position (`fan_in = in · k · k`);
//! factorized: `r (fan_in + out)`. Factorizing can only help while
//! `r < fan_in · out / (fan_in + out)` ([`max_rank_with_speedup`]).

mod calib;
mod conv;
mod error;
mod linalg;
mod linear;
mod rank;
mod solve;

pub use calib::*;
pub use conv::*;
pub use error::*;
pub use linalg::solve_symmetric;
pub use linear::*;
pub use rank::*;
pub use solve::*;
