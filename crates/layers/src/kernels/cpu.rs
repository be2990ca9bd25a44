//! The kernels on host memory, for the CPU backends (flex and ndarray, each behind its
//! cargo feature): every kernel reads its inputs as row-major `f32` slices of the backend's
//! own buffers (borrowed, or moved out when the tensor owns them) and builds its output from
//! a `Vec`, so one implementation serves both backends, with and without autodiff.

use std::any::Any;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

/// A backend's float tensor.
type T<H> = burn::tensor::ops::FloatTensor<H>;

/// Elements per parallel task: large enough to amortise scheduling.
const CHUNK: usize = 1 << 14;

/// A CPU backend whose `f32` tensors the kernels read as host slices and build from host
/// vectors, without copies where the tensor's buffer allows.
pub trait Host: Backend {
    /// The shape of `t`.
    fn dims(t: &T<Self>) -> Vec<usize>;
    /// `t` itself when its values lie in row-major order in its buffer, else a copy that
    /// does.
    fn contiguous(t: T<Self>) -> T<Self>;
    /// The values of a [`Host::contiguous`] `f32` tensor, borrowed.
    fn slice(t: &T<Self>) -> &[f32];
    /// The values of `t` in row-major order (moved out when `t` owns exactly them).
    fn values(t: T<Self>) -> Vec<f32>;
    /// A tensor of these values and shape.
    fn make(v: Vec<f32>, shape: Vec<usize>) -> T<Self>;
    /// Whether `t` is one row repeated over its leading axes (an `expand` of a vector: every
    /// leading axis of stride 0 or of length 1, the last of stride 1), so that the row alone
    /// holds its values.
    fn is_row_broadcast(t: &T<Self>) -> bool;

    /// The shape of `t` as a matrix: its leading axes as the rows, its last as the columns.
    fn dims2(t: &T<Self>) -> [usize; 2] {
        match Self::dims(t)[..] {
            [] => [1, 1],
            [ref rows @ .., cols] => [rows.iter().product(), cols],
        }
    }
}

#[cfg(feature = "flex")]
impl Host for burn::backend::Flex {
    fn dims(t: &T<Self>) -> Vec<usize> {
        t.layout().shape().to_vec()
    }
    fn contiguous(t: T<Self>) -> T<Self> {
        if t.layout().contiguous_offsets().is_some() {
            t
        } else {
            t.to_contiguous()
        }
    }
    fn slice(t: &T<Self>) -> &[f32] {
        t.as_slice::<f32>()
            .expect("the kernels take contiguous f32 tensors (see `Host::contiguous`)")
    }
    fn values(t: T<Self>) -> Vec<f32> {
        match t.into_data().into_vec::<f32>() {
            Ok(v) => v,
            Err(e) => panic!("the kernels take f32 tensors: {e:?}"),
        }
    }
    fn make(v: Vec<f32>, shape: Vec<usize>) -> T<Self> {
        burn::backend::flex::FlexTensor::from_data(TensorData::new(v, shape))
    }
    fn is_row_broadcast(t: &T<Self>) -> bool {
        row_strides(t.layout().shape(), t.layout().strides())
    }
}

#[cfg(feature = "ndarray")]
impl Host for burn::backend::NdArray {
    fn dims(t: &T<Self>) -> Vec<usize> {
        use burn::tensor::TensorMetadata;
        t.shape().to_vec()
    }
    fn contiguous(t: T<Self>) -> T<Self> {
        let standard = match &t {
            burn::backend::ndarray::NdArrayTensor::F32(s) => s.view().is_standard_layout(),
            _ => true,
        };
        if standard {
            t
        } else {
            let shape = Self::dims(&t);
            Self::make(Self::values(t), shape)
        }
    }
    fn slice(t: &T<Self>) -> &[f32] {
        match t {
            burn::backend::ndarray::NdArrayTensor::F32(s) => s
                .view()
                .to_slice()
                .expect("the kernels take contiguous f32 tensors (see `Host::contiguous`)"),
            _ => panic!("the kernels take f32 tensors"),
        }
    }
    fn values(t: T<Self>) -> Vec<f32> {
        let data = burn::tensor::read_sync(
            <Self as burn::tensor::ops::FloatTensorOps<Self>>::float_into_data(t),
        );
        match data.map(|d| d.into_vec::<f32>()) {
            Ok(Ok(v)) => v,
            other => panic!("the kernels take f32 tensors: {other:?}"),
        }
    }
    fn make(v: Vec<f32>, shape: Vec<usize>) -> T<Self> {
        burn::backend::ndarray::NdArrayTensor::from_data(TensorData::new(v, shape))
    }
    fn is_row_broadcast(t: &T<Self>) -> bool {
        match t {
            burn::backend::ndarray::NdArrayTensor::F32(s) => {
                let v = s.view();
                row_strides(v.shape(), v.strides())
            }
            _ => false,
        }
    }
}

/// Whether `shape` and `strides` lay out a row repeated over the leading axes: at least
/// one leading axis, each of stride 0 or of length 1 (a length-1 axis's stride is
/// arbitrary: `expand` keeps it, so `[1, s, d]` expanded from `[1, 1, d]` has strides
/// `[d, 0, 1]`), the last of stride 1.
#[cfg(any(feature = "flex", feature = "ndarray"))]
fn row_strides(shape: &[usize], strides: &[isize]) -> bool {
    match (shape, strides) {
        ([lead_len @ .., _], [lead @ .., 1]) => {
            !lead.is_empty() && lead.iter().zip(lead_len).all(|(&s, &n)| s == 0 || n == 1)
        }
        _ => false,
    }
}

/// Whether `B` is a CPU backend compiled in here, or one under autodiff.
pub fn is_host<B: Backend>() -> bool {
    fn is<B: Backend, H: Host>() -> bool {
        use std::any::TypeId;
        let b = TypeId::of::<B>();
        b == TypeId::of::<H>() || b == TypeId::of::<Autodiff<H>>()
    }
    let hosts = [
        #[cfg(feature = "flex")]
        is::<B, burn::backend::Flex>(),
        #[cfg(feature = "ndarray")]
        is::<B, burn::backend::NdArray>(),
    ];
    hosts.contains(&true)
}

/// `x` as a tensor of backend `U`, or back unchanged when `B` is another backend.
pub fn cast<U: Backend, B: Backend, const D: usize>(
    x: Tensor<B, D>,
) -> Result<Tensor<U, D>, Tensor<B, D>> {
    let boxed: Box<dyn Any> = Box::new(x);
    match boxed.downcast::<Tensor<U, D>>() {
        Ok(t) => Ok(*t),
        Err(b) => Err(*b
            .downcast::<Tensor<B, D>>()
            .expect("the tensor boxed above")),
    }
}

/// The inverse of [`cast`] (only called when `B` is `U`).
pub fn uncast<U: Backend, B: Backend, const D: usize>(x: Tensor<U, D>) -> Tensor<B, D> {
    let boxed: Box<dyn Any> = Box::new(x);
    *boxed
        .downcast::<Tensor<B, D>>()
        .expect("uncast is called only when B is U")
}

fn float<H: Backend, const D: usize>(t: T<H>) -> Tensor<H, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// Which GELU: BERT's exact `x Φ(x)`, or GPT-2's tanh approximation (`gelu_new`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gelu {
    /// `x Φ(x)`.
    Exact,
    /// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
    Tanh,
}

/// The GELU `kind` of every element, on every thread.
#[inline]
pub fn gelu<H: Host>(t: T<H>, kind: Gelu) -> T<H> {
    let shape = H::dims(&t);
    let mut v = H::values(t);
    v.par_chunks_mut(CHUNK).for_each(|c| match kind {
        Gelu::Exact => Arch::new().dispatch(GeluBias { rows: c, bias: &[] }),
        Gelu::Tanh => Arch::new().dispatch(TanhGelu { x: c }),
    });
    H::make(v, shape)
}

/// `grad · GELU'(x)`.
#[inline]
fn gelu_grad<H: Host>(x: T<H>, grad: T<H>, kind: Gelu) -> T<H> {
    let shape = H::dims(&x);
    let x = H::values(x);
    let mut g = H::values(grad);
    g.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(g, x)| match kind {
            Gelu::Exact => Arch::new().dispatch(GeluGrad { g, x }),
            Gelu::Tanh => Arch::new().dispatch(TanhGeluGrad { g, x }),
        });
    H::make(g, shape)
}

/// `[batch · seq, heads · d_head]` to contiguous `[batch, heads, seq, d_head]`.
// `#[inline]`: compiled (and optimised) in the crate that runs the model, as the generic
// kernels are (our crates build at opt-level 1 in the dev profile).
#[inline]
pub fn split_heads<H: Host>(t: T<H>, batch: usize, heads: usize) -> T<H> {
    let [n, w] = H::dims2(&t);
    let (seq, dh) = (n / batch, w / heads);
    let v = H::values(t);
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
    H::make(out, vec![batch, heads, seq, dh])
}

