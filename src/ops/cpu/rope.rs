//! Rotary position embeddings in the HF Llama convention: the head is split in halves, and
//! element i pairs with element i + hd/2 ("rotate_half"), rotated by angle pos · inv_freq[i].

use serde::{Deserialize, Serialize};

/// What the rotary embedding reads of a model (`LlamaConfig::rope`): the head size, the base θ
/// and Llama 3's frequency scaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeSpec {
    pub head_dim: usize,
    pub theta: f32,
    pub scaling: Option<Llama3RopeScaling>,
}

/// `rope_scaling` of type "llama3" (Llama 3.1 and later): long wavelengths are slowed by `factor`,
/// short ones kept, and the band between is interpolated smoothly.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

/// cos and sin of every token's angles: [N, hd/2] each, from the tokens' position ids.
pub struct RopeTables {
    pub half: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    inv: Vec<f32>,
}

/// The rotary frequencies, [hd/2], computed in f32 as transformers does, with llama3 scaling when
/// the spec asks for it.
pub fn rope_inv_freq(spec: &RopeSpec) -> Vec<f32> {
    let hd = spec.head_dim;
    let mut inv: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / spec.theta.powf((2 * i) as f32 / hd as f32))
        .collect();
    if let Some(s) = &spec.scaling {
        let old = s.original_max_position_embeddings as f32;
        let low_wavelen = old / s.low_freq_factor;
        let high_wavelen = old / s.high_freq_factor;
        for f in inv.iter_mut() {
            let wavelen = 2.0 * std::f32::consts::PI / *f;
            if wavelen > low_wavelen {
                *f /= s.factor; // long wavelengths: interpolate fully
            } else if wavelen >= high_wavelen {
                // the band between: blend the scaled and unscaled frequencies
                let smooth =
                    (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
            } // short wavelengths stay as they are
        }
    }
    inv
}

impl RopeTables {
    pub fn new(spec: &RopeSpec, positions: &[u32]) -> Self {
        let inv = rope_inv_freq(spec);
        let mut t = RopeTables {
            half: inv.len(),
            cos: Vec::new(),
            sin: Vec::new(),
            inv,
        };
        t.set_positions(positions);
        t
    }

    /// The tables for other positions, with the same frequencies.
    pub fn set_positions(&mut self, positions: &[u32]) {
        self.cos.clear();
        self.sin.clear();
        for &p in positions {
            for &f in &self.inv {
                let angle = p as f32 * f;
                self.cos.push(angle.cos());
                self.sin.push(angle.sin());
            }
        }
    }
}

/// In place on x[N, heads, hd]: (a, b) ← (a·cos − b·sin, b·cos + a·sin) for a = x[i], b = x[i+hd/2].
pub fn rope_forward(x: &mut [f32], t: &RopeTables, heads: usize) {
    rotate(x, t, heads, 1.0);
}

/// The inverse rotation, applied in place to dx[N, heads, hd]: the gradient of a rotation is its
/// transpose.
pub fn rope_backward(dx: &mut [f32], t: &RopeTables, heads: usize) {
    rotate(dx, t, heads, -1.0);
}

fn rotate(x: &mut [f32], t: &RopeTables, heads: usize, sign: f32) {
    let (half, hd) = (t.half, 2 * t.half);
    assert_eq!(x.len(), t.cos.len() / half * heads * hd);
    for (n, token) in x.chunks_exact_mut(heads * hd).enumerate() {
        let (cos, sin) = (&t.cos[n * half..][..half], &t.sin[n * half..][..half]);
        for head in token.chunks_exact_mut(hd) {
            for i in 0..half {
                let (a, b) = (head[i], head[i + half]);
                let s = sign * sin[i];
                head[i] = a * cos[i] - b * s;
                head[i + half] = b * cos[i] + a * s;
            }
        }
    }
}
