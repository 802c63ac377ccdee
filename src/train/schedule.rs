//! Learning-rate schedules: linear warm-up, then linear or cosine decay to zero, or a constant
//! rate. They are transformers' `get_linear_schedule_with_warmup`,
//! `get_cosine_schedule_with_warmup` and `get_constant_schedule_with_warmup`, step for step, so a
//! run lined up with a TRL run takes the same rates: step t < W takes lr·t/W (the first step's
//! rate is 0), then linear decay takes lr·(T − t)/(T − W) and cosine lr·½(1 + cos(π(t − W)/(T − W))).

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Linear,
    Cosine,
    Constant,
}

#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub peak_lr: f32,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub decay: Decay,
}

impl Schedule {
    /// W = ⌈T · warmup_ratio⌉ in f64, as transformers' `TrainingArguments.get_warmup_steps`
    /// (`math.ceil(num_training_steps * warmup_ratio)`): 100 · 0.07 is 7.000000000000001 there,
    /// so W is 8, here too; and the ratio stays f64 from the flag or TOML on, as a Python float
    /// (0.1 as an f32 is 0.10000000149, which would make W = 4 of 30 steps, not 3).
    pub fn new(peak_lr: f32, warmup_ratio: f64, total_steps: usize, decay: Decay) -> Self {
        let warmup_steps = (total_steps as f64 * warmup_ratio).ceil() as usize;
        Schedule {
            peak_lr,
            warmup_steps,
            total_steps,
            decay,
        }
    }

    /// The rate of optimiser step `step` (0-based). The factor is computed in f64, as
    /// transformers' lambdas are, and the rate rounded once.
    pub fn lr(&self, step: usize) -> f32 {
        let (t, w, total) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        let factor = if step < self.warmup_steps {
            t / w.max(1.0)
        } else {
            let span = (total - w).max(1.0);
            match self.decay {
                Decay::Constant => 1.0,
                Decay::Linear => ((total - t) / span).max(0.0),
                Decay::Cosine => {
                    let progress = (t - w) / span;
                    (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
                }
            }
        };
        (self.peak_lr as f64 * factor) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' lambdas, written out as the Python has them.
    fn hf_factor(decay: Decay, step: usize, warmup: usize, total: usize) -> f64 {
        let (s, w, t) = (step as f64, warmup as f64, total as f64);
        if step < warmup {
            return s / 1f64.max(w);
        }
        match decay {
            Decay::Constant => 1.0,
            Decay::Linear => 0f64.max((t - s) / 1f64.max(t - w)),
            Decay::Cosine => {
                let progress = (s - w) / 1f64.max(t - w);
                0f64.max(0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos()))
            }
        }
    }

    #[test]
    fn warmup_starts_at_zero_and_reaches_the_peak_after_w_steps() {
        // T = 20, ratio 0.1: W = 2; steps 0, 1 take 0 and lr/2, step 2 the peak.
        let s = Schedule::new(1.0, 0.1, 20, Decay::Linear);
        assert_eq!(s.warmup_steps, 2);
        assert_eq!(s.lr(0), 0.0);
        assert_eq!(s.lr(1), 0.5);
        assert_eq!(s.lr(2), 1.0);
        // Linear decay: (T − t)/(T − W); the last step (19) takes 1/18 of the peak.
        assert!((s.lr(11) - 9.0 / 18.0).abs() < 1e-7);
        assert!((s.lr(19) - 1.0 / 18.0).abs() < 1e-7);
        assert_eq!(s.lr(20), 0.0);
    }

    #[test]
    fn warmup_steps_round_up_in_f64_as_python_does() {
        // Python: math.ceil(100 * 0.07) = 8 (the product is 7.000000000000001), ceil(50 * 0.14)
        // = 8, ceil(30 * 0.1) = 3, ceil(0.25 * 8) = 2.
        assert_eq!(Schedule::new(1.0, 0.07, 100, Decay::Linear).warmup_steps, 8);
        assert_eq!(Schedule::new(1.0, 0.14, 50, Decay::Linear).warmup_steps, 8);
        assert_eq!(Schedule::new(1.0, 0.1, 30, Decay::Linear).warmup_steps, 3);
        assert_eq!(Schedule::new(1.0, 0.25, 8, Decay::Linear).warmup_steps, 2);
        assert_eq!(Schedule::new(1.0, 0.0, 30, Decay::Linear).warmup_steps, 0);
    }

    #[test]
    fn every_decay_matches_transformers_lambdas() {
        for decay in [Decay::Linear, Decay::Cosine, Decay::Constant] {
            for (ratio, total) in [
                (0.0, 1),
                (0.0, 7),
                (0.1, 7),
                (0.25, 13),
                (0.5, 4),
                (0.07, 100),
            ] {
                let s = Schedule::new(3e-4, ratio, total, decay);
                for step in 0..total {
                    let want = 3e-4 * hf_factor(decay, step, s.warmup_steps, total);
                    let got = s.lr(step) as f64;
                    assert!(
                        (got - want).abs() <= 1e-7 * 3e-4,
                        "{decay:?} ratio {ratio} T {total} step {step}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn no_warmup_starts_at_the_peak() {
        let s = Schedule::new(2.0, 0.0, 4, Decay::Linear);
        assert_eq!(
            (0..4).map(|t| s.lr(t)).collect::<Vec<_>>(),
            [2.0, 1.5, 1.0, 0.5]
        );
    }
}
