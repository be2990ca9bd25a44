//! `DataSparsifier`: named tensors (parameters, embeddings, any data) with a mask and a
//! config each, over defaults; `step`, `squash_mask`, and a serialisable `State`.
//! The design follows torch's `BaseDataSparsifier` (seed 001); differences are listed on the
//! type.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shears_spaces::HostTensor;

use crate::{Config, ConfigOverride, Mask, Sparsifier, SparsifyError};

/// One named tensor.
#[derive(Debug, Clone)]
struct Entry {
    /// The original values (the masked values after a squash).
    data: HostTensor,
    config: Config,
    /// `None` after [`DataSparsifier::squash_mask`].
    mask: Option<Mask>,
}

/// Owns named tensors, each with a [`Config`] (defaults plus per-name overrides) and a
/// [`Mask`] that the criterion `S` recomputes on every [`DataSparsifier::step`].
///
/// ```
/// use shears_sparsify::{BlockNorm, Config, ConfigOverride, DataSparsifier, HostTensor};
///
/// let mut sp = DataSparsifier::new(BlockNorm, Config::default()).unwrap();
/// let emb = HostTensor::new(vec![2, 8], (0..16).map(|i| i as f32).collect());
/// sp.add_data("emb", emb, Some(ConfigOverride::default().zeros_per_block(2)), true)
///     .unwrap();
/// sp.step().unwrap();
/// assert_eq!(sp.mask("emb").unwrap().count_zeros(), 4); // 2 of 4 blocks, 2 zeros each
/// sp.squash_mask(None).unwrap();
/// ```
///
/// Differences from torch's `BaseDataSparsifier`:
/// - data is copied in (a [`HostTensor`]); [`DataSparsifier::data`] hands it back;
/// - replacing a name with data of another shape gives it a fresh mask instead of failing;
/// - `zeros_per_block: None` means the whole block of the *current* block shape;
/// - `norm` is per name (part of [`Config`]), not per sparsifier;
/// - sparsity levels outside `[0, 1]` are errors (torch slices with them);
/// - masks keep the data's shape for data with size-1 axes (torch's take the squeezed shape);
/// - the saved [`State`] holds configs and masks but not the data.
#[derive(Debug, Clone)]
pub struct DataSparsifier<S: Sparsifier> {
    sparsifier: S,
    defaults: Config,
    entries: BTreeMap<String, Entry>,
    steps: usize,
}

/// Everything [`DataSparsifier::load_state`] restores: every name's config and mask, and the
/// step count. The data itself is not included: add it again, then load the state.
///
/// Masks are saved as hex bit strings (see [`Mask`]); configs round-trip exactly through
/// serde_json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Per name, in name order.
    pub entries: BTreeMap<String, EntryState>,
    /// Completed [`DataSparsifier::step`] calls.
    pub steps: usize,
}

/// The saved config and mask of one name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryState {
    /// The config.
    pub config: Config,
    /// The mask; `None` when it was squashed.
    pub mask: Option<Mask>,
}

/// Rejects names torch rejects: empty, or containing `.`.
fn check_name(name: &str) -> Result<(), SparsifyError> {
    if name.is_empty() {
        return Err(SparsifyError::EmptyName);
    }
    if name.contains('.') {
        return Err(SparsifyError::DottedName(name.to_string()));
    }
    Ok(())
}

impl<S: Sparsifier> DataSparsifier<S> {
    /// An empty sparsifier with criterion `sparsifier` and default settings `defaults`.
    ///
    /// # Errors
    /// When `defaults` is invalid ([`Config::validate`]).
    pub fn new(sparsifier: S, defaults: Config) -> Result<Self, SparsifyError> {
        defaults.validate()?;
        Ok(Self {
            sparsifier,
            defaults,
            entries: BTreeMap::new(),
            steps: 0,
        })
    }

    /// The criterion.
    pub fn sparsifier(&self) -> &S {
        &self.sparsifier
    }

    /// The criterion, to change (e.g. to give [`crate::Wanda`] new statistics).
    pub fn sparsifier_mut(&mut self) -> &mut S {
        &mut self.sparsifier
    }

