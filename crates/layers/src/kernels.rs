//! Faster versions of a few elementwise and layout operations for the flex backend (cargo
//! feature `flex`), with and without autodiff, chosen at run time by the tensor's type
//! (`Any` downcasts, no `unsafe`); every other backend runs Burn's generic operations.
//!
//! Why: burn-flex 0.21 runs each elementwise operation on one thread, element by element,
//! and its exact GELU calls a scalar `erff` per element; its layout copies walk a strided
//! iterator. In the MiniLM forward pass at batch 32 x 64 these took more of the time than the
//! GEMMs (docs/PERFORMANCE.md has the profile). The kernels here split the work over rayon's
//! threads in contiguous chunks that the compiler vectorises.
//!
//! - [`gelu`]: `x Φ(x)` with an error function accurate to 1.5e-7 (absolute), on every
//!   thread; under autodiff (`Autodiff<Flex>`) with its gradient kernel as well.
//! - [`split_heads`]: `[batch · seq, heads · d_head]` to contiguous `[batch, heads, seq, d_head]`.
//! - [`merge_heads`]: the inverse, `[batch, heads, seq, d_head]` to `[batch, seq, heads · d_head]`.

use burn::prelude::*;

/// `x Φ(x)` (the exact GELU, as BERT's `gelu`): the kernels below on flex, [`exact_gelu`]
/// elsewhere.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = {
        use flex::{Ad, cast, uncast};
        let x = match cast::<burn::backend::Flex, B, D>(x) {
            Ok(t) if t.dtype() == burn::tensor::DType::F32 => {
                return uncast(flex::on_flex(t, flex::gelu));
            }
            Ok(t) => uncast(t),
            Err(x) => x,
        };
        match cast::<Ad, B, D>(x) {
            Ok(t) if t.dtype() == burn::tensor::DType::F32 => return uncast(flex::gelu_ad(t)),
            Ok(t) => uncast(t),
            Err(x) => x,
        }
    };
    exact_gelu(x)
}

/// `x Φ(x)` from Burn's `erf`: exact, and so is its gradient under autodiff (Burn's own
/// `gelu` operation differentiates the tanh approximation instead).
pub fn exact_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() * ((x / std::f64::consts::SQRT_2).erf() + 1.0) * 0.5
}

/// `x: [batch · seq, heads · d_head]` as `[batch, heads, seq, d_head]` (contiguous on flex,
/// a strided view elsewhere).
pub fn split_heads<B: Backend>(x: Tensor<B, 2>, batch: usize, heads: usize) -> Tensor<B, 4> {
    let [n, w] = x.dims();
    let (seq, d_head) = (n / batch.max(1), w / heads.max(1));
    #[cfg(feature = "flex")]
    let x = {
        use flex::{Ad, cast, uncast};
        let x = match cast::<burn::backend::Flex, B, 2>(x) {
            Ok(t) if t.dtype() == burn::tensor::DType::F32 => {
                return uncast(flex::on_flex(t, |t| flex::split_heads(t, batch, heads)));
            }
            Ok(t) => uncast(t),
            Err(x) => x,
        };
        match cast::<Ad, B, 2>(x) {
            Ok(t) if t.dtype() == burn::tensor::DType::F32 => {
                return uncast(flex::split_heads_ad(t, batch, heads));
            }
            Ok(t) => uncast(t),
            Err(x) => x,
        }
    };
    x.reshape([batch, seq, heads, d_head]).swap_dims(1, 2)
}

/// `x: [batch, heads, seq, d_head]` as `[batch, seq, heads · d_head]`.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, s, dh] = x.dims();
    #[cfg(feature = "flex")]
    let x = {
        use flex::{Ad, cast, uncast};
        let x = match cast::<burn::backend::Flex, B, 4>(x) {
            Ok(t) if t.dtype() == burn::tensor::DType::F32 => {
                return uncast(flex::on_flex(t, |t| {
                    flex::merge_heads(t, vec![b, s, h * dh])
                }));
            }
            Ok(t) => uncast(t),
            Err(x) => x,
        };
        match cast::<Ad, B, 4>(x) {
            Ok(t) if t.dtype() == burn::tensor::DType::F32 => {
                return uncast(flex::merge_heads_ad(t));
            }
            Ok(t) => uncast(t),
            Err(x) => x,
        }
    };
    x.swap_dims(1, 2).reshape([b, s, h * dh])
}

