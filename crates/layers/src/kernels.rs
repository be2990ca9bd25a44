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
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{TensorCreationOptions, TensorPrimitive};

static FUSED: AtomicBool = AtomicBool::new(true);

/// Turns the fused kernels ([`linear`], [`add_layer_norm`], [`layer_norm`], [`attention`],
/// [`adamw_step`], [`sum_squares`], [`scale`], [`nll`], [`soft_kl`]) and [`on_workers`] on or off for the whole
/// process (on by default); off, every backend runs Burn's generic operations from the
/// calling thread. For measuring what they bring (`bench --fused-ab`) and for tests.
pub fn set_fused(on: bool) {
    FUSED.store(on, Ordering::Relaxed);
}

/// Whether the fused kernels are on (see [`set_fused`]).
pub fn fused() -> bool {
    FUSED.load(Ordering::Relaxed)
}

/// Set while a pass runs on the passes' workers through [`on_workers`].
#[cfg(feature = "cpu-kernels")]
static ON_WORKERS: AtomicBool = AtomicBool::new(false);

/// The thread pool that [`on_workers`] runs passes on (as many threads as rayon's global
/// pool: `RAYON_NUM_THREADS`, else one per core), or `None` if it could not be built.
#[cfg(feature = "cpu-kernels")]
fn pass_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("shears-pass-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// Runs `f` (a whole forward, backward or optimizer pass) on a worker of a thread pool of
/// its own, or inline when already on a worker, when another such pass is running there, or
/// when the pool has a single thread.
///
/// Why: a parallel operation started from a thread outside rayon's pools hands its work to
/// a pool and sleeps until it is done, two thread switches per operation, and a forward pass
/// starts about five per layer. From a worker, the work that fits one task runs in place and
/// the rest is stolen by the other workers: paired on the 2-core machine of 2026-12-03, 9%
/// faster forward passes at batch 1 and 13% faster training steps (docs/PERFORMANCE.md).
///
/// Why a pool of its own and one pass at a time: Burn holds a global lock through a backward
/// pass. A rayon worker that waits for parallel work executes other queued jobs meanwhile;
/// if it picked up a pass and that pass waited for the lock, held by a thread whose parallel
/// work sits below the pass on the same worker's stack, neither could go on. The test suite,
/// which runs passes from many threads at once, deadlocked both ways: two passes on one
/// worker, and a pass above another thread's matrix product (in the global pool). In a pool
/// of their own with at most one pass in it, a pass shares its workers only with its own
/// parallel work, and the work of any thread it waits for runs in the global pool.
///
/// Only for the CPU backends the kernels run on ([`on_kernels`]): on any other backend
/// (wgpu) it calls `f` here. burn-fusion 0.21 corrupts its handle table when tensors made on
/// one thread are used on another (tracel-ai/burn#4947, fixed after 0.21: "Should have
/// handle for tensor", then every later operation on the device fails), and a GPU pass has
/// no rayon work to run in place anyway. Without the CPU kernels (no rayon here) it calls `f`.
pub fn on_workers<B: Backend, R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(feature = "cpu-kernels")]
    {
        let Some(pool) = pass_pool() else {
            return f();
        };
        if !fused()
            || !on_kernels::<B>()
            || pool.current_num_threads() < 2
            || rayon::current_thread_index().is_some()
            || ON_WORKERS
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return f();
        }
        /// Clears the flag even when `f` panics.
        struct Release;
        impl Drop for Release {
            fn drop(&mut self) {
                ON_WORKERS.store(false, Ordering::Release);
            }
        }
        let _release = Release;
        pool.install(f)
    }
    #[cfg(not(feature = "cpu-kernels"))]
    {
        f()
    }
}

/// Whether the kernels run on backend `B` (with [`fused`] on and f32 tensors): flex and
/// ndarray (`NdArray<f32>`) when this crate is built with their features, and the same
/// under `Autodiff`. Every other backend runs Burn's generic operations.
pub fn on_kernels<B: Backend>() -> bool {
    #[cfg(feature = "cpu-kernels")]
    {
        cpu::is_host::<B>()
    }
    #[cfg(not(feature = "cpu-kernels"))]
    {
        false
    }
}

