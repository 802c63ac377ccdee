//! The model a trainer starts from: the architecture it trains (a reward model's scalar head, a
//! policy's LM head), the starting weights laid into it, and the tokenizer files that travel with
//! every checkpoint written from it.

use super::options::TrainerKind;
use crate::model::{LlamaConfig, ParamLayout};
use anyhow::{bail, Result};
use std::path::Path;

/// Files of the starting model's folder that travel with every checkpoint.
const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
];

/// The tokenizer files `dir` holds, read, to travel with every checkpoint written from it.
pub(crate) fn tokenizer_files(dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    TOKENIZER_FILES
        .iter()
        .filter_map(|&name| std::fs::read(dir.join(name)).ok().map(|b| (name, b)))
        .collect()
}

/// The architecture a trainer produces from its starting checkpoint: a reward model is a
/// sequence classifier (a new scalar head, zero-initialised so every reward starts at 0 and the
/// loss at ln 2), a DPO policy a causal LM (a reward model's score head is dropped).
pub fn trained_config(base: &LlamaConfig, kind: TrainerKind, dir: &Path) -> Result<LlamaConfig> {
    let mut cfg = base.clone();
    match kind {
        TrainerKind::RewardModel => cfg.scalar_head = true,
        TrainerKind::Dpo => {
            if !base.has_lm_head() {
                bail!("{} has no LM head (it is a reward model with untied embeddings): DPO needs a causal LM", dir.display());
            }
            cfg.scalar_head = false;
        }
    }
    Ok(cfg)
}

/// `params` of `from` laid into the layout of `to`, by tensor name: tensors only `to` has (a new
/// score head) start at zero, tensors only `from` has (an LM head a reward model drops) are left.
pub fn relayout(from: &LlamaConfig, params: &[f32], to: &LlamaConfig) -> Vec<f32> {
    let (src, dst) = (ParamLayout::new(from), ParamLayout::new(to));
    let mut out = vec![0.0; dst.len];
    for slot in &dst.slots {
        if let Some(s) = src.slot(&slot.name) {
            out[slot.range.clone()].copy_from_slice(&params[s.range.clone()]);
        }
    }
    out
}
