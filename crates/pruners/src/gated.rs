//! `GatedModel`: a `Transformer` with gates on its heads (and optionally FFN neurons and
//! hidden dimensions), the seed-004 API (enable with a penalty, read gate values, read or
//! fix masks, disable), and `prune`: harden, then remove closed units for real.

use std::collections::BTreeMap;

use burn::prelude::*;
use shears_gates::{Draw, GateConfig, GateError, GateSet, Harden, Kept, Penalty};
use shears_layers::{Masks, ModelInput, ModelOutput, PruneError, SpaceName, Transformer};

use crate::SizeMeasure;

/// Which units get gates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateSpec {
    /// Gate every attention head ([`SpaceName::Heads`]).
    pub heads: bool,
    /// Gate every feed-forward neuron ([`SpaceName::Ffn`]).
    pub neurons: bool,
    /// Gate the hidden dimensions ([`SpaceName::Hidden`]).
    pub hidden: bool,
    /// Gate each layer's whole attention block ([`SpaceName::AttentionBlock`], CoFi's MHA
    /// gate): one gate per layer that scales every head; closed, it removes every head
    /// (the output bias stays, as in any headless layer).
    pub attention_blocks: bool,
    /// Gate each layer's whole feed-forward block ([`SpaceName::FfnBlock`], CoFi's MLP
    /// gate): one gate per layer that scales every neuron; closed, it removes them all.
    pub ffn_blocks: bool,
    /// Gate settings.
    pub gate: GateConfig,
}

impl Default for GateSpec {
    fn default() -> Self {
        Self {
            heads: true,
            neurons: false,
            hidden: false,
            attention_blocks: false,
            ffn_blocks: false,
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
    /// A size target that closing every gated unit does not reach: the gated structures
    /// hold less of the size than the target removes.
    #[error(
        "a size target of {target} is out of reach: closing every gated unit removes at most {reachable:.4} of the size; gate more structures or lower the target"
    )]
    TargetOutOfReach {
        /// The fraction of the size asked to go.
        target: f64,
        /// The largest fraction the gated structures can remove.
        reachable: f64,
    },
    /// A measured latency curve that cannot be used.
    #[error("latency curve of layer {layer}: {message}")]
    LatencyCurve {
        /// The layer.
        layer: usize,
        /// What is wrong.
        message: String,
    },
    /// A width multiple of 0 was asked for.
    #[error("round_to = {0}: widths are kept at multiples of at least 1 unit")]
    RoundTo(usize),
    /// The spec gates nothing.
    #[error(
        "the gate spec gates no units (enable heads, neurons, hidden, attention_blocks or ffn_blocks)"
    )]
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
    /// Units kept per pruned space (ascending), after block gates and minimum sizes: what
    /// the pruned model really has of the original. Spaces not listed were not pruned.
    pub keeps: BTreeMap<SpaceName, Vec<usize>>,
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
    /// The units to keep per space, after block gates and minimum sizes.
    keeps: BTreeMap<SpaceName, Vec<usize>>,
    /// Spaces kept above what the gates decided.
    rescued: Vec<String>,
}

impl<B: Backend> GatedModel<B> {
    /// Wraps `model` with fresh gates on the units `spec` selects (weights are moved, not
    /// copied).
    pub fn new(
        model: Transformer<B>,
        spec: &GateSpec,
        device: &B::Device,
    ) -> Result<Self, PrunerError> {
        if !(spec.heads || spec.neurons || spec.hidden || spec.attention_blocks || spec.ffn_blocks)
        {
            return Err(PrunerError::NothingGated);
        }
        let mut gates = GateSet::default();
        let config = model.config().clone();
        let mut add =
            |name: SpaceName, n: usize| gates.add(name.to_string(), n, &spec.gate, device);
        for (l, lc) in config.layers.iter().enumerate() {
            // A block already removed (0 heads or 0 neurons) has nothing left to gate.
            if lc.n_heads > 0 {
                if spec.heads {
                    add(SpaceName::Heads(l), lc.n_heads)?;
                }
                if spec.attention_blocks {
                    add(SpaceName::AttentionBlock(l), 1)?;
                }
            }
            if lc.d_ff > 0 {
                if spec.neurons {
                    add(SpaceName::Ffn(l), lc.d_ff)?;
                }
                if spec.ffn_blocks {
                    add(SpaceName::FfnBlock(l), 1)?;
                }
            }
        }
        if spec.hidden {
            add(SpaceName::Hidden, config.d_model)?;
        }
        if gates.groups.is_empty() {
            return Err(PrunerError::NothingGated);
        }
        Ok(Self { model, gates })
    }

