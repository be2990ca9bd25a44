//! `SpaceName`: the typed names of what can be pruned in a `Transformer`, its spaces
//! (`hidden`, the heads and neurons of each layer, ...) and its whole blocks. The registry,
//! gates and reports key on the text form ([`std::fmt::Display`]); this is the one place
//! that writes and reads it.

use std::fmt;

/// A prunable structure of a [`crate::Transformer`], by name.
///
/// The text forms are `hidden`, `vocab`, `positions`, `token_types`, `pooler`,
/// `layers.L.heads`, `layers.L.ffn`, `layers.L.attention_block` and `layers.L.ffn_block`;
/// any other text is [`SpaceName::Declared`]. `parse(name.to_string()) == name` for every
/// name except a `Declared` one that spells a built-in name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpaceName {
    /// The hidden (model) width, shared by every layer and the embeddings.
    Hidden,
    /// The token vocabulary.
    Vocab,
    /// The position embeddings.
    Positions,
    /// The token types (BERT).
    TokenTypes,
    /// The BERT pooler's output.
    Pooler,
    /// The attention heads of a layer.
    Heads(usize),
    /// The feed-forward neurons of a layer.
    Ffn(usize),
    /// A layer's whole attention block, one unit: keeping none removes every head.
    AttentionBlock(usize),
    /// A layer's whole feed-forward block, one unit: keeping none removes every neuron.
    FfnBlock(usize),
    /// A space declared by a user's attention or feed-forward block (see
    /// [`crate::AttentionBlock::declare`]); shears has no config entry for its size.
    Declared(String),
}

impl SpaceName {
    /// Reads a name (never fails: unknown text is a [`SpaceName::Declared`] space).
    pub fn parse(text: &str) -> Self {
        match text {
            "hidden" => return Self::Hidden,
            "vocab" => return Self::Vocab,
            "positions" => return Self::Positions,
            "token_types" => return Self::TokenTypes,
            "pooler" => return Self::Pooler,
            _ => {}
        }
        let layer = |rest: &str| -> Option<(usize, String)> {
            let (l, kind) = rest.strip_prefix("layers.")?.split_once('.')?;
            // `layers.03.heads` is not ours: the layer must print back the same.
            let n: usize = l.parse().ok()?;
            (n.to_string() == l).then(|| (n, kind.to_string()))
        };
        match layer(text) {
            Some((l, kind)) => match kind.as_str() {
                "heads" => Self::Heads(l),
                "ffn" => Self::Ffn(l),
                "attention_block" => Self::AttentionBlock(l),
                "ffn_block" => Self::FfnBlock(l),
                _ => Self::Declared(text.into()),
            },
            None => Self::Declared(text.into()),
        }
    }

    /// The layer of a per-layer name.
    pub fn layer(&self) -> Option<usize> {
        match self {
            Self::Heads(l) | Self::Ffn(l) | Self::AttentionBlock(l) | Self::FfnBlock(l) => Some(*l),
            _ => None,
        }
    }
}

impl fmt::Display for SpaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hidden => f.write_str("hidden"),
            Self::Vocab => f.write_str("vocab"),
            Self::Positions => f.write_str("positions"),
            Self::TokenTypes => f.write_str("token_types"),
            Self::Pooler => f.write_str("pooler"),
            Self::Heads(l) => write!(f, "layers.{l}.heads"),
            Self::Ffn(l) => write!(f, "layers.{l}.ffn"),
            Self::AttentionBlock(l) => write!(f, "layers.{l}.attention_block"),
            Self::FfnBlock(l) => write!(f, "layers.{l}.ffn_block"),
            Self::Declared(name) => f.write_str(name),
        }
    }
}

impl From<&str> for SpaceName {
    fn from(text: &str) -> Self {
        Self::parse(text)
    }
}

impl From<&String> for SpaceName {
    fn from(text: &String) -> Self {
        Self::parse(text)
    }
}

impl From<&SpaceName> for SpaceName {
    fn from(name: &SpaceName) -> Self {
        name.clone()
    }
}
