//! The workspace's integration tests, one module per crate, in one binary: every test binary
//! links burn and instantiates its generics for ndarray, wgpu and autodiff, which costs two
//! to three minutes of compilation each on two cores (see docs/ARCHITECTURE.md, "Tests and
//! CI"). Backend-dependent tests live in `backend` modules; `cargo xtask test` runs all tests
//! on ndarray and the `backend::` ones on wgpu.

use std::path::PathBuf;

/// Runs `$f::<B>(&device)` on the backend named by `SHEARS_BACKEND`.
macro_rules! on_backend {
    ($f:ident) => {
        match std::env::var("SHEARS_BACKEND").as_deref() {
            Ok("flex") | Err(_) => $f::<burn::backend::Flex>(&Default::default()),
            Ok("ndarray") => $f::<burn::backend::NdArray<f32>>(&Default::default()),
            Ok("wgpu") => $f::<burn::backend::Wgpu<f32, i32>>(&Default::default()),
            Ok(other) => panic!("SHEARS_BACKEND=`{other}` is not flex, ndarray or wgpu"),
        }
    };
}

mod factorize;
mod gates;
mod layers;
mod pruners;
mod spaces;
mod sparsify;
mod train;

/// The fetched assets (`SHEARS_ASSETS`, else `assets/` at the workspace root).
fn assets() -> PathBuf {
    std::env::var_os("SHEARS_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets"))
}

/// `crates/<krate>/tests/fixtures`: committed fixtures stay with the crate they test, next to
/// nothing else (the scripts that made them are in `tools/fixtures`).
fn fixtures(krate: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("tests/fixtures")
}

/// `m` with every parameter initialised now. Burn initialises parameters lazily, and clones
/// of a module whose parameters are not yet initialised initialise apart, with different
/// values: clone only materialised modules when the clones must be equal.
fn materialized<B: burn::prelude::Backend, M: burn::module::Module<B>>(m: M) -> M {
    struct Init;
    impl<B: burn::prelude::Backend> burn::module::ModuleMapper<B> for Init {
        fn map_float<const D: usize>(
            &mut self,
            p: burn::module::Param<burn::prelude::Tensor<B, D>>,
        ) -> burn::module::Param<burn::prelude::Tensor<B, D>> {
            let _ = p.val();
            p
        }
    }
    m.map(&mut Init)
}