/// `[batch, heads, seq, d_head]` to `[batch · seq, heads · d_head]` (as `out`'s shape).
#[inline]
pub fn merge_heads<H: Host>(t: T<H>, out_shape: Vec<usize>) -> T<H> {
    let [b, h, s, dh] = H::dims(&t)[..] else {
        panic!("merge_heads takes a 4-D tensor")
    };
    let v = H::values(t);
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
    H::make(out, out_shape)
}

/// GELU under autodiff: the forward and backward kernels above.
#[inline]
pub fn gelu_ad<H: Host, const D: usize>(
    x: Tensor<Autodiff<H>, D>,
    kind: Gelu,
) -> Tensor<Autodiff<H>, D> {
    #[derive(Debug)]
    struct GeluBackward(Gelu);
    impl<H: Host> Backward<H, 1> for GeluBackward {
        type State = T<H>;
        fn backward(self, ops: Ops<T<H>, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let x = ops.state;
            unary::<H, _>(ops.parents, ops.node, grads, |g| {
                gelu_grad::<H>(x, g, self.0)
            });
        }
    }
    let t = x.into_primitive().tensor();
    let out = match <GeluBackward as Backward<H, _>>::prepare::<NoCheckpointing>(
        GeluBackward(kind),
        [t.node.clone()],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(t.primitive.clone(), gelu::<H>(t.primitive, kind)),
        OpsKind::UnTracked(prep) => prep.finish(gelu::<H>(t.primitive, kind)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// `split_heads` under autodiff (its gradient is `merge_heads`).
#[inline]
pub fn split_heads_ad<H: Host, const D: usize>(
    x: Tensor<Autodiff<H>, D>,
    batch: usize,
    heads: usize,
) -> Tensor<Autodiff<H>, 4> {
    #[derive(Debug)]
    struct SplitBackward;
    impl<H: Host> Backward<H, 1> for SplitBackward {
        type State = Vec<usize>;
        fn backward(self, ops: Ops<Vec<usize>, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let shape = ops.state;
            unary::<H, _>(ops.parents, ops.node, grads, |g| merge_heads::<H>(g, shape));
        }
    }
    let t = x.into_primitive().tensor();
    let shape = H::dims(&t.primitive);
    let out = match <SplitBackward as Backward<H, _>>::prepare::<NoCheckpointing>(
        SplitBackward,
        [t.node.clone()],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(shape, split_heads::<H>(t.primitive, batch, heads)),
        OpsKind::UnTracked(prep) => prep.finish(split_heads::<H>(t.primitive, batch, heads)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// `merge_heads` under autodiff (its gradient is `split_heads`).
#[inline]
pub fn merge_heads_ad<H: Host>(x: Tensor<Autodiff<H>, 4>) -> Tensor<Autodiff<H>, 3> {
    #[derive(Debug)]
    struct MergeBackward;
    impl<H: Host> Backward<H, 1> for MergeBackward {
        type State = (usize, usize);
        fn backward(
            self,
            ops: Ops<(usize, usize), 1>,
            grads: &mut Gradients,
            _: &mut Checkpointer,
        ) {
            let (batch, heads) = ops.state;
            unary::<H, _>(ops.parents, ops.node, grads, |g| {
                let [b, s, w] = H::dims(&g)[..] else {
                    panic!("the gradient of merge_heads is 3-D")
                };
                let g = H::make(H::values(g), vec![b * s, w]);
                split_heads::<H>(g, batch, heads)
            });
        }
    }
    let [b, h, s, dh] = x.dims();
    let t = x.into_primitive().tensor();
    let out = match <MergeBackward as Backward<H, _>>::prepare::<NoCheckpointing>(
        MergeBackward,
        [t.node.clone()],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => {
            prep.finish((b, h), merge_heads::<H>(t.primitive, vec![b, s, h * dh]))
        }
        OpsKind::UnTracked(prep) => prep.finish(merge_heads::<H>(t.primitive, vec![b, s, h * dh])),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The tensor `cast` to `U` when it is known to be of backend `T` (the other arguments of
/// an operation whose first argument was).
fn same<U: Backend, B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<U, D> {
    cast::<U, B, D>(x).unwrap_or_else(|_| unreachable!("every argument has one backend"))
}

fn is_f32<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    x.dtype() == burn::tensor::DType::F32
}

/// `dst (+)= alpha · a b` on every thread when the product is large enough to pay for
/// the threads' synchronisation (`2^20` multiply-adds), else on this one.
///
/// Why not faer's own `Par::rayon`: at batch 1 (64 rows) it gained little or lost against
/// one thread (paired on the 2-core machine, 2026-12-04: 64 x 371 x 160 at 105-111 GFLOP/s
/// against 107-112 on one thread, 64 x 384 x 1536 at 97-179). Here the output is cut along
/// its longer side into one block per thread (columns in multiples of 16 floats, rows in
/// multiples of 8), and each block is one single-threaded product: 183-211 GFLOP/s on the
/// same shapes, and the same as faer's split on training's 2048-row products.
fn mm(dst: MatMut<'_, f32>, accum: Accum, a: MatRef<'_, f32>, b: MatRef<'_, f32>, alpha: f32) {
    let threads = rayon::current_num_threads();
    let macs = dst.nrows() * dst.ncols() * a.ncols();
    if macs < 1 << 20 || threads < 2 {
        matmul(dst, accum, a, b, alpha, Par::Seq);
    } else {
        split_mm(dst, accum, a, b, alpha, threads);
    }
}

/// [`mm`] in `parts` blocks: the first on this thread, the rest (recursively) on another.
fn split_mm(
    dst: MatMut<'_, f32>,
    accum: Accum,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    alpha: f32,
    parts: usize,
) {
    let (n, m) = (dst.nrows(), dst.ncols());
    let cols = m >= n;
    let (len, align) = if cols { (m, 16) } else { (n, 8) };
    let first = (len / parts).div_ceil(align) * align;
    if parts < 2 || first >= len {
        matmul(dst, accum, a, b, alpha, Par::Seq);
        return;
    }
    if cols {
        let (d1, d2) = dst.split_at_col_mut(first);
        let (b1, b2) = b.split_at_col(first);
        rayon::join(
            || matmul(d1, accum, a, b1, alpha, Par::Seq),
            || split_mm(d2, accum, a, b2, alpha, parts - 1),
        );
    } else {
        let (d1, d2) = dst.split_at_row_mut(first);
        let (a1, a2) = a.split_at_row(first);
        rayon::join(
            || matmul(d1, accum, a1, b, alpha, Par::Seq),
            || split_mm(d2, accum, a2, b, alpha, parts - 1),
        );
    }
}

/// Runs `$on::<H, B>` on the arguments for each CPU backend `H` compiled in, and returns
/// from the calling function with its result when one takes them; else gives them back.
macro_rules! on_hosts {
    ($on:ident, $args:expr $(, $d:ident)?) => {{
        let args = $args;
        #[cfg(feature = "flex")]
        let args = match $on::<burn::backend::Flex, _ $(, $d)?>(args) {
            Ok(out) => return Ok(out),
            Err(args) => args,
        };
        #[cfg(feature = "ndarray")]
        let args = match $on::<burn::backend::NdArray, _ $(, $d)?>(args) {
            Ok(out) => return Ok(out),
            Err(args) => args,
        };
        args
    }};
}

/// [`super::is_row_broadcast`] on a CPU backend (without autodiff), or the tensor back.
pub fn is_row_broadcast_dispatch<B: Backend, const D: usize>(
    t: Tensor<B, D>,
) -> Result<bool, Tensor<B, D>> {
    Err(on_hosts!(is_row_broadcast_on, t, D))
}

fn is_row_broadcast_on<H: Host, B: Backend, const D: usize>(
    t: Tensor<B, D>,
) -> Result<bool, Tensor<B, D>> {
    cast::<H, B, D>(t).map(|t| H::is_row_broadcast(&prim(t)))
}

/// [`super::expand_row`] on ndarray (without autodiff): the row copied into every row of a
/// new buffer, or the row back elsewhere. ndarray's own `expand` copies too, one element at
/// a time through a broadcast view (`into_owned`).
pub fn expand_row_dispatch<B: Backend>(
    row: Tensor<B, 1>,
    shape: [usize; 3],
) -> Result<Tensor<B, 3>, Tensor<B, 1>> {
    if !super::fused() {
        return Err(row);
    }
    #[cfg(feature = "ndarray")]
    let row = match cast::<burn::backend::NdArray, B, 1>(row) {
        Ok(row) if is_f32(&row) => {
            type H = burn::backend::NdArray;
            let values = H::values(prim(row)).repeat(shape[0] * shape[1]);
            return Ok(uncast(float::<H, 3>(H::make(values, shape.to_vec()))));
        }
        Ok(row) => uncast(row),
        Err(row) => row,
    };
    let _ = shape;
    Err(row)
}

type LinearArgs<B, const D: usize> = (Tensor<B, D>, Tensor<B, 2>, Option<Tensor<B, 1>>, bool);

/// [`super::linear`] on a CPU backend, with or without autodiff, or the arguments back.
pub fn linear_dispatch<B: Backend, const D: usize>(
    args: LinearArgs<B, D>,
) -> Result<Tensor<B, D>, LinearArgs<B, D>> {
    let (x, w, b, _) = &args;
    let (n, k) = (
        x.shape().num_elements() / x.dims()[D - 1].max(1),
        x.dims()[D - 1],
    );
    let m = w.dims()[1];
    let f32s = is_f32(x) && is_f32(w) && b.as_ref().is_none_or(is_f32);
    if !super::fused() || !f32s || n * k * m == 0 {
        return Err(args);
    }
    Err(on_hosts!(linear_on, args, D))
}

fn linear_on<H: Host, B: Backend, const D: usize>(
    (x, w, b, gelu): LinearArgs<B, D>,
) -> Result<Tensor<B, D>, LinearArgs<B, D>> {
    let x = match cast::<H, B, D>(x) {
        Ok(x) => {
            let y = linear::<H>(
                prim(x),
                prim(same::<H, B, 2>(w)),
                b.map(|b| prim(same::<H, B, 1>(b))),
                gelu,
            );
            return Ok(uncast(float::<H, D>(y)));
        }
        Err(x) => x,
    };
    match (cast::<Autodiff<H>, B, D>(x), b) {
        (Ok(x), Some(b)) => Ok(uncast(linear_ad::<H, D>(
            x,
            same::<Autodiff<H>, B, 2>(w),
            same::<Autodiff<H>, B, 1>(b),
            gelu,
        ))),
        (Ok(x), b) => Err((uncast(x), w, b, gelu)),
        (Err(x), b) => Err((x, w, b, gelu)),
    }
}

fn prim<H: Backend, const D: usize>(x: Tensor<H, D>) -> T<H> {
    x.into_primitive().tensor()
}

/// `x W + b`, then GELU when `gelu` (`x: [..., k]`, its leading axes as the rows).
#[inline]
pub fn linear<H: Host>(x: T<H>, w: T<H>, b: Option<T<H>>, gelu: bool) -> T<H> {
    let (x, w) = (H::contiguous(x), H::contiguous(w));
    let ([n, k], [_, m]) = (H::dims2(&x), H::dims2(&w));
    let mut shape = H::dims(&x);
    *shape
        .last_mut()
        .expect("linear takes a tensor of at least one axis") = m;
    let b = b.map(H::contiguous);
    let bias = b.as_ref().map(H::slice);
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
    mm(
        MatMut::from_row_major_slice_mut(&mut out, n, m),
        accum,
        MatRef::from_row_major_slice(H::slice(&x), n, k),
        MatRef::from_row_major_slice(H::slice(&w), k, m),
        1.0f32,
    );
    if gelu {
        let zero = vec![0.0f32; m];
        let bias = bias.unwrap_or(&zero);
        let rows = (CHUNK / m).max(1);
        out.par_chunks_mut(rows * m)
            .for_each(|rows| Arch::new().dispatch(GeluBias { rows, bias }));
    }
    H::make(out, shape)
}

/// `a · b` (`a: [n, k]`, `b: [k, m]`, either given transposed; leading axes as rows) as a
/// tensor of `shape`.
fn product<H: Host>(a: &T<H>, ta: bool, b: &T<H>, tb: bool, shape: Vec<usize>) -> T<H> {
    fn view<H: Host>(t: &T<H>, transposed: bool) -> MatRef<'_, f32> {
        let [r, c] = H::dims2(t);
        let v = MatRef::from_row_major_slice(H::slice(t), r, c);
        if transposed { v.transpose() } else { v }
    }
    let (a, b) = (view::<H>(a, ta), view::<H>(b, tb));
    let (n, m) = (a.nrows(), b.ncols());
    let mut out = vec![0.0f32; n * m];
    mm(
        MatMut::from_row_major_slice_mut(&mut out, n, m),
        Accum::Replace,
        a,
        b,
        1.0f32,
    );
    H::make(out, shape)
}

/// The sum of the rows of `g: [n, m]`.
fn column_sums<H: Host>(g: &T<H>) -> T<H> {
    let [_, m] = H::dims2(g);
    let mut out = vec![0.0f32; m];
    Arch::new().dispatch(ColumnSums {
        out: &mut out,
        g: H::slice(g),
    });
    H::make(out, vec![m])
}

/// [`linear`] under autodiff.
#[inline]
pub fn linear_ad<H: Host, const D: usize>(
    x: Tensor<Autodiff<H>, D>,
    w: Tensor<Autodiff<H>, 2>,
    b: Tensor<Autodiff<H>, 1>,
    gelu: bool,
) -> Tensor<Autodiff<H>, D> {
    /// The input, the weight, and the pre-activation when GELU follows.
    type LinearState<H> = (T<H>, T<H>, Option<T<H>>);
    #[derive(Debug)]
    struct LinearBackward;
    impl<H: Host> Backward<H, 3> for LinearBackward {
        type State = LinearState<H>;
        fn backward(
            self,
            ops: Ops<LinearState<H>, 3>,
            grads: &mut Gradients,
            _: &mut Checkpointer,
        ) {
            let [px, pw, pb] = ops.parents;
            let grad = grads.consume::<H>(&ops.node);
            let (x, w, z) = ops.state;
            let dz = H::contiguous(match z {
                Some(z) => gelu_grad::<H>(z, grad, Gelu::Exact),
                None => grad,
            });
            if let Some(node) = pb {
                grads.register::<H>(node.id, column_sums::<H>(&dz));
            }
            if let Some(node) = pw {
                grads.register::<H>(node.id, product::<H>(&x, true, &dz, false, H::dims(&w)));
            }
            if let Some(node) = px {
                grads.register::<H>(node.id, product::<H>(&dz, false, &w, true, H::dims(&x)));
            }
        }
    }
    let (x, w, b) = (
        x.into_primitive().tensor(),
        w.into_primitive().tensor(),
        b.into_primitive().tensor(),
    );
    let nodes = [x.node.clone(), w.node.clone(), b.node.clone()];
    let out =
        match <LinearBackward as Backward<H, _>>::prepare::<NoCheckpointing>(LinearBackward, nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (H::contiguous(x.primitive), H::contiguous(w.primitive));
                let z = linear::<H>(xp.clone(), wp.clone(), Some(b.primitive), false);
                if gelu {
                    let y =
                        self::gelu::<H>(H::make(H::slice(&z).to_vec(), H::dims(&z)), Gelu::Exact);
                    prep.finish((xp, wp, Some(z)), y)
                } else {
                    prep.finish((xp, wp, None), z)
                }
            }
            OpsKind::UnTracked(prep) => prep.finish(linear::<H>(
                x.primitive,
                w.primitive,
                Some(b.primitive),
                gelu,
            )),
        };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

type NormArgs<B> = (
    Tensor<B, 3>,
    Option<Tensor<B, 3>>,
    Tensor<B, 1>,
    Tensor<B, 1>,
    f64,
);

/// [`super::add_layer_norm`] and [`super::layer_norm`] on a CPU backend, with or without
/// autodiff (`x` and `a` of one shape), or the arguments back.
pub fn add_layer_norm_dispatch<B: Backend>(args: NormArgs<B>) -> Result<Tensor<B, 3>, NormArgs<B>> {
    let (x, a, weight, bias, _) = &args;
    let f32s = is_f32(x) && a.as_ref().is_none_or(is_f32) && is_f32(weight) && is_f32(bias);
    let same_shape = a.as_ref().is_none_or(|a| a.dims() == x.dims());
    if !super::fused() || !f32s || !same_shape || x.dims()[2] == 0 {
        return Err(args);
    }
    Err(on_hosts!(add_layer_norm_on, args))
}

fn add_layer_norm_on<H: Host, B: Backend>(
    (x, a, weight, bias, eps): NormArgs<B>,
) -> Result<Tensor<B, 3>, NormArgs<B>> {
    let x = match cast::<H, B, 3>(x) {
        Ok(x) => x,
        Err(x) => match cast::<Autodiff<H>, B, 3>(x) {
            Ok(x) => {
                let a = a.map(same::<Autodiff<H>, B, 3>);
                let (w, b) = (
                    same::<Autodiff<H>, B, 1>(weight),
                    same::<Autodiff<H>, B, 1>(bias),
                );
                return Ok(uncast(add_layer_norm_ad::<H>(x, a, w, b, eps as f32)));
            }
            Err(x) => return Err((x, a, weight, bias, eps)),
        },
    };
    // A block with every unit removed adds its bias, expanded over the rows: read the row
    // instead of copying it out to every row.
    let a = a.map(|a| {
        let a = prim(same::<H, B, 3>(a));
        if H::is_row_broadcast(&a) {
            let d = H::dims(&a)[2];
            let row =
                Tensor::<H, 3>::from_primitive(TensorPrimitive::Float(a)).slice([0..1, 0..1, 0..d]);
            (H::contiguous(prim(row)), true)
        } else {
            (H::contiguous(a), false)
        }
    });
    let x = H::contiguous(prim(x));
    let (w, b) = (
        H::contiguous(prim(same::<H, B, 1>(weight))),
        H::contiguous(prim(same::<H, B, 1>(bias))),
    );
    Ok(uncast(float::<H, 3>(
        add_layer_norm::<H>(
            &x,
            a.as_ref().map(|(a, row)| (a, *row)),
            &w,
            &b,
            eps as f32,
            false,
        )
        .0,
    )))
}

/// The normalised rows `x̂` and each row's `1 / √(σ² + ε)`, kept for the backward pass.
type Normalised<H> = (T<H>, T<H>);

/// `LayerNorm(x + a)` (or of `x` alone) per row of the last axis; `a` is `(values, row)`:
/// with `row` its one row is added to every row of `x`. With `keep`, also the normalised
/// rows `x̂` and each row's `1 / √(σ² + ε)` (what the backward pass needs).
#[inline]
fn add_layer_norm<H: Host>(
    x: &T<H>,
    a: Option<(&T<H>, bool)>,
    w: &T<H>,
    b: &T<H>,
    eps: f32,
    keep: bool,
) -> (T<H>, Option<Normalised<H>>) {
    let shape = H::dims(x);
    let d = shape[shape.len() - 1];
    let (xs, ws, bs) = (H::slice(x), H::slice(w), H::slice(b));
    let a = a.map(|(a, row)| (H::slice(a), row));
    let n = xs.len() / d;
    let mut out = vec![0.0f32; xs.len()];
    let (mut xhat, mut inv) = if keep {
        (vec![0.0f32; xs.len()], vec![0.0f32; n])
    } else {
        (Vec::new(), Vec::new())
    };
    let rows = (CHUNK / d).max(1);
    let chunk = rows * d;
    let run = |i: usize, out: &mut [f32], keep: Option<(&mut [f32], &mut [f32])>| {
        let span = i * chunk..i * chunk + out.len();
        Arch::new().dispatch(AddNorm {
            out,
            x: &xs[span.clone()],
            a: a.map(|(a, row)| if row { (a, true) } else { (&a[span], false) }),
            w: ws,
            b: bs,
            eps,
            keep,
        })
    };
    if keep {
        out.par_chunks_mut(chunk)
            .zip(xhat.par_chunks_mut(chunk).zip(inv.par_chunks_mut(rows)))
            .enumerate()
            .for_each(|(i, (out, (xhat, inv)))| run(i, out, Some((xhat, inv))));
    } else {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, out)| run(i, out, None));
    }
    let kept = keep.then(|| (H::make(xhat, shape.clone()), H::make(inv, vec![n])));
    (H::make(out, shape), kept)
}

/// The gradients of `y = x̂ · w + b` with `x̂ = (h - μ) · inv`: `(dh, dw, db)`.
///
/// Deterministic: `dw` and `db` are summed over fixed row blocks, then the blocks in order,
/// whatever the thread count.
fn layer_norm_backward<H: Host>(
    dy: &T<H>,
    xhat: &T<H>,
    inv: &T<H>,
    w: &T<H>,
) -> (T<H>, T<H>, T<H>) {
    let shape = H::dims(dy);
    let d = shape[shape.len() - 1];
    let (gs, xs, is, ws) = (H::slice(dy), H::slice(xhat), H::slice(inv), H::slice(w));
    let rows = (CHUNK / d).max(1);
    let chunk = rows * d;
    let mut dh = vec![0.0f32; gs.len()];
    let blocks = gs.len().div_ceil(chunk.max(1));
    // Per block: dw then db.
    let mut partial = vec![0.0f32; blocks * 2 * d];
    dh.par_chunks_mut(chunk)
        .zip(partial.par_chunks_mut(2 * d))
        .enumerate()
        .for_each(|(i, (dh, part))| {
            let len = dh.len();
            let span = i * chunk..i * chunk + len;
            Arch::new().dispatch(NormGrad {
                dh,
                part,
                dy: &gs[span.clone()],
                xhat: &xs[span],
                inv: &is[i * rows..i * rows + len / d],
                w: ws,
            })
        });
    let (mut dw, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
    for part in partial.chunks_exact(2 * d) {
        for j in 0..d {
            dw[j] += part[j];
            db[j] += part[d + j];
        }
    }
    (
        H::make(dh, shape),
        H::make(dw, vec![d]),
        H::make(db, vec![d]),
    )
}

/// [`add_layer_norm`] under autodiff: `x` and `a` (when given) get the same gradient.
#[inline]
fn add_layer_norm_ad<H: Host>(
    x: Tensor<Autodiff<H>, 3>,
    a: Option<Tensor<Autodiff<H>, 3>>,
    w: Tensor<Autodiff<H>, 1>,
    b: Tensor<Autodiff<H>, 1>,
    eps: f32,
) -> Tensor<Autodiff<H>, 3> {
    /// `x̂`, `inv` and the weight.
    type NormState<H> = (T<H>, T<H>, T<H>);
    /// Parents: the inputs (`x`, or `x` and `a`), then the weight and the bias.
    #[derive(Debug)]
    struct NormBackward;
    fn backward<H: Host, const N: usize>(ops: Ops<NormState<H>, N>, grads: &mut Gradients) {
        let dy = H::contiguous(grads.consume::<H>(&ops.node));
        let (xhat, inv, w) = ops.state;
        let (dh, dw, db) = layer_norm_backward::<H>(&dy, &xhat, &inv, &w);
        let mut parents: Vec<_> = ops.parents.into_iter().collect();
        if let Some(node) = parents.pop().flatten() {
            grads.register::<H>(node.id, db);
        }
        if let Some(node) = parents.pop().flatten() {
            grads.register::<H>(node.id, dw);
        }
        for node in parents.into_iter().flatten() {
            grads.register::<H>(node.id, dh.clone());
        }
    }
    impl<H: Host> Backward<H, 3> for NormBackward {
        type State = NormState<H>;
        fn backward(self, ops: Ops<NormState<H>, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            backward::<H, _>(ops, grads)
        }
    }
    impl<H: Host> Backward<H, 4> for NormBackward {
        type State = NormState<H>;
        fn backward(self, ops: Ops<NormState<H>, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
            backward::<H, _>(ops, grads)
        }
    }
    // A macro, not a function: the node type of Burn's autodiff graph has no public name.
    macro_rules! run {
        ($nodes:expr, $x:expr, $a:expr, $w:expr, $b:expr) => {{
            let (x, a, w, b) = (
                H::contiguous($x),
                $a.map(H::contiguous),
                H::contiguous($w),
                H::contiguous($b),
            );
            match <NormBackward as Backward<H, _>>::prepare::<NoCheckpointing>(NormBackward, $nodes)
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (y, kept) =
                        add_layer_norm::<H>(&x, a.as_ref().map(|a| (a, false)), &w, &b, eps, true);
                    let (xhat, inv) = kept.expect("kept on request");
                    prep.finish((xhat, inv, w), y)
                }
                OpsKind::UnTracked(prep) => prep.finish(
                    add_layer_norm::<H>(&x, a.as_ref().map(|a| (a, false)), &w, &b, eps, false).0,
                ),
            }
        }};
    }
    let (x, w, b) = (
        x.into_primitive().tensor(),
        w.into_primitive().tensor(),
        b.into_primitive().tensor(),
    );
    let out = match a {
        None => run!(
            [x.node.clone(), w.node.clone(), b.node.clone()],
            x.primitive,
            None::<T<H>>,
            w.primitive,
            b.primitive
        ),
        Some(a) => {
            let a = a.into_primitive().tensor();
            run!(
                [
                    x.node.clone(),
                    a.node.clone(),
                    w.node.clone(),
                    b.node.clone()
                ],
                x.primitive,
                Some(a.primitive),
                w.primitive,
                b.primitive
            )
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

type AttentionArgs<B> = (
    Tensor<B, 4>,
    Tensor<B, 4>,
    Tensor<B, 4>,
    Option<Tensor<B, 2>>,
    bool,
    Option<super::ProbDropout>,
);

/// [`super::attention`] on a CPU backend, with or without autodiff, or the arguments back.
pub fn attention_dispatch<B: Backend>(
    args: AttentionArgs<B>,
) -> Result<Tensor<B, 4>, AttentionArgs<B>> {
    let (q, k, v, bias, causal, _) = &args;
    let f32s = is_f32(q) && is_f32(k) && is_f32(v) && bias.as_ref().is_none_or(is_f32);
    let [_, _, s, dh] = q.dims();
    let sk = k.dims()[2];
    if !super::fused() || !f32s || s * sk * dh == 0 || (*causal && s != sk) {
        return Err(args);
    }
    Err(on_hosts!(attention_on, args))
}

fn attention_on<H: Host, B: Backend>(
    (q, k, v, bias, causal, drop): AttentionArgs<B>,
) -> Result<Tensor<B, 4>, AttentionArgs<B>> {
    let q = match cast::<H, B, 4>(q) {
        Ok(q) => q,
        Err(q) => match cast::<Autodiff<H>, B, 4>(q) {
            Ok(q) => {
                let (k, v) = (same::<Autodiff<H>, B, 4>(k), same::<Autodiff<H>, B, 4>(v));
                let bias = bias.map(same::<Autodiff<H>, B, 2>);
                return Ok(uncast(attention_ad::<H>(q, k, v, bias, causal, drop)));
            }
            Err(q) => return Err((q, k, v, bias, causal, drop)),
        },
    };
    let (k, v) = (same::<H, B, 4>(k), same::<H, B, 4>(v));
    let bias = bias.map(|m| H::contiguous(prim(same::<H, B, 2>(m))));
    let (out, _) = attention::<H>(
        &H::contiguous(prim(q)),
        &H::contiguous(prim(k)),
        &H::contiguous(prim(v)),
        bias.as_ref(),
        causal,
        drop,
        false,
    );
    Ok(uncast(float::<H, 4>(out)))
}

/// Row-major `[rows, cols]` block `i` of a buffer of such blocks.
fn block(v: &[f32], i: usize, rows: usize, cols: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(&v[i * rows * cols..(i + 1) * rows * cols], rows, cols)
}

/// One task per (batch, head): `S = Q Kᵀ / √d` in faer, bias, causal mask and softmax
/// per row, then `S V` into the output (`S` with dropout's mask applied when `drop`). With
/// `keep`, also the probabilities before dropout (`[batch, heads, seq, seq_k]`), which the
/// backward pass needs.
#[inline]
fn attention<H: Host>(
    q: &T<H>,
    k: &T<H>,
    v: &T<H>,
    bias: Option<&T<H>>,
    causal: bool,
    drop: Option<super::ProbDropout>,
    keep: bool,
) -> (T<H>, Option<T<H>>) {
    let [b, h, s, dh] = H::dims(q)[..] else {
        panic!("attention takes [batch, heads, seq, d_head]")
    };
    let sk = H::dims(k)[2];
    let dv = H::dims(v)[3];
    let (qs, ks, vs) = (H::slice(q), H::slice(k), H::slice(v));
    let bias = bias.map(H::slice);
    let scale = 1.0 / (dh as f32).sqrt();
    let mut out = vec![0.0f32; b * h * s * dv];
    let one = |bh: usize, p: &mut [f32], o: &mut [f32]| {
        let bi = bh / h;
        matmul(
            MatMut::from_row_major_slice_mut(p, s, sk),
            Accum::Replace,
            block(qs, bh, s, dh),
            block(ks, bh, sk, dh).transpose(),
            scale,
            Par::Seq,
        );
        let bias = bias.map(|m| &m[bi * sk..(bi + 1) * sk]);
        Arch::new().dispatch(Softmax {
            p,
            sk,
            bias,
            causal,
        });
        let dropped;
        let p: &[f32] = match drop {
            Some(d) => {
                dropped = d.applied(p, bh * s * sk);
                &dropped
            }
            None => p,
        };
        matmul(
            MatMut::from_row_major_slice_mut(o, s, dv),
            Accum::Replace,
            MatRef::from_row_major_slice(p, s, sk),
            block(vs, bh, sk, dv),
            1.0f32,
            Par::Seq,
        );
    };
    if keep {
        let mut probs = vec![0.0f32; b * h * s * sk];
        out.par_chunks_mut(s * dv)
            .zip(probs.par_chunks_mut(s * sk))
            .enumerate()
            .for_each(|(bh, (o, p))| one(bh, p, o));
        (
            H::make(out, vec![b, h, s, dv]),
            Some(H::make(probs, vec![b, h, s, sk])),
        )
    } else {
        out.par_chunks_mut(s * dv)
            .enumerate()
            .for_each(|(bh, o)| one(bh, &mut vec![0.0f32; s * sk], o));
        (H::make(out, vec![b, h, s, dv]), None)
    }
}

/// The gradients of [`attention`]'s output with respect to `q`, `k` and `v`, from the
/// probabilities `p` it kept, one task per (batch, head): with `M` dropout's multipliers
/// (all 1 without `drop`), `dV = (P ⊙ M)ᵀ dO`, `G = (dO Vᵀ) ⊙ M`,
/// `dS = P ⊙ (G - rowsum(P ⊙ G))`, `dQ = dS K / √d`, `dK = dSᵀ Q / √d`.
fn attention_backward<H: Host>(
    q: &T<H>,
    k: &T<H>,
    v: &T<H>,
    p: &T<H>,
    d_out: &T<H>,
    drop: Option<super::ProbDropout>,
) -> (T<H>, T<H>, T<H>) {
    let [b, h, s, dh] = H::dims(q)[..] else {
        panic!("attention takes [batch, heads, seq, d_head]")
    };
    let (sk, dv) = (H::dims(k)[2], H::dims(v)[3]);
    let (qs, ks, vs, ps, gs) = (
        H::slice(q),
        H::slice(k),
        H::slice(v),
        H::slice(p),
        H::slice(d_out),
    );
    let scale = 1.0 / (dh as f32).sqrt();
    let (mut dq, mut dk, mut dvs) = (
        vec![0.0f32; b * h * s * dh],
        vec![0.0f32; b * h * sk * dh],
        vec![0.0f32; b * h * sk * dv],
    );
    dq.par_chunks_mut(s * dh)
        .zip(dk.par_chunks_mut(sk * dh))
        .zip(dvs.par_chunks_mut(sk * dv))
        .enumerate()
        .for_each(|(bh, ((dq, dk), dv_))| {
            let g = block(gs, bh, s, dv);
            let p_bh = &ps[bh * s * sk..(bh + 1) * s * sk];
            let dropped = drop.map(|d| d.applied(p_bh, bh * s * sk));
            let p = MatRef::from_row_major_slice(dropped.as_deref().unwrap_or(p_bh), s, sk);
            matmul(
                MatMut::from_row_major_slice_mut(dv_, sk, dv),
                Accum::Replace,
                p.transpose(),
                g,
                1.0f32,
                Par::Seq,
            );
            let mut ds = vec![0.0f32; s * sk];
            matmul(
                MatMut::from_row_major_slice_mut(&mut ds, s, sk),
                Accum::Replace,
                g,
                block(vs, bh, sk, dv).transpose(),
                1.0f32,
                Par::Seq,
            );
            if let Some(d) = drop {
                d.apply(&mut ds, bh * s * sk);
            }
            Arch::new().dispatch(SoftmaxGrad {
                ds: &mut ds,
                p: &ps[bh * s * sk..(bh + 1) * s * sk],
                sk,
            });
            let ds = MatRef::from_row_major_slice(&ds, s, sk);
            matmul(
                MatMut::from_row_major_slice_mut(dq, s, dh),
                Accum::Replace,
                ds,
                block(ks, bh, sk, dh),
                scale,
                Par::Seq,
            );
            matmul(
                MatMut::from_row_major_slice_mut(dk, sk, dh),
                Accum::Replace,
                ds.transpose(),
                block(qs, bh, s, dh),
                scale,
                Par::Seq,
            );
        });
    (
        H::make(dq, vec![b, h, s, dh]),
        H::make(dk, vec![b, h, sk, dh]),
        H::make(dvs, vec![b, h, sk, dv]),
    )
}

/// [`attention`] under autodiff, with [`attention_backward`]. The bias is a constant (the
/// padding mask): no gradient flows to it.
#[inline]
fn attention_ad<H: Host>(
    q: Tensor<Autodiff<H>, 4>,
    k: Tensor<Autodiff<H>, 4>,
    v: Tensor<Autodiff<H>, 4>,
    bias: Option<Tensor<Autodiff<H>, 2>>,
    causal: bool,
    drop: Option<super::ProbDropout>,
) -> Tensor<Autodiff<H>, 4> {
    /// `q`, `k`, `v` and the probabilities.
    type AttentionState<H> = (T<H>, T<H>, T<H>, T<H>);
    #[derive(Debug)]
    struct AttentionBackward {
        drop: Option<super::ProbDropout>,
    }
    impl<H: Host> Backward<H, 3> for AttentionBackward {
        type State = AttentionState<H>;
        fn backward(
            self,
            ops: Ops<AttentionState<H>, 3>,
            grads: &mut Gradients,
            _: &mut Checkpointer,
        ) {
            let d_out = H::contiguous(grads.consume::<H>(&ops.node));
            let (q, k, v, p) = ops.state;
            let (dq, dk, dv) = attention_backward::<H>(&q, &k, &v, &p, &d_out, self.drop);
            let [pq, pk, pv] = ops.parents;
            for (node, g) in [(pq, dq), (pk, dk), (pv, dv)] {
                if let Some(node) = node {
                    grads.register::<H>(node.id, g);
                }
            }
        }
    }
    let (q, k, v) = (
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
    );
    let bias = bias.map(|m| H::contiguous(m.into_primitive().tensor().primitive));
    let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
    let (q, k, v) = (
        H::contiguous(q.primitive),
        H::contiguous(k.primitive),
        H::contiguous(v.primitive),
    );
    let out = match <AttentionBackward as Backward<H, _>>::prepare::<NoCheckpointing>(
        AttentionBackward { drop },
        nodes,
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, p) = attention::<H>(&q, &k, &v, bias.as_ref(), causal, drop, true);
            prep.finish((q, k, v, p.expect("kept on request")), out)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(attention::<H>(&q, &k, &v, bias.as_ref(), causal, drop, false).0)
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

type AdamWArgs<B, const D: usize> = (
    Tensor<B, D>,
    Tensor<B, D>,
    Option<(Tensor<B, D>, Tensor<B, D>)>,
    super::AdamWStep,
);
type AdamWOut<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>);

/// [`super::adamw_step`] on a CPU backend, or the arguments back.
pub fn adamw_dispatch<B: Backend, const D: usize>(
    args: AdamWArgs<B, D>,
) -> Result<AdamWOut<B, D>, AdamWArgs<B, D>> {
    let (param, grad, moments, _) = &args;
    let f32s = is_f32(param)
        && is_f32(grad)
        && moments.as_ref().is_none_or(|(m, v)| is_f32(m) && is_f32(v));
    let shapes = param.dims() == grad.dims()
        && moments
            .as_ref()
            .is_none_or(|(m, v)| m.dims() == param.dims() && v.dims() == param.dims());
    if !super::fused() || !f32s || !shapes {
        return Err(args);
    }
    Err(on_hosts!(adamw_on, args, D))
}

/// One pass over the parameter, gradient and moments, in place where the tensors own
/// their buffers (moved out and back, no copy).
fn adamw_on<H: Host, B: Backend, const D: usize>(
    (param, grad, moments, h): AdamWArgs<B, D>,
) -> Result<AdamWOut<B, D>, AdamWArgs<B, D>> {
    let param = match cast::<H, B, D>(param) {
        Ok(p) => p,
        Err(p) => return Err((p, grad, moments, h)),
    };
    let shape = param.dims().to_vec();
    let mut p = H::values(prim(param));
    let g = H::contiguous(prim(same::<H, B, D>(grad)));
    let (mut m, mut v) = match moments {
        Some((m, v)) => (
            H::values(prim(same::<H, B, D>(m))),
            H::values(prim(same::<H, B, D>(v))),
        ),
        None => (vec![0.0; p.len()], vec![0.0; p.len()]),
    };
    let t = h.time as i32;
    let k = AdamWConsts {
        beta_1: h.beta_1,
        beta_2: h.beta_2,
        c1: 1.0 - h.beta_1.powi(t),
        c2: 1.0 - h.beta_2.powi(t),
        epsilon: h.epsilon,
        lr: h.lr as f32,
        keep: (1.0 - h.lr * h.weight_decay as f64) as f32,
    };
    p.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .zip(H::slice(&g).par_chunks(CHUNK))
        .for_each(|(((p, m), v), g)| Arch::new().dispatch(AdamWKernel { p, m, v, g, k }));
    let out = |x: Vec<f32>| uncast(float::<H, D>(H::make(x, shape.clone())));
    Ok((out(p), out(m), out(v)))
}

/// [`super::sum_squares`] on a CPU backend, or the tensor back.
pub fn sum_squares_dispatch<B: Backend, const D: usize>(
    t: Tensor<B, D>,
) -> Result<Tensor<B, 1>, Tensor<B, D>> {
    if !super::fused() || !is_f32(&t) {
        return Err(t);
    }
    Err(on_hosts!(sum_squares_on, t, D))
}

fn sum_squares_on<H: Host, B: Backend, const D: usize>(
    t: Tensor<B, D>,
) -> Result<Tensor<B, 1>, Tensor<B, D>> {
    let t = H::contiguous(prim(cast::<H, B, D>(t)?));
    let blocks: Vec<f64> = H::slice(&t)
        .par_chunks(CHUNK)
        .map(|c| lane_dot(c, c) as f64)
        .collect();
    let total: f64 = blocks.iter().sum();
    Ok(uncast(float::<H, 1>(H::make(vec![total as f32], vec![1]))))
}

/// [`super::scale`] on a CPU backend, or the tensor back.
pub fn scale_dispatch<B: Backend, const D: usize>(
    t: Tensor<B, D>,
    factor: f32,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !super::fused() || !is_f32(&t) {
        return Err(t);
    }
    Err(on_hosts!(scale_on, (t, factor), D).0)
}

fn scale_on<H: Host, B: Backend, const D: usize>(
    (t, factor): (Tensor<B, D>, f32),
) -> Result<Tensor<B, D>, (Tensor<B, D>, f32)> {
    let t = match cast::<H, B, D>(t) {
        Ok(t) => t,
        Err(t) => return Err((t, factor)),
    };
    let shape = t.dims().to_vec();
    let mut v = H::values(prim(t));
    v.par_chunks_mut(CHUNK)
        .for_each(|c| Arch::new().dispatch(Scale { x: c, factor }));
    Ok(uncast(float::<H, D>(H::make(v, shape))))
}

type NllArgs<B> = (Tensor<B, 2>, Vec<i64>);

/// [`super::nll`] on a CPU backend, with or without autodiff, or the arguments back.
pub fn nll_dispatch<B: Backend>(args: NllArgs<B>) -> Result<Tensor<B, 1>, NllArgs<B>> {
    if !super::fused() || !is_f32(&args.0) {
        return Err(args);
    }
    Err(on_hosts!(nll_on, args))
}

fn nll_on<H: Host, B: Backend>((logits, targets): NllArgs<B>) -> Result<Tensor<B, 1>, NllArgs<B>> {
    let logits = match cast::<H, B, 2>(logits) {
        Ok(l) => {
            let l = H::contiguous(prim(l));
            let (out, _) = nll_forward::<H>(&l, &targets);
            return Ok(uncast(float::<H, 1>(out)));
        }
        Err(l) => l,
    };
    match cast::<Autodiff<H>, B, 2>(logits) {
        Ok(l) => Ok(uncast(nll_ad::<H>(l, targets))),
        Err(l) => Err((l, targets)),
    }
}

/// Rows per parallel task of the NLL kernels (a row is a vocabulary wide).
fn nll_rows(classes: usize) -> usize {
    (CHUNK / classes.max(1)).max(1)
}

/// The NLL of each row (`[rows]`) and each row's log-sum-exp.
fn nll_forward<H: Host>(logits: &T<H>, targets: &[i64]) -> (T<H>, Vec<f32>) {
    let [n, c] = H::dims2(logits);
    let x = H::slice(logits);
    let per = nll_rows(c);
    let mut lse = vec![0.0f32; n];
    lse.par_chunks_mut(per)
        .zip(x.par_chunks(per * c.max(1)))
        .for_each(|(lse, rows)| Arch::new().dispatch(LogSumExp { rows, lse }));
    let out: Vec<f32> = (0..n)
        .map(|i| match usize::try_from(targets[i]) {
            Ok(t) => lse[i] - x[i * c + t],
            Err(_) => 0.0,
        })
        .collect();
    (H::make(out, vec![n]), lse)
}

/// `g_i (softmax(x_i) - onehot(t_i))` for every row, written over `x`; 0 for rows without a
/// target.
fn nll_backward<H: Host>(logits: T<H>, lse: &[f32], targets: &[i64], grad: T<H>) -> T<H> {
    let shape = H::dims(&logits);
    let [_, c] = H::dims2(&logits);
    let mut x = H::values(logits);
    let g = H::values(grad);
    let per = nll_rows(c);
    x.par_chunks_mut(per * c.max(1))
        .enumerate()
        .for_each(|(k, rows)| {
            let first = k * per;
            let n = rows.len() / c.max(1);
            Arch::new().dispatch(NllGrad {
                rows,
                classes: c,
                lse: &lse[first..first + n],
                targets: &targets[first..first + n],
                g: &g[first..first + n],
            })
        });
    H::make(x, shape)
}

/// [`super::nll`] under autodiff: keeps the logits, the log-sum-exps and the targets.
fn nll_ad<H: Host>(logits: Tensor<Autodiff<H>, 2>, targets: Vec<i64>) -> Tensor<Autodiff<H>, 1> {
    #[derive(Debug)]
    struct NllBackward;
    impl<H: Host> Backward<H, 1> for NllBackward {
        type State = (T<H>, Vec<f32>, Vec<i64>);
        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (logits, lse, targets) = ops.state;
            unary::<H, _>(ops.parents, ops.node, grads, |g| {
                nll_backward::<H>(logits, &lse, &targets, g)
            });
        }
    }
    let t = logits.into_primitive().tensor();
    let x = H::contiguous(t.primitive);
    let out = match <NllBackward as Backward<H, _>>::prepare::<NoCheckpointing>(
        NllBackward,
        [t.node.clone()],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, lse) = nll_forward::<H>(&x, &targets);
            prep.finish((x, lse, targets), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(nll_forward::<H>(&x, &targets).0),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

type KlArgs<B> = (Tensor<B, 2>, Tensor<B, 2>, f64, Vec<bool>);

/// [`super::soft_kl`] on a CPU backend, with or without autodiff, or the arguments back.
pub fn soft_kl_dispatch<B: Backend>(args: KlArgs<B>) -> Result<Tensor<B, 1>, KlArgs<B>> {
    if !super::fused() || !is_f32(&args.0) || !is_f32(&args.1) {
        return Err(args);
    }
    Err(on_hosts!(soft_kl_on, args))
}

fn soft_kl_on<H: Host, B: Backend>((x, y, t, keep): KlArgs<B>) -> Result<Tensor<B, 1>, KlArgs<B>> {
    let x = match cast::<H, B, 2>(x) {
        Ok(x) => {
            let y = H::contiguous(prim(same::<H, B, 2>(y)));
            let x = H::contiguous(prim(x));
            let out = kl_forward::<H>(&x, &y, t as f32, &keep).0;
            return Ok(uncast(float::<H, 1>(out)));
        }
        Err(x) => x,
    };
    match cast::<Autodiff<H>, B, 2>(x) {
        Ok(x) => {
            let y = same::<Autodiff<H>, B, 2>(y).inner();
            Ok(uncast(soft_kl_ad::<H>(x, y, t as f32, keep)))
        }
        Err(x) => Err((x, y, t, keep)),
    }
}

/// The KL of each row (`[rows]`) and each row's log-sum-exp of `x / T` and of `y / T`.
fn kl_forward<H: Host>(x: &T<H>, y: &T<H>, t: f32, keep: &[bool]) -> (T<H>, Vec<[f32; 2]>) {
    let [n, c] = H::dims2(x);
    let per = nll_rows(c);
    let (xs, ys) = (H::slice(x), H::slice(y));
    let mut rows = vec![[0.0f32; 3]; n];
    rows.par_chunks_mut(per)
        .zip(xs.par_chunks(per * c.max(1)))
        .zip(ys.par_chunks(per * c.max(1)))
        .for_each(|((out, x), y)| Arch::new().dispatch(KlRows { x, y, t, out }));
    let kl = rows
        .iter()
        .zip(keep)
        .map(|(r, &k)| if k { r[0] } else { 0.0 })
        .collect();
    let lse = rows.iter().map(|r| [r[1], r[2]]).collect();
    (H::make(kl, vec![n]), lse)
}

/// `g / T · (softmax(x / T) - softmax(y / T))` per row, written over `x`; 0 for rows not kept.
fn kl_backward<H: Host>(
    x: T<H>,
    y: &T<H>,
    lse: &[[f32; 2]],
    t: f32,
    keep: &[bool],
    grad: T<H>,
) -> T<H> {
    let shape = H::dims(&x);
    let [_, c] = H::dims2(&x);
    let mut xs = H::values(x);
    let g = H::values(grad);
    let per = nll_rows(c);
    xs.par_chunks_mut(per * c.max(1))
        .zip(H::slice(y).par_chunks(per * c.max(1)))
        .enumerate()
        .for_each(|(k, (x, y))| {
            let first = k * per;
            let n = x.len() / c.max(1);
            Arch::new().dispatch(KlGrad {
                x,
                y,
                classes: c,
                t,
                lse: &lse[first..first + n],
                keep: &keep[first..first + n],
                g: &g[first..first + n],
            })
        });
    H::make(xs, shape)
}

/// [`super::soft_kl`] under autodiff: keeps both logits, the log-sum-exps and the flags.
fn soft_kl_ad<H: Host>(
    x: Tensor<Autodiff<H>, 2>,
    y: Tensor<H, 2>,
    t: f32,
    keep: Vec<bool>,
) -> Tensor<Autodiff<H>, 1> {
    /// Student and teacher logits, log-sum-exps, temperature, flags.
    type KlState<H> = (T<H>, T<H>, Vec<[f32; 2]>, f32, Vec<bool>);
    #[derive(Debug)]
    struct KlBackward;
    impl<H: Host> Backward<H, 1> for KlBackward {
        type State = KlState<H>;
        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (x, y, lse, t, keep) = ops.state;
            unary::<H, _>(ops.parents, ops.node, grads, |g| {
                kl_backward::<H>(x, &y, &lse, t, &keep, g)
            });
        }
    }
    let tx = x.into_primitive().tensor();
    let xs = H::contiguous(tx.primitive);
    let ys = H::contiguous(prim(y));
    let out = match <KlBackward as Backward<H, _>>::prepare::<NoCheckpointing>(
        KlBackward,
        [tx.node.clone()],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, lse) = kl_forward::<H>(&xs, &ys, t, &keep);
            prep.finish((xs, ys, lse, t, keep), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(kl_forward::<H>(&xs, &ys, t, &keep).0),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// [`super::gelu`] and [`super::gelu_tanh`] on a CPU backend, with or without autodiff,
/// or the tensor back.
pub fn gelu_dispatch<B: Backend, const D: usize>(
    t: Tensor<B, D>,
    kind: Gelu,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !is_f32(&t) {
        return Err(t);
    }
    Err(on_hosts!(gelu_on, (t, kind), D).0)
}

fn gelu_on<H: Host, B: Backend, const D: usize>(
    (t, kind): (Tensor<B, D>, Gelu),
) -> Result<Tensor<B, D>, (Tensor<B, D>, Gelu)> {
    let t = match cast::<H, B, D>(t) {
        Ok(t) => return Ok(uncast(float::<H, D>(gelu::<H>(prim(t), kind)))),
        Err(t) => t,
    };
    match cast::<Autodiff<H>, B, D>(t) {
        Ok(t) => Ok(uncast(gelu_ad::<H, D>(t, kind))),
        Err(t) => Err((t, kind)),
    }
}

/// [`super::split_heads`] on a CPU backend, with or without autodiff, or the tensor back.
pub fn split_heads_dispatch<B: Backend, const D: usize>(
    args: (Tensor<B, D>, usize, usize),
) -> Result<Tensor<B, 4>, (Tensor<B, D>, usize, usize)> {
    if !is_f32(&args.0) {
        return Err(args);
    }
    Err(on_hosts!(split_heads_on, args, D))
}

fn split_heads_on<H: Host, B: Backend, const D: usize>(
    (t, batch, heads): (Tensor<B, D>, usize, usize),
) -> Result<Tensor<B, 4>, (Tensor<B, D>, usize, usize)> {
    let t = match cast::<H, B, D>(t) {
        Ok(t) => {
            return Ok(uncast(float::<H, 4>(split_heads::<H>(
                prim(t),
                batch,
                heads,
            ))));
        }
        Err(t) => t,
    };
    match cast::<Autodiff<H>, B, D>(t) {
        Ok(t) => Ok(uncast(split_heads_ad::<H, D>(t, batch, heads))),
        Err(t) => Err((t, batch, heads)),
    }
}

/// [`super::merge_heads`] on a CPU backend, with or without autodiff, or the tensor back.
pub fn merge_heads_dispatch<B: Backend>(t: Tensor<B, 4>) -> Result<Tensor<B, 3>, Tensor<B, 4>> {
    if !is_f32(&t) {
        return Err(t);
    }
    Err(on_hosts!(merge_heads_on, t))
}

fn merge_heads_on<H: Host, B: Backend>(t: Tensor<B, 4>) -> Result<Tensor<B, 3>, Tensor<B, 4>> {
    let [b, h, s, dh] = t.dims();
    let t = match cast::<H, B, 4>(t) {
        Ok(t) => {
            let out = merge_heads::<H>(prim(t), vec![b, s, h * dh]);
            return Ok(uncast(float::<H, 3>(out)));
        }
        Err(t) => t,
    };
    Ok(uncast(merge_heads_ad::<H>(cast::<Autodiff<H>, B, 4>(t)?)))
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

/// `Σ a ⊙ b` over 16 lanes.
#[inline(always)]
fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
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

/// `tanh(u)` from [`super::exp`] of `-2 |u|` (no library call, so a loop vectorises):
/// relative error near 2e-7.
#[inline(always)]
fn tanh1(u: f32) -> f32 {
    let e = super::exp(-2.0 * u.abs());
    ((1.0 - e) / (1.0 + e)).copysign(u)
}

/// `√(2/π)`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// GPT-2's `gelu_new`: `x = 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
struct TanhGelu<'a> {
    x: &'a mut [f32],
}

impl WithSimd for TanhGelu<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        for x in self.x.iter_mut() {
            let v = *x;
            let t = tanh1(SQRT_2_OVER_PI * (v + 0.044_715 * v * v * v));
            *x = 0.5 * v * (1.0 + t);
        }
    }
}

/// `g *= 0.5 (1 + t) + 0.5 x (1 - t²) √(2/π) (1 + 3 · 0.044715 x²)`, `t` as in [`TanhGelu`].
struct TanhGeluGrad<'a> {
    g: &'a mut [f32],
    x: &'a [f32],
}

impl WithSimd for TanhGeluGrad<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        for (g, &x) in self.g.iter_mut().zip(self.x) {
            let t = tanh1(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x));
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x);
            *g *= 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
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

/// `out = LayerNorm(x + a) · w + b` per row of `w.len()` values (`x` alone without `a`);
/// with `keep`, also each row's `x̂` and `1 / √(σ² + ε)`.
struct AddNorm<'a> {
    out: &'a mut [f32],
    x: &'a [f32],
    /// The residual: one value per element of `x`, or (`true`) one row for every row.
    a: Option<(&'a [f32], bool)>,
    w: &'a [f32],
    b: &'a [f32],
    eps: f32,
    keep: Option<(&'a mut [f32], &'a mut [f32])>,
}

impl WithSimd for AddNorm<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let d = self.w.len();
        let (mut xhat, mut inv) = match self.keep {
            Some((xhat, inv)) => (Some(xhat.chunks_exact_mut(d)), Some(inv.iter_mut())),
            None => (None, None),
        };
        for (r, o) in self.out.chunks_exact_mut(d).enumerate() {
            let x = &self.x[r * d..(r + 1) * d];
            match self.a {
                Some((a, row)) => {
                    let a = if row { &a[..d] } else { &a[r * d..(r + 1) * d] };
                    for ((o, &x), &a) in o.iter_mut().zip(x).zip(a) {
                        *o = x + a;
                    }
                }
                None => o.copy_from_slice(x),
            }
            let mean = lane_sum(o) / d as f32;
            for o in o.iter_mut() {
                *o -= mean;
            }
            let var = lane_dot(o, o) / d as f32;
            let r_inv = 1.0 / (var + self.eps).sqrt();
            if let (Some(xhat), Some(inv)) = (&mut xhat, &mut inv) {
                let xhat = xhat.next().expect("one x̂ row per row");
                for (h, &o) in xhat.iter_mut().zip(o.iter()) {
                    *h = o * r_inv;
                }
                *inv.next().expect("one inv per row") = r_inv;
            }
            for ((o, &w), &b) in o.iter_mut().zip(self.w).zip(self.b) {
                *o = *o * r_inv * w + b;
            }
        }
    }
}

/// LayerNorm's backward per row of `w.len()` values: `dh = inv · (g - mean(g) - x̂ ·
/// mean(g ⊙ x̂))` with `g = dy ⊙ w`; `part` accumulates `Σ dy ⊙ x̂` (the weight's gradient)
/// then `Σ dy` (the bias's).
struct NormGrad<'a> {
    dh: &'a mut [f32],
    part: &'a mut [f32],
    dy: &'a [f32],
    xhat: &'a [f32],
    inv: &'a [f32],
    w: &'a [f32],
}

impl WithSimd for NormGrad<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let d = self.w.len();
        let (pw, pb) = self.part.split_at_mut(d);
        for (r, dh) in self.dh.chunks_exact_mut(d).enumerate() {
            let dy = &self.dy[r * d..(r + 1) * d];
            let xhat = &self.xhat[r * d..(r + 1) * d];
            for j in 0..d {
                pw[j] += dy[j] * xhat[j];
                pb[j] += dy[j];
                dh[j] = dy[j] * self.w[j];
            }
            let mean_g = lane_sum(dh) / d as f32;
            let mean_gx = lane_dot(dh, xhat) / d as f32;
            let inv = self.inv[r];
            for (g, &x) in dh.iter_mut().zip(xhat) {
                *g = inv * (*g - mean_g - x * mean_gx);
            }
        }
    }
}

