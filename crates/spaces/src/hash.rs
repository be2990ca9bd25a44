//! Keyed, counter-based randomness shared by the crates above (gate noise in `gates`,
//! dropout in `layers`): a draw is a function of a key and an index, never of a generator's
//! state, so it does not depend on the order or the thread that asks for it.

/// SplitMix64's finaliser: a bijection of `u64` that scatters nearby keys.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in `[0, 1)` (24 random bits) for element `index` under `key`.
#[inline]
pub fn uniform(key: u64, index: u64) -> f32 {
    (mix(key ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93)) >> 40) as f32
        * (1.0 / (1u64 << 24) as f32)
}
