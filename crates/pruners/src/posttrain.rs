//! Post-training structured pruning of a fine-tuned model, without retraining (Kwon et al.,
//! "A Fast Post-Training Pruning Framework for Transformers", NeurIPS 2022,
//! <https://arxiv.org/abs/2204.09656>): the diagonal Fisher information of head and neuron
//! masks ranks the units, a search fills a FLOPs budget with the most important ones, a
//! greedy pass inside each layer rearranges which units go with the layer's block-diagonal
//! Fisher, and the kept units are removed physically through the model's spaces.
//!
//! The gradients come from the caller's loss ([`mask_gradients`] takes a closure), so this
//! module knows no dataset or task.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use shears_layers::{LayerConfig, Masks, ModelConfig, ModelInput, SpaceName, Transformer};

use crate::PrunerError;

/// The gradients of the loss with respect to every head and neuron mask variable (all masks
/// at 1), one value per mini-batch: `heads[l][h][b]` is the gradient for head `h` of layer
/// `l` on batch `b` (the gradient of the batch's mean loss, as the reference accumulates it).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MaskGradients {
    /// `[layer][head][batch]`.
    pub heads: Vec<Vec<Vec<f64>>>,
    /// `[layer][neuron][batch]`.
    pub neurons: Vec<Vec<Vec<f64>>>,
    /// Mini-batches seen.
    pub batches: usize,
}

/// Per-unit importance: the diagonal of the empirical Fisher information, the sum over the
/// mini-batches of the squared mask gradients.
#[derive(Debug, Clone, PartialEq)]
pub struct Importance {
    /// `[layer][head]`.
    pub heads: Vec<Vec<f64>>,
    /// `[layer][neuron]`.
    pub neurons: Vec<Vec<f64>>,
}

impl MaskGradients {
    /// The diagonal Fisher.
    pub fn fisher(&self) -> Importance {
        let sq = |units: &Vec<Vec<Vec<f64>>>| {
            units
                .iter()
                .map(|layer| {
                    layer
                        .iter()
                        .map(|g| g.iter().map(|x| x * x).sum())
                        .collect()
                })
                .collect()
        };
        Importance {
            heads: sq(&self.heads),
            neurons: sq(&self.neurons),
        }
    }
}

/// Masks of ones on every head and neuron of `config`, tracked for gradients.
pub fn mask_variables<B: AutodiffBackend>(config: &ModelConfig, device: &B::Device) -> Masks<B> {
    let heads = Tensor::<B, 2>::ones([config.n_layers(), config.max_heads()], device);
    let ffn = config
        .layers
        .iter()
        .map(|l| Tensor::<B, 1>::ones([l.d_ff], device).require_grad())
        .collect();
    Masks {
        heads: Some(heads.require_grad()),
        ffn: Some(ffn),
        hidden: None,
    }
}

/// Collects [`MaskGradients`] over `batches` mini-batches: for each, `loss(batch, masks)`
/// runs the model with `masks` (from [`mask_variables`]) in its input and returns the
/// batch's mean loss; its gradient with respect to the masks is recorded. The model's own
/// parameters should not require gradients (load it on the autodiff backend with
/// `from_inner`), so the backward pass computes only what the masks need.
pub fn mask_gradients<B: AutodiffBackend>(
    config: &ModelConfig,
    batches: usize,
    device: &B::Device,
    mut loss: impl FnMut(usize, Masks<B>) -> Tensor<B, 1>,
) -> MaskGradients {
    let n_layers = config.n_layers();
    let mut out = MaskGradients {
        heads: config
            .layers
            .iter()
            .map(|l| vec![Vec::with_capacity(batches); l.n_heads])
            .collect(),
        neurons: config
            .layers
            .iter()
            .map(|l| vec![Vec::with_capacity(batches); l.d_ff])
            .collect(),
        batches,
    };
    let host = |t: Tensor<B::InnerBackend, 1>| -> Vec<f64> {
        t.into_data()
            .convert::<f64>()
            .to_vec()
            .expect("f64 gradients")
    };
    for b in 0..batches {
        let masks = mask_variables::<B>(config, device);
        let grads = loss(b, masks.clone()).backward();
        let width = config.max_heads();
        if let Some(g) = masks.heads.as_ref().and_then(|h| h.grad(&grads)) {
            let g = host(g.reshape([n_layers * width]));
            for (l, layer) in out.heads.iter_mut().enumerate() {
                for (h, unit) in layer.iter_mut().enumerate() {
                    unit.push(g[l * width + h]);
                }
            }
        } else {
            // No head reached the loss (a model without heads): zero gradients.
            out.heads.iter_mut().flatten().for_each(|u| u.push(0.0));
        }
        for (l, m) in masks.ffn.iter().flatten().enumerate() {
            let g = m
                .grad(&grads)
                .map(host)
                .unwrap_or_else(|| vec![0.0; out.neurons[l].len()]);
            for (unit, x) in out.neurons[l].iter_mut().zip(g) {
                unit.push(x);
            }
        }
    }
    out
}