/// Softmax's backward per row of `sk` values: `ds = p ⊙ (ds - Σ p ⊙ ds)` (`ds` holds the
/// gradient of the probabilities on entry, of the scores on exit).
struct SoftmaxGrad<'a> {
    ds: &'a mut [f32],
    p: &'a [f32],
    sk: usize,
}

impl WithSimd for SoftmaxGrad<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        for (ds, p) in self
            .ds
            .chunks_exact_mut(self.sk)
            .zip(self.p.chunks_exact(self.sk))
        {
            let dot = lane_dot(ds, p);
            for (d, &p) in ds.iter_mut().zip(p) {
                *d = p * (*d - dot);
            }
        }
    }
}

/// The constants of one AdamW step.
#[derive(Clone, Copy)]
struct AdamWConsts {
    beta_1: f32,
    beta_2: f32,
    /// `1 - β₁ᵗ`, `1 - β₂ᵗ`.
    c1: f32,
    c2: f32,
    epsilon: f32,
    lr: f32,
    /// `1 - lr · weight decay`.
    keep: f32,
}

/// AdamW on a block of parameters, in Burn's order of operations.
struct AdamWKernel<'a> {
    p: &'a mut [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    g: &'a [f32],
    k: AdamWConsts,
}

impl WithSimd for AdamWKernel<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let k = self.k;
        let (f1, f2) = (1.0 - k.beta_1, 1.0 - k.beta_2);
        let items = self
            .p
            .iter_mut()
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut());
        for (((p, m), v), &g) in items.zip(self.g) {
            *m = *m * k.beta_1 + g * f1;
            *v = *v * k.beta_2 + g * g * f2;
            let delta = (*m / k.c1) / ((*v / k.c2).sqrt() + k.epsilon);
            *p = *p * k.keep - delta * k.lr;
        }
    }
}

