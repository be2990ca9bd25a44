//! `shears_layers::kernels` (flex's own GELU and head layout kernels, and their gradients;
//! Burn's operations on other backends) against Burn's generic operations on ndarray, on odd
//! shapes.

use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use shears_layers::kernels;

/// Burn's generic operations in f64: the kernels take the f32 tensors of the CPU backends,
/// so none of them runs here.
type Reference = NdArray<f64>;

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
    let got: Vec<f32> = kernels::gelu(x)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
    let r = Tensor::<Reference, 2>::from_data(
        TensorData::new(v.clone(), [3, 517]),
        &Default::default(),
    );
    let want: Vec<f32> = kernels::exact_gelu(r)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
    for ((g, w), x) in got.iter().zip(&want).zip(&v) {
        assert!(
            (g - w).abs() <= 2e-6 * x.abs().max(1.0),
            "gelu({x}) = {g}, the exact formula on ndarray gives {w}"
        );
    }
    // GPT-2's tanh approximation against Burn's tanh in f64.
    let x = Tensor::<B, 2>::from_data(TensorData::new(v.clone(), [3, 517]), device);
    let got: Vec<f32> = kernels::gelu_tanh(x)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
    let r = Tensor::<Reference, 2>::from_data(
        TensorData::new(v.clone(), [3, 517]),
        &Default::default(),
    );
    let want: Vec<f32> = kernels::tanh_gelu(r)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
    for ((g, w), x) in got.iter().zip(&want).zip(&v) {
        assert!(
            (g - w).abs() <= 2e-6 * x.abs().max(1.0),
            "gelu_tanh({x}) = {g}, Burn's tanh in f64 gives {w}"
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
    let got: Vec<f32> = split.clone().into_data().convert::<f32>().to_vec().unwrap();
    let want: Vec<f32> = r.into_data().convert::<f32>().to_vec().unwrap();
    assert_eq!(got, want, "split_heads");
    let merged: Vec<f32> = kernels::merge_heads(split)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
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
    let value = y
        .clone()
        .inner()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
    let grads = (y * w).sum().backward();
    let g = x
        .grad(&grads)
        .expect("x takes part")
        .into_data()
        .convert::<f32>()
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
    let (got_v, got_g) = grad_of::<B, 2, 2>(v.clone(), [2, 517], kernels::gelu_tanh, device);
    let (want_v, want_g) = grad_of::<Reference, 2, 2>(v.clone(), [2, 517], kernels::tanh_gelu, &r);
    close(&got_v, &want_v, "gelu_tanh");
    close(&got_g, &want_g, "gelu_tanh's gradient");
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
/// [`kernels::attention`], the optimizer's) run on the CPU backends, flex and ndarray (f32);
/// every other backend runs the generic operations they are compared with here (as the f64
/// reference does), so each test runs its body on both CPU backends.
mod cpu {
    use burn::backend::{Flex, NdArray};

    /// Each body on both CPU backends.
    macro_rules! on_cpu_backends {
        ($($name:ident),* $(,)?) => {
            $(
                #[test]
                fn $name() {
                    super::bodies::$name::<Flex>();
                    super::bodies::$name::<NdArray<f32>>();
                }
            )*
        };
    }

    on_cpu_backends!(
        fused_linear_equals_matmul_add_gelu,
        fused_linear_gradients_equal_burns,
        residual_layer_norm_equals_f64_layer_norm,
        attention_kernel_equals_burns_attention,
        attention_gradients_equal_the_f64_formulas,
        layer_norm_gradients_equal_the_f64_formulas,
        fused_adamw_equals_burns_arithmetic,
        sum_of_squares_and_scale_equal_burns,
        batches_equal_their_rows,
        nll_and_its_gradient_equal_f64_log_softmax,
        soft_kl_and_its_gradient_equal_f64_softmax,
    );
}

/// The kernels run on exactly the CPU backends (with and without autodiff), so that the
/// tests above compare them, not Burn's operations, with the reference.
#[test]
fn the_kernels_run_on_the_cpu_backends_only() {
    use burn::backend::{Autodiff, Flex, NdArray, Wgpu};
    assert!(kernels::on_kernels::<Flex>());
    assert!(kernels::on_kernels::<Autodiff<Flex>>());
    assert!(kernels::on_kernels::<NdArray<f32>>());
    assert!(kernels::on_kernels::<Autodiff<NdArray<f32>>>());
    assert!(!kernels::on_kernels::<Reference>());
    assert!(!kernels::on_kernels::<Wgpu>());
}

/// A block emptied of every head or neuron adds its bias expanded over the rows; flex keeps
/// the expansion a view, and the layer-norm kernel reads its one row instead of copying it
/// out to every row. At batch 1 `expand` keeps the batch axis's stride (`[d, 0, 1]`), which
/// the kernels once took for a layout to copy: 12 copies a pass, most of a pruned MiniLM's
/// floor at 1 x 64 (docs/PERFORMANCE.md).
#[test]
fn an_expanded_bias_is_read_as_one_row_on_flex() {
    use burn::backend::Flex;
    let device = Default::default();
    let d = 5;
    let values = [0.5, -1.0, 2.0, 0.0, 3.0];
    let row = Tensor::<Flex, 1>::from_floats(values, &device);
    for (b, s) in [(1, 7), (3, 7), (3, 1), (1, 1)] {
        let a = kernels::expand_row(row.clone(), [b, s]);
        assert!(
            kernels::is_row_broadcast(&a),
            "[{d}] expanded to [{b}, {s}, {d}]"
        );
        let want: Vec<f32> = (0..b * s).flat_map(|_| values).collect();
        assert_eq!(a.into_data().to_vec::<f32>().unwrap(), want);
    }
    // One row per sequence, and rows of their own, are not one row.
    let per_sequence = Tensor::<Flex, 3>::zeros([3, 1, d], &device).expand([3, 7, d]);
    assert!(!kernels::is_row_broadcast(&per_sequence));
    assert!(!kernels::is_row_broadcast(&Tensor::<Flex, 3>::zeros(
        [1, 7, d],
        &device
    )));
}

/// The tests of [`cpu`], for a CPU backend `C`.
mod bodies {
    use super::*;
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
        t.into_data().convert::<f32>().to_vec().unwrap()
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

    pub fn fused_linear_equals_matmul_add_gelu<C: Backend>() {
        // A small product (one thread) and two large enough for every thread (cut into
        // column blocks, then row blocks); odd widths.
        for [n, k, m] in [[7, 13, 5], [130, 200, 301], [301, 200, 130]] {
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
                    tensor::<C, 2>(&x, [n, k]),
                    tensor(&w, [k, m]),
                    Some(tensor(&b, [m])),
                    gelu,
                );
                let what = format!("linear {n}x{k}x{m}, gelu {gelu}");
                close(&vec_of(got), &vec_of(reference.clone()), &tol, &what);
                // A strided input (a transposed view) and no bias.
                let xt: Tensor<C, 2> = tensor::<C, 2>(&x, [n, k]).transpose();
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

    pub fn fused_linear_gradients_equal_burns<C: Backend>() {
        for [n, k, m] in [[6, 11, 9], [70, 129, 160], [300, 64, 100]] {
            let (x, w, b) = (noise(n * k, 4), noise(k * m, 5), noise(m, 6));
            for gelu in [false, true] {
                let got = linear_grads::<C>(&x, &w, &b, [n, k, m], gelu);
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

    pub fn residual_layer_norm_equals_f64_layer_norm<C: Backend>() {
        let (b, s, d) = (3, 17, 37);
        let x: Vec<f32> = noise(b * s * d, 7).iter().map(|v| v * 3.0 + 0.5).collect();
        let a = noise(b * s * d, 8);
        let (w, bias) = (noise(d, 10), noise(d, 11));
        let eps = 1e-12;
        let got = vec_of(kernels::add_layer_norm(
            tensor::<C, 3>(&x, [b, s, d]),
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
        // A broadcast `a` (a block that adds only its bias), over three sequences and over
        // one (where `expand` keeps the batch axis's stride: the kernels read it as a row
        // all the same, see `an_expanded_bias_is_read_as_one_row_on_flex`).
        let row = noise(d, 12);
        for b in [3, 1] {
            let x = &x[..b * s * d];
            let a = tensor::<C, 1>(&row, [d])
                .reshape([1, 1, d])
                .expand([b, s, d]);
            let got = vec_of(kernels::add_layer_norm(
                tensor::<C, 3>(x, [b, s, d]),
                a,
                tensor(&w, [d]),
                tensor(&bias, [d]),
                eps,
            ));
            let a = tensor::<Reference, 1>(&row, [d])
                .reshape([1, 1, d])
                .expand([b, s, d]);
            let want = vec_of(kernels::add_layer_norm(
                tensor::<Reference, 3>(x, [b, s, d]),
                a,
                tensor(&w, [d]),
                tensor(&bias, [d]),
                eps,
            ));
            let tol = &tol[..b * s * d];
            close(
                &got,
                &want,
                tol,
                &format!("LayerNorm(x + broadcast bias), batch {b}"),
            );
        }
    }

    pub fn attention_kernel_equals_burns_attention<C: Backend>() {
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
        let drops = [None, Some(kernels::ProbDropout { p: 0.3, key: 7 })];
        let cases = [false, true]
            .into_iter()
            .flat_map(|c| drops.map(|d| (c, d)));
        for (causal, drop) in cases {
            for bias in [None, Some(&bias)] {
                let run = |q: Tensor<C, 4>, k, v, m: Option<Tensor<C, 2>>| {
                    vec_of(kernels::attention(q, k, v, m, causal, drop))
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
                    drop,
                ));
                let tol = vec![5e-6f32; n];
                let what = format!(
                    "attention, causal {causal}, padding {}, dropout {}",
                    bias.is_some(),
                    drop.is_some()
                );
                close(&got, &want, &tol, &what);
            }
        }
    }

    /// `Σ c · attention(q, k, v)` for fixed weights `c`, and its gradients with respect to
    /// `q`, `k` and `v`.
    fn attention_grads<B: Backend>(
        [q, k, v]: [&[f32]; 3],
        bias: Option<&[f32]>,
        [b, h, s, dh]: [usize; 4],
        causal: bool,
        drop: Option<kernels::ProbDropout>,
    ) -> [Vec<f32>; 4] {
        let shape = [b, h, s, dh];
        let q = tensor::<Autodiff<B>, 4>(q, shape).require_grad();
        let k = tensor::<Autodiff<B>, 4>(k, shape).require_grad();
        let v = tensor::<Autodiff<B>, 4>(v, shape).require_grad();
        let bias = bias.map(|m| tensor::<Autodiff<B>, 2>(m, [b, s]));
        let y = kernels::attention(q.clone(), k.clone(), v.clone(), bias, causal, drop);
        let c = tensor::<Autodiff<B>, 4>(&noise(b * h * s * dh, 21), shape);
        let value = vec_of(y.clone().inner());
        let grads = (y * c).sum().backward();
        let g = |t: &Tensor<Autodiff<B>, 4>| vec_of(t.grad(&grads).expect("takes part"));
        [value, g(&q), g(&k), g(&v)]
    }

    /// [`attention_grads`] in f64 from the formulas: `P = softmax(Q Kᵀ / √d + bias)` (and the
    /// causal mask), dropout's multipliers `M` (1 without it), `O = (P ⊙ M) V`,
    /// `dV = (P ⊙ M)ᵀ C`, `G = (C Vᵀ) ⊙ M`, `dS = P ⊙ (G - rowsum(P ⊙ G))`,
    /// `dQ = dS K / √d`, `dK = dSᵀ Q / √d` with `C` the weights of the sum.
    fn attention_grads_f64(
        [q, k, v]: [&[f32]; 3],
        bias: Option<&[f32]>,
        [b, h, s, dh]: [usize; 4],
        causal: bool,
        drop: Option<kernels::ProbDropout>,
    ) -> [Vec<f32>; 4] {
        let m = |bh: usize, i: usize, j: usize| match drop {
            Some(d) => {
                let idx = ((bh * s + i) * s + j) as u64;
                if shears_layers::dropout::kept(d.key, idx, d.p) {
                    1.0 / (1.0 - d.p as f64)
                } else {
                    0.0
                }
            }
            None => 1.0,
        };
        let c = noise(b * h * s * dh, 21);
        let n = b * h * s * dh;
        let (mut o, mut dq, mut dk, mut dv) =
            (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let scale = 1.0 / (dh as f64).sqrt();
        let at = |t: &[f32], bh: usize, i: usize, j: usize| t[(bh * s + i) * dh + j] as f64;
        for bh in 0..b * h {
            let bi = bh / h;
            let mut p = vec![vec![0.0f64; s]; s];
            for i in 0..s {
                let live = if causal { i + 1 } else { s };
                let mut row: Vec<f64> = (0..live)
                    .map(|j| {
                        let dot: f64 = (0..dh).map(|e| at(q, bh, i, e) * at(k, bh, j, e)).sum();
                        let m = bias.map_or(0.0, |m| m[bi * s + j] as f64);
                        // f32::MIN as a score removes the key, as in the kernels.
                        if m <= f32::MIN as f64 {
                            f64::NEG_INFINITY
                        } else {
                            dot * scale + m
                        }
                    })
                    .collect();
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row
                    .iter_mut()
                    .map(|x| {
                        *x = (*x - max).exp();
                        *x
                    })
                    .sum();
                for j in 0..live {
                    p[i][j] = row[j] / sum;
                }
            }
            let cat = |i: usize, e: usize| c[(bh * s + i) * dh + e] as f64;
            for i in 0..s {
                for e in 0..dh {
                    o[(bh * s + i) * dh + e] = (0..s)
                        .map(|j| p[i][j] * m(bh, i, j) * at(v, bh, j, e))
                        .sum::<f64>() as f32;
                }
            }
            let mut ds = vec![vec![0.0f64; s]; s];
            for i in 0..s {
                let dp: Vec<f64> = (0..s)
                    .map(|j| {
                        (0..dh).map(|e| cat(i, e) * at(v, bh, j, e)).sum::<f64>() * m(bh, i, j)
                    })
                    .collect();
                let dot: f64 = (0..s).map(|j| p[i][j] * dp[j]).sum();
                for j in 0..s {
                    ds[i][j] = p[i][j] * (dp[j] - dot);
                }
            }
            for j in 0..s {
                for e in 0..dh {
                    let idx = (bh * s + j) * dh + e;
                    dv[idx] = (0..s)
                        .map(|i| p[i][j] * m(bh, i, j) * cat(i, e))
                        .sum::<f64>() as f32;
                    dq[idx] =
                        ((0..s).map(|l| ds[j][l] * at(k, bh, l, e)).sum::<f64>() * scale) as f32;
                    dk[idx] =
                        ((0..s).map(|i| ds[i][j] * at(q, bh, i, e)).sum::<f64>() * scale) as f32;
                }
            }
        }
        [o, dq, dk, dv]
    }

    pub fn attention_gradients_equal_the_f64_formulas<C: Backend>() {
        let (b, h, s, dh) = (2, 3, 13, 8);
        let n = b * h * s * dh;
        let q: Vec<f32> = noise(n, 16).iter().map(|x| x * 3.0).collect();
        let (k, v) = (noise(n, 17), noise(n, 18));
        let mut bias = vec![0.0f32; b * s];
        for j in s - 5..s {
            bias[s + j] = MASKED;
        }
        let drops = [None, Some(kernels::ProbDropout { p: 0.25, key: 11 })];
        let cases = [false, true]
            .into_iter()
            .flat_map(|c| drops.map(|d| (c, d)));
        for (causal, drop) in cases {
            for bias in [None, Some(&bias[..])] {
                let args = ([&q[..], &k, &v], bias, [b, h, s, dh], causal, drop);
                let got = attention_grads::<C>(args.0, args.1, args.2, args.3, args.4);
                let want = attention_grads_f64(args.0, args.1, args.2, args.3, args.4);
                // Burn's composition (what other backends run) agrees more loosely.
                let burns = attention_grads::<Reference>(args.0, args.1, args.2, args.3, args.4);
                for (i, what) in ["value", "dq", "dk", "dv"].iter().enumerate() {
                    let what = format!(
                        "attention {what}, causal {causal}, padding {}, dropout {}",
                        bias.is_some(),
                        drop.is_some()
                    );
                    let tol: Vec<f32> = want[i].iter().map(|v| 2e-6 * v.abs().max(1.0)).collect();
                    close(&got[i], &want[i], &tol, &what);
                    // Looser still than it looks: `NdArray<f32>` and `Reference` share one
                    // device, whose default float type the first of them to make a tensor
                    // sets for both, so with some test orders this runs in f32 (dk off by
                    // 2.1e-4 on an AVX2 machine, 2026-12-08; docs/ARCHITECTURE.md).
                    let tol: Vec<f32> = want[i].iter().map(|v| 1e-3 * v.abs().max(1.0)).collect();
                    close(&burns[i], &want[i], &tol, &format!("{what} (Burn's)"));
                }
            }
        }
    }

    /// `Σ c · LayerNorm(x + a)` (or of `x` alone) and its gradients with respect to `x`,
    /// `a` (when given), the weight and the bias.
    fn norm_grads<B: Backend>(
        x: &[f32],
        a: Option<&[f32]>,
        w: &[f32],
        bias: &[f32],
        [b, s, d]: [usize; 3],
    ) -> Vec<Vec<f32>> {
        let x = tensor::<Autodiff<B>, 3>(x, [b, s, d]).require_grad();
        let a = a.map(|a| tensor::<Autodiff<B>, 3>(a, [b, s, d]).require_grad());
        let w = tensor::<Autodiff<B>, 1>(w, [d]).require_grad();
        let bb = tensor::<Autodiff<B>, 1>(bias, [d]).require_grad();
        let y = match &a {
            Some(a) => kernels::add_layer_norm(x.clone(), a.clone(), w.clone(), bb.clone(), 1e-12),
            None => kernels::layer_norm(x.clone(), w.clone(), bb.clone(), 1e-12),
        };
        let c = tensor::<Autodiff<B>, 3>(&noise(b * s * d, 22), [b, s, d]);
        let mut out = vec![vec_of(y.clone().inner())];
        let grads = (y * c).sum().backward();
        out.push(vec_of(x.grad(&grads).expect("x takes part")));
        if let Some(a) = &a {
            out.push(vec_of(a.grad(&grads).expect("a takes part")));
        }
        out.push(vec_of(w.grad(&grads).expect("w takes part")));
        out.push(vec_of(bb.grad(&grads).expect("b takes part")));
        out
    }

    /// [`norm_grads`] in f64: `h = x + a`, `x̂ = (h - μ) / √(σ² + ε)`, `y = x̂ w + b`, and with
    /// the weights `c` of the sum `dh = (g - mean(g) - x̂ mean(g x̂)) / √(σ² + ε)` for
    /// `g = c w`, `dw = Σ c x̂`, `db = Σ c`.
    fn norm_grads_f64(
        x: &[f32],
        a: Option<&[f32]>,
        w: &[f32],
        bias: &[f32],
        [b, s, d]: [usize; 3],
    ) -> Vec<Vec<f32>> {
        let c = noise(b * s * d, 22);
        let (mut y, mut dh) = (vec![0.0f32; b * s * d], vec![0.0f32; b * s * d]);
        let (mut dw, mut db) = (vec![0.0f64; d], vec![0.0f64; d]);
        for r in 0..b * s {
            let h: Vec<f64> = (0..d)
                .map(|i| x[r * d + i] as f64 + a.map_or(0.0, |a| a[r * d + i] as f64))
                .collect();
            let mean = h.iter().sum::<f64>() / d as f64;
            let var = h.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + 1e-12).sqrt();
            let xhat: Vec<f64> = h.iter().map(|v| (v - mean) * inv).collect();
            let g: Vec<f64> = (0..d).map(|i| c[r * d + i] as f64 * w[i] as f64).collect();
            let mg = g.iter().sum::<f64>() / d as f64;
            let mgx = g.iter().zip(&xhat).map(|(g, x)| g * x).sum::<f64>() / d as f64;
            for i in 0..d {
                y[r * d + i] = (xhat[i] * w[i] as f64 + bias[i] as f64) as f32;
                dh[r * d + i] = (inv * (g[i] - mg - xhat[i] * mgx)) as f32;
                dw[i] += c[r * d + i] as f64 * xhat[i];
                db[i] += c[r * d + i] as f64;
            }
        }
        let mut out = vec![y, dh.clone()];
        if a.is_some() {
            out.push(dh);
        }
        out.push(dw.iter().map(|v| *v as f32).collect());
        out.push(db.iter().map(|v| *v as f32).collect());
        out
    }

    pub fn layer_norm_gradients_equal_the_f64_formulas<C: Backend>() {
        // More rows than one block of the backward's partial sums (16,384 values).
        let (b, s, d) = (3, 200, 37);
        let x: Vec<f32> = noise(b * s * d, 23).iter().map(|v| v * 3.0 + 0.5).collect();
        let a = noise(b * s * d, 24);
        let (w, bias) = (noise(d, 25), noise(d, 26));
        for a in [Some(&a[..]), None] {
            let got = norm_grads::<C>(&x, a, &w, &bias, [b, s, d]);
            let want = norm_grads_f64(&x, a, &w, &bias, [b, s, d]);
            let burns = norm_grads::<Reference>(&x, a, &w, &bias, [b, s, d]);
            let names: &[&str] = match a {
                Some(_) => &["value", "dx", "da", "dw", "db"],
                None => &["value", "dx", "dw", "db"],
            };
            assert_eq!(got.len(), names.len());
            for (i, what) in names.iter().enumerate() {
                let what = format!("layer norm {what}, residual {}", a.is_some());
                // The weight's and bias's gradients sum 600 rows.
                let tol: Vec<f32> = want[i].iter().map(|v| 1e-5 * v.abs().max(1.0)).collect();
                close(&got[i], &want[i], &tol, &what);
                let tol: Vec<f32> = want[i].iter().map(|v| 1e-3 * v.abs().max(1.0)).collect();
                close(&burns[i], &want[i], &tol, &format!("{what} (Burn's)"));
            }
        }
    }

    pub fn fused_adamw_equals_burns_arithmetic<C: Backend>() {
        let shape = [37, 29];
        let n = 37 * 29;
        let p0 = noise(n, 30);
        let mut got = (tensor::<C, 2>(&p0, shape), None);
        let mut want = (tensor::<Reference, 2>(&p0, shape), None);
        for t in 1..=4 {
            let g: Vec<f32> = noise(n, 30 + t).iter().map(|v| v * 0.1).collect();
            let h = kernels::AdamWStep {
                lr: 1e-3 * t as f64,
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-5,
                weight_decay: 0.01,
                time: t,
            };
            let (p, m, v) = kernels::adamw_step(got.0, tensor(&g, shape), got.1, h);
            got = (p, Some((m, v)));
            let (p, m, v) = kernels::adamw_step(want.0, tensor(&g, shape), want.1, h);
            want = (p, Some((m, v)));
        }
        let (gm, gv) = got.1.unwrap();
        let (wm, wv) = want.1.unwrap();
        for (what, g, w) in [
            ("param", vec_of(got.0), vec_of(want.0)),
            ("m", vec_of(gm), vec_of(wm)),
            ("v", vec_of(gv), vec_of(wv)),
        ] {
            // Against f64: the moments sum terms of about 0.01 (0.1 · g), whose f32 rounding
            // stays where they cancel to a smaller value.
            let tol: Vec<f32> = w.iter().map(|v| 1e-6 * v.abs().max(1e-2)).collect();
            close(&g, &w, &tol, &format!("adamw {what}"));
        }
    }

    pub fn sum_of_squares_and_scale_equal_burns<C: Backend>() {
        // More than one block of 16,384 values.
        let v: Vec<f32> = noise(40_000, 40).iter().map(|x| x * 2.0).collect();
        let want: f64 = v.iter().map(|x| (*x as f64).powi(2)).sum();
        let got = vec_of(kernels::sum_squares(tensor::<C, 2>(&v, [200, 200])))[0] as f64;
        assert!(
            (got - want).abs() <= 1e-6 * want,
            "sum of squares {got} against {want}"
        );
        let scaled = vec_of(kernels::scale(tensor::<C, 2>(&v, [200, 200]), 0.37));
        let want: Vec<f32> = v.iter().map(|x| x * 0.37).collect();
        assert_eq!(scaled, want, "scale");
    }

    /// `linear` and `split_heads` on `[batch, seq, d]` equal them on `[batch · seq, d]`,
    /// values and gradients (the kernels read the leading axes as rows, with no reshape),
    /// on the kernels and on Burn's operations.
    pub fn batches_equal_their_rows<C: Backend>() {
        let ([b, s, k], m, heads) = ([3, 5, 24], 40, 4);
        let (x, w, bias) = (noise(b * s * k, 50), noise(k * m, 51), noise(m, 52));
        fn run<B: Backend, const D: usize>(
            x: Tensor<Autodiff<B>, D>,
            w: &[f32],
            bias: &[f32],
            [k, m]: [usize; 2],
            heads: usize,
            batch: usize,
        ) -> [Vec<f32>; 3] {
            let x = x.require_grad();
            let w = tensor::<Autodiff<B>, 2>(w, [k, m]);
            let y = kernels::linear(x.clone(), w, Some(tensor(bias, [m])), true);
            let split = kernels::split_heads(y.clone(), batch, heads);
            let c =
                tensor::<Autodiff<B>, 4>(&noise(split.shape().num_elements(), 53), split.dims());
            let grads = (split.clone() * c).sum().backward();
            let g = x.grad(&grads).expect("x takes part");
            [vec_of(y.inner()), vec_of(split.inner()), vec_of(g)]
        }
        for (name, rows, batch) in [
            (
                "kernels",
                run::<C, 2>(tensor(&x, [b * s, k]), &w, &bias, [k, m], heads, b),
                run::<C, 3>(tensor(&x, [b, s, k]), &w, &bias, [k, m], heads, b),
            ),
            (
                "burn",
                run::<Reference, 2>(tensor(&x, [b * s, k]), &w, &bias, [k, m], heads, b),
                run::<Reference, 3>(tensor(&x, [b, s, k]), &w, &bias, [k, m], heads, b),
            ),
        ] {
            for (i, what) in ["linear", "split_heads", "the gradient"].iter().enumerate() {
                assert_eq!(
                    rows[i], batch[i],
                    "{name}: {what} of a batch against its rows"
                );
            }
        }
    }

    /// `nll`: values and gradients against Burn's `log_softmax` and `gather` in f64, on rows
    /// narrower than a parallel task (several per task) and wider (a vocabulary), with rows
    /// without a target (-1) that give 0 and no gradient, and logits up to 30 apart.
    pub fn nll_and_its_gradient_equal_f64_log_softmax<C: Backend>() {
        fn run<B: Backend>(x: &[f32], [n, c]: [usize; 2], t: &[i64]) -> [Vec<f32>; 2] {
            let x = tensor::<Autodiff<B>, 2>(x, [n, c]).require_grad();
            let nll = kernels::nll(x.clone(), t.to_vec());
            // Unequal weights per row, so that the upstream gradient matters.
            let w: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 * 0.25).collect();
            let grads = (nll.clone() * tensor::<Autodiff<B>, 1>(&w, [n]))
                .sum()
                .backward();
            [
                vec_of(nll.inner()),
                vec_of(x.grad(&grads).expect("x takes part")),
            ]
        }
        for (k, [n, c]) in [[9, 7], [5, 50_257]].into_iter().enumerate() {
            let x: Vec<f32> = noise(n * c, 60 + k).iter().map(|v| v * 15.0).collect();
            let t: Vec<i64> = (0..n)
                .map(|i| {
                    if i % 4 == 3 {
                        -1
                    } else {
                        ((i * 7919) % c) as i64
                    }
                })
                .collect();
            let got = run::<C>(&x, [n, c], &t);
            let want = run::<Reference>(&x, [n, c], &t);
            for (i, &ti) in t.iter().enumerate() {
                if ti < 0 {
                    assert_eq!(got[0][i], 0.0, "a row without a target scores 0");
                    assert!(
                        got[1][i * c..(i + 1) * c].iter().all(|&g| g == 0.0),
                        "no gradient from a row without a target"
                    );
                }
            }
            let tol: Vec<f32> = want[0].iter().map(|v| 2e-6 * v.abs().max(1.0)).collect();
            close(&got[0], &want[0], &tol, &format!("nll {n} x {c}"));
            let tol: Vec<f32> = want[1].iter().map(|v| 1e-7 + 2e-6 * v.abs()).collect();
            close(&got[1], &want[1], &tol, &format!("nll gradient {n} x {c}"));
        }
    }

    /// `soft_kl`: values and gradients (in the student's logits only) against Burn's
    /// `softmax` and `log_softmax` in f64, at temperatures 1 and 2, on narrow and
    /// vocabulary-wide rows, with rows left out; 0 when the student equals the teacher.
    pub fn soft_kl_and_its_gradient_equal_f64_softmax<C: Backend>() {
        fn run<B: Backend>(
            x: &[f32],
            y: &[f32],
            [n, c]: [usize; 2],
            t: f64,
            keep: &[bool],
        ) -> [Vec<f32>; 3] {
            let x = tensor::<Autodiff<B>, 2>(x, [n, c]).require_grad();
            let y = tensor::<Autodiff<B>, 2>(y, [n, c]).require_grad();
            let kl = kernels::soft_kl(x.clone(), y.clone(), t, keep.to_vec());
            let w: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 * 0.25).collect();
            let grads = (kl.clone() * tensor::<Autodiff<B>, 1>(&w, [n]))
                .sum()
                .backward();
            let gy = y.grad(&grads).map(vec_of).unwrap_or_default();
            [
                vec_of(kl.inner()),
                vec_of(x.grad(&grads).expect("x takes part")),
                gy,
            ]
        }
        for (k, [n, c]) in [[9, 7], [5, 50_257]].into_iter().enumerate() {
            let x: Vec<f32> = noise(n * c, 70 + k).iter().map(|v| v * 12.0).collect();
            let y: Vec<f32> = noise(n * c, 80 + k).iter().map(|v| v * 12.0).collect();
            let keep: Vec<bool> = (0..n).map(|i| i % 4 != 3).collect();
            for t in [1.0, 2.0] {
                let got = run::<C>(&x, &y, [n, c], t, &keep);
                let want = run::<Reference>(&x, &y, [n, c], t, &keep);
                let what = format!("soft_kl {n} x {c}, T = {t}");
                let tol: Vec<f32> = want[0].iter().map(|v| 1e-5 * v.abs().max(1.0)).collect();
                close(&got[0], &want[0], &tol, &what);
                let tol: Vec<f32> = want[1].iter().map(|v| 1e-7 + 2e-6 * v.abs()).collect();
                close(&got[1], &want[1], &tol, &format!("{what}: gradient"));
                assert!(
                    got[2].iter().all(|&g| g == 0.0),
                    "{what}: the teacher gets no gradient"
                );
                for (i, &kp) in keep.iter().enumerate() {
                    if !kp {
                        assert_eq!(got[0][i], 0.0, "{what}: a row left out scores 0");
                        assert!(got[1][i * c..(i + 1) * c].iter().all(|&g| g == 0.0));
                    }
                }
                let same = run::<C>(&x, &x, [n, c], t, &keep);
                assert!(
                    same[0].iter().all(|&v| v.abs() < 1e-5),
                    "{what}: KL(p, p) = {:?}",
                    same[0]
                );
            }
        }
    }
}
