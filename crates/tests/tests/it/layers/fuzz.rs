//! Loaders survive any bytes (issue 14): mutated and truncated `config.json`, `shears.json`
//! and safetensors headers and bodies, built from tiny seed models in each format shears
//! reads (a Hugging Face GPT-2, our own format, a `shears_bert` export, a head-pruned
//! Hugging Face RoBERTa classifier and its `shears_bert` export), give a typed error
//! or a valid model, never a panic, an abort or an allocation sized by an untrusted header
//! (which would abort the test process). The generator is seeded: a failure names its case,
//! and the case replays. 20,000 cases take about 10 s. The first run found a panic: a
//! `d_model` of 0 reached Burn's initialisers (now refused before allocation).

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use rand::{Rng, SeedableRng, rngs::StdRng};
use shears_layers::{BertModel, SpaceName};

use super::common::*;

type B = NdArray<f32>;

const CASES: usize = 20_000;

/// A seed model directory: its files' bytes.
struct Seed {
    name: &'static str,
    files: Vec<(String, Vec<u8>)>,
}

fn seed_dir(name: &'static str, dir: &Path) -> Seed {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".json") || n.ends_with(".safetensors")
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    Seed { name, files }
}

/// Numbers that break sizes: zero, one, odd, just past u32, u64's top, past u64, negative,
/// huge floats, a fraction.
const NUMBERS: [&str; 10] = [
    "0",
    "1",
    "7",
    "4294967296",
    "18446744073709551615",
    "99999999999999999999",
    "-1",
    "1e300",
    "3.5",
    "1000000000",
];

/// Replaces one run of digits in `text` with a number from [`NUMBERS`].
fn replace_number(text: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let runs: Vec<(usize, usize)> = {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < text.len() {
            if text[i].is_ascii_digit() {
                let start = i;
                while i < text.len() && text[i].is_ascii_digit() {
                    i += 1;
                }
                runs.push((start, i));
            } else {
                i += 1;
            }
        }
        runs
    };
    if runs.is_empty() {
        return text.to_vec();
    }
    let (a, b) = runs[rng.random_range(0..runs.len())];
    let n = NUMBERS[rng.random_range(0..NUMBERS.len())];
    [&text[..a], n.as_bytes(), &text[b..]].concat()
}

/// One mutation of a file's bytes. Safetensors files are mutated mostly in their JSON
/// header (rebuilt with its new length, so the structure stays valid and the numbers lie).
fn mutate(name: &str, bytes: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let safetensors = name.ends_with(".safetensors") && bytes.len() >= 8;
    let header_len = if safetensors {
        (u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize).min(bytes.len() - 8)
    } else {
        0
    };
    match rng.random_range(0..6) {
        // Flip bytes (in a safetensors file, mostly in the header).
        0 => {
            for _ in 0..rng.random_range(1..=4) {
                let i = if safetensors && rng.random_bool(0.8) {
                    rng.random_range(0..8 + header_len)
                } else {
                    rng.random_range(0..out.len())
                };
                out[i] ^= 1 << rng.random_range(0..8);
            }
        }
        // Truncate.
        1 => out.truncate(rng.random_range(0..out.len())),
        // A number replaced.
        2 | 3 if safetensors => {
            let header = replace_number(&bytes[8..8 + header_len], rng);
            out = [
                &(header.len() as u64).to_le_bytes()[..],
                &header,
                &bytes[8 + header_len..],
            ]
            .concat();
        }
        2 | 3 => out = replace_number(bytes, rng),
        // A random header length.
        4 if safetensors => {
            let n: u64 = match rng.random_range(0..3) {
                0 => rng.random(),
                1 => rng.random_range(0..bytes.len() as u64 * 2),
                _ => header_len as u64 + rng.random_range(1..16),
            };
            out[..8].copy_from_slice(&n.to_le_bytes());
        }
        // Delete or duplicate a slice.
        _ => {
            let a = rng.random_range(0..out.len());
            let b = (a + rng.random_range(1..64)).min(out.len());
            if rng.random_bool(0.5) {
                out.drain(a..b);
            } else {
                let chunk = out[a..b].to_vec();
                out.splice(a..a, chunk);
            }
        }
    }
    out
}