/// The error function, `|error| < 1.5e-7` (Abramowitz and Stegun 7.1.26), written so that
/// a loop over a slice vectorises (no branches, no library calls).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// `e^x` for `x <= 0` (as [`erf`] needs it), relative error below 2e-7; 0 below -87.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Round to nearest by the 1.5 · 2^23 trick (no `round` call, which would not vectorise
    // on the baseline x86-64 target).
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let k = (x * LOG2E + SHIFTER) - SHIFTER;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    // e^r on |r| <= ln2 / 2: Taylor to degree 6 (remainder below 1.2e-7 relative).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((k as i32 + 127) << 23) as u32);
    p * scale
}

#[cfg(feature = "flex")]
mod flex {
    use std::any::Any;

    use burn::backend::Autodiff;
    use burn::backend::Flex;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
    use burn::backend::flex::FlexTensor;
    use burn::prelude::*;
    use burn::tensor::TensorPrimitive;
    use rayon::prelude::*;

    /// Training's backend: flex under autodiff (no checkpointing, Burn's default).
    pub type Ad = Autodiff<Flex>;

    /// Elements per parallel task: large enough to amortise scheduling.
    const CHUNK: usize = 1 << 14;

    /// `x` as a tensor of backend `T`, or back unchanged when `B` is another backend.
    pub fn cast<T: Backend, B: Backend, const D: usize>(
        x: Tensor<B, D>,
    ) -> Result<Tensor<T, D>, Tensor<B, D>> {
        let boxed: Box<dyn Any> = Box::new(x);
        match boxed.downcast::<Tensor<T, D>>() {
            Ok(t) => Ok(*t),
            Err(b) => Err(*b
                .downcast::<Tensor<B, D>>()
                .expect("the tensor boxed above")),
        }
    }

    /// The inverse of [`cast`] (only called when `B` is `T`).
    pub fn uncast<T: Backend, B: Backend, const D: usize>(x: Tensor<T, D>) -> Tensor<B, D> {
        let boxed: Box<dyn Any> = Box::new(x);
        *boxed
            .downcast::<Tensor<B, D>>()
            .expect("uncast is called only when B is T")
    }

    /// The values of `t` in row-major order (moved out when `t` owns a contiguous buffer).
    fn values(t: FlexTensor) -> Vec<f32> {
        match t.into_data().into_vec::<f32>() {
            Ok(v) => v,
            Err(e) => panic!("flex kernels take f32 tensors: {e:?}"),
        }
    }

