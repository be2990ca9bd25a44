//! Factorizing a shears BERT or GPT-2: calibration statistics of every projection's inputs
//! gathered through [`Capture`] on real batches, ranks chosen to a parameter budget (or given),
//! and the smaller model (ranks in its config, so it saves and loads) with a report per
//! projection.

use std::collections::BTreeMap;

use burn::prelude::*;
use shears_factorize::{
    Calibration, FactorizeError, LowRankSolution, Method, Rank, Spectrum, Weights, factorize,
    max_rank_with_speedup, spectrum,
};
use shears_layers::{Capture, ModelInput, PROJECTIONS, Transformer, tensorio};
use shears_spaces::{HostTensor, TensorMap};

use crate::PrunerError;

/// Calibration statistics of every projection's input, accumulated over batches.
#[derive(Debug, Clone, Default)]
pub struct Calibrator {
    /// Statistics by the path of the first projection reading the input.
    stats: BTreeMap<String, Calibration>,
    /// Projection path -> key in `stats` (query, key and value share one input).
    alias: BTreeMap<String, String>,
    tokens: usize,
}

impl Calibrator {
    /// Nothing observed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `model` on `input` and adds what every projection saw (padding excluded).
    pub fn observe<B: Backend>(
        &mut self,
        model: &Transformer<B>,
        input: ModelInput<B>,
    ) -> Result<(), PrunerError> {
        let capture = Capture::new();
        let _ = model.forward(input.with_capture(capture.clone()));
        let mut counted = false;
        for rec in capture.take() {
            let [rows, width] = rec.input.dims();
            let data = rec
                .input
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32 activations");
            let host = HostTensor::new(vec![rows, width], data);
            let key = rec.paths[0].clone();
            self.stats
                .entry(key.clone())
                .or_insert_with(|| Calibration::new(width))
                .add(&host)?;
            for p in &rec.paths {
                self.alias.insert(p.clone(), key.clone());
            }
            if !counted {
                self.tokens += rows;
                counted = true;
            }
        }
        Ok(())
    }

    /// Tokens observed.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// The statistics of projection `path`'s input.
    pub fn get(&self, path: &str) -> Option<&Calibration> {
        self.stats.get(self.alias.get(path)?)
    }
}

/// Which ranks to factorize to.
#[derive(Debug, Clone, PartialEq)]
pub enum RankPlan {
    /// Keep this fraction (in (0, 1)) of the parameters of the attention and feed-forward
    /// projections. Rank-one components are taken across all projections in order of output
    /// error removed (normalised per projection) per parameter, until the budget is spent;
    /// a projection whose rank would not make it cheaper stays dense.
    Budget(f64),
    /// The same rank (or fraction of `min(in, out)`) for every projection where it saves
    /// multiply-adds; the others stay dense.
    Uniform(Rank),
    /// These ranks, by projection path (`layers.0.ffn.up`); the others stay dense.
    PerProjection(BTreeMap<String, usize>),
}

/// What happened to one projection.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProjectionReport {
    /// Parameter path, e.g. `layers.0.attention.query`.
    pub path: String,
    /// Input width.
    pub n_in: usize,
    /// Output width.
    pub n_out: usize,
    /// The rank before (`None`: dense).
    pub rank_before: Option<usize>,
    /// The rank after (`None`: dense).
    pub rank_after: Option<usize>,
    /// Parameters before (weights and bias).
    pub params_before: usize,
    /// Parameters after.
    pub params_after: usize,
    /// Normalised output error on the calibration inputs (`None` when unchanged).
    pub nmse: Option<f64>,
}

/// What [`factorize_model`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FactorizeReport {
    /// Per projection, in model order.
    pub projections: Vec<ProjectionReport>,
    /// Calibration tokens.
    pub calibration_tokens: usize,
    /// Parameters of the whole model before.
    pub params_before: usize,
    /// After.
    pub params_after: usize,
}

/// One projection's current weights, bias and calibration.
struct Proj<'a> {
    path: String,
    layer: usize,
    name: &'static str,
    n_in: usize,
    n_out: usize,
    rank: Option<usize>,
    cal: &'a Calibration,
}

fn weights_of<'t>(tensors: &'t TensorMap, p: &Proj<'_>) -> Weights<'t> {
    match p.rank {
        None => Weights::Dense(&tensors[&format!("{}.weight", p.path)]),
        Some(_) => Weights::Factored(
            &tensors[&format!("{}.first", p.path)],
            &tensors[&format!("{}.second", p.path)],
        ),
    }
}

fn bias_of<'t>(tensors: &'t TensorMap, p: &Proj<'_>) -> Option<&'t [f32]> {
    tensors
        .get(&format!("{}.bias", p.path))
        .map(|t| t.data.as_slice())
}

