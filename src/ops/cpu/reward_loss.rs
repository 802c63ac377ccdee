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
