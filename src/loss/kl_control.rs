//! The KL coefficient β of the reward shaping: fixed, or adapted towards a target KL.

/// Fixed β (Ivison et al. 2024 use 0.05), or the adaptive controller of Ziegler et al. 2019.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum KlController {
    Fixed {
        coef: f32,
    },
    /// Proportional controller: after each batch, with observed KL (mean per-sequence KL,
    /// see [`super::mean_sequence_kl`]):
    /// e = clip(KL / target − 1, −0.2, 0.2),  β ← β · (1 + e · n_steps / horizon).
    Adaptive {
        coef: f32,
        target: f32,
        horizon: usize,
    },
}

impl Default for KlController {
    fn default() -> Self {
        KlController::Fixed { coef: 0.05 }
    }
}

impl KlController {
    /// The current β.
    pub fn coef(&self) -> f32 {
        match *self {
            KlController::Fixed { coef } | KlController::Adaptive { coef, .. } => coef,
        }
    }

    /// Feeds the KL observed over the last `n_steps` episodes (the batch size in TRL).
    /// A fixed controller ignores it.
    pub fn update(&mut self, observed_kl: f32, n_steps: usize) {
        if let KlController::Adaptive {
            coef,
            target,
            horizon,
        } = self
        {
            assert!(*target > 0.0, "adaptive KL target must be positive");
            assert!(*horizon > 0, "adaptive KL horizon must be positive");
            let error = (observed_kl / *target - 1.0).clamp(-0.2, 0.2);
            *coef *= 1.0 + error * n_steps as f32 / *horizon as f32;
        }
    }
}