/// What keeping units costs, per layer: in encoder FLOPs per token at one sequence length
/// ([`UnitCosts::flops`], exact), or in measured latency as a fraction of the dense model's
/// ([`UnitCosts::latency`], fitted). The cost of a selection is `fixed` plus, per layer, the
/// cost of the number of heads and of neurons it keeps there.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitCosts {
    /// What stays with every head and neuron removed (FLOPs: the factorized projections'
    /// fixed parts; latency: embeddings, norms, the task head, the layers' fixed work).
    pub fixed: f64,
    /// `heads[l][k]`: the cost of keeping `k` heads of layer `l` (`k` = 0 to all; 0 at 0,
    /// non-decreasing).
    pub heads: Vec<Vec<f64>>,
    /// `neurons[l][k]`: the same for neurons.
    pub neurons: Vec<Vec<f64>>,
    /// The whole model's cost.
    pub total: f64,
}

impl UnitCosts {
    /// The costs of `config`'s units at sequence length `seq`, from
    /// [`ModelConfig::flops_per_token`] of the model with units removed, so that they
    /// add up to it (a unit's FLOPs do not depend on how many others its layer keeps).
    pub fn flops(config: &ModelConfig, seq: usize) -> Result<Self, PrunerError> {
        let flops = |c: &ModelConfig| c.flops_per_token(seq) as f64;
        let total = flops(config);
        let mut empty = config.clone();
        let (mut heads, mut neurons) = (Vec::new(), Vec::new());
        for (l, lc) in config.layers.iter().enumerate() {
            let per_count = |space: SpaceName, n: usize| -> Result<Vec<f64>, PrunerError> {
                let one = if n == 0 {
                    0.0
                } else {
                    let keep: Vec<usize> = (0..n - 1).collect();
                    total - flops(&config.with_kept(&space, &keep)?)
                };
                Ok((0..=n).map(|k| k as f64 * one).collect())
            };
            heads.push(per_count(SpaceName::Heads(l), lc.n_heads)?);
            neurons.push(per_count(SpaceName::Ffn(l), lc.d_ff)?);
            empty = empty.with_kept(&SpaceName::Heads(l), &[])?;
            empty = empty.with_kept(&SpaceName::Ffn(l), &[])?;
        }
        Ok(Self {
            fixed: flops(&empty),
            heads,
            neurons,
            total,
        })
    }

