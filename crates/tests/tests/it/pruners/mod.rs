//! Integration tests of `shears-pruners` on tiny models (backend from `SHEARS_BACKEND`).

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Param};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use shears_gates::{Draw, Harden, Lagrangian, Penalty, SparsityTarget};
use shears_layers::{ModelConfig, ModelInput, SpaceName, Transformer, tensorio};
use shears_pruners::{
    Calibrator, ClassifierHead, FactorizeReport, GateSpec, GatedModel, PrunerError, RankPlan,
    SizeMeasure, TaskModel, factorize_model,
};

mod posttrain;

fn tiny(config: ModelConfig) -> ModelConfig {
    ModelConfig {
        max_positions: 16,
        ..config
    }
}

fn max_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    (a - b).abs().max().into_scalar().elem()
}

fn input<B: Backend>(device: &B::Device, vocab: usize, seed: u64) -> ModelInput<B> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ids: Vec<i64> = (0..4 * 6)
        .map(|_| rng.random_range(0..vocab as i64))
        .collect();
    ModelInput::new(Tensor::from_data(TensorData::new(ids, [4, 6]), device))
}

fn hardened_equals_pruned<B: Backend>(device: &B::Device) {
    for config in [
        tiny(ModelConfig::bert(30, 16, 2, 4, 12)),
        tiny(ModelConfig::gpt2(30, 16, 2, 4, 12)),
    ] {
        let model = Transformer::<B>::new(&config, device);
        let mut gated = GatedModel::new(model, &every_gate(), device).unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        for g in &mut gated.gates.groups {
            let mut la: Vec<f32> = (0..g.gate.len())
                .map(|_| rng.random_range(-3.0..3.0))
                .collect();
            // Every head of layer 0 closes; the block gates keep layer 0's blocks and close
            // both of layer 1's.
            match g.space.as_str() {
                "layers.0.heads" => la.fill(-5.0),
                "layers.0.attention_block" | "layers.0.ffn_block" => la = vec![5.0],
                "layers.1.attention_block" | "layers.1.ffn_block" => la = vec![-5.0],
                _ => {}
            }
            g.gate.log_alpha = Param::from_tensor(Tensor::from_data(
                TensorData::new(la.clone(), [la.len()]),
                device,
            ));
        }
        let x = input::<B>(device, 30, 1);
        let masks = gated.hard_masks(Harden::Threshold(0.5)).unwrap();
        let kept_hidden: Vec<usize> = {
            let h: Vec<f32> = masks.hidden.clone().unwrap().into_data().to_vec().unwrap();
            (0..h.len()).filter(|&i| h[i] == 1.0).collect()
        };
        let masked = gated.model.forward(x.clone().with_masks(masks));
        let (pruned, report) = gated.prune(Harden::Threshold(0.5)).unwrap();
        assert!(pruned.param_count() < Transformer::<B>::new(&config, device).param_count());
        let out = pruned.forward(x);
        let idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                kept_hidden.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [kept_hidden.len()],
            ),
            device,
        );
        let d = max_diff(masked.hidden.select(2, idx), out.hidden);
        assert!(
            d <= 1e-5,
            "{:?}: hardened and pruned differ by {d}",
            config.family
        );
        assert_eq!(report.kept.len(), 9);
        let layers = &pruned.config().layers;
        assert_eq!(
            (layers[0].n_heads, layers[1].n_heads, layers[1].d_ff),
            (0, 0, 0)
        );
        assert!(layers[0].d_ff > 0);
        assert_eq!(report.headless_layers, [0, 1]);
        assert_eq!(report.neuronless_layers, [1]);
        assert!(report.rescued.is_empty(), "{:?}", report.rescued);
    }
}

/// Every kind of gate: heads, neurons, hidden dimensions and both blocks.
fn every_gate() -> GateSpec {
    GateSpec {
        heads: true,
        neurons: true,
        hidden: true,
        attention_blocks: true,
        ffn_blocks: true,
        ..Default::default()
    }
}