    /// The masks the gates give: noisy samples for [`Draw::Sample`] (group `i` draws with
    /// `draw.for_group(i)`), deterministic values for [`Draw::Eval`]. Heads are `[n_layers, max_heads]` (padding columns, and layers without a
    /// heads group, are 1); a block gate multiplies its layer's heads (neurons).
    pub fn masks(&self, draw: Draw) -> Masks<B> {
        let config = self.model.config();
        let device = self.model.devices()[0].clone();
        let n_layers = config.n_layers();
        let max = config.max_heads();
        let mut heads: Vec<Option<Tensor<B, 1>>> = vec![None; n_layers];
        let mut ffn: Vec<Option<Tensor<B, 1>>> = vec![None; n_layers];
        let mut attention_block: Vec<Option<Tensor<B, 1>>> = vec![None; n_layers];
        let mut ffn_block: Vec<Option<Tensor<B, 1>>> = vec![None; n_layers];
        let mut hidden = None;
        for (i, g) in self.gates.groups.iter().enumerate() {
            let v = g.gate.gates(draw.for_group(i));
            let name = SpaceName::parse(&g.space);
            let slot = match name {
                SpaceName::Heads(l) if l < n_layers => &mut heads[l],
                SpaceName::Ffn(l) if l < n_layers => &mut ffn[l],
                SpaceName::AttentionBlock(l) if l < n_layers => &mut attention_block[l],
                SpaceName::FfnBlock(l) if l < n_layers => &mut ffn_block[l],
                SpaceName::Hidden => &mut hidden,
                _ => panic!(
                    "gate group `{}` names no gateable structure of this model",
                    g.space
                ),
            };
            *slot = Some(v);
        }
        let any = |v: &[Option<Tensor<B, 1>>]| v.iter().any(Option::is_some);
        let any_heads = any(&heads) || any(&attention_block);
        let any_ffn = any(&ffn) || any(&ffn_block);
        let mut head_rows = Vec::with_capacity(n_layers);
        let mut ffn_masks = Vec::with_capacity(n_layers);
        for (l, lc) in config.layers.iter().enumerate() {
            if any_heads && max > 0 {
                let n = lc.n_heads;
                let mut row = match heads[l].take() {
                    Some(h) if n < max => Tensor::cat(vec![h, Tensor::ones([max - n], &device)], 0),
                    Some(h) => h,
                    None => Tensor::ones([max], &device),
                };
                if let Some(s) = attention_block[l].take() {
                    row = row * s;
                }
                head_rows.push(row.reshape([1, max]));
            }
            if any_ffn {
                let mut m = ffn[l]
                    .take()
                    .unwrap_or_else(|| Tensor::ones([lc.d_ff], &device));
                if let Some(s) = ffn_block[l].take() {
                    m = m * s;
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
        let mask = |n: usize, space: SpaceName| -> Option<Tensor<B, 1>> {
            let keep = keeps.get(&space)?;
            let v: Vec<f32> = (0..n)
                .map(|i| if keep.contains(&i) { 1.0 } else { 0.0 })
                .collect();
            Some(Tensor::from_data(TensorData::new(v, [n]), &device))
        };
        let max = config.max_heads();
        let mut masks = Masks::default();
        let layers = config.layers.iter().enumerate();
        if keeps.keys().any(|k| matches!(k, SpaceName::Heads(_))) && max > 0 {
            let rows = layers
                .clone()
                .map(|(l, lc)| {
                    let ones = |n| Tensor::ones([n], &device);
                    let row = match mask(lc.n_heads, SpaceName::Heads(l)) {
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
        if keeps.keys().any(|k| matches!(k, SpaceName::Ffn(_))) {
            masks.ffn = Some(
                layers
                    .map(|(l, lc)| {
                        mask(lc.d_ff, SpaceName::Ffn(l))
                            .unwrap_or_else(|| Tensor::ones([lc.d_ff], &device))
                    })
                    .collect(),
            );
        }
        masks.hidden = mask(config.d_model, SpaceName::Hidden);
        Ok(masks)
    }

    /// The units to keep of every space the gates touch, after the block gates and the
    /// model's minimum sizes are applied, and the spaces that had to be rescued.
    fn decide(&self, harden: Harden) -> Result<Decision, PrunerError> {
        self.decide_kept(self.gates.harden(harden)?)
    }

    /// [`GatedModel::decide`] from units to keep per gate group.
    fn decide_kept(&self, kept: Vec<Kept>) -> Result<Decision, PrunerError> {
        let config = self.model.config();
        let registry = Transformer::<B>::registry(config);
        let mut keeps: BTreeMap<SpaceName, Vec<usize>> = BTreeMap::new();
        let mut closed_blocks = Vec::new();
        for k in &kept {
            match SpaceName::parse(&k.space) {
                SpaceName::AttentionBlock(l) if k.keep.is_empty() => {
                    closed_blocks.push(SpaceName::Heads(l))
                }
                SpaceName::FfnBlock(l) if k.keep.is_empty() => {
                    closed_blocks.push(SpaceName::Ffn(l))
                }
                SpaceName::AttentionBlock(_) | SpaceName::FfnBlock(_) => {}
                name => {
                    keeps.insert(name, k.keep.clone());
                }
            }
        }
        // A closed block removes every unit of its space, whatever the unit gates say.
        for space in closed_blocks {
            keeps.insert(space, Vec::new());
        }
        let mut rescued = Vec::new();
        for (space, keep) in &mut keeps {
            let name = space.to_string();
            let min = registry.space(&name).map_err(PruneError::from)?.min_units();
            if keep.len() < min {
                // Keep the most open units rather than break the model (the first ones when
                // only a block gate closed the space).
                let best = match self.gates.group(&name) {
                    Some(g) => g.gate.harden_count(min)?,
                    None => (0..min).collect(),
                };
                tracing::warn!(space = %name, units = ?best, "gates closed more units than the model allows; keeping the most open");
                *keep = best;
                rescued.push(name);
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
        let decision = self.decide(harden)?;
        self.remove(decision)
    }

    /// [`GatedModel::prune`] with [`GatedModel::harden_to_size`]: removes at least `target`
    /// of the size `measure` counts (before the model's minimum sizes are applied), FFN and
    /// hidden widths at multiples of `round_to`.
    pub fn prune_to_size(
        self,
        measure: SizeMeasure,
        target: f64,
        round_to: usize,
    ) -> Result<(Transformer<B>, PruneReport), PrunerError> {
        let decision = self.decide_kept(self.harden_to_size(measure, target, round_to)?)?;
        self.remove(decision)
    }

    fn remove(self, decision: Decision) -> Result<(Transformer<B>, PruneReport), PrunerError> {
        let Decision {
            kept,
            keeps,
            rescued,
        } = decision;
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
                keeps,
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
