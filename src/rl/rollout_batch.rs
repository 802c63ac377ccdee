//! One iteration's rollouts as training tensors: the sequences right-padded into a batch, which
//! positions are completion tokens, the engine's log-probs at them; and the slicing of rows into
//! micro-batches.

use crate::generate::Rollout;
use crate::model::Batch;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

/// Token tensors of one iteration's rollouts: sequences right-padded to T, and which positions
/// predict a completion token (position t holds the log-prob of token t+1).
pub struct RolloutBatch {
    pub batch: Batch,
    pub mask: Vec<bool>,
    pub lens: Vec<usize>,
    /// The engine's log-probs, at their positions [N, T] (0 elsewhere).
    pub rollout_logp: Vec<f32>,
    pub ends_with_eos: Vec<bool>,
}

pub fn rollout_batch(
    prompts: &[&[u32]],
    rollouts: &[Rollout],
    eos: &[u32],
    pad: u32,
) -> RolloutBatch {
    let seqs: Vec<Vec<u32>> = rollouts
        .iter()
        .zip(prompts)
        .map(|(r, p)| [*p, &r.completion_ids].concat())
        .collect();
    let batch = Batch::right_padded(&seqs, pad);
    let t = batch.seq;
    let mut mask = vec![false; batch.tokens()];
    let mut rollout_logp = vec![0.0; batch.tokens()];
    for (b, (r, p)) in rollouts.iter().zip(prompts).enumerate() {
        for (j, &lp) in r.logprobs.iter().enumerate() {
            let pos = b * t + p.len() - 1 + j;
            mask[pos] = true;
            rollout_logp[pos] = lp;
        }
    }
    RolloutBatch {
        lens: seqs.iter().map(Vec::len).collect(),
        ends_with_eos: rollouts
            .iter()
            .map(|r| r.completion_ids.last().is_some_and(|id| eos.contains(id)))
            .collect(),
        batch,
        mask,
        rollout_logp,
    }
}

/// Rows `rows` of `b`, at the same length.
pub fn rows_of(b: &Batch, rows: &[usize]) -> Batch {
    let t = b.seq;
    let pick = |v: &[u32]| {
        rows.iter()
            .flat_map(|&r| v[r * t..(r + 1) * t].to_vec())
            .collect()
    };
    Batch {
        batch: rows.len(),
        seq: t,
        ids: pick(&b.ids),
        positions: pick(&b.positions),
        mask: rows
            .iter()
            .flat_map(|&r| b.mask[r * t..(r + 1) * t].to_vec())
            .collect(),
    }
}

pub fn gather<T: Copy>(v: &[T], rows: &[usize], t: usize) -> Vec<T> {
    rows.iter()
        .flat_map(|&r| v[r * t..(r + 1) * t].to_vec())
        .collect()
}

/// The iteration's prompt indices: a shuffled order per pass over the prompts, a pure function of
/// (seed, pass), so a resumed run draws the same prompts.
pub fn iteration_prompts(
    n_prompts: usize,
    per_iter: usize,
    seed: u64,
    iteration: usize,
) -> Vec<usize> {
    let per_pass = n_prompts / per_iter;
    let (pass, k) = (iteration / per_pass, iteration % per_pass);
    let mut order: Vec<usize> = (0..n_prompts).collect();
    order.shuffle(&mut StdRng::seed_from_u64(
        seed ^ (pass as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    ));
    order[k * per_iter..(k + 1) * per_iter].to_vec()
}
