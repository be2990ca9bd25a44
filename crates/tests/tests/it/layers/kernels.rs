//! `shears_layers::kernels` (flex's own GELU and head layout kernels, and their gradients;
//! Burn's operations on other backends) against Burn's generic operations on ndarray, on odd
//! shapes.

use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use shears_layers::kernels;

type Reference = NdArray<f32>;

/// Values in [-8, 8) plus the extremes of GELU's range.
fn values(n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 16_000) as f32 / 1000.0 - 8.0)
        .collect();
    v.extend([0.0, -0.0, 1e-8, -1e-8, 30.0, -30.0, 100.0, -100.0]);
    v
}

fn gelu_matches<B: Backend>(device: &B::Device) {
    let v = values(3 * 517 - 8);
    let x = Tensor::<B, 2>::from_data(TensorData::new(v.clone(), [3, 517]), device);
    let got: Vec<f32> = kernels::gelu(x).into_data().to_vec().unwrap();
    let r = Tensor::<Reference, 2>::from_data(
        TensorData::new(v.clone(), [3, 517]),
        &Default::default(),
    );
    let want: Vec<f32> = kernels::exact_gelu(r).into_data().to_vec().unwrap();
    for ((g, w), x) in got.iter().zip(&want).zip(&v) {
        assert!(
            (g - w).abs() <= 2e-6 * x.abs().max(1.0),
            "gelu({x}) = {g}, the exact formula on ndarray gives {w}"
        );
    }
}

fn heads_match<B: Backend>(device: &B::Device) {
    let (b, s, h, dh) = (3, 5, 7, 4);
    let v = values(b * s * h * dh);
    let v = v[..b * s * h * dh].to_vec();
    let x = Tensor::<B, 2>::from_data(TensorData::new(v.clone(), [b * s, h * dh]), device);
    let split = kernels::split_heads(x, b, h);
    assert_eq!(split.dims(), [b, h, s, dh]);
    let r = Tensor::<Reference, 2>::from_data(
        TensorData::new(v.clone(), [b * s, h * dh]),
        &Default::default(),
    )
    .reshape([b, s, h, dh])
    .swap_dims(1, 2);
    let got: Vec<f32> = split.clone().into_data().to_vec().unwrap();
    let want: Vec<f32> = r.into_data().to_vec().unwrap();
    assert_eq!(got, want, "split_heads");
    let merged: Vec<f32> = kernels::merge_heads(split).into_data().to_vec().unwrap();
    assert_eq!(merged, v, "merge_heads undoes split_heads");
}

/// `f(x)` weighted by fixed values and summed, and its gradient with respect to `x`, on
/// `Autodiff<B>` (flex's kernels define their own backward operations there).
fn grad_of<B: Backend, const D: usize, const E: usize>(
    x: Vec<f32>,
    shape: [usize; D],
    f: impl Fn(Tensor<Autodiff<B>, D>) -> Tensor<Autodiff<B>, E>,
    device: &B::Device,
) -> (Vec<f32>, Vec<f32>) {
    let x = Tensor::<Autodiff<B>, D>::from_data(TensorData::new(x, shape), device).require_grad();
    let y = f(x.clone());
    let n = y.shape().num_elements();
    let w: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 / 5.0 - 1.0).collect();
    let w = Tensor::<Autodiff<B>, 1>::from_data(TensorData::new(w, [n]), device).reshape(y.shape());
    let value = y.clone().inner().into_data().to_vec().unwrap();
    let grads = (y * w).sum().backward();
    let g = x
        .grad(&grads)
        .expect("x takes part")
        .into_data()
        .to_vec()
        .unwrap();
    (value, g)
}

fn gradients_match<B: Backend>(device: &B::Device) {
    let r = Default::default();
    let v = values(2 * 517 - 8);
    let close = |a: &[f32], b: &[f32], what: &str| {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 2e-6 * y.abs().max(1.0),
                "{what}[{i}]: {x} against {y}"
            );
        }
    };
    let (got_v, got_g) = grad_of::<B, 2, 2>(v.clone(), [2, 517], kernels::gelu, device);
    let (want_v, want_g) = grad_of::<Reference, 2, 2>(v.clone(), [2, 517], kernels::exact_gelu, &r);
    close(&got_v, &want_v, "gelu");
    close(&got_g, &want_g, "gelu's gradient");
    let (b, s, h, dh) = (2, 3, 5, 4);
    let x = values(b * s * h * dh)[..b * s * h * dh].to_vec();
    let split =
        |t: Tensor<Autodiff<B>, 2>| kernels::merge_heads(kernels::split_heads(t, b, h) * 2.0);
    let (got_v, got_g) = grad_of::<B, 2, 3>(x.clone(), [b * s, h * dh], split, device);
    let reference = |t: Tensor<Autodiff<Reference>, 2>| {
        let t = t.reshape([b, s, h, dh]).swap_dims(1, 2) * 2.0;
        t.swap_dims(1, 2).reshape([b, s, h * dh])
    };
    let (want_v, want_g) = grad_of::<Reference, 2, 3>(x, [b * s, h * dh], reference, &r);
    close(&got_v, &want_v, "split and merge");
    close(&got_g, &want_g, "the gradient of split and merge");
    // The split alone, weighted per head position, so a wrong layout in its gradient shows.
    let x = values(b * s * h * dh)[..b * s * h * dh].to_vec();
    let (_, got_g) = grad_of::<B, 2, 4>(
        x.clone(),
        [b * s, h * dh],
        |t| kernels::split_heads(t, b, h),
        device,
    );
    let (_, want_g) = grad_of::<Reference, 2, 4>(
        x,
        [b * s, h * dh],
        |t| t.reshape([b, s, h, dh]).swap_dims(1, 2),
        &r,
    );
    close(&got_g, &want_g, "split_heads' gradient");
}