    /// Latency costs from measured curves ([`measure_curves`]): each group's curves are
    /// its layers' share of the model's latency, as a fraction of the dense model's, against
    /// the units each keeps. Each curve is made non-decreasing (isotonic least squares:
    /// measurement noise must not make a unit look free) and interpolated linearly between
    /// its points; `total` is 1 and `fixed` what the curves leave of it with every unit kept.
    ///
    /// Errors: [`PrunerError::LatencyCurve`] for a layer in no group or in two, or a curve
    /// that does not run from 0 to the layer's width in increasing counts with finite times.
    pub fn latency(config: &ModelConfig, groups: &[CurveGroup]) -> Result<Self, PrunerError> {
        let n = config.n_layers();
        let mut curves: Vec<Option<(Vec<f64>, Vec<f64>)>> = vec![None; n];
        for g in groups {
            for &l in &g.layers {
                let bad = |message: String| PrunerError::LatencyCurve { layer: l, message };
                let lc = config
                    .layers
                    .get(l)
                    .ok_or_else(|| bad(format!("the model has {n} layers")))?;
                if curves[l].is_some() {
                    return Err(bad("measured in two groups".into()));
                }
                let curve = |c: &LatencyCurve, width: usize, kind: &str| {
                    c.per_count(width).map_err(|m| bad(format!("{kind}: {m}")))
                };
                curves[l] = Some((
                    curve(&g.heads, lc.n_heads, "heads")?,
                    curve(&g.neurons, lc.d_ff, "neurons")?,
                ));
            }
        }
        let (heads, neurons): (Vec<_>, Vec<_>) = curves
            .into_iter()
            .enumerate()
            .map(|(l, c)| {
                c.ok_or_else(|| PrunerError::LatencyCurve {
                    layer: l,
                    message: "not measured".into(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        let full: f64 = heads.iter().chain(&neurons).map(|c| c[c.len() - 1]).sum();
        Ok(Self {
            fixed: 1.0 - full,
            heads,
            neurons,
            total: 1.0,
        })
    }

    /// The cost of a selection.
    pub fn of(&self, s: &Selection) -> f64 {
        let part = |kept: Vec<usize>, costs: &[Vec<f64>]| -> f64 {
            kept.iter().zip(costs).map(|(&k, c)| c[k]).sum()
        };
        self.fixed + part(s.heads_kept(), &self.heads) + part(s.neurons_kept(), &self.neurons)
    }
}

/// A layer's measured latency against the units of one kind it keeps: `time[i]` with
/// `kept[i]` units (`kept` increasing from 0 to the layer's width; only the differences
/// from `time[0]` count).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatencyCurve {
    /// Units kept at each measured point.
    pub kept: Vec<usize>,
    /// The layer's latency there (a fraction of the dense model's).
    pub time: Vec<f64>,
}

/// Layers of the same shape, measured together, and their per-layer latency curves.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurveGroup {
    /// The layers.
    pub layers: Vec<usize>,
    /// Each layer's latency against its heads kept.
    pub heads: LatencyCurve,
    /// Each layer's latency against its neurons kept.
    pub neurons: LatencyCurve,
}

/// The counts a curve over `n` units is measured at: every count up to 16 units; beyond,
/// 0, 1 and every eighth of `n` (the step from 0 to 1 holds a block's fixed work).
pub fn curve_points(n: usize) -> Vec<usize> {
    let mut k: Vec<usize> = if n <= 16 {
        (0..=n).collect()
    } else {
        [0, 1]
            .into_iter()
            .chain((1..=8).map(|i| (i * n).div_ceil(8)))
            .collect()
    };
    k.dedup();
    k
}

/// Measures the latency curves of `config`'s layers: layers of the same shape form a
/// group; for each group, kind (heads, neurons) and count `k` of [`curve_points`], every
/// layer of the group keeps its first `k` units of that kind and the rest of the model
/// stays whole, and `ratio` times that selection (the latency of the model pruned to it
/// over the dense model's; the dense model itself counts 1 without a call). A layer's curve
/// is the group's latency saved, divided among its layers.
pub fn measure_curves<E>(
    config: &ModelConfig,
    mut ratio: impl FnMut(&Selection) -> Result<f64, E>,
) -> Result<Vec<CurveGroup>, E> {
    let mut groups: Vec<(&LayerConfig, Vec<usize>)> = Vec::new();
    for (l, lc) in config.layers.iter().enumerate() {
        match groups.iter_mut().find(|(c, _)| *c == lc) {
            Some((_, ls)) => ls.push(l),
            None => groups.push((lc, vec![l])),
        }
    }
    let mut out = Vec::new();
    for (lc, layers) in groups {
        let mut curve = |width: usize, heads: bool| -> Result<LatencyCurve, E> {
            let kept = curve_points(width);
            let mut time = Vec::with_capacity(kept.len());
            for &k in &kept {
                let r = if k == width {
                    1.0
                } else {
                    let mut sel = Selection::all(config);
                    for &l in &layers {
                        let units = if heads {
                            &mut sel.heads[l]
                        } else {
                            &mut sel.neurons[l]
                        };
                        units.iter_mut().enumerate().for_each(|(i, u)| *u = i < k);
                    }
                    ratio(&sel)?
                };
                time.push(r / layers.len() as f64);
            }
            let zero = time[0];
            time.iter_mut().for_each(|t| *t -= zero);
            Ok(LatencyCurve { kept, time })
        };
        let heads = curve(lc.n_heads, true)?;
        let neurons = curve(lc.d_ff, false)?;
        out.push(CurveGroup {
            layers,
            heads,
            neurons,
        });
    }
    Ok(out)
}

impl LatencyCurve {
    /// The curve made non-decreasing (pool-adjacent-violators, equal weights) and
    /// interpolated linearly at every count from 0 to `n`.
    pub fn per_count(&self, n: usize) -> Result<Vec<f64>, String> {
        let (k, t) = (&self.kept, &self.time);
        if k.len() != t.len() || k.is_empty() {
            return Err(format!(
                "{} counts and {} times: one time per count, at least one",
                k.len(),
                t.len()
            ));
        }
        if k[0] != 0 || k[k.len() - 1] != n || k.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!(
                "kept counts {k:?} must increase from 0 to the layer's {n} units"
            ));
        }
        if let Some(v) = t.iter().find(|v| !v.is_finite()) {
            return Err(format!("time {v} is not finite"));
        }
        let fitted = isotonic(t);
        let mut out = Vec::with_capacity(n + 1);
        for w in 0..k.len() - 1 {
            let (k0, k1, t0, t1) = (k[w], k[w + 1], fitted[w], fitted[w + 1]);
            for c in k0..k1 {
                out.push(t0 + (t1 - t0) * (c - k0) as f64 / (k1 - k0) as f64);
            }
        }
        out.push(fitted[fitted.len() - 1]);
        let zero = out[0];
        Ok(out.into_iter().map(|v| v - zero).collect())
    }
}

/// The non-decreasing sequence closest to `v` in squared error (pool adjacent violators).
fn isotonic(v: &[f64]) -> Vec<f64> {
    // Blocks of (mean, size), merged while a block's mean is below its predecessor's.
    let mut blocks: Vec<(f64, usize)> = Vec::new();
    for &x in v {
        blocks.push((x, 1));
        while blocks.len() > 1 && blocks[blocks.len() - 2].0 > blocks[blocks.len() - 1].0 {
            let (m1, n1) = blocks.pop().expect("two blocks");
            let (m0, n0) = blocks.pop().expect("two blocks");
            let n = n0 + n1;
            blocks.push(((m0 * n0 as f64 + m1 * n1 as f64) / n as f64, n));
        }
    }
    blocks
        .into_iter()
        .flat_map(|(m, n)| std::iter::repeat_n(m, n))
        .collect()
}

/// Which heads and neurons stay, per layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// `[layer][head]`: kept.
    pub heads: Vec<Vec<bool>>,
    /// `[layer][neuron]`: kept.
    pub neurons: Vec<Vec<bool>>,
}

