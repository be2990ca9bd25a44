//! `Registry`: which parameter axes live in which space; validation, keep plans and masks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::{HostTensor, Space, SpaceError, TensorMap};

/// One parameter axis that lives in a space.
#[derive(Debug, Clone)]
pub struct Member {
    /// Parameter path (`layers.0.attention.query.weight`).
    pub path: String,
    /// The axis of that parameter.
    pub axis: usize,
    /// The space the axis lives in.
    pub space: Space,
}

/// For every space of a model, every `(parameter path, axis)` that lives in it, plus the
/// axes that are explicitly free (in no prunable space).
///
/// A model builds its registry by walking its own structure with a [`Scope`]; the registry
/// is then checked against the model's real parameters by [`Registry::validate`], so a
/// declaration that forgets a parameter, claims one twice or disagrees on a size is caught.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    spaces: Vec<Space>,
    members: Vec<Member>,
    free: Vec<(String, usize)>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A scope that prefixes every path it claims with `prefix.`.
    pub fn scope(&mut self, prefix: &str) -> Scope<'_> {
        Scope {
            registry: self,
            prefix: prefix.to_string(),
        }
    }

    /// Records that axis `axis` of parameter `path` lives in `space`.
    ///
    /// # Panics
    /// If a *different* space with the same name is already registered: names identify
    /// spaces in requests, so they must be unique (a programming error in a declaration).
    pub fn claim(&mut self, path: &str, axis: usize, space: &Space) {
        self.register(space);
        self.members.push(Member {
            path: path.to_string(),
            axis,
            space: space.clone(),
        });
    }

    /// Records that axis `axis` of parameter `path` is free: in no prunable space.
    pub fn free(&mut self, path: &str, axis: usize) {
        self.free.push((path.to_string(), axis));
    }

    /// Registers a space that may have no members yet.
    ///
    /// # Panics
    /// As [`Registry::claim`].
    pub fn register(&mut self, space: &Space) {
        if let Some(known) = self.spaces.iter().find(|s| s.name() == space.name()) {
            assert!(
                known == space,
                "two different spaces are both named `{}`",
                space.name()
            );
            return;
        }
        self.spaces.push(space.clone());
    }

    /// Every registered space, in registration order.
    pub fn spaces(&self) -> &[Space] {
        &self.spaces
    }

    /// The space called `name`.
    pub fn space(&self, name: &str) -> Result<&Space, SpaceError> {
        self.spaces
            .iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| SpaceError::UnknownSpace {
                name: name.to_string(),
                known: self
                    .spaces
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Every member axis of `space` (found by identity, not by size).
    pub fn members<'a>(&'a self, space: &'a Space) -> impl Iterator<Item = &'a Member> + 'a {
        self.members.iter().filter(move |m| &m.space == space)
    }

    /// Every member of every space.
    pub fn all_members(&self) -> &[Member] {
        &self.members
    }

    /// Proves the declaration matches real parameter shapes: every axis of every parameter
    /// is claimed by exactly one space or marked free, every claimed parameter exists, and
    /// every member axis has its space's size.
    pub fn validate(&self, shapes: &BTreeMap<String, Vec<usize>>) -> Result<(), SpaceError> {
        let mut owner: BTreeMap<(&str, usize), String> = BTreeMap::new();
        let claims = self
            .members
            .iter()
            .map(|m| (m.path.as_str(), m.axis, Some(&m.space)))
            .chain(self.free.iter().map(|(p, a)| (p.as_str(), *a, None)));
        for (path, axis, space) in claims {
            let name = space.map_or("free".to_string(), |s| s.name().to_string());
            let shape = shapes
                .get(path)
                .ok_or_else(|| SpaceError::UnknownParameter {
                    path: path.to_string(),
                })?;
            if axis >= shape.len() {
                return Err(SpaceError::AxisOutOfRange {
                    path: path.to_string(),
                    axis,
                    rank: shape.len(),
                    space: name,
                });
            }
            if let Some(space) = space
                && shape[axis] != space.size()
            {
                return Err(SpaceError::SizeMismatch {
                    path: path.to_string(),
                    axis,
                    space: name,
                    expected: space.size(),
                    found: shape[axis],
                });
            }
            if let Some(first) = owner.insert((path, axis), name.clone()) {
                return Err(SpaceError::ClaimedTwice {
                    path: path.to_string(),
                    axis,
                    first,
                    second: name,
                });
            }
        }
        for (path, shape) in shapes {
            for axis in 0..shape.len() {
                if !owner.contains_key(&(path.as_str(), axis)) {
                    return Err(SpaceError::Unclaimed {
                        path: path.clone(),
                        axis,
                        shape: shape.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks a list of units of `space` (in range, no duplicates) and returns them sorted.
    pub fn check_units(&self, space: &Space, units: &[usize]) -> Result<Vec<usize>, SpaceError> {
        let mut seen = BTreeSet::new();
        for &u in units {
            if u >= space.n_units() {
                return Err(SpaceError::UnitOutOfRange {
                    space: space.name().to_string(),
                    unit: u,
                    n_units: space.n_units(),
                });
            }
            if !seen.insert(u) {
                return Err(SpaceError::DuplicateUnit {
                    space: space.name().to_string(),
                    unit: u,
                });
            }
        }
        Ok(seen.into_iter().collect())
    }

    /// Plans "keep units `keep` of space `name`": for every member, the indices of its
    /// axis to keep. Units are kept in ascending order whatever order they are given in.
    pub fn plan_keep(&self, name: &str, keep: &[usize]) -> Result<KeepPlan, SpaceError> {
        let space = self.space(name)?;
        let kept = self.check_units(space, keep)?;
        if kept.len() < space.min_units() {
            let hint = if space.hint().is_empty() {
                String::new()
            } else {
                format!(": {}", space.hint())
            };
            return Err(SpaceError::TooFewUnits {
                space: name.to_string(),
                kept: kept.len(),
                n_units: space.n_units(),
                min: space.min_units(),
                hint,
            });
        }
        let w = space.unit_width();
        let indices: Vec<usize> = kept.iter().flat_map(|&u| u * w..(u + 1) * w).collect();
        let slices = self
            .members(space)
            .map(|m| AxisSlice {
                path: m.path.clone(),
                axis: m.axis,
                indices: indices.clone(),
            })
            .collect();
        Ok(KeepPlan {
            space: name.to_string(),
            kept,
            slices,
        })
    }

    /// A 0/1 mask over the units of `name`: 1 for the units in `keep`. This is the soft
    /// counterpart of [`Registry::plan_keep`]: a forward pass with this mask equals the
    /// forward pass of the model pruned by the plan.
    pub fn unit_mask(&self, name: &str, keep: &[usize]) -> Result<Vec<f32>, SpaceError> {
        let space = self.space(name)?;
        let kept = self.check_units(space, keep)?;
        let mut mask = vec![0.0; space.n_units()];
        for u in kept {
            mask[u] = 1.0;
        }
        Ok(mask)
    }

    /// A readable table of a space's members, one `path axis` row each (for snapshots
    /// and `inspect`).
    pub fn table(&self, name: &str) -> Result<String, SpaceError> {
        let space = self.space(name)?;
        let mut out = format!(
            "space {} units={} width={} size={}\n",
            space.name(),
            space.n_units(),
            space.unit_width(),
            space.size()
        );
        for m in self.members(space) {
            let _ = writeln!(out, "  {} axis {}", m.path, m.axis);
        }
        Ok(out)
    }
}

/// A path scope used while declaring: `scope.child("attention").claim("query.weight", 1, &heads)`.
pub struct Scope<'a> {
    registry: &'a mut Registry,
    prefix: String,
}

impl Scope<'_> {
    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// A nested scope `prefix.name`.
    pub fn child(&mut self, name: &str) -> Scope<'_> {
        let prefix = self.path(name);
        Scope {
            registry: self.registry,
            prefix,
        }
    }

    /// Claims axis `axis` of `prefix.name` for `space`.
    pub fn claim(&mut self, name: &str, axis: usize, space: &Space) {
        let path = self.path(name);
        self.registry.claim(&path, axis, space);
    }

    /// Marks axis `axis` of `prefix.name` free.
    pub fn free(&mut self, name: &str, axis: usize) {
        let path = self.path(name);
        self.registry.free(&path, axis);
    }

    /// Registers a space without members here.
    pub fn register(&mut self, space: &Space) {
        self.registry.register(space);
    }
}

/// The indices of one parameter axis to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AxisSlice {
    /// Parameter path.
    pub path: String,
    /// Axis.
    pub axis: usize,
    /// Indices of that axis to keep, ascending.
    pub indices: Vec<usize>,
}

/// The result of [`Registry::plan_keep`]: which units survive and how every member tensor
/// is sliced. Apply it to exported parameters with [`KeepPlan::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepPlan {
    /// The space pruned.
    pub space: String,
    /// The units kept, ascending, as indices into the space before pruning.
    pub kept: Vec<usize>,
    /// One slice per member axis.
    pub slices: Vec<AxisSlice>,
}

impl KeepPlan {
    /// Slices every member tensor in `tensors`. Checks every path and axis first, so an
    /// error leaves `tensors` untouched.
    pub fn apply(&self, tensors: &mut TensorMap) -> Result<(), SpaceError> {
        for s in &self.slices {
            let t = crate::tensors::get(tensors, &s.path)?;
            if s.axis >= t.shape.len() {
                return Err(SpaceError::AxisOutOfRange {
                    path: s.path.clone(),
                    axis: s.axis,
                    rank: t.shape.len(),
                    space: self.space.clone(),
                });
            }
            if let Some(&max) = s.indices.last()
                && max >= t.shape[s.axis]
            {
                return Err(SpaceError::SizeMismatch {
                    path: s.path.clone(),
                    axis: s.axis,
                    space: self.space.clone(),
                    expected: max + 1,
                    found: t.shape[s.axis],
                });
            }
        }
        for s in &self.slices {
            let sliced: HostTensor = tensors[&s.path].select(s.axis, &s.indices);
            tensors.insert(s.path.clone(), sliced);
        }
        Ok(())
    }
}
