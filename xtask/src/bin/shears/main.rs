//! `cargo xtask`: shears' command line. It parses arguments and calls the crates; no model
//! logic lives here.

mod bench;
mod eval;
mod export;
mod factorize;
mod generate;
mod inspect;
mod prune;
mod prune_heads;
mod sparsify;
mod train_gated;

use anyhow::Result;
use clap::{Parser, Subcommand};
use xtask::{Backend, fetch, root};

/// Runs `$body` with `$B` bound to the chosen backend type and `$device` to its device.
#[macro_export]
macro_rules! with_backend {
    ($backend:expr, |$B:ident, $device:ident| $body:expr) => {
        match $backend {
            #[cfg(feature = "flex")]
            $crate::Backend::Flex => {
                type $B = burn::backend::Flex;
                let $device = burn::backend::flex::FlexDevice;
                $body
            }
            #[cfg(feature = "ndarray")]
            $crate::Backend::Ndarray => {
                type $B = burn::backend::NdArray<f32>;
                let $device = burn::backend::ndarray::NdArrayDevice::Cpu;
                $body
            }
            #[cfg(feature = "wgpu")]
            $crate::Backend::Wgpu => {
                type $B = burn::backend::Wgpu<f32, i32>;
                let $device = burn::backend::wgpu::WgpuDevice::default();
                $body
            }
            #[allow(unreachable_patterns)]
            other => anyhow::bail!(
                "backend {other:?} is not compiled into this xtask (cargo feature `{}`)",
                format!("{other:?}").to_lowercase()
            ),
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
        default_value = "flex",
        env = "SHEARS_BACKEND"
    )]
    backend: Backend,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a model's spaces, per-layer sizes, parameter count and FLOPs per token.
    Inspect(inspect::Args),
    /// Remove attention heads and write a model directory.
    PruneHeads(prune_heads::Args),
    /// Gate, train, prune and fine-tune a model on a dataset; write the smaller model and a
    /// report (the main job; defaults: all-MiniLM-L6-v2 on Rotten Tomatoes).
    TrainGated(train_gated::Args),
    /// Evaluate a saved model on a CSV / JSON-lines file: accuracy or perplexity, latency.
    Eval(eval::Args),
    /// Write a model directory in the Hugging Face layout (any pruned BERT, RoBERTa or GPT-2 shape;
    /// f32, f16 or bf16 weights).
    Export(export::Args),
    /// Continue a prompt with a GPT-2 (greedy or sampled; key/value cache).
    Generate(generate::Args),
    /// Factorize a model's projections to a low rank, calibrated on real text; write the
    /// model and a report (per-layer ranks and errors, size, FLOPs, latency, accuracy).
    Factorize(factorize::Args),
    /// Sparsify a model's projection weights (magnitude, Wanda, block-norm, N:M); write the
    /// model and a report (per-tensor sparsity, accuracy, latency).
    Sparsify(sparsify::Args),
    /// Prune a fine-tuned model to a FLOPs target in minutes, without retraining (Fisher
    /// mask search, Kwon et al. 2022); write the model and a report.
    Prune(prune::Args),
    /// Benchmarks: our runtime against the Python reference measured in the same run.
    Bench(bench::Args),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHEARS_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let names: Vec<String> = <Cli as clap::CommandFactory>::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .filter(|n| n != "help")
        .collect();
    assert_eq!(
        names,
        xtask::MODEL_NAMES,
        "xtask::MODEL_NAMES must list the commands of the shears binary"
    );
    let cli = Cli::parse();
    match cli.command {
        Cmd::Inspect(a) => inspect::main(cli.backend, a),
        Cmd::PruneHeads(a) => prune_heads::main(cli.backend, a),
        Cmd::TrainGated(a) => train_gated::main(cli.backend, a),
        Cmd::Prune(a) => prune::main(cli.backend, a),
        Cmd::Eval(a) => eval::main(cli.backend, a),
        Cmd::Export(a) => export::main(cli.backend, a),
        Cmd::Generate(a) => generate::main(cli.backend, a),
        Cmd::Factorize(a) => factorize::main(cli.backend, a),
        Cmd::Sparsify(a) => sparsify::main(cli.backend, a),
        Cmd::Bench(a) => bench::main(cli.backend, a),
    }
}
