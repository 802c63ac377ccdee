//! Attention of one new token per sequence over its paged KV cache (the decode step).
//!
//! The cache of one layer is [blocks, block_size, Hkv, hd] for K and for V; sequence b owns the
//! blocks `block_table[b, 0..]` in order, and its first `context_lens[b]` slots hold its tokens
//! (the new one included, already appended). Blocks may be shared between sequences (the K
//! rollouts of one prompt share the prompt's full blocks).

use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeShape {
    /// Sequences in the step (B).
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Tokens per cache block.
    pub block_size: usize,
    /// Columns of the block table (the longest sequence's block count, or more).
    pub max_blocks: usize,
}

/// out[B, H·hd] from q[B, H·hd] (rotary applied) and the cache.
pub fn decode_attention(
    out: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    block_table: &[u32],
    context_lens: &[u32],
    s: DecodeShape,
) {
    let (hd, bs) = (s.head_dim, s.block_size);
    let (qs, kvs) = (s.heads * hd, s.kv_heads * hd);
    let group = s.heads / s.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    out.par_chunks_mut(qs).enumerate().for_each(|(b, out)| {
        let len = context_lens[b] as usize;
        let table = &block_table[b * s.max_blocks..(b + 1) * s.max_blocks];
        let slot = |j: usize| table[j / bs] as usize * bs + j % bs;
        let mut scores = vec![0.0f32; len];
        for h in 0..s.heads {
            let kvh = h / group;
            let qh = &q[b * qs + h * hd..][..hd];
            let mut max = f32::NEG_INFINITY;
            for (j, sc) in scores.iter_mut().enumerate() {
                let k = &k_cache[slot(j) * kvs + kvh * hd..][..hd];
                *sc = scale * qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>();
                max = max.max(*sc);
            }
            let o = &mut out[h * hd..(h + 1) * hd];
            o.fill(0.0);
            let mut sum = 0.0f32;
            for (j, &sc) in scores.iter().enumerate() {
                let p = (sc - max).exp();
                sum += p;
                let v = &v_cache[slot(j) * kvs + kvh * hd..][..hd];
                o.iter_mut().zip(v).for_each(|(o, v)| *o += p * v);
            }
            if sum > 0.0 {
                o.iter_mut().for_each(|x| *x /= sum);
            }
        }
    });
}
