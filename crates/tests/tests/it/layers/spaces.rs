//! The registries of BERT and GPT-2 validate against the real parameters, and snapshots
//! show the hidden space's members and one layer's heads space.

use burn::backend::NdArray;
use expect_test::expect;
use shears_layers::{BertModel, ModelConfig, tensorio};

use super::common::asset;

type B = NdArray<f32>;

#[test]
fn bert_registry_validates_and_snapshots() {
    let config = ModelConfig::bert(50, 16, 2, 4, 24);
    let model = BertModel::<B>::new(&config, &Default::default());
    let reg = BertModel::<B>::registry(&config);
    reg.validate(&tensorio::param_shapes(&model)).unwrap();
    expect![[r#"
        space hidden units=16 width=1 size=16
          embeddings.word.weight axis 1
          embeddings.position.weight axis 1
          embeddings.token_type.weight axis 1
          embeddings.norm.weight axis 0
          embeddings.norm.bias axis 0
          layers.0.attention.query.weight axis 0
          layers.0.attention.key.weight axis 0
          layers.0.attention.value.weight axis 0
          layers.0.attention.output.weight axis 1
          layers.0.attention.output.bias axis 0
          layers.0.ffn.up.weight axis 0
          layers.0.ffn.down.weight axis 1
          layers.0.ffn.down.bias axis 0
          layers.0.attention_norm.weight axis 0
          layers.0.attention_norm.bias axis 0
          layers.0.ffn_norm.weight axis 0
          layers.0.ffn_norm.bias axis 0
          layers.1.attention.query.weight axis 0
          layers.1.attention.key.weight axis 0
          layers.1.attention.value.weight axis 0
          layers.1.attention.output.weight axis 1
          layers.1.attention.output.bias axis 0
          layers.1.ffn.up.weight axis 0
          layers.1.ffn.down.weight axis 1
          layers.1.ffn.down.bias axis 0
          layers.1.attention_norm.weight axis 0
          layers.1.attention_norm.bias axis 0
          layers.1.ffn_norm.weight axis 0
          layers.1.ffn_norm.bias axis 0
          pooler.weight axis 0
    "#]]
    .assert_eq(&reg.table("hidden").unwrap());
    expect![[r#"
        space layers.1.heads units=4 width=4 size=16
          layers.1.attention.query.weight axis 1
          layers.1.attention.query.bias axis 0
          layers.1.attention.key.weight axis 1
          layers.1.attention.key.bias axis 0
          layers.1.attention.value.weight axis 1
          layers.1.attention.value.bias axis 0
          layers.1.attention.output.weight axis 0
    "#]]
    .assert_eq(&reg.table("layers.1.heads").unwrap());
    // The pooler's output has the hidden width but is not the hidden space.
    assert_eq!(
        reg.space("pooler").unwrap().size(),
        reg.space("hidden").unwrap().size()
    );
    assert_ne!(reg.space("pooler").unwrap(), reg.space("hidden").unwrap());
}

#[test]
fn gpt2_registry_validates_and_snapshots() {
    let config = ModelConfig::gpt2(40, 16, 1, 4, 24);
    let model = BertModel::<B>::new(&config, &Default::default());
    let reg = BertModel::<B>::registry(&config);
    reg.validate(&tensorio::param_shapes(&model)).unwrap();
    expect![[r#"
        space hidden units=16 width=1 size=16
          embeddings.word.weight axis 1
          embeddings.position.weight axis 1
          layers.0.attention.query.weight axis 0
          layers.0.attention.key.weight axis 0
          layers.0.attention.value.weight axis 0
          layers.0.attention.output.weight axis 1
          layers.0.attention.output.bias axis 0
          layers.0.ffn.up.weight axis 0
          layers.0.ffn.down.weight axis 1
          layers.0.ffn.down.bias axis 0
          layers.0.attention_norm.weight axis 0
          layers.0.attention_norm.bias axis 0
          layers.0.ffn_norm.weight axis 0
          layers.0.ffn_norm.bias axis 0
          final_norm.weight axis 0
          final_norm.bias axis 0
    "#]]
    .assert_eq(&reg.table("hidden").unwrap());
}

#[test]
fn real_minilm_registry_validates() {
    let model = BertModel::<B>::load(&asset("all-MiniLM-L6-v2"), &Default::default()).unwrap();
    let reg = BertModel::<B>::registry(model.config());
    reg.validate(&tensorio::param_shapes(&model)).unwrap();
    assert_eq!(reg.members(reg.space("hidden").unwrap()).count(), 78);
    assert_eq!(model.param_count(), 22_713_216);
    assert_eq!(model.config().param_count(), 22_713_216);
}
