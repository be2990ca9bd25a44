//! The expected size of a gated model, for size targets: CoFi's expected parameter count
//! (Xia et al. 2022, <https://arxiv.org/abs/2204.00408>, §3.2), and the same for FLOPs.
//!
//! Every gate is open with probability `P(z ≠ 0)`, independently of the others, so the
//! expected number of open units of a space is the sum of its gates' open probabilities and
//! the expectation of a product of counts from different spaces is the product of their
//! expectations. A layer's attention width is `E[heads] · P(attention block open) · d_head`,
//! its FFN width `E[neurons] · P(FFN block open)`, and every projection's size is a
//! polynomial in these widths and `E[hidden]`: a head's cost shrinks with the hidden
//! dimensions kept, and a block gate multiplies all its units. With every `P(z ≠ 0)` at 0 or
//! 1 the expectation is exactly the size of the model that pruning the closed units gives
//! ([`SizeMeasure::of`] of its config).

use std::collections::BTreeMap;

use burn::prelude::*;
use shears_layers::{ModelConfig, SpaceName};

use crate::GatedModel;

/// What a size target counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeMeasure {
    /// Parameters of the layer stack ([`ModelConfig::layer_params`]).
    Params,
    /// FLOPs per token of the layer stack at sequence length `seq`
    /// ([`ModelConfig::flops_per_token`]).
    Flops {
        /// Sequence length.
        seq: usize,
    },
}

impl SizeMeasure {
    /// The size of the model `config` describes.
    pub fn of(&self, config: &ModelConfig) -> usize {
        match *self {
            SizeMeasure::Params => config.layer_params(),
            SizeMeasure::Flops { seq } => config.flops_per_token(seq),
        }
    }
}

impl<B: Backend> GatedModel<B> {
    /// The expected size under the gates' open probabilities (see the module docs), `[1]`,
    /// differentiable in every `log α`.
    pub fn expected_size(&self, measure: SizeMeasure) -> Tensor<B, 1> {
        let config = self.model.config();
        let device = self.model.devices()[0].clone();
        let constant = |v: usize| Tensor::<B, 1>::from_floats([v as f32], &device);
        let open: BTreeMap<SpaceName, Tensor<B, 1>> = self
            .gates
            .groups
            .iter()
            .map(|g| (SpaceName::parse(&g.space), g.gate.p_open().sum()))
            .collect();
        let count = |name: SpaceName, all: usize| open.get(&name).cloned().unwrap_or(constant(all));
        let scaled = |units: Tensor<B, 1>, block: SpaceName| match open.get(&block) {
            Some(p) => units * p.clone(),
            None => units,
        };
        let d = count(SpaceName::Hidden, config.d_model);
        let mut total = constant(0);
        for (l, lc) in config.layers.iter().enumerate() {
            let heads = scaled(
                count(SpaceName::Heads(l), lc.n_heads),
                SpaceName::AttentionBlock(l),
            );
            let attn = heads * lc.d_head as f32;
            let ffn = scaled(count(SpaceName::Ffn(l), lc.d_ff), SpaceName::FfnBlock(l));
            // (projection, its input width, its output width), as `projection_dims` has them.
            let projections = [
                ("attention.query", d.clone(), attn.clone()),
                ("attention.key", d.clone(), attn.clone()),
                ("attention.value", d.clone(), attn.clone()),
                ("attention.output", attn.clone(), d.clone()),
                ("ffn.up", d.clone(), ffn.clone()),
                ("ffn.down", ffn, d.clone()),
            ];
            for (name, i, o) in projections {
                let macs = match lc.rank(name) {
                    Some(r) => (i.clone() + o.clone()) * r as f32,
                    None => i.clone() * o.clone(),
                };
                total = total
                    + match measure {
                        // Weights plus the output bias, which stays when the block goes.
                        SizeMeasure::Params => macs + o,
                        SizeMeasure::Flops { .. } => macs * 2.0,
                    };
            }
            total = total
                + match measure {
                    SizeMeasure::Params => d.clone() * 4.0, // two LayerNorms
                    // Attention scores and weighted sums.
                    SizeMeasure::Flops { seq } => attn * (4 * seq) as f32,
                };
        }
        total
    }

    /// The expected fraction of the size removed, `1 - expected_size / size`, `[1]`,
    /// differentiable: the quantity a size target's Lagrangian steers.
    pub fn expected_size_sparsity(&self, measure: SizeMeasure) -> Tensor<B, 1> {
        let dense = measure.of(self.model.config()).max(1) as f64;
        self.expected_size(measure).div_scalar(dense).neg() + 1.0
    }
}
