//! PPO's losses as the trainer applies them to a micro-batch, on the CPU: the oracle of
//! kernels/ppo_loss.cu. Each is the src/loss function (clipped_policy_loss, per_token_kl,
//! clipped_value_loss), with the gradient scaled for accumulation.

use crate::loss::{
    clipped_policy_loss, clipped_value_loss, per_token_kl, KlEstimator, PolicyLossConfig,
    ValueLossConfig,
};

/// Options of [`ppo_policy_loss`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyLossParams {
    /// PPO's ε.
    pub clip: f32,
    /// β of GRPO's KL loss term, β · token mean of k3(π ‖ π_ref); 0 for none.
    pub kl_coef: f32,
    pub kl_clamp: Option<f32>,
    /// Multiplies the gradient (1 / micro-batches per step).
    pub grad_scale: f32,
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

/// grad[B·T] (written) = grad_scale · ∂/∂logp of the token-mean clipped policy loss (+ the KL
/// term). `mask[i]` marks completion tokens; `ref_logp` is read only with `kl_coef > 0`.
#[allow(clippy::too_many_arguments)]
pub fn ppo_policy_loss(
    grad: &mut [f32],
    logp: &[f32],
    old_logp: &[f32],
    advantages: &[f32],
    mask: &[bool],
    ref_logp: Option<&[f32]>,
    batch: usize,
    time: usize,
    p: PolicyLossParams,
) -> PolicyLossStats {
    let cfg = PolicyLossConfig {
        clip_eps: p.clip,
        ..Default::default()
    };
    let out = clipped_policy_loss(logp, old_logp, advantages, mask, batch, time, &cfg);
    for (g, d) in grad.iter_mut().zip(&out.grad_logp) {
        *g = d * p.grad_scale;
    }
    if let (Some(reference), true) = (ref_logp, p.kl_coef > 0.0) {
        let kl = per_token_kl(logp, reference, mask, KlEstimator::K3, p.kl_clamp);
        let count = mask.iter().filter(|&&m| m).count().max(1) as f32;
        for (g, d) in grad.iter_mut().zip(&kl.grad_logp) {
            *g += p.kl_coef * d / count * p.grad_scale;
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
    clip: Option<f32>,
    grad_scale: f32,
) -> ValueLossStats {
    let cfg = ValueLossConfig { clip_range: clip };
    let out = clipped_value_loss(values, old_values, returns, mask, batch, time, &cfg);
    for (g, d) in grad.iter_mut().zip(&out.grad_values) {
        *g = d * grad_scale;
    }
    ValueLossStats {
        loss: out.loss,
        clip_fraction: out.clip_fraction,
        explained_variance: out.explained_variance,
    }
}
