//! Masks on Burn modules: path patterns, masks from host criteria, masked weights staying
//! zero through optimizer steps, squash. Generic over the backend (`SHEARS_BACKEND`).

use burn::backend::Autodiff;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::relu;
use shears_sparsify::{
    Config, Layout, Magnitude, Mask, MaskMap, ModuleSparsifier, NM, SparsifyError, Wanda,
    WandaStats, apply_masks, compute_masks, matches, param_shapes, select_params, step_and_mask,
};

/// Two linear layers, 8 -> 16 -> 4.
#[derive(Module, Debug)]
struct Tiny<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
}

impl<B: Backend> Tiny<B> {
    fn new(device: &B::Device) -> Self {
        Self {
            fc1: LinearConfig::new(8, 16).init(device),
            fc2: LinearConfig::new(16, 4).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.fc2.forward(relu(self.fc1.forward(x)))
    }
}

#[test]
fn patterns_match_dotted_paths() {
    for (pattern, path, want) in [
        (
            "encoder.layers.*.ffn.*.weight",
            "encoder.layers.3.ffn.fc1.weight",
            true,
        ),
        (
            "encoder.layers.*.ffn.*.weight",
            "encoder.layers.3.attn.q.weight",
            false,
        ),
        ("*.weight", "fc1.weight", true),
        ("*.weight", "a.fc1.weight", false),
        ("**.weight", "a.fc1.weight", true),
        ("**.weight", "weight", true),
        ("**", "anything.at.all", true),
        ("fc*.bias", "fc2.bias", true),
        ("fc*.bias", "fc2.weight", false),
        ("fc1.weight", "fc1.weight", true),
        ("fc1.weight", "fc1.weights", false),
        ("layers.1*.w", "layers.12.w", true),
    ] {
        assert_eq!(matches(pattern, path), want, "{pattern} vs {path}");
    }
}

/// Checks that `after` is `before` with the masked entries zero.
fn check_masked(before: &[f32], after: &[f32], mask: &Mask, what: &str) {
    for (i, &keep) in mask.bits().iter().enumerate() {
        if keep {
            assert_eq!(after[i], before[i], "{what}[{i}] kept");
        } else {
            assert_eq!(after[i], 0.0, "{what}[{i}] masked");
        }
    }
}

fn masks_on_a_module<B: Backend>(device: &B::Device) {
    let model = Tiny::<B>::new(device);
    let shapes = param_shapes(&model);
    let paths: Vec<&str> = shapes.keys().map(String::as_str).collect();
    assert_eq!(paths, ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]);
    assert_eq!(shapes["fc1.weight"], vec![8, 16]); // Burn's [in, out]

    let nm = NM::along_columns(2, 4).unwrap();
    let masks = compute_masks(&model, &["*.weight"], &nm, &Config::default()).unwrap();
    let keys: Vec<&str> = masks.keys().map(String::as_str).collect();
    assert_eq!(keys, ["fc1.weight", "fc2.weight"]);
    assert_eq!(masks["fc1.weight"].count_zeros(), 8 * 16 / 2);

    let before = select_params(&model, &["**"]).unwrap();
    let model = apply_masks(model, &masks).unwrap();
    let after = select_params(&model, &["**"]).unwrap();
    for (path, mask) in &masks {
        check_masked(&before[path].data, &after[path].data, mask, path);
    }
    assert_eq!(after["fc1.bias"], before["fc1.bias"]);

    // Wrong inputs are typed errors.
    assert_eq!(
        compute_masks(&model, &["fc3.*"], &nm, &Config::default()).map(|_| ()),
        Err(SparsifyError::NoMatch("fc3.*".into()))
    );
    let mut bad = MaskMap::new();
    bad.insert("fc9.weight".into(), Mask::ones(&[8, 16]));
    assert_eq!(
        apply_masks(model.clone(), &bad).map(|_| ()),
        Err(SparsifyError::UnknownPath("fc9.weight".into()))
    );
    let mut bad = MaskMap::new();
    bad.insert("fc1.weight".into(), Mask::ones(&[16, 8]));
    assert!(matches!(
        apply_masks(model.clone(), &bad),
        Err(SparsifyError::Shape { .. })
    ));

