//! PPO losses (Schulman et al. 2017): clipped policy loss, clipped value loss, entropy bonus.
//!
//! The trainer's total loss is policy + value_coef · value + entropy bonus, with value_coef 0.1
//! in Ivison et al. 2024 ([`DEFAULT_VALUE_COEF`]).

use super::numerics::{
    aggregation_weights, assert_shape, masked_count, masked_mean_f64, masked_variance_f64,
    LossAggregation,
};

/// Weight of the value loss in the total PPO loss (Ivison et al. 2024).
pub const DEFAULT_VALUE_COEF: f32 = 0.1;

/// Options of [`clipped_policy_loss`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyLossConfig {
    /// ε of clip(ratio, 1 − ε, 1 + ε). Default 0.2.
    pub clip_eps: f32,
    /// Dual-clip constant c > 1 (Ye et al. 2020): for A < 0 the loss is capped at −c·A. Default off.
    pub dual_clip: Option<f32>,
    /// Reduction of the per-token loss. Default token mean (PPO); GRPO / Dr. GRPO use the others.
    pub aggregation: LossAggregation,
}

impl Default for PolicyLossConfig {
    fn default() -> Self {
        PolicyLossConfig {
            clip_eps: 0.2,
            dual_clip: None,
            aggregation: LossAggregation::TokenMean,
        }
    }
}

/// Result of [`clipped_policy_loss`].
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyLossOutput {
    pub loss: f32,
    /// ∂loss/∂logp, `[batch, time]`, 0 at masked tokens.
    pub grad_logp: Vec<f32>,
    /// ½ · token mean of (logp − old_logp)² (k2 estimator of KL(π_old ‖ π), as TRL's `approxkl`).
    pub approx_kl: f32,
    /// Token fraction where the clipped term is strictly larger, i.e. the clip is active (TRL's `clipfrac`).
    pub clip_fraction: f32,
    /// Token mean of the ratio π/π_old.
    pub mean_ratio: f32,
}

/// PPO clipped surrogate loss per token, then reduced with `config.aggregation`:
///
/// ρ = exp(logp − old_logp),
/// ℓ = max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)),
/// dual clip (A < 0 only): ℓ = min(ℓ, −c·A).
///
/// ∂ℓ/∂logp = −A·ρ where the unclipped term is the active one, else 0 (a clipped ratio, or the
/// dual-clip cap, is constant in logp). `logp`, `old_logp`, `advantages`, `mask`: `[batch, time]`.
/// Metrics are token means over valid tokens (0 with none).
pub fn clipped_policy_loss(
    logp: &[f32],
    old_logp: &[f32],
    advantages: &[f32],
    mask: &[bool],
    batch: usize,
    time: usize,
    config: &PolicyLossConfig,
) -> PolicyLossOutput {
    assert_shape("logp", logp.len(), batch, time);
    assert_shape("old_logp", old_logp.len(), batch, time);
    assert_shape("advantages", advantages.len(), batch, time);
    assert_shape("mask", mask.len(), batch, time);
    if let Some(c) = config.dual_clip {
        assert!(c > 1.0, "dual clip constant must be > 1");
    }
    let weights = aggregation_weights(mask, batch, time, config.aggregation); // [B, T]
    let mut grad_logp = vec![0.0f32; batch * time]; // [B, T]
    let (low, high) = (1.0 - config.clip_eps, 1.0 + config.clip_eps);
    let mut loss = 0.0f64;
    let (mut kl_sum, mut clipped_count, mut ratio_sum) = (0.0f64, 0usize, 0.0f64);
    for i in 0..batch * time {
        if !mask[i] {
            continue;
        }
        let advantage = advantages[i];
        let log_ratio = logp[i] - old_logp[i];
        let ratio = log_ratio.exp();
        let unclipped = -advantage * ratio;
        let clipped = -advantage * ratio.clamp(low, high);
        // Pessimistic bound: take the larger loss. When they tie the ratio is inside the clip
        // range (or A = 0) and the unclipped gradient is the right one.
        let (mut token_loss, mut dloss_dlogp) = if unclipped >= clipped {
            (unclipped, -advantage * ratio)
        } else {
            (clipped, 0.0)
        };
        if let Some(c) = config.dual_clip {
            let cap = -c * advantage;
            if advantage < 0.0 && cap < token_loss {
                token_loss = cap;
                dloss_dlogp = 0.0;
            }
        }
        loss += f64::from(weights[i]) * f64::from(token_loss);
        grad_logp[i] = weights[i] * dloss_dlogp;
        kl_sum += 0.5 * f64::from(log_ratio).powi(2);
        clipped_count += usize::from(clipped > unclipped);
        ratio_sum += f64::from(ratio);
    }
    let count = masked_count(mask);
    let token_mean = |sum: f64| {
        if count > 0 {
            (sum / count as f64) as f32
        } else {
            0.0
        }
    };
    PolicyLossOutput {
        loss: loss as f32,
        grad_logp,
        approx_kl: token_mean(kl_sum),
        clip_fraction: token_mean(clipped_count as f64),
        mean_ratio: token_mean(ratio_sum),
    }
}

/// Options of [`clipped_value_loss`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ValueLossConfig {
    /// δ of clip(v, v_old − δ, v_old + δ); `None` disables clipping. Default Some(0.2).
    pub clip_range: Option<f32>,
}

