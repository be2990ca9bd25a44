//! `Transformer`: BERT (post-norm encoder) and GPT-2 (pre-norm decoder) built from one
//! [`ModelConfig`], with optional head / neuron / hidden masks in the forward input, and the
//! declaration of every parameter axis's space.

use std::sync::{Arc, Mutex};

use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use shears_spaces::{Registry, Space};

use crate::{
    Arch, AttentionBlock, AttentionContext, FeedForward, FeedForwardBlock, LayerNorm, ModelConfig,
    SelfAttention, SpaceName, attention::MASKED,
};

/// A BERT or RoBERTa encoder (`config.family` is `Family::Bert` or `Family::Roberta`; the
/// alias only names the intent, the type is the one `Transformer`).
pub type BertModel<B, A = SelfAttention<B>, F = FeedForward<B>> = Transformer<B, A, F>;
/// A GPT-2 decoder with its tied LM head (`config.family == Family::Gpt2`).
pub type Gpt2Model<B, A = SelfAttention<B>, F = FeedForward<B>> = Transformer<B, A, F>;

/// Soft or hard masks a forward pass multiplies in. A 0 is equivalent to removing the unit
/// (the "masked == pruned" property the tests prove); values in between are how gates act.
#[derive(Debug, Clone, Default)]
pub struct Masks<B: Backend> {
    /// Attention heads, `[n_layers, max_heads]`; layer `l` reads its first `n_heads[l]` columns.
    pub heads: Option<Tensor<B, 2>>,
    /// Feed-forward neurons, one `[d_ff[l]]` tensor per layer.
    pub ffn: Option<Vec<Tensor<B, 1>>>,
    /// Hidden dimensions, `[d_model]`.
    pub hidden: Option<Tensor<B, 1>>,
}

/// Forward input.
#[derive(Debug, Clone)]
pub struct ModelInput<B: Backend> {
    /// Token ids, `[batch, seq]`.
    pub ids: Tensor<B, 2, Int>,
    /// Token types (BERT segments), `[batch, seq]`; `None` for all zeros.
    pub token_types: Option<Tensor<B, 2, Int>>,
    /// 1 for real tokens, 0 for padding, `[batch, seq]`; `None` for no padding.
    pub attention_mask: Option<Tensor<B, 2>>,
    /// Unit masks.
    pub masks: Masks<B>,
    /// Records the inputs of every projection (see [`Capture`]).
    pub capture: Option<Capture<B>>,
    /// Training: the key of this step's dropout draws (the config's probabilities, see
    /// [`crate::dropout`]); `None` (evaluation) drops nothing.
    pub dropout: Option<u64>,
    /// Also return every layer's output ([`ModelOutput::hidden_states`]).
    pub output_hidden_states: bool,
}

impl<B: Backend> ModelInput<B> {
    /// Input with ids only.
    pub fn new(ids: Tensor<B, 2, Int>) -> Self {
        Self {
            ids,
            token_types: None,
            attention_mask: None,
            masks: Masks::default(),
            capture: None,
            dropout: None,
            output_hidden_states: false,
        }
    }

    /// With dropout drawn from `key` (training).
    pub fn with_dropout(mut self, key: u64) -> Self {
        self.dropout = Some(key);
        self
    }

    /// Returning every layer's output too.
    pub fn with_hidden_states(mut self) -> Self {
        self.output_hidden_states = true;
        self
    }

    /// Recording the inputs of every projection into `capture`.
    pub fn with_capture(mut self, capture: Capture<B>) -> Self {
        self.capture = Some(capture);
        self
    }

    /// With a padding mask.
    pub fn with_attention_mask(mut self, mask: Tensor<B, 2>) -> Self {
        self.attention_mask = Some(mask);
        self
    }

    /// With unit masks.
    pub fn with_masks(mut self, masks: Masks<B>) -> Self {
        self.masks = masks;
        self
    }