/// `x W + b`, then GELU when `gelu` (`x: [..., in]`, its leading axes as the rows of one
/// product; `w: [in, out]`, `b: [out]`; the result `[..., out]`).
///
/// On the CPU backends (see [`on_kernels`]; with [`fused`] on) one matrix product in `faer`
/// into a buffer that already holds the bias, or the product and then one pass for the bias
/// and GELU, with no reshape copies; under autodiff one operation with its own backward
/// (`dZ = dY · GELU'(Z)`, `dX = dZ Wᵀ`, `dW = Xᵀ dZ`, `db = Σ dZ`). Elsewhere Burn's
/// `matmul`, add and [`gelu`].
pub fn linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
    gelu: bool,
) -> Tensor<B, D> {
    #[cfg(feature = "cpu-kernels")]
    let (x, w, b) = match cpu::linear_dispatch((x, w, b, gelu)) {
        Ok(y) => return y,
        Err((x, w, b, _)) => (x, w, b),
    };
    // One 2-D product over the leading axes.
    let mut shape = x.dims();
    let k = shape[D - 1];
    let y = x.reshape([shape[..D - 1].iter().product(), k]).matmul(w);
    let y = match b {
        Some(b) => {
            let o = b.dims()[0];
            y + b.reshape([1, o])
        }
        None => y,
    };
    let y = if gelu { self::gelu(y) } else { y };
    shape[D - 1] = y.dims()[1];
    y.reshape(shape)
}

/// Whether the CPU kernels read `t` as one row repeated over its leading axes without
/// copying it out: an `expand` of a vector that the backend keeps as a view (flex does;
/// ndarray's `expand` copies). [`add_layer_norm`] then adds that row to every row of `x`.
/// `false` on every other backend and under autodiff.
pub fn is_row_broadcast<B: Backend, const D: usize>(t: &Tensor<B, D>) -> bool {
    #[cfg(feature = "cpu-kernels")]
    if let Ok(row) = cpu::is_row_broadcast_dispatch(t.clone()) {
        return row;
    }
    let _ = t;
    false
}

/// `row: [d]` repeated to `[shape[0], shape[1], d]` (what a block emptied of every head or
/// neuron adds). Burn's `expand` everywhere (a view on flex, which [`add_layer_norm`] reads
/// as one row, see [`is_row_broadcast`]) except on ndarray without autodiff, whose `expand`
/// copies one element at a time: there the row is copied into every row of a new buffer.
pub fn expand_row<B: Backend>(row: Tensor<B, 1>, shape: [usize; 2]) -> Tensor<B, 3> {
    let d = row.dims()[0];
    let shape = [shape[0], shape[1], d];
    #[cfg(feature = "cpu-kernels")]
    let row = match cpu::expand_row_dispatch(row, shape) {
        Ok(y) => return y,
        Err(row) => row,
    };
    row.reshape([1, 1, d]).expand(shape)
}

/// `LayerNorm(x + a)` over the last axis (BERT's post-norm residual), `x, a: [batch, seq,
/// d]`, `weight, bias: [d]`.
///
/// On flex (with [`fused`] on) one pass per row on every thread; under `Autodiff<Flex>` the
/// same forward with its own backward (one pass per row, the weight's and bias's gradients
/// summed over fixed row blocks, so the result does not depend on the thread count);
/// elsewhere the sum and Burn's layer-norm operation.
pub fn add_layer_norm<B: Backend>(
    x: Tensor<B, 3>,
    a: Tensor<B, 3>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, 3> {
    norm(x, Some(a), weight, bias, eps)
}

/// `LayerNorm(x)` over the last axis, `x: [batch, seq, d]`, `weight, bias: [d]`: as
/// [`add_layer_norm`] without the residual.
pub fn layer_norm<B: Backend>(
    x: Tensor<B, 3>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, 3> {
    norm(x, None, weight, bias, eps)
}

fn norm<B: Backend>(
    x: Tensor<B, 3>,
    a: Option<Tensor<B, 3>>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, 3> {
    #[cfg(feature = "cpu-kernels")]
    let (x, a, weight, bias) = match cpu::add_layer_norm_dispatch((x, a, weight, bias, eps)) {
        Ok(y) => return y,
        Err((x, a, weight, bias, _)) => (x, a, weight, bias),
    };
    let x = match a {
        Some(a) => x + a,
        None => x,
    };
    Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        Some(bias.into_primitive().tensor()),
        eps,
    )))
}

/// Dropout on attention probabilities: probability `p`, the draws keyed by `key`, element
/// `i` of the `[batch, heads, seq, seq_k]` probabilities kept when
/// [`crate::dropout::kept`]`(key, i, p)` (so every path drops the same elements).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbDropout {
    /// Probability of dropping a probability.
    pub p: f32,
    /// The draws' key.
    pub key: u64,
}

