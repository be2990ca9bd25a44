//! `Config`: the settings a criterion reads for one tensor (sparsity level, block shape,
//! zeros per block, norm, threshold), and `ConfigOverride`, the per-name changes over the
//! defaults.

use serde::{Deserialize, Serialize};

use crate::SparsifyError;

/// The per-element score blocks are ranked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Norm {
    /// `|x|` (torch's `"L1"`, the DataNormSparsifier default).
    #[default]
    L1,
    /// `x²`, squared, no square root (torch's `"L2"`).
    L2,
}

impl Norm {
    /// The score of one element.
    pub fn score(self, x: f32) -> f32 {
        match self {
            Norm::L1 => x.abs(),
            Norm::L2 => x * x,
        }
    }
}

/// Settings of one tensor's mask. Each criterion documents which fields it reads.
///
/// Defaults are torch's `DataNormSparsifier` defaults: sparsity 0.5, block `[1, 4]`, every
/// element of a chosen block zeroed, L1, and threshold 0.
///
/// Serialised with serde; the two floats are written as JSON numbers when serde_json reads
/// them back bit for bit, and as strings (`"3.0000000000000004e-1"`) otherwise, so a saved
/// [`crate::State`] round-trips exactly. Both forms are accepted when reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Fraction of blocks (of elements for unstructured criteria, of each output's weights
    /// for Wanda) to sparsify, in `[0, 1]`.
    #[serde(with = "exact_f64")]
    pub sparsity_level: f64,
    /// Block shape `[height, width]` of block criteria; both sides at least 1.
    pub sparse_block_shape: [usize; 2],
    /// Zeros inside each chosen block; `None` = the whole block (`height · width`).
    pub zeros_per_block: Option<usize>,
    /// Element score of block criteria.
    pub norm: Norm,
    /// Magnitude below which [`crate::Threshold`] drops an element.
    #[serde(with = "exact_f64")]
    pub threshold: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sparsity_level: 0.5,
            sparse_block_shape: [1, 4],
            zeros_per_block: None,
            norm: Norm::L1,
            threshold: 0.0,
        }
    }
}

impl Config {
    /// Checks the settings: sparsity in `[0, 1]`, no zero block side, no more zeros per
    /// block than the block holds, a threshold that is a number.
    pub fn validate(&self) -> Result<(), SparsifyError> {
        if !(0.0..=1.0).contains(&self.sparsity_level) {
            return Err(SparsifyError::BadSparsity(self.sparsity_level));
        }
        let [bh, bw] = self.sparse_block_shape;
        if bh == 0 || bw == 0 {
            return Err(SparsifyError::BadBlock {
                block: self.sparse_block_shape,
            });
        }
        if let Some(z) = self.zeros_per_block
            && z > bh.saturating_mul(bw)
        {
            return Err(SparsifyError::ZerosPerBlock {
                zeros: z,
                block: self.sparse_block_shape,
            });
        }
        if self.threshold.is_nan() {
            return Err(SparsifyError::BadThreshold(self.threshold));
        }
        Ok(())
    }

    /// Zeros per chosen block with `None` resolved to the whole block.
    pub fn zeros(&self) -> usize {
        let [bh, bw] = self.sparse_block_shape;
        self.zeros_per_block.unwrap_or(bh.saturating_mul(bw))
    }

    /// This config with the fields `o` sets replaced.
    pub fn with(&self, o: &ConfigOverride) -> Config {
        Config {
            sparsity_level: o.sparsity_level.unwrap_or(self.sparsity_level),
            sparse_block_shape: o.sparse_block_shape.unwrap_or(self.sparse_block_shape),
            zeros_per_block: o.zeros_per_block.or(self.zeros_per_block),
            norm: o.norm.unwrap_or(self.norm),
            threshold: o.threshold.unwrap_or(self.threshold),
        }
    }

    /// Sets the sparsity level.
    pub fn with_sparsity_level(mut self, s: f64) -> Self {
        self.sparsity_level = s;
        self
    }

    /// Sets the block shape.
    pub fn with_block(mut self, block: [usize; 2]) -> Self {
        self.sparse_block_shape = block;
        self
    }

    /// Sets the zeros per chosen block.
    pub fn with_zeros_per_block(mut self, zeros: usize) -> Self {
        self.zeros_per_block = Some(zeros);
        self
    }

    /// Sets the norm.
    pub fn with_norm(mut self, norm: Norm) -> Self {
        self.norm = norm;
        self
    }

    /// Sets the threshold.
    pub fn with_threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold;
        self
    }
}

/// Per-name changes over the defaults (or, when a name is replaced, over its old config):
/// every `Some` field replaces the corresponding [`Config`] field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigOverride {
    /// Replaces [`Config::sparsity_level`].
    pub sparsity_level: Option<f64>,
    /// Replaces [`Config::sparse_block_shape`].
    pub sparse_block_shape: Option<[usize; 2]>,
    /// Replaces [`Config::zeros_per_block`].
    pub zeros_per_block: Option<usize>,
    /// Replaces [`Config::norm`].
    pub norm: Option<Norm>,
    /// Replaces [`Config::threshold`].
    pub threshold: Option<f64>,
}

impl ConfigOverride {
    /// Overrides the sparsity level.
    pub fn sparsity_level(mut self, s: f64) -> Self {
        self.sparsity_level = Some(s);
        self
    }

    /// Overrides the block shape.
    pub fn block(mut self, block: [usize; 2]) -> Self {
        self.sparse_block_shape = Some(block);
        self
    }

    /// Overrides the zeros per chosen block.
    pub fn zeros_per_block(mut self, zeros: usize) -> Self {
        self.zeros_per_block = Some(zeros);
        self
    }

    /// Overrides the norm.
    pub fn norm(mut self, norm: Norm) -> Self {
        self.norm = Some(norm);
        self
    }

    /// Overrides the threshold.
    pub fn threshold(mut self, threshold: f64) -> Self {
        self.threshold = Some(threshold);
        self
    }
}

/// serde for an `f64` that survives a serde_json round trip bit for bit: a number when
/// serde_json's (not always correctly rounded) float parser gives it back exactly, else the
/// shortest exact decimal as a string. Reads either.
pub(crate) mod exact_f64 {
    use serde::{Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if round_trips(*x) {
            s.serialize_f64(*x)
        } else {
            s.serialize_str(&format!("{x:e}"))
        }
    }

    fn round_trips(x: f64) -> bool {
        if !x.is_finite() {
            return false;
        }
        serde_json::to_string(&x)
            .ok()
            .and_then(|t| serde_json::from_str::<f64>(&t).ok())
            .map(f64::to_bits)
            == Some(x.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        d.deserialize_any(F64Visitor)
    }

    struct F64Visitor;

    impl de::Visitor<'_> for F64Visitor {
        type Value = f64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number, or a string holding one")
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            v.parse::<f64>()
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
}
