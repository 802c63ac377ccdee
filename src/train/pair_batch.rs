//! Pairs of a micro-batch as one padded batch of sequences: rows 0..B are prompt + chosen,
//! rows B..2B prompt + rejected. The masks say which positions predict a response token.

use crate::data::preference::PreferencePair;
use crate::model::Batch;

pub struct PairBatch {
    pub batch: Batch,
    pub pairs: usize,
    /// Real length of each row [2B].
    pub lens: Vec<usize>,
    /// [2B, T]: position t predicts token t+1, which is a response token (t+1 ≥ prompt length).
    pub response_mask: Vec<bool>,
}

impl PairBatch {
    pub fn new(pairs: &[&PreferencePair], pad: u32) -> Self {
        let seqs: Vec<Vec<u32>> = pairs
            .iter()
            .map(|p| [p.prompt.as_slice(), &p.chosen].concat())
            .chain(
                pairs
                    .iter()
                    .map(|p| [p.prompt.as_slice(), &p.rejected].concat()),
            )
            .collect();
        let batch = Batch::right_padded(&seqs, pad);
        let t = batch.seq;
        let mut response_mask = vec![false; seqs.len() * t];
        let prompts = pairs.iter().chain(pairs.iter()).map(|p| p.prompt.len());
        for (row, (s, prompt)) in seqs.iter().zip(prompts).enumerate() {
            // Predicting token j happens at position j − 1, for j in prompt..len.
            response_mask[row * t + prompt.max(1) - 1..row * t + s.len() - 1].fill(true);
        }
        PairBatch {
            lens: seqs.iter().map(Vec::len).collect(),
            pairs: pairs.len(),
            batch,
            response_mask,
        }
    }

    /// The flat index where a reward model reads row `row` (see `Batch::reward_position`).
    pub fn reward_token(&self, row: usize, pad: Option<u32>) -> usize {
        self.batch.reward_position(row, self.lens[row], pad)
    }

    pub fn real_tokens(&self) -> usize {
        self.lens.iter().sum()
    }
}
