//! `cargo xtask`: shears' command line. It parses arguments and calls the crates; no model
//! logic lives here.

mod bench;
mod eval;
mod factorize;
mod fetch;
mod inspect;
mod prune_heads;
mod sparsify;
mod test;
mod train_gated;

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
    /// Gate, train, prune and fine-tune a model on a dataset; write the smaller model and a
    /// report (the main job; defaults: all-MiniLM-L6-v2 on Rotten Tomatoes).
    TrainGated(train_gated::Args),
    /// Evaluate a saved model on a CSV / JSON-lines file: accuracy or perplexity, latency.
    Eval(eval::Args),
    /// Factorize a model's projections to a low rank, calibrated on real text; write the
    /// model and a report (per-layer ranks and errors, size, FLOPs, latency, accuracy).
    Factorize(factorize::Args),
    /// Sparsify a model's projection weights (magnitude, Wanda, block-norm, N:M); write the
    /// model and a report (per-tensor sparsity, accuracy, latency).
    Sparsify(sparsify::Args),
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
        Cmd::TrainGated(a) => train_gated::main(cli.backend, a),
        Cmd::Eval(a) => eval::main(cli.backend, a),
        Cmd::Factorize(a) => factorize::main(cli.backend, a),
        Cmd::Sparsify(a) => sparsify::main(cli.backend, a),
        Cmd::Bench(a) => bench::main(cli.backend, a),
        Cmd::Test(a) => test::main(a),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    /// The layering of the design: `spaces` <- `layers` (and later `gates`, `factorize`,
    /// `sparsify`) <- `pruners` <- `train` <- `xtask`, `examples`. `layers` must never learn about
    /// gates, and nothing below `pruners` may depend on it.
    #[test]
    fn dependency_direction() {
        let out = std::process::Command::new(env!("CARGO"))
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
            ])
            .current_dir(super::root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let deps: BTreeMap<String, Vec<String>> = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let name = p["name"].as_str().unwrap().to_string();
                let ds = p["dependencies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|d| d["kind"].is_null())
                    .map(|d| d["name"].as_str().unwrap().to_string())
                    .filter(|d| d.starts_with("shears-"))
                    .collect();
                (name, ds)
            })
            .collect();
        let allowed: &[(&str, &[&str])] = &[
            ("shears-spaces", &[]),
            ("shears-layers", &["shears-spaces"]),
            ("shears-gates", &["shears-spaces"]),
            ("shears-factorize", &["shears-spaces"]),
            ("shears-sparsify", &["shears-spaces"]),
            (
                "shears-pruners",
                &[
                    "shears-spaces",
                    "shears-layers",
                    "shears-gates",
                    "shears-factorize",
                    "shears-sparsify",
                ],
            ),
            (
                "shears-train",
                &[
                    "shears-spaces",
                    "shears-layers",
                    "shears-gates",
                    "shears-factorize",
                    "shears-sparsify",
                    "shears-pruners",
                ],
            ),
        ];
        for (krate, may) in allowed {
            if let Some(actual) = deps.get(*krate) {
                for d in actual {
                    assert!(may.contains(&d.as_str()), "{krate} must not depend on {d}");
                }
            }
        }
        assert!(deps.contains_key("shears-spaces") && deps.contains_key("shears-layers"));
    }

    #[test]
    fn parse_heads_spec() {
        let h = super::prune_heads::parse_heads("0:1,2; 3:0").unwrap();
        assert_eq!(h, BTreeMap::from([(0, vec![1, 2]), (3, vec![0])]));
        for bad in ["", "0", "x:1", "0:y", "0:1,1"] {
            assert!(
                super::prune_heads::parse_heads(bad).is_err(),
                "`{bad}` was accepted"
            );
        }
    }
}