/// With every gate hard (open probability exactly 0 or 1), the expected size is the
/// parameter and FLOP count of the model that pruning gives, for random patterns over
/// every kind of gate, on BERT and GPT-2, dense and with factorized projections.
fn expected_size_is_exact_for_hard_gates<B: Backend>(device: &B::Device) {
    let mut rng = StdRng::seed_from_u64(11);
    let seq = 7;
    let measures = [SizeMeasure::Params, SizeMeasure::Flops { seq }];
    for trial in 0..12 {
        let mut config = if trial % 2 == 0 {
            tiny(ModelConfig::bert(30, 16, 2, 4, 12))
        } else {
            tiny(ModelConfig::gpt2(30, 16, 2, 4, 12))
        };
        if trial % 3 == 0 {
            config.layers[1].ranks.insert("ffn.up".into(), 3);
            config.layers[0].ranks.insert("attention.value".into(), 5);
        }
        let model = Transformer::<B>::new(&config, device);
        let mut gated = GatedModel::new(model, &every_gate(), device).unwrap();
        for g in &mut gated.gates.groups {
            // ±200: the open probability is exactly 0 or 1 in f32.
            let la: Vec<f32> = (0..g.gate.len())
                .map(|_| if rng.random_bool(0.6) { 200.0 } else { -200.0 })
                .collect();
            g.gate.log_alpha = Param::from_tensor(Tensor::from_data(
                TensorData::new(la.clone(), [la.len()]),
                device,
            ));
        }
        let expected: Vec<f64> = measures
            .iter()
            .map(|&m| gated.expected_size(m).into_scalar().elem::<f64>())
            .collect();
        let dense = SizeMeasure::Params.of(&config) as f64;
        let sparsity: f64 = gated
            .expected_size_sparsity(SizeMeasure::Params)
            .into_scalar()
            .elem();
        let (pruned, report) = gated.prune(Harden::Threshold(0.5)).unwrap();
        assert!(report.rescued.is_empty(), "{:?}", report.rescued);
        let c = pruned.config();
        for (m, e) in measures.iter().zip(&expected) {
            assert_eq!(*e, m.of(c) as f64, "trial {trial}, {m:?}, pruned {c:?}");
        }
        assert!((sparsity - (1.0 - expected[0] / dense)).abs() < 1e-6);
        // The config's count is the module's.
        assert_eq!(c.param_count(), pruned.param_count(), "trial {trial}");
    }
}

/// Hardening to a size target removes at least the target, no single closed unit (with
/// `round_to`, no step of that many FFN or hidden units) could be reopened within it, rounded
/// widths are multiples of `round_to` or full, and the pruned model has exactly the size the
/// hardening computed.
fn hardening_meets_size_targets<B: Backend>(device: &B::Device) {
    let mut rng = StdRng::seed_from_u64(23);
    for (trial, config) in [
        tiny(ModelConfig::bert(30, 16, 2, 4, 12)),
        tiny(ModelConfig::gpt2(30, 16, 2, 4, 12)),
    ]
    .into_iter()
    .enumerate()
    {
        for measure in [SizeMeasure::Params, SizeMeasure::Flops { seq: 7 }] {
            for (target, round_to) in [(0.3, 1), (0.5, 1), (0.7, 1), (0.3, 4), (0.5, 4), (0.6, 8)] {
                let model = Transformer::<B>::new(&config, device);
                let mut gated = GatedModel::new(model, &every_gate(), device).unwrap();
                for g in &mut gated.gates.groups {
                    let la: Vec<f32> = (0..g.gate.len())
                        .map(|_| rng.random_range(-3.0..3.0))
                        .collect();
                    g.gate.log_alpha = Param::from_tensor(Tensor::from_data(
                        TensorData::new(la.clone(), [la.len()]),
                        device,
                    ));
                }
                let case = format!("trial {trial} {measure:?} target {target} round_to {round_to}");
                let budget = (1.0 - target) * measure.of(&config) as f64;
                let kept = gated.harden_to_size(measure, target, round_to).unwrap();
                let size = gated.kept_size(&kept, measure);
                assert!(size <= budget, "{case}: {size} > {budget}");
                for (gi, k) in kept.iter().enumerate() {
                    let rounded = matches!(
                        SpaceName::parse(&k.space),
                        SpaceName::Ffn(_) | SpaceName::Hidden
                    );
                    let step = if rounded { round_to } else { 1 };
                    let n = k.keep.len();
                    assert!(
                        n % step == 0 || n == k.total,
                        "{case}: {} keeps {n} of {}",
                        k.space,
                        k.total
                    );
                    // The next allowed width up does not fit (which units: the count is all
                    // the size depends on).
                    if n < k.total {
                        let up = (n - n % step + step).min(k.total);
                        let mut more = kept.clone();
                        more[gi].keep = (0..up).collect();
                        let with = gated.kept_size(&more, measure);
                        assert!(
                            with > budget,
                            "{case}: {} could keep {up} ({with})",
                            k.space
                        );
                    }
                }
                // The gates choose which units, rounded or not: every kept unit of a group
                // is at least as open as every closed one.
                for (g, k) in gated.gates.groups.iter().zip(&kept) {
                    let la = g.gate.log_alpha_host();
                    let closed = (0..k.total).filter(|u| !k.keep.contains(u));
                    let most_open_closed = closed.map(|u| la[u]).fold(f32::MIN, f32::max);
                    let least_open_kept = k.keep.iter().map(|&u| la[u]).fold(f32::MAX, f32::min);
                    assert!(least_open_kept >= most_open_closed, "{case}: {}", k.space);
                }
                let (pruned, report) = gated.prune_to_size(measure, target, round_to).unwrap();
                assert!(report.rescued.is_empty(), "{case}: {:?}", report.rescued);
                assert_eq!(measure.of(pruned.config()) as f64, size, "{case}");
            }
        }
    }
    let model = Transformer::<B>::new(&tiny(ModelConfig::bert(30, 16, 1, 4, 12)), device);
    let gated = GatedModel::new(model, &every_gate(), device).unwrap();
    assert!(matches!(
        gated.harden_to_size(SizeMeasure::Params, 1.0, 1),
        Err(PrunerError::Gate(shears_gates::GateError::Target(t))) if t == 1.0
    ));
    assert_eq!(
        gated.harden_to_size(SizeMeasure::Params, 0.5, 0),
        Err(PrunerError::RoundTo(0))
    );
}

