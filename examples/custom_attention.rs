//! Putting your own attention into a BERT without touching the layers above it.
//!
//! `CosineAttention` scores heads by the cosine of query and key (with a fixed temperature)
//! instead of a scaled dot product. It implements `AttentionBlock`, so
//! `BertModel<B, CosineAttention<B>>` is a full BERT with it in every layer, and because it
//! declares its spaces, head pruning and masks work on it unchanged.
//!
//! Run: `cargo run -p shears-examples --example custom_attention`
//! (set `SHEARS_BACKEND=wgpu` to run it on the GPU backend).

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use shears_layers::{
    AttentionBlock, AttentionContext, BertModel, LayerSpaces, ModelConfig, ModelInput,
};
use shears_spaces::Scope;

/// Cosine-similarity attention (Henry et al. 2020, "Query-Key Normalization").
#[derive(Module, Debug)]
pub struct CosineAttention<B: Backend> {
    query: Linear<B>,
    key: Linear<B>,
    value: Linear<B>,
    output: Linear<B>,
    n_heads: usize,
    d_head: usize,
}

const TEMPERATURE: f64 = 10.0;

impl<B: Backend> AttentionBlock<B> for CosineAttention<B> {
    fn new(config: &ModelConfig, layer: usize, device: &B::Device) -> Self {
        let l = &config.layers[layer];
        let proj = |i, o| LinearConfig::new(i, o).init(device);
        Self {
            query: proj(config.d_model, l.d_attn()),
            key: proj(config.d_model, l.d_attn()),
            value: proj(config.d_model, l.d_attn()),
            output: proj(l.d_attn(), config.d_model),
            n_heads: l.n_heads,
            d_head: l.d_head,
        }
    }

    fn forward(&self, x: Tensor<B, 3>, context: &AttentionContext<B>) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let (h, dh) = (self.n_heads, self.d_head);
        let split = |t: Tensor<B, 3>| t.reshape([b, s, h, dh]).swap_dims(1, 2);
        let unit = |t: Tensor<B, 4>| t.clone() / (t.powi_scalar(2).sum_dim(3).sqrt() + 1e-6);
        let q = unit(split(self.query.forward(x.clone())));
        let k = unit(split(self.key.forward(x.clone())));
        let v = split(self.value.forward(x));
        let mut scores = q.matmul(k.swap_dims(2, 3)) * TEMPERATURE;
        if let Some(bias) = &context.bias {
            scores = scores + bias.clone();
        }
        let mut probs = softmax(scores, 3);
        if let Some(m) = &context.head_mask {
            probs = probs * m.clone().reshape([1, h, 1, 1]);
        }
        self.output
            .forward(probs.matmul(v).swap_dims(1, 2).reshape([b, s, h * dh]))
    }

    fn declare(_: &ModelConfig, _: usize, scope: &mut Scope<'_>, spaces: &LayerSpaces) {
        for p in ["query", "key", "value"] {
            let mut s = scope.child(p);
            s.claim("weight", 0, &spaces.hidden);
            s.claim("weight", 1, &spaces.heads);
            s.claim("bias", 0, &spaces.heads);
        }
        let mut s = scope.child("output");
        s.claim("weight", 0, &spaces.heads);
        s.claim("weight", 1, &spaces.hidden);
        s.claim("bias", 0, &spaces.hidden);
    }
}

fn run<B: Backend>(device: &B::Device) -> anyhow::Result<()> {
    let config = ModelConfig::bert(1000, 64, 2, 4, 128);
    let model: BertModel<B, CosineAttention<B>> = BertModel::new(&config, device);
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new((0..16i64).collect::<Vec<_>>(), [2, 8]),
        device,
    );
    let out = model.forward(ModelInput::new(ids.clone()));
    println!(
        "cosine-attention BERT: hidden {:?}, pooled {:?}",
        out.hidden.dims(),
        out.pooled.map(|p| p.dims())
    );
    // Its spaces are declared, so structured pruning works on it too.
    let registry = BertModel::<B, CosineAttention<B>>::registry(&config);
    registry.validate(&shears_layers::tensorio::param_shapes(&model))?;
    let pruned = model.keep("layers.1.heads", &[0, 2])?;
    let out = pruned.forward(ModelInput::new(ids));
    println!(
        "after keeping heads 0 and 2 of layer 1: {} -> {} parameters, hidden {:?}",
        config.param_count(),
        pruned.param_count(),
        out.hidden.dims()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match std::env::var("SHEARS_BACKEND").as_deref() {
        Ok("wgpu") => run::<burn::backend::Wgpu<f32, i32>>(&Default::default()),
        Ok("ndarray") => run::<burn::backend::NdArray<f32>>(&Default::default()),
        _ => run::<burn::backend::Flex>(&Default::default()),
    }
}
