//! `Space`: a dimension with an identity, and `Dim`, the "plain size or shared space" argument.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Identity of a space. Two spaces are the same space exactly when their ids are equal,
/// whatever their sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpaceId(u64);

#[derive(Debug)]
struct Inner {
    id: SpaceId,
    name: String,
    n_units: usize,
    unit_width: usize,
    min_units: usize,
    hint: String,
}

/// A vector space that parameter axes live in, with an identity.
///
/// A space has `n_units` prunable units, each spanning `unit_width` consecutive indices of
/// every member axis (so a member axis has length `n_units * unit_width`). The hidden space
/// of a BERT has 384 units of width 1; the heads space of one of its layers has 12 units of
/// width 32 (`d_head`), spanning the 384 outputs of `query`, `key`, `value` and the 384
/// inputs of the attention output projection.
///
/// Cloning a `Space` shares the identity: `a == b` compares identities, never sizes, so two
/// spaces of size 384 are different unless one was made from the other.
#[derive(Clone)]
pub struct Space(Arc<Inner>);

impl Space {
    /// A new space of `n_units` units of width 1.
    pub fn new(name: impl Into<String>, n_units: usize) -> Self {
        Self::blocked(name, n_units, 1)
    }

    /// A new blocked space: `n_units` units, each `unit_width` indices wide.
    pub fn blocked(name: impl Into<String>, n_units: usize, unit_width: usize) -> Self {
        Space(Arc::new(Inner {
            id: SpaceId(NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            name: name.into(),
            n_units,
            unit_width,
            min_units: 1,
            hint: String::new(),
        }))
    }

    /// Sets the smallest number of units a pruning may keep (1 by default; 0 lets a
    /// pruning empty the space). Call it while building, before the space is shared.
    ///
    /// # Panics
    /// If the space has already been cloned (shared).
    pub fn with_min_units(mut self, min_units: usize) -> Self {
        Arc::get_mut(&mut self.0)
            .expect("with_min_units must be called before the space is shared")
            .min_units = min_units;
        self
    }

    /// Sets what an error should suggest when a pruning would keep fewer than
    /// [`Space::min_units`] units (e.g. "remove the attention block instead").
    ///
    /// # Panics
    /// If the space has already been cloned (shared).
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        Arc::get_mut(&mut self.0)
            .expect("with_hint must be called before the space is shared")
            .hint = hint.into();
        self
    }

    /// What to do instead of keeping too few units (may be empty).
    pub fn hint(&self) -> &str {
        &self.0.hint
    }

    /// The identity.
    pub fn id(&self) -> SpaceId {
        self.0.id
    }

    /// The name, unique within a registry (e.g. `hidden`, `layers.3.heads`).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Number of prunable units.
    pub fn n_units(&self) -> usize {
        self.0.n_units
    }

    /// Indices of a member axis spanned by one unit.
    pub fn unit_width(&self) -> usize {
        self.0.unit_width
    }

    /// Length of every member axis: `n_units * unit_width`.
    pub fn size(&self) -> usize {
        self.0.n_units * self.0.unit_width
    }

    /// Smallest number of units a pruning may keep.
    pub fn min_units(&self) -> usize {
        self.0.min_units
    }
}

impl PartialEq for Space {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}
impl Eq for Space {}

impl fmt::Debug for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Space({} {}x{})",
            self.name(),
            self.n_units(),
            self.unit_width()
        )
    }
}

/// A dimension argument: either a plain size (a fresh space is made for it) or an existing
/// space to share. This is seed 000's "int or SpaceDim": constructors take `impl Into<Dim>`
/// and pass the resolved [`Space`] down to their children, so every axis in the model's
/// hidden space is the *same* space and can be found by identity.
#[derive(Debug, Clone)]
pub enum Dim {
    /// A size with no identity yet.
    Size(usize),
    /// A shared identity.
    Space(Space),
}

impl Dim {
    /// The space of this dimension, making a fresh one named `name` for a plain size.
    pub fn resolve(self, name: impl Into<String>) -> Space {
        match self {
            Dim::Size(n) => Space::new(name, n),
            Dim::Space(s) => s,
        }
    }

    /// The length of the axis.
    pub fn size(&self) -> usize {
        match self {
            Dim::Size(n) => *n,
            Dim::Space(s) => s.size(),
        }
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Self {
        Dim::Size(n)
    }
}
impl From<Space> for Dim {
    fn from(s: Space) -> Self {
        Dim::Space(s)
    }
}
impl From<&Space> for Dim {
    fn from(s: &Space) -> Self {
        Dim::Space(s.clone())
    }
}