    /// The default settings.
    pub fn defaults(&self) -> &Config {
        &self.defaults
    }

    /// Adds `data` under `name`, or replaces the data of an existing `name`.
    ///
    /// A new name gets the defaults with `config` applied and a mask of ones. An existing
    /// name keeps its old config with `config` applied (the defaults are not re-applied), and
    /// keeps its mask when `reuse_mask` is true and the new data has the old shape; otherwise
    /// (or if its mask was squashed) it gets a mask of ones. Nothing changes on error.
    ///
    /// # Errors
    /// [`SparsifyError::EmptyName`], [`SparsifyError::DottedName`],
    /// [`SparsifyError::DataLength`], or an invalid resulting config.
    pub fn add_data(
        &mut self,
        name: &str,
        data: HostTensor,
        config: Option<ConfigOverride>,
        reuse_mask: bool,
    ) -> Result<(), SparsifyError> {
        check_name(name)?;
        if data.data.len() != data.shape.iter().product::<usize>() {
            return Err(SparsifyError::DataLength {
                name: name.to_string(),
                shape: data.shape.clone(),
                len: data.data.len(),
            });
        }
        let overrides = config.unwrap_or_default();
        let base = self.entries.get(name).map_or(&self.defaults, |e| &e.config);
        let config = base.with(&overrides);
        config.validate()?;
        let mask = match self.entries.remove(name) {
            Some(Entry {
                data: old,
                mask: Some(mask),
                ..
            }) if reuse_mask && old.shape == data.shape => mask,
            _ => Mask::ones(&data.shape),
        };
        self.entries.insert(
            name.to_string(),
            Entry {
                data,
                config,
                mask: Some(mask),
            },
        );
        Ok(())
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries.keys().map(String::as_str)
    }