/// `x *= factor`.
struct Scale<'a> {
    x: &'a mut [f32],
    factor: f32,
}

impl WithSimd for Scale<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        for x in self.x.iter_mut() {
            *x *= self.factor;
        }
    }
}

/// The log-sum-exp of each row of `rows` (rows of `lse.len()` equal widths).
struct LogSumExp<'a> {
    rows: &'a [f32],
    lse: &'a mut [f32],
}

impl WithSimd for LogSumExp<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let c = self.rows.len() / self.lse.len().max(1);
        for (row, lse) in self.rows.chunks_exact(c.max(1)).zip(self.lse.iter_mut()) {
            let max = lane_max(row);
            let mut acc = [0.0f32; LANES];
            let mut chunks = row.chunks_exact(LANES);
            for ch in &mut chunks {
                for i in 0..LANES {
                    acc[i] += super::exp(ch[i] - max);
                }
            }
            let tail: f32 = chunks
                .remainder()
                .iter()
                .map(|&x| super::exp(x - max))
                .sum();
            *lse = max + (acc.iter().sum::<f32>() + tail).ln();
        }
    }
}

/// The gradient of [`LogSumExp`]'s NLL, in place of the logits.
struct NllGrad<'a> {
    rows: &'a mut [f32],
    classes: usize,
    lse: &'a [f32],
    targets: &'a [i64],
    g: &'a [f32],
}