/// Factorizes the attention and feed-forward projections of `model` by `plan`, each solved
/// by `method` on the statistics in `calibrator`, and returns the smaller model (its config
/// lists the ranks) and a report.
pub fn factorize_model<B: Backend>(
    model: Transformer<B>,
    calibrator: &Calibrator,
    plan: &RankPlan,
    method: Method,
) -> Result<(Transformer<B>, FactorizeReport), PrunerError> {
    let config = model.config().clone();
    let d = config.d_model;
    let mut projs = Vec::new();
    for (l, lc) in config.layers.iter().enumerate() {
        for name in PROJECTIONS {
            let (n_in, n_out) = lc.projection_dims(name, d);
            if n_in == 0 || n_out == 0 {
                continue; // a removed block
            }
            let path = format!("layers.{l}.{name}");
            let cal = calibrator
                .get(&path)
                .ok_or_else(|| PrunerError::NotCalibrated { path: path.clone() })?;
            projs.push(Proj {
                path,
                layer: l,
                name,
                n_in,
                n_out,
                rank: lc.rank(name),
                cal,
            });
        }
    }
    let mut tensors = tensorio::export(&model);
    let ranks = choose_ranks(&projs, &tensors, plan)?;
    let mut new_config = config.clone();
    let mut reports = Vec::new();
    for p in &projs {
        let params_before = config.layers[p.layer].projection_params(p.name, d);
        let target = ranks.get(&p.path).copied();
        let solution: Option<LowRankSolution> = match target {
            Some(r) if Some(r) != p.rank => Some(factorize(
                weights_of(&tensors, p),
                bias_of(&tensors, p),
                Rank::Count(r),
                method,
                Some(p.cal),
            )?),
            _ => None,
        };
        let mut rank_after = p.rank;
        let nmse = solution.as_ref().and_then(|s| s.nmse);
        if let Some(s) = solution {
            for key in ["weight", "first", "second", "bias"] {
                tensors.remove(&format!("{}.{key}", p.path));
            }
            tensors.insert(format!("{}.first", p.path), s.first);
            tensors.insert(format!("{}.second", p.path), s.second);
            let n = s.bias.len();
            tensors.insert(format!("{}.bias", p.path), HostTensor::new(vec![n], s.bias));
            new_config.layers[p.layer]
                .ranks
                .insert(p.name.to_string(), s.rank);
            rank_after = Some(s.rank);
        }
        reports.push(ProjectionReport {
            path: p.path.clone(),
            n_in: p.n_in,
            n_out: p.n_out,
            rank_before: p.rank,
            rank_after,
            params_before,
            params_after: new_config.layers[p.layer].projection_params(p.name, d),
            nmse,
        });
    }
    let device = model.devices()[0].clone();
    let params_before = model.num_params();
    let smaller = tensorio::import(Transformer::new(&new_config, &device), &tensors, &device)?;
    let report = FactorizeReport {
        projections: reports,
        calibration_tokens: calibrator.tokens(),
        params_before,
        params_after: smaller.num_params(),
    };
    Ok((smaller, report))
}

/// The rank of every projection to factorize (absent: leave as it is).
fn choose_ranks(
    projs: &[Proj<'_>],
    tensors: &TensorMap,
    plan: &RankPlan,
) -> Result<BTreeMap<String, usize>, PrunerError> {
    // A factorized projection may only go down; a dense one only to a rank that saves work.
    let ceiling = |p: &Proj<'_>| match p.rank {
        Some(r) => r.saturating_sub(1),
        None => max_rank_with_speedup(p.n_in, p.n_out, [1, 1]),
    };
    match plan {
        RankPlan::PerProjection(ranks) => {
            let known: Vec<&str> = projs.iter().map(|p| p.path.as_str()).collect();
            for (path, &r) in ranks {
                let p = projs.iter().find(|p| &p.path == path).ok_or_else(|| {
                    PrunerError::UnknownProjection {
                        path: path.clone(),
                        known: known.join(", "),
                    }
                })?;
                Rank::Count(r).resolve(p.n_in, p.n_out)?;
                if let Some(cur) = p.rank
                    && r > cur
                {
                    return Err(FactorizeError::RankIncrease {
                        current: cur,
                        requested: r,
                    }
                    .into());
                }
            }
            Ok(ranks.clone())
        }
        RankPlan::Uniform(rank) => {
            let mut out = BTreeMap::new();
            for p in projs {
                let r = rank.resolve(p.n_in, p.n_out)?;
                if r <= ceiling(p) {
                    out.insert(p.path.clone(), r);
                }
            }
            Ok(out)
        }
        RankPlan::Budget(ratio) => {
            if !(*ratio > 0.0 && *ratio < 1.0) {
                return Err(FactorizeError::BadFraction(*ratio).into());
            }
            let spectra: Vec<Spectrum> = projs
                .iter()
                .map(|p| spectrum(weights_of(tensors, p), bias_of(tensors, p), p.cal))
                .collect::<Result<_, _>>()?;
            let cost = |p: &Proj<'_>, r: Option<usize>| match r {
                Some(r) => r * (p.n_in + p.n_out),
                None => p.n_in * p.n_out,
            };
            let before: usize = projs.iter().map(|p| cost(p, p.rank)).sum();
            let budget = (*ratio * before as f64) as usize;
            // Every projection starts at rank 1; components are then added by error removed
            // per parameter while the budget lasts.
            let mut ranks: Vec<usize> = vec![1; projs.len()];
            let mut spent: usize = projs.iter().map(|p| cost(p, Some(1))).sum();
            let mut candidates: Vec<(f64, usize, usize)> = Vec::new();
            for (k, (p, s)) in projs.iter().zip(&spectra).enumerate() {
                for i in 1..ceiling(p).min(s.energy.len()) {
                    let gain = if s.total > 0.0 {
                        s.energy[i] / s.total
                    } else {
                        0.0
                    };
                    candidates.push((gain / (p.n_in + p.n_out) as f64, k, i));
                }
            }
            candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
            for (_, k, i) in candidates {
                // Components of one projection come in order, since its energies descend.
                if ranks[k] != i {
                    continue;
                }
                let step = projs[k].n_in + projs[k].n_out;
                if spent + step > budget {
                    continue;
                }
                ranks[k] += 1;
                spent += step;
            }
            Ok(projs
                .iter()
                .zip(ranks)
                .filter(|(p, r)| *r <= ceiling(p) && *r >= 1)
                .map(|(p, r)| (p.path.clone(), r))
                .collect())
        }
    }
}
