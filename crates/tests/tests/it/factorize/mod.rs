//! Tests of `shears-factorize`: the identities of low-rank solutions on seeded data, parity
//! with Composer's `factorize_matrix` (committed fixture), the cost model, bad input, and the
//! Burn modules on the backend named by `SHEARS_BACKEND`.

use burn::module::Param;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use shears_factorize::*;
use shears_spaces::HostTensor;

fn normal(rng: &mut StdRng) -> f32 {
    // Box-Muller; rand's distributions crate is not a dependency.
    let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random_range(0.0..1.0));
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

fn random(rng: &mut StdRng, shape: &[usize], scale: f32) -> HostTensor {
    let n = shape.iter().product();
    HostTensor::new(
        shape.to_vec(),
        (0..n).map(|_| normal(rng) * scale).collect(),
    )
}

fn matmul(a: &HostTensor, b: &HostTensor) -> HostTensor {
    let (n, k, m) = (a.shape[0], a.shape[1], b.shape[1]);
    assert_eq!(k, b.shape[0]);
    let mut out = vec![0.0f32; n * m];
    for i in 0..n {
        for p in 0..k {
            let x = a.data[i * k + p];
            for j in 0..m {
                out[i * m + j] += x * b.data[p * m + j];
            }
        }
    }
    HostTensor::new(vec![n, m], out)
}

/// Inputs with correlated channels (a decaying spectrum, as real activations have) and a
/// non-zero mean.
fn inputs(rng: &mut StdRng, n: usize, d: usize) -> HostTensor {
    let latent = random(rng, &[n, d], 1.0);
    let mut mix = random(rng, &[d, d], 1.0);
    for i in 0..d {
        for j in 0..d {
            mix.data[i * d + j] *= (-(i as f32) / 6.0).exp();
        }
    }
    let mut x = matmul(&latent, &mix);
    for (i, v) in x.data.iter_mut().enumerate() {
        *v += 0.3 + 0.05 * (i % d) as f32 + 0.1 * normal(rng);
    }
    x
}

/// `mean((Y - Ŷ)²) / var(Y)` measured on the rows of `x` (unbiased variance).
fn measured_nmse(x: &HostTensor, w: &HostTensor, b: &[f32], s: &LowRankSolution) -> f64 {
    let y = matmul(x, w);
    let yh = matmul(&matmul(x, &s.first), &s.second);
    let m = w.shape[1];
    let (mut sse, mut sum, mut sq) = (0.0f64, 0.0f64, 0.0f64);
    for (i, (&a, &h)) in y.data.iter().zip(&yh.data).enumerate() {
        let ya = a as f64 + b[i % m] as f64;
        let yb = h as f64 + s.bias[i % m] as f64;
        sse += (ya - yb).powi(2);
        sum += ya;
        sq += ya * ya;
    }
    let n = y.data.len() as f64;
    let var = (sq - sum * sum / n) / (n - 1.0);
    sse / n / var
}

struct Problem {
    x: HostTensor,
    w: HostTensor,
    b: Vec<f32>,
    cal: Calibration,
}

fn problem(seed: u64, n: usize, d_in: usize, d_out: usize) -> Problem {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = inputs(&mut rng, n, d_in);
    let w = random(&mut rng, &[d_in, d_out], 0.2);
    let b = random(&mut rng, &[d_out], 0.5).data;
    let cal = Calibration::from_rows(&x).unwrap();
    Problem { x, w, b, cal }
}

fn solve(p: &Problem, rank: usize, method: Method) -> LowRankSolution {
    factorize(
        Weights::Dense(&p.w),
        Some(&p.b),
        Rank::Count(rank),
        method,
        Some(&p.cal),
    )
    .unwrap()
}

const DATA: Method = Method::DataAware {
    init: Init::Whitened,
    n_iters: 2,
};

