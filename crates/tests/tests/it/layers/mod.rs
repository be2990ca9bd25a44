//! Integration tests of `shears-layers`. Every test runs on the backend named by
//! `SHEARS_BACKEND` (`ndarray`, the default, or `wgpu`); `cargo xtask test` runs both.

mod common;
mod errors;
mod masked_pruned;
mod parity;
mod save_load;
mod spaces;
