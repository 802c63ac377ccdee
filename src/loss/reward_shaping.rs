//! Per-token PPO rewards: KL penalty on every response token plus the sequence score at the end,
//! and the EOS trick of Ivison et al. 2024.

use super::numerics::assert_shape;

/// EOS trick: a response that was cut off (does not end with EOS) gets a fixed score instead of
/// the reward model's, so the policy learns to finish its answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EosPenalty {
    /// Score given to a response without EOS. Default −10 (Ivison et al. 2024).
    pub missing_eos_score: f32,
}

impl Default for EosPenalty {
    fn default() -> Self {
        EosPenalty {
            missing_eos_score: -10.0,
        }
    }
}

/// s'_b = s_b if `ends_with_eos[b]` else `penalty.missing_eos_score`. `scores`, `ends_with_eos`: `[batch]`.
pub fn apply_eos_penalty(scores: &[f32], ends_with_eos: &[bool], penalty: &EosPenalty) -> Vec<f32> {
    assert_eq!(
        scores.len(),
        ends_with_eos.len(),
        "scores and ends_with_eos lengths differ"
    );
    scores
        .iter()
        .zip(ends_with_eos)
        .map(|(&score, &has_eos)| {
            if has_eos {
                score
            } else {
                penalty.missing_eos_score
            }
        })
        .collect()
}

/// Shaped per-token rewards `[batch, time]` (Ziegler et al. 2019; Ouyang et al. 2022):
///
/// r_{b,t} = −β · kl_{b,t} on response tokens (m_{b,t}), plus s_b at the last response token
/// t = max{t : m_{b,t}}; 0 at masked tokens.
///
/// `token_kl`: `[batch, time]` per-token KL from [`super::per_token_kl`] (the estimator is chosen
/// there; k1 by default). `scores`: `[batch]` sequence scores (after the EOS penalty and any
/// normalisation). `kl_coef`: β (0.05 in Ivison et al. 2024). A row without response tokens
/// has nowhere to put its score and gets all-zero rewards.
pub fn shaped_rewards(
    token_kl: &[f32],
    scores: &[f32],
    mask: &[bool],
    batch: usize,
    time: usize,
    kl_coef: f32,
) -> Vec<f32> {
    assert_shape("token_kl", token_kl.len(), batch, time);
    assert_shape("mask", mask.len(), batch, time);
    assert_eq!(scores.len(), batch, "scores must be [batch]");
    let mut rewards = vec![0.0f32; batch * time]; // [B, T]
    for (b, &score) in scores.iter().enumerate() {
        let row = b * time..(b + 1) * time;
        let row_mask = &mask[row.clone()];
        let row_rewards = &mut rewards[row.clone()];
        for ((reward, &kl), &valid) in row_rewards.iter_mut().zip(&token_kl[row]).zip(row_mask) {
            if valid {
                *reward = -kl_coef * kl;
            }
        }
        if let Some(last) = row_mask.iter().rposition(|&valid| valid) {
            row_rewards[last] += score;
        }
    }
    rewards
}