impl Selection {
    /// Every unit of `config`.
    pub fn all(config: &ModelConfig) -> Self {
        Self {
            heads: config
                .layers
                .iter()
                .map(|l| vec![true; l.n_heads])
                .collect(),
            neurons: config.layers.iter().map(|l| vec![true; l.d_ff]).collect(),
        }
    }

    /// The summed importance of the kept units.
    pub fn score(&self, importance: &Importance) -> f64 {
        let sum = |kept: &[Vec<bool>], imp: &[Vec<f64>]| -> f64 {
            kept.iter()
                .zip(imp)
                .flat_map(|(k, i)| k.iter().zip(i).filter(|(k, _)| **k).map(|(_, i)| *i))
                .sum()
        };
        sum(&self.heads, &importance.heads) + sum(&self.neurons, &importance.neurons)
    }

    /// Kept heads per layer.
    pub fn heads_kept(&self) -> Vec<usize> {
        self.heads
            .iter()
            .map(|l| l.iter().filter(|&&k| k).count())
            .collect()
    }

    /// Kept neurons per layer.
    pub fn neurons_kept(&self) -> Vec<usize> {
        self.neurons
            .iter()
            .map(|l| l.iter().filter(|&&k| k).count())
            .collect()
    }

    /// The selection as masks of 0 and 1 (the forward input's, [`Masks`]).
    pub fn masks<B: Backend>(&self, config: &ModelConfig, device: &B::Device) -> Masks<B> {
        self.scaled_masks(&Scales::ones(config), config, device)
    }

