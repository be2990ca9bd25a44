//! `HostTensor` and `TensorMap`: named f32 tensors on the host, the neutral form in which
//! models are exported, sliced and imported.

use std::collections::BTreeMap;

use crate::SpaceError;

/// A dense row-major f32 tensor on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Axis lengths, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub data: Vec<f32>,
}

/// Parameters by path (`layers.0.attention.query.weight`), in a stable order.
pub type TensorMap = BTreeMap<String, HostTensor>;

impl HostTensor {
    /// A tensor from its shape and row-major values.
    ///
    /// # Panics
    /// If `data.len()` is not the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "host tensor of shape {shape:?} needs {} values, got {}",
            shape.iter().product::<usize>(),
            data.len()
        );
        Self { shape, data }
    }

    /// Keeps the given indices of `axis`, in the given order.
    ///
    /// # Panics
    /// If `axis` or an index is out of range (callers validate first).
    pub fn select(&self, axis: usize, indices: &[usize]) -> HostTensor {
        let outer: usize = self.shape[..axis].iter().product();
        let len = self.shape[axis];
        let inner: usize = self.shape[axis + 1..].iter().product();
        let mut data = Vec::with_capacity(outer * indices.len() * inner);
        for o in 0..outer {
            let base = o * len * inner;
            for &i in indices {
                assert!(
                    i < len,
                    "index {i} out of range for axis {axis} of length {len}"
                );
                data.extend_from_slice(&self.data[base + i * inner..base + (i + 1) * inner]);
            }
        }
        let mut shape = self.shape.clone();
        shape[axis] = indices.len();
        HostTensor { shape, data }
    }

    /// The transpose of a 2-D tensor.
    ///
    /// # Panics
    /// If the tensor is not 2-D.
    pub fn transpose(&self) -> HostTensor {
        assert_eq!(
            self.shape.len(),
            2,
            "transpose needs a 2-D tensor, got {:?}",
            self.shape
        );
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                data[j * r + i] = self.data[i * c + j];
            }
        }
        HostTensor {
            shape: vec![c, r],
            data,
        }
    }
}

/// The shapes of every tensor in a map, for [`crate::Registry::validate`].
pub fn shapes(tensors: &TensorMap) -> BTreeMap<String, Vec<usize>> {
    tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.shape.clone()))
        .collect()
}

/// Looks a tensor up, with a typed error naming the missing path.
pub fn get<'a>(tensors: &'a TensorMap, path: &str) -> Result<&'a HostTensor, SpaceError> {
    tensors
        .get(path)
        .ok_or_else(|| SpaceError::UnknownParameter {
            path: path.to_string(),
        })
}
