//! `cargo xtask`: `fetch` and `test` run here; every other command runs the `shears` binary
//! of this package, which cargo builds on first use (optimised, as the dev profile of this
//! package says in the workspace's Cargo.toml) and shows the progress of.
//!
//! Two binaries because the model commands instantiate burn's generics for every backend,
//! which takes minutes to compile, and the README's test command needs none of it: CI and
//! `cargo xtask test` never build the `shears` binary; `cargo xtask train-gated` builds it
//! with the dependencies the tests use (one compiled burn for both README commands).

use std::ffi::OsString;
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

const MODEL_COMMANDS: &str = "\
Model commands (the `shears` binary of this package, built on first use; \
`cargo xtask COMMAND --help` describes each):
  inspect      a model's spaces, per-layer sizes, parameters and FLOPs per token
  prune-heads  remove attention heads and write a model directory
  train-gated  gate, train, prune and fine-tune (the main job)
  eval         accuracy or perplexity and latency of a saved model
  export       write a model directory transformers loads (any pruned shape)
  generate     continue a prompt with a GPT-2 (key/value cache)
  factorize    low-rank projections calibrated on real text
  sparsify     magnitude, Wanda, block-norm and N:M masks on the projections
  prune        post-training pruning to a FLOPs target in minutes (Fisher mask search)
  bench        our runtime against the Python reference, measured in the same run";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "shears: make transformer models smaller and faster",
    after_help = MODEL_COMMANDS
)]
struct Cli {
    /// Backend for a model command (passed on to it; also `SHEARS_BACKEND`, or after the
    /// command's name).
    #[arg(long, value_enum)]
    backend: Option<xtask::Backend>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download and verify the real assets (MiniLM, GPT-2 tokenizer, Rotten Tomatoes).
    Fetch,
    /// Run the test suite on the flex, ndarray and wgpu backends.
    Test(xtask::test::Args),
    /// One table, with mean and spread, of `train-gated` runs whose configs differ only in
    /// the seed (`--set seed=43 --set name=...`).
    Summarize {
        /// Run directories, each with the `report.json` that `train-gated` wrote.
        #[arg(required = true)]
        runs: Vec<std::path::PathBuf>,
        /// Also write the table to this file (an existing file is not replaced).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    #[command(external_subcommand)]
    Model(Vec<OsString>),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.backend.is_some() && !matches!(cli.command, Cmd::Model(_)) {
        bail!(
            "--backend applies to the model commands; `cargo xtask test --only wgpu` tests one backend"
        );
    }
    match cli.command {
        Cmd::Fetch => xtask::fetch::main(),
        Cmd::Test(a) => xtask::test::main(a),
        Cmd::Summarize { runs, out } => xtask::summarize(&runs, out.as_deref()),
        Cmd::Model(args) => model_command(cli.backend, args),
    }
}

/// Builds (when needed) and runs the `shears` binary with `args`, compiled with this
/// binary's backend features; exits with its status.
fn model_command(backend: Option<xtask::Backend>, args: Vec<OsString>) -> Result<()> {
    let name = args[0].to_string_lossy();
    if !xtask::MODEL_NAMES.contains(&name.as_ref()) {
        bail!(
            "unknown command `{name}` (fetch, test, {}; `cargo xtask --help`)",
            xtask::MODEL_NAMES.join(", ")
        );
    }
    eprintln!(
        "cargo xtask: running the `shears` binary (on a fresh machine cargo first compiles it, optimised, for several minutes; its progress follows)"
    );
    // Ctrl-C reaches the child too; this process waits for it to checkpoint and exit.
    ctrlc::set_handler(|| {}).context("installing the Ctrl-C handler")?;
    let mut cmd = Command::new(env!("CARGO"));
    xtask::malloc_env(&mut cmd);
    cmd.args(["run", "--manifest-path"])
        .arg(xtask::root().join("Cargo.toml"))
        .args(["--package", "xtask", "--bin", "shears"]);
    let features: Vec<&str> = [
        ("flex", cfg!(feature = "flex")),
        ("ndarray", cfg!(feature = "ndarray")),
        ("wgpu", cfg!(feature = "wgpu")),
    ]
    .into_iter()
    .filter_map(|(f, on)| on.then_some(f))
    .collect();
    if features.len() < 3 {
        cmd.arg("--no-default-features");
        if !features.is_empty() {
            cmd.args(["--features", &features.join(",")]);
        }
    }
    cmd.arg("--");
    if let Some(b) = backend {
        let name = format!("{b:?}").to_lowercase();
        cmd.args(["--backend", &name]);
    }
    let status = cmd.args(args).status().context("running cargo")?;
    std::process::exit(status.code().unwrap_or(1));
}
