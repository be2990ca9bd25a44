//! `GatedModel`: a `Transformer` with gates on its heads (and optionally FFN neurons and
//! hidden dimensions), the seed-004 API (enable with a penalty, read gate values, read or
//! fix masks, disable), and `prune`: harden, then remove closed units for real.

use std::collections::BTreeMap;

use burn::prelude::*;
use shears_gates::{Draw, GateConfig, GateError, GateKind, GateSet, Harden, Kept, Penalty};
use shears_layers::{Masks, ModelInput, ModelOutput, PruneError, Transformer};

/// Which units get gates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateSpec {
    /// Gate every attention head (`layers.L.heads`).
    pub heads: bool,
    /// Gate every feed-forward neuron (`layers.L.ffn`).
    pub neurons: bool,
    /// Gate the hidden dimensions (`hidden`).
    pub hidden: bool,
    /// Gate whole layers: one gate per layer (group `layers`) that scales every head and
    /// every neuron of its layer; a closed layer gate removes both blocks of the layer
    /// (their output biases stay, as for any headless or neuron-less layer).
    pub layers: bool,
    /// Gate settings.
    pub gate: GateConfig,
}

impl Default for GateSpec {
    fn default() -> Self {
        Self {
            heads: true,
            neurons: false,
            hidden: false,
            layers: false,
            gate: GateConfig::default(),
        }
    }
}

