//! Masks on Burn modules: select parameters by path pattern, compute their masks with any
//! host criterion, multiply them in, and keep them applied after optimizer steps.
//!
//! Parameter paths are the dotted field paths Burn's `ModuleVisitor` / `ModuleMapper`
//! report through `enter_module` (`layers.0.ffn.fc1.weight`; an `Option` field adds no
//! segment), the same paths `shears-layers` uses for saving and loading.

use std::collections::BTreeMap;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use shears_spaces::{HostTensor, TensorMap};

use crate::{Config, Mask, Sparsifier, SparsifyError};

/// Masks by parameter path.
pub type MaskMap = BTreeMap<String, Mask>;

/// Whether the dotted `path` matches `pattern`.
///
/// The pattern is split at `.` like the path and matched segment by segment: `*` inside a
/// segment matches any run of characters within that segment (`fc*`, `*`), and a segment
/// that is exactly `**` matches any number of segments, none included. So
/// `encoder.layers.*.ffn.*.weight` matches `encoder.layers.3.ffn.fc1.weight`, and
/// `**.weight` matches every weight.
pub fn matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let s: Vec<&str> = path.split('.').collect();
    match_segments(&p, &s)
}

fn match_segments(p: &[&str], s: &[&str]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((first, rest)) if *first == "**" => {
            (0..=s.len()).any(|i| match_segments(rest, &s[i..]))
        }
        Some((first, rest)) => match s.split_first() {
            Some((seg, s_rest)) => {
                glob(first.as_bytes(), seg.as_bytes()) && match_segments(rest, s_rest)
            }
            None => false,
        },
    }
}

/// `*` matches any run of bytes; everything else matches itself.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((c, rest)) => s
            .split_first()
            .is_some_and(|(d, s_rest)| c == d && glob(rest, s_rest)),
    }
}

/// A device tensor on the host.
fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
    let shape = t.dims().to_vec();
    let data = t
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 tensor data");
    HostTensor::new(shape, data)
}

/// Float parameters by path: shapes of all, values of those a pattern selects.
struct Collect<'a, 'b> {
    path: Vec<String>,
    patterns: &'a [&'b str],
    shapes: BTreeMap<String, Vec<usize>>,
    values: TensorMap,
}

impl<B: Backend> ModuleVisitor<B> for Collect<'_, '_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let path = self.path.join(".");
        let t = param.val();
        self.shapes.insert(path.clone(), t.dims().to_vec());
        if self.patterns.iter().any(|p| matches(p, &path)) {
            self.values.insert(path, to_host(t));
        }
    }
}

/// Shapes of every float parameter, and host values of those matching `patterns`.
fn collect<B: Backend, M: Module<B>>(
    module: &M,
    patterns: &[&str],
) -> (BTreeMap<String, Vec<usize>>, TensorMap) {
    let mut c = Collect {
        path: Vec::new(),
        patterns,
        shapes: BTreeMap::new(),
        values: TensorMap::new(),
    };
    module.visit(&mut c);
    (c.shapes, c.values)
}

/// The shape of every float parameter of `module`, by path.
pub fn param_shapes<B: Backend, M: Module<B>>(module: &M) -> BTreeMap<String, Vec<usize>> {
    collect::<B, M>(module, &[]).0
}

/// The float parameters of `module` whose paths match any of `patterns` (see [`matches`]),
/// on the host.
///
/// # Errors
/// [`SparsifyError::NoMatch`] naming a pattern that matches no parameter (a typo would
/// otherwise silently sparsify nothing).
pub fn select_params<B: Backend, M: Module<B>>(
    module: &M,
    patterns: &[&str],
) -> Result<TensorMap, SparsifyError> {
    let (_, values) = collect::<B, M>(module, patterns);
    for p in patterns {
        if !values.keys().any(|path| matches(p, path)) {
            return Err(SparsifyError::NoMatch(p.to_string()));
        }
    }
    Ok(values)
}

/// Computes, with `criterion` and `config`, a mask for every float parameter of `module`
/// matching `patterns`. The criterion gets the parameter path as its name.
///
/// # Errors
/// [`SparsifyError::NoMatch`], an invalid config, or the criterion's error.
pub fn compute_masks<B: Backend, M: Module<B>, S: Sparsifier>(
    module: &M,
    patterns: &[&str],
    criterion: &S,
    config: &Config,
) -> Result<MaskMap, SparsifyError> {
    config.validate()?;
    let params = select_params::<B, M>(module, patterns)?;
    let mut masks = MaskMap::new();
    for (path, t) in params {
        let mut mask = Mask::ones(&t.shape);
        criterion.update_mask(&path, &t, config, &mut mask)?;
        masks.insert(path, mask);
    }
    Ok(masks)
}

/// Checks that every mask names a float parameter of `module` of the mask's shape.
///
/// # Errors
/// [`SparsifyError::UnknownPath`] or [`SparsifyError::Shape`].
pub fn check_masks<B: Backend, M: Module<B>>(
    module: &M,
    masks: &MaskMap,
) -> Result<(), SparsifyError> {
    let shapes = param_shapes::<B, M>(module);
    for (path, mask) in masks {
        let Some(shape) = shapes.get(path) else {
            return Err(SparsifyError::UnknownPath(path.clone()));
        };
        if shape.as_slice() != mask.shape() {
            return Err(SparsifyError::Shape {
                what: format!("mask of parameter `{path}`"),
                expected: shape.clone(),
                found: mask.shape().to_vec(),
            });
        }
    }
    Ok(())
}