    /// The selection as masks: 0 for a removed unit, its scale for a kept one.
    pub fn scaled_masks<B: Backend>(
        &self,
        scales: &Scales,
        config: &ModelConfig,
        device: &B::Device,
    ) -> Masks<B> {
        let value = |k: bool, s: f64| if k { s as f32 } else { 0.0 };
        let width = config.max_heads();
        let mut heads = vec![0.0f32; config.n_layers() * width];
        for (l, layer) in self.heads.iter().enumerate() {
            for (h, &k) in layer.iter().enumerate() {
                heads[l * width + h] = value(k, scales.heads[l][h]);
            }
        }
        let ffn = self
            .neurons
            .iter()
            .zip(&scales.neurons)
            .map(|(layer, s)| {
                let v: Vec<f32> = layer.iter().zip(s).map(|(&k, &s)| value(k, s)).collect();
                let n = v.len();
                Tensor::from_data(TensorData::new(v, [n]), device)
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
}

/// Units ranked by importance, most important first (ties: earlier layer, then lower index).
fn ranked(importance: &[Vec<f64>]) -> Vec<(usize, usize)> {
    let mut units: Vec<(usize, usize)> = importance
        .iter()
        .enumerate()
        .flat_map(|(l, layer)| (0..layer.len()).map(move |i| (l, i)))
        .collect();
    units.sort_by(|a, b| {
        importance[b.0][b.1]
            .total_cmp(&importance[a.0][a.1])
            .then(a.cmp(b))
    });
    units
}

/// The mask search: the selection of highest total importance whose cost is at most
/// `budget`. For every number of heads kept (0 to all), the most important heads are kept
/// and the budget left is filled with the most important neurons, in rank order, while they
/// fit (each unit costing what its layer's cost grows by when it is added); the best of
/// these candidates wins (on a tie, fewer heads). With FLOPs costs of an unpruned model
/// (one kind costing the same in every layer) this is the optimum over all selections;
/// with latency curves it is the reference's heuristic.
///
/// Errors: [`PrunerError::TargetOutOfReach`] when even removing every unit leaves more than
/// the budget.
pub fn search(
    importance: &Importance,
    costs: &UnitCosts,
    budget: f64,
) -> Result<Selection, PrunerError> {
    if costs.fixed > budget {
        return Err(PrunerError::TargetOutOfReach {
            target: 1.0 - budget / costs.total,
            reachable: 1.0 - costs.fixed / costs.total,
        });
    }
    let heads = ranked(&importance.heads);
    let neurons = ranked(&importance.neurons);
    let layers = importance.heads.len();
    let step = |c: &[Vec<f64>], kept: &mut [usize], l: usize| -> f64 {
        kept[l] += 1;
        c[l][kept[l]] - c[l][kept[l] - 1]
    };
    let mut best: Option<(f64, usize, usize)> = None;
    let (mut head_cost, mut head_score) = (costs.fixed, 0.0);
    let mut heads_kept = vec![0; layers];
    for nh in 0..=heads.len() {
        if nh > 0 {
            let (l, h) = heads[nh - 1];
            head_cost += step(&costs.heads, &mut heads_kept, l);
            head_score += importance.heads[l][h];
        }
        if head_cost > budget {
            break;
        }
        let (mut cost, mut score, mut nn) = (head_cost, head_score, 0);
        let mut kept = vec![0; layers];
        for &(l, i) in &neurons {
            let c = step(&costs.neurons, &mut kept, l);
            if cost + c > budget {
                break;
            }
            cost += c;
            score += importance.neurons[l][i];
            nn += 1;
        }
        if best.is_none_or(|(s, _, _)| score > s) {
            best = Some((score, nh, nn));
        }
    }
    let (_, nh, nn) = best.expect("0 heads fit the budget");
    let mut s = Selection {
        heads: importance
            .heads
            .iter()
            .map(|l| vec![false; l.len()])
            .collect(),
        neurons: importance
            .neurons
            .iter()
            .map(|l| vec![false; l.len()])
            .collect(),
    };
    for &(l, h) in &heads[..nh] {
        s.heads[l][h] = true;
    }
    for &(l, i) in &neurons[..nn] {
        s.neurons[l][i] = true;
    }
    Ok(s)
}

/// Mask rearrangement: inside each layer, with as many heads (neurons) removed as
/// `selection` removes there, chooses which go with the layer's block of the Fisher
/// information instead of its diagonal: removing a set `S` is estimated to cost
/// `‖Σ_{i∈S} g_i‖²`, `g_i` the unit's vector of per-batch gradients, so units whose
/// gradients cancel can go together. Starts from the units of smallest diagonal Fisher and
/// makes one greedy pass over the kept units, least important first: each is added to the
/// removed set and the member whose return lowers the estimate most goes back (the
/// reference's procedure).
pub fn rearrange(selection: &Selection, grads: &MaskGradients) -> Selection {
    let layer = |kept: &[bool], g: &[Vec<f64>]| -> Vec<bool> {
        let n = kept.len();
        let k = kept.iter().filter(|&&x| !x).count();
        if k == 0 || k == n {
            return kept.to_vec();
        }
        let diag: Vec<f64> = g.iter().map(|v| v.iter().map(|x| x * x).sum()).collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| diag[a].total_cmp(&diag[b]).then(a.cmp(&b)));
        let mut removed: Vec<usize> = order[..k].to_vec();
        let batches = g.first().map_or(0, Vec::len);
        let mut sum = vec![0.0; batches];
        for &i in &removed {
            sum.iter_mut().zip(&g[i]).for_each(|(s, x)| *s += x);
        }
        for &u in &order[k..] {
            sum.iter_mut().zip(&g[u]).for_each(|(s, x)| *s += x);
            removed.push(u);
            let cost =
                |j: usize| -> f64 { sum.iter().zip(&g[j]).map(|(s, x)| (s - x) * (s - x)).sum() };
            let (pos, _) = removed.iter().enumerate().map(|(p, &j)| (p, cost(j))).fold(
                (0, f64::INFINITY),
                |best, c| if c.1 < best.1 { c } else { best },
            );
            let back = removed.swap_remove(pos);
            sum.iter_mut().zip(&g[back]).for_each(|(s, x)| *s -= x);
        }
        let mut out = vec![true; n];
        for i in removed {
            out[i] = false;
        }
        out
    };
    Selection {
        heads: selection
            .heads
            .iter()
            .zip(&grads.heads)
            .map(|(k, g)| layer(k, g))
            .collect(),
        neurons: selection
            .neurons
            .iter()
            .zip(&grads.neurons)
            .map(|(k, g)| layer(k, g))
            .collect(),
    }
}

/// Removes every unit `selection` does not keep: a smaller, ordinary model.
pub fn apply_selection<B: Backend>(
    model: Transformer<B>,
    selection: &Selection,
) -> Result<Transformer<B>, PrunerError> {
    let kept = |units: &[bool]| -> Vec<usize> {
        units
            .iter()
            .enumerate()
            .filter(|(_, k)| **k)
            .map(|(i, _)| i)
            .collect()
    };
    let mut model = model;
    for (l, units) in selection.heads.iter().enumerate() {
        if units.iter().any(|k| !k) {
            model = model.keep(SpaceName::Heads(l), &kept(units))?;
        }
    }
    for (l, units) in selection.neurons.iter().enumerate() {
        if units.iter().any(|k| !k) {
            model = model.keep(SpaceName::Ffn(l), &kept(units))?;
        }
    }
    Ok(model)
}

/// Real-valued scales of every head and neuron (1: unchanged; a removed unit's is unused):
/// what mask tuning finds, folded into the output projections by [`fold_scales`].
#[derive(Debug, Clone, PartialEq)]
pub struct Scales {
    /// `[layer][head]`.
    pub heads: Vec<Vec<f64>>,
    /// `[layer][neuron]`.
    pub neurons: Vec<Vec<f64>>,
}

impl Scales {
    /// All ones.
    pub fn ones(config: &ModelConfig) -> Self {
        Self {
            heads: config.layers.iter().map(|l| vec![1.0; l.n_heads]).collect(),
            neurons: config.layers.iter().map(|l| vec![1.0; l.d_ff]).collect(),
        }
    }
}

/// Which block of a layer a fit is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Block {
    /// The attention block (head scales).
    Attention,
    /// The feed-forward block (neuron scales).
    Ffn,
}

/// What mask tuning did to one block.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum FitOutcome {
    /// Scales were fitted and kept.
    Tuned {
        /// Squared error of the block's output against the target with the binary mask,
        /// over the target's squared norm.
        error_before: f64,
        /// The same with the fitted scales.
        error_after: f64,
        /// The smallest and largest scale.
        range: [f64; 2],
    },
    /// The block keeps no unit.
    NothingKept,
    /// A scale left [-[`MAX_SCALE`], [`MAX_SCALE`]] (or was not finite): this block and every
    /// later one keep their binary masks, as the reference does.
    OutOfRange {
        /// The offending scale.
        scale: f64,
    },
    /// An earlier block's fit was out of range.
    Stopped,
}

