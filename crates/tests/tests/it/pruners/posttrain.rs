//! Post-training pruning (`shears_pruners::posttrain`): the mask gradients against finite
//! differences, the search against a brute-force optimum, the rearrangement on a case with a
//! known answer, unit costs against the pruned model's FLOPs, and the latency curves'
//! plumbing against FLOPs standing in for time.

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use shears_layers::SpaceName;
use shears_layers::{Masks, ModelConfig, ModelInput, Transformer};
use shears_pruners::{
    CurveGroup, FitOutcome, Importance, LatencyCurve, MaskGradients, PrunerError, Scales,
    Selection, UnitCosts, apply_selection, curve_points, fold_scales, mask_gradients,
    measure_curves, rearrange, search, tune_scales,
};

use super::{input, max_diff, tiny};

/// A smooth scalar of the output: the mean square of a fixed projection of the hidden
/// states (a stand-in for a task loss).
fn probe_loss<B: Backend>(
    model: &Transformer<B>,
    x: ModelInput<B>,
    masks: Masks<B>,
) -> Tensor<B, 1> {
    let h = model.forward(x.with_masks(masks)).hidden;
    let [b, s, d] = h.dims();
    let w: Vec<f32> = (0..d).map(|i| ((i * 7 % 5) as f32 - 2.0) / 3.0).collect();
    let w = Tensor::<B, 1>::from_data(TensorData::new(w, [d]), &h.device()).reshape([1, 1, d]);
    let p = (h * w).sum_dim(2).reshape([b * s]);
    (p.clone() * p).mean()
}

/// Masks of ones with one entry moved by `delta` (`head`: `(layer, head)`, else `neuron`).
fn nudged<B: Backend>(
    config: &ModelConfig,
    unit: (bool, usize, usize),
    delta: f32,
    device: &B::Device,
) -> Masks<B> {
    let (is_head, l, i) = unit;
    let width = config.max_heads();
    let mut heads = vec![1.0f32; config.n_layers() * width];
    if is_head {
        heads[l * width + i] += delta;
    }
    let ffn = config
        .layers
        .iter()
        .enumerate()
        .map(|(k, lc)| {
            let mut v = vec![1.0f32; lc.d_ff];
            if !is_head && k == l {
                v[i] += delta;
            }
            Tensor::from_data(TensorData::new(v, [lc.d_ff]), device)
        })
        .collect();
    Masks {
        heads: Some(Tensor::from_data(
            TensorData::new(heads, [config.n_layers(), width]),
            device,
        )),
        ffn: Some(ffn),
        hidden: None,
    }
}

/// Every head and neuron gradient of two mini-batches equals the central finite difference
/// of the loss, on BERT and GPT-2; the Fisher is the sum of their squares.
pub(super) fn mask_gradients_equal_finite_differences<B: Backend>(device: &B::Device) {
    for config in [
        tiny(ModelConfig::bert(30, 16, 2, 2, 6)),
        tiny(ModelConfig::gpt2(30, 16, 2, 2, 6)),
    ] {
        let model = crate::materialized(Transformer::<Autodiff<B>>::new(&config, device));
        let inputs = [input::<B>(device, 30, 3), input::<B>(device, 30, 4)];
        let grads: MaskGradients = mask_gradients::<Autodiff<B>>(&config, 2, device, |b, masks| {
            probe_loss(
                &model,
                input::<Autodiff<B>>(device, 30, 3 + b as u64),
                masks,
            )
        });
        assert_eq!(grads.batches, 2);
        let inner = model.valid();
        let eps = 1e-2f32;
        let units: Vec<(bool, usize, usize)> = (0..2)
            .flat_map(|l| {
                (0..2)
                    .map(move |h| (true, l, h))
                    .chain((0..6).map(move |n| (false, l, n)))
            })
            .collect();
        let fisher = grads.fisher();
        for &(is_head, l, i) in &units {
            let mut squares = 0.0;
            for (b, x) in inputs.iter().enumerate() {
                let f = |d: f32| -> f64 {
                    probe_loss(
                        &inner,
                        x.clone(),
                        nudged::<B>(&config, (is_head, l, i), d, device),
                    )
                    .into_scalar()
                    .elem()
                };
                let fd = (f(eps) - f(-eps)) / (2.0 * eps as f64);
                let g = if is_head {
                    grads.heads[l][i][b]
                } else {
                    grads.neurons[l][i][b]
                };
                assert!(
                    (fd - g).abs() <= 2e-3 + 2e-2 * g.abs(),
                    "{:?} {} {l}.{i}, batch {b}: gradient {g} vs finite difference {fd}",
                    config.family,
                    if is_head { "head" } else { "neuron" }
                );
                squares += g * g;
            }
            let f = if is_head {
                fisher.heads[l][i]
            } else {
                fisher.neurons[l][i]
            };
            assert!((f - squares).abs() <= 1e-12 * squares.max(1.0));
        }
    }
}