#[test]
fn closed_form_nmse_is_the_measured_error() {
    let p = problem(1, 300, 24, 16);
    for method in [
        Method::WeightSvd,
        Method::ActivationAware { alpha: 0.5 },
        DATA,
        Method::DataAware {
            init: Init::Spectral,
            n_iters: 1,
        },
    ] {
        for rank in [1, 4, 9, 15] {
            let s = solve(&p, rank, method);
            let (ours, measured) = (s.nmse.unwrap(), measured_nmse(&p.x, &p.w, &p.b, &s));
            assert!(
                (ours - measured).abs() <= 1e-4 * measured.max(1e-3),
                "{method:?} rank {rank}: closed form {ours}, measured {measured}"
            );
            assert!(ours < 1.0, "{method:?} rank {rank}: nmse {ours} >= 1");
            assert_eq!(
                (s.first.shape.clone(), s.second.shape.clone()),
                (vec![24, rank], vec![rank, 16])
            );
        }
    }
}

#[test]
fn nmse_falls_with_rank_and_refinement() {
    let p = problem(2, 400, 32, 20);
    for method in [
        Method::WeightSvd,
        Method::ActivationAware { alpha: 0.5 },
        DATA,
    ] {
        let errs: Vec<f64> = (1..20)
            .map(|r| solve(&p, r, method).nmse.unwrap())
            .collect();
        for (r, w) in errs.windows(2).enumerate() {
            assert!(
                w[1] <= w[0] + 1e-9,
                "{method:?}: nmse rose from rank {} ({}) to {} ({})",
                r + 1,
                w[0],
                r + 2,
                w[1]
            );
        }
    }
    // Composer's scheme: spectral start, then alternating least squares; never worse with
    // more iterations, and never better than the whitened optimum.
    for rank in [2, 5, 10] {
        let it: Vec<f64> = (0..6)
            .map(|n| {
                solve(
                    &p,
                    rank,
                    Method::DataAware {
                        init: Init::Spectral,
                        n_iters: n,
                    },
                )
                .nmse
                .unwrap()
            })
            .collect();
        for w in it.windows(2) {
            assert!(w[1] <= w[0] + 1e-9, "rank {rank}: {it:?}");
        }
        assert!(
            it[5] < it[0],
            "refinement did nothing at rank {rank}: {it:?}"
        );
        let best = solve(&p, rank, DATA).nmse.unwrap();
        assert!(
            best <= it[5] + 1e-9,
            "rank {rank}: whitened {best}, ALS {it:?}"
        );
        let svd = solve(&p, rank, Method::WeightSvd).nmse.unwrap();
        let asvd = solve(&p, rank, Method::ActivationAware { alpha: 0.5 })
            .nmse
            .unwrap();
        assert!(
            best <= svd.min(asvd) + 1e-9,
            "{best} vs SVD {svd}, ASVD {asvd}"
        );
    }
}

#[test]
fn factored_input_and_bias_free_layers() {
    let p = problem(3, 200, 16, 12);
    // Factors whose product is W give the same solution as W.
    let dense = solve(&p, 5, DATA);
    let mut eye = HostTensor::new(vec![12, 12], vec![0.0; 144]);
    for i in 0..12 {
        eye.data[i * 12 + i] = 1.0;
    }
    let again = factorize(
        Weights::Factored(&p.w, &eye),
        Some(&p.b),
        Rank::Count(5),
        DATA,
        Some(&p.cal),
    )
    .unwrap();
    let (d, f) = (dense.nmse.unwrap(), again.nmse.unwrap());
    assert!(
        (d - f).abs() < 1e-6 * d.max(1e-6) + 1e-9,
        "dense {d}, factored {f}"
    );
    // No bias: the solution learns one (the mean correction).
    let s = factorize(
        Weights::Dense(&p.w),
        None,
        Rank::Count(3),
        DATA,
        Some(&p.cal),
    )
    .unwrap();
    assert!(s.bias.iter().any(|&b| b != 0.0));
    assert!((s.nmse.unwrap() - measured_nmse(&p.x, &p.w, &[0.0; 12], &s)).abs() < 1e-4);
    // The weight SVD needs no data.
    let s = factorize(
        Weights::Dense(&p.w),
        Some(&p.b),
        Rank::Count(3),
        Method::WeightSvd,
        None,
    )
    .unwrap();
    assert_eq!((s.nmse, s.bias.clone()), (None, p.b.clone()));
}

