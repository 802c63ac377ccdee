//! Sampling one token per row of logits: greedy, temperature, top-k and top-p, with no sort of the
//! vocabulary. The CUDA kernel (kernels/sample.cu) follows the same steps:
//!
//! 1. z = logits / T.
//! 2. top-k: τk = the k-th largest z, found by a binary search over the order-preserving u32 key
//!    of z (32 counting passes); tokens with z ≥ τk stay (ties at τk stay too).
//! 3. top-p: τp = the largest z among the survivors whose "mass of tokens at or above it" is still
//!    ≥ p × the survivors' mass, by the same search; tokens with z ≥ τp stay. This is the smallest
//!    top set holding mass p, as transformers' TopPLogitsWarper keeps (up to ties).
//! 4. The token is drawn by inverse CDF in vocabulary order with one uniform u from the caller
//!    (counter-based, so a rollout's draws never depend on its batch).
//!
//! The log-prob returned is the token's, under the distribution it was drawn from (after
//! temperature and truncation). Greedy (T = 0) draws from no distribution; it returns the token's
//! log-prob under the model's own (T = 1, untruncated) distribution, which is what a trainer
//! scores it with.

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy.
    pub temperature: f32,
    /// 0 turns top-k off.
    pub top_k: usize,
    /// 1 turns top-p off.
    pub top_p: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

/// A float's order-preserving u32 key: a < b ⇔ key(a) < key(b) (for non-NaN values).
pub fn order_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The largest key t with `holds(t)`, for a predicate that holds at 0 and only gets harder.
fn largest_key(holds: impl Fn(u32) -> bool) -> u32 {
    let mut t = 0u32;
    for bit in (0..32).rev() {
        let candidate = t | (1 << bit);
        if holds(candidate) {
            t = candidate;
        }
    }
    t
}

/// One row: (token id, its log-prob). `u` in [0, 1).
pub fn sample_row(logits: &[f32], u: f32, p: SamplingParams) -> (u32, f32) {
    let max_logit = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if p.temperature == 0.0 {
        let id = logits.iter().position(|&x| x == max_logit).unwrap_or(0);
        let lse = max_logit
            + logits
                .iter()
                .map(|&x| (x - max_logit).exp())
                .sum::<f32>()
                .ln();
        return (id as u32, logits[id] - lse);
    }
    let inv_t = 1.0 / p.temperature;
    let m = max_logit * inv_t;
    let w = |x: f32| (x * inv_t - m).exp();
    let keys: Vec<u32> = logits.iter().map(|&x| order_key(x * inv_t)).collect();
    let mut floor = 0u32;
    if p.top_k > 0 && p.top_k < logits.len() {
        floor = largest_key(|t| keys.iter().filter(|&&k| k >= t).count() >= p.top_k);
    }
    if p.top_p < 1.0 {
        let mass = |t: u32| -> f32 {
            keys.iter()
                .zip(logits)
                .filter(|(&k, _)| k >= t)
                .map(|(_, &x)| w(x))
                .sum()
        };
        let target = p.top_p * mass(floor);
        floor = largest_key(|t| mass(t.max(floor)) >= target).max(floor);
    }
    let kept = |i: usize| keys[i] >= floor;
    let z: f32 = (0..logits.len())
        .filter(|&i| kept(i))
        .map(|i| w(logits[i]))
        .sum();
    let target = u * z;
    let mut cum = 0.0f32;
    let mut id = None;
    for i in (0..logits.len()).filter(|&i| kept(i)) {
        cum += w(logits[i]);
        id = Some(i);
        if cum > target {
            break;
        }
    }
    let id = id.expect("the largest logit is always kept");
    (id as u32, logits[id] * inv_t - m - z.ln())
}

/// Every row of logits[B, V]: ids[B] and logprobs[B], row b drawn with uniforms[b].
pub fn sample(
    ids: &mut [u32],
    logprobs: &mut [f32],
    logits: &[f32],
    uniforms: &[f32],
    p: SamplingParams,
) {
    let v = logits.len() / ids.len().max(1);
    for (b, row) in logits.chunks_exact(v).enumerate() {
        (ids[b], logprobs[b]) = sample_row(row, uniforms[b], p);
    }
}