/// The cost of a selection is the FLOPs of the model pruned to it, and the pruned model
/// computes what the model masked with it computes (BERT and GPT-2, dense and factorized).
pub(super) fn selections_cost_what_the_pruned_model_costs<B: Backend>(device: &B::Device) {
    let mut rng = StdRng::seed_from_u64(3);
    let seq = 6;
    for trial in 0..6 {
        let mut config = if trial % 2 == 0 {
            tiny(ModelConfig::bert(30, 16, 2, 4, 12))
        } else {
            tiny(ModelConfig::gpt2(30, 16, 2, 4, 12))
        };
        if trial >= 4 {
            config.layers[1].ranks.insert("ffn.up".into(), 3);
            config.layers[0].ranks.insert("attention.value".into(), 5);
        }
        let costs = UnitCosts::flops(&config, seq).unwrap();
        assert_eq!(costs.total, config.flops_per_token(seq) as f64);
        let mut sel = Selection::all(&config);
        sel.heads
            .iter_mut()
            .flatten()
            .chain(sel.neurons.iter_mut().flatten())
            .for_each(|k| *k = rng.random_bool(0.5));
        // Trial 1 empties layer 0's heads and trial 3 its neurons.
        match trial {
            1 => sel.heads[0].fill(false),
            3 => sel.neurons[0].fill(false),
            _ => {}
        }
        let model = Transformer::<B>::new(&config, device);
        let x = input::<B>(device, 30, trial);
        let masked = model.forward(x.clone().with_masks(sel.masks(&config, device)));
        let pruned = apply_selection(model, &sel).unwrap();
        assert_eq!(
            costs.of(&sel),
            pruned.config().flops_per_token(seq) as f64,
            "trial {trial}"
        );
        assert_eq!(pruned.config().layers[0].n_heads, sel.heads_kept()[0]);
        let d = max_diff(masked.hidden, pruned.forward(x).hidden);
        assert!(d <= 1e-5, "trial {trial}: masked and pruned differ by {d}");
    }
}

/// On a model small enough to try every subset of its 4 heads and 8 neurons, the search
/// returns a selection of the highest importance within the budget, for random importances
/// and budgets from 10% to 100%.
#[test]
fn search_finds_the_brute_force_optimum() {
    let config = tiny(ModelConfig::bert(30, 16, 2, 2, 4));
    let seq = 6;
    let costs = UnitCosts::flops(&config, seq).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let n_units = 4 + 8;
    for trial in 0..20 {
        let mut draw = |n: usize| -> Vec<Vec<f64>> {
            (0..2)
                .map(|_| {
                    (0..n)
                        .map(|_| rng.random_range(0.0..1.0f64).powi(3))
                        .collect()
                })
                .collect()
        };
        let importance = Importance {
            heads: draw(2),
            neurons: draw(4),
        };
        let budget = costs.total * (0.1 + 0.9 * f64::from(trial) / 19.0);
        let found = search(&importance, &costs, budget).unwrap();
        assert!(costs.of(&found) <= budget, "trial {trial}: over budget");
        let mut best = f64::NEG_INFINITY;
        for bits in 0u32..1 << n_units {
            let on = |k: usize| bits >> k & 1 == 1;
            let sel = Selection {
                heads: (0..2)
                    .map(|l| (0..2).map(|h| on(l * 2 + h)).collect())
                    .collect(),
                neurons: (0..2)
                    .map(|l| (0..4).map(|n| on(4 + l * 4 + n)).collect())
                    .collect(),
            };
            if costs.of(&sel) <= budget {
                best = best.max(sel.score(&importance));
            }
        }
        let score = found.score(&importance);
        assert!(
            (score - best).abs() <= 1e-12,
            "trial {trial}: search {score} vs brute force {best}"
        );
    }
    // A budget below what stays with every unit removed is refused (only factorized
    // projections have such a fixed part).
    let mut factorized = config.clone();
    factorized.layers[0]
        .ranks
        .insert("attention.query".into(), 2);
    let costs = UnitCosts::flops(&factorized, seq).unwrap();
    assert!(costs.fixed > 0.0);
    let imp = Importance {
        heads: vec![vec![1.0; 2]; 2],
        neurons: vec![vec![1.0; 4]; 2],
    };
    let e = search(&imp, &costs, costs.fixed * 0.5).unwrap_err();
    assert!(matches!(e, PrunerError::TargetOutOfReach { .. }), "{e}");
}

