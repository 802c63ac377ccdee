//! Padded batches of token sequences: ids, which tokens are real, and their rotary positions.

/// A padded batch: ids, which tokens are real, and each token's rotary position.
#[derive(Clone, Debug)]
pub struct Batch {
    pub batch: usize,
    pub seq: usize,
    pub ids: Vec<u32>,       // [B, T]
    pub mask: Vec<bool>,     // [B, T], true for real tokens
    pub positions: Vec<u32>, // [B, T]
}

impl Batch {
    /// Right-padded sequences with positions 0, 1, 2, … (what transformers uses without a mask).
    pub fn right_padded(seqs: &[Vec<u32>], pad: u32) -> Self {
        Self::padded(seqs, pad, false)
    }

    /// Left-padded sequences (the layout generation uses), positions counting from each sequence's
    /// first real token, as transformers derives them from the attention mask.
    pub fn left_padded(seqs: &[Vec<u32>], pad: u32) -> Self {
        Self::padded(seqs, pad, true)
    }

    fn padded(seqs: &[Vec<u32>], pad: u32, left: bool) -> Self {
        let (batch, seq) = (seqs.len(), seqs.iter().map(Vec::len).max().unwrap_or(0));
        let mut b = Batch {
            batch,
            seq,
            ids: vec![pad; batch * seq],
            mask: vec![false; batch * seq],
            positions: vec![0; batch * seq],
        };
        for (i, s) in seqs.iter().enumerate() {
            let start = i * seq + if left { seq - s.len() } else { 0 };
            let real = start..start + s.len();
            b.ids[real.clone()].copy_from_slice(s);
            b.mask[real.clone()].fill(true);
            for (p, t) in real.enumerate() {
                b.positions[t] = p as u32;
            }
        }
        b
    }

    /// Where a sequence classifier reads row `row` (whose real tokens are the first `len`), by
    /// transformers' rule: the last token that is not `pad_token_id`. That is the last real token,
    /// unless the sequence ends in tokens equal to the pad id (pad = eos, a common choice), which
    /// transformers skips too. Position 0 when every token is a pad, as transformers' argmax gives.
    pub fn reward_position(&self, row: usize, len: usize, pad: Option<u32>) -> usize {
        let start = row * self.seq;
        let ids = &self.ids[start..start + len];
        let last = match pad {
            Some(pad) => ids.iter().rposition(|&id| id != pad).unwrap_or(0),
            None => len.saturating_sub(1),
        };
        start + last
    }

    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }

    /// The target of each position: the id that follows it in its row (the last column gets 0,
    /// a valid id whose log-prob callers ignore).
    pub fn next_tokens(&self) -> Vec<u32> {
        let mut targets = vec![0; self.tokens()];
        for b in 0..self.batch {
            let row = b * self.seq;
            if self.seq > 0 {
                targets[row..row + self.seq - 1]
                    .copy_from_slice(&self.ids[row + 1..row + self.seq]);
            }
        }
        targets
    }

    /// Whether position t has a real next token to predict: both t and t+1 are real tokens.
    pub fn next_token_mask(&self) -> Vec<bool> {
        let mut m = vec![false; self.tokens()];
        for b in 0..self.batch {
            for t in 0..self.seq.saturating_sub(1) {
                let i = b * self.seq + t;
                m[i] = self.mask[i] && self.mask[i + 1];
            }
        }
        m
    }
}