    /// Whether `name` is held.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no data has been added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn entry(&self, name: &str) -> Result<&Entry, SparsifyError> {
        self.entries
            .get(name)
            .ok_or_else(|| SparsifyError::UnknownName(name.to_string()))
    }

    fn entry_mut(&mut self, name: &str) -> Result<&mut Entry, SparsifyError> {
        self.entries
            .get_mut(name)
            .ok_or_else(|| SparsifyError::UnknownName(name.to_string()))
    }

    /// The config of `name`.
    pub fn config(&self, name: &str) -> Result<&Config, SparsifyError> {
        Ok(&self.entry(name)?.config)
    }

    /// Changes the config of `name` (validated; unchanged on error).
    pub fn set_config(&mut self, name: &str, config: Config) -> Result<(), SparsifyError> {
        config.validate()?;
        self.entry_mut(name)?.config = config;
        Ok(())
    }

    /// Changes the sparsity level of `name` (what schedulers do).
    ///
    /// # Errors
    /// [`SparsifyError::UnknownName`], or [`SparsifyError::BadSparsity`] outside `[0, 1]`.
    pub fn set_sparsity_level(&mut self, name: &str, level: f64) -> Result<(), SparsifyError> {
        if !(0.0..=1.0).contains(&level) {
            return Err(SparsifyError::BadSparsity(level));
        }
        self.entry_mut(name)?.config.sparsity_level = level;
        Ok(())
    }

    /// The mask of `name`.
    ///
    /// # Errors
    /// [`SparsifyError::UnknownName`], or [`SparsifyError::Squashed`] after a squash.
    pub fn mask(&self, name: &str) -> Result<&Mask, SparsifyError> {
        self.entry(name)?
            .mask
            .as_ref()
            .ok_or_else(|| SparsifyError::Squashed(name.to_string()))
    }

    /// Whether the mask of `name` has been squashed into its data.
    pub fn is_squashed(&self, name: &str) -> Result<bool, SparsifyError> {
        Ok(self.entry(name)?.mask.is_none())
    }

    /// The data of `name`: the original values (`original = true`) or `data * mask`.
    /// After a squash the data is the masked values and only `original = false` works.
    ///
    /// # Errors
    /// [`SparsifyError::UnknownName`]; [`SparsifyError::Squashed`] for the original values
    /// of a squashed name.
    pub fn data(&self, name: &str, original: bool) -> Result<Cow<'_, HostTensor>, SparsifyError> {
        let e = self.entry(name)?;
        match (&e.mask, original) {
            (None, true) => Err(SparsifyError::Squashed(name.to_string())),
            (None, false) | (Some(_), true) => Ok(Cow::Borrowed(&e.data)),
            (Some(mask), false) => Ok(Cow::Owned(mask.apply(&e.data)?)),
        }
    }

    /// Recomputes every mask (squashed names excepted) from the original data, in name
    /// order. Masks depend only on the original data and the config, so repeated steps do
    /// not compound (for the built-in criteria).
    ///
    /// # Errors
    /// The first criterion error; the masks of earlier names are then already updated.
    pub fn step(&mut self) -> Result<(), SparsifyError> {
        let sparsifier = &self.sparsifier;
        for (name, e) in self.entries.iter_mut() {
            if let Some(mask) = e.mask.as_mut() {
                sparsifier.update_mask(name, &e.data, &e.config, mask)?;
            }
        }
        self.steps += 1;
        Ok(())
    }

    /// Completed [`DataSparsifier::step`] calls.
    pub fn step_count(&self) -> usize {
        self.steps
    }

    /// Multiplies the data of `names` (all when `None`) by their masks and drops the masks.
    /// Names stay, with their configs; squashing twice is a no-op.
    ///
    /// # Errors
    /// [`SparsifyError::UnknownName`] for any unknown name, before anything is squashed.
    pub fn squash_mask(&mut self, names: Option<&[&str]>) -> Result<(), SparsifyError> {
        let names: Vec<String> = match names {
            Some(ns) => {
                for n in ns {
                    self.entry(n)?;
                }
                ns.iter().map(|n| n.to_string()).collect()
            }
            None => self.entries.keys().cloned().collect(),
        };
        for n in names {
            let e = self.entry_mut(&n)?;
            if let Some(mask) = e.mask.take() {
                mask.apply_in_place(&mut e.data.data);
            }
        }
        Ok(())
    }

    /// Every name's config and mask, and the step count.
    pub fn state(&self) -> State {
        State {
            entries: self
                .entries
                .iter()
                .map(|(n, e)| {
                    (
                        n.clone(),
                        EntryState {
                            config: e.config.clone(),
                            mask: e.mask.clone(),
                        },
                    )
                })
                .collect(),
            steps: self.steps,
        }
    }

    /// Restores configs, masks and the step count saved by [`DataSparsifier::state`]. An
    /// entry saved without a mask (squashed) is loaded as squashed: its current data is taken
    /// as already masked. Nothing changes on error.
    ///
    /// # Errors
    /// [`SparsifyError::StateMismatch`] when the state's names differ from the held names;
    /// an invalid config; [`SparsifyError::Shape`] when a mask's shape differs from its data's.
    pub fn load_state(&mut self, state: State) -> Result<(), SparsifyError> {
        let missing: Vec<String> = self
            .entries
            .keys()
            .filter(|n| !state.entries.contains_key(*n))
            .cloned()
            .collect();
        let unexpected: Vec<String> = state
            .entries
            .keys()
            .filter(|n| !self.entries.contains_key(*n))
            .cloned()
            .collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(SparsifyError::StateMismatch {
                missing,
                unexpected,
            });
        }
        for (name, s) in &state.entries {
            s.config.validate()?;
            let data = &self.entry(name)?.data;
            if let Some(mask) = &s.mask
                && mask.shape() != data.shape.as_slice()
            {
                return Err(SparsifyError::Shape {
                    what: format!("saved mask of `{name}`"),
                    expected: data.shape.clone(),
                    found: mask.shape().to_vec(),
                });
            }
        }
        for (name, s) in state.entries {
            let e = self.entry_mut(&name)?;
            e.config = s.config;
            e.mask = s.mask;
        }
        self.steps = state.steps;
        Ok(())
    }
}
