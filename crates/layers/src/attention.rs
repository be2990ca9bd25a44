//! Multi-head self-attention, and the `AttentionBlock` trait that lets a user put their own
//! attention into a BERT or GPT-2 without editing the layers above it.

use burn::prelude::*;
use shears_spaces::Scope;

use crate::{Capture, LayerSpaces, ModelConfig, Projection, kernels};

/// What an attention block receives besides its input.
#[derive(Debug, Clone)]
pub struct AttentionContext<B: Backend> {
    /// Additive bias on the scores, `[batch, 1, 1, seq]` (0 keep, a large negative value
    /// for padding); `None` for no padding.
    pub bias: Option<Tensor<B, 4>>,
    /// Multiplies each head's attention probabilities, `[n_heads]`; `None` for all ones.
    /// 0 for a head is equivalent to removing it.
    pub head_mask: Option<Tensor<B, 1>>,
    /// Mask out future positions (GPT-2).
    pub causal: bool,
    /// When set, the block records the inputs of its projections (calibration for
    /// factorization and activation statistics); blocks that do not are still correct.
    pub capture: Option<Capture<B>>,
    /// Training: dropout on the attention probabilities (see [`crate::dropout`]); `None`
    /// in evaluation. A block without probabilities may ignore it.
    pub dropout: Option<kernels::ProbDropout>,
}

/// An attention implementation a model can be built with.
///
/// Implement it (and derive `Module`) to swap attention in every layer of
/// `BertModel<B, YourAttention<B>>` / `Gpt2Model<B, YourAttention<B>>`; see
/// `examples/custom_attention.rs`.
///
/// `Sync` because the forward pass runs on a rayon worker ([`crate::kernels::on_workers`]).
pub trait AttentionBlock<B: Backend>: Module<B> + burn::module::ModuleDisplay + Sync {
    /// Builds layer `layer`'s attention from the shared config.
    fn new(config: &ModelConfig, layer: usize, device: &B::Device) -> Self;

    /// # Shapes
    /// `x: [batch, seq, d_model]` -> `[batch, seq, d_model]`
    fn forward(&self, x: Tensor<B, 3>, context: &AttentionContext<B>) -> Tensor<B, 3>;

    /// Declares which space every axis of this block's parameters lives in (paths relative
    /// to the block).
    fn declare(config: &ModelConfig, layer: usize, scope: &mut Scope<'_>, spaces: &LayerSpaces);

    /// The fewest heads this block can be pruned to. The default, 1, suits a block that
    /// cannot run without heads; a block that returns 0 must accept a config with
    /// `n_heads == 0` for its layer (and then compute what it computes with every head
    /// masked, so that masked == pruned still holds).
    fn min_heads() -> usize {
        1
    }
}

/// Scaled dot-product multi-head self-attention with separate `query`, `key`, `value` and
/// `output` projections (Vaswani et al. 2017, <https://arxiv.org/abs/1706.03762>), each dense
/// or factorized as the config says.
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    /// `[d_model, n_heads * d_head]`.
    pub query: Projection<B>,
    /// `[d_model, n_heads * d_head]`.
    pub key: Projection<B>,
    /// `[d_model, n_heads * d_head]`.
    pub value: Projection<B>,
    /// `[n_heads * d_head, d_model]`.
    pub output: Projection<B>,
    /// Heads.
    pub n_heads: usize,
    /// Width of a head.
    pub d_head: usize,
}

/// The additive value that removes a score: the most negative f32, as the reference does.
pub const MASKED: f32 = f32::MIN;

impl<B: Backend> AttentionBlock<B> for SelfAttention<B> {
    fn new(config: &ModelConfig, layer: usize, device: &B::Device) -> Self {
        let l = &config.layers[layer];
        let (d, a) = (config.d_model, l.d_attn());
        let proj = |name: &str, i, o, residual| {
            Projection::new(i, o, l.rank(name), config.init_std(residual), device)
        };
        Self {
            query: proj("attention.query", d, a, false),
            key: proj("attention.key", d, a, false),
            value: proj("attention.value", d, a, false),
            output: proj("attention.output", a, d, true),
            n_heads: l.n_heads,
            d_head: l.d_head,
        }
    }

    fn forward(&self, x: Tensor<B, 3>, context: &AttentionContext<B>) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let h = self.n_heads;
        if h == 0 {
            // Every head removed: what is left of the block is its output bias, exactly what
            // the full block gives with every head masked.
            return self.output.bias3(b, s, &x.device());
        }
        if let Some(c) = &context.capture {
            c.record(&["query", "key", "value"], x.clone());
        }
        let split = |t: Tensor<B, 3>| kernels::split_heads(t, b, h);
        let q = split(self.query.forward(x.clone()));
        let k = split(self.key.forward(x.clone()));
        let v = split(self.value.forward(x));
        // One fused kernel on flex; Burn's attention operation elsewhere (scores, softmax
        // and the weighted sum, differentiable under autodiff), with the padding bias over
        // key positions and GPT-2's causal mask.
        let bias = context.bias.clone().map(|bias| bias.reshape([b, s]));
        let mut ctx = kernels::attention(q, k, v, bias, context.causal, context.dropout);
        // A head mask scales each head's probabilities, which is scaling its output.
        // The mask repeated per sequence (`[b, h, 1, 1]`, contiguous) is a per-row scalar
        // that flex multiplies on its SIMD path; `[1, h, 1, 1]` broadcast over the batch
        // would go through its one-thread strided iterator.
        if let Some(m) = &context.head_mask {
            ctx = ctx * m.clone().reshape([1, h, 1, 1]).repeat_dim(0, b);
        }
        let ctx = kernels::merge_heads(ctx);
        if let Some(c) = &context.capture {
            c.record(&["output"], ctx.clone());
        }
        self.output.forward(ctx)
    }

    fn declare(config: &ModelConfig, layer: usize, scope: &mut Scope<'_>, spaces: &LayerSpaces) {
        let l = &config.layers[layer];
        for p in ["query", "key", "value"] {
            let rank = l.rank(&format!("attention.{p}"));
            Projection::<B>::declare(rank, scope, p, &spaces.hidden, &spaces.heads);
        }
        let rank = l.rank("attention.output");
        Projection::<B>::declare(rank, scope, "output", &spaces.heads, &spaces.hidden);
    }

    /// A layer may lose every head: the block then adds only its output bias and the
    /// residual path carries the layer (Michel et al. 2019 found whole layers of heads
    /// removable; CoFi prunes whole attention blocks).
    fn min_heads() -> usize {
        0
    }
}