#[test]
fn cost_model_breakeven() {
    // The largest rank strictly below fan_in · out / (fan_in + out) (values checked against
    // Composer's `_max_rank_with_possible_speedup`).
    for (n_in, n_out, k, max) in [
        (64, 48, [1, 1], 27),
        (64, 64, [1, 1], 31),
        (512, 512, [1, 1], 255),
        (10, 10, [1, 1], 4),
        (4, 4, [1, 1], 1),
        (2, 2, [1, 1], 0),
        (1, 1, [1, 1], 0),
        (384, 1536, [1, 1], 307),
        (768, 3072, [1, 1], 614),
        (64, 64, [3, 3], 57),
        (16, 32, [3, 3], 26),
        (256, 512, [3, 3], 418),
        (3, 64, [3, 3], 18),
        (3, 64, [7, 7], 44),
    ] {
        assert_eq!(
            max_rank_with_speedup(n_in, n_out, k),
            max,
            "{n_in}x{n_out} {k:?}"
        );
        // At the returned rank the factorization is cheaper; one more and it is not.
        if max > 0 {
            assert!(factorized_cost(n_in, n_out, k, max) < dense_cost(n_in, n_out, k));
        }
        assert!(factorized_cost(n_in, n_out, k, max + 1) >= dense_cost(n_in, n_out, k));
    }
    assert!(could_speed_up(64, 48, [1, 1], Rank::Count(27)).unwrap());
    assert!(!could_speed_up(64, 48, [1, 1], Rank::Count(28)).unwrap());
    // A fraction of min(in, out): 0.5 · 48 = 24.
    assert_eq!(Rank::Fraction(0.5).resolve(64, 48).unwrap(), 24);
    assert!(could_speed_up(64, 48, [1, 1], Rank::Fraction(0.5)).unwrap());
    assert!(!could_speed_up(64, 48, [1, 1], Rank::Fraction(0.6)).unwrap());
    assert_eq!("0.25".parse::<Rank>().unwrap(), Rank::Fraction(0.25));
    assert_eq!("8".parse::<Rank>().unwrap(), Rank::Count(8));
}

#[test]
fn bad_input_is_a_typed_error() {
    let p = problem(4, 50, 8, 6);
    let err = |rank: Rank| {
        factorize(Weights::Dense(&p.w), Some(&p.b), rank, DATA, Some(&p.cal)).unwrap_err()
    };
    assert_eq!(err(Rank::Count(0)), FactorizeError::RankZero);
    assert_eq!(
        err(Rank::Count(6)),
        FactorizeError::RankTooLarge {
            rank: 6,
            max: 6,
            n_in: 8,
            n_out: 6
        }
    );
    assert_eq!(err(Rank::Fraction(1.0)), FactorizeError::BadFraction(1.0));
    assert_eq!(err(Rank::Fraction(0.0)), FactorizeError::BadFraction(0.0));
    assert!(matches!(
        err(Rank::Fraction(f64::NAN)),
        FactorizeError::BadFraction(_)
    ));
    // Calibration of the wrong width.
    let other =
        Calibration::from_rows(&random(&mut StdRng::seed_from_u64(1), &[10, 7], 1.0)).unwrap();
    let e = factorize(
        Weights::Dense(&p.w),
        None,
        Rank::Count(2),
        DATA,
        Some(&other),
    )
    .unwrap_err();
    assert!(matches!(e, FactorizeError::Shape { .. }), "{e}");
    assert!(e.to_string().contains("calibration"), "{e}");
    // A bias of the wrong length; factors that do not chain.
    let e = factorize(
        Weights::Dense(&p.w),
        Some(&[0.0; 5]),
        Rank::Count(2),
        DATA,
        Some(&p.cal),
    )
    .unwrap_err();
    assert!(e.to_string().contains("bias"), "{e}");
    let (a, b) = (
        HostTensor::new(vec![8, 3], vec![0.0; 24]),
        HostTensor::new(vec![4, 6], vec![0.0; 24]),
    );
    let e = factorize(
        Weights::Factored(&a, &b),
        None,
        Rank::Count(2),
        DATA,
        Some(&p.cal),
    )
    .unwrap_err();
    assert!(matches!(e, FactorizeError::Shape { .. }), "{e}");
    // NaN in the inputs: named, and nothing added.
    let mut x = p.x.clone();
    x.data[3 * 8 + 5] = f32::NAN;
    let mut cal = Calibration::new(8);
    let e = cal.add(&x).unwrap_err();
    assert_eq!(
        e.to_string(),
        "calibration input holds a non-finite value (NaN) at row 3, column 5"
    );
    assert_eq!(cal.rows(), 0);
    // Data methods without data; one row is not enough.
    let e = factorize(Weights::Dense(&p.w), None, Rank::Count(2), DATA, None).unwrap_err();
    assert!(matches!(e, FactorizeError::NoCalibration { .. }), "{e}");
    let one = Calibration::from_rows(&HostTensor::new(vec![1, 8], vec![1.0; 8])).unwrap();
    let e = factorize(Weights::Dense(&p.w), None, Rank::Count(2), DATA, Some(&one)).unwrap_err();
    assert_eq!(e, FactorizeError::TooFewRows { rows: 1 });
}

