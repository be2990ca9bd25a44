//! Parameter and FLOP counts from a config.

use crate::{Family, ModelConfig};

impl ModelConfig {
    /// Parameters of the model this config describes (the tied LM head counted once).
    pub fn param_count(&self) -> usize {
        let d = self.d_model;
        let mut n = (self.vocab_size + self.max_positions + self.type_vocab_size) * d;
        if self.family == Family::Bert {
            n += 2 * d; // embedding LayerNorm
        }
        for l in &self.layers {
            let a = l.d_attn();
            n += 3 * (d * a + a) + a * d + d; // q, k, v, output
            n += d * l.d_ff + l.d_ff + l.d_ff * d + d; // up, down
            n += 4 * d; // two LayerNorms
        }
        if let Some(p) = self.d_pooler {
            n += d * p + p;
        }
        if self.family == Family::Gpt2 {
            n += 2 * d;
        }
        n
    }

    /// Floating-point operations (2 per multiply-add) of the encoder / decoder stack per
    /// token at sequence length `seq`: the projections and feed-forward matmuls plus the
    /// attention scores and weighted sums (`2 · 2 · seq · n_heads · d_head` per layer).
    /// Embedding lookups, LayerNorms, the pooler and the LM head are not counted.
    pub fn flops_per_token(&self, seq: usize) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let a = l.d_attn();
                2 * (4 * self.d_model * a + 2 * self.d_model * l.d_ff) + 4 * seq * a
            })
            .sum()
    }
}