impl ProbDropout {
    /// Multiplies `x[i]` (element `base + i` of the probabilities) by `1 / (1 - p)` or 0.
    pub fn apply(&self, x: &mut [f32], base: usize) {
        let scale = 1.0 / (1.0 - self.p);
        for (i, x) in x.iter_mut().enumerate() {
            *x = if crate::dropout::kept(self.key, (base + i) as u64, self.p) {
                *x * scale
            } else {
                0.0
            };
        }
    }

    /// [`ProbDropout::apply`] on a copy of `x`.
    pub fn applied(&self, x: &[f32], base: usize) -> Vec<f32> {
        let mut out = x.to_vec();
        self.apply(&mut out, base);
        out
    }
}

/// Scaled dot-product attention, `softmax(Q Kᵀ / √d + bias) V`, `q, k, v: [batch, heads,
/// seq, d_head]`, `bias: [batch, seq]` added to every query's score of each key position
/// (0 keep, a large negative value for padding), future positions removed when `causal`,
/// and with `dropout` the probabilities dropped (see [`ProbDropout`]) before the product
/// with `V`.
///
/// On flex (with [`fused`] on) one task per (batch, head) on every thread: both products in
/// `faer`, the bias, mask and softmax in one pass per row. Under `Autodiff<Flex>` the same,
/// keeping the probabilities, with its own backward (one task per (batch, head) again); the
/// bias is taken as a constant there (no gradient reaches it). Elsewhere Burn's attention
/// operation (flex's runs the heads one after another on one thread; under autodiff Burn
/// composes it from single-threaded elementwise operations), or with dropout the explicit
/// scores, softmax, mask and product.
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 2>>,
    causal: bool,
    dropout: Option<ProbDropout>,
) -> Tensor<B, 4> {
    #[cfg(feature = "cpu-kernels")]
    let (q, k, v, bias) = match cpu::attention_dispatch((q, k, v, bias, causal, dropout)) {
        Ok(y) => return y,
        Err((q, k, v, bias, _, _)) => (q, k, v, bias),
    };
    let [b, h, s, dh] = q.dims();
    let sk = k.dims()[2];
    let bias = bias.map(|m| m.reshape([b, 1, 1, sk]).expand([b, 1, s, sk]));
    if let Some(d) = dropout.filter(|d| d.p > 0.0) {
        // The constants in the queries' float type: a device's default float type is set by
        // the first backend that uses it (`NdArray<f32>` and `NdArray<f64>` share one), so
        // `&device` alone could give f32 constants to an f64 computation.
        let (device, dtype) = (q.device(), q.dtype());
        let same = || TensorCreationOptions::new(device.clone()).with_dtype(dtype);
        let mut scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (dh as f64).sqrt());
        if let Some(bias) = bias {
            scores = scores + bias;
        }
        if causal {
            // Key positions after the query's get the most negative score (0 after softmax).
            let future: Vec<f32> = (0..s * sk)
                .map(|i| {
                    if i % sk > i / sk {
                        crate::attention::MASKED
                    } else {
                        0.0
                    }
                })
                .collect();
            let future = Tensor::<B, 4>::from_data(TensorData::new(future, [1, 1, s, sk]), same());
            scores = scores + future;
        }
        let probs = burn::tensor::activation::softmax(scores, 3);
        let mut mask = vec![1.0f32; b * h * s * sk];
        d.apply(&mut mask, 0);
        let mask = Tensor::<B, 4>::from_data(TensorData::new(mask, [b, h, s, sk]), same());
        return (probs * mask).matmul(v);
    }
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: causal,
    };
    burn_attention(q, k, v, None, bias, options)
}

/// One AdamW step's settings: torch's `AdamW` (decoupled weight decay), as Burn's `AdamW`
/// computes it, `time` counting this step (1 for the first).
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// First moment's decay.
    pub beta_1: f32,
    /// Second moment's decay.
    pub beta_2: f32,
    /// Added to the square root of the second moment.
    pub epsilon: f32,
    /// Decoupled weight decay (the weight shrinks by `lr · weight_decay` per step).
    pub weight_decay: f32,
    /// The step's number, from 1.
    pub time: usize,
}

