//! Writing your own sparsifier: implement `Sparsifier::update_mask` and the
//! `DataSparsifier` does the rest (names, per-name configs, steps, squashing, saved state).
//!
//! This one drops every entry whose magnitude is below the threshold of its config, like the
//! example of torch's data-sparsifier README (seed 001).
//!
//! Run with `cargo run -p shears-sparsify --example threshold`.

use shears_sparsify::{
    Config, ConfigOverride, DataSparsifier, HostTensor, Mask, Sparsifier, SparsifyError, State,
};

/// Drops `|x| < config.threshold`.
struct BelowThreshold;

impl Sparsifier for BelowThreshold {
    fn update_mask(
        &self,
        _name: &str,
        data: &HostTensor,
        config: &Config,
        mask: &mut Mask,
    ) -> Result<(), SparsifyError> {
        // Overwrite every flag, so that a step depends on the data only, not on the last mask.
        for (keep, &x) in mask.bits_mut().iter_mut().zip(&data.data) {
            *keep = (x.abs() as f64) >= config.threshold;
        }
        Ok(())
    }
}

/// Seeded values in (-1, 1) from a small LCG (the example needs no random-number crate).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut sp = DataSparsifier::new(BelowThreshold, Config::default().with_threshold(0.2))?;
    sp.add_data(
        "tensor1",
        HostTensor::new(vec![100, 100], values(10_000, 1)),
        Some(ConfigOverride::default().threshold(0.5)),
        true,
    )?;
    sp.add_data(
        "param1",
        HostTensor::new(vec![200, 32], values(6_400, 2)),
        None,
        true,
    )?;

    sp.step()?;
    for name in ["tensor1", "param1"] {
        println!(
            "{name}: threshold {} -> sparsity {:.3}",
            sp.config(name)?.threshold,
            sp.mask(name)?.sparsity()
        );
    }

    // The state (configs and masks) survives JSON.
    let json = serde_json::to_string(&sp.state())?;
    let state: State = serde_json::from_str(&json)?;
    assert_eq!(state, sp.state());
    println!("state: {} bytes of JSON", json.len());

    sp.squash_mask(None)?;
    let zeros = sp
        .data("tensor1", false)?
        .data
        .iter()
        .filter(|&&x| x == 0.0)
        .count();
    println!("tensor1 after squash: {zeros} zeros");
    Ok(())
}
