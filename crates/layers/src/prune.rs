//! Structured pruning of a `Transformer` through its spaces: "keep units K of space S"
//! slices every member tensor, updates the config, and returns a smaller model of the same
//! type.

use std::collections::BTreeMap;

use burn::prelude::*;

use crate::{AttentionBlock, FeedForwardBlock, ModelConfig, PruneError, Transformer, tensorio};

impl ModelConfig {
    /// The config after keeping `kept` (ascending unit indices) of space `space`.
    pub fn with_kept(&self, space: &str, kept: &[usize]) -> ModelConfig {
        let mut c = self.clone();
        let n = kept.len();
        match space {
            "hidden" => c.d_model = n,
            "vocab" => c.vocab_size = n,
            "positions" => c.max_positions = n,
            "token_types" => c.type_vocab_size = n,
            "pooler" => c.d_pooler = Some(n),
            other => {
                let parts: Vec<&str> = other.split('.').collect();
                if let ["layers", l, kind] = parts[..]
                    && let Ok(l) = l.parse::<usize>()
                    && l < c.layers.len()
                {
                    let layer = &mut c.layers[l];
                    match kind {
                        "heads" => {
                            layer.head_ids = kept.iter().map(|&k| layer.head_ids[k]).collect();
                            layer.n_heads = n;
                        }
                        "ffn" => layer.d_ff = n,
                        _ => unreachable!("space `{other}` is declared but has no config entry"),
                    }
                } else {
                    unreachable!("space `{other}` is declared but has no config entry")
                }
            }
        }
        c
    }
}

impl<B: Backend, A: AttentionBlock<B>, F: FeedForwardBlock<B>> Transformer<B, A, F> {
    /// Keeps units `keep` (indices into the space as it is now) of space `space` and
    /// removes the rest from every member tensor, returning a smaller model whose config
    /// records the new sizes.
    ///
    /// Errors name the space or unit: an unknown space, a unit out of range or listed
    /// twice, or keeping fewer units than the space allows (every head of a layer).
    pub fn keep(self, space: &str, keep: &[usize]) -> Result<Self, PruneError> {
        let config = self.config().clone();
        let registry = Self::registry(&config);
        let plan = registry.plan_keep(space, keep)?;
        let device = self.devices()[0].clone();
        let mut tensors = tensorio::export(&self);
        plan.apply(&mut tensors)?;
        let new_config = config.with_kept(space, &plan.kept);
        let model = Self::new(&new_config, &device);
        Ok(tensorio::import(model, &tensors, &device)?)
    }

    /// Removes attention heads, Hugging Face `prune_heads` style: `heads[layer]` lists
    /// *original* head indices (as in the unpruned model), so pruning in several rounds
    /// refers to the same heads every time. Heads already removed are an error.
    pub fn prune_heads(self, heads: &BTreeMap<usize, Vec<usize>>) -> Result<Self, PruneError> {
        let n_layers = self.config().n_layers();
        // Check the whole request before changing anything.
        let mut keeps = Vec::new();
        for (&layer, drop) in heads {
            let lc = self
                .config()
                .layers
                .get(layer)
                .ok_or(PruneError::NoSuchLayer { layer, n_layers })?;
            for &h in drop {
                if !lc.head_ids.contains(&h) {
                    return Err(PruneError::NoSuchHead {
                        layer,
                        head: h,
                        remaining: lc.head_ids.clone(),
                    });
                }
            }
            let keep: Vec<usize> = (0..lc.n_heads)
                .filter(|&i| !drop.contains(&lc.head_ids[i]))
                .collect();
            let space = format!("layers.{layer}.heads");
            Self::registry(self.config()).plan_keep(&space, &keep)?;
            keeps.push((space, keep));
        }
        let mut model = self;
        for (space, keep) in keeps {
            model = model.keep(&space, &keep)?;
        }
        Ok(model)
    }

    /// Parameters, counted from the config-free module itself.
    pub fn param_count(&self) -> usize {
        self.num_params()
    }
}
