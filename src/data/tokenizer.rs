//! Tokenizers: a model folder's own `tokenizer.json` through the tokenizers crate, and the
//! built-in byte-level one that `prefer init` writes so that text works with no download.

use crate::model::config::{LlamaConfig, BYTE_BOS, BYTE_EOS, BYTE_PAD, BYTE_VOCAB};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use std::path::Path;

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// The most UTF-8 bytes any token's vocabulary string has: an upper bound on the input bytes
    /// one token covers (byte-level and SentencePiece vocabularies spell a byte with one or more
    /// bytes, never fewer), for knowing a text is too long without tokenising it.
    longest_token_bytes: usize,
}

/// Room for normalizers that shrink text before it is split (NFKC folds a 3-byte full-width
/// letter to 1 byte), in [`TextTokenizer::certainly_longer`].
const NORMALIZER_SLACK: usize = 4;

fn longest_token_bytes(inner: &tokenizers::Tokenizer) -> usize {
    inner
        .get_vocab(true)
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(1)
        .max(1)
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json` and checks that every id it can produce fits the model's
    /// vocabulary.
    pub fn load(dir: &Path, cfg: &LlamaConfig) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("loading {}: {e}", path.display()))?;
        let size = inner.get_vocab_size(true);
        if size > cfg.vocab_size {
            bail!(
                "{} has {size} tokens but the model's vocab_size is {}: the tokenizer does not \
                 belong to this model",
                path.display(),
                cfg.vocab_size
            );
        }
        let longest_token_bytes = longest_token_bytes(&inner);
        Ok(TextTokenizer {
            inner,
            longest_token_bytes,
        })
    }

    pub fn from_json(json: &str) -> Result<Self> {
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| anyhow!("parsing tokenizer json: {e}"))?;
        let longest_token_bytes = longest_token_bytes(&inner);
        Ok(TextTokenizer {
            inner,
            longest_token_bytes,
        })
    }

    /// Whether `text` is sure to give more than `tokens` tokens, from its length alone: more
    /// bytes than `tokens` of the longest token could cover (with room for normalizers). A 50 MB
    /// text is refused in microseconds this way, where tokenising it takes a minute and
    /// gigabytes.
    pub fn certainly_longer(&self, text: &str, tokens: usize) -> bool {
        text.len() > self.most_bytes(tokens)
    }

    /// The most bytes `tokens` tokens can cover (with room for normalizers): a text with more
    /// is sure to give more tokens.
    pub fn most_bytes(&self, tokens: usize) -> usize {
        tokens
            .saturating_mul(self.longest_token_bytes)
            .saturating_mul(NORMALIZER_SLACK)
    }

    /// Ids for `text`, with the tokenizer's own special tokens (BOS) when `add_special` is set.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| anyhow!("tokenizing {:?}: {e}", truncate(text)))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| anyhow!("decoding: {e}"))
    }

    /// Generated text: special tokens skipped, and ids past the tokenizer's vocabulary (a model
    /// with a padded embedding, as Qwen's, can sample one) decode as nothing, as transformers does.
    pub fn decode_generated(&self, ids: &[u32]) -> Result<String> {
        let size = self.inner.get_vocab_size(true) as u32;
        let known: Vec<u32> = ids.iter().copied().filter(|&id| id < size).collect();
        self.decode(&known, true)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// GPT-2's reversible map from bytes to printable characters, which byte-level BPE vocabularies
/// are written in: printable Latin-1 bytes map to themselves, the rest to code points from 256 up.
fn byte_to_char() -> [char; 256] {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        map[b as usize] = if printable(b) {
            char::from_u32(b).expect("Latin-1 is valid")
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below the surrogates")
        };
    }
    map
}

/// The built-in byte-level `tokenizer.json`: one token per byte (ids 0..=255), then `<s>`, `</s>`
/// and `<pad>`. BOS is prepended when special tokens are asked for, as Llama tokenizers do.
pub fn byte_tokenizer_json() -> String {
    let chars = byte_to_char();
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..256).map(|b| (chars[b].to_string(), json!(b))).collect();
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
                            "trim_offsets": false, "use_regex": false});
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(BYTE_BOS, "<s>"), special(BYTE_EOS, "</s>"), special(BYTE_PAD, "<pad>")],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [BYTE_BOS], "tokens": ["<s>"]}}
        },
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": []
        }
    });
    debug_assert_eq!(BYTE_VOCAB, 259);
    serde_json::to_string_pretty(&tok).expect("json values serialise")
}

/// `tokenizer_config.json` for the byte tokenizer, so `AutoTokenizer` finds its special tokens.
pub fn byte_tokenizer_config_json() -> String {
    serde_json::to_string_pretty(&json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": false,
    }))
    .expect("json values serialise")
}

/// Reads a text file with a named-file error.
pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