/// Latency curves measured with FLOPs standing in for time (a ratio that is exactly
/// linear in the units kept) give back the FLOPs costs: the grouping of layers of one
/// shape, the points, the division among a group's layers, the interpolation and the fixed
/// part are right, and the search picks the same units.
#[test]
fn latency_curves_timed_by_flops_give_the_flops_costs() {
    let seq = 6;
    // Layers 0 and 2 alike, layer 1 already pruned to 30 neurons: two groups.
    let config = tiny(ModelConfig::bert(30, 16, 3, 4, 40))
        .with_kept(&SpaceName::Ffn(1), &(0..30).collect::<Vec<_>>())
        .unwrap();
    let flops = UnitCosts::flops(&config, seq).unwrap();
    let mut calls = 0;
    let groups = measure_curves(&config, |sel| -> Result<f64, PrunerError> {
        calls += 1;
        Ok(flops.of(sel) / flops.total)
    })
    .unwrap();
    assert_eq!(
        groups.iter().map(|g| g.layers.clone()).collect::<Vec<_>>(),
        vec![vec![0, 2], vec![1]]
    );
    assert_eq!(curve_points(4), vec![0, 1, 2, 3, 4]);
    assert_eq!(curve_points(40), vec![0, 1, 5, 10, 15, 20, 25, 30, 35, 40]);
    assert_eq!(groups[1].neurons.kept, curve_points(30));
    // Per group, every point but the dense one is timed: 4 + 9 each.
    assert_eq!(calls, 2 * (4 + 9));
    let latency = UnitCosts::latency(&config, &groups).unwrap();
    assert_eq!(latency.total, 1.0);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12;
    assert!(close(latency.fixed, flops.fixed / flops.total));
    let mut rng = StdRng::seed_from_u64(4);
    for trial in 0..20 {
        let mut sel = Selection::all(&config);
        sel.heads
            .iter_mut()
            .flatten()
            .chain(sel.neurons.iter_mut().flatten())
            .for_each(|k| *k = rng.random_bool(0.3 + 0.02 * f64::from(trial)));
        assert!(
            close(latency.of(&sel), flops.of(&sel) / flops.total),
            "trial {trial}: {} vs {}",
            latency.of(&sel),
            flops.of(&sel) / flops.total
        );
        let importance = Importance {
            heads: (0..3)
                .map(|_| (0..4).map(|_| rng.random_range(0.0..1.0)).collect())
                .collect(),
            neurons: config
                .layers
                .iter()
                .map(|l| (0..l.d_ff).map(|_| rng.random_range(0.0..1.0)).collect())
                .collect(),
        };
        let fraction = 0.2 + 0.04 * f64::from(trial);
        assert_eq!(
            search(&importance, &latency, fraction).unwrap(),
            search(&importance, &flops, fraction * flops.total).unwrap(),
            "trial {trial}"
        );
    }
}

