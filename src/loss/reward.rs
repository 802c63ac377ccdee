//! Bradley-Terry pairwise loss for training a scalar reward model.

use super::numerics::{log_sigmoid, sigmoid};

/// Result of [`reward_model_loss`]; vectors are `[N]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RewardModelOutput {
    /// Mean over pairs of −log σ(r_c − r_r − m) (0 for N = 0).
    pub loss: f32,
    /// ∂loss/∂r_c and ∂loss/∂r_r (including the 1/N of the mean).
    pub grad_chosen: Vec<f32>,
    pub grad_rejected: Vec<f32>,
    /// Per-pair reward margin r_c − r_r (without the target margin m).
    pub margins: Vec<f32>,
    /// Fraction of pairs with r_c > r_r (strict; a tie counts as wrong). 0 for N = 0.
    pub accuracy: f32,
    /// Mean of `margins` (0 for N = 0).
    pub mean_margin: f32,
}

/// Bradley-Terry loss (Bradley & Terry 1952; Ouyang et al. 2022), mean over N pairs:
///
/// ℓ_i = −log σ(z_i), z_i = r_c,i − r_r,i − m_i, with m_i the optional per-pair target margin
/// (Llama 2 style; `None` means m = 0). ∂ℓ_i/∂r_c,i = −σ(−z_i) = −∂ℓ_i/∂r_r,i.
///
/// `chosen`, `rejected`, `margin`: `[N]` scalar rewards of the chosen / rejected responses.
pub fn reward_model_loss(
    chosen: &[f32],
    rejected: &[f32],
    margin: Option<&[f32]>,
) -> RewardModelOutput {
    let n = chosen.len();
    assert_eq!(rejected.len(), n, "rejected must be [N]");
    if let Some(margin) = margin {
        assert_eq!(margin.len(), n, "margin must be [N]");
    }
    let inv_n = if n > 0 { 1.0 / n as f32 } else { 0.0 };
    let mut grad_chosen = Vec::with_capacity(n);
    let mut grad_rejected = Vec::with_capacity(n);
    let mut margins = Vec::with_capacity(n);
    let mut loss_sum = 0.0f64;
    let mut margin_sum = 0.0f64;
    let mut correct_count = 0usize;
    for i in 0..n {
        let reward_margin = chosen[i] - rejected[i];
        let target_margin = margin.map_or(0.0, |m| m[i]);
        let z = reward_margin - target_margin;
        loss_sum += f64::from(-log_sigmoid(z));
        let dloss_dz = -sigmoid(-z);
        grad_chosen.push(dloss_dz * inv_n);
        grad_rejected.push(-dloss_dz * inv_n);
        margins.push(reward_margin);
        margin_sum += f64::from(reward_margin);
        correct_count += usize::from(chosen[i] > rejected[i]);
    }
    let mean_of = |sum: f64| if n > 0 { (sum / n as f64) as f32 } else { 0.0 };
    RewardModelOutput {
        loss: mean_of(loss_sum),
        grad_chosen,
        grad_rejected,
        margins,
        accuracy: mean_of(correct_count as f64),
        mean_margin: mean_of(margin_sum),
    }
}
