//! Integration tests of `shears-layers`. Every test runs on the backend named by
//! `SHEARS_BACKEND` (`flex`, the default, `ndarray` or `wgpu`); `cargo xtask test` runs all three.

pub(crate) mod common;
mod dropout;
mod errors;
mod fuzz;
mod generate;
mod init;
mod kernels;
mod masked_pruned;
mod names;
mod parity;
mod roberta;
mod save_load;
mod spaces;