/// The expected size is differentiable: opening any gate more makes the model bigger.
fn expected_size_grows_with_every_gate<B: Backend>(device: &B::Device) {
    type A<B> = Autodiff<B>;
    let config = tiny(ModelConfig::bert(30, 16, 2, 4, 12));
    let model = Transformer::<A<B>>::new(&config, device);
    let gated = GatedModel::new(model, &every_gate(), device).unwrap();
    for m in [SizeMeasure::Params, SizeMeasure::Flops { seq: 7 }] {
        let size = gated.expected_size(m);
        let e: f64 = size.clone().into_scalar().elem();
        assert!(e > 0.0 && e < m.of(&config) as f64, "{m:?}: {e}");
        let grads = size.backward();
        for g in &gated.gates.groups {
            let d: Vec<f32> = g
                .gate
                .log_alpha
                .grad(&grads)
                .unwrap()
                .into_data()
                .to_vec()
                .unwrap();
            assert!(d.iter().all(|&x| x > 0.0), "{m:?} {}: {d:?}", g.space);
        }
    }
}

#[test]
fn nothing_gated_is_an_error() {
    let device = Default::default();
    let model = Transformer::<burn::backend::NdArray<f32>>::new(
        &tiny(ModelConfig::bert(30, 16, 1, 4, 12)),
        &device,
    );
    let spec = GateSpec {
        heads: false,
        ..Default::default()
    };
    assert_eq!(
        GatedModel::new(model, &spec, &device).unwrap_err(),
        PrunerError::NothingGated
    );
}

