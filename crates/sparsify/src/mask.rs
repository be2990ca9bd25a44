//! `Mask`: a keep (`true`) / drop (`false`) flag per element of a tensor, its zero fraction,
//! and its compact saved form (a hex bit string).

use serde::{Deserialize, Serialize};
use shears_spaces::HostTensor;

use crate::SparsifyError;

/// A 0/1 mask over a row-major tensor: `true` keeps the element, `false` zeroes it.
///
/// Its shape is fixed at construction; criteria edit the flags in place through
/// [`Mask::bits_mut`].
///
/// Saved (serde) as `{"shape": [..], "bits": "<hex>"}`: the flags packed eight to a byte,
/// element `8i + j` in bit `j` (least significant first) of byte `i`, each byte written as
/// two lower-case hex digits. A 1,000,000 x 128 mask takes 32 MB of JSON.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "PackedMask")]
pub struct Mask {
    shape: Vec<usize>,
    bits: Vec<bool>,
}

/// The saved form of a [`Mask`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackedMask {
    shape: Vec<usize>,
    bits: String,
}

impl Mask {
    /// A mask that keeps everything.
    pub fn ones(shape: &[usize]) -> Self {
        Self::filled(shape, true)
    }

    /// A mask that drops everything.
    pub fn zeros(shape: &[usize]) -> Self {
        Self::filled(shape, false)
    }

    fn filled(shape: &[usize], keep: bool) -> Self {
        Self {
            shape: shape.to_vec(),
            bits: vec![keep; shape.iter().product()],
        }
    }

    /// A mask from its shape and row-major flags.
    ///
    /// # Errors
    /// [`SparsifyError::Shape`] when `bits.len()` is not the product of `shape`.
    pub fn from_bits(shape: Vec<usize>, bits: Vec<bool>) -> Result<Self, SparsifyError> {
        let n: usize = shape.iter().product();
        if bits.len() != n {
            return Err(SparsifyError::Shape {
                what: "mask flags".into(),
                expected: shape,
                found: vec![bits.len()],
            });
        }
        Ok(Self { shape, bits })
    }

    /// Axis lengths, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Row-major flags (`true` = keep).
    pub fn bits(&self) -> &[bool] {
        &self.bits
    }

    /// Row-major flags to edit in place (`true` = keep).
    pub fn bits_mut(&mut self) -> &mut [bool] {
        &mut self.bits
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.bits.len()
    }

    /// Whether the mask has no elements.
    pub fn is_empty(&self) -> bool {
        self.bits.is_empty()
    }

    /// Sets every flag to `keep`.
    pub fn fill(&mut self, keep: bool) {
        self.bits.fill(keep);
    }

    /// Number of dropped (zero) elements.
    pub fn count_zeros(&self) -> usize {
        self.bits.iter().filter(|&&b| !b).count()
    }

    /// Fraction of dropped elements, `zeros / len` (0 for an empty mask).
    pub fn sparsity(&self) -> f64 {
        if self.bits.is_empty() {
            0.0
        } else {
            self.count_zeros() as f64 / self.bits.len() as f64
        }
    }

    /// The mask as row-major `0.0` / `1.0` values.
    pub fn to_f32(&self) -> Vec<f32> {
        self.bits
            .iter()
            .map(|&b| if b { 1.0 } else { 0.0 })
            .collect()
    }

    /// Multiplies `values` by the mask in place (`x * 0` for dropped elements, as torch's
    /// `mask * x`: a NaN or infinite value stays NaN).
    ///
    /// # Panics
    /// If `values.len()` differs from the mask's length.
    pub fn apply_in_place(&self, values: &mut [f32]) {
        assert_eq!(
            values.len(),
            self.bits.len(),
            "mask of shape {:?} applied to {} values",
            self.shape,
            values.len()
        );
        for (x, &keep) in values.iter_mut().zip(&self.bits) {
            if !keep {
                *x *= 0.0;
            }
        }
    }

    /// `data * mask` as a new tensor.
    ///
    /// # Errors
    /// [`SparsifyError::Shape`] when the shapes differ.
    pub fn apply(&self, data: &HostTensor) -> Result<HostTensor, SparsifyError> {
        if data.shape != self.shape || data.data.len() != self.bits.len() {
            return Err(SparsifyError::Shape {
                what: "data under a mask".into(),
                expected: self.shape.clone(),
                found: data.shape.clone(),
            });
        }
        let mut out = data.clone();
        self.apply_in_place(&mut out.data);
        Ok(out)
    }
}

impl Serialize for Mask {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Mask", 2)?;
        s.serialize_field("shape", &self.shape)?;
        s.serialize_field("bits", &pack_hex(&self.bits))?;
        s.end()
    }
}

impl TryFrom<PackedMask> for Mask {
    type Error = SparsifyError;

    fn try_from(p: PackedMask) -> Result<Self, SparsifyError> {
        let n: usize = p.shape.iter().product();
        let bits = unpack_hex(&p.bits, n).map_err(SparsifyError::BadMask)?;
        Ok(Self {
            shape: p.shape,
            bits,
        })
    }
}

fn pack_hex(bits: &[bool]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bits.len().div_ceil(8) * 2);
    for chunk in bits.chunks(8) {
        let mut byte = 0u8;
        for (j, &b) in chunk.iter().enumerate() {
            if b {
                byte |= 1 << j;
            }
        }
        s.push(HEX[(byte >> 4) as usize] as char);
        s.push(HEX[(byte & 15) as usize] as char);
    }
    s
}

fn unpack_hex(hex: &str, n: usize) -> Result<Vec<bool>, String> {
    let bytes = hex.as_bytes();
    let expected = n.div_ceil(8) * 2;
    if bytes.len() != expected {
        return Err(format!(
            "{} hex digits for {n} elements, expected {expected}",
            bytes.len()
        ));
    }
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let mut bits = Vec::with_capacity(n);
    for pair in bytes.chunks(2) {
        let (Some(hi), Some(lo)) = (nibble(pair[0]), nibble(pair[1])) else {
            return Err(format!(
                "`{}` is not a hex byte",
                String::from_utf8_lossy(pair)
            ));
        };
        let byte = (hi << 4) | lo;
        for j in 0..8 {
            if bits.len() < n {
                bits.push(((byte >> j) & 1) == 1);
            }
        }
    }
    Ok(bits)
}
