//! Structured pruning of a `Transformer` through its spaces: "keep units K of space S"
//! slices every member tensor, updates the config, and returns a smaller model of the same
//! type.

use std::collections::BTreeMap;

use burn::prelude::*;

use crate::{
    AttentionBlock, FeedForwardBlock, ModelConfig, PruneError, SpaceName, Transformer, tensorio,
};

impl ModelConfig {
    /// The config after keeping `kept` (ascending unit indices) of space `space`. A block
    /// name is not a space of the config: keep its heads or neurons instead.
    pub fn with_kept(&self, space: &SpaceName, kept: &[usize]) -> Result<ModelConfig, PruneError> {
        let mut c = self.clone();
        let n = kept.len();
        let n_layers = c.layers.len();
        let layer = |l: usize| {
            if l < n_layers {
                Ok(l)
            } else {
                Err(PruneError::NoSuchLayer { layer: l, n_layers })
            }
        };
        match space {
            SpaceName::Hidden => c.d_model = n,
            SpaceName::Vocab => c.vocab_size = n,
            SpaceName::Positions => c.max_positions = n,
            SpaceName::TokenTypes => c.type_vocab_size = n,
            SpaceName::Pooler => c.d_pooler = Some(n),
            SpaceName::Heads(l) => {
                let layer = &mut c.layers[layer(*l)?];
                layer.head_ids = kept.iter().map(|&k| layer.head_ids[k]).collect();
                layer.n_heads = n;
            }
            SpaceName::Ffn(l) => c.layers[layer(*l)?].d_ff = n,
            SpaceName::AttentionBlock(_) | SpaceName::FfnBlock(_) | SpaceName::Declared(_) => {
                return Err(PruneError::NotResizable {
                    space: space.to_string(),
                });
            }
        }
        Ok(c)
    }
}

impl<B: Backend, A: AttentionBlock<B>, F: FeedForwardBlock<B>> Transformer<B, A, F> {
    /// Keeps units `keep` (indices into the space as it is now) of space `space` and
    /// removes the rest from every member tensor, returning a smaller model whose config
    /// records the new sizes.
    ///
    /// Errors name the space or unit: an unknown space, a unit out of range or listed
    /// twice, or keeping fewer units than the space allows (every head of a layer).
    ///
    /// A block name ([`SpaceName::AttentionBlock`], [`SpaceName::FfnBlock`]) is one unit:
    /// keeping `[]` removes every head (neuron) of the layer, keeping `[0]` changes nothing.
    /// A space a user block declares cannot be resized here (shears has no config entry for
    /// it): that is a [`PruneError::NotResizable`] before anything changes.
    pub fn keep(self, space: impl Into<SpaceName>, keep: &[usize]) -> Result<Self, PruneError> {
        let space = space.into();
        let block = |inner: SpaceName| match keep {
            [] => Ok(Some(inner)),
            [0] => Ok(None),
            _ => Err(PruneError::BlockUnits {
                block: space.to_string(),
                keep: keep.to_vec(),
            }),
        };
        let inner = match &space {
            SpaceName::AttentionBlock(l) => block(SpaceName::Heads(*l))?,
            SpaceName::FfnBlock(l) => block(SpaceName::Ffn(*l))?,
            _ => return self.keep_units(&space, keep),
        };
        match inner {
            Some(units) => self.keep_units(&units, &[]),
            None => Ok(self),
        }
    }

    fn keep_units(self, space: &SpaceName, keep: &[usize]) -> Result<Self, PruneError> {
        let config = self.config().clone();
        let registry = Self::registry(&config);
        let plan = registry.plan_keep(&space.to_string(), keep)?;
        // Checked before any tensor is touched.
        let new_config = config.with_kept(space, &plan.kept)?;
        let device = self.devices()[0].clone();
        let mut tensors = tensorio::export(&self);
        plan.apply(&mut tensors)?;
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
            let space = SpaceName::Heads(layer);
            Self::registry(self.config()).plan_keep(&space.to_string(), &keep)?;
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
