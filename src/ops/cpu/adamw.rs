//! AdamW over the flat fp32 parameter buffer, with global gradient-norm clipping: the CPU
//! trainer's optimiser and the oracle of kernels/adamw.cu (launchers: src/ops/cuda/adamw.rs).

use std::ops::Range;

/// AdamW (Loshchilov & Hutter), bias-corrected, weight decay decoupled from the gradient.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Ranges of the buffer weight decay skips (norm gains, biases: `ParamLayout::no_decay_ranges`),
    /// sorted and disjoint.
    pub no_decay: Vec<Range<usize>>,
    /// First and second moments, in the parameter layout.
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Steps taken so far (the bias correction's t).
    pub t: u64,
}

impl AdamW {
    pub fn new(len: usize, weight_decay: f32, no_decay: Vec<Range<usize>>) -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            no_decay,
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
        }
    }

    /// One update: m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g²,
    /// p ← p − lr·(m̂ / (√v̂ + ε) + wd·p), with m̂, v̂ the bias-corrected moments and wd = 0
    /// inside `no_decay`.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        assert_eq!((params.len(), grads.len()), (self.m.len(), self.m.len()));
        self.t += 1;
        let c1 = 1.0 - self.beta1.powi(self.t as i32);
        let c2 = 1.0 - self.beta2.powi(self.t as i32);
        // The exempt ranges are sorted, so one cursor walks them alongside i.
        let mut exempt = self.no_decay.iter().peekable();
        for i in 0..params.len() {
            while exempt.next_if(|r| r.end <= i).is_some() {}
            let wd = if exempt.peek().is_some_and(|r| r.contains(&i)) {
                0.0
            } else {
                self.weight_decay
            };
            let g = grads[i];
            self.m[i] = self.beta1 * self.m[i] + (1.0 - self.beta1) * g;
            self.v[i] = self.beta2 * self.v[i] + (1.0 - self.beta2) * g * g;
            let update = (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + self.eps);
            params[i] -= lr * (update + wd * params[i]);
        }
    }
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the norm before clipping.
/// The norm is summed in f64 so it does not depend on the buffer's size for its accuracy.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f32 {
    let norm = grads
        .iter()
        .map(|&g| (g as f64) * (g as f64))
        .sum::<f64>()
        .sqrt() as f32;
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        grads.iter_mut().for_each(|g| *g *= scale);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_decay_skips_the_exempt_ranges_only() {
        // A zero gradient leaves only the decay: p ← p − lr·wd·p outside the exempt ranges.
        let mut adam = AdamW::new(8, 0.5, vec![1..3, 6..7]);
        let mut p = vec![1.0f32; 8];
        adam.step(&mut p, &[0.0; 8], 0.1);
        assert_eq!(p, [0.95, 1.0, 1.0, 0.95, 0.95, 0.95, 1.0, 0.95]);
    }
}
