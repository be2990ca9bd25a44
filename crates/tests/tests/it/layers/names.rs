//! Typed space names: their text forms round-trip; a block name is one unit that removes
//! its heads or neurons; a space a user block declares is a typed error, not a panic.

use burn::backend::NdArray;
use burn::module::Param;
use burn::prelude::*;
use shears_layers::{
    AttentionBlock, AttentionContext, BertModel, LayerSpaces, ModelConfig, ModelInput, PruneError,
    SelfAttention, SpaceName,
};
use shears_spaces::{Scope, Space};

type B = NdArray<f32>;

#[test]
fn names_round_trip_through_their_text() {
    let names = [
        SpaceName::Hidden,
        SpaceName::Vocab,
        SpaceName::Positions,
        SpaceName::TokenTypes,
        SpaceName::Pooler,
        SpaceName::Heads(0),
        SpaceName::Heads(11),
        SpaceName::Ffn(3),
        SpaceName::AttentionBlock(2),
        SpaceName::FfnBlock(10),
        SpaceName::Declared("layers.1.attention.gain".into()),
        SpaceName::Declared("lora".into()),
    ];
    for name in names {
        assert_eq!(SpaceName::parse(&name.to_string()), name, "{name}");
    }
    assert_eq!(SpaceName::Heads(3).to_string(), "layers.3.heads");
    assert_eq!(SpaceName::FfnBlock(0).to_string(), "layers.0.ffn_block");
    assert_eq!(SpaceName::Ffn(4).layer(), Some(4));
    assert_eq!(SpaceName::Hidden.layer(), None);
    // Text that is not exactly a built-in name is a declared space, never a wrong layer.
    for text in [
        "layers.03.heads",
        "layers.x.ffn",
        "layers.1.heads.extra",
        "layers..ffn",
    ] {
        assert_eq!(
            SpaceName::parse(text),
            SpaceName::Declared(text.into()),
            "{text}"
        );
    }
}

fn tiny() -> ModelConfig {
    ModelConfig {
        max_positions: 16,
        ..ModelConfig::bert(40, 16, 2, 4, 12)
    }
}

fn logits(model: &BertModel<B>) -> Tensor<B, 3> {
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new((1..13i64).collect::<Vec<_>>(), [2, 6]),
        &Default::default(),
    );
    model.forward(ModelInput::new(ids)).hidden
}

#[test]
fn a_block_is_one_unit() {
    let device = Default::default();
    let model = BertModel::<B>::new(&tiny(), &device);
    // Burn initialises parameters lazily: clones of a model never run would each draw
    // their own weights.
    let _ = logits(&model);
    let by_block = model
        .clone()
        .keep(SpaceName::AttentionBlock(1), &[])
        .unwrap();
    let by_heads = model.clone().keep(SpaceName::Heads(1), &[]).unwrap();
    assert_eq!(by_block.config().layers[1].n_heads, 0);
    assert_eq!(by_block.config(), by_heads.config());
    let d: f32 = (logits(&by_block) - logits(&by_heads))
        .abs()
        .max()
        .into_scalar();
    assert_eq!(d, 0.0);
    let no_ffn = model.clone().keep(SpaceName::FfnBlock(0), &[]).unwrap();
    assert_eq!(no_ffn.config().layers[0].d_ff, 0);
    // Keeping the one unit changes nothing.
    let same = model.clone().keep(SpaceName::FfnBlock(0), &[0]).unwrap();
    assert_eq!(same.config(), model.config());
    let e = model
        .keep(SpaceName::AttentionBlock(0), &[0, 1])
        .unwrap_err();
    assert!(
        matches!(&e, PruneError::BlockUnits { block, keep } if block == "layers.0.attention_block" && keep == &[0, 1]),
        "{e}"
    );
}

/// Self-attention with a learned gain per "channel" of its own, in a space it declares.
#[derive(Module, Debug)]
struct GainAttention<B: Backend> {
    inner: SelfAttention<B>,
    gain: Param<Tensor<B, 1>>,
}

const GAINS: usize = 3;

fn gain_space(layer: usize) -> String {
    format!("layers.{layer}.attention.gain")
}

impl<B: Backend> AttentionBlock<B> for GainAttention<B> {
    fn new(config: &ModelConfig, layer: usize, device: &B::Device) -> Self {
        Self {
            inner: SelfAttention::new(config, layer, device),
            gain: Param::from_tensor(Tensor::ones([GAINS], device)),
        }
    }

    fn forward(&self, x: Tensor<B, 3>, context: &AttentionContext<B>) -> Tensor<B, 3> {
        self.inner.forward(x, context) * self.gain.val().mean().reshape([1, 1, 1])
    }

    fn declare(config: &ModelConfig, layer: usize, scope: &mut Scope<'_>, spaces: &LayerSpaces) {
        <SelfAttention<B> as AttentionBlock<B>>::declare(
            config,
            layer,
            &mut scope.child("inner"),
            spaces,
        );
        let gain = Space::new(gain_space(layer), GAINS);
        scope.register(&gain);
        scope.claim("gain", 0, &gain);
    }
}

#[test]
fn a_declared_space_is_a_typed_error() {
    let device = Default::default();
    let config = tiny();
    let model = BertModel::<B, GainAttention<B>>::new(&config, &device);
    let registry = BertModel::<B, GainAttention<B>>::registry(&config);
    registry
        .validate(&shears_layers::tensorio::param_shapes(&model))
        .unwrap();
    let name = SpaceName::parse(&gain_space(1));
    assert_eq!(name, SpaceName::Declared(gain_space(1)));
    let e = model.clone().keep(&name, &[0, 2]).unwrap_err();
    assert!(
        matches!(&e, PruneError::NotResizable { space } if space == &gain_space(1)),
        "{e}"
    );
    assert!(e.to_string().contains("layers.1.attention.gain"), "{e}");
    // The model's own spaces still prune.
    let pruned = model.keep(SpaceName::Heads(0), &[1, 3]).unwrap();
    assert_eq!(pruned.config().layers[0].head_ids, [1, 3]);
}
