//! Masks for tensors, parameters and embeddings: which elements to zero, by a criterion.
//!
//! - Host core: tensors are [`HostTensor`]s (row-major `f32` with a shape), masks are
//!   [`Mask`]s (a keep flag per element). A criterion implements [`Sparsifier`], one method
//!   that fills a mask from data and a [`Config`].
//! - Built-in criteria: [`Threshold`] (`|x| < t`), [`BlockNorm`] (torch's
//!   `DataNormSparsifier`: lowest-norm blocks, then the lowest elements inside them; masks
//!   equal torch's bit for bit), [`NM`] (N:M, e.g. 2:4), [`Magnitude`] (unstructured, per
//!   tensor) and [`Wanda`] (`|W_ij| · ‖X_j‖₂` per output, statistics from [`WandaStats`]).
//! - [`DataSparsifier`] owns named tensors with per-name configs over defaults: `add_data`,
//!   `step`, `mask`, `data(name, original)`, `squash_mask`, and a serde [`State`] (torch's
//!   `BaseDataSparsifier`, seed 001).
//! - Schedulers ([`LambdaScheduler`], [`CubicScheduler`]) move the sparsity levels over
//!   training (torch's `LambdaSL`, `CubicSL`).
//! - On Burn modules ([`ModuleSparsifier`], [`compute_masks`], [`apply_masks`],
//!   [`step_and_mask`]): parameters are selected by path pattern (`encoder.layers.*.ffn.*.weight`),
//!   masked by multiplication, and kept masked after every optimizer step.
//!
//! ```
//! use shears_sparsify::{Config, DataSparsifier, HostTensor, NM};
//!
//! let mut sp = DataSparsifier::new(NM::new(2, 4).unwrap(), Config::default()).unwrap();
//! let w = HostTensor::new(vec![2, 4], vec![0.1, -3.0, 0.2, 4.0, 5.0, -0.3, 0.0, 1.0]);
//! sp.add_data("w", w, None, true).unwrap();
//! sp.step().unwrap();
//! let masked = sp.data("w", false).unwrap();
//! assert_eq!(masked.data, vec![0.0, -3.0, 0.0, 4.0, 5.0, -0.0, 0.0, 1.0]);
//! ```
//!
//! # Masks do not make a model faster by themselves
//!
//! A mask only zeroes values; the tensors keep their shapes. Unstructured and N:M masks
//! shrink nothing a dense CPU kernel sees, so CPU inference is **not** faster (N:M needs
//! sparse tensor-core kernels, e.g. NVIDIA's 2:4, to pay off; unstructured masks need a
//! sparse storage format and very high sparsity). What is saved is what compression or a
//! sparse format later makes of the zeros. To make a model smaller and faster on any
//! hardware, remove whole structures (heads, neurons, hidden dimensions) instead: that is
//! what `shears-pruners` does.

mod block;
mod config;
mod criteria;
mod data;
mod error;
mod mask;
mod module;
mod scheduler;
mod wanda;

pub use config::{Config, ConfigOverride, Norm};
pub use criteria::*;
pub use data::*;
pub use error::*;
pub use mask::*;
pub use module::*;
pub use scheduler::*;
pub use shears_spaces::{HostTensor, TensorMap};
pub use wanda::*;