/// A noisy curve is made non-decreasing by isotonic least squares (pooled violators take
/// their mean), interpolated linearly and shifted to 0 at 0; unusable curves are refused
/// naming the layer; with a fixed step at the first unit the search stays within budget.
#[test]
fn latency_curves_are_monotone_and_checked() {
    let c = LatencyCurve {
        kept: vec![0, 2, 4, 6],
        time: vec![0.0, 0.3, 0.1, 0.5],
    };
    let v = c.per_count(6).unwrap();
    let want = [0.0, 0.1, 0.2, 0.2, 0.2, 0.35, 0.5];
    for (k, (a, b)) in v.iter().zip(want).enumerate() {
        assert!((a - b).abs() < 1e-12, "count {k}: {a} vs {b}");
    }
    // A dip below the first point lifts the start: the curve still starts at 0.
    let c = LatencyCurve {
        kept: vec![0, 1, 2],
        time: vec![0.2, 0.0, 0.4],
    };
    assert_eq!(c.per_count(2).unwrap(), vec![0.0, 0.0, 0.30000000000000004]);
    for (kept, time, needle) in [
        (vec![0, 3], vec![0.0, 1.0], "4 units"),
        (vec![1, 4], vec![0.0, 1.0], "from 0"),
        (vec![0, 2, 2, 4], vec![0.0; 4], "increase"),
        (vec![0, 4], vec![0.0, f64::NAN], "finite"),
    ] {
        let e = LatencyCurve { kept, time }.per_count(4).unwrap_err();
        assert!(e.contains(needle), "{e}");
    }
    let config = tiny(ModelConfig::bert(30, 16, 2, 4, 8));
    let curve = |n: usize, step: f64| LatencyCurve {
        kept: (0..=n).collect(),
        time: (0..=n)
            .map(|k| if k == 0 { 0.0 } else { step + 0.01 * k as f64 })
            .collect(),
    };
    let group = |layers: Vec<usize>| CurveGroup {
        layers,
        heads: curve(4, 0.05),
        neurons: curve(8, 0.02),
    };
    let e = UnitCosts::latency(&config, &[group(vec![0])]).unwrap_err();
    assert!(
        matches!(e, PrunerError::LatencyCurve { layer: 1, .. }),
        "{e}"
    );
    let e = UnitCosts::latency(&config, &[group(vec![0, 1]), group(vec![1])]).unwrap_err();
    assert!(e.to_string().contains("layer 1"), "{e}");
    let costs = UnitCosts::latency(&config, &[group(vec![0, 1])]).unwrap();
    // Per layer: 0.05 + 0.04 for the heads, 0.02 + 0.08 for the neurons.
    assert!((costs.fixed - (1.0 - 2.0 * (0.09 + 0.10))).abs() < 1e-12);
    let mut rng = StdRng::seed_from_u64(5);
    for trial in 0..20 {
        let importance = Importance {
            heads: (0..2)
                .map(|_| (0..4).map(|_| rng.random_range(0.0..1.0)).collect())
                .collect(),
            neurons: (0..2)
                .map(|_| (0..8).map(|_| rng.random_range(0.0..1.0)).collect())
                .collect(),
        };
        let budget = costs.fixed + 0.02 * f64::from(trial);
        let s = search(&importance, &costs, budget).unwrap();
        assert!(costs.of(&s) <= budget + 1e-12, "trial {trial}");
    }
}

/// Rearrangement removes as many units per layer as the selection, and on a layer where two
/// important units' gradients cancel it removes that pair instead of the two units of
/// smallest diagonal Fisher (whose gradients add up).
#[test]
fn rearrangement_removes_units_whose_gradients_cancel() {
    // Per unit, its gradient on two mini-batches.
    let g = vec![
        vec![1.0, 0.0],  // a: diagonal 1
        vec![-1.0, 0.0], // b: diagonal 1, cancels a
        vec![0.6, 0.6],  // c: diagonal 0.72
        vec![0.7, 0.7],  // d: diagonal 0.98
        vec![3.0, 1.0],  // e: kept throughout
    ];
    let grads = MaskGradients {
        heads: vec![g],
        neurons: vec![vec![vec![0.5, 0.1]; 3]],
        batches: 2,
    };
    let selection = Selection {
        heads: vec![vec![true, true, false, false, true]],
        neurons: vec![vec![true, false, true]],
    };
    let r = rearrange(&selection, &grads);
    assert_eq!(r.heads, vec![vec![false, false, true, true, true]]);
    assert_eq!(r.neurons[0].iter().filter(|&&k| k).count(), 2);
    // Nothing to rearrange when nothing (or everything) goes.
    let all = Selection {
        heads: vec![vec![true; 5]],
        neurons: vec![vec![false; 3]],
    };
    assert_eq!(rearrange(&all, &grads), all);
}