/// One block's fit.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BlockFit {
    /// Layer.
    pub layer: usize,
    /// Block.
    pub block: Block,
    /// Units kept.
    pub units: usize,
    /// What happened.
    pub outcome: FitOutcome,
}

/// The largest scale magnitude mask tuning accepts (the reference's bound).
pub const MAX_SCALE: f64 = 10.0;

/// A projection's `[in, out]` matrix (the product of the factors when factorized).
fn matrix<B: Backend>(p: &shears_layers::Projection<B>) -> Tensor<B, 2> {
    match (&p.weight, &p.first, &p.second) {
        (Some(w), _, _) => w.val(),
        (None, Some(a), Some(b)) => a.val().matmul(b.val()),
        _ => unreachable!("a projection is dense or has both factors"),
    }
}

/// The inputs of one layer's blocks in one forward pass, over the rows that count.
struct LayerView<B: Backend> {
    /// The layer's input (the residual stream).
    x: Tensor<B, 2>,
    /// The attention output projection's input (heads' outputs, head masks applied).
    ctx: Tensor<B, 2>,
    /// The feed-forward block's input.
    ffn_in: Tensor<B, 2>,
    /// The feed-forward output projection's input (activations, neuron masks applied).
    h: Tensor<B, 2>,
}

/// Runs `model` on `input` with `masks` and returns layer `l`'s view over the real tokens
/// (only each example's first token when `first_only`).
fn layer_view<B: Backend>(
    model: &Transformer<B>,
    input: &ModelInput<B>,
    masks: Masks<B>,
    l: usize,
    first_only: bool,
) -> LayerView<B> {
    let [b, s] = input.ids.dims();
    let device = input.ids.device();
    let real: Vec<usize> = (input.real_tokens().into_iter().enumerate())
        .filter(|(_, r)| *r)
        .map(|(i, _)| i)
        .collect();
    // Positions within the captured (real) rows that count.
    let within: Option<Vec<i64>> = first_only.then(|| {
        (0..real.len())
            .filter(|&k| real[k].is_multiple_of(s))
            .map(|k| k as i64)
            .collect()
    });
    let index = |v: Vec<i64>| {
        let n = v.len();
        Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), &device)
    };
    let pick = |t: Tensor<B, 2>| match &within {
        Some(w) => t.select(0, index(w.clone())),
        None => t,
    };
    let capture = shears_layers::Capture::new();
    let out = model.forward(
        input
            .clone()
            .with_masks(masks)
            .with_capture(capture.clone())
            .with_hidden_states(),
    );
    let records = capture.take();
    let find = |path: String| -> Tensor<B, 2> {
        let r = records
            .iter()
            .find(|c| c.paths.contains(&path))
            .unwrap_or_else(|| panic!("no input recorded for `{path}`"));
        pick(r.input.clone())
    };
    let d = model.config().d_model;
    let x = out.hidden_states.expect("hidden states")[l]
        .clone()
        .reshape([b * s, d])
        .select(0, index(real.iter().map(|&i| i as i64).collect()));
    LayerView {
        x: pick(x),
        ctx: find(format!("layers.{l}.attention.output")),
        ffn_in: find(format!("layers.{l}.ffn.up")),
        h: find(format!("layers.{l}.ffn.down")),
    }
}

/// `[n]` host values of a tensor.
fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec().expect("f64 values")
}