fn seeds(tmp: &Path) -> Vec<Seed> {
    let ours = tmp.join("ours");
    tiny_bert::<B>(&Default::default(), 1)
        .keep(SpaceName::Ffn(0), &[0, 5, 7])
        .unwrap()
        .save(&ours)
        .unwrap();
    let exported = tmp.join("shears-bert");
    tiny_bert::<B>(&Default::default(), 2)
        .keep(SpaceName::Hidden, &(0..12).collect::<Vec<_>>())
        .unwrap()
        .export_hf(&exported, None)
        .unwrap();
    vec![
        seed_dir("hf-gpt2", &fixtures().join("tiny-gpt2")),
        seed_dir("ours", &ours),
        seed_dir("shears-bert", &exported),
        seed_dir("hf-roberta", &fixtures().join("roberta-pruned-heads")),
        seed_dir("shears-roberta", &fixtures().join("roberta-shears")),
    ]
}

#[test]
fn loaders_survive_mutated_files() {
    let tmp = tempfile::tempdir().unwrap();
    let seeds = seeds(tmp.path());
    // Every seed loads as it is.
    for s in &seeds {
        let dir = write_case(tmp.path(), s, None);
        BertModel::<B>::load(&dir, &Default::default())
            .unwrap_or_else(|e| panic!("seed {}: {e}", s.name));
    }
    let mut rng = StdRng::seed_from_u64(14);
    let (mut loaded, mut refused) = (0, 0);
    let mut panics = Vec::new();
    // Panics are caught and counted; the default hook would print each one.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for case in 0..CASES {
        let seed = &seeds[case % seeds.len()];
        let file = rng.random_range(0..seed.files.len());
        let (name, bytes) = &seed.files[file];
        let mutated = mutate(name, bytes, &mut rng);
        let dir = write_case(tmp.path(), seed, Some((file, &mutated)));
        match std::panic::catch_unwind(AssertUnwindSafe(|| {
            BertModel::<B>::load(&dir, &Default::default())
        })) {
            Ok(Ok(_)) => loaded += 1,
            Ok(Err(_)) => refused += 1,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                // `SHEARS_FUZZ_DUMP=DIR` keeps the first failing file and its seed.
                if let (true, Some(d)) = (panics.is_empty(), std::env::var_os("SHEARS_FUZZ_DUMP")) {
                    let d = PathBuf::from(d);
                    std::fs::write(d.join(format!("case-{name}")), &mutated).unwrap();
                    std::fs::write(d.join(format!("seed-{name}")), bytes).unwrap();
                }
                panics.push(format!("case {case} ({} {name}): {msg}", seed.name));
            }
        }
    }
    std::panic::set_hook(hook);
    println!(
        "{CASES} cases: {loaded} loaded, {refused} refused, {} panicked",
        panics.len()
    );
    assert!(
        panics.is_empty(),
        "{} of {CASES} cases panicked; first ones:\n{}",
        panics.len(),
        panics[..panics.len().min(10)].join("\n")
    );
    // Both outcomes happen: the mutations reach past the parsers.
    assert!(
        loaded > 100 && refused > 1000,
        "{loaded} loaded, {refused} refused"
    );
}

/// Writes `seed`'s files to a fresh case directory, file `replace.0` replaced.
fn write_case(tmp: &Path, seed: &Seed, replace: Option<(usize, &[u8])>) -> PathBuf {
    let dir = tmp.join("case");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    for (i, (name, bytes)) in seed.files.iter().enumerate() {
        let bytes = match replace {
            Some((j, b)) if i == j => b,
            _ => bytes,
        };
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    dir
}
