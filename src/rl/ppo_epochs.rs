//! Step 4 of an iteration: PPO epochs over shuffled minibatches of the rollouts: the clipped
//! policy loss (with GRPO's KL term) and the clipped value loss, fused on the device
//! (kernels/ppo_loss.cu on CUDA, the src/loss functions on the CPU), one optimiser step per
//! minibatch for each trained model.

use super::advantages::{Advantages, Algo};
use super::rollout_batch::{gather, rows_of, RolloutBatch};
use super::scoring::Scored;
use super::setup::{Models, Setup};
use crate::dist::group::Group;
use crate::loss::{
    aggregation_weights, KlPenalty, LossAggregation, PolicyLossConfig, ValueLossConfig,
};
use crate::model::{HeadGrads, Heads};
use crate::ops::Backend;
use crate::train::state::TrainState;
use anyhow::Result;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

/// The losses and diagnostics of every micro-batch of an iteration's epochs.
#[derive(Default)]
pub struct EpochStats {
    pub policy_loss: Vec<f64>,
    pub value_loss: Vec<f64>,
    pub clipfrac: Vec<f64>,
    pub approxkl: Vec<f64>,
    pub value_clipfrac: Vec<f64>,
    pub explained_variance: Vec<f64>,
}

/// `--ppo-epochs` passes over the rollouts `rb` at learning rate `lr`: their shuffled order is a
/// pure function of the iteration's seed. Over several ranks each takes every ranks-th
/// micro-batch of a minibatch and the gradients are summed before each optimiser step, so the
/// steps are one process's; every rank gets every micro-batch's stats.
#[allow(clippy::too_many_arguments)]
pub fn ppo_epochs<S: TrainState>(
    group: &Group,
    m: &mut Models<S>,
    s: &Setup,
    rb: &RolloutBatch,
    scored: &Scored,
    adv: &Advantages,
    kl_coef: f32,
    lr: f32,
    iteration_seed: u64,
) -> Result<EpochStats> {
    let o = &s.opts;
    let (n, t) = (rb.batch.batch, rb.batch.seq);
    let micro = o.minibatch_size / o.grad_accum;
    let heads = Heads::logp_at(o.temperature);
    let (old_logp, ref_logp, values) = (&scored.old_logp, &scored.ref_logp, &scored.values);
    let (mut pl, mut vl, mut clipfrac, mut approxkl, mut vclip) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut explained = Vec::new();
    let scale = 1.0 / o.grad_accum as f32;
    let (rank, ranks) = (group.rank(), group.size());
    // Which micro-batches (counted over the iteration) this rank ran, in order.
    let mut mine = Vec::new();
    let mut counted = 0usize;
    // The communicators are joined here, at the same point on every rank, policy first.
    m.policy.join_group(group)?;
    if let Some(vm) = m.value.as_mut() {
        vm.join_group(group)?;
    }
    for epoch in 0..o.ppo_epochs {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut StdRng::seed_from_u64(
            iteration_seed ^ (epoch as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407),
        ));
        for mb in order.chunks(o.minibatch_size) {
            m.policy.zero_grads()?;
            if let Some(vm) = m.value.as_mut() {
                vm.zero_grads()?;
            }
            // This rank's last micro-batch of the minibatch streams its gradient sum.
            let last_mine = (0..mb.len().div_ceil(micro))
                .rev()
                .find(|j| j % ranks == rank);
            for (j, rows) in mb.chunks(micro).enumerate() {
                counted += 1;
                if j % ranks != rank {
                    continue;
                }
                let last = Some(j) == last_mine;
                mine.push(counted - 1);
                let sub = rows_of(&rb.batch, rows);
                let mask = gather(&rb.mask, rows, t);
                // The micro-batch's inputs go to the device; the losses run there, fused
                // (kernels/ppo_loss.cu on CUDA, the src/loss functions on the CPU).
                let weights = aggregation_weights(&mask, rows.len(), t, LossAggregation::TokenMean);
                let (pol, grads) = if last {
                    m.policy.model_and_last_grads(group)?
                } else {
                    m.policy.model_and_grads()
                };
                let o_dev = &pol.backend;
                let (w_d, old_d, adv_d) = (
                    o_dev.to_device(&weights)?,
                    o_dev.to_device(&gather(old_logp, rows, t))?,
                    o_dev.to_device(&gather(&adv.advantages, rows, t))?,
                );
                let grpo_kl = o.algo == Algo::Grpo && kl_coef > 0.0;
                let ref_d = if grpo_kl {
                    Some(o_dev.to_device(&gather(ref_logp, rows, t))?)
                } else {
                    None
                };
                let f = pol.forward_heads(&sub, heads)?;
                let mut g = o_dev.acc(rows.len() * t)?;
                // GRPO's KL term: β · token mean of k3(π ‖ π_ref), differentiated in log π.
                let kl = ref_d.as_ref().map(|r| {
                    let penalty = KlPenalty {
                        coef: kl_coef,
                        clamp: o.switches.kl_clamp,
                    };
                    (r, penalty)
                });
                let policy_loss = PolicyLossConfig {
                    clip_eps: o.clip,
                    ..Default::default()
                };
                let out = o_dev.ppo_policy_loss(
                    &mut g,
                    &f.logp,
                    &old_d,
                    &adv_d,
                    &w_d,
                    kl,
                    &policy_loss,
                    scale,
                )?;
                pol.backward_into(
                    &f,
                    &HeadGrads {
                        logp: Some(&g),
                        ..Default::default()
                    },
                    grads,
                )?;
                f.recycle(o_dev);
                for x in [Some(g), Some(w_d), Some(old_d), Some(adv_d), ref_d] {
                    x.into_iter().for_each(|x| o_dev.recycle_acc(x));
                }
                pl.push(out.loss as f64);
                clipfrac.push(out.clip_fraction as f64);
                approxkl.push(out.approx_kl as f64);
                if let Some(vm) = m.value.as_mut() {
                    let (val, vgrads) = if last {
                        vm.model_and_last_grads(group)?
                    } else {
                        vm.model_and_grads()
                    };
                    let v_dev = &val.backend;
                    let (w_d, old_v, ret_d) = (
                        v_dev.to_device(&weights)?,
                        v_dev.to_device(&gather(values, rows, t))?,
                        v_dev.to_device(&gather(&adv.returns, rows, t))?,
                    );
                    let f = val.forward_heads(&sub, Heads::VALUE)?;
                    let mut g = v_dev.acc(rows.len() * t)?;
                    let out = v_dev.ppo_value_loss(
                        &mut g,
                        &f.value,
                        &old_v,
                        &ret_d,
                        &w_d,
                        &ValueLossConfig {
                            clip_range: Some(o.value_clip),
                        },
                        scale * o.value_coef,
                    )?;
                    val.backward_into(
                        &f,
                        &HeadGrads {
                            value: Some(&g),
                            ..Default::default()
                        },
                        vgrads,
                    )?;
                    f.recycle(v_dev);
                    for x in [g, w_d, old_v, ret_d] {
                        v_dev.recycle_acc(x);
                    }
                    vl.push(out.loss as f64);
                    vclip.push(out.clip_fraction as f64);
                    explained.push(out.explained_variance as f64);
                }
            }
            // Fully sharded, every pass gathers with the other ranks: a rank with fewer
            // micro-batches in this minibatch runs passes that add nothing, policy then value.
            let mine_here = (0..mb.len().div_ceil(micro))
                .filter(|j| j % ranks == rank)
                .count();
            for _ in mine_here..mb.len().div_ceil(micro).div_ceil(ranks) {
                for state in std::iter::once(&mut m.policy).chain(m.value.as_mut()) {
                    let (model, grads) = state.model_and_grads();
                    if model.in_lockstep() {
                        model.idle_pass(Some(grads.buf))?;
                    }
                }
            }
            // Both sums, then both steps: every rank issues the policy's and the value model's
            // collectives (the sums, and under --shard optimizer the weights' broadcasts) in the
            // same order, whether or not it ran a micro-batch of this minibatch.
            m.policy.all_reduce_grads(group)?;
            if let Some(vm) = m.value.as_mut() {
                vm.all_reduce_grads(group)?;
            }
            m.policy.step(lr, o.run.max_grad_norm)?;
            if let Some(vm) = m.value.as_mut() {
                vm.step(lr, o.run.max_grad_norm)?;
            }
        }
    }
    let stats = EpochStats {
        policy_loss: pl,
        value_loss: vl,
        clipfrac,
        approxkl,
        value_clipfrac: vclip,
        explained_variance: explained,
    };
    gather_stats(group, stats, &mine, counted, m.value.is_some())
}