impl WithSimd for NllGrad<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let c = self.classes.max(1);
        for (i, row) in self.rows.chunks_exact_mut(c).enumerate() {
            match usize::try_from(self.targets[i]) {
                Ok(t) => {
                    let (lse, g) = (self.lse[i], self.g[i]);
                    for x in row.iter_mut() {
                        *x = g * super::exp(*x - lse);
                    }
                    row[t] -= g;
                }
                Err(_) => row.fill(0.0),
            }
        }
    }
}

/// Per row of `x` (student) and `y` (teacher): `[KL(softmax(y / T) ‖ softmax(x / T)),
/// lse(x / T), lse(y / T)]`, with `KL = Σ p (y - x) / T + lse(x / T) - lse(y / T)`.
struct KlRows<'a> {
    x: &'a [f32],
    y: &'a [f32],
    t: f32,
    out: &'a mut [[f32; 3]],
}

/// `max / T + ln Σ e^((v - max) / T)`.
#[inline(always)]
fn scaled_lse(v: &[f32], t: f32) -> f32 {
    let max = lane_max(v);
    let inv = 1.0 / t;
    let mut acc = [0.0f32; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for ch in &mut chunks {
        for i in 0..LANES {
            acc[i] += super::exp((ch[i] - max) * inv);
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|&x| super::exp((x - max) * inv))
        .sum();
    max * inv + (acc.iter().sum::<f32>() + tail).ln()
}

impl WithSimd for KlRows<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let c = self.x.len() / self.out.len().max(1);
        let inv = 1.0 / self.t;
        for ((x, y), out) in self
            .x
            .chunks_exact(c.max(1))
            .zip(self.y.chunks_exact(c.max(1)))
            .zip(self.out.iter_mut())
        {
            let (ls, lt) = (scaled_lse(x, self.t), scaled_lse(y, self.t));
            let mut acc = [0.0f32; LANES];
            let mut cx = x.chunks_exact(LANES);
            let mut cy = y.chunks_exact(LANES);
            for (a, b) in (&mut cx).zip(&mut cy) {
                for i in 0..LANES {
                    acc[i] += super::exp(b[i] * inv - lt) * (b[i] - a[i]);
                }
            }
            let tail: f32 = cx
                .remainder()
                .iter()
                .zip(cy.remainder())
                .map(|(&a, &b)| super::exp(b * inv - lt) * (b - a))
                .sum();
            let kl = (acc.iter().sum::<f32>() + tail) * inv + ls - lt;
            *out = [kl.max(0.0), ls, lt];
        }
    }
}

/// The gradient of [`KlRows`]' KL in the student logits, in place of them.
struct KlGrad<'a> {
    x: &'a mut [f32],
    y: &'a [f32],
    classes: usize,
    t: f32,
    lse: &'a [[f32; 2]],
    keep: &'a [bool],
    g: &'a [f32],
}

impl WithSimd for KlGrad<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let c = self.classes.max(1);
        let inv = 1.0 / self.t;
        for (i, (x, y)) in self
            .x
            .chunks_exact_mut(c)
            .zip(self.y.chunks_exact(c))
            .enumerate()
        {
            if !self.keep[i] {
                x.fill(0.0);
                continue;
            }
            let [ls, lt] = self.lse[i];
            let scale = self.g[i] * inv;
            for (a, &b) in x.iter_mut().zip(y) {
                *a = scale * (super::exp(*a * inv - ls) - super::exp(b * inv - lt));
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