/// The fixture made by `tools/fixtures/make_factorize_fixture.py` with Composer 0.32.1.
#[test]
fn no_worse_than_composer() {
    let path = crate::fixtures("factorize").join("composer_factorize.safetensors");
    let f = shears_layers::hf::read_safetensors(&path).unwrap();
    let scalar = |k: &str| f[k].data[0] as f64;
    let mut rows = Vec::new();
    for (case, ranks) in [(0, &[4, 8, 16, 32][..]), (1, &[2, 4, 6]), (2, &[2, 4, 6])] {
        let x = &f[&format!("case{case}.x")];
        let w = &f[&format!("case{case}.w")];
        let b = &f[&format!("case{case}.b")];
        // Composer's target is y = x w + b in every case (case2 only withholds b and learns
        // it as the mean residual); our layer is (w, b), so it always gets the bias.
        let bias = Some(&b.data[..]);
        let cal = Calibration::from_rows(x).unwrap();
        for &r in ranks {
            let key = format!("case{case}.rank{r}");
            let composer_reported = scalar(&format!("{key}.nmse"));
            let composer_true = scalar(&format!("{key}.nmse_recomputed"));
            let ours =
                factorize(Weights::Dense(w), bias, Rank::Count(r), DATA, Some(&cal)).unwrap();
            // Composer's target is y = x w + b whether or not it was told the bias.
            let measured = measured_nmse(x, w, &b.data, &ours);
            rows.push(format!(
                "case{case} rank {r:>2}: ours {measured:.5}  composer {composer_true:.5} (reported {composer_reported:.5})"
            ));
            assert!(
                measured <= composer_true * (1.0 + 1e-3) + 1e-6,
                "case{case} rank {r}: ours {measured}, composer {composer_true}"
            );
            assert!(measured <= composer_reported + 1e-6);
        }
    }
    eprintln!("{}", rows.join("\n"));
}