/// A size target above what the gated structures hold is a typed error naming the reachable
/// fraction, which is exactly what closing every gated unit removes; a target just below it
/// closes them all.
#[test]
fn targets_out_of_reach_are_refused() {
    type B = burn::backend::NdArray<f32>;
    let device = Default::default();
    let heads_only = GateSpec::default();
    for config in [
        tiny(ModelConfig::bert(30, 16, 2, 4, 12)),
        tiny(ModelConfig::gpt2(30, 16, 2, 4, 12)),
    ] {
        for measure in [SizeMeasure::Params, SizeMeasure::Flops { seq: 7 }] {
            let reachable = heads_only.reachable_sparsity(&config, measure);
            let mut headless = config.clone();
            for l in &mut headless.layers {
                l.n_heads = 0;
            }
            let exact = 1.0 - measure.of(&headless) as f64 / measure.of(&config) as f64;
            assert!(
                (reachable - exact).abs() < 1e-12,
                "{measure:?}: {reachable} vs {exact}"
            );
            assert!(
                reachable > 0.05 && reachable < 0.9,
                "{measure:?}: {reachable}"
            );
            assert_eq!(every_gate().reachable_sparsity(&config, measure), 1.0);
            let model = Transformer::<B>::new(&config, &device);
            let gated = GatedModel::new(model, &heads_only, &device).unwrap();
            let target = reachable + 0.01;
            match gated.harden_to_size(measure, target, 1) {
                Err(PrunerError::TargetOutOfReach {
                    target: t,
                    reachable: r,
                }) => {
                    assert_eq!(t, target);
                    assert!((r - reachable).abs() < 1e-9, "{r} vs {reachable}");
                    let message = PrunerError::TargetOutOfReach {
                        target: t,
                        reachable: r,
                    }
                    .to_string();
                    assert!(message.contains(&format!("{r:.4}")), "{message}");
                }
                other => panic!("{measure:?}: expected TargetOutOfReach, got {other:?}"),
            }
            let kept = gated.harden_to_size(measure, reachable - 1e-6, 1).unwrap();
            assert!(kept.iter().all(|k| k.keep.is_empty()), "{kept:?}");
        }
    }
}

/// Synthetic task: the label is whether token 1 occurs in the sequence.
fn batch<B: Backend>(rng: &mut StdRng, device: &B::Device) -> (ModelInput<B>, Tensor<B, 1, Int>) {
    let (n, s) = (16, 6);
    let mut ids = Vec::with_capacity(n * s);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let row: Vec<i64> = (0..s).map(|_| rng.random_range(2..20)).collect();
        let pos = rng.random_bool(0.5);
        let mut row = row;
        if pos {
            row[rng.random_range(0..s)] = 1;
        }
        labels.push(pos as i64);
        ids.extend(row);
    }
    (
        ModelInput::new(Tensor::from_data(TensorData::new(ids, [n, s]), device)),
        Tensor::from_data(TensorData::new(labels, [n]), device),
    )
}

fn accuracy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> f32 {
    let n = labels.dims()[0];
    let hits: i64 = logits
        .argmax(1)
        .reshape([n])
        .equal(labels)
        .int()
        .sum()
        .into_scalar()
        .elem();
    hits as f32 / n as f32
}

/// `model` with every tensor that is not constant redrawn from a host generator seeded with
/// `seed`, at the scale of its initialisation (Burn's initialisers draw from the backend's
/// process-wide seed, which tests running in parallel threads share).
fn reseed<B: Backend>(model: Transformer<B>, seed: u64, device: &B::Device) -> Transformer<B> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors = tensorio::export(&model);
    for t in tensors.values_mut() {
        let scale = t.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if t.data.iter().all(|v| *v == t.data[0]) || scale == 0.0 {
            continue;
        }
        for v in &mut t.data {
            *v = rng.random_range(-scale..scale);
        }
    }
    tensorio::import(model, &tensors, device).unwrap()
}

/// Steps of the gated training: 600 on the CPU, 300 on software Vulkan (where every step
/// costs about 30 times more); the target is reached at step 100 either way.
fn gated_steps() -> usize {
    if std::env::var("SHEARS_BACKEND").as_deref() == Ok("wgpu") {
        300
    } else {
        600
    }
}