/// Every micro-batch's stats in the iteration's order, on every rank: this rank's (`mine` says
/// which they are) and the others', summed into place.
fn gather_stats(
    group: &Group,
    local: EpochStats,
    mine: &[usize],
    total: usize,
    has_value: bool,
) -> Result<EpochStats> {
    if group.size() == 1 {
        return Ok(local);
    }
    let columns = [
        &local.policy_loss,
        &local.value_loss,
        &local.clipfrac,
        &local.approxkl,
        &local.value_clipfrac,
        &local.explained_variance,
    ];
    // [6, total]
    let mut flat = vec![0.0; 6 * total];
    for (c, col) in columns.iter().enumerate() {
        for (v, &at) in col.iter().zip(mine) {
            flat[c * total + at] = *v;
        }
    }
    group.all_reduce_sum("PPO micro-batch stats", &mut flat)?;
    let col = |c: usize, present: bool| -> Vec<f64> {
        if present {
            flat[c * total..(c + 1) * total].to_vec()
        } else {
            Vec::new()
        }
    };
    Ok(EpochStats {
        policy_loss: col(0, true),
        value_loss: col(1, has_value),
        clipfrac: col(2, true),
        approxkl: col(3, true),
        value_clipfrac: col(4, has_value),
        explained_variance: col(5, has_value),
    })
}
