//! Generalised advantage estimation (Schulman et al. 2016) over masked token sequences.

use super::numerics::assert_shape;

/// Discount γ and GAE λ. Defaults γ = 1, λ = 0.95 (Ivison et al. 2024).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GaeConfig {
    pub gamma: f32,
    pub lambda: f32,
}

impl Default for GaeConfig {
    fn default() -> Self {
        GaeConfig {
            gamma: 1.0,
            lambda: 0.95,
        }
    }
}

/// Result of [`gae`]; both `[batch, time]`, 0 at masked tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Gae {
    pub advantages: Vec<f32>,
    /// Value targets: returns = advantages + values.
    pub returns: Vec<f32>,
}

/// GAE(γ, λ) per row, over the valid tokens only:
///
/// δ_t = r_t + γ V_{t'} − V_t,  A_t = δ_t + γλ A_{t'},
///
/// where t' is the next valid token after t in the same row; after the last valid token there is
/// nothing to bootstrap from (V = 0, A = 0: the response ended). So each row may have any length,
/// left or right padding, even holes; masked tokens are skipped, not discounted over.
/// `rewards`, `values`, `mask`: `[batch, time]`. With γ = λ = 1, A_t = Σ_{k ≥ t} r_k − V_t.
/// The recursion runs in f64 so long rows do not accumulate f32 rounding.
pub fn gae(
    rewards: &[f32],
    values: &[f32],
    mask: &[bool],
    batch: usize,
    time: usize,
    config: &GaeConfig,
) -> Gae {
    assert_shape("rewards", rewards.len(), batch, time);
    assert_shape("values", values.len(), batch, time);
    assert_shape("mask", mask.len(), batch, time);
    let gamma = f64::from(config.gamma);
    let gamma_lambda = gamma * f64::from(config.lambda);
    let mut advantages = vec![0.0f32; batch * time]; // [B, T]
    let mut returns = vec![0.0f32; batch * time]; // [B, T]
    for b in 0..batch {
        // State carried backwards from the next valid token t' (0 past the end of the response).
        let mut next_value = 0.0f64;
        let mut next_advantage = 0.0f64;
        for i in (b * time..(b + 1) * time).rev() {
            if !mask[i] {
                continue;
            }
            let value = f64::from(values[i]);
            let delta = f64::from(rewards[i]) + gamma * next_value - value;
            let advantage = delta + gamma_lambda * next_advantage;
            advantages[i] = advantage as f32;
            returns[i] = (advantage + value) as f32;
            next_value = value;
            next_advantage = advantage;
        }
    }
    Gae {
        advantages,
        returns,
    }
}