/// Gated training of a tiny BERT classifier toward 50% of its 8 heads: returns the mean
/// expected sparsity of the last third of the steps and the trained model.
fn train_gated<B: Backend>(
    gate_lr: f64,
    device: &B::Device,
) -> (f64, shears_pruners::GatedTaskModel<Autodiff<B>>) {
    type A<B> = Autodiff<B>;
    let config = tiny(ModelConfig::bert(20, 16, 2, 4, 16));
    let model = reseed(Transformer::<A<B>>::new(&config, device), 11, device);
    let mut clf = TaskModel::classifier(model, ClassifierHead::new(16, 2, 12, device))
        .with_gates(&GateSpec::default(), device)
        .unwrap();
    let mut opt = AdamConfig::new().init();
    // Gates learn on their own, faster schedule (as CoFi does).
    let mut gate_opt = AdamConfig::new().init();
    // The augmented form (a quadratic term from the start), as the pipeline uses it.
    let mut lag =
        Lagrangian::new(SparsityTarget::new(0.5, 100).unwrap(), 0.05).with_quadratic(100.0);
    let mut rng = StdRng::seed_from_u64(2);
    let mut tail = Vec::new();
    let steps = gated_steps();
    for step in 0..steps {
        let (x, y) = batch::<A<B>>(&mut rng, device);
        let logits = clf.class_logits(x, Draw::Sample(step as u64)).unwrap();
        let task = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(device)
            .forward(logits, y);
        let loss = task + clf.gated.penalty(&Penalty::Lagrangian(lag), step);
        let mut grads = loss.backward();
        let gate_grads = GradientsParams::from_module(&mut grads, &clf.gated.gates);
        let rest = GradientsParams::from_grads(grads, &clf);
        clf.gated.gates = gate_opt.step(gate_lr, clf.gated.gates, gate_grads);
        clf = opt.step(3e-3, clf, rest);
        let s = clf.gated.expected_sparsity();
        lag.ascend(s, step);
        if step >= steps - steps / 3 {
            tail.push(s);
        }
        if std::env::var_os("SHEARS_TRACE").is_some() && step % 50 == 0 {
            eprintln!(
                "step {step} target {:.2} sparsity {s:.3} l1 {:.3} l2 {:.3}",
                lag.target.at(step),
                lag.l1,
                lag.l2
            );
        }
    }
    // The multipliers oscillate around the target; judge the mean of the last third.
    (tail.iter().sum::<f64>() / tail.len() as f64, clf)
}

/// What a working gated training reaches: the mean expected sparsity of the last third
/// within this of the 0.5 target.
const SPARSITY_BAND: f64 = 0.04;

fn train_gate_prune<B: Backend>(device: &B::Device) {
    let (s, clf) = train_gated::<B>(0.05, device);
    assert!(
        (s - 0.5).abs() < SPARSITY_BAND,
        "expected head sparsity {s}, target 0.5"
    );

    // Evaluate: hardened gated model vs the physically pruned model, on 256 fresh examples.
    let clf = clf.valid();
    let mut held_out = StdRng::seed_from_u64(99);
    let batches: Vec<_> = (0..16).map(|_| batch::<B>(&mut held_out, device)).collect();
    let masks = clf.gated.hard_masks(Harden::ExpectedL0).unwrap();
    let head = clf.head.clone().unwrap();
    let hardened_logits: Vec<_> = batches
        .iter()
        .map(|(x, _)| {
            head.forward(
                clf.gated
                    .model
                    .forward(x.clone().with_masks(masks.clone()))
                    .pooled
                    .unwrap(),
            )
        })
        .collect();
    let (pruned, report) = clf.prune(Harden::ExpectedL0).unwrap();
    let pruned = pruned.backbone;
    let kept: usize = report.kept.iter().map(|k| k.keep.len()).sum();
    assert!(
        (3..=5).contains(&kept),
        "kept {kept} of 8 heads for a 50% target"
    );
    assert_eq!(
        pruned
            .config()
            .layers
            .iter()
            .map(|l| l.n_heads)
            .sum::<usize>(),
        kept
    );
    let mut hits = (0.0, 0.0);
    for ((x, y), hardened) in batches.iter().zip(hardened_logits) {
        let pruned_logits = head.forward(pruned.forward(x.clone()).pooled.unwrap());
        let d = max_diff(hardened.clone(), pruned_logits.clone());
        assert!(d <= 1e-5, "hardened and pruned logits differ by {d}");
        hits.0 += accuracy(hardened, y.clone());
        hits.1 += accuracy(pruned_logits, y.clone());
    }
    assert_eq!(hits.0, hits.1);
    let acc = hits.1 / batches.len() as f32;
    assert!(
        acc > 0.9,
        "the pruned classifier reaches {acc} on 256 held-out examples"
    );

    // The pruned model saves, reloads and computes the same thing; no gates are left in it.
    let (x, _) = &batches[0];
    let pruned_logits = head.forward(pruned.forward(x.clone()).pooled.unwrap());
    let tmp = tempfile::tempdir().unwrap();
    pruned.save(&tmp.path().join("m")).unwrap();
    let back = Transformer::<B>::load(&tmp.path().join("m"), device).unwrap();
    assert!(
        tensorio::param_shapes(&back)
            .keys()
            .all(|k| !k.contains("gate"))
    );
    let d = max_diff(
        head.forward(back.forward(x.clone()).pooled.unwrap()),
        pruned_logits,
    );
    assert_eq!(d, 0.0);
}

