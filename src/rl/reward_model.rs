//! A reward model's scores of whole sequences: its scalar head at each sequence's last token
//! (the last one that is not padding), as transformers' `LlamaForSequenceClassification` reads it.

use crate::model::{Batch, Heads, Llama};
use crate::ops::Backend;
use anyhow::Result;

/// The score of each of `seqs` (the reward model's own token ids), in one forward.
pub fn reward_model_scores<B: Backend>(rm: &Llama<B>, seqs: &[Vec<u32>]) -> Result<Vec<f32>> {
    let pad = rm.cfg.pad_token_id;
    let batch = Batch::right_padded(seqs, pad.unwrap_or(0));
    let f = rm.forward_heads(&batch, Heads::VALUE)?;
    let value = rm.backend.to_host(&f.value)?;
    f.recycle(&rm.backend);
    Ok(seqs
        .iter()
        .enumerate()
        .map(|(b, s)| value[batch.reward_position(b, s.len(), pad)])
        .collect())
}