    /// Whether each position (`[batch · seq]`, row-major) holds a real token: its
    /// attention mask is above 0.5, or there is no mask.
    pub fn real_tokens(&self) -> Vec<bool> {
        match &self.attention_mask {
            Some(m) => m
                .clone()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32 mask")
                .into_iter()
                .map(|v| v > 0.5)
                .collect(),
            None => vec![true; self.ids.dims().iter().product()],
        }
    }
}

/// Forward output.
#[derive(Debug, Clone)]
pub struct ModelOutput<B: Backend> {
    /// Last hidden states, `[batch, seq, d_model]`.
    pub hidden: Tensor<B, 3>,
    /// BERT pooler output `tanh(W h[:, 0] + b)`, `[batch, d_pooler]`.
    pub pooled: Option<Tensor<B, 2>>,
    /// GPT-2 next-token logits from the tied LM head, `[batch, seq, vocab]`.
    pub logits: Option<Tensor<B, 3>>,
    /// With [`ModelInput::output_hidden_states`]: the embeddings' output and each layer's
    /// output (`n_layers + 1` tensors `[batch, seq, d_model]`, hidden masks applied; GPT-2's
    /// last one before its final LayerNorm).
    pub hidden_states: Option<Vec<Tensor<B, 3>>>,
}

/// The spaces one layer's blocks declare their axes in.
#[derive(Debug, Clone)]
pub struct LayerSpaces {
    /// The model's hidden space (shared by every layer).
    pub hidden: Space,
    /// This layer's heads: `n_heads` units of width `d_head`.
    pub heads: Space,
    /// This layer's feed-forward neurons.
    pub ffn: Space,
}

/// Token, position (and for BERT token-type) embeddings.
#[derive(Module, Debug)]
pub struct Embeddings<B: Backend> {
    /// `[vocab, d_model]`; also GPT-2's LM head (tied, stored once).
    pub word: Embedding<B>,
    /// `[max_positions, d_model]`.
    pub position: Embedding<B>,
    /// `[type_vocab, d_model]` (BERT).
    pub token_type: Option<Embedding<B>>,
    /// BERT's embedding LayerNorm.
    pub norm: Option<LayerNorm<B>>,
}

impl<B: Backend> Embeddings<B> {
    /// Word plus position embeddings of `ids` `[batch, seq]` whose first position is
    /// `first` (the config's offset plus any cached positions): `[batch, seq, d_model]`.
    pub fn words_and_positions(&self, ids: Tensor<B, 2, Int>, first: usize) -> Tensor<B, 3> {
        let [b, s] = ids.dims();
        let first = first as i64;
        // One row of position ids per sequence: two contiguous `[b, s, d]` operands add
        // in place. A `[1, s, d]` operand broadcast over the batch is no pattern flex's
        // SIMD paths know, and its strided iterator (one thread) took about 10 ms of a
        // 32 x 64 MiniLM pass on 2026-12-07 (docs/PERFORMANCE.md).
        let positions = Tensor::<B, 1, Int>::arange(first..first + s as i64, &ids.device())
            .reshape([1, s])
            .repeat_dim(0, b);
        self.word.forward(ids) + self.position.forward(positions)
    }
}

/// One transformer layer: attention and feed-forward blocks with their LayerNorms;
/// post-norm for BERT, pre-norm for GPT-2.
#[derive(Module, Debug)]
pub struct Layer<B: Backend, A, F> {
    /// Attention block.
    pub attention: A,
    /// LayerNorm after (BERT) or before (GPT-2) attention.
    pub attention_norm: LayerNorm<B>,
    /// Feed-forward block.
    pub ffn: F,
    /// LayerNorm after (BERT) or before (GPT-2) the feed-forward block.
    pub ffn_norm: LayerNorm<B>,
}