fn modules<B: Backend>(device: &B::Device) {
    B::seed(device, 5);
    // Linear: built from the dense layer it computes the same thing; lowering the rank fits
    // the outputs as well as the solution says.
    let p = problem(6, 256, 24, 40);
    let mut linear = LinearConfig::new(24, 40).init::<B>(device);
    linear.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(p.w.data.clone(), [24, 40]),
        device,
    ));
    linear.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(p.b.clone(), [40]),
        device,
    )));
    let x: Tensor<B, 2> = Tensor::from_data(TensorData::new(p.x.data.clone(), [256, 24]), device);
    let dense = linear.forward(x.clone());
    let f = FactorizedLinear::from_linear(&linear).unwrap();
    assert_eq!(
        (f.in_features(), f.latent_features(), f.out_features()),
        (24, 24, 40)
    );
    let d: f32 = (f.forward(x.clone()) - dense.clone())
        .abs()
        .max()
        .into_scalar()
        .elem();
    assert!(d < 1e-4, "full rank differs by {d}");
    assert_eq!(f.max_rank_with_speedup(), 14);
    let sol = f.solution_for_rank(&p.cal, Rank::Count(6), DATA).unwrap();
    let f6 = f.clone().apply_solution(&sol).unwrap();
    assert_eq!(f6.latent_features(), 6);
    assert!(f6.num_params() < linear.num_params());
    let out = f6.forward(x.clone());
    let err: f32 = (out - dense.clone())
        .powi_scalar(2)
        .mean()
        .into_scalar()
        .elem();
    let expected = sol.nmse.unwrap() * flat_var(dense) as f64;
    assert!(
        (err as f64 - expected).abs() < 1e-3 * expected + 1e-6,
        "module error {err} vs solution {expected}"
    );
    // set_rank: only down, idempotent.
    let g = f.set_rank(&p.cal, Rank::Count(6), DATA).unwrap();
    let h = g.clone().set_rank(&p.cal, Rank::Count(6), DATA).unwrap();
    assert_eq!(h.latent_features(), 6);
    let d: f32 = (g.forward(x.clone()) - h.forward(x.clone()))
        .abs()
        .max()
        .into_scalar()
        .elem();
    assert_eq!(d, 0.0);
    assert_eq!(
        h.set_rank(&p.cal, Rank::Count(8), DATA).unwrap_err(),
        FactorizeError::RankIncrease {
            current: 6,
            requested: 8
        }
    );

    // Conv2d: 3 x 3, stride 2, padding 1, on 6 x 7 images.
    let mut rng = StdRng::seed_from_u64(7);
    let conv = Conv2dConfig::new([4, 10], [3, 3])
        .with_stride([2, 1])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init::<B>(device);
    let xs = random(&mut rng, &[5, 4, 6, 7], 1.0);
    let xt: Tensor<B, 4> =
        Tensor::from_data(TensorData::new(xs.data.clone(), xs.shape.clone()), device);
    let dense = conv.forward(xt.clone());
    let fc = FactorizedConv2d::from_conv2d(&conv).unwrap();
    assert_eq!(
        (fc.in_channels(), fc.latent_channels(), fc.out_channels()),
        (4, 10, 10)
    );
    let d: f32 = (fc.forward(xt.clone()) - dense.clone())
        .abs()
        .max()
        .into_scalar()
        .elem();
    assert!(d < 1e-4, "full-rank conv differs by {d}");
    let cal = fc.calibration(&xs).unwrap();
    assert_eq!(cal.rows(), 5 * 3 * 7);
    let sol = fc.solution_for_rank(&cal, Rank::Count(4), DATA).unwrap();
    let f4 = fc.clone().apply_solution(&sol).unwrap();
    assert_eq!(f4.latent_channels(), 4);
    let out = f4.forward(xt.clone());
    assert_eq!(out.dims(), dense.dims());
    let err: f32 = (out - dense.clone())
        .powi_scalar(2)
        .mean()
        .into_scalar()
        .elem();
    let expected = sol.nmse.unwrap() * flat_var(dense) as f64;
    assert!(
        (err as f64 - expected).abs() < 1e-3 * expected + 1e-6,
        "conv error {err} vs solution {expected}"
    );
    // Grouped convolutions are refused.
    let grouped = Conv2dConfig::new([4, 8], [3, 3])
        .with_groups(2)
        .init::<B>(device);
    assert_eq!(
        FactorizedConv2d::from_conv2d(&grouped).unwrap_err(),
        FactorizeError::GroupedConv { groups: 2 }
    );
}

/// Unbiased variance of all elements.
fn flat_var<B: Backend, const D: usize>(t: Tensor<B, D>) -> f32 {
    let n = t.shape().num_elements();
    t.reshape([n]).var(0).into_scalar().elem()
}

/// Tests that run on every backend CI covers: `cargo xtask test` runs the `backend::` tests on
/// each backend, everything else once.
mod backend {
    use super::*;

    #[test]
    fn factorized_modules_keep_the_function_and_lower_the_rank() {
        on_backend!(modules);
    }
}