impl Default for ValueLossConfig {
    fn default() -> Self {
        ValueLossConfig {
            clip_range: Some(0.2),
        }
    }
}

/// Result of [`clipped_value_loss`].
#[derive(Clone, Debug, PartialEq)]
pub struct ValueLossOutput {
    pub loss: f32,
    /// ∂loss/∂v, `[batch, time]`, 0 at masked tokens.
    pub grad_values: Vec<f32>,
    /// Token fraction where the clipped squared error is strictly larger (the clip is active).
    pub clip_fraction: f32,
    /// [`explained_variance`] of the returns by the current values `v`.
    pub explained_variance: f32,
}

/// PPO clipped value loss, token mean over valid tokens (0 with none):
///
/// v_c = clip(v, v_old − δ, v_old + δ),  ℓ = ½ · max((v − R)², (v_c − R)²).
///
/// ∂ℓ/∂v = (v − R) where the unclipped error is the larger (or they tie), else 0: the clipped
/// error can only be strictly larger when v is outside the clip range, where v_c is constant.
/// `values` (v), `old_values` (v_old), `returns` (R), `mask`: `[batch, time]`.
pub fn clipped_value_loss(
    values: &[f32],
    old_values: &[f32],
    returns: &[f32],
    mask: &[bool],
    batch: usize,
    time: usize,
    config: &ValueLossConfig,
) -> ValueLossOutput {
    assert_shape("values", values.len(), batch, time);
    assert_shape("old_values", old_values.len(), batch, time);
    assert_shape("returns", returns.len(), batch, time);
    assert_shape("mask", mask.len(), batch, time);
    let count = masked_count(mask);
    let inv_count = if count > 0 { 1.0 / count as f64 } else { 0.0 };
    let mut grad_values = vec![0.0f32; batch * time]; // [B, T]
    let mut loss = 0.0f64;
    let mut clipped_count = 0usize;
    for i in 0..batch * time {
        if !mask[i] {
            continue;
        }
        let error = values[i] - returns[i];
        let clipped_error = match config.clip_range {
            Some(delta) => {
                values[i].clamp(old_values[i] - delta, old_values[i] + delta) - returns[i]
            }
            None => error,
        };
        let (unclipped_sq, clipped_sq) = (error * error, clipped_error * clipped_error);
        if unclipped_sq >= clipped_sq {
            loss += 0.5 * f64::from(unclipped_sq);
            grad_values[i] = (f64::from(error) * inv_count) as f32;
        } else {
            loss += 0.5 * f64::from(clipped_sq);
            clipped_count += 1;
        }
    }
    ValueLossOutput {
        loss: (loss * inv_count) as f32,
        grad_values,
        clip_fraction: (clipped_count as f64 * inv_count) as f32,
        explained_variance: explained_variance(values, returns, mask),
    }
}

/// Explained variance 1 − Var(R − v) / Var(R) over valid tokens (population variances; the
/// normalisation cancels). 1 is a perfect value function, 0 is no better than a constant.
/// When Var(R) = 0 (including fewer than one valid token) it returns 0 instead of 0/0.
pub fn explained_variance(predicted: &[f32], targets: &[f32], mask: &[bool]) -> f32 {
    assert_eq!(
        predicted.len(),
        targets.len(),
        "predicted and targets lengths differ"
    );
    assert_eq!(
        predicted.len(),
        mask.len(),
        "predicted and mask lengths differ"
    );
    let target_variance = masked_variance_f64(targets, mask, false);
    if target_variance == 0.0 {
        return 0.0;
    }
    let residuals: Vec<f32> = targets
        .iter()
        .zip(predicted)
        .map(|(&r, &v)| r - v)
        .collect();
    let residual_variance = masked_variance_f64(&residuals, mask, false);
    (1.0 - residual_variance / target_variance) as f32
}

/// Result of [`entropy_bonus`].
#[derive(Clone, Debug, PartialEq)]
pub struct EntropyBonusOutput {
    /// −coef · token mean of the entropy (minimising it raises the entropy).
    pub loss: f32,
    /// ∂loss/∂H_t = −coef / N at valid tokens, 0 elsewhere; `[batch, time]`.
    pub grad_entropy: Vec<f32>,
    /// Token mean of the entropy (0 with no valid token).
    pub mean_entropy: f32,
}

/// Entropy bonus ℓ = −coef · (1/N) Σ_{t : m_t} H_t with H_t the per-token policy entropy `[batch, time]`.
pub fn entropy_bonus(
    entropy: &[f32],
    mask: &[bool],
    batch: usize,
    time: usize,
    coef: f32,
) -> EntropyBonusOutput {
    assert_shape("entropy", entropy.len(), batch, time);
    assert_shape("mask", mask.len(), batch, time);
    let mean_entropy = masked_mean_f64(entropy, mask);
    let count = masked_count(mask);
    let grad = if count > 0 {
        (-f64::from(coef) / count as f64) as f32
    } else {
        0.0
    };
    let grad_entropy = mask
        .iter()
        .map(|&valid| if valid { grad } else { 0.0 })
        .collect();
    EntropyBonusOutput {
        loss: (-f64::from(coef) * mean_entropy) as f32,
        grad_entropy,
        mean_entropy: mean_entropy as f32,
    }
}
