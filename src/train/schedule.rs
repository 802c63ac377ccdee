//! Learning-rate schedules: linear warm-up, then linear or cosine decay to zero.

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
    pub fn new(peak_lr: f32, warmup_ratio: f32, total_steps: usize, decay: Decay) -> Self {
        let warmup_steps = (warmup_ratio * total_steps as f32).ceil() as usize;
        Schedule {
            peak_lr,
            warmup_steps,
            total_steps,
            decay,
        }
    }

    /// The rate of optimiser step `step` (0-based). Warm-up reaches the peak at its last step, so
    /// the first step already moves the weights; decay reaches zero after the last step.
    pub fn lr(&self, step: usize) -> f32 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f32 / self.warmup_steps as f32;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f32;
        let progress = ((step - self.warmup_steps) as f32 / span).min(1.0);
        match self.decay {
            Decay::Constant => self.peak_lr,
            Decay::Linear => self.peak_lr * (1.0 - progress),
            Decay::Cosine => self.peak_lr * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos()),
        }
    }
}
