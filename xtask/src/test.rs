//! `cargo xtask test`: fetches the assets, then runs the whole suite on flex (the default
//! CPU backend) and the backend-dependent tests (the `backend::` modules of the integration
//! tests: parity, masked == pruned, training, ...) on ndarray and on wgpu.
//!
//! Tests that touch no backend (config parsing, spaces, data, masks on the host, negative
//! controls) run once, in the flex pass; the `backend::` tests run in every pass, except the
//! few in [`WGPU_CPU_ONLY`].

use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};

/// `backend::` tests the wgpu pass leaves to the two CPU passes. They check what an algorithm
/// learns or searches (the Lagrangian reaching its target, gates closing the heads that do not
/// matter, hardening to a size within one unit, the distillation map fitting), which is the
/// same on every backend once the operations agree; on wgpu that agreement is proven by the
/// parity, kernel-gradient, masked == pruned, distillation-gradient and end-to-end training
/// tests, which stay. Each of these takes minutes on the software Vulkan driver CI runs wgpu
/// on: together about 350 s of the pass's 627 s (fresh-clone CI, 2026-12-06).
pub const WGPU_CPU_ONLY: &[&str] = &[
    "gates::backend::lagrangian_drives_expected_sparsity_to_the_target",
    "pruners::backend::gated_training_closes_heads_and_pruning_removes_them",
    "pruners::backend::hardening_meets_a_size_target_within_one_unit",
    "train::distill::backend::the_distillation_layer_map_trains",
];

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Only this backend (default: all three). `--only ndarray` or `--only wgpu` runs the
    /// `backend::` tests alone.
    #[arg(long, value_enum)]
    only: Option<crate::Backend>,
    /// Extra arguments for `cargo test` (after `--`).
    #[arg(last = true)]
    rest: Vec<String>,
}

/// `test`.
pub fn main(args: Args) -> Result<()> {
    crate::fetch::ensure()?;
    let backends = match args.only {
        Some(b) => vec![b],
        None => vec![
            crate::Backend::Flex,
            crate::Backend::Ndarray,
            crate::Backend::Wgpu,
        ],
    };
    let mut times = Vec::new();
    for b in backends {
        let (name, all) = match b {
            crate::Backend::Flex => ("flex", true),
            crate::Backend::Ndarray => ("ndarray", false),
            crate::Backend::Wgpu => ("wgpu", false),
        };
        let t = Instant::now();
        let mut cmd = Command::new(env!("CARGO"));
        crate::malloc_env(&mut cmd);
        cmd.args(["test", "--workspace"]);
        if all {
            eprintln!("== cargo test --workspace on {name} (every test)");
            cmd.args(&args.rest);
        } else {
            // Integration and unit tests only (doc tests touch no backend), filtered to the
            // backend-dependent ones.
            eprintln!("== cargo test --workspace --tests on {name} (the backend:: tests)");
            cmd.arg("--tests");
            let (before, after) = split_rest(&args.rest);
            cmd.args(before).arg("--").arg("backend::").args(after);
            if b == crate::Backend::Wgpu {
                eprintln!("   (left to the CPU passes: {})", WGPU_CPU_ONLY.join(", "));
                for name in WGPU_CPU_ONLY {
                    cmd.args(["--skip", name]);
                }
            }
        }
        if b != crate::Backend::Wgpu && std::env::var_os("RUST_TEST_THREADS").is_none() {
            // One test at a time on the CPU: Burn's random generator is one global per
            // backend, so a test that seeds it and builds a model (every fixture, and
            // `train::run`) got other draws whenever another test built or loaded a model
            // at the same moment, and a learning test could then start from other weights
            // (a fresh-clone CI run failed that way, 2026-12-06). The wgpu pass keeps its
            // parallel tests: only its loose short-schedule assertions depend on weights.
            cmd.env("RUST_TEST_THREADS", "1");
        }
        let status = cmd
            .env("SHEARS_BACKEND", name)
            .env("SHEARS_ASSETS", crate::fetch::assets_dir())
            .current_dir(crate::root())
            .status()?;
        if !status.success() {
            bail!("tests failed on {name}");
        }
        times.push((name, t.elapsed().as_secs()));
    }
    for (name, s) in times {
        eprintln!("test: {name} pass {s} s");
    }
    Ok(())
}

/// `rest` split at its `--` (cargo's arguments, then the test binaries').
fn split_rest(rest: &[String]) -> (&[String], &[String]) {
    match rest.iter().position(|a| a == "--") {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A renamed test would silently run on wgpu again (and a misspelt name skip nothing):
    /// every entry names a test function in a `mod backend` of the integration tests.
    #[test]
    fn wgpu_cpu_only_names_existing_backend_tests() {
        let dir = crate::root().join("crates/tests/tests/it");
        let mut sources = String::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    sources.push_str(&std::fs::read_to_string(&p).unwrap());
                }
            }
        }
        for name in WGPU_CPU_ONLY {
            let (module, f) = name.rsplit_once("::").unwrap();
            assert!(
                module.ends_with("backend"),
                "{name} is not a backend:: test"
            );
            assert!(
                sources.contains(&format!("fn {f}()")),
                "{name}: no test function `{f}` in crates/tests/tests/it"
            );
        }
    }
}