/// Least squares for the scales of one block from its normal equations: `gram` (`k x k`),
/// `rhs` (`k`) and the target's squared norm; a ridge of `1e-6` of the mean diagonal pulls
/// toward 1 so that a singular system stays solvable.
fn fit(gram: &[f64], rhs: &[f64], target: f64, k: usize) -> (Vec<f64>, FitOutcome) {
    let mean_diag = (0..k).map(|i| gram[i * k + i]).sum::<f64>() / k.max(1) as f64;
    let ridge = 1e-6 * mean_diag.max(f64::MIN_POSITIVE);
    let mut a = gram.to_vec();
    let mut b = rhs.to_vec();
    for i in 0..k {
        a[i * k + i] += ridge;
        b[i] += ridge;
    }
    let m = shears_factorize::solve_symmetric(&a, k, &b);
    let error = |m: &[f64]| {
        let mut e = target;
        for i in 0..k {
            e -= 2.0 * m[i] * rhs[i];
            for j in 0..k {
                e += m[i] * gram[i * k + j] * m[j];
            }
        }
        e.max(0.0) / target.max(f64::MIN_POSITIVE)
    };
    if let Some(&bad) = m.iter().find(|v| !v.is_finite() || v.abs() > MAX_SCALE) {
        return (m, FitOutcome::OutOfRange { scale: bad });
    }
    let lo = m.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = m.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let outcome = FitOutcome::Tuned {
        error_before: error(&vec![1.0; k]),
        error_after: error(&m),
        range: [lo, hi],
    };
    (m, outcome)
}

fn kept_indices(units: &[bool]) -> Vec<usize> {
    (0..units.len()).filter(|&i| units[i]).collect()
}

/// Mask tuning (the paper's layer-wise reconstruction): layer by layer, first the attention
/// block and then the feed-forward block, finds real-valued scales of the student's kept
/// heads (neurons) so that the block's output plus the residual stream entering it matches
/// the teacher's at the same point (BERT: the sum before the block's LayerNorm; GPT-2: the
/// residual stream after the block), by least squares over the real tokens of `inputs`.
/// The student runs with the scales already fitted in earlier blocks, so each block also
/// corrects what earlier removals changed. With `classifier`, the last layer's
/// feed-forward block fits only each example's first token, the one the pooler reads.
///
/// The teacher is `teacher` masked by `teacher_selection` (the reference uses the same model
/// pruned less, see [`teacher_target`]); pass a different model to fit toward it.
pub fn tune_scales<B: Backend>(
    student: &Transformer<B>,
    selection: &Selection,
    teacher: &Transformer<B>,
    teacher_selection: &Selection,
    inputs: &[ModelInput<B>],
    classifier: bool,
) -> (Scales, Vec<BlockFit>) {
    let config = student.config().clone();
    let pre_norm = config.family.arch().pre_norm;
    let n_layers = config.n_layers();
    let mut scales = Scales::ones(&config);
    let mut fits = Vec::new();
    let mut stopped = false;
    for l in 0..n_layers {
        let layer = &student.layers[l];
        let t_layer = &teacher.layers[l];
        let first_only = classifier && l + 1 == n_layers;
        let d = config.d_model;
        let w_o = matrix(&layer.attention.output);
        let w_2 = matrix(&layer.ffn.down);
        let bias = |p: &shears_layers::Projection<B>| match &p.bias {
            Some(b) => b.val().reshape([1, d]),
            None => Tensor::zeros([1, d], &w_o.device()),
        };
        // The residual stream entering the feed-forward block: BERT's LayerNorm output,
        // GPT-2's sum after attention.
        let resid = |v: &LayerView<B>, w: &Tensor<B, 2>, p| {
            if pre_norm {
                v.x.clone() + v.ctx.clone().matmul(w.clone()) + bias(p)
            } else {
                v.ffn_in.clone()
            }
        };
        // The teacher's targets of both blocks, per batch, without the output projections'
        // biases (the student's cancel them): computed once per layer.
        let mut targets: Vec<[Tensor<B, 2>; 2]> = Vec::new();
        for block in [Block::Attention, Block::Ffn] {
            let kept = match block {
                Block::Attention => kept_indices(&selection.heads[l]),
                Block::Ffn => kept_indices(&selection.neurons[l]),
            };
            let k = kept.len();
            if stopped || k == 0 {
                fits.push(BlockFit {
                    layer: l,
                    block,
                    units: k,
                    outcome: if k == 0 {
                        FitOutcome::NothingKept
                    } else {
                        FitOutcome::Stopped
                    },
                });
                continue;
            }
            if targets.is_empty() {
                let t_w_o = matrix(&t_layer.attention.output);
                let t_w_2 = matrix(&t_layer.ffn.down);
                targets = inputs
                    .iter()
                    .map(|input| {
                        let masks =
                            teacher_selection.masks::<B>(teacher.config(), &input.ids.device());
                        let tv = layer_view(teacher, input, masks, l, first_only);
                        let attention = tv.x.clone() + tv.ctx.clone().matmul(t_w_o.clone());
                        let ffn = resid(&tv, &t_w_o, &t_layer.attention.output)
                            + tv.h.clone().matmul(t_w_2.clone());
                        [attention, ffn]
                    })
                    .collect();
            }
            let mut gram: Option<Tensor<B, 2>> = None;
            let mut rhs: Option<Tensor<B, 1>> = None;
            let mut target = 0.0;
            for (input, t) in inputs.iter().zip(&targets) {
                let device = input.ids.device();
                let sv = layer_view(
                    student,
                    input,
                    selection.scaled_masks(&scales, &config, &device),
                    l,
                    first_only,
                );
                let (g, c, r) = match block {
                    Block::Attention => {
                        let r = t[0].clone() - sv.x.clone();
                        let rows = sv.ctx.dims()[0];
                        let dh = w_o.dims()[0] / config.layers[l].n_heads;
                        // One column per kept head: its share of the block's output.
                        let parts: Vec<Tensor<B, 2>> = kept
                            .iter()
                            .map(|&h| {
                                sv.ctx
                                    .clone()
                                    .slice([0..rows, h * dh..(h + 1) * dh])
                                    .matmul(w_o.clone().slice([h * dh..(h + 1) * dh, 0..d]))
                                    .reshape([1, rows * d])
                            })
                            .collect();
                        let a = Tensor::cat(parts, 0);
                        let g = a.clone().matmul(a.clone().transpose());
                        let c = a.matmul(r.clone().reshape([rows * d, 1])).reshape([k]);
                        (g, c, r)
                    }
                    Block::Ffn => {
                        let r = t[1].clone() - resid(&sv, &w_o, &layer.attention.output);
                        let idx = Tensor::<B, 1, Int>::from_data(
                            TensorData::new(
                                kept.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                                [k],
                            ),
                            &device,
                        );
                        let h = sv.h.select(1, idx.clone());
                        let w = w_2.clone().select(0, idx);
                        let g = w.clone().matmul(w.clone().transpose())
                            * h.clone().transpose().matmul(h.clone());
                        let c = (h * r.clone().matmul(w.transpose()))
                            .sum_dim(0)
                            .reshape([k]);
                        (g, c, r)
                    }
                };
                target += host(r.clone().powi_scalar(2).sum())[0];
                gram = Some(match gram {
                    Some(acc) => acc + g,
                    None => g,
                });
                rhs = Some(match rhs {
                    Some(acc) => acc + c,
                    None => c,
                });
            }
            let (Some(gram), Some(rhs)) = (gram, rhs) else {
                continue;
            };
            let (m, outcome) = fit(&host(gram), &host(rhs), target, k);
            if let FitOutcome::OutOfRange { .. } = outcome {
                stopped = true;
            } else {
                let dst = match block {
                    Block::Attention => &mut scales.heads[l],
                    Block::Ffn => &mut scales.neurons[l],
                };
                for (&u, &v) in kept.iter().zip(&m) {
                    dst[u] = v;
                }
            }
            fits.push(BlockFit {
                layer: l,
                block,
                units: k,
                outcome,
            });
        }
    }
    (scales, fits)
}