/// A BERT, RoBERTa or GPT-2 model. `A` and `F` are the attention and feed-forward blocks of every
/// layer (the built-in ones by default).
#[derive(Module, Debug)]
pub struct Transformer<B: Backend, A = SelfAttention<B>, F = FeedForward<B>> {
    /// Embeddings.
    pub embeddings: Embeddings<B>,
    /// Layers.
    pub layers: Vec<Layer<B, A, F>>,
    /// BERT pooler, `[d_model, d_pooler]`.
    pub pooler: Option<Linear<B>>,
    /// GPT-2's final LayerNorm.
    pub final_norm: Option<LayerNorm<B>>,
    /// The config the model was built from (the single source of truth for sizes).
    #[module(skip)]
    pub config: ModelConfig,
}

struct LayerMasks<'a, B: Backend> {
    heads: Option<Tensor<B, 1>>,
    ffn: Option<&'a Tensor<B, 1>>,
    hidden: Option<&'a Tensor<B, 1>>,
    capture: Option<Capture<B>>,
    /// The step's dropout key and the probabilities.
    dropout: Option<(u64, crate::DropoutConfig)>,
    layer: usize,
}

/// Records the inputs of a model's projections during a forward pass, as rows
/// `[tokens, d_in]` (padding tokens left out), keyed by the projection's parameter path
/// (`layers.0.attention.query`). This is how calibration statistics for factorization and
/// activation-aware sparsity are gathered without hooks. Clones share one record.
#[derive(Clone)]
pub struct Capture<B: Backend> {
    sink: Arc<Mutex<Vec<Captured<B>>>>,
    prefix: String,
    rows: Option<Tensor<B, 1, Int>>,
}

/// One recorded input, shared by the projections in `paths` (query, key and value read the
/// same input).
#[derive(Debug, Clone)]
pub struct Captured<B: Backend> {
    /// Parameter paths of the projections that read this input.
    pub paths: Vec<String>,
    /// The input rows, `[tokens, d_in]`.
    pub input: Tensor<B, 2>,
}

impl<B: Backend> std::fmt::Debug for Capture<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.sink.lock().map(|v| v.len()).unwrap_or(0);
        write!(f, "Capture({:?}, {n} recorded)", self.prefix)
    }
}

impl<B: Backend> Default for Capture<B> {
    fn default() -> Self {
        Self {
            sink: Arc::new(Mutex::new(Vec::new())),
            prefix: String::new(),
            rows: None,
        }
    }
}

impl<B: Backend> Capture<B> {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same record, with `name` appended to the path prefix.
    pub fn child(&self, name: &str) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Self {
            prefix,
            ..self.clone()
        }
    }

    /// Records `x: [batch, seq, d]` as the input of the projections `names` (relative to
    /// this capture's prefix).
    pub fn record(&self, names: &[&str], x: Tensor<B, 3>) {
        let [b, s, d] = x.dims();
        let mut rows = x.reshape([b * s, d]);
        if let Some(keep) = &self.rows {
            rows = rows.select(0, keep.clone());
        }
        let paths = names.iter().map(|n| self.child(n).prefix).collect();
        self.sink
            .lock()
            .expect("capture lock")
            .push(Captured { paths, input: rows });
    }

    /// Takes everything recorded so far.
    pub fn take(&self) -> Vec<Captured<B>> {
        std::mem::take(&mut *self.sink.lock().expect("capture lock"))
    }

    fn with_rows(mut self, rows: Tensor<B, 1, Int>) -> Self {
        self.rows = Some(rows);
        self
    }
}

impl<B: Backend, A: AttentionBlock<B>, F: FeedForwardBlock<B>> Layer<B, A, F> {
    fn new(config: &ModelConfig, layer: usize, device: &B::Device) -> Self {
        Self {
            attention: A::new(config, layer, device),
            attention_norm: LayerNorm::new(config.d_model, config.layer_norm_eps, device),
            ffn: F::new(config, layer, device),
            ffn_norm: LayerNorm::new(config.d_model, config.layer_norm_eps, device),
        }
    }

