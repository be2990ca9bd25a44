//! Text generation with a GPT-2: incremental decoding with a key/value cache, so a new token
//! costs one position instead of a pass over the whole prefix, and the choice of each token
//! (greedy, or sampled with a temperature and a top-k cut, from keyed draws, so a seed gives
//! the same text on every run and thread count).

use std::time::Instant;

use burn::prelude::*;

use crate::{Family, FeedForward, FeedForwardBlock, SelfAttention, Transformer, kernels};

/// What a generation request can get wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerateError {
    /// Only a causal LM (GPT-2) generates.
    #[error("only a GPT-2 (a causal language model) generates text; this model is a {0:?}")]
    NotCausal(Family),
    /// No prompt token to continue.
    #[error("the prompt is empty: give at least one token to continue")]
    EmptyPrompt,
    /// The prompt and the new tokens do not fit the position table.
    #[error(
        "a prompt of {prompt} tokens plus {new} new tokens needs {} positions, but the model's \
         position table has {max_positions}: shorten the prompt or ask for fewer tokens",
        prompt + new
    )]
    TooLong {
        /// Prompt tokens (or positions already cached).
        prompt: usize,
        /// Tokens asked for (or given to one step).
        new: usize,
        /// The model's position table.
        max_positions: usize,
    },
    /// After the prompt, the cache takes one token per step.
    #[error("after {cached} cached positions a step takes one token, not {given}")]
    StepTooWide {
        /// Positions in the cache.
        cached: usize,
        /// Tokens given.
        given: usize,
    },
    /// A temperature that is negative or not a number.
    #[error("temperature {0} is not a finite number >= 0 (0 is greedy)")]
    BadTemperature(f64),
    /// A prompt token outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    UnknownToken {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab: usize,
    },
}

/// Keys and values of the positions a decoder has seen, per layer `[batch, heads, seen,
/// d_head]` (nothing for a layer without heads).
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    len: usize,
}

impl<B: Backend> Default for KvCache<B> {
    fn default() -> Self {
        Self {
            layers: Vec::new(),
            len: 0,
        }
    }
}

impl<B: Backend> KvCache<B> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// How [`Transformer::generate`] chooses tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Tokens to generate (fewer when `stop` comes first).
    pub max_tokens: usize,
    /// 0: greedy (the most likely token, the lowest id on a tie); above 0: sample from
    /// `softmax(logits / temperature)`.
    pub temperature: f64,
    /// When sampling, only the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Key of the sampling draws: the same seed gives the same tokens.
    pub seed: u64,
    /// A token that ends the generation (it is included), e.g. `<|endoftext|>`.
    pub stop: Option<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 20,
            temperature: 0.0,
            top_k: 0,
            seed: 0,
            stop: None,
        }
    }
}

/// What [`Transformer::generate`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The new tokens (without the prompt).
    pub tokens: Vec<u32>,
    /// Seconds of the prompt's pass (which gives the first token).
    pub prompt_seconds: f64,
    /// Mean seconds per token after the first (one cached position each).
    pub seconds_per_token: f64,
}

