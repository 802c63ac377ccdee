//! Causal grouped-query attention over padded batches, flash-style: the forward keeps only the
//! row logsumexp [B,H,T]; the backward recomputes the probabilities from it.
//!
//! Query i of sequence b sees key j when j ≤ i and `key_mask[b, j]` is set, so left padding,
//! right padding and packed-free batches all work; positions for rotary embeddings are applied
//! before this op. A query that sees no key (a pad token in front of a left-padded row) gets a
//! zero output and lse = −∞, and passes no gradient.

use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    fn q_stride(&self) -> usize {
        self.heads * self.head_dim
    }
    fn kv_stride(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// out[B,T,H,hd], lse[B,H,T] from q[B,T,H,hd], k,v[B,T,Hkv,hd], key_mask[B,T].
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    key_mask: &[bool],
    s: AttentionShape,
) {
    let (t, hd) = (s.seq, s.head_dim);
    let (qs, kvs) = (s.q_stride(), s.kv_stride());
    let group = s.heads / s.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    out.par_chunks_mut(t * qs)
        .zip(lse.par_chunks_mut(s.heads * t))
        .enumerate()
        .for_each(|(b, (out, lse))| {
            let (q, k, v) = (&q[b * t * qs..], &k[b * t * kvs..], &v[b * t * kvs..]);
            let mask = &key_mask[b * t..(b + 1) * t];
            let mut scores = vec![0.0f32; t];
            for h in 0..s.heads {
                let kvh = h / group;
                for i in 0..t {
                    let qi = &q[i * qs + h * hd..][..hd];
                    let mut max = f32::NEG_INFINITY;
                    let mut nan = false;
                    for j in 0..=i {
                        scores[j] = if mask[j] {
                            scale * dot(qi, &k[j * kvs + kvh * hd..][..hd])
                        } else {
                            f32::NEG_INFINITY
                        };
                        // f32::max drops a NaN, which would hide it from the kernels checked
                        // against this oracle; PyTorch's softmax makes the whole row NaN.
                        nan |= scores[j].is_nan();
                        max = max.max(scores[j]);
                    }
                    let o = &mut out[i * qs + h * hd..][..hd];
                    if nan {
                        o.fill(f32::NAN);
                        lse[h * t + i] = f32::NAN;
                        continue;
                    }
                    o.fill(0.0);
                    if max == f32::NEG_INFINITY {
                        lse[h * t + i] = f32::NEG_INFINITY;
                        continue;
                    }
                    let mut sum = 0.0f32;
                    for j in 0..=i {
                        let p = (scores[j] - max).exp();
                        sum += p;
                        if p > 0.0 {
                            axpy(o, p, &v[j * kvs + kvh * hd..][..hd]);
                        }
                    }
                    o.iter_mut().for_each(|x| *x /= sum);
                    lse[h * t + i] = max + sum.ln();
                }
            }
        });
}

/// With p_ij = exp(s_ij − lse_i) and D_i = dout_i · out_i:
///   dv_j += Σ_i p_ij dout_i,  ds_ij = p_ij (dout_i · v_j − D_i),
///   dq_i += scale Σ_j ds_ij k_j,  dk_j += scale Σ_i ds_ij q_i.
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    key_mask: &[bool],
    s: AttentionShape,
) {
    let (t, hd) = (s.seq, s.head_dim);
    let (qs, kvs) = (s.q_stride(), s.kv_stride());
    let group = s.heads / s.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    dq.par_chunks_mut(t * qs)
        .zip(dk.par_chunks_mut(t * kvs))
        .zip(dv.par_chunks_mut(t * kvs))
        .enumerate()
        .for_each(|(b, ((dq, dk), dv))| {
            let rows = |stride: usize| b * t * stride..(b + 1) * t * stride;
            let (q, out, dout) = (&q[rows(qs)], &out[rows(qs)], &dout[rows(qs)]);
            let (k, v) = (&k[rows(kvs)], &v[rows(kvs)]);
            let (mask, lse) = (&key_mask[b * t..(b + 1) * t], &lse[b * s.heads * t..]);
            for h in 0..s.heads {
                let kvh = h / group;
                for i in 0..t {
                    let l = lse[h * t + i];
                    if l == f32::NEG_INFINITY {
                        continue;
                    }
                    let qi = &q[i * qs + h * hd..][..hd];
                    let doi = &dout[i * qs + h * hd..][..hd];
                    let big_d = dot(doi, &out[i * qs + h * hd..][..hd]);
                    for j in (0..=i).filter(|&j| mask[j]) {
                        let kj = &k[j * kvs + kvh * hd..][..hd];
                        let vj = &v[j * kvs + kvh * hd..][..hd];
                        let p = (scale * dot(qi, kj) - l).exp();
                        axpy(&mut dv[j * kvs + kvh * hd..][..hd], p, doi);
                        let ds = p * (dot(doi, vj) - big_d);
                        axpy(&mut dq[i * qs + h * hd..][..hd], scale * ds, kj);
                        axpy(&mut dk[j * kvs + kvh * hd..][..hd], scale * ds, qi);
                    }
                }
            }
        });
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// y += a·x
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}