    fn make(v: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(v, shape))
    }

    fn dims(t: &FlexTensor) -> Vec<usize> {
        t.layout().shape().to_vec()
    }

    fn float<const D: usize>(t: FlexTensor) -> Tensor<Flex, D> {
        Tensor::from_primitive(TensorPrimitive::Float(t))
    }

    /// `x Φ(x)`, elementwise, on every thread.
    #[inline]
    pub fn gelu(t: FlexTensor) -> FlexTensor {
        let shape = dims(&t);
        let mut v = values(t);
        v.par_chunks_mut(CHUNK).for_each(|c| {
            for x in c {
                *x = 0.5 * *x * (1.0 + super::erf(*x * std::f32::consts::FRAC_1_SQRT_2));
            }
        });
        make(v, shape)
    }

    /// `grad · (Φ(x) + x φ(x))`.
    #[inline]
    fn gelu_grad(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let shape = dims(&x);
        let x = values(x);
        let mut g = values(grad);
        let inv_sqrt_2pi = 1.0 / (2.0 * std::f32::consts::PI).sqrt();
        g.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(g, x)| {
                for (g, &x) in g.iter_mut().zip(x) {
                    let cdf = 0.5 * (1.0 + super::erf(x * std::f32::consts::FRAC_1_SQRT_2));
                    let pdf = inv_sqrt_2pi * super::exp(-0.5 * x * x);
                    *g *= cdf + x * pdf;
                }
            });
        make(g, shape)
    }

    /// `[batch · seq, heads · d_head]` to contiguous `[batch, heads, seq, d_head]`.
    // `#[inline]`: compiled (and optimised) in the crate that runs the model, as the generic
    // kernels are (our crates build at opt-level 1 in the dev profile).
    #[inline]
    pub fn split_heads(t: FlexTensor, batch: usize, heads: usize) -> FlexTensor {
        let [n, w] = dims(&t)[..] else {
            panic!("split_heads takes a matrix")
        };
        let (seq, dh) = (n / batch, w / heads);
        let v = values(t);
        let mut out = vec![0.0f32; n * w];
        // One task per (batch, head): seq rows of d_head contiguous values.
        out.par_chunks_mut((seq * dh).max(1))
            .enumerate()
            .for_each(|(bh, dst)| {
                let (b, h) = (bh / heads, bh % heads);
                for s in 0..seq {
                    let src = (b * seq + s) * w + h * dh;
                    dst[s * dh..(s + 1) * dh].copy_from_slice(&v[src..src + dh]);
                }
            });
        make(out, vec![batch, heads, seq, dh])
    }

    /// `[batch, heads, seq, d_head]` to `[batch · seq, heads · d_head]` (as `out`'s shape).
    #[inline]
    pub fn merge_heads(t: FlexTensor, out_shape: Vec<usize>) -> FlexTensor {
        let [b, h, s, dh] = dims(&t)[..] else {
            panic!("merge_heads takes a 4-D tensor")
        };
        let v = values(t);
        let w = h * dh;
        let mut out = vec![0.0f32; b * s * w];
        // One task per (batch, position): a row of heads · d_head values.
        out.par_chunks_mut(w.max(1))
            .enumerate()
            .for_each(|(bs, dst)| {
                let (bi, si) = (bs / s, bs % s);
                for hi in 0..h {
                    let src = ((bi * h + hi) * s + si) * dh;
                    dst[hi * dh..(hi + 1) * dh].copy_from_slice(&v[src..src + dh]);
                }
            });
        make(out, out_shape)
    }

    pub fn on_flex<const D: usize, const E: usize>(
        x: Tensor<Flex, D>,
        f: impl FnOnce(FlexTensor) -> FlexTensor,
    ) -> Tensor<Flex, E> {
        float(f(x.into_primitive().tensor()))
    }

    /// GELU under autodiff: the forward and backward kernels above.
    #[inline]
    pub fn gelu_ad<const D: usize>(x: Tensor<Ad, D>) -> Tensor<Ad, D> {
        #[derive(Debug)]
        struct GeluBackward;
        impl Backward<Flex, 1> for GeluBackward {
            type State = FlexTensor;
            fn backward(
                self,
                ops: Ops<FlexTensor, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let x = ops.state;
                unary::<Flex, _>(ops.parents, ops.node, grads, |g| gelu_grad(x, g));
            }
        }
        let t = x.into_primitive().tensor();
        let out = match GeluBackward
            .prepare::<NoCheckpointing>([t.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(t.primitive.clone(), gelu(t.primitive)),
            OpsKind::UnTracked(prep) => prep.finish(gelu(t.primitive)),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    /// `split_heads` under autodiff (its gradient is `merge_heads`).
    #[inline]
    pub fn split_heads_ad(x: Tensor<Ad, 2>, batch: usize, heads: usize) -> Tensor<Ad, 4> {
        #[derive(Debug)]
        struct SplitBackward;
        impl Backward<Flex, 1> for SplitBackward {
            type State = Vec<usize>;
            fn backward(
                self,
                ops: Ops<Vec<usize>, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let shape = ops.state;
                unary::<Flex, _>(ops.parents, ops.node, grads, |g| merge_heads(g, shape));
            }
        }
        let t = x.into_primitive().tensor();
        let shape = dims(&t.primitive);
        let out = match SplitBackward
            .prepare::<NoCheckpointing>([t.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(shape, split_heads(t.primitive, batch, heads)),
            OpsKind::UnTracked(prep) => prep.finish(split_heads(t.primitive, batch, heads)),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    /// `merge_heads` under autodiff (its gradient is `split_heads`).
    #[inline]
    pub fn merge_heads_ad(x: Tensor<Ad, 4>) -> Tensor<Ad, 3> {
        #[derive(Debug)]
        struct MergeBackward;
        impl Backward<Flex, 1> for MergeBackward {
            type State = (usize, usize);
            fn backward(
                self,
                ops: Ops<(usize, usize), 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (batch, heads) = ops.state;
                unary::<Flex, _>(ops.parents, ops.node, grads, |g| {
                    let [b, s, w] = dims(&g)[..] else {
                        panic!("the gradient of merge_heads is 3-D")
                    };
                    let g = make(values(g), vec![b * s, w]);
                    split_heads(g, batch, heads)
                });
            }
        }
        let [b, h, s, dh] = x.dims();
        let t = x.into_primitive().tensor();
        let out = match MergeBackward
            .prepare::<NoCheckpointing>([t.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((b, h), merge_heads(t.primitive, vec![b, s, h * dh]))
            }
            OpsKind::UnTracked(prep) => prep.finish(merge_heads(t.primitive, vec![b, s, h * dh])),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }
}