/// Errors of the pruners.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrunerError {
    /// Bad gate settings or hardening request.
    #[error(transparent)]
    Gate(#[from] GateError),
    /// The removal failed.
    #[error(transparent)]
    Prune(#[from] PruneError),
    /// The spec gates nothing.
    #[error("the gate spec gates no units (enable heads, neurons, hidden or layers)")]
    NothingGated,
    /// A factorization failed or was asked something impossible.
    #[error(transparent)]
    Factorize(#[from] shears_factorize::FactorizeError),
    /// Weights could not be moved into the new model.
    #[error(transparent)]
    Load(#[from] shears_layers::LoadError),
    /// A projection has no calibration statistics.
    #[error("projection `{path}` saw no calibration inputs: observe at least one batch first")]
    NotCalibrated {
        /// The projection.
        path: String,
    },
    /// A rank was given for a projection the model does not have.
    #[error("the model has no projection `{path}` (projections: {known})")]
    UnknownProjection {
        /// The path given.
        path: String,
        /// The paths there are.
        known: String,
    },
}

/// A model with gates. Build it with [`GatedModel::new`] (the seed's `apply_gates`), train
/// it with [`GatedModel::forward`] + [`GatedModel::penalty`], then [`GatedModel::prune`]
/// (harden and remove) or [`GatedModel::into_model`] (drop the gates, keep every unit).
#[derive(Module, Debug)]
pub struct GatedModel<B: Backend> {
    /// The plain model (its weights are trained too).
    pub model: Transformer<B>,
    /// One gate group per gated space.
    pub gates: GateSet<B>,
}

/// What hardening decided, for reports.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneReport {
    /// Units kept per gated group, as the gates decided.
    pub kept: Vec<Kept>,
    /// Spaces the gates would have emptied below what the model allows (the hidden space,
    /// or the heads of a user block that cannot run without heads); the most open unit of
    /// each was kept.
    pub rescued: Vec<String>,
    /// Layers left without attention heads (their attention block is gone, its output
    /// bias and the residual path stay).
    pub headless_layers: Vec<usize>,
    /// Layers left without feed-forward neurons.
    pub neuronless_layers: Vec<usize>,
}

/// Hardened gates turned into units to keep.
struct Decision {
    /// What the gates decided, per group.
    kept: Vec<Kept>,
    /// The units to keep per space, after whole-layer gates and minimum sizes.
    keeps: BTreeMap<String, Vec<usize>>,
    /// Spaces kept above what the gates decided.
    rescued: Vec<String>,
}

/// The name of the whole-layer gate group.
pub const LAYERS_GROUP: &str = "layers";

/// The layer of a per-layer space name (`layers.3.heads` -> 3).
fn layer_of(space: &str) -> Option<usize> {
    space
        .strip_prefix("layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

impl<B: Backend> GatedModel<B> {
    /// Wraps `model` with fresh gates on the units `spec` selects (weights are moved, not
    /// copied).
    pub fn new(
        model: Transformer<B>,
        spec: &GateSpec,
        device: &B::Device,
    ) -> Result<Self, PrunerError> {
        if !(spec.heads || spec.neurons || spec.hidden || spec.layers) {
            return Err(PrunerError::NothingGated);
        }
        let mut gates = GateSet::default();
        let config = model.config().clone();
        for (l, lc) in config.layers.iter().enumerate() {
            // A block already removed (0 heads or 0 neurons) has nothing left to gate.
            if spec.heads && lc.n_heads > 0 {
                gates.add(
                    format!("layers.{l}.heads"),
                    GateKind::Heads,
                    lc.n_heads,
                    &spec.gate,
                    device,
                )?;
            }
            if spec.neurons && lc.d_ff > 0 {
                gates.add(
                    format!("layers.{l}.ffn"),
                    GateKind::Neurons,
                    lc.d_ff,
                    &spec.gate,
                    device,
                )?;
            }
        }
        if spec.hidden {
            gates.add(
                "hidden",
                GateKind::Hidden,
                config.d_model,
                &spec.gate,
                device,
            )?;
        }
        if spec.layers {
            gates.add(
                LAYERS_GROUP,
                GateKind::Layers,
                config.n_layers(),
                &spec.gate,
                device,
            )?;
        }
        if gates.groups.is_empty() {
            return Err(PrunerError::NothingGated);
        }
        Ok(Self { model, gates })
    }

    /// The masks the gates give: noisy samples for [`Draw::Sample`] (group `i` draws with
    /// `draw.for_group(i)`), deterministic values for [`Draw::Eval`]. Heads are `[n_layers, max_heads]` (padding columns, and layers without a
    /// heads group, are 1); a whole-layer gate multiplies its layer's heads and neurons.
    pub fn masks(&self, draw: Draw) -> Masks<B> {
        let config = self.model.config();
        let device = self.model.devices()[0].clone();
        let n_layers = config.n_layers();
        let max = config.max_heads();
        let mut heads: Vec<Option<Tensor<B, 1>>> = vec![None; n_layers];
        let mut ffn: Vec<Option<Tensor<B, 1>>> = vec![None; n_layers];
        let mut hidden = None;
        let mut layer_gates = None;
        for (i, g) in self.gates.groups.iter().enumerate() {
            let v = g.gate.gates(draw.for_group(i));
            match (g.kind, layer_of(&g.space)) {
                (GateKind::Heads, Some(l)) if l < n_layers => heads[l] = Some(v),
                (GateKind::Neurons, Some(l)) if l < n_layers => ffn[l] = Some(v),
                (GateKind::Hidden, _) => hidden = Some(v),
                (GateKind::Layers, _) => layer_gates = Some(v),
                (kind, _) => panic!(
                    "gate group `{}` ({kind:?}) names no layer of this model",
                    g.space
                ),
            }
        }
        let any_heads = layer_gates.is_some() || heads.iter().any(Option::is_some);
        let any_ffn = layer_gates.is_some() || ffn.iter().any(Option::is_some);
        let mut head_rows = Vec::with_capacity(n_layers);
        let mut ffn_masks = Vec::with_capacity(n_layers);
        for (l, lc) in config.layers.iter().enumerate() {
            let scale = layer_gates
                .as_ref()
                .map(|z: &Tensor<B, 1>| z.clone().narrow(0, l, 1));
            if any_heads && max > 0 {
                let n = lc.n_heads;
                let mut row = match heads[l].take() {
                    Some(h) if n < max => Tensor::cat(vec![h, Tensor::ones([max - n], &device)], 0),
                    Some(h) => h,
                    None => Tensor::ones([max], &device),
                };
                if let Some(s) = &scale {
                    row = row * s.clone();
                }
                head_rows.push(row.reshape([1, max]));
            }
            if any_ffn {
                let mut m = ffn[l]
                    .take()
                    .unwrap_or_else(|| Tensor::ones([lc.d_ff], &device));
                if let Some(s) = &scale {
                    m = m * s.clone();
                }
                ffn_masks.push(m);
            }
        }
        Masks {
            heads: (!head_rows.is_empty()).then(|| Tensor::cat(head_rows, 0)),
            ffn: (!ffn_masks.is_empty()).then_some(ffn_masks),
            hidden,
        }
    }

    /// The seed's `get_gate_values`: deterministic head gate values `[n_layers, max_heads]`.
    pub fn gate_values(&self) -> Option<Tensor<B, 2>> {
        self.masks(Draw::Eval).heads
    }

    /// Forward pass with the gates as masks (any masks in `input` are replaced).
    pub fn forward(&self, input: ModelInput<B>, draw: Draw) -> ModelOutput<B> {
        self.model.forward(input.with_masks(self.masks(draw)))
    }

    /// The penalty term to add to the loss at `step`, `[1]`.
    pub fn penalty(&self, penalty: &Penalty, step: usize) -> Tensor<B, 1> {
        match penalty {
            Penalty::Fixed { strength } => self.gates.l0_penalty(*strength),
            Penalty::Lagrangian(l) => l.term(self.gates.expected_sparsity(), step),
        }
    }

    /// Expected fraction of gated units that are closed.
    pub fn expected_sparsity(&self) -> f64 {
        self.gates.expected_sparsity().into_scalar().elem::<f64>()
    }

    /// Hard 0/1 masks from hardening: exactly what [`GatedModel::prune`] will remove.
    pub fn hard_masks(&self, harden: Harden) -> Result<Masks<B>, PrunerError> {
        let keeps = self.decide(harden)?.keeps;
        let config = self.model.config();
        let device = self.model.devices()[0].clone();
        let mask = |n: usize, space: &str| -> Option<Tensor<B, 1>> {
            let keep = keeps.get(space)?;
            let v: Vec<f32> = (0..n)
                .map(|i| if keep.contains(&i) { 1.0 } else { 0.0 })
                .collect();
            Some(Tensor::from_data(TensorData::new(v, [n]), &device))
        };
        let max = config.max_heads();
        let mut masks = Masks::default();
        let layers = config.layers.iter().enumerate();
        if keeps.keys().any(|k| k.ends_with(".heads")) && max > 0 {
            let rows = layers
                .clone()
                .map(|(l, lc)| {
                    let ones = |n| Tensor::ones([n], &device);
                    let row = match mask(lc.n_heads, &format!("layers.{l}.heads")) {
                        Some(m) if lc.n_heads < max => {
                            Tensor::cat(vec![m, ones(max - lc.n_heads)], 0)
                        }
                        Some(m) => m,
                        None => ones(max),
                    };
                    row.reshape([1, max])
                })
                .collect();
            masks.heads = Some(Tensor::cat(rows, 0));
        }
        if keeps.keys().any(|k| k.ends_with(".ffn")) {
            masks.ffn = Some(
                layers
                    .map(|(l, lc)| {
                        mask(lc.d_ff, &format!("layers.{l}.ffn"))
                            .unwrap_or_else(|| Tensor::ones([lc.d_ff], &device))
                    })
                    .collect(),
            );
        }
        masks.hidden = mask(config.d_model, "hidden");
        Ok(masks)
    }

    /// The units to keep of every space the gates touch, after the layer gates and the
    /// model's minimum sizes are applied, and the spaces that had to be rescued.
    fn decide(&self, harden: Harden) -> Result<Decision, PrunerError> {
        let kept = self.gates.harden(harden)?;
        let config = self.model.config();
        let registry = Transformer::<B>::registry(config);
        let mut keeps: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut dropped_layers = Vec::new();
        for k in &kept {
            if k.kind == GateKind::Layers {
                dropped_layers = (0..k.total).filter(|l| !k.keep.contains(l)).collect();
            } else {
                keeps.insert(k.space.clone(), k.keep.clone());
            }
        }
        for l in dropped_layers {
            keeps.insert(format!("layers.{l}.heads"), Vec::new());
            keeps.insert(format!("layers.{l}.ffn"), Vec::new());
        }
        let mut rescued = Vec::new();
        for (space, keep) in &mut keeps {
            let min = registry.space(space).map_err(PruneError::from)?.min_units();
            if keep.len() < min {
                // Keep the most open units rather than break the model.
                let g = self
                    .gates
                    .group(space)
                    .expect("only gated spaces fall short");
                let best = g.gate.harden_count(min)?;
                tracing::warn!(%space, units = ?best, "gates closed more units than the model allows; keeping the most open");
                *keep = best;
                rescued.push(space.clone());
            }
        }
        Ok(Decision {
            kept,
            keeps,
            rescued,
        })
    }

    /// Hardens the gates and removes every closed unit: a plain, smaller model (no gates)
    /// whose config lists the new per-layer sizes, plus what was decided. A layer whose
    /// heads (or neurons) all close loses that block; its output bias and the residual path
    /// stay, which is exactly what the masked model computes.
    pub fn prune(self, harden: Harden) -> Result<(Transformer<B>, PruneReport), PrunerError> {
        let Decision {
            kept,
            keeps,
            rescued,
        } = self.decide(harden)?;
        let mut model = self.model;
        for (space, keep) in &keeps {
            model = model.keep(space, keep)?;
        }
        let layers = &model.config().layers;
        let headless_layers = (0..layers.len())
            .filter(|&l| layers[l].n_heads == 0)
            .collect();
        let neuronless_layers = (0..layers.len()).filter(|&l| layers[l].d_ff == 0).collect();
        Ok((
            model,
            PruneReport {
                kept,
                rescued,
                headless_layers,
                neuronless_layers,
            },
        ))
    }

    /// Drops the gates (the seed's `remove_gates`) and returns the model with every unit.
    pub fn into_model(self) -> Transformer<B> {
        self.model
    }
}
