//! Parameter and FLOP counts from a config.

use crate::ModelConfig;

/// Every projection of a layer, by its name in `LayerConfig::ranks`.
pub const PROJECTIONS: [&str; 6] = [
    "attention.query",
    "attention.key",
    "attention.value",
    "attention.output",
    "ffn.up",
    "ffn.down",
];

impl ModelConfig {
    /// Parameters of the model this config describes (the tied LM head counted once).
    pub fn param_count(&self) -> usize {
        let d = self.d_model;
        let mut n = (self.vocab_size + self.max_positions + self.type_vocab_size) * d;
        // The embedding LayerNorm (post-norm) or the final one (pre-norm).
        n += 2 * d;
        n += self.layer_params();
        if let Some(p) = self.d_pooler {
            n += d * p + p;
        }
        n
    }

    /// Parameters of the layer stack alone: every layer's projections (weights and biases)
    /// and its two LayerNorms. Embeddings, the pooler and GPT-2's final norm are not in it;
    /// this is what a size target on parameters counts.
    pub fn layer_params(&self) -> usize {
        let d = self.d_model;
        self.layers
            .iter()
            .map(|l| {
                let projections: usize =
                    PROJECTIONS.iter().map(|p| l.projection_params(p, d)).sum();
                projections + 4 * d // two LayerNorms
            })
            .sum()
    }

    /// Floating-point operations (2 per multiply-add) of the encoder / decoder stack per
    /// token at sequence length `seq`: the projections and feed-forward matmuls (at their
    /// rank when factorized) plus the attention scores and weighted sums
    /// (`2 · 2 · seq · n_heads · d_head` per layer). Embedding lookups, LayerNorms, the
    /// pooler and the LM head are not counted.
    pub fn flops_per_token(&self, seq: usize) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let macs: usize = PROJECTIONS
                    .iter()
                    .map(|p| l.projection_macs(p, self.d_model))
                    .sum();
                2 * macs + 4 * seq * l.d_attn()
            })
            .sum()
    }

    /// Floating-point operations per token of GPT-2's tied LM head (`2 · d_model · vocab`;
    /// 0 without an LM head). Not in [`ModelConfig::flops_per_token`]: only a pruned hidden width
    /// changes it, and with GPT-2's 50,257 words it dominates a small model's cost per
    /// token, so reports give it apart.
    pub fn lm_head_flops_per_token(&self) -> usize {
        if self.family.arch().lm_head {
            2 * self.d_model * self.vocab_size
        } else {
            0
        }
    }
}
