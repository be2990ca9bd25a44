//! Our format round-trips heterogeneous per-layer shapes; outputs survive save and load.

use burn::prelude::*;
use shears_layers::{BertModel, ModelInput};

use crate::common::*;
use crate::on_backend;

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

#[test]
fn heterogeneous_models_save_and_load() {
    on_backend!(roundtrip);
}
