//! Integration tests of `shears-gates`: the distribution's statistics against the closed
//! forms, penalties, determinism, hardening, and the Lagrangian reaching its target.

use burn::backend::Autodiff;
use burn::module::Param;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use shears_gates::{
    Draw, GateConfig, GateError, GateSet, HardConcreteGate, Harden, Lagrangian, SparsityTarget,
};

fn host(t: Tensor<impl Backend, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn gate_with<B: Backend>(log_alpha: f32, n: usize, device: &B::Device) -> HardConcreteGate<B> {
    let mut g = GateConfig::default().init::<B>(n, device).unwrap();
    g.log_alpha = Param::from_tensor(Tensor::full([n], log_alpha, device));
    g
}

fn sampled_statistics_match_closed_form<B: Backend>(device: &B::Device) {
    let n = 40_000;
    for (k, la) in [-2.0f32, -0.5, 0.0, 1.0, 2.5].into_iter().enumerate() {
        let g = gate_with::<B>(la, n, device);
        let z = host(g.sample(7 + k as u64));
        let zeros = z.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        let ones = z.iter().filter(|&&v| v == 1.0).count() as f64 / n as f64;
        let p0 = host(g.p_closed())[0] as f64;
        let p1 = host(g.p_one())[0] as f64;
        // 4 standard errors of a proportion over 40,000 draws is at most 0.01.
        assert!(
            (zeros - p0).abs() < 0.01,
            "log α {la}: P(z=0) sampled {zeros}, closed form {p0}"
        );
        assert!(
            (ones - p1).abs() < 0.01,
            "log α {la}: P(z=1) sampled {ones}, closed form {p1}"
        );
        assert!(z.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}

fn penalty_and_determinism<B: Backend>(device: &B::Device) {
    let mut last = -1.0;
    for la in [-3.0f32, -1.0, 0.0, 1.0, 3.0] {
        let g = gate_with::<B>(la, 4, device);
        let p = host(g.l0_penalty(0.5))[0];
        assert!(p > last, "penalty must grow with log α: {p} after {last}");
        assert!(p > 0.0 && p < 0.5 * 4.0);
        last = p;
    }
    let g = gate_with::<B>(0.3, 64, device);
    assert_eq!(
        host(g.gates(Draw::Eval)),
        host(g.gates(Draw::Eval)),
        "evaluation mode must be deterministic"
    );
    assert_ne!(
        host(g.gates(Draw::Sample(1))),
        host(g.gates(Draw::Sample(2))),
        "training mode must be noisy"
    );
    assert_eq!(
        host(g.gates(Draw::Sample(3))),
        host(g.gates(Draw::Sample(3))),
        "a sample is a function of its key"
    );
    assert_ne!(Draw::Sample(3).for_group(0), Draw::Sample(3).for_group(1));
    // Evaluation value: clip(σ(log α)(h - l) + l, 0, 1).
    let expect = (1.0 / (1.0 + (-0.3f64).exp())) * 1.2 - 0.1;
    assert!((host(g.value())[0] as f64 - expect).abs() < 1e-6);
}

fn hardening<B: Backend>(device: &B::Device) {
    let mut set = GateSet::<B>::default();
    let cfg = GateConfig::default();
    set.add("layers.0.heads", 4, &cfg, device).unwrap();
    set.add("layers.1.heads", 4, &cfg, device).unwrap();
    let la = [[3.0f32, -4.0, 0.5, -1.0], [-3.0, 2.0, -0.2, 1.5]];
    for (g, v) in set.groups.iter_mut().zip(la) {
        g.gate.log_alpha = Param::from_tensor(Tensor::from_floats(v, device));
    }
    for count in 0..=8 {
        let kept = set.harden(Harden::Count(count)).unwrap();
        assert_eq!(kept.iter().map(|k| k.keep.len()).sum::<usize>(), count);
    }
    let kept = set.harden(Harden::Count(3)).unwrap();
    assert_eq!(kept[0].keep, [0]);
    assert_eq!(kept[1].keep, [1, 3]);
    assert_eq!(kept[1].space, "layers.1.heads");
    // Threshold 0.5 on the deterministic value keeps σ(log α) > 0.5 i.e. log α > 0.
    let kept = set.harden(Harden::Threshold(0.5)).unwrap();
    assert_eq!(
        (kept[0].keep.clone(), kept[1].keep.clone()),
        (vec![0, 2], vec![1, 3])
    );
    let expected: f32 = set.expected_open().into_scalar().elem();
    let kept = set.harden(Harden::ExpectedL0).unwrap();
    assert_eq!(
        kept.iter().map(|k| k.keep.len()).sum::<usize>(),
        expected.round() as usize
    );
    assert_eq!(
        set.harden(Harden::Count(9)).unwrap_err(),
        GateError::Count { count: 9, total: 8 }
    );
}

#[test]
fn bad_settings_are_typed_errors() {
    let device = Default::default();
    let bad = GateConfig {
        low: 0.1,
        ..GateConfig::default()
    };
    assert!(matches!(
        bad.init::<burn::backend::NdArray<f32>>(3, &device)
            .unwrap_err(),
        GateError::Stretch { .. }
    ));
    let bad = GateConfig {
        temperature: 0.0,
        ..GateConfig::default()
    };
    assert_eq!(bad.validate().unwrap_err(), GateError::Temperature(0.0));
    assert_eq!(
        SparsityTarget::new(1.0, 10).unwrap_err(),
        GateError::Target(1.0)
    );
    assert_eq!(
        SparsityTarget::new(-0.1, 10).unwrap_err(),
        GateError::Target(-0.1)
    );
    let t = SparsityTarget::new(0.6, 100).unwrap();
    assert_eq!(
        (t.at(0), t.at(50), t.at(100), t.at(500)),
        (0.0, 0.3, 0.6, 0.6)
    );
}

/// What [`train_gates`] saw.
struct Run<B: Backend> {
    /// Mean expected sparsity over the last 500 of 2,500 steps.
    tail: f64,
    /// Largest expected sparsity over the whole run.
    peak: f64,
    gates: GateSet<Autodiff<B>>,
}

/// Trains 60 gates against a task that rewards open gates plus the Lagrangian with ascent
/// rate `lr` and initial quadratic multiplier `quadratic` (the multipliers oscillate around
/// the target with decaying amplitude).
fn train_gates<B: Backend>(device: &B::Device, lr: f64, quadratic: f64) -> Run<B> {
    type A<B> = Autodiff<B>;
    A::<B>::seed(device, 3);
    let mut set = GateSet::<A<B>>::default();
    set.add("units", 60, &GateConfig::default(), device)
        .unwrap();
    let target = SparsityTarget::new(0.6, 200).unwrap();
    let mut lag = Lagrangian::new(target, lr).with_quadratic(quadratic);
    let mut opt = AdamConfig::new().init();
    // A task that rewards open gates, unevenly: without the Lagrangian every gate stays open.
    let reward: Vec<f32> = (0..60).map(|i| 0.002 * (1.0 + i as f32 / 60.0)).collect();
    let reward = Tensor::<A<B>, 1>::from_floats(reward.as_slice(), device);

    let mut tail = Vec::new();
    let mut peak = 0.0f64;
    for step in 0..2500 {
        let z = set.groups[0].gate.sample(step as u64);
        let task = (z * reward.clone()).sum().neg();
        let sparsity = set.expected_sparsity();
        let s = sparsity.clone().into_scalar().elem::<f32>() as f64;
        let loss = task + lag.term(sparsity, step);
        let grads = GradientsParams::from_grads(loss.backward(), &set);
        set = opt.step(0.05, set, grads);
        lag.ascend(s, step);
        peak = peak.max(s);
        if step >= 2000 {
            tail.push(s);
        }
        if std::env::var_os("SHEARS_TRACE").is_some() && step % 50 == 0 {
            eprintln!(
                "step {step} target {:.3} sparsity {s:.3} l1 {:.3} l2 {:.3}",
                target.at(step),
                lag.l1,
                lag.l2
            );
        }
    }
    Run {
        tail: tail.iter().sum::<f64>() / tail.len() as f64,
        peak,
        gates: set,
    }
}

fn lagrangian_reaches_target<B: Backend>(device: &B::Device) {
    // Control: with the multipliers frozen at 0 the gates stay open.
    let s = train_gates::<B>(device, 0.0, 0.0).tail;
    assert!(
        s < 0.05,
        "without the Lagrangian the sparsity should stay near 0, got {s}"
    );
    let plain = train_gates::<B>(device, 0.05, 0.0);
    let s = plain.tail;
    eprintln!(
        "Lagrangian: expected sparsity {s:.3} for target 0.6 (peak {:.3})",
        plain.peak
    );
    assert!(
        (s - 0.6).abs() < 0.03,
        "expected sparsity {s} did not reach the target 0.6"
    );
    // And hardening by expected L0 then removes about that many units.
    let kept = plain.gates.harden(Harden::ExpectedL0).unwrap();
    let removed = 60 - kept[0].keep.len();
    assert!(
        (removed as f64 / 60.0 - 0.6).abs() < 0.07,
        "hardening removed {removed} of 60"
    );
    // A quadratic penalty from the start (augmented Lagrangian) reaches the target too, with
    // less overshoot: λ₁ has less gap to integrate while the gates lag behind.
    let quad = train_gates::<B>(device, 0.05, 100.0);
    eprintln!(
        "augmented Lagrangian: expected sparsity {:.3} (peak {:.3})",
        quad.tail, quad.peak
    );
    assert!((quad.tail - 0.6).abs() < 0.03, "{}", quad.tail);
    assert!(
        quad.peak < 0.65,
        "peak {} with the quadratic term",
        quad.peak
    );
    assert!(
        quad.peak - 0.6 < plain.peak - 0.6,
        "overshoot {} with the quadratic term, {} without",
        quad.peak - 0.6,
        plain.peak - 0.6
    );
}

/// Tests that run on every backend CI covers: `cargo xtask test` runs the `backend::` tests on
/// each backend, everything else once.
mod backend {
    use super::*;

    #[test]
    fn sampled_probabilities_match_the_closed_form() {
        on_backend!(sampled_statistics_match_closed_form);
    }

    #[test]
    fn penalty_grows_with_log_alpha_and_evaluation_is_deterministic() {
        on_backend!(penalty_and_determinism);
    }

    #[test]
    fn hardening_keeps_exactly_what_is_asked() {
        on_backend!(hardening);
    }

    #[test]
    fn lagrangian_drives_expected_sparsity_to_the_target() {
        on_backend!(lagrangian_reaches_target);
    }
}
