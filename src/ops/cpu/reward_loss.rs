//! The Bradley-Terry loss on a micro-batch of pairs, as the reward-model trainer applies it: the
//! oracle of kernels/reward_loss.cu, made of src/loss's reward_model_loss.

use crate::loss::reward_model_loss;

/// The pairs' mean loss and their rewards, each `[pairs]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RewardPairs {
    pub loss: f32,
    pub chosen: Vec<f32>,
    pub rejected: Vec<f32>,
}

impl RewardPairs {
    /// From the device layout, [pairs, 3]: each pair's loss, chosen and rejected reward
    /// (kernels/reward_loss.cu writes it); `loss` is their mean.
    pub fn from_rows(rows: &[f32], pairs: usize) -> RewardPairs {
        let col = |k: usize| (0..pairs).map(|i| rows[i * 3 + k]).collect::<Vec<f32>>();
        let loss = col(0).iter().map(|&x| x as f64).sum::<f64>() / pairs.max(1) as f64;
        RewardPairs {
            loss: loss as f32,
            chosen: col(1),
            rejected: col(2),
        }
    }
}

/// dvalue (zeroed by the caller) gets grad_scale · ∂(mean loss)/∂value at the reward tokens
/// `token` [2P] (chosen, then rejected) of the scalar head's output `value`.
pub fn bradley_terry_loss(
    dvalue: &mut [f32],
    value: &[f32],
    token: &[u32],
    margin: Option<&[f32]>,
    pairs: usize,
    grad_scale: f32,
) -> RewardPairs {
    let chosen: Vec<f32> = (0..pairs).map(|i| value[token[i] as usize]).collect();
    let rejected: Vec<f32> = (0..pairs)
        .map(|i| value[token[pairs + i] as usize])
        .collect();
    let out = reward_model_loss(&chosen, &rejected, margin);
    for i in 0..pairs {
        dvalue[token[i] as usize] = grad_scale * out.grad_chosen[i];
        dvalue[token[pairs + i] as usize] = grad_scale * out.grad_rejected[i];
    }
    RewardPairs {
        loss: out.loss,
        chosen,
        rejected,
    }
}

/// The device layout of `bradley_terry_loss`'s results, [pairs, 3], with each pair's loss
/// −log σ(r_c − r_r − margin).
pub fn reward_rows(out: &RewardPairs, margin: Option<&[f32]>) -> Vec<f32> {
    let mut rows = Vec::with_capacity(3 * out.chosen.len());
    for (i, (&c, &r)) in out.chosen.iter().zip(&out.rejected).enumerate() {
        let z = c - r - margin.map_or(0.0, |m| m[i]);
        rows.extend([-crate::loss::numerics::log_sigmoid(z), c, r]);
    }
    rows
}
