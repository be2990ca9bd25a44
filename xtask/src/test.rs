//! `cargo xtask test`: fetches the assets, then runs the whole suite on flex (the default
//! CPU backend) and the backend-dependent tests (the `backend::` modules of the integration
//! tests: parity, masked == pruned, training, ...) on ndarray and on wgpu.
//!
//! Tests that touch no backend (config parsing, spaces, data, masks on the host, negative
//! controls) run once, in the flex pass; the `backend::` tests run in every pass.

use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};

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