    fn forward(
        &self,
        x: Tensor<B, 3>,
        arch: Arch,
        bias: &Option<Tensor<B, 4>>,
        masks: LayerMasks<'_, B>,
    ) -> Tensor<B, 3> {
        use crate::dropout::{Site, dropout};
        let l = masks.layer;
        let context = AttentionContext {
            bias: bias.clone(),
            head_mask: masks.heads,
            causal: arch.causal,
            capture: masks.capture.as_ref().map(|c| c.child("attention")),
            dropout: masks
                .dropout
                .filter(|(_, p)| p.attention > 0.0)
                .map(|(key, p)| crate::kernels::ProbDropout {
                    p: p.attention as f32,
                    key: Site::AttentionProbs(l).key(key),
                }),
        };
        // Dropout on a block's output before it joins the residual stream.
        let drop = |t: Tensor<B, 3>, site: Site| match masks.dropout {
            Some((key, p)) => dropout(t, p.hidden, site.key(key)),
            None => t,
        };
        let ffn_capture = masks.capture.as_ref().map(|c| c.child("ffn"));
        let hm = masks.hidden;
        // Sublayer outputs are multiplied by the hidden mask before they join the residual
        // stream, so pruned dimensions stay exactly 0 everywhere (CoFi).
        let masked = |t: Tensor<B, 3>| match hm {
            Some(m) => {
                let d = m.dims()[0];
                t * m.clone().reshape([1, 1, d])
            }
            None => t,
        };
        if !arch.pre_norm {
            // Post-norm (BERT).
            let a = masked(self.attention.forward(x.clone(), &context));
            let a = drop(a, Site::AttentionOutput(l));
            let x = self.attention_norm.forward_residual(x, a, hm);
            let f = masked(
                self.ffn
                    .forward_captured(x.clone(), masks.ffn, ffn_capture.as_ref()),
            );
            let f = drop(f, Site::FfnOutput(l));
            self.ffn_norm.forward_residual(x, f, hm)
        } else {
            // Pre-norm (GPT-2).
            let a = self
                .attention
                .forward(self.attention_norm.forward(x.clone(), hm), &context);
            let x = x + drop(masked(a), Site::AttentionOutput(l));
            let f = self.ffn.forward_captured(
                self.ffn_norm.forward(x.clone(), hm),
                masks.ffn,
                ffn_capture.as_ref(),
            );
            x + drop(masked(f), Site::FfnOutput(l))
        }
    }
}

impl<B: Backend, A: AttentionBlock<B>, F: FeedForwardBlock<B>> Transformer<B, A, F> {
    /// A randomly initialised model of the config's shape. GPT-2 as GPT-2 initialises one:
    /// embeddings and weights from Normal(0, `initializer_range`), the residual projections
    /// scaled by `1/sqrt(2 n_layers)` ([`ModelConfig::init_std`]), biases 0, LayerNorms 1
    /// and 0. BERT with Burn's default initialisers (see `init_std`). Draws come from the
    /// backend's generator (`B::seed`).
    pub fn new(config: &ModelConfig, device: &B::Device) -> Self {
        let d = config.d_model;
        let arch = config.family.arch();
        let eps = config.layer_norm_eps;
        let normal = config
            .init_std(false)
            .map(|std| Initializer::Normal { mean: 0.0, std });
        let embedding = |n: usize| {
            let c = EmbeddingConfig::new(n, d);
            match &normal {
                Some(init) => c.with_initializer(init.clone()),
                None => c,
            }
            .init(device)
        };
        Self {
            embeddings: Embeddings {
                word: embedding(config.vocab_size),
                position: embedding(config.max_positions),
                token_type: arch.token_types.then(|| embedding(config.type_vocab_size)),
                norm: (!arch.pre_norm).then(|| LayerNorm::new(d, eps, device)),
            },
            layers: (0..config.n_layers())
                .map(|l| Layer::new(config, l, device))
                .collect(),
            pooler: config
                .d_pooler
                .map(|p| LinearConfig::new(d, p).init(device)),
            final_norm: arch.pre_norm.then(|| LayerNorm::new(d, eps, device)),
            config: config.clone(),
        }
    }

