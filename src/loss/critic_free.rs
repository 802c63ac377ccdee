//! Critic-free advantages from n scored rollouts per prompt: GRPO / Dr. GRPO and RLOO.
//!
//! `scores` is `[prompts · n]` with the n rollouts of each prompt contiguous; the result has the
//! same layout and is broadcast to every response token by the trainer.

/// ε added to the group std in GRPO (as TRL's `GRPOTrainer`).
pub const GRPO_STD_EPS: f32 = 1e-4;

/// GRPO group-normalised advantages (Shao et al. 2024):
///
/// A_i = (s_i − mean_g) / (std_g + 1e-4) with `scale_by_std`, else A_i = s_i − mean_g
/// (Dr. GRPO, Liu et al. 2025, drops the std to avoid a difficulty bias).
///
/// std_g is the **unbiased** (n − 1) std of the group, as `torch.std`; for n = 1 it is taken as 0
/// (and the advantage is 0 anyway). A constant group gets advantage 0.
pub fn grpo_advantages(scores: &[f32], group_size: usize, scale_by_std: bool) -> Vec<f32> {
    assert_groups(scores, group_size);
    let mut advantages = Vec::with_capacity(scores.len());
    for group in scores.chunks_exact(group_size) {
        let n = group_size as f64;
        let mean = group.iter().map(|&s| f64::from(s)).sum::<f64>() / n;
        let scale = if scale_by_std {
            let variance = if group_size > 1 {
                group
                    .iter()
                    .map(|&s| (f64::from(s) - mean).powi(2))
                    .sum::<f64>()
                    / (n - 1.0)
            } else {
                0.0
            };
            1.0 / (variance.sqrt() + f64::from(GRPO_STD_EPS))
        } else {
            1.0
        };
        advantages.extend(
            group
                .iter()
                .map(|&s| ((f64::from(s) - mean) * scale) as f32),
        );
    }
    advantages
}

/// RLOO advantages (Ahmadian et al. 2024): each rollout's baseline is the mean of the others,
///
/// A_i = s_i − (1/(n−1)) Σ_{j≠i} s_j  (= n/(n−1) · (s_i − mean_g)).
///
/// A group of one has no other rollout to compare with: its advantage is defined as 0.
pub fn rloo_advantages(scores: &[f32], group_size: usize) -> Vec<f32> {
    assert_groups(scores, group_size);
    if group_size == 1 {
        return vec![0.0; scores.len()];
    }
    let mut advantages = Vec::with_capacity(scores.len());
    for group in scores.chunks_exact(group_size) {
        let total: f64 = group.iter().map(|&s| f64::from(s)).sum();
        let others = (group_size - 1) as f64;
        advantages.extend(
            group
                .iter()
                .map(|&s| (f64::from(s) - (total - f64::from(s)) / others) as f32),
        );
    }
    advantages
}

fn assert_groups(scores: &[f32], group_size: usize) {
    assert!(group_size > 0, "group_size must be positive");
    assert_eq!(
        scores.len() % group_size,
        0,
        "scores length {} is not a multiple of group_size {group_size}",
        scores.len()
    );
}