/// Negative control of the sparsity check above: with frozen gates (gate learning rate 0)
/// the same run stays near the initial 6% expected sparsity and fails it.
#[test]
fn frozen_gates_fail_the_sparsity_check() {
    let (s, _) = train_gated::<burn::backend::NdArray<f32>>(0.0, &Default::default());
    assert!(
        (s - 0.5).abs() >= SPARSITY_BAND,
        "frozen gates reached expected sparsity {s}: the check cannot fail"
    );
}

fn calibrated<B: Backend>(model: &Transformer<B>, device: &B::Device) -> Calibrator {
    let mut cal = Calibrator::new();
    for seed in 0..4 {
        let x = input::<B>(device, 30, 100 + seed);
        // Padding in the last two positions of every row: left out of the statistics.
        let mask: Vec<f32> = (0..4 * 6)
            .map(|i| if i % 6 < 4 { 1.0 } else { 0.0 })
            .collect();
        let x = x.with_attention_mask(Tensor::from_data(TensorData::new(mask, [4, 6]), device));
        cal.observe(model, x).unwrap();
    }
    cal
}

fn factorize_tiny<B: Backend>(device: &B::Device) {
    use shears_factorize::{Method, Rank};
    for config in [
        tiny(ModelConfig::bert(30, 16, 2, 4, 32)),
        tiny(ModelConfig::gpt2(30, 16, 2, 4, 32)),
    ] {
        B::seed(device, 21);
        let model = Transformer::<B>::new(&config, device);
        let cal = calibrated(&model, device);
        assert_eq!(cal.tokens(), 4 * 4 * 4, "padding is not calibration data");
        let x = input::<B>(device, 30, 7);

        // A uniform rank: every projection where rank 4 saves work (16 x 16: max 7; 16 x 32:
        // max 10) is factorized.
        let (small, report) = factorize_model(
            model.clone(),
            &cal,
            &RankPlan::Uniform(Rank::Count(4)),
            Method::default(),
        )
        .unwrap();
        assert_eq!(report.projections.len(), 12);
        assert!(report.projections.iter().all(|p| p.rank_after == Some(4)));
        assert_eq!(small.config().layers[0].rank("ffn.up"), Some(4));
        assert!(report.params_after < report.params_before);
        assert_eq!(report.params_after, small.num_params());
        assert_eq!(small.num_params(), small.config().param_count());
        // Its spaces still validate, it saves and loads, and pruning heads still works on it.
        Transformer::<B>::registry(small.config())
            .validate(&tensorio::param_shapes(&small))
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        small.save(&tmp.path().join("m")).unwrap();
        let back = Transformer::<B>::load(&tmp.path().join("m"), device).unwrap();
        assert_eq!(back.config(), small.config());
        let out = small.forward(x.clone()).hidden;
        // The weights come back bit for bit; the outputs agree to rounding (wgpu may run a
        // different autotuned kernel on the second call: 2.4e-7 apart in one CI run).
        assert_eq!(tensorio::export(&back), tensorio::export(&small));
        let diff = max_diff(back.forward(x.clone()).hidden, out.clone());
        assert!(diff <= 1e-5, "reloaded model differs by {diff}");
        let pruned = small.clone().keep("layers.0.heads", &[0, 2]).unwrap();
        assert_eq!(pruned.config().layers[0].n_heads, 2);
        let _ = pruned.forward(x.clone());
        assert!(
            small
                .clone()
                .export_hf(&tmp.path().join("hf"), None)
                .is_err(),
            "a factorized BERT has no transformers layout"
        );

        // Data-aware solutions fit every projection at least as well as the weight SVD.
        let (_, svd) = factorize_model(
            model.clone(),
            &cal,
            &RankPlan::Uniform(Rank::Count(4)),
            Method::WeightSvd,
        )
        .unwrap();
        for (a, b) in report.projections.iter().zip(&svd.projections) {
            let (a, b) = (a.nmse.unwrap(), b.nmse.unwrap());
            assert!(a <= b + 1e-9, "data-aware {a} vs SVD {b}");
        }

        // A budget: about half the projection parameters.
        let (half, report) = factorize_model(
            model.clone(),
            &cal,
            &RankPlan::Budget(0.5),
            Method::default(),
        )
        .unwrap();
        let proj = |r: &FactorizeReport, after: bool| -> usize {
            r.projections
                .iter()
                .map(|p| {
                    if after {
                        p.params_after
                    } else {
                        p.params_before
                    }
                })
                .sum()
        };
        let ratio = proj(&report, true) as f64 / proj(&report, false) as f64;
        assert!(ratio <= 0.55, "budget 0.5 kept {ratio}");
        let _ = half.forward(x.clone());

        // Lowering the rank of a factorized model; raising it is refused.
        let ranks = [("layers.0.ffn.up".to_string(), 2)].into();
        let (lower, _) = factorize_model(
            small.clone(),
            &cal,
            &RankPlan::PerProjection(ranks),
            Method::default(),
        )
        .unwrap();
        assert_eq!(lower.config().layers[0].rank("ffn.up"), Some(2));
        let up = [("layers.0.ffn.up".to_string(), 6)].into();
        let e = factorize_model(
            small.clone(),
            &cal,
            &RankPlan::PerProjection(up),
            Method::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("cannot raise the rank from 4 to 6"),
            "{e}"
        );
        let bad = [("layers.0.ffn.sideways".to_string(), 2)].into();
        let e = factorize_model(
            small,
            &cal,
            &RankPlan::PerProjection(bad),
            Method::default(),
        )
        .unwrap_err();
        assert!(matches!(e, PrunerError::UnknownProjection { .. }), "{e}");
        let e = factorize_model(
            model.clone(),
            &cal,
            &RankPlan::Budget(1.5),
            Method::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("1.5"), "{e}");
        let e = factorize_model(
            model,
            &Calibrator::new(),
            &RankPlan::Budget(0.5),
            Method::default(),
        )
        .unwrap_err();
        assert!(matches!(e, PrunerError::NotCalibrated { .. }), "{e}");
    }
}