    /// The config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Runs the model.
    ///
    /// # Shapes
    /// See [`ModelInput`] and [`ModelOutput`].
    ///
    /// The pass runs on a rayon worker ([`crate::kernels::on_workers`]).
    pub fn forward(&self, input: ModelInput<B>) -> ModelOutput<B> {
        crate::kernels::on_workers::<B, _>(|| self.forward_here(input))
    }

    fn forward_here(&self, input: ModelInput<B>) -> ModelOutput<B> {
        let config = self.config();
        let [b, s] = input.ids.dims();
        let device = input.ids.device();
        // Calibration records real tokens only (read before the ids move).
        let real = (input.capture.is_some() && input.attention_mask.is_some())
            .then(|| input.real_tokens());
        let emb = &self.embeddings;
        let mut x = emb.words_and_positions(input.ids, config.position_offset);
        if let Some(tt) = &emb.token_type {
            let types = input
                .token_types
                .unwrap_or_else(|| Tensor::zeros([b, s], &device));
            x = x + tt.forward(types);
        }
        let hm = input.masks.hidden.as_ref();
        if let Some(norm) = &emb.norm {
            x = norm.forward(x, hm);
        }
        if let Some(m) = hm {
            x = x * m.clone().reshape([1, 1, config.d_model]);
        }
        let dropout = input.dropout.map(|key| (key, config.dropout));
        if let Some(key) = input.dropout {
            let site = crate::dropout::Site::Embeddings.key(key);
            x = crate::dropout::dropout(x, config.dropout.embedding, site);
        }
        let mut hidden_states = input.output_hidden_states.then(|| vec![x.clone()]);
        // The flat indices of unmasked positions.
        let capture = input.capture.clone().map(|c| match real {
            Some(real) => {
                let keep: Vec<i64> = (real.into_iter().enumerate())
                    .filter(|(_, r)| *r)
                    .map(|(i, _)| i as i64)
                    .collect();
                let n = keep.len();
                c.with_rows(Tensor::from_data(TensorData::new(keep, [n]), &device))
            }
            None => c,
        });
        let bias = input.attention_mask.map(|m| {
            // (1 - mask) * MASKED, as the reference's extended attention mask.
            (m.neg() + 1.0).mul_scalar(MASKED).reshape([b, 1, 1, s])
        });
        for (l, layer) in self.layers.iter().enumerate() {
            let n = config.layers[l].n_heads;
            let masks = LayerMasks {
                heads: input
                    .masks
                    .heads
                    .as_ref()
                    .filter(|_| n > 0)
                    .map(|h| h.clone().slice([l..l + 1, 0..n]).reshape([n])),
                ffn: input.masks.ffn.as_ref().map(|f| &f[l]),
                hidden: hm,
                capture: capture.as_ref().map(|c| c.child(&format!("layers.{l}"))),
                dropout,
                layer: l,
            };
            x = layer.forward(x, config.family.arch(), &bias, masks);
            if let Some(states) = &mut hidden_states {
                states.push(x.clone());
            }
        }
        if let Some(norm) = &self.final_norm {
            x = norm.forward(x, hm);
        }
        let pooled = self.pooler.as_ref().map(|p| {
            let first = x
                .clone()
                .slice([0..b, 0..1, 0..config.d_model])
                .reshape([b, config.d_model]);
            p.forward(first).tanh()
        });
        let logits = config.family.arch().lm_head.then(|| {
            let w = emb.word.weight.val();
            let v = w.dims()[0];
            x.clone()
                .reshape([b * s, config.d_model])
                .matmul(w.transpose())
                .reshape([b, s, v])
        });
        ModelOutput {
            hidden: x,
            pooled,
            logits,
            hidden_states,
        }
    }

