//! PPO's losses as the trainer applies them to a micro-batch, on the CPU: the oracle of
//! kernels/ppo_loss.cu. Each is the src/loss function (clipped_policy_loss, per_token_kl,
//! clipped_value_loss), with the gradient scaled for accumulation.

use crate::loss::{
    clipped_policy_loss, clipped_value_loss, per_token_kl, KlEstimator, KlPenalty, LossAggregation,
    PolicyLossConfig, ValueLossConfig,
};

/// The fused policy loss reads its reduction from the weights the caller passes, which are the
/// token mean's, and has no dual clip (kernels/ppo_loss.cu): any other `cfg` is refused by name.
pub fn ensure_fused_policy_loss(cfg: &PolicyLossConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        cfg.aggregation == LossAggregation::TokenMean && cfg.dual_clip.is_none(),
        "ppo_policy_loss runs the token mean without dual clip, not {cfg:?}"
    );
    Ok(())
}

/// Loss and metrics of a micro-batch (token means over its valid tokens).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PolicyLossStats {
    pub loss: f32,
    pub clip_fraction: f32,
    pub approx_kl: f32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ValueLossStats {
    pub loss: f32,
    pub clip_fraction: f32,
    pub explained_variance: f32,
}

/// grad[B·T] (written) = grad_scale · ∂/∂logp of the clipped policy loss (+ the KL term when
/// `kl` brings the reference's log-probs [B·T] and its β). `mask[i]` marks completion tokens.
#[allow(clippy::too_many_arguments)]
pub fn ppo_policy_loss(
    grad: &mut [f32],
    logp: &[f32],
    old_logp: &[f32],
    advantages: &[f32],
    mask: &[bool],
    kl: Option<(&[f32], KlPenalty)>,
    batch: usize,
    time: usize,
    cfg: &PolicyLossConfig,
    grad_scale: f32,
) -> PolicyLossStats {
    let out = clipped_policy_loss(logp, old_logp, advantages, mask, batch, time, cfg);
    for (g, d) in grad.iter_mut().zip(&out.grad_logp) {
        *g = d * grad_scale;
    }
    if let Some((reference, penalty)) = kl.filter(|(_, p)| p.coef > 0.0) {
        let kl = per_token_kl(logp, reference, mask, KlEstimator::K3, penalty.clamp);
        let count = mask.iter().filter(|&&m| m).count().max(1) as f32;
        for (g, d) in grad.iter_mut().zip(&kl.grad_logp) {
            *g += penalty.coef * d / count * grad_scale;
        }
    }
    PolicyLossStats {
        loss: out.loss,
        clip_fraction: out.clip_fraction,
        approx_kl: out.approx_kl,
    }
}

/// grad[B·T] (written) = grad_scale · ∂/∂values of the token-mean clipped value loss.
#[allow(clippy::too_many_arguments)]
pub fn ppo_value_loss(
    grad: &mut [f32],
    values: &[f32],
    old_values: &[f32],
    returns: &[f32],
    mask: &[bool],
    batch: usize,
    time: usize,
    cfg: &ValueLossConfig,
    grad_scale: f32,
) -> ValueLossStats {
    let out = clipped_value_loss(values, old_values, returns, mask, batch, time, cfg);
    for (g, d) in grad.iter_mut().zip(&out.grad_values) {
        *g = d * grad_scale;
    }
    ValueLossStats {
        loss: out.loss,
        clip_fraction: out.clip_fraction,
        explained_variance: out.explained_variance,
    }
}