impl<B: Backend> Transformer<B, SelfAttention<B>, FeedForward<B>> {
    /// Next-token logits `[batch, new, vocab]` of `ids` `[batch, new]`, which follow the
    /// positions in `cache`; their keys and values are appended to it. The first call
    /// (empty cache) takes the whole prompt, with causal attention inside it; later calls
    /// one token each. Equal, to rounding, to the full forward pass over the whole sequence
    /// (inference: no dropout, no masks, no padding).
    pub fn forward_cached(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>, GenerateError> {
        let config = self.config();
        if !config.causal() {
            return Err(GenerateError::NotCausal(config.family));
        }
        let [_, s] = ids.dims();
        if !cache.is_empty() && s != 1 {
            return Err(GenerateError::StepTooWide {
                cached: cache.len,
                given: s,
            });
        }
        if cache.len + s > config.max_len() {
            return Err(GenerateError::TooLong {
                prompt: cache.len,
                new: s,
                max_positions: config.max_len(),
            });
        }
        Ok(kernels::on_workers::<B, _>(|| self.cached_here(ids, cache)))
    }

    fn cached_here(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        let config = self.config();
        let [b, s] = ids.dims();
        let device = ids.device();
        let start = cache.len;
        let emb = &self.embeddings;
        let mut x = emb.words_and_positions(ids, config.position_offset + start);
        cache.layers.resize(self.layers.len(), None);
        for (layer, slot) in self.layers.iter().zip(&mut cache.layers) {
            let a = &layer.attention;
            let h = layer.attention_norm.forward(x.clone(), None);
            let out = if a.n_heads == 0 {
                a.output.bias3(b, s, &device)
            } else {
                let split = |t: Tensor<B, 3>| kernels::split_heads(t, b, a.n_heads);
                let q = split(a.query.forward(h.clone()));
                let (mut k, mut v) = (split(a.key.forward(h.clone())), split(a.value.forward(h)));
                if let Some((k0, v0)) = slot.take() {
                    k = Tensor::cat(vec![k0, k], 2);
                    v = Tensor::cat(vec![v0, v], 2);
                }
                *slot = Some((k.clone(), v.clone()));
                // The prompt attends causally within itself; a later token to every cached
                // position (all earlier than it).
                let ctx = kernels::attention(q, k, v, None, start == 0, None);
                a.output.forward(kernels::merge_heads(ctx))
            };
            x = x + out;
            let f = layer
                .ffn
                .forward(layer.ffn_norm.forward(x.clone(), None), None);
            x = x + f;
        }
        cache.len += s;
        if let Some(norm) = &self.final_norm {
            x = norm.forward(x, None);
        }
        let w = emb.word.weight.val();
        let vocab = w.dims()[0];
        x.reshape([b * s, config.d_model])
            .matmul(w.transpose())
            .reshape([b, s, vocab])
    }

    /// Continues `prompt` by up to `opts.max_tokens` tokens, one cached position per token
    /// after the prompt's pass. Refuses a prompt that, with the new tokens, does not fit
    /// the position table, before any work.
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
    ) -> Result<Generated, GenerateError> {
        let config = self.config();
        if !config.causal() {
            return Err(GenerateError::NotCausal(config.family));
        }
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        if !(opts.temperature.is_finite() && opts.temperature >= 0.0) {
            return Err(GenerateError::BadTemperature(opts.temperature));
        }
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= config.vocab_size) {
            return Err(GenerateError::UnknownToken {
                id,
                vocab: config.vocab_size,
            });
        }
        if prompt.len() + opts.max_tokens > config.max_len() {
            return Err(GenerateError::TooLong {
                prompt: prompt.len(),
                new: opts.max_tokens,
                max_positions: config.max_len(),
            });
        }
        let device = self.embeddings.word.weight.device();
        let mut cache = KvCache::new();
        let mut tokens = Vec::with_capacity(opts.max_tokens);
        let mut next = prompt.to_vec();
        let started = Instant::now();
        let mut prompt_seconds = 0.0;
        while tokens.len() < opts.max_tokens {
            let n = next.len();
            let ids: Vec<i64> = next.iter().map(|&t| t as i64).collect();
            let ids =
                Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), &device).reshape([1, n]);
            let logits = self.forward_cached(ids, &mut cache)?;
            let vocab = logits.dims()[2];
            let last: Vec<f32> = logits
                .slice([0..1, n - 1..n, 0..vocab])
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("f32 logits");
            let token = choose(&last, opts, tokens.len() as u64);
            if tokens.is_empty() {
                prompt_seconds = started.elapsed().as_secs_f64();
            }
            tokens.push(token);
            if opts.stop == Some(token) {
                break;
            }
            next = vec![token];
        }
        let rest = tokens.len().saturating_sub(1).max(1) as f64;
        Ok(Generated {
            seconds_per_token: (started.elapsed().as_secs_f64() - prompt_seconds) / rest,
            prompt_seconds,
            tokens,
        })
    }
}

/// The token chosen from one position's logits: the first of the largest when greedy, else
/// a draw (keyed by `opts.seed` and `step`) from the softmax of the `top_k` largest logits
/// divided by the temperature.
fn choose(logits: &[f32], opts: &GenerateOptions, step: u64) -> u32 {
    let greedy = || {
        (0..logits.len()).fold(0, |best, i| if logits[i] > logits[best] { i } else { best }) as u32
    };
    if opts.temperature == 0.0 {
        return greedy();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // Descending, ties by id; NaN last.
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if opts.top_k > 0 {
        order.truncate(opts.top_k);
    }
    let top = f64::from(logits[order[0]]);
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| ((f64::from(logits[i]) - top) / opts.temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return greedy();
    }
    let u = f64::from(shears_spaces::uniform(shears_spaces::mix(opts.seed), step)) * total;
    let mut acc = 0.0;
    for (&i, w) in order.iter().zip(&weights) {
        acc += w;
        if u < acc {
            return i as u32;
        }
    }
    order[order.len() - 1] as u32
}
