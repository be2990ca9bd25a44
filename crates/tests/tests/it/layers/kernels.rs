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