/// The reference's target for mask tuning: the same search at the square root of the
/// fraction of the cost kept (a model pruned about half as far), binary, not rearranged.
pub fn teacher_target(
    importance: &Importance,
    costs: &UnitCosts,
    fraction: f64,
) -> Result<Selection, PrunerError> {
    search(importance, costs, fraction.sqrt() * costs.total)
}

/// Folds head and neuron scales into the output projections: head `h`'s rows of
/// `attention.output` and neuron `j`'s row of `ffn.down` (of the first factor when
/// factorized) are multiplied by its scale, so the model computes with masks of ones what
/// it computed with the scales as masks.
pub fn fold_scales<B: Backend>(
    model: Transformer<B>,
    scales: &Scales,
) -> Result<Transformer<B>, PrunerError> {
    let config = model.config().clone();
    let device = model.devices()[0].clone();
    let mut tensors = shears_layers::tensorio::export(&model);
    let mut scale_rows = |path: &str, row_scales: &[f64], width: usize| {
        for suffix in ["weight", "first"] {
            if let Some(t) = tensors.get_mut(&format!("{path}.{suffix}")) {
                let cols = t.shape[1];
                for (u, &s) in row_scales.iter().enumerate() {
                    for row in u * width..(u + 1) * width {
                        for v in &mut t.data[row * cols..(row + 1) * cols] {
                            *v *= s as f32;
                        }
                    }
                }
            }
        }
    };
    for (l, lc) in config.layers.iter().enumerate() {
        scale_rows(
            &format!("layers.{l}.attention.output"),
            &scales.heads[l],
            lc.d_head,
        );
        scale_rows(&format!("layers.{l}.ffn.down"), &scales.neurons[l], 1);
    }
    Ok(shears_layers::tensorio::import(model, &tensors, &device)?)
}
