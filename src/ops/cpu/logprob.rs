//! The fused LM head: next-token log-probs and entropies straight from the final hidden states,
//! without ever holding the [N, V] logits (DESIGN.md, principle 5). Rows are processed in chunks;
//! the backward recomputes each chunk's logits and writes d(hidden) and d(W) directly.

use super::matmul::{matmul_backward, matmul_forward};
use rayon::prelude::*;

/// Tokens per chunk: the logits buffer is CHUNK × V floats (32 MiB at V = 128256).
const CHUNK: usize = 64;

/// For each token n, with z = scale·(h[n]·Wᵀ) over the vocabulary (scale ≠ 1: the distribution
/// at temperature 1/scale):
///   lse[n] = log Σ_v exp z_v,  logp[n] = z_target − lse,  entropy[n] = lse − Σ_v p_v z_v.
/// h[N,D], w[V,D], targets[N] (any id < V where the caller will ignore the result).
#[allow(clippy::too_many_arguments)]
pub fn logprob_forward(
    logp: &mut [f32],
    entropy: &mut [f32],
    lse: &mut [f32],
    h: &[f32],
    w: &[f32],
    targets: &[u32],
    d: usize,
    scale: f32,
) {
    let n = targets.len();
    let v = w.len() / d;
    assert_eq!(
        (logp.len(), entropy.len(), lse.len(), h.len()),
        (n, n, n, n * d)
    );
    logp.par_chunks_mut(CHUNK)
        .zip(entropy.par_chunks_mut(CHUNK))
        .zip(lse.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(c, ((logp, entropy), lse))| {
            let rows = logp.len();
            let first = c * CHUNK;
            let mut logits = vec![0.0f32; rows * v];
            matmul_forward(
                &mut logits,
                &h[first * d..(first + rows) * d],
                w,
                rows,
                d,
                v,
            );
            if scale != 1.0 {
                logits.iter_mut().for_each(|x| *x *= scale);
            }
            for r in 0..rows {
                let z = &logits[r * v..(r + 1) * v];
                let max = z.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let (mut sum, mut sum_pz) = (0.0f32, 0.0f32);
                for &x in z {
                    let e = (x - max).exp();
                    sum += e;
                    sum_pz += e * x;
                }
                lse[r] = max + sum.ln();
                logp[r] = z[targets[first + r] as usize] - lse[r];
                entropy[r] = lse[r] - sum_pz / sum;
            }
        });
}

/// With p = softmax(z) and H the entropy, the logit gradient of each row is
///   dz_v = dlogp · (1[v = target] − p_v) − dentropy · p_v (log p_v + H),
/// and dh[N,D] += dz · W, dw[V,D] += dzᵀ · h.
#[allow(clippy::too_many_arguments)]
pub fn logprob_backward(
    dh: &mut [f32],
    dw: &mut [f32],
    dlogp: &[f32],
    dentropy: Option<&[f32]>,
    h: &[f32],
    w: &[f32],
    targets: &[u32],
    lse: &[f32],
    entropy: &[f32],
    d: usize,
    scale: f32,
) {
    let n = targets.len();
    let v = w.len() / d;
    assert_eq!(
        (dh.len(), dw.len(), dlogp.len(), lse.len()),
        (n * d, v * d, n, n)
    );
    let mut logits = vec![0.0f32; CHUNK.min(n) * v];
    for first in (0..n).step_by(CHUNK) {
        let rows = CHUNK.min(n - first);
        let hc = &h[first * d..(first + rows) * d];
        let dz = &mut logits[..rows * v];
        matmul_forward(dz, hc, w, rows, d, v);
        if scale != 1.0 {
            dz.iter_mut().for_each(|x| *x *= scale);
        }
        for r in 0..rows {
            let t = first + r;
            let (gl, ge) = (dlogp[t], dentropy.map_or(0.0, |de| de[t]));
            let z = &mut dz[r * v..(r + 1) * v];
            for x in z.iter_mut() {
                let log_p = *x - lse[t];
                let p = log_p.exp();
                *x = -gl * p - ge * p * (log_p + entropy[t]);
            }
            z[targets[t] as usize] += gl;
            // z = scale·(h·Wᵀ): the chain rule scales d(h·Wᵀ) by the same factor.
            if scale != 1.0 {
                z.iter_mut().for_each(|x| *x *= scale);
            }
        }
        matmul_backward(
            Some(&mut dh[first * d..(first + rows) * d]),
            dw,
            dz,
            hc,
            w,
            rows,
            d,
            v,
        );
    }
}
