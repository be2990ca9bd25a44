//! Tokenizers from local files: a Hugging Face `tokenizer.json` (BERT's WordPiece, RoBERTa's
//! byte-level BPE with `<s> ... </s>`, any other the `tokenizers` crate reads) or GPT-2's
//! byte-level BPE (`vocab.json` + `merges.txt`). Nothing is downloaded.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use tokenizers::PostProcessor as _;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::LoadError;

/// A tokenizer and the id it pads with.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: u32,
    path: PathBuf,
}

/// A padded batch of token ids.
#[derive(Debug, Clone)]
pub struct Batch<B: Backend> {
    /// `[batch, seq]`.
    pub ids: Tensor<B, 2, Int>,
    /// 1 for tokens, 0 for padding, `[batch, seq]`.
    pub attention_mask: Tensor<B, 2>,
}

/// GPT-2's end-of-text token, which it also pads with.
const END_OF_TEXT: &str = "<|endoftext|>";

impl Tokenizer {
    /// The `model_max_length` of `dir/tokenizer_config.json`, when the file gives a usable
    /// one. `transformers` writes a huge sentinel (about 1e30) for "no limit": that, a
    /// missing file or key, or a value that is not a positive integer is `None`.
    pub fn model_max_length(dir: &Path) -> Option<usize> {
        let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        let n = value.get("model_max_length")?.as_u64()?;
        // The sentinel is a float and not a u64; anything past a million tokens is one too.
        (n > 0 && n <= 1 << 20).then_some(n as usize)
    }

    /// Loads `dir/tokenizer.json` (padding with BERT's `[PAD]`, else RoBERTa's `<pad>`, else
    /// GPT-2's `<|endoftext|>`, else id 0), or else `dir/vocab.json` + `dir/merges.txt` as GPT-2
    /// byte-level BPE.
    pub fn from_dir(dir: &Path) -> Result<Self, LoadError> {
        let err = |path: &Path, e: String| LoadError::Tokenizer {
            path: path.to_path_buf(),
            message: e,
        };
        let json = dir.join("tokenizer.json");
        if json.exists() {
            let mut inner =
                tokenizers::Tokenizer::from_file(&json).map_err(|e| err(&json, e.to_string()))?;
            // Files often carry fixed padding / truncation; `batch` pads to the longest row.
            inner.with_padding(None);
            inner
                .with_truncation(None)
                .map_err(|e| err(&json, e.to_string()))?;
            let pad_id = inner
                .token_to_id("[PAD]")
                .or_else(|| inner.token_to_id("<pad>"))
                .or_else(|| inner.token_to_id(END_OF_TEXT))
                .unwrap_or(0);
            return Ok(Self {
                inner,
                pad_id,
                path: json,
            });
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vocab.exists() && merges.exists() {
            let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
                .build()
                .map_err(|e| err(&vocab, e.to_string()))?;
            let mut inner = tokenizers::Tokenizer::new(bpe);
            inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
            inner.with_decoder(Some(ByteLevel::default()));
            // As GPT-2's tokenizer in transformers: `<|endoftext|>` is one special token,
            // which decoding leaves out.
            if inner.token_to_id(END_OF_TEXT).is_some() {
                inner.add_special_tokens(&[tokenizers::AddedToken::from(END_OF_TEXT, true)]);
            }
            let pad_id = inner.token_to_id(END_OF_TEXT).unwrap_or(0);
            return Ok(Self {
                inner,
                pad_id,
                path: vocab,
            });
        }
        Err(err(
            dir,
            "no tokenizer.json, nor vocab.json + merges.txt".into(),
        ))
    }

    /// The id batches are padded with (`[PAD]`, or GPT-2's `<|endoftext|>`).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Token ids of one text (with the tokenizer's special tokens).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LoadError> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| LoadError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// The text of token ids (special tokens such as `<|endoftext|>` or `[CLS]` left out).
    /// For GPT-2's byte-level BPE `decode(encode(text)) == text`; a cut inside a multi-byte
    /// character decodes to U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LoadError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| LoadError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Token ids of one text cut to at most `max_len` tokens the way `transformers` does
    /// (`truncation=True, max_length=max_len`): the text is shortened and the special tokens
    /// (`[CLS] ... [SEP]`) stay, so a long sentence still ends with `[SEP]`.
    pub fn encode_truncated(&self, text: &str, max_len: usize) -> Result<Vec<u32>, LoadError> {
        let err = |e: tokenizers::Error| LoadError::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let mut enc = self.inner.encode(text, false).map_err(err)?;
        let special = self
            .inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        enc.truncate(
            max_len.saturating_sub(special),
            0,
            tokenizers::TruncationDirection::Right,
        );
        let enc = self.inner.post_process(enc, None, true).map_err(err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes texts, truncates to `max_len` (see [`Tokenizer::encode_truncated`]) and
    /// right-pads to the longest.
    pub fn batch<B: Backend>(
        &self,
        texts: &[&str],
        max_len: usize,
        device: &B::Device,
    ) -> Result<Batch<B>, LoadError> {
        let mut rows = Vec::with_capacity(texts.len());
        for t in texts {
            rows.push(self.encode_truncated(t, max_len)?);
        }
        let s = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(rows.len() * s);
        let mut mask = Vec::with_capacity(rows.len() * s);
        for r in &rows {
            for i in 0..s {
                ids.push(r.get(i).copied().unwrap_or(self.pad_id) as i64);
                mask.push(if i < r.len() { 1.0f32 } else { 0.0 });
            }
        }
        let b = rows.len();
        Ok(Batch {
            ids: Tensor::from_data(TensorData::new(ids, [b, s]), device),
            attention_mask: Tensor::from_data(TensorData::new(mask, [b, s]), device),
        })
    }
}
