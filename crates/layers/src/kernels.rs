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

use std::sync::atomic::{AtomicBool, Ordering};

use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;

static FUSED: AtomicBool = AtomicBool::new(true);

/// Turns the fused kernels ([`linear`], [`add_layer_norm`], [`attention`]) on or off for
/// the whole process (on by default); off, every backend runs Burn's generic operations.
/// For measuring what they bring (`bench --fused-ab`) and for tests.
pub fn set_fused(on: bool) {
    FUSED.store(on, Ordering::Relaxed);
}

/// Whether the fused kernels are on (see [`set_fused`]).
pub fn fused() -> bool {
    FUSED.load(Ordering::Relaxed)
}

/// `x W + b`, then GELU when `gelu` (`x: [n, in]`, `w: [in, out]`, `b: [out]`).
///
/// On flex (with [`fused`] on) one matrix product in `faer` into a buffer that already
/// holds the bias, or the product and then one pass for the bias and GELU; under
/// `Autodiff<Flex>` one operation with its own backward (`dZ = dY · GELU'(Z)`,
/// `dX = dZ Wᵀ`, `dW = Xᵀ dZ`, `db = Σ dZ`). Elsewhere Burn's `matmul`, add and [`gelu`].
pub fn linear<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
    gelu: bool,
) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    let (x, w, b) = match flex::linear_dispatch(x, w, b, gelu) {
        Ok(y) => return y,
        Err(args) => args,
    };
    let y = x.matmul(w);
    let y = match b {
        Some(b) => {
            let o = b.dims()[0];
            y + b.reshape([1, o])
        }
        None => y,
    };
    if gelu { self::gelu(y) } else { y }
}

/// `LayerNorm(x + a)` over the last axis (BERT's post-norm residual), `x, a: [batch, seq,
/// d]`, `weight, bias: [d]`.
///
/// On flex without autodiff (with [`fused`] on) one pass per row on every thread; elsewhere
/// the sum and Burn's layer-norm operation.
pub fn add_layer_norm<B: Backend>(
    x: Tensor<B, 3>,
    a: Tensor<B, 3>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    let (x, a, weight, bias) = match flex::add_layer_norm_dispatch(x, a, weight, bias, eps) {
        Ok(y) => return y,
        Err(args) => args,
    };
    Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
        (x + a).into_primitive().tensor(),
        weight.into_primitive().tensor(),
        Some(bias.into_primitive().tensor()),
        eps,
    )))
}

