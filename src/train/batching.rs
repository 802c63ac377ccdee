//! Length-grouped batching: pairs of similar length share a batch, so padding wastes little
//! compute, while the order of batches is shuffled each epoch from the run's seed. The order is
//! a pure function of (seed, epoch), which is what makes resuming exact.

use crate::data::preference::PreferencePair;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

/// Indices into `pairs` for every batch of epoch `epoch`.
pub fn epoch_batches(
    pairs: &[PreferencePair],
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut rng = StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.shuffle(&mut rng);
    // Sort within windows of 32 batches by length, then cut into batches: similar lengths share a
    // batch, and the windows keep the shuffle's randomness at the larger scale.
    let window = batch_size.max(1) * 32;
    for chunk in order.chunks_mut(window) {
        chunk.sort_by_key(|&i| pairs[i].max_len());
    }
    let mut batches: Vec<Vec<usize>> = order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    batches.shuffle(&mut rng);
    batches
}
