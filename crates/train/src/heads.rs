//! `prune-heads`: removes chosen attention heads of a saved model and writes the smaller
//! model (an encoder as one directory that both shears and `transformers` load).

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;
use shears_layers::{ModelConfig, save};
use shears_pruners::PrunerError;

use crate::TrainError;
use crate::task::TaskModel;

/// What `prune-heads` wrote.
#[derive(Debug, Clone)]
pub struct PrunedHeads {
    /// Parameters before.
    pub params_before: usize,
    /// The pruned model's config.
    pub config: ModelConfig,
}

/// Loads `model_dir`, removes `heads` (layer -> head numbers of the original model, as in
/// transformers' `prune_heads`) and writes `out`: for an encoder the Hugging Face directory with
/// `pruned_heads` (a classifier with its head and `id2label`; tokenizer files copied), else
/// our format. What is already at `out` is
/// refused or replaced as `existing` says, checked before the model is even loaded.
pub fn run_prune_heads<B: Backend>(
    model_dir: &Path,
    heads: &BTreeMap<usize, Vec<usize>>,
    out: &Path,
    existing: save::Existing,
    device: &B::Device,
) -> Result<PrunedHeads, TrainError> {
    save::check_output(out, existing)?;
    let (model, info) = crate::taskfile::load_task_model::<B>(model_dir, device)?;
    let params_before = model.backbone.config().param_count();
    let pruned = TaskModel {
        backbone: model
            .backbone
            .prune_heads(heads)
            .map_err(PrunerError::from)?,
        head: model.head,
    };
    let config = pruned.backbone.config().clone();
    // The library writers replace; the check above (and this one, should `out` have
    // appeared meanwhile) is what keeps a user's directory.
    save::check_output(out, existing)?;
    if !config.family.arch().lm_head {
        // A classifier keeps its head and classes.
        let labels = info.map(|i| i.labels).unwrap_or_default();
        pruned.export_hf_as(out, &labels, Some(model_dir), shears_layers::hf::Dtype::F32)?;
    } else {
        pruned.backbone.save(out)?;
    }
    Ok(PrunedHeads {
        params_before,
        config,
    })
}