/// Scaled dot-product attention, `softmax(Q Kᵀ / √d + bias) V`, `q, k, v: [batch, heads,
/// seq, d_head]`, `bias: [batch, seq]` added to every query's score of each key position
/// (0 keep, a large negative value for padding), future positions removed when `causal`.
///
/// On flex without autodiff (with [`fused`] on) one task per (batch, head) on every thread:
/// both products in `faer`, the bias, mask and softmax in one pass per row. Elsewhere Burn's
/// attention operation (flex's runs the heads one after another on one thread).
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 2>>,
    causal: bool,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let (q, k, v, bias) = match flex::attention_dispatch(q, k, v, bias, causal) {
        Ok(y) => return y,
        Err(args) => args,
    };
    let [b, _, s, _] = q.dims();
    let sk = k.dims()[2];
    let bias = bias.map(|m| m.reshape([b, 1, 1, sk]).expand([b, 1, s, sk]));
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: causal,
    };
    burn_attention(q, k, v, None, bias, options)
}

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
    let xc = x.max(-87.0);
    let k = (xc * LOG2E + SHIFTER) - SHIFTER;
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    // e^r on |r| <= ln2 / 2: Taylor to degree 6 (remainder below 1.2e-7 relative).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^k from the bits of `k + SHIFTER`, whose low mantissa bits hold k (an `as i32`
    // conversion would not vectorise on the baseline target either).
    let bits = (k + SHIFTER).to_bits().wrapping_sub(SHIFTER.to_bits());
    let scale = f32::from_bits((bits.wrapping_add(127)) << 23);
    // A select, not a branch: e^x below -87 is 0 (a padding score of f32::MIN must give a
    // probability of exactly 0, as the reference's softmax does).
    if x < -87.0 { 0.0 } else { p * scale }
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
    use faer::linalg::matmul::matmul;
    use faer::{Accum, MatMut, MatRef, Par};
    use pulp::{Arch, Simd, WithSimd};
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
        v.par_chunks_mut(CHUNK)
            .for_each(|c| Arch::new().dispatch(GeluBias { rows: c, bias: &[] }));
        make(v, shape)
    }

    /// `grad · (Φ(x) + x φ(x))`.
    #[inline]
    fn gelu_grad(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let shape = dims(&x);
        let x = values(x);
        let mut g = values(grad);
        g.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(g, x)| Arch::new().dispatch(GeluGrad { g, x }));
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

    /// `t`'s values as a row-major slice, copied only when `t` is a strided view.
    fn contiguous(t: FlexTensor) -> FlexTensor {
        if t.layout().contiguous_offsets().is_some() {
            t
        } else {
            t.to_contiguous()
        }
    }

    fn slice(t: &FlexTensor) -> &[f32] {
        t.as_slice::<f32>()
            .expect("flex kernels take contiguous f32 tensors (see `contiguous`)")
    }

    fn prim<const D: usize>(x: Tensor<Flex, D>) -> FlexTensor {
        x.into_primitive().tensor()
    }

    /// The tensor `cast` to `T` when it is known to be of backend `T` (the other arguments of
    /// an operation whose first argument was).
    fn same<T: Backend, B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<T, D> {
        cast::<T, B, D>(x).unwrap_or_else(|_| unreachable!("every argument has one backend"))
    }

    fn is_f32<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
        x.dtype() == burn::tensor::DType::F32
    }

    /// A product of `flops` multiply-adds runs on every thread when it is large enough to
    /// pay for the threads' synchronisation.
    fn par(flops: usize) -> Par {
        if flops < 1 << 20 || rayon::current_num_threads() < 2 {
            Par::Seq
        } else {
            Par::rayon(0)
        }
    }

    type LinearArgs<B> = (Tensor<B, 2>, Tensor<B, 2>, Option<Tensor<B, 1>>);

    /// [`super::linear`] on flex and `Autodiff<Flex>`, or the arguments back.
    pub fn linear_dispatch<B: Backend>(
        x: Tensor<B, 2>,
        w: Tensor<B, 2>,
        b: Option<Tensor<B, 1>>,
        gelu: bool,
    ) -> Result<Tensor<B, 2>, LinearArgs<B>> {
        let [n, k] = x.dims();
        let m = w.dims()[1];
        let f32s = is_f32(&x) && is_f32(&w) && b.as_ref().is_none_or(is_f32);
        if !super::fused() || !f32s || n * k * m == 0 {
            return Err((x, w, b));
        }
        let x = match cast::<Flex, B, 2>(x) {
            Ok(x) => {
                let y = linear(
                    prim(x),
                    prim(same::<Flex, B, 2>(w)),
                    b.map(|b| prim(same::<Flex, B, 1>(b))),
                    gelu,
                );
                return Ok(uncast(float(y)));
            }
            Err(x) => x,
        };
        match (cast::<Ad, B, 2>(x), b) {
            (Ok(x), Some(b)) => Ok(uncast(linear_ad(
                x,
                same::<Ad, B, 2>(w),
                same::<Ad, B, 1>(b),
                gelu,
            ))),
            (Ok(x), b) => Err((uncast(x), w, b)),
            (Err(x), b) => Err((x, w, b)),
        }
    }

    /// `x W + b`, then GELU when `gelu`.
    #[inline]
    pub fn linear(x: FlexTensor, w: FlexTensor, b: Option<FlexTensor>, gelu: bool) -> FlexTensor {
        let (x, w) = (contiguous(x), contiguous(w));
        let ([n, k], [_, m]) = (dims2(&x), dims2(&w));
        let b = b.map(contiguous);
        let bias = b.as_ref().map(slice);
        let mut out = match (bias, gelu) {
            // The product adds to the bias rows.
            (Some(bias), false) => bias.repeat(n),
            _ => vec![0.0f32; n * m],
        };
        let accum = if bias.is_some() && !gelu {
            Accum::Add
        } else {
            Accum::Replace
        };
        matmul(
            MatMut::from_row_major_slice_mut(&mut out, n, m),
            accum,
            MatRef::from_row_major_slice(slice(&x), n, k),
            MatRef::from_row_major_slice(slice(&w), k, m),
            1.0f32,
            par(n * k * m),
        );
        if gelu {
            let zero = vec![0.0f32; m];
            let bias = bias.unwrap_or(&zero);
            let rows = (CHUNK / m).max(1);
            out.par_chunks_mut(rows * m)
                .for_each(|rows| Arch::new().dispatch(GeluBias { rows, bias }));
        }
        make(out, vec![n, m])
    }

    fn dims2(t: &FlexTensor) -> [usize; 2] {
        match dims(t)[..] {
            [a, b] => [a, b],
            _ => panic!("a matrix was expected"),
        }
    }

    /// `a · b` (`a: [n, k]`, `b: [k, m]`, either given transposed).
    fn product(a: &FlexTensor, ta: bool, b: &FlexTensor, tb: bool) -> FlexTensor {
        fn view(t: &FlexTensor, transposed: bool) -> MatRef<'_, f32> {
            let [r, c] = dims2(t);
            let v = MatRef::from_row_major_slice(slice(t), r, c);
            if transposed { v.transpose() } else { v }
        }
        let (a, b) = (view(a, ta), view(b, tb));
        let (n, k, m) = (a.nrows(), a.ncols(), b.ncols());
        let mut out = vec![0.0f32; n * m];
        matmul(
            MatMut::from_row_major_slice_mut(&mut out, n, m),
            Accum::Replace,
            a,
            b,
            1.0f32,
            par(n * k * m),
        );
        make(out, vec![n, m])
    }

    /// The sum of the rows of `g: [n, m]`.
    fn column_sums(g: &FlexTensor) -> FlexTensor {
        let [_, m] = dims2(g);
        let mut out = vec![0.0f32; m];
        Arch::new().dispatch(ColumnSums {
            out: &mut out,
            g: slice(g),
        });
        make(out, vec![m])
    }

    /// [`linear`] under autodiff.
    #[inline]
    pub fn linear_ad(
        x: Tensor<Ad, 2>,
        w: Tensor<Ad, 2>,
        b: Tensor<Ad, 1>,
        gelu: bool,
    ) -> Tensor<Ad, 2> {
        /// The input, the weight, and the pre-activation when GELU follows.
        type LinearState = (FlexTensor, FlexTensor, Option<FlexTensor>);
        #[derive(Debug)]
        struct LinearBackward;
        impl Backward<Flex, 3> for LinearBackward {
            type State = LinearState;
            fn backward(
                self,
                ops: Ops<LinearState, 3>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [px, pw, pb] = ops.parents;
                let grad = grads.consume::<Flex>(&ops.node);
                let (x, w, z) = ops.state;
                let dz = contiguous(match z {
                    Some(z) => gelu_grad(z, grad),
                    None => grad,
                });
                if let Some(node) = pb {
                    grads.register::<Flex>(node.id, column_sums(&dz));
                }
                if let Some(node) = pw {
                    grads.register::<Flex>(node.id, product(&x, true, &dz, false));
                }
                if let Some(node) = px {
                    grads.register::<Flex>(node.id, product(&dz, false, &w, true));
                }
            }
        }
        let (x, w, b) = (
            x.into_primitive().tensor(),
            w.into_primitive().tensor(),
            b.into_primitive().tensor(),
        );
        let nodes = [x.node.clone(), w.node.clone(), b.node.clone()];
        let out = match LinearBackward
            .prepare::<NoCheckpointing>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (contiguous(x.primitive), contiguous(w.primitive));
                let z = linear(xp.clone(), wp.clone(), Some(b.primitive), false);
                if gelu {
                    let y = self::gelu(make(slice(&z).to_vec(), dims(&z)));
                    prep.finish((xp, wp, Some(z)), y)
                } else {
                    prep.finish((xp, wp, None), z)
                }
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(linear(x.primitive, w.primitive, Some(b.primitive), gelu))
            }
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    type NormArgs<B> = (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 1>);

    /// [`super::add_layer_norm`] on flex (contiguous `x` and `a` of one shape), or the
    /// arguments back.
    pub fn add_layer_norm_dispatch<B: Backend>(
        x: Tensor<B, 3>,
        a: Tensor<B, 3>,
        weight: Tensor<B, 1>,
        bias: Tensor<B, 1>,
        eps: f64,
    ) -> Result<Tensor<B, 3>, NormArgs<B>> {
        let f32s = is_f32(&x) && is_f32(&a) && is_f32(&weight) && is_f32(&bias);
        if !super::fused() || !f32s || x.dims() != a.dims() || x.dims()[2] == 0 {
            return Err((x, a, weight, bias));
        }
        let x = match cast::<Flex, B, 3>(x) {
            Ok(x) => x,
            Err(x) => return Err((x, a, weight, bias)),
        };
        let a = same::<Flex, B, 3>(a);
        let (xp, ap) = (prim(x), prim(a));
        if xp.layout().contiguous_offsets().is_none() || ap.layout().contiguous_offsets().is_none()
        {
            return Err((uncast(float(xp)), uncast(float(ap)), weight, bias));
        }
        let (w, b) = (
            contiguous(prim(same::<Flex, B, 1>(weight))),
            contiguous(prim(same::<Flex, B, 1>(bias))),
        );
        Ok(uncast(float(add_layer_norm(&xp, &ap, &w, &b, eps as f32))))
    }

    /// `LayerNorm(x + a)` per row of the last axis.
    #[inline]
    fn add_layer_norm(
        x: &FlexTensor,
        a: &FlexTensor,
        w: &FlexTensor,
        b: &FlexTensor,
        eps: f32,
    ) -> FlexTensor {
        let shape = dims(x);
        let d = shape[shape.len() - 1];
        let (xs, as_, ws, bs) = (slice(x), slice(a), slice(w), slice(b));
        let mut out = vec![0.0f32; xs.len()];
        let rows = (CHUNK / d).max(1);
        out.par_chunks_mut(rows * d)
            .zip(xs.par_chunks(rows * d).zip(as_.par_chunks(rows * d)))
            .for_each(|(out, (x, a))| {
                Arch::new().dispatch(AddNorm {
                    out,
                    x,
                    a,
                    w: ws,
                    b: bs,
                    eps,
                })
            });
        make(out, shape)
    }

    type AttentionArgs<B> = (
        Tensor<B, 4>,
        Tensor<B, 4>,
        Tensor<B, 4>,
        Option<Tensor<B, 2>>,
    );

    /// [`super::attention`] on flex without autodiff, or the arguments back.
    pub fn attention_dispatch<B: Backend>(
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: Option<Tensor<B, 2>>,
        causal: bool,
    ) -> Result<Tensor<B, 4>, AttentionArgs<B>> {
        let f32s = is_f32(&q) && is_f32(&k) && is_f32(&v) && bias.as_ref().is_none_or(is_f32);
        let [_, _, s, dh] = q.dims();
        let sk = k.dims()[2];
        if !super::fused() || !f32s || s * sk * dh == 0 || (causal && s != sk) {
            return Err((q, k, v, bias));
        }
        let q = match cast::<Flex, B, 4>(q) {
            Ok(q) => q,
            Err(q) => return Err((q, k, v, bias)),
        };
        let (k, v) = (same::<Flex, B, 4>(k), same::<Flex, B, 4>(v));
        let bias = bias.map(|m| contiguous(prim(same::<Flex, B, 2>(m))));
        let out = attention(
            &contiguous(prim(q)),
            &contiguous(prim(k)),
            &contiguous(prim(v)),
            bias.as_ref(),
            causal,
        );
        Ok(uncast(float(out)))
    }

    /// One task per (batch, head): `S = Q Kᵀ / √d` in faer, bias, causal mask and softmax
    /// per row, then `S V` into the output.
    #[inline]
    fn attention(
        q: &FlexTensor,
        k: &FlexTensor,
        v: &FlexTensor,
        bias: Option<&FlexTensor>,
        causal: bool,
    ) -> FlexTensor {
        let [b, h, s, dh] = dims(q)[..] else {
            panic!("attention takes [batch, heads, seq, d_head]")
        };
        let sk = dims(k)[2];
        let dv = dims(v)[3];
        let (qs, ks, vs) = (slice(q), slice(k), slice(v));
        let bias = bias.map(slice);
        let scale = 1.0 / (dh as f32).sqrt();
        let mut out = vec![0.0f32; b * h * s * dv];
        out.par_chunks_mut(s * dv).enumerate().for_each(|(bh, o)| {
            let bi = bh / h;
            let q = MatRef::from_row_major_slice(&qs[bh * s * dh..(bh + 1) * s * dh], s, dh);
            let k = MatRef::from_row_major_slice(&ks[bh * sk * dh..(bh + 1) * sk * dh], sk, dh);
            let v = MatRef::from_row_major_slice(&vs[bh * sk * dv..(bh + 1) * sk * dv], sk, dv);
            let mut p = vec![0.0f32; s * sk];
            matmul(
                MatMut::from_row_major_slice_mut(&mut p, s, sk),
                Accum::Replace,
                q,
                k.transpose(),
                scale,
                Par::Seq,
            );
            let bias = bias.map(|m| &m[bi * sk..(bi + 1) * sk]);
            Arch::new().dispatch(Softmax {
                p: &mut p,
                sk,
                bias,
                causal,
            });
            matmul(
                MatMut::from_row_major_slice_mut(o, s, dv),
                Accum::Replace,
                MatRef::from_row_major_slice(&p, s, sk),
                v,
                1.0f32,
                Par::Seq,
            );
        });
        make(out, vec![b, h, s, dv])
    }

    // The loops below run through `pulp`'s dispatch: each `with_simd` body is compiled for
    // the CPU's best instruction set (AVX-512, AVX2 + FMA, or the baseline) and chosen at run
    // time. A closure given to `dispatch` is compiled separately, for the baseline, so each
    // loop is a `WithSimd` type whose body is inlined (and the helpers it calls with it).
    // Sums and maxima go through 16 lanes so that the compiler may vectorise them (a float
    // sum in one accumulator may not be reordered).

    const LANES: usize = 16;

    #[inline(always)]
    fn lane_sum(v: &[f32]) -> f32 {
        let mut acc = [0.0f32; LANES];
        let mut chunks = v.chunks_exact(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                acc[i] += c[i];
            }
        }
        let tail: f32 = chunks.remainder().iter().sum();
        acc.iter().sum::<f32>() + tail
    }

    #[inline(always)]
    fn lane_max(v: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let mut chunks = v.chunks_exact(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                acc[i] = acc[i].max(c[i]);
            }
        }
        let m = chunks
            .remainder()
            .iter()
            .fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        acc.iter().fold(m, |a, &x| a.max(x))
    }

    #[inline(always)]
    fn gelu1(x: f32) -> f32 {
        0.5 * x * (1.0 + super::erf(x * std::f32::consts::FRAC_1_SQRT_2))
    }

    /// `z = GELU(z + bias)` on rows of `bias.len()` values (no bias when it is empty).
    struct GeluBias<'a> {
        rows: &'a mut [f32],
        bias: &'a [f32],
    }

    impl WithSimd for GeluBias<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, _: S) {
            if self.bias.is_empty() {
                for z in self.rows.iter_mut() {
                    *z = gelu1(*z);
                }
                return;
            }
            for row in self.rows.chunks_exact_mut(self.bias.len()) {
                for (z, &b) in row.iter_mut().zip(self.bias) {
                    *z = gelu1(*z + b);
                }
            }
        }
    }

    /// `g *= Φ(x) + x φ(x)`.
    struct GeluGrad<'a> {
        g: &'a mut [f32],
        x: &'a [f32],
    }

    impl WithSimd for GeluGrad<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, _: S) {
            let inv_sqrt_2pi = 1.0 / (2.0 * std::f32::consts::PI).sqrt();
            for (g, &x) in self.g.iter_mut().zip(self.x) {
                let cdf = 0.5 * (1.0 + super::erf(x * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = inv_sqrt_2pi * super::exp(-0.5 * x * x);
                *g *= cdf + x * pdf;
            }
        }
    }

    /// `out += Σ rows of g`.
    struct ColumnSums<'a> {
        out: &'a mut [f32],
        g: &'a [f32],
    }

    impl WithSimd for ColumnSums<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, _: S) {
            for row in self.g.chunks_exact(self.out.len()) {
                for (o, &v) in self.out.iter_mut().zip(row) {
                    *o += v;
                }
            }
        }
    }

    /// `out = LayerNorm(x + a) · w + b` per row of `w.len()` values.
    struct AddNorm<'a> {
        out: &'a mut [f32],
        x: &'a [f32],
        a: &'a [f32],
        w: &'a [f32],
        b: &'a [f32],
        eps: f32,
    }

    impl WithSimd for AddNorm<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, _: S) {
            let d = self.w.len();
            let rows = self
                .out
                .chunks_exact_mut(d)
                .zip(self.x.chunks_exact(d).zip(self.a.chunks_exact(d)));
            for (o, (x, a)) in rows {
                for ((o, &x), &a) in o.iter_mut().zip(x).zip(a) {
                    *o = x + a;
                }
                let mean = lane_sum(o) / d as f32;
                for o in o.iter_mut() {
                    *o -= mean;
                }
                let mut acc = [0.0f32; LANES];
                let mut chunks = o.chunks_exact(LANES);
                for c in &mut chunks {
                    for i in 0..LANES {
                        acc[i] += c[i] * c[i];
                    }
                }
                let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
                let var = (acc.iter().sum::<f32>() + tail) / d as f32;
                let inv = 1.0 / (var + self.eps).sqrt();
                for ((o, &w), &b) in o.iter_mut().zip(self.w).zip(self.b) {
                    *o = *o * inv * w + b;
                }
            }
        }
    }

    /// Row-wise softmax of the scores `p` (rows of `sk`), after adding `bias` to every row;
    /// with `causal`, row `i` keeps positions `0..=i` and the rest get 0.
    struct Softmax<'a> {
        p: &'a mut [f32],
        sk: usize,
        bias: Option<&'a [f32]>,
        causal: bool,
    }

    impl WithSimd for Softmax<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, _: S) {
            for (i, row) in self.p.chunks_exact_mut(self.sk).enumerate() {
                let n = if self.causal { i + 1 } else { self.sk };
                let (live, future) = row.split_at_mut(n);
                if let Some(m) = self.bias {
                    for (x, &m) in live.iter_mut().zip(m) {
                        *x += m;
                    }
                }
                let max = lane_max(live);
                for x in live.iter_mut() {
                    *x = super::exp(*x - max);
                }
                let inv = 1.0 / lane_sum(live);
                for x in live.iter_mut() {
                    *x *= inv;
                }
                future.fill(0.0);
            }
        }
    }
}