    // Wanda with activation statistics of fc1's input, keyed by the parameter path.
    let x = Tensor::<B, 2>::random([32, 8], Distribution::Normal(0.0, 1.0), device);
    let rows: Vec<f32> = x.into_data().convert::<f32>().to_vec().unwrap();
    let mut stats = WandaStats::new();
    stats.observe(&rows, 8).unwrap();
    let mut wanda = Wanda::new(Layout::InOut);
    wanda.insert("fc1.weight", &stats);
    let config = Config::default().with_sparsity_level(0.5);
    let masks = compute_masks(&model, &["fc1.weight"], &wanda, &config).unwrap();
    // Every output (column of the [in, out] weight) keeps 4 of its 8 inputs.
    let bits = masks["fc1.weight"].bits();
    for o in 0..16 {
        let dropped = (0..8).filter(|&i| !bits[i * 16 + o]).count();
        assert_eq!(dropped, 4, "output {o}");
    }
}

fn loss<B: burn::tensor::backend::AutodiffBackend>(
    model: &Tiny<B>,
    device: &B::Device,
) -> Tensor<B, 1> {
    let x = Tensor::<B, 2>::random([6, 8], Distribution::Normal(0.0, 1.0), device);
    let y = model.forward(x);
    (y.clone() * y).mean()
}

fn masked_weights_stay_zero_through_training<B: Backend>(device: &B::Device) {
    type A<B> = Autodiff<B>;
    A::<B>::seed(device, 3);
    let model = Tiny::<A<B>>::new(device);
    let config = Config::default().with_sparsity_level(0.5);
    let mut sp = ModuleSparsifier::new(Magnitude, config, &["*.weight"]).unwrap();
    sp.step(&model).unwrap();
    assert_eq!(sp.masks().len(), 2);
    let mut model = sp.apply(model).unwrap();
    let start = select_params(&model, &["**"]).unwrap();

    // A plain optimizer step moves masked weights off zero: that is why masks are reapplied.
    let grads = GradientsParams::from_grads(loss(&model, device).backward(), &model);
    let mut plain = AdamConfig::new().init::<A<B>, Tiny<A<B>>>();
    let stepped = plain.step(0.05, model.clone(), grads);
    let moved = select_params(&stepped, &["fc1.weight"]).unwrap();
    let mask = &sp.masks()["fc1.weight"];
    let off_zero = (0..mask.len())
        .filter(|&i| !mask.bits()[i] && moved["fc1.weight"].data[i] != 0.0)
        .count();
    assert!(off_zero > 0, "Adam should move some masked weights");

    let mut optim = AdamConfig::new().init::<A<B>, Tiny<A<B>>>();
    for _ in 0..5 {
        let grads = GradientsParams::from_grads(loss(&model, device).backward(), &model);
        model = step_and_mask(&mut optim, 0.05, model, grads, sp.masks()).unwrap();
    }
    let now = select_params(&model, &["*.weight"]).unwrap();
    for (path, mask) in sp.masks() {
        let (w, w0) = (&now[path].data, &start[path].data);
        for (i, &keep) in mask.bits().iter().enumerate() {
            if !keep {
                assert_eq!(w[i], 0.0, "{path}[{i}] masked");
            }
        }
        // Training went on for the kept weights (parameters stayed trainable).
        let changed = (0..w.len())
            .filter(|&i| mask.bits()[i] && w[i] != w0[i])
            .count();
        assert!(changed > 0, "{path}: no kept weight changed");
    }

    let model = sp.squash(model).unwrap();
    assert!(sp.masks().is_empty());
    let squashed = select_params(&model, &["*.weight"]).unwrap();
    assert_eq!(squashed, now);
}

/// Tests that run on every backend CI covers: `cargo xtask test` runs the `backend::` tests on
/// each backend, everything else once.
mod backend {
    use super::*;

    #[test]
    fn masks_on_a_module_on_backend() {
        on_backend!(masks_on_a_module);
    }

    #[test]
    fn masked_weights_stay_zero_through_training_on_backend() {
        on_backend!(masked_weights_stay_zero_through_training);
    }
}