/// One AdamW step on a parameter: `m = β₁ m + (1 - β₁) g`, `v = β₂ v + (1 - β₂) g²`,
/// `p = p (1 - lr · wd) - lr · (m / (1 - β₁ᵗ)) / (√(v / (1 - β₂ᵗ)) + ε)`, with `m` and `v`
/// zero before the first step. Returns the new parameter and moments.
///
/// On flex (with [`fused`] on) one pass over the four arrays on every thread, in place
/// where the tensors own their buffers; elsewhere the same arithmetic in Burn's operations
/// (about a dozen passes, which burn-flex runs on one thread).
pub fn adamw_step<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    moments: Option<(Tensor<B, D>, Tensor<B, D>)>,
    h: AdamWStep,
) -> (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>) {
    #[cfg(feature = "cpu-kernels")]
    let (param, grad, moments) = match cpu::adamw_dispatch((param, grad, moments, h)) {
        Ok(out) => return out,
        Err((p, g, m, _)) => (p, g, m),
    };
    let (f1, f2) = (1.0 - h.beta_1, 1.0 - h.beta_2);
    let (m, v) = match moments {
        Some((m, v)) => (
            m.mul_scalar(h.beta_1).add(grad.clone().mul_scalar(f1)),
            v.mul_scalar(h.beta_2).add(grad.square().mul_scalar(f2)),
        ),
        None => (grad.clone().mul_scalar(f1), grad.square().mul_scalar(f2)),
    };
    let t = h.time as i32;
    let m_hat = m.clone().div_scalar(1.0 - h.beta_1.powi(t));
    let v_hat = v.clone().div_scalar(1.0 - h.beta_2.powi(t));
    let delta = m_hat.div(v_hat.sqrt().add_scalar(h.epsilon));
    let decay = h.lr * h.weight_decay as f64;
    let param = if decay == 0.0 {
        param
    } else {
        param.mul_scalar(1.0 - decay)
    };
    (param - delta.mul_scalar(h.lr), m, v)
}

/// `Σ x²` over every element of `t`, as a one-element tensor. On flex (with [`fused`] on)
/// one pass on every thread over fixed blocks summed in order, so the value does not depend
/// on the thread count; elsewhere Burn's `powi` and `sum`.
pub fn sum_squares<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
    #[cfg(feature = "cpu-kernels")]
    let t = match cpu::sum_squares_dispatch(t) {
        Ok(s) => return s,
        Err(t) => t,
    };
    t.powi_scalar(2).sum()
}

/// `t · factor`. On flex (with [`fused`] on) in place on every thread when `t` owns its
/// buffer; elsewhere Burn's `mul_scalar`.
pub fn scale<B: Backend, const D: usize>(t: Tensor<B, D>, factor: f32) -> Tensor<B, D> {
    #[cfg(feature = "cpu-kernels")]
    let t = match cpu::scale_dispatch(t, factor) {
        Ok(s) => return s,
        Err(t) => t,
    };
    t.mul_scalar(factor)
}

/// The negative log-likelihood of each row's target under the softmax of its logits:
/// `logits: [rows, classes]`, one target per row, the result `[rows]`. A negative target
/// marks a row without one (a language model's last position, or padding): its entry is 0
/// and no gradient flows from it. Cross entropy is the mean over the rows that have one.
///
/// On the CPU backends (see [`on_kernels`]; with [`fused`] on) one pass per row for the
/// log-sum-exp on every thread, and under autodiff one operation whose backward writes
/// `g (softmax - onehot)` in one pass, in place of the logits it kept. Why: a language
/// model's rows are a vocabulary wide (50,257 for GPT-2), and Burn's `log_softmax`, `gather`
/// and their gradients made about a dozen single-threaded passes over (and allocations of)
/// that matrix, the largest in the step: a GPT-2 training step at batch 16 x 32 spent more
/// time in them than in its matrix products (docs/PERFORMANCE.md). Elsewhere Burn's
/// `log_softmax` and `gather`.
pub fn nll<B: Backend>(logits: Tensor<B, 2>, targets: Vec<i64>) -> Tensor<B, 1> {
    let [n, classes] = logits.dims();
    assert_eq!(targets.len(), n, "one target per row");
    assert!(
        targets.iter().all(|&t| t < classes as i64),
        "a target beyond the {classes} classes"
    );
    #[cfg(feature = "cpu-kernels")]
    let (logits, targets) = match cpu::nll_dispatch((logits, targets)) {
        Ok(y) => return y,
        Err(args) => args,
    };
    let device = logits.device();
    let keep: Vec<f32> = targets
        .iter()
        .map(|&t| if t >= 0 { 1.0 } else { 0.0 })
        .collect();
    let idx: Vec<i64> = targets.into_iter().map(|t| t.max(0)).collect();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [n]), &device).reshape([n, 1]);
    let keep = Tensor::<B, 1>::from_data(TensorData::new(keep, [n]), &device);
    burn::tensor::activation::log_softmax(logits, 1)
        .gather(1, idx)
        .reshape([n])
        .neg()
        * keep
}

