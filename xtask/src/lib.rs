//! What both binaries of `cargo xtask` share, and the commands that need no model: `fetch`
//! and `test`. Nothing here instantiates a Burn backend, so the `xtask` binary that runs
//! them builds in seconds once the dependencies are built; the model commands live in the
//! `shears` binary (`src/bin/shears`).

pub mod fetch;
pub mod test;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The commands of the `shears` binary, which the `xtask` binary hands on (the `shears`
/// binary checks this list against its own at start).
pub const MODEL_NAMES: [&str; 10] = [
    "inspect",
    "prune-heads",
    "train-gated",
    "eval",
    "export",
    "generate",
    "factorize",
    "sparsify",
    "prune",
    "bench",
];

/// glibc's allocator settings for the processes xtask starts (the `shears` binary and the
/// tests), unless the environment already sets them. With its defaults, every buffer above
/// 32 MB (a language model's logits) is a fresh `mmap` and every free returns memory to the
/// system (large blocks unmapped, the rayon workers' arenas shrunk with `madvise`), so the
/// next step faults every page in again: the GPT-2 `--quick` run spent 103 of its 181 s in
/// the kernel (70 million page faults). One arena, no `mmap` and no trimming keep freed
/// memory for reuse: 85 s, 5 s of it in the kernel, identical results (docs/PERFORMANCE.md).
/// Other C libraries ignore these variables.
pub const MALLOC_ENV: [(&str, &str); 4] = [
    ("MALLOC_ARENA_MAX", "1"),
    ("MALLOC_MMAP_MAX_", "0"),
    ("MALLOC_TRIM_THRESHOLD_", "68719476736"),
    ("MALLOC_TOP_PAD_", "1073741824"),
];

/// Sets [`MALLOC_ENV`] on `cmd`, leaving any the environment already has.
pub fn malloc_env(cmd: &mut std::process::Command) {
    for (k, v) in MALLOC_ENV {
        if std::env::var_os(k).is_none() {
            cmd.env(k, v);
        }
    }
}

/// Which Burn backend runs the command.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Backend {
    /// CPU (burn-flex: the fastest CPU backend measured here, see docs/PERFORMANCE.md).
    Flex,
    /// CPU (burn-ndarray).
    Ndarray,
    /// GPU through wgpu (Vulkan, Metal, DX12; software Vulkan works too).
    Wgpu,
}

/// `summarize`: prints the table of `runs` ([`shears_train::summary::summarize`]) and writes
/// it to `out` when given, refusing to replace an existing file (the write goes through a
/// temporary file in the same directory, so a failure leaves nothing half-written).
pub fn summarize(runs: &[PathBuf], out: Option<&std::path::Path>) -> Result<()> {
    let reports = shears_train::summary::read_reports(runs)?;
    let table = shears_train::summary::summarize(&reports)?;
    print!("{table}");
    if let Some(out) = out {
        if out.exists() {
            bail!("`{}` exists: not replacing it", out.display());
        }
        let dir = out
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("creating a file in `{}`", dir.display()))?;
        std::io::Write::write_all(&mut tmp, table.as_bytes())?;
        tmp.persist_noclobber(out)
            .with_context(|| format!("writing `{}`", out.display()))?;
        eprintln!("written: {}", out.display());
    }
    Ok(())
}

/// Parses `0:1,2;3:0`.
pub fn parse_heads(spec: &str) -> Result<BTreeMap<usize, Vec<usize>>> {
    let mut out: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (layer, heads) = part
            .split_once(':')
            .with_context(|| format!("`{part}` is not LAYER:H,H (in --heads `{spec}`)"))?;
        let layer: usize = layer
            .trim()
            .parse()
            .with_context(|| format!("layer `{layer}` is not a number"))?;
        for h in heads.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let h: usize = h
                .parse()
                .with_context(|| format!("head `{h}` of layer {layer} is not a number"))?;
            let list = out.entry(layer).or_default();
            if list.contains(&h) {
                bail!("head {h} of layer {layer} is listed twice");
            }
            list.push(h);
        }
    }
    if out.is_empty() {
        bail!("--heads `{spec}` names no heads");
    }
    Ok(out)
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
        let h = super::parse_heads("0:1,2; 3:0").unwrap();
        assert_eq!(h, BTreeMap::from([(0, vec![1, 2]), (3, vec![0])]));
        for bad in ["", "0", "x:1", "0:y", "0:1,1"] {
            assert!(super::parse_heads(bad).is_err(), "`{bad}` was accepted");
        }
    }
}