/// Tests that run on every backend CI covers: `cargo xtask test` runs the `backend::` tests on
/// each backend, everything else once.
mod backend {
    use super::posttrain::{
        folded_scales_equal_scaled_masks as posttrain_fold,
        mask_gradients_equal_finite_differences as posttrain_mask_gradients,
        selections_cost_what_the_pruned_model_costs as posttrain_costs,
        tuning_recovers_known_scales as posttrain_tune,
    };
    use super::*;

    #[test]
    fn hardened_gates_equal_the_pruned_model() {
        on_backend!(hardened_equals_pruned);
    }

    #[test]
    fn expected_size_equals_the_pruned_size_for_hard_gates() {
        on_backend!(expected_size_is_exact_for_hard_gates);
    }

    #[test]
    fn hardening_meets_a_size_target_within_one_unit() {
        on_backend!(hardening_meets_size_targets);
    }

    #[test]
    fn expected_size_is_differentiable_in_every_gate() {
        on_backend!(expected_size_grows_with_every_gate);
    }

    #[test]
    fn gated_training_closes_heads_and_pruning_removes_them() {
        on_backend!(train_gate_prune);
    }

    #[test]
    fn factorized_models_fit_their_calibration_and_keep_working() {
        on_backend!(factorize_tiny);
    }

    #[test]
    fn mask_gradients_equal_finite_differences() {
        on_backend!(posttrain_mask_gradients);
    }

    #[test]
    fn selections_cost_what_the_pruned_model_costs() {
        on_backend!(posttrain_costs);
    }

    #[test]
    fn folded_scales_equal_scaled_masks() {
        on_backend!(posttrain_fold);
    }

    #[test]
    fn mask_tuning_recovers_known_scales() {
        on_backend!(posttrain_tune);
    }
}
