//! `cargo xtask train-gated [--config FILE] [--quick] [--resume] [--set k=v]... [--out DIR] [--force]`:
//! the whole gated-pruning experiment (see `shears_train::run`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use burn::backend::Autodiff;
use shears_layers::save;
use shears_train::{ConfigSources, Experiment, Outcome, RunOptions};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Experiment config (TOML).
    #[arg(long, default_value = "configs/minilm-rotten-tomatoes.toml")]
    config: PathBuf,
    /// Apply the config's `[quick]` table: a smoke run of a few minutes.
    #[arg(long)]
    quick: bool,
    /// Continue an interrupted run from its checkpoint.
    #[arg(long)]
    resume: bool,
    /// Override a config key: `--set gated.target_sparsity=0.6` (repeatable; wins over
    /// `SHEARS_<SECTION>__<KEY>` environment variables, which win over the file).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Output directory (default `runs/<name>`, or `runs/<name>-quick`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Stop after this many training steps, keeping the checkpoint (`--resume` continues).
    #[arg(long)]
    stop_after: Option<usize>,
    /// Reuse the dense phase (teacher and baseline) of this finished run instead of training
    /// it: for runs that differ from it only after the dense phase (another target, gates or
    /// distillation). Refused, naming the key, when the run trained its dense phase otherwise.
    #[arg(long, value_name = "RUN")]
    dense_from: Option<PathBuf>,
    /// Replace an existing, non-empty output directory (only once the new one is complete);
    /// without it such an output is refused before any work.
    #[arg(long)]
    force: bool,
}

/// `path` as given if it exists, else relative to the workspace root.
pub fn locate(path: &Path) -> PathBuf {
    if path.is_relative() && !path.exists() {
        crate::root().join(path)
    } else {
        path.to_path_buf()
    }
}

/// `train-gated`.
pub fn main(backend: crate::Backend, args: Args) -> Result<()> {
    let file = locate(&args.config);
    let mut exp = Experiment::load(&ConfigSources {
        file: file.clone(),
        quick: args.quick,
        env: std::env::vars().collect(),
        set: args.set.clone(),
    })?;
    let uses_assets = [
        Some(&exp.data.path),
        exp.model.path.as_ref(),
        exp.model.tokenizer.as_ref(),
    ]
    .into_iter()
    .flatten()
    .any(|p| p.starts_with("@assets"));
    if uses_assets {
        crate::fetch::ensure()?;
    }
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    exp.resolve_paths(&base, &crate::fetch::assets_dir());
    let out = args.out.clone().unwrap_or_else(|| {
        let name = if args.quick {
            format!("{}-quick", exp.name)
        } else {
            exp.name.clone()
        };
        crate::root().join("runs").join(name)
    });
    // The first Ctrl-C stops at the next step with a checkpoint; a second one kills.
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: saving a checkpoint (Ctrl-C again to quit at once)");
    })
    .context("installing the Ctrl-C handler")?;
    let opts = RunOptions {
        resume: args.resume,
        progress: true,
        stop_after: args.stop_after,
        backend: format!("{backend:?}").to_lowercase(),
        interrupt: Some(interrupt),
        fail_after_writes: None,
        dense_from: args.dense_from.as_ref().map(|p| locate(p)),
        existing: save::Existing::from_force(args.force),
    };
    eprintln!(
        "train-gated: `{}`{} on {:?} -> {}",
        exp.name,
        if args.quick { " (quick)" } else { "" },
        backend,
        out.display()
    );
    let outcome = crate::with_backend!(backend, |B, device| {
        shears_train::run::<Autodiff<B>>(&exp, &out, &opts, &device)
            .with_context(|| format!("experiment `{}`", file.display()))?
    });
    match outcome {
        Outcome::Done(report) => {
            println!("{}", shears_train::report::markdown(&report));
            println!("written: {}", out.display());
        }
        Outcome::Stopped { phase, step } => {
            println!(
                "stopped in phase `{phase}` at step {step}; continue with the same command and --resume"
            );
        }
    }
    Ok(())
}