    /// The registry of every parameter axis's space for `config` (see [`declare`]).
    pub fn registry(config: &ModelConfig) -> Registry {
        declare::<B, A, F>(config)
    }
}

/// Hint given when a pruning would remove every head of a layer whose attention block
/// cannot run without heads ([`AttentionBlock::min_heads`] > 0).
pub const ALL_HEADS_HINT: &str =
    "keep at least one head per layer (this attention block cannot run without heads)";
/// Hint given when a pruning would remove every neuron of a layer whose feed-forward block
/// cannot run without neurons.
pub const ALL_NEURONS_HINT: &str =
    "keep at least one neuron per layer (this feed-forward block cannot run without neurons)";

/// Declares every parameter axis of a `Transformer<B, A, F>` built from `config`:
/// `hidden` (every axis in R^d_model: embeddings, LayerNorms, projections' inputs and
/// outputs), `vocab`, `positions`, `token_types`, `pooler`, and per layer `layers.L.heads`
/// (blocked by `d_head`) and `layers.L.ffn`. The spaces are made once here and passed
/// down to every block, which is how identity (not size) ties the axes together.
pub fn declare<B: Backend, A: AttentionBlock<B>, F: FeedForwardBlock<B>>(
    config: &ModelConfig,
) -> Registry {
    let mut reg = Registry::new();
    let hidden = Space::new(SpaceName::Hidden.to_string(), config.d_model);
    let vocab = Space::new(SpaceName::Vocab.to_string(), config.vocab_size);
    let positions = Space::new(SpaceName::Positions.to_string(), config.max_positions);
    let arch = config.family.arch();
    let mut root = reg.scope("");
    {
        let mut e = root.child("embeddings");
        e.claim("word.weight", 0, &vocab);
        e.claim("word.weight", 1, &hidden);
        e.claim("position.weight", 0, &positions);
        e.claim("position.weight", 1, &hidden);
        if arch.token_types {
            let types = Space::new(SpaceName::TokenTypes.to_string(), config.type_vocab_size);
            e.claim("token_type.weight", 0, &types);
            e.claim("token_type.weight", 1, &hidden);
        }
        if !arch.pre_norm {
            e.claim("norm.weight", 0, &hidden);
            e.claim("norm.bias", 0, &hidden);
        }
    }
    for (l, lc) in config.layers.iter().enumerate() {
        let spaces = LayerSpaces {
            hidden: hidden.clone(),
            heads: Space::blocked(SpaceName::Heads(l).to_string(), lc.n_heads, lc.d_head)
                .with_min_units(A::min_heads())
                .with_hint(ALL_HEADS_HINT),
            ffn: Space::new(SpaceName::Ffn(l).to_string(), lc.d_ff)
                .with_min_units(F::min_neurons())
                .with_hint(ALL_NEURONS_HINT),
        };
        let mut s = root.child("layers");
        let mut s = s.child(&l.to_string());
        s.register(&spaces.heads);
        s.register(&spaces.ffn);
        A::declare(config, l, &mut s.child("attention"), &spaces);
        F::declare(config, l, &mut s.child("ffn"), &spaces);
        for norm in ["attention_norm", "ffn_norm"] {
            let mut n = s.child(norm);
            n.claim("weight", 0, &hidden);
            n.claim("bias", 0, &hidden);
        }
    }
    if let Some(d_pooler) = config.d_pooler {
        // The pooler's output has the hidden width but is its own space: pruning hidden
        // dimensions must not shrink it.
        let pooler = Space::new(SpaceName::Pooler.to_string(), d_pooler);
        let mut p = root.child("pooler");
        p.claim("weight", 0, &hidden);
        p.claim("weight", 1, &pooler);
        p.claim("bias", 0, &pooler);
    }
    if arch.pre_norm {
        let mut n = root.child("final_norm");
        n.claim("weight", 0, &hidden);
        n.claim("bias", 0, &hidden);
    }
    reg
}