mod backend {
    use super::*;

    #[test]
    fn gelu_equals_the_exact_formula() {
        on_backend!(gelu_matches);
    }

    #[test]
    fn kernel_gradients_equal_burns() {
        on_backend!(gradients_match);
    }

    #[test]
    fn head_layout_kernels_equal_reshape_and_swap() {
        on_backend!(heads_match);
    }
}

/// The fused kernels ([`kernels::linear`], [`kernels::add_layer_norm`],
/// [`kernels::attention`]) exist on flex only; every other backend runs the generic
/// operations they are compared with here, so these tests run on flex.
mod flex {
    use super::*;
    use burn::backend::Flex;
    use shears_layers::MASKED;

    /// Deterministic values in [-1, 1) from a seed.
    fn noise(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + 1) * 2_654_435_761 + seed * 40_503) % 10_007) as f32 / 5_003.5 - 1.0)
            .collect()
    }

    fn tensor<B: Backend, const D: usize>(v: &[f32], shape: [usize; D]) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
    }

    fn vec_of<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    /// `got` equals `want` within `tol[i]` per element.
    fn close(got: &[f32], want: &[f32], tol: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, ((g, w), t)) in got.iter().zip(want).zip(tol).enumerate() {
            assert!(
                (g - w).abs() <= *t,
                "{what}[{i}]: {g} against {w} (tolerance {t})"
            );
        }
    }

    /// Per output of `x W + b`: 2e-6 times `Σ |x w| + |b|`, the size of its terms (a sum of
    /// large terms of both signs rounds differently in a different order).
    fn term_sizes(x: &[f32], w: &[f32], b: &[f32], [n, k, m]: [usize; 3]) -> Vec<f32> {
        let mut t = vec![0.0f32; n * m];
        for i in 0..n {
            for j in 0..m {
                let s: f32 = (0..k).map(|l| (x[i * k + l] * w[l * m + j]).abs()).sum();
                t[i * m + j] = 2e-6 * (s + b[j].abs()).max(1.0);
            }
        }
        t
    }

    #[test]
    fn fused_linear_equals_matmul_add_gelu() {
        // A small product (one thread) and one large enough for every thread; odd widths.
        for [n, k, m] in [[7, 13, 5], [130, 200, 301]] {
            let x = noise(n * k, 1).iter().map(|v| v * 4.0).collect::<Vec<_>>();
            let w = noise(k * m, 2);
            let b = noise(m, 3);
            let tol = term_sizes(&x, &w, &b, [n, k, m]);
            for gelu in [false, true] {
                let reference = kernels::linear(
                    tensor::<Reference, 2>(&x, [n, k]),
                    tensor(&w, [k, m]),
                    Some(tensor(&b, [m])),
                    gelu,
                );
                let got = kernels::linear(
                    tensor::<Flex, 2>(&x, [n, k]),
                    tensor(&w, [k, m]),
                    Some(tensor(&b, [m])),
                    gelu,
                );
                let what = format!("linear {n}x{k}x{m}, gelu {gelu}");
                close(&vec_of(got), &vec_of(reference.clone()), &tol, &what);
                // A strided input (a transposed view) and no bias.
                let xt: Tensor<Flex, 2> = tensor::<Flex, 2>(&x, [n, k]).transpose();
                let got = kernels::linear(xt.transpose(), tensor(&w, [k, m]), None, gelu);
                let want = kernels::linear(
                    tensor::<Reference, 2>(&x, [n, k]),
                    tensor(&w, [k, m]),
                    None,
                    gelu,
                );
                close(
                    &vec_of(got),
                    &vec_of(want),
                    &tol,
                    &format!("{what}, strided, no bias"),
                );
            }
        }
    }

    /// `Σ c · linear(x, w, b)` for fixed weights `c`, and its gradients with respect to `x`,
    /// `w` and `b`.
    fn linear_grads<B: Backend>(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        [n, k, m]: [usize; 3],
        gelu: bool,
    ) -> [Vec<f32>; 4] {
        let x = tensor::<Autodiff<B>, 2>(x, [n, k]).require_grad();
        let w = tensor::<Autodiff<B>, 2>(w, [k, m]).require_grad();
        let b = tensor::<Autodiff<B>, 1>(b, [m]).require_grad();
        let y = kernels::linear(x.clone(), w.clone(), Some(b.clone()), gelu);
        let c = tensor::<Autodiff<B>, 2>(&noise(n * m, 9), [n, m]);
        let value = vec_of(y.clone().inner());
        let grads = (y * c).sum().backward();
        let g = |t: &Tensor<Autodiff<B>, 2>| vec_of(t.grad(&grads).unwrap());
        [value, g(&x), g(&w), vec_of(b.grad(&grads).unwrap())]
    }

    #[test]
    fn fused_linear_gradients_equal_burns() {
        for [n, k, m] in [[6, 11, 9], [70, 129, 160]] {
            let (x, w, b) = (noise(n * k, 4), noise(k * m, 5), noise(m, 6));
            for gelu in [false, true] {
                let got = linear_grads::<Flex>(&x, &w, &b, [n, k, m], gelu);
                let want = linear_grads::<Reference>(&x, &w, &b, [n, k, m], gelu);
                for (i, what) in ["value", "dx", "dw", "db"].iter().enumerate() {
                    let tol: Vec<f32> = want[i].iter().map(|v| 2e-5 * v.abs().max(1.0)).collect();
                    close(
                        &got[i],
                        &want[i],
                        &tol,
                        &format!("{what} {n}x{k}x{m} gelu {gelu}"),
                    );
                }
            }
        }
    }

    #[test]
    fn residual_layer_norm_equals_f64_layer_norm() {
        let (b, s, d) = (3, 17, 37);
        let x: Vec<f32> = noise(b * s * d, 7).iter().map(|v| v * 3.0 + 0.5).collect();
        let a = noise(b * s * d, 8);
        let (w, bias) = (noise(d, 10), noise(d, 11));
        let eps = 1e-12;
        let got = vec_of(kernels::add_layer_norm(
            tensor::<Flex, 3>(&x, [b, s, d]),
            tensor(&a, [b, s, d]),
            tensor(&w, [d]),
            tensor(&bias, [d]),
            eps,
        ));
        let mut want = vec![0.0f32; b * s * d];
        for r in 0..b * s {
            let row: Vec<f64> = (0..d)
                .map(|i| x[r * d + i] as f64 + a[r * d + i] as f64)
                .collect();
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            for i in 0..d {
                want[r * d + i] =
                    ((row[i] - mean) / (var + eps).sqrt() * w[i] as f64 + bias[i] as f64) as f32;
            }
        }
        let tol = vec![1e-5f32; want.len()];
        close(&got, &want, &tol, "LayerNorm(x + a)");
        // A broadcast `a` (a block that adds only its bias) takes Burn's operations.
        let row = noise(d, 12);
        let a = tensor::<Flex, 1>(&row, [d])
            .reshape([1, 1, d])
            .expand([b, s, d]);
        let got = vec_of(kernels::add_layer_norm(
            tensor::<Flex, 3>(&x, [b, s, d]),
            a,
            tensor(&w, [d]),
            tensor(&bias, [d]),
            eps,
        ));
        let a = tensor::<Reference, 1>(&row, [d])
            .reshape([1, 1, d])
            .expand([b, s, d]);
        let want = vec_of(kernels::add_layer_norm(
            tensor::<Reference, 3>(&x, [b, s, d]),
            a,
            tensor(&w, [d]),
            tensor(&bias, [d]),
            eps,
        ));
        close(&got, &want, &tol, "LayerNorm(x + broadcast bias)");
    }

    #[test]
    fn attention_kernel_equals_burns_attention() {
        let (b, h, s, dh) = (3, 5, 19, 8);
        let n = b * h * s * dh;
        let (q, k, v) = (noise(n, 13), noise(n, 14), noise(n, 15));
        let q: Vec<f32> = q.iter().map(|x| x * 3.0).collect();
        // Padding: the last 4 positions of batch row 1 and the last one of row 2.
        let mut bias = vec![0.0f32; b * s];
        for j in s - 4..s {
            bias[s + j] = MASKED;
        }
        bias[3 * s - 1] = MASKED;
        for causal in [false, true] {
            for bias in [None, Some(&bias)] {
                let run = |q: Tensor<Flex, 4>, k, v, m: Option<Tensor<Flex, 2>>| {
                    vec_of(kernels::attention(q, k, v, m, causal))
                };
                let got = run(
                    tensor(&q, [b, h, s, dh]),
                    tensor(&k, [b, h, s, dh]),
                    tensor(&v, [b, h, s, dh]),
                    bias.map(|m| tensor(m, [b, s])),
                );
                let want = vec_of(kernels::attention(
                    tensor::<Reference, 4>(&q, [b, h, s, dh]),
                    tensor(&k, [b, h, s, dh]),
                    tensor(&v, [b, h, s, dh]),
                    bias.map(|m| tensor(m, [b, s])),
                    causal,
                ));
                let tol = vec![2e-6f32; n];
                let what = format!("attention, causal {causal}, padding {}", bias.is_some());
                close(&got, &want, &tol, &what);
            }
        }
    }
}
