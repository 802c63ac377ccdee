//! When a completion ends: the model's EOS ids (generation_config.json, then config.json), stop
//! strings, and the token budget (the engine counts that).

use crate::data::tokenizer::TextTokenizer;
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;

/// Every EOS id the model folder names: generation_config.json's `eos_token_id` (an int or a
/// list, as Llama 3 writes it) and config.json's, without repeats.
pub fn eos_ids(model_dir: &Path) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for name in ["generation_config.json", "config.json"] {
        let path = model_dir.join(name);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        let found: Vec<&Value> = match v.get("eos_token_id") {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(x @ Value::Number(_)) => vec![x],
            _ => Vec::new(),
        };
        for x in found {
            let id = x
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .with_context(|| {
                    format!("{}: eos_token_id {x} is not a token id", path.display())
                })?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

/// Stop strings: a completion stops once its text holds one; the text is cut before it.
pub struct StopStrings<'t> {
    pub strings: Vec<String>,
    pub tokenizer: &'t TextTokenizer,
}

impl StopStrings<'_> {
    /// Where the first stop string begins in `text`, if any.
    pub fn find(&self, text: &str) -> Option<usize> {
        self.strings
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
    }

    pub fn hit(&self, ids: &[u32]) -> bool {
        !self.strings.is_empty()
            && self
                .tokenizer
                .decode_generated(ids)
                .map(|t| self.find(&t).is_some())
                .unwrap_or(false)
    }
}
