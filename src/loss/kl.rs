//! Per-token estimators of KL(π ‖ π_ref) from sampled tokens (Schulman 2020, "Approximating KL
//! divergence"), with the log-ratio clamp of Ivison et al. 2024.
//!
//! With tokens sampled from π and log r = log π_ref(y_t) − log π(y_t) (so r = π_ref/π):
//! k1 = −log r (unbiased, can be negative), k2 = ½ (log r)² (biased, low variance),
//! k3 = (r − 1) − log r (unbiased, always ≥ 0).

use super::numerics::{assert_shape, masked_sum_f64};

/// Which per-token KL estimator to use. Default k1 (Ivison et al. 2024, TRL PPO).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// k1 = −log r = log π − log π_ref;  ∂k1/∂log π = 1.
    #[default]
    K1,
    /// k2 = ½ (log r)²;  ∂k2/∂log π = −log r.
    K2,
    /// k3 = (r − 1) − log r;  ∂k3/∂log π = 1 − r.
    K3,
}

/// GRPO's KL loss term (Shao et al. 2024): `coef` · token mean of k3(π ‖ π_ref), its log-ratio
/// clamped as [`per_token_kl`]'s `clamp`. Added to the clipped policy loss by the fused
/// `ppo_policy_loss` op (kernels/ppo_loss.cu).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KlPenalty {
    /// β; 0 adds nothing.
    pub coef: f32,
    pub clamp: Option<f32>,
}

/// Result of [`per_token_kl`]; both `[batch, time]` (or any shape, elementwise).
#[derive(Clone, Debug, PartialEq)]
pub struct PerTokenKl {
    /// KL estimate per token, 0 at masked tokens.
    pub kl: Vec<f32>,
    /// Elementwise derivative ∂kl_t/∂logp_t (the Jacobian is diagonal), 0 at masked tokens and
    /// wherever the clamp is active.
    pub grad_logp: Vec<f32>,
}

/// Per-token KL estimate and its derivative w.r.t. the policy log-prob.
///
/// `logp`, `ref_logp`, `mask`: same length (e.g. `[batch, time]`), log-probs of the sampled tokens.
/// `clamp = Some(c)` clamps log r to [−c, c] before the estimator; where |log r| > c the estimate is
/// constant in log π, so its gradient is 0 (at exactly ±c the gradient passes, as `torch.clamp`).
pub fn per_token_kl(
    logp: &[f32],
    ref_logp: &[f32],
    mask: &[bool],
    estimator: KlEstimator,
    clamp: Option<f32>,
) -> PerTokenKl {
    assert_eq!(
        logp.len(),
        ref_logp.len(),
        "logp and ref_logp lengths differ"
    );
    assert_eq!(logp.len(), mask.len(), "logp and mask lengths differ");
    if let Some(c) = clamp {
        assert!(c >= 0.0, "KL clamp must be non-negative");
    }
    let mut kl = vec![0.0f32; logp.len()];
    let mut grad_logp = vec![0.0f32; logp.len()];
    for i in 0..logp.len() {
        if !mask[i] {
            continue;
        }
        let raw_log_ratio = ref_logp[i] - logp[i];
        let (log_ratio, clamped) = match clamp {
            Some(c) if raw_log_ratio.abs() > c => (raw_log_ratio.clamp(-c, c), true),
            _ => (raw_log_ratio, false),
        };
        // (estimate, ∂estimate/∂log r); ∂log r/∂log π = −1.
        let (estimate, d_dlog_ratio) = match estimator {
            KlEstimator::K1 => (-log_ratio, -1.0),
            KlEstimator::K2 => (0.5 * log_ratio * log_ratio, log_ratio),
            // exp_m1 keeps (r − 1) − log r accurate when log r ≈ 0 (no cancellation in r − 1).
            KlEstimator::K3 => (log_ratio.exp_m1() - log_ratio, log_ratio.exp_m1()),
        };
        kl[i] = estimate;
        grad_logp[i] = if clamped { 0.0 } else { -d_dlog_ratio };
    }
    PerTokenKl { kl, grad_logp }
}

/// Mean over rows of the per-sequence KL Σ_t kl_{b,t} (masked), the quantity the adaptive KL
/// controller tracks. `token_kl`, `mask`: `[batch, time]`. Averages over all `batch` rows
/// (an empty row has KL 0); 0 for batch = 0.
pub fn mean_sequence_kl(token_kl: &[f32], mask: &[bool], batch: usize, time: usize) -> f32 {
    assert_shape("token_kl", token_kl.len(), batch, time);
    assert_shape("mask", mask.len(), batch, time);
    if batch == 0 {
        return 0.0;
    }
    // Σ over rows of the row sums is the masked sum of the whole batch.
    (masked_sum_f64(token_kl, mask) / batch as f64) as f32
}
