//! `cargo xtask test`: fetches the assets, then runs every test on ndarray and on wgpu.

use std::process::Command;

use anyhow::{Result, bail};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Only this backend (default: both).
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
        None => vec![crate::Backend::Ndarray, crate::Backend::Wgpu],
    };
    for b in backends {
        let name = if b == crate::Backend::Wgpu {
            "wgpu"
        } else {
            "ndarray"
        };
        eprintln!("== cargo test --workspace on {name}");
        let status = Command::new(env!("CARGO"))
            .args(["test", "--workspace"])
            .args(&args.rest)
            .env("SHEARS_BACKEND", name)
            .env("SHEARS_ASSETS", crate::fetch::assets_dir())
            .current_dir(crate::root())
            .status()?;
        if !status.success() {
            bail!("tests failed on {name}");
        }
    }
    Ok(())
}
