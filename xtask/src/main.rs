//! `cargo xtask`: shears' command line. It parses arguments and calls the crates; no model
//! logic lives here.

mod bench;
mod fetch;
mod inspect;
mod prune_heads;
mod test;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Which Burn backend runs the command.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Backend {
    /// CPU (burn-ndarray).
    Ndarray,
    /// GPU through wgpu (Vulkan, Metal, DX12; software Vulkan works too).
    Wgpu,
}

/// Runs `$body` with `$B` bound to the chosen backend type and `$device` to its device.
#[macro_export]
macro_rules! with_backend {
    ($backend:expr, |$B:ident, $device:ident| $body:expr) => {
        match $backend {
            $crate::Backend::Ndarray => {
                type $B = burn::backend::NdArray<f32>;
                let $device = burn::backend::ndarray::NdArrayDevice::Cpu;
                $body
            }
            $crate::Backend::Wgpu => {
                type $B = burn::backend::Wgpu<f32, i32>;
                let $device = burn::backend::wgpu::WgpuDevice::default();
                $body
            }
        }
    };
}

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "shears: make transformer models smaller and faster"
)]
struct Cli {
    /// Backend to run on.
    #[arg(
        long,
        value_enum,
        global = true,
        default_value = "ndarray",
        env = "SHEARS_BACKEND"
    )]
    backend: Backend,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download and verify the real assets (MiniLM, GPT-2 tokenizer, Rotten Tomatoes).
    Fetch,
    /// Print a model's spaces, per-layer sizes, parameter count and FLOPs per token.
    Inspect(inspect::Args),
    /// Remove attention heads and write a model directory.
    PruneHeads(prune_heads::Args),
    /// Benchmarks (release build).
    Bench(bench::Args),
    /// Run the test suite on the ndarray and the wgpu backends.
    Test(test::Args),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHEARS_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Fetch => fetch::main(),
        Cmd::Inspect(a) => inspect::main(cli.backend, a),
        Cmd::PruneHeads(a) => prune_heads::main(cli.backend, a),
        Cmd::Bench(a) => bench::main(cli.backend, a),
        Cmd::Test(a) => test::main(a),
    }
}
