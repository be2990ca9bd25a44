//! `GatedModel`: a `Transformer` with gates on its heads (and optionally FFN neurons and
//! hidden dimensions), the seed-004 API (enable with a penalty, read gate values, read or
//! fix masks, disable), and `prune`: harden, then remove closed units for real.

use burn::prelude::*;
use shears_gates::{GateConfig, GateError, GateKind, GateSet, Harden, Kept, Penalty};
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
    /// Gate settings.
    pub gate: GateConfig,
}

impl Default for GateSpec {
    fn default() -> Self {
        Self {
            heads: true,
            neurons: false,
            hidden: false,
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
    #[error("the gate spec gates no units (enable heads, neurons or hidden)")]
    NothingGated,
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
    /// Units kept per gated space.
    pub kept: Vec<Kept>,
    /// Layers whose heads all closed; one head (the most open) was kept in each, since this
    /// model type cannot yet drop a whole attention block.
    pub rescued_layers: Vec<usize>,
}

impl<B: Backend> GatedModel<B> {
    /// Wraps `model` with fresh gates on the units `spec` selects (weights are moved, not
    /// copied).
    pub fn new(
        model: Transformer<B>,
        spec: &GateSpec,
        device: &B::Device,
    ) -> Result<Self, PrunerError> {
        if !(spec.heads || spec.neurons || spec.hidden) {
            return Err(PrunerError::NothingGated);
        }
        let mut gates = GateSet::default();
        let config = model.config().clone();
        for (l, lc) in config.layers.iter().enumerate() {
            if spec.heads {
                gates.add(
                    format!("layers.{l}.heads"),
                    GateKind::Heads,
                    lc.n_heads,
                    &spec.gate,
                    device,
                )?;
            }
            if spec.neurons {
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
        Ok(Self { model, gates })
    }

    /// The masks the gates give: noisy samples when `training`, deterministic values
    /// otherwise. Heads are `[n_layers, max_heads]` (padding columns are 1).
    pub fn masks(&self, training: bool) -> Masks<B> {
        let config = self.model.config();
        let device = self.model.devices()[0].clone();
        let max = config.max_heads();
        let mut heads = Vec::new();
        let mut ffn = Vec::new();
        let mut hidden = None;
        for g in &self.gates.groups {
            let z = g.gate.gates(training);
            match g.kind {
                GateKind::Heads => {
                    let n = z.dims()[0];
                    let row = if n < max {
                        Tensor::cat(vec![z, Tensor::ones([max - n], &device)], 0)
                    } else {
                        z
                    };
                    heads.push(row.reshape([1, max]));
                }
                GateKind::Neurons => ffn.push(z),
                GateKind::Hidden => hidden = Some(z),
                GateKind::Layers => {}
            }
        }
        Masks {
            heads: (!heads.is_empty()).then(|| Tensor::cat(heads, 0)),
            ffn: (!ffn.is_empty()).then_some(ffn),
            hidden,
        }
    }

    /// The seed's `get_gate_values`: deterministic head gate values `[n_layers, max_heads]`.
    pub fn gate_values(&self) -> Option<Tensor<B, 2>> {
        self.masks(false).heads
    }

    /// Forward pass with the gates as masks (any masks in `input` are replaced).
    pub fn forward(&self, input: ModelInput<B>, training: bool) -> ModelOutput<B> {
        self.model.forward(input.with_masks(self.masks(training)))
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

    /// Hard 0/1 masks from hardening (what [`GatedModel::prune`] will remove).
    pub fn hard_masks(&self, harden: Harden) -> Result<Masks<B>, PrunerError> {
        let (kept, _) = self.decide(harden)?;
        let config = self.model.config();
        let device = self.model.devices()[0].clone();
        let ones = |n: usize, keep: &[usize]| -> Tensor<B, 1> {
            let v: Vec<f32> = (0..n)
                .map(|i| if keep.contains(&i) { 1.0 } else { 0.0 })
                .collect();
            Tensor::from_data(TensorData::new(v, [n]), &device)
        };
        let max = config.max_heads();
        let mut masks = Masks::default();
        let mut heads = Vec::new();
        let mut ffn = Vec::new();
        for k in &kept {
            match k.kind {
                GateKind::Heads => {
                    let mut row = ones(k.total, &k.keep);
                    if k.total < max {
                        row = Tensor::cat(vec![row, Tensor::ones([max - k.total], &device)], 0);
                    }
                    heads.push(row.reshape([1, max]));
                }
                GateKind::Neurons => ffn.push(ones(k.total, &k.keep)),
                GateKind::Hidden => masks.hidden = Some(ones(k.total, &k.keep)),
                GateKind::Layers => {}
            }
        }
        masks.heads = (!heads.is_empty()).then(|| Tensor::cat(heads, 0));
        masks.ffn = (!ffn.is_empty()).then_some(ffn);
        Ok(masks)
    }

    fn decide(&self, harden: Harden) -> Result<(Vec<Kept>, Vec<usize>), PrunerError> {
        let mut kept = self.gates.harden(harden)?;
        let mut rescued = Vec::new();
        for (k, g) in kept.iter_mut().zip(&self.gates.groups) {
            if k.keep.is_empty() {
                // Keep the most open unit rather than break the model.
                let best = g.gate.harden_count(1)?;
                if let Some(l) = k
                    .space
                    .strip_prefix("layers.")
                    .and_then(|r| r.split('.').next())
                {
                    rescued.push(l.parse().unwrap_or(usize::MAX));
                }
                tracing::warn!(space = %k.space, unit = best[0], "every gate closed; keeping the most open unit");
                k.keep = best;
            }
        }
        Ok((kept, rescued))
    }

    /// Hardens the gates and removes every closed unit: a plain, smaller model (no gates)
    /// whose config lists the new per-layer sizes, plus what was decided.
    pub fn prune(self, harden: Harden) -> Result<(Transformer<B>, PruneReport), PrunerError> {
        let (kept, rescued_layers) = self.decide(harden)?;
        let mut model = self.model;
        for k in &kept {
            model = model.keep(&k.space, &k.keep)?;
        }
        Ok((
            model,
            PruneReport {
                kept,
                rescued_layers,
            },
        ))
    }

    /// Drops the gates (the seed's `remove_gates`) and returns the model with every unit.
    pub fn into_model(self) -> Transformer<B> {
        self.model
    }
}
