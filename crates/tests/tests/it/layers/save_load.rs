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