fn random_scales(config: &ModelConfig, rng: &mut StdRng) -> Scales {
    let mut s = Scales::ones(config);
    s.heads
        .iter_mut()
        .flatten()
        .chain(s.neurons.iter_mut().flatten())
        .for_each(|v| *v = rng.random_range(0.5..1.5));
    s
}

/// Inputs with padding: the last two positions of the first example are padding.
fn padded<B: Backend>(device: &B::Device, seed: u64) -> ModelInput<B> {
    let x = input::<B>(device, 30, seed);
    let [b, s] = x.ids.dims();
    let mut m = vec![1.0f32; b * s];
    m[s - 2] = 0.0;
    m[s - 1] = 0.0;
    x.with_attention_mask(Tensor::from_data(TensorData::new(m, [b, s]), device))
}

/// Folding scales into the output projections, then removing the units a selection drops,
/// gives the model that the scaled selection masks (BERT and GPT-2).
pub(super) fn folded_scales_equal_scaled_masks<B: Backend>(device: &B::Device) {
    let mut rng = StdRng::seed_from_u64(21);
    for config in [
        tiny(ModelConfig::bert(30, 16, 2, 4, 12)),
        tiny(ModelConfig::gpt2(30, 16, 2, 4, 12)),
    ] {
        let model = crate::materialized(Transformer::<B>::new(&config, device));
        let mut sel = Selection::all(&config);
        sel.heads[0][1] = false;
        sel.heads[1][3] = false;
        sel.neurons[0][..5].fill(false);
        sel.neurons[1][7] = false;
        let scales = random_scales(&config, &mut rng);
        let x = padded::<B>(device, 8);
        let masked = model.forward(
            x.clone()
                .with_masks(sel.scaled_masks(&scales, &config, device)),
        );
        let folded = apply_selection(fold_scales(model, &scales).unwrap(), &sel).unwrap();
        let d = max_diff(masked.hidden, folded.forward(x).hidden);
        assert!(
            d <= 1e-5,
            "{:?}: folded and scaled masks differ by {d}",
            config.family
        );
    }
}

/// Mask tuning toward a teacher that is the model with known scales folded in recovers
/// those scales, block by block (BERT and GPT-2, padded inputs).
pub(super) fn tuning_recovers_known_scales<B: Backend>(device: &B::Device) {
    let mut rng = StdRng::seed_from_u64(22);
    for config in [
        tiny(ModelConfig::bert(30, 16, 2, 4, 12)),
        tiny(ModelConfig::gpt2(30, 16, 2, 4, 12)),
    ] {
        let model = crate::materialized(Transformer::<B>::new(&config, device));
        let known = random_scales(&config, &mut rng);
        let teacher = fold_scales(model.clone(), &known).unwrap();
        let all = Selection::all(&config);
        let inputs: Vec<ModelInput<B>> = (0..3).map(|i| padded::<B>(device, 30 + i)).collect();
        let (scales, fits) = tune_scales(&model, &all, &teacher, &all, &inputs, false);
        assert_eq!(fits.len(), 4);
        for f in &fits {
            match f.outcome {
                FitOutcome::Tuned {
                    error_before,
                    error_after,
                    ..
                } => assert!(
                    error_after < 1e-6 && error_before > 1e-3,
                    "{:?} {f:?}",
                    config.family
                ),
                _ => panic!("{:?}: {f:?}", config.family),
            }
        }
        let worst = |a: &[Vec<f64>], b: &[Vec<f64>]| {
            a.iter()
                .flatten()
                .zip(b.iter().flatten())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max)
        };
        let (dh, dn) = (
            worst(&scales.heads, &known.heads),
            worst(&scales.neurons, &known.neurons),
        );
        assert!(
            dh < 1e-3 && dn < 1e-3,
            "{:?}: heads off by {dh}, neurons by {dn}",
            config.family
        );
    }
}
