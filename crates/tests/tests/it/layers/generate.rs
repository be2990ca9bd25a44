//! Generation with a GPT-2 (issue 16): the key/value cache gives the logits of the full
//! forward pass, greedy and seeded sampling are deterministic, requests that cannot run are
//! typed errors, and the GPT-2 tokenizer decodes what it encodes.

use burn::prelude::*;
use shears_layers::{
    BertModel, Family, GenerateError, GenerateOptions, Gpt2Model, KvCache, ModelConfig, ModelInput,
    Tokenizer,
};

use super::common::{asset, irregular, randomised};

/// A tiny GPT-2 of random weights pruned to an irregular shape (a layer without heads, one
/// without neurons, a pruned hidden size).
fn pruned_gpt2<B: Backend>(device: &B::Device) -> Gpt2Model<B> {
    let mut config = ModelConfig::gpt2(40, 16, 3, 4, 24);
    config.max_positions = 32;
    irregular(randomised(&config, device, 53))
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// A prompt of 4 tokens, then 20 tokens one at a time through the cache: each step's logits
/// equal the full forward pass's at that position (to 1e-5 of the largest logit).
fn cache_equals_full_pass<B: Backend>(device: &B::Device) {
    let model = pruned_gpt2::<B>(device);
    let seq: Vec<i64> = (0..24).map(|i| (i * 7 + 3) % 40).collect();
    let ids =
        Tensor::<B, 1, Int>::from_data(TensorData::new(seq.clone(), [24]), device).reshape([1, 24]);
    let full = values(model.forward(ModelInput::new(ids)).logits.unwrap());
    let scale = full.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let mut cache = KvCache::new();
    let mut cached = Vec::new();
    let prompt = Tensor::<B, 1, Int>::from_data(TensorData::new(seq[..4].to_vec(), [4]), device)
        .reshape([1, 4]);
    cached.extend(values(model.forward_cached(prompt, &mut cache).unwrap()));
    for &t in &seq[4..] {
        let one =
            Tensor::<B, 1, Int>::from_data(TensorData::new(vec![t], [1]), device).reshape([1, 1]);
        cached.extend(values(model.forward_cached(one, &mut cache).unwrap()));
    }
    assert_eq!(cache.len(), 24);
    assert_eq!(cached.len(), full.len());
    let diff = full
        .iter()
        .zip(&cached)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("cache vs full pass: max |diff| {diff:e}, largest logit {scale}");
    assert!(diff <= 1e-5 * scale.max(1.0), "{diff} (scale {scale})");

    // A second prompt-sized call after the prompt is refused; so is a position past the table.
    let two =
        Tensor::<B, 1, Int>::from_data(TensorData::new(vec![1i64, 2], [2]), device).reshape([1, 2]);
    assert_eq!(
        model.forward_cached(two, &mut cache).unwrap_err(),
        GenerateError::StepTooWide {
            cached: 24,
            given: 2
        }
    );
}

/// Greedy generation runs the same tokens every time, and sampling with a seed too; top-k
/// 1 is greedy; other seeds give other samples.
fn generation_is_deterministic<B: Backend>(device: &B::Device) {
    let model = pruned_gpt2::<B>(device);
    let prompt = [5u32, 17, 2, 33];
    let greedy = GenerateOptions {
        max_tokens: 12,
        ..Default::default()
    };
    let a = model.generate(&prompt, &greedy).unwrap();
    assert_eq!(a.tokens.len(), 12);
    assert_eq!(model.generate(&prompt, &greedy).unwrap().tokens, a.tokens);
    let sample = |seed, top_k| GenerateOptions {
        max_tokens: 12,
        temperature: 1.0,
        top_k,
        seed,
        stop: None,
    };
    assert_eq!(
        model.generate(&prompt, &sample(3, 1)).unwrap().tokens,
        a.tokens,
        "top-k 1 is greedy"
    );
    let s3 = model.generate(&prompt, &sample(3, 0)).unwrap().tokens;
    assert_eq!(model.generate(&prompt, &sample(3, 0)).unwrap().tokens, s3);
    assert!(s3.iter().all(|&t| t < 40));
    let others: Vec<Vec<u32>> = (4..8)
        .map(|seed| model.generate(&prompt, &sample(seed, 0)).unwrap().tokens)
        .collect();
    assert!(others.iter().any(|o| *o != s3), "every seed sampled {s3:?}");
    // `stop` ends the generation at that token (included).
    let stop = GenerateOptions {
        stop: Some(a.tokens[2]),
        ..greedy
    };
    let first = a.tokens.iter().position(|&t| t == a.tokens[2]).unwrap();
    assert_eq!(
        model.generate(&prompt, &stop).unwrap().tokens,
        a.tokens[..=first]
    );
}

#[test]
fn requests_that_cannot_run_are_typed_errors() {
    type B = burn::backend::Flex;
    let device = Default::default();
    let model = pruned_gpt2::<B>(&device);
    let opts = |max_tokens| GenerateOptions {
        max_tokens,
        ..Default::default()
    };
    let e = model.generate(&[1; 10], &opts(23)).unwrap_err();
    assert_eq!(
        e,
        GenerateError::TooLong {
            prompt: 10,
            new: 23,
            max_positions: 32
        }
    );
    assert!(e.to_string().contains("33 positions"), "{e}");
    assert!(model.generate(&[1; 10], &opts(22)).is_ok());
    assert_eq!(
        model.generate(&[], &opts(3)).unwrap_err(),
        GenerateError::EmptyPrompt
    );
    assert_eq!(
        model.generate(&[40], &opts(3)).unwrap_err(),
        GenerateError::UnknownToken { id: 40, vocab: 40 }
    );
    let hot = GenerateOptions {
        temperature: -1.0,
        ..opts(3)
    };
    assert_eq!(
        model.generate(&[1], &hot).unwrap_err(),
        GenerateError::BadTemperature(-1.0)
    );
    let bert = BertModel::<B>::new(&ModelConfig::bert(40, 16, 1, 4, 24), &device);
    assert_eq!(
        bert.generate(&[1], &opts(3)).unwrap_err(),
        GenerateError::NotCausal(Family::Bert)
    );
}

/// GPT-2's byte-level BPE gives back every real line it encodes (Rotten Tomatoes reviews
/// and plot lines, accents and punctuation included).
#[test]
fn gpt2_tokenizer_decodes_what_it_encodes() {
    let tok = Tokenizer::from_dir(&asset("gpt2-tokenizer")).unwrap();
    let table = shears_train::data::read_table(
        &asset("data/rotten_tomatoes_corpus_full.csv.bz2"),
        "text",
        None,
        &[],
    )
    .unwrap();
    let mut non_ascii = 0;
    for row in table.rows.iter().take(2000) {
        let ids = tok.encode(&row.text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), row.text);
        non_ascii += usize::from(!row.text.is_ascii());
    }
    assert!(non_ascii > 0, "no line outside ASCII among the first 2,000");
    // `<|endoftext|>` is a special token: left out of the text.
    let mut ids = tok.encode("a fine film").unwrap();
    ids.push(tok.pad_id());
    assert_eq!(tok.decode(&ids).unwrap(), "a fine film");
}

mod backend {
    use super::{cache_equals_full_pass, generation_is_deterministic};

    #[test]
    fn kv_cache_equals_the_full_forward_pass() {
        on_backend!(cache_equals_full_pass)
    }

    #[test]
    fn greedy_and_seeded_generation_are_deterministic() {
        on_backend!(generation_is_deterministic)
    }
}