struct ApplyMasks<'a> {
    path: Vec<String>,
    masks: &'a MaskMap,
}

impl<B: Backend> ModuleMapper<B> for ApplyMasks<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(mask) = self.masks.get(&self.path.join(".")) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let device = tensor.device();
        let m = Tensor::<B, D>::from_data(
            TensorData::new(mask.to_f32(), mask.shape().to_vec()),
            &device,
        );
        // A fresh leaf with the same id: no autodiff graph left behind, optimizer state
        // (keyed by id) carries on, and the trainable flag is kept.
        let masked = (tensor * m).detach().set_require_grad(require_grad);
        Param::from_mapped_value(id, masked, mapper)
    }
}

/// Multiplies every parameter named in `masks` by its mask (`w * mask`), keeping parameter
/// ids and trainability. Call it again after every optimizer step (or use
/// [`step_and_mask`]) so masked weights stay exactly zero.
///
/// # Errors
/// [`SparsifyError::UnknownPath`] or [`SparsifyError::Shape`], checked before any parameter
/// is touched; the module is dropped then, so call [`check_masks`] first if you need it
/// back on error.
pub fn apply_masks<B: Backend, M: Module<B>>(
    module: M,
    masks: &MaskMap,
) -> Result<M, SparsifyError> {
    check_masks::<B, M>(&module, masks)?;
    Ok(module.map(&mut ApplyMasks {
        path: Vec::new(),
        masks,
    }))
}

/// One optimizer step followed by [`apply_masks`], so masked weights stay zero in training
/// (an optimizer moves them: their gradients, and Adam's moments, are not zero).
///
/// # Errors
/// As [`apply_masks`], checked before the step (the module is lost only on error).
pub fn step_and_mask<B, M, O>(
    optimizer: &mut O,
    lr: f64,
    module: M,
    grads: GradientsParams,
    masks: &MaskMap,
) -> Result<M, SparsifyError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    check_masks::<B, M>(&module, masks)?;
    let module = optimizer.step(lr, module, grads);
    apply_masks::<B, M>(module, masks)
}

/// A criterion, a config and parameter patterns, with the masks they last produced: the
/// module-side counterpart of [`crate::DataSparsifier`].
///
/// ```text
/// let mut sp = ModuleSparsifier::new(NM::along_columns(2, 4)?, Config::default(), &["**.weight"])?;
/// sp.step(&model)?;                  // masks from the current weights
/// model = sp.apply(model)?;          // zero them
/// // training: model = step_and_mask(&mut optim, lr, model, grads, sp.masks())?;
/// let model = sp.squash(model)?;     // masks applied once more and forgotten
/// ```
#[derive(Debug, Clone)]
pub struct ModuleSparsifier<S: Sparsifier> {
    criterion: S,
    config: Config,
    patterns: Vec<String>,
    masks: MaskMap,
}

impl<S: Sparsifier> ModuleSparsifier<S> {
    /// A sparsifier of the parameters matching `patterns` (see [`matches`]); no masks yet.
    ///
    /// # Errors
    /// An invalid config.
    pub fn new(criterion: S, config: Config, patterns: &[&str]) -> Result<Self, SparsifyError> {
        config.validate()?;
        Ok(Self {
            criterion,
            config,
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            masks: MaskMap::new(),
        })
    }

    /// The criterion.
    pub fn criterion(&self) -> &S {
        &self.criterion
    }

    /// The criterion, to change.
    pub fn criterion_mut(&mut self) -> &mut S {
        &mut self.criterion
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Changes the sparsity level used by the next [`ModuleSparsifier::step`].
    ///
    /// # Errors
    /// [`SparsifyError::BadSparsity`] outside `[0, 1]`.
    pub fn set_sparsity_level(&mut self, level: f64) -> Result<(), SparsifyError> {
        if !(0.0..=1.0).contains(&level) {
            return Err(SparsifyError::BadSparsity(level));
        }
        self.config.sparsity_level = level;
        Ok(())
    }

    /// The patterns.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Recomputes the masks from the module's current weights.
    ///
    /// # Errors
    /// As [`compute_masks`]; the old masks stay on error.
    pub fn step<B: Backend, M: Module<B>>(
        &mut self,
        module: &M,
    ) -> Result<&MaskMap, SparsifyError> {
        let patterns: Vec<&str> = self.patterns.iter().map(String::as_str).collect();
        self.masks = compute_masks::<B, M, S>(module, &patterns, &self.criterion, &self.config)?;
        Ok(&self.masks)
    }

    /// The masks, by parameter path.
    pub fn masks(&self) -> &MaskMap {
        &self.masks
    }

    /// Multiplies the masks into `module` (again after every optimizer step).
    pub fn apply<B: Backend, M: Module<B>>(&self, module: M) -> Result<M, SparsifyError> {
        apply_masks::<B, M>(module, &self.masks)
    }

    /// Applies the masks a last time and forgets them: the result is the plain module with
    /// the masked weights zero.
    pub fn squash<B: Backend, M: Module<B>>(&mut self, module: M) -> Result<M, SparsifyError> {
        let module = apply_masks::<B, M>(module, &self.masks)?;
        self.masks.clear();
        Ok(module)
    }
}