/// Per row, `KL(softmax(teacher / T) ‖ softmax(logits / T))`: `logits` and `teacher`
/// `[rows, classes]`, the result `[rows]`, 0 for a row whose `keep` is false. A function of
/// `logits` only: no gradient reaches `teacher` (distillation's targets).
///
/// On the CPU backends (with [`fused`] on) a few passes per row on every thread, and under
/// autodiff one operation whose backward writes `g / T · (softmax(logits / T) -
/// softmax(teacher / T))`; elsewhere Burn's `softmax` and `log_softmax`. Why: as for
/// [`nll`], a language model's rows are a vocabulary wide, and the generic form makes three
/// softmax passes of about a dozen single-threaded operations each, and their gradients.
pub fn soft_kl<B: Backend>(
    logits: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    temperature: f64,
    keep: Vec<bool>,
) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    assert_eq!(logits.dims(), teacher.dims(), "student and teacher logits");
    assert_eq!(keep.len(), n, "one keep flag per row");
    assert!(temperature > 0.0, "a positive temperature");
    #[cfg(feature = "cpu-kernels")]
    let (logits, teacher, _, keep) =
        match cpu::soft_kl_dispatch((logits, teacher, temperature, keep)) {
            Ok(y) => return y,
            Err(args) => args,
        };
    use burn::tensor::activation::{log_softmax, softmax};
    let device = logits.device();
    let teacher = teacher.detach();
    let p_t = softmax(teacher.clone() / temperature, 1);
    let log_p_t = log_softmax(teacher / temperature, 1);
    let log_p_s = log_softmax(logits / temperature, 1);
    let keep: Vec<f32> = keep.into_iter().map(|k| f32::from(u8::from(k))).collect();
    let keep = Tensor::<B, 1>::from_data(TensorData::new(keep, [n]), &device);
    (p_t * (log_p_t - log_p_s)).sum_dim(1).reshape([n]) * keep
}

/// `x Φ(x)` (the exact GELU, as BERT's `gelu`): the kernels below on flex, [`exact_gelu`]
/// elsewhere.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "cpu-kernels")]
    let x = match cpu::gelu_dispatch(x, cpu::Gelu::Exact) {
        Ok(y) => return y,
        Err(x) => x,
    };
    exact_gelu(x)
}

/// GPT-2's `gelu_new`, `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`: one pass on every
/// thread on the CPU backends (under autodiff with its own gradient pass), Burn's `tanh`
/// and friends elsewhere ([`tanh_gelu`]). Why: Burn's form is eight elementwise operations
/// and their gradients, single-threaded on flex, about a quarter of a small GPT-2's
/// training step (docs/PERFORMANCE.md).
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "cpu-kernels")]
    let x = match cpu::gelu_dispatch(x, cpu::Gelu::Tanh) {
        Ok(y) => return y,
        Err(x) => x,
    };
    tanh_gelu(x)
}

/// GPT-2's `gelu_new` from Burn's operations (and so its gradient under autodiff).
pub fn tanh_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * c;
    x * (inner.tanh() + 1.0) * 0.5
}

/// `x Φ(x)` from Burn's `erf`: exact, and so is its gradient under autodiff (Burn's own
/// `gelu` operation differentiates the tanh approximation instead).
pub fn exact_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() * ((x / std::f64::consts::SQRT_2).erf() + 1.0) * 0.5
}

/// `x: [batch · seq, heads · d_head]` (or `[batch, seq, heads · d_head]`) as `[batch,
/// heads, seq, d_head]` (contiguous on the CPU backends, a strided view elsewhere).
pub fn split_heads<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    batch: usize,
    heads: usize,
) -> Tensor<B, 4> {
    let (n, w) = (
        x.shape().num_elements() / x.dims()[D - 1].max(1),
        x.dims()[D - 1],
    );
    let (seq, d_head) = (n / batch.max(1), w / heads.max(1));
    #[cfg(feature = "cpu-kernels")]
    let x = match cpu::split_heads_dispatch((x, batch, heads)) {
        Ok(y) => return y,
        Err((x, _, _)) => x,
    };
    x.reshape([batch, seq, heads, d_head]).swap_dims(1, 2)
}

/// `x: [batch, heads, seq, d_head]` as `[batch, seq, heads · d_head]`.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, s, dh] = x.dims();
    #[cfg(feature = "cpu-kernels")]
    let x = match cpu::merge_heads_dispatch(x) {
        Ok(y) => return y,
        Err(x) => x,
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

#[cfg(feature = "cpu-kernels")]
mod cpu;
