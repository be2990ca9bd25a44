//! Our format round-trips heterogeneous per-layer shapes; outputs survive save and load.

use burn::prelude::*;
use shears_layers::{BertModel, ModelInput};

use super::common::*;

fn roundtrip<B: Backend>(device: &B::Device) {
    for model in [tiny_bert::<B>(device, 3), tiny_gpt2::<B>(device, 4)] {
        let pruned = model
            .keep("layers.0.heads", &[1, 3])
            .unwrap()
            .keep("layers.1.heads", &[0, 1, 2])
            .unwrap()
            .keep("layers.0.ffn", &(0..10).collect::<Vec<_>>())
            .unwrap()
            .keep(
                "hidden",
                &(0..16).filter(|i| i % 3 != 0).collect::<Vec<_>>(),
            )
            .unwrap();
        let c = pruned.config();
        assert_eq!(
            (
                c.layers[0].n_heads,
                c.layers[1].n_heads,
                c.layers[0].d_ff,
                c.d_model
            ),
            (2, 3, 10, 10)
        );
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        pruned.save(&dir).unwrap();
        let back = BertModel::<B>::load(&dir, device).unwrap();
        assert_eq!(back.config(), pruned.config());
        let (ids, pad) = random_input::<B>(device, c.vocab_size, 2, 6, 1);
        let input = ModelInput::new(ids).with_attention_mask(pad);
        let d = max_diff(
            &host(pruned.forward(input.clone()).hidden),
            &host(back.forward(input).hidden),
        );
        assert_eq!(d, 0.0, "save/load changed the outputs by {d}");
        // Saving again replaces the directory atomically and leaves no temporary files.
        back.save(&dir).unwrap();
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["m"]);
    }
}

fn headless_layer_exports<B: Backend>(device: &B::Device) {
    // Layer 1 loses every head. transformers cannot run a headless layer, so the export
    // carries one all-zero placeholder head; loading the export gives the same outputs.
    let model = tiny_bert::<B>(device, 5)
        .prune_heads(&[(0, vec![2]), (1, vec![0, 1, 2, 3])].into())
        .unwrap();
    assert_eq!(model.config().layers[1].n_heads, 0);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hf");
    model.export_hf(&dir, None).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["pruned_heads"],
        serde_json::json!({"0": [2], "1": [1, 2, 3]})
    );
    let back = BertModel::<B>::load(&dir, device).unwrap();
    assert_eq!(back.config().layers[1].n_heads, 1);
    let (ids, pad) = random_input::<B>(device, model.config().vocab_size, 2, 6, 9);
    let input = ModelInput::new(ids).with_attention_mask(pad);
    let d = max_diff(
        &host(model.forward(input.clone()).hidden),
        &host(back.forward(input).hidden),
    );
    assert!(d <= 1e-6, "placeholder head changed the outputs by {d}");
}

/// Tests that run on every backend CI covers: `cargo xtask test` runs the `backend::` tests on
/// each backend, everything else once.
mod backend {
    use super::*;

    #[test]
    fn heterogeneous_models_save_and_load() {
        on_backend!(roundtrip);
    }

    #[test]
    fn headless_layers_export_to_hugging_face() {
        on_backend!(headless_layer_exports);
    }
}

/// HF -> shears -> HF writes every tensor it loaded unchanged, under its own key (issue
/// 14): all-MiniLM-L6-v2 (F32) and an F16 copy of it (values kept exactly in F32 and
/// written back as F16 bit for bit).
#[test]
fn hf_checkpoints_export_unchanged() {
    use shears_layers::hf::{self, Dtype};
    type N = burn::backend::NdArray<f32>;
    let src = asset("all-MiniLM-L6-v2");
    let original = hf::read_safetensors(&src.join("model.safetensors")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let f16_dir = tmp.path().join("f16");
    std::fs::create_dir(&f16_dir).unwrap();
    std::fs::copy(src.join("config.json"), f16_dir.join("config.json")).unwrap();
    hf::write_safetensors_as(&f16_dir.join("model.safetensors"), &original, Dtype::F16).unwrap();
    for (dir, dtype) in [(src.clone(), Dtype::F32), (f16_dir, Dtype::F16)] {
        let model = BertModel::<N>::load(&dir, &Default::default()).unwrap();
        let out = tmp.path().join(format!("out-{dtype:?}"));
        model.export_hf_as(&out, None, None, dtype).unwrap();
        let raw = |d: &std::path::Path| std::fs::read(d.join("model.safetensors")).unwrap();
        let (a, b) = (raw(&dir), raw(&out));
        let a = safetensors::SafeTensors::deserialize(&a).unwrap();
        let b = safetensors::SafeTensors::deserialize(&b).unwrap();
        let mut names: Vec<String> = a
            .names()
            .into_iter()
            .filter(|k| !k.ends_with("position_ids"))
            .map(str::to_string)
            .collect();
        names.sort();
        let mut written: Vec<String> = b.names().into_iter().map(str::to_string).collect();
        written.sort();
        assert_eq!(names, written, "{dtype:?}");
        for k in &names {
            let (x, y) = (a.tensor(k).unwrap(), b.tensor(k).unwrap());
            assert_eq!(
                (x.dtype(), x.shape(), x.data()),
                (y.dtype(), y.shape(), y.data()),
                "{dtype:?} {k}"
            );
        }
    }
}
