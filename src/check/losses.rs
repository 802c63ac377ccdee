//! `prefer check` for the fused loss kernels against the src/loss functions they implement, to
//! 1e-5: the DPO family with its sequence reduction (kernels/dpo_loss.cu), the Bradley-Terry loss
//! (kernels/reward_loss.cu), PPO's policy loss with
//! GRPO's k3 term and a KL clamp, and the clipped value loss (kernels/ppo_loss.cu).

use super::harness::{compare, scalar, timed, CheckRow, Lcg};
use crate::loss::{
    aggregation_weights, KlPenalty, LossAggregation, PolicyLossConfig, ValueLossConfig,
};
use crate::ops::cpu::dpo_loss as cpu_dpo;
use crate::ops::cpu::ppo_loss as cpu_loss;
use crate::ops::cuda::{self, CudaEngine};
use anyhow::Result;

/// (loss, --average-logps, pairs, T): every loss on sums, and on means (SimPO always averages).
pub(super) fn dpo_loss(eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    use crate::loss::DpoLoss;
    let mut rows = Vec::new();
    for (loss, average_logps, pairs, t) in [
        (DpoLoss::Sigmoid, false, 3, 37),
        (DpoLoss::Ipo, false, 4, 100),
        (DpoLoss::Hinge, false, 4, 100),
        (DpoLoss::Simpo, true, 8, 600),
        (DpoLoss::RefFreeSigmoid, false, 2, 1024),
        (DpoLoss::Sigmoid, true, 5, 77),
        (DpoLoss::Ipo, true, 4, 100),
        (DpoLoss::Hinge, true, 3, 256),
        (DpoLoss::RefFreeSigmoid, true, 2, 513),
    ] {
        rows.extend(check_dpo(eng, loss, average_logps, pairs, t)?);
    }
    Ok(rows)
}

fn check_dpo(
    eng: &CudaEngine,
    loss: crate::loss::DpoLoss,
    average_logps: bool,
    pairs: usize,
    t: usize,
) -> Result<Vec<CheckRow>> {
    use crate::loss::{DpoConfig, DpoLoss};
    let rows = 2 * pairs;
    let n = rows * t;
    let mut g = Lcg(131 + n as u64);
    // Responses start a third of the way in, and rows end at different lengths.
    let mask: Vec<bool> = (0..n)
        .map(|i| {
            let (r, j) = (i / t, i % t);
            j >= t / 3 && j < t - (r * 7) % (t / 3).max(1)
        })
        .collect();
    let logp: Vec<f32> = (0..n).map(|_| -2.0 + 1.5 * g.uniform()).collect();
    let cfg = DpoConfig {
        loss,
        beta: 0.1,
        label_smoothing: if loss == DpoLoss::Sigmoid { 0.1 } else { 0.0 },
        simpo_gamma: 0.5,
        average_logps,
    };
    let reduction = cfg.reduction();
    // Reference log-probs near the policy's, so that h is small and the losses are not saturated
    // (on means the spread is smaller, as a mean's scale is a token's).
    let seq = crate::loss::sequence_logprobs(&logp, &mask, rows, t, reduction);
    let spread = if average_logps { 0.2 } else { 2.0 };
    let reference: Vec<f32> = seq.iter().map(|&s| s + spread * g.uniform()).collect();
    let mut dlogp = vec![0.0; n];
    let cpu = cpu_dpo::dpo_loss(
        &mut dlogp,
        &logp,
        &mask,
        Some(&reference),
        pairs,
        t,
        &cfg,
        0.5,
    );
    let weights = crate::train::dpo::response_weights(&mask, rows, t, reduction);
    let (logp_d, w_d, ref_d) = (
        eng.upload(&logp)?,
        eng.upload(&weights)?,
        eng.upload(&reference)?,
    );
    let mut dlogp_d = eng.zeros::<f32>(n)?;
    let mut rows_d = eng.zeros::<f32>(5 * pairs)?;
    let ms = timed(eng, "dpo_loss", || {
        cuda::dpo_loss::dpo_loss(
            eng,
            &mut dlogp_d,
            &mut rows_d,
            &logp_d,
            &w_d,
            Some(&ref_d),
            pairs,
            t,
            &cfg,
            0.5,
        )
    })?;
    let gpu = cpu_dpo::DpoPairs::from_rows(&eng.download(&rows_d)?, pairs);
    let shape = format!(
        "{loss:?}{} P={pairs} T={t}",
        if average_logps && loss != DpoLoss::Simpo {
            " mean"
        } else {
            ""
        }
    );
    Ok(vec![
        compare(
            "dpo_loss dlogp",
            &shape,
            &eng.download(&dlogp_d)?,
            &dlogp,
            1e-5,
            ms,
        ),
        compare(
            "dpo_loss losses",
            &shape,
            &gpu.losses,
            &cpu.losses,
            1e-5,
            ms,
        ),
        compare(
            "dpo_loss rewards",
            &shape,
            &gpu.chosen_rewards,
            &cpu.chosen_rewards,
            1e-5,
            ms,
        ),
        compare("dpo_loss seq logp", &shape, &gpu.seq, &cpu.seq, 1e-5, ms),
    ])
}

/// (pairs, T, margins): one pair, a batch with margins, many short pairs.
pub(super) fn bradley_terry(eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    for (pairs, t, margins) in [(1, 9, false), (16, 130, true), (300, 64, false)] {
        let n = 2 * pairs * t;
        let mut g = Lcg(211 + n as u64);
        let value: Vec<f32> = (0..n).map(|_| 3.0 * g.uniform()).collect();
        // The reward token: somewhere in each row, as a sequence's last real token.
        let token: Vec<u32> = (0..2 * pairs)
            .map(|r| (r * t + t / 2 + (r * 13) % (t / 2)) as u32)
            .collect();
        let margin: Option<Vec<f32>> = margins.then(|| (0..pairs).map(|_| g.uniform()).collect());
        let mut dvalue = vec![0.0; n];
        let cpu = crate::ops::cpu::reward_loss::bradley_terry_loss(
            &mut dvalue,
            &value,
            &token,
            margin.as_deref(),
            pairs,
            0.5,
        );
        let (v_d, t_d) = (eng.upload(&value)?, eng.upload(&token)?);
        let m_d = margin.as_ref().map(|m| eng.upload(m)).transpose()?;
        let mut dv_d = eng.zeros::<f32>(n)?;
        let mut rows_d = eng.zeros::<f32>(3 * pairs)?;
        let ms = timed(eng, "bradley_terry_loss", || {
            eng.zero(&mut dv_d)?;
            cuda::reward_loss::bradley_terry_loss(
                eng,
                &mut dv_d,
                &mut rows_d,
                &v_d,
                &t_d,
                m_d.as_ref(),
                pairs,
                0.5,
            )
        })?;
        let gpu_rows = eng.download(&rows_d)?;
        let gpu = crate::ops::cpu::reward_loss::RewardPairs::from_rows(&gpu_rows, pairs);
        let shape = format!("P={pairs} T={t}{}", if margins { " margins" } else { "" });
        rows.push(compare(
            "bradley_terry_loss dvalue",
            &shape,
            &eng.download(&dv_d)?,
            &dvalue,
            1e-5,
            ms,
        ));
        rows.push(scalar(
            "bradley_terry_loss loss",
            &shape,
            gpu.loss,
            cpu.loss,
            1e-5,
            ms,
        ));
        let cpu_rows = crate::ops::cpu::reward_loss::reward_rows(&cpu, margin.as_deref());
        rows.push(compare(
            "bradley_terry_loss pairs",
            &shape,
            &gpu_rows,
            &cpu_rows,
            1e-5,
            ms,
        ));
    }
    Ok(rows)
}

/// (batch, T): one short row, and batches of 600- and 1100-token rows.
pub(super) fn ppo_loss(eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    for (b, t) in [(1, 37), (8, 600), (64, 1100)] {
        rows.extend(check_ppo_losses(eng, b, t)?);
    }
    Ok(rows)
}

/// The inputs of PPO's two losses on `batch` × `time` tokens, 70% of them completion tokens.
struct PpoCase {
    mask: Vec<bool>,
    old: Vec<f32>,
    logp: Vec<f32>,
    reference: Vec<f32>,
    adv: Vec<f32>,
    values: Vec<f32>,
    old_values: Vec<f32>,
    returns: Vec<f32>,
}

impl PpoCase {
    fn new(batch: usize, time: usize) -> PpoCase {
        let n = batch * time;
        let mut g = Lcg(97 + n as u64);
        let mask: Vec<bool> = (0..n).map(|_| g.uniform() > -0.4).collect();
        let old: Vec<f32> = (0..n).map(|_| -1.5 + g.uniform()).collect();
        // Log-ratios up to ±0.4, so that both sides of PPO's clip (0.2) are taken.
        let logp = old.iter().map(|&x| x + 0.4 * g.uniform()).collect();
        let reference = old.iter().map(|&x| x + 0.6 * g.uniform()).collect();
        let adv = (0..n).map(|_| 2.0 * g.uniform()).collect();
        let values: Vec<f32> = (0..n).map(|_| g.uniform()).collect();
        let old_values = values.iter().map(|&v| v + 0.3 * g.uniform()).collect();
        let returns = (0..n).map(|_| 1.5 * g.uniform()).collect();
        PpoCase {
            mask,
            old,
            logp,
            reference,
            adv,
            values,
            old_values,
            returns,
        }
    }
}

fn check_ppo_losses(eng: &CudaEngine, batch: usize, time: usize) -> Result<Vec<CheckRow>> {
    let n = batch * time;
    let c = PpoCase::new(batch, time);
    let count = c.mask.iter().filter(|&&m| m).count();
    let weights = aggregation_weights(&c.mask, batch, time, LossAggregation::TokenMean);
    let policy = PolicyLossConfig {
        clip_eps: 0.2,
        ..Default::default()
    };
    let kl = KlPenalty {
        coef: 0.05,
        clamp: Some(0.5),
    };
    let value = ValueLossConfig {
        clip_range: Some(0.2),
    };

    let mut grad = vec![0.0; n];
    let cpu_p = cpu_loss::ppo_policy_loss(
        &mut grad,
        &c.logp,
        &c.old,
        &c.adv,
        &c.mask,
        Some((&c.reference, kl)),
        batch,
        time,
        &policy,
        0.5,
    );
    let mut vgrad = vec![0.0; n];
    let cpu_v = cpu_loss::ppo_value_loss(
        &mut vgrad,
        &c.values,
        &c.old_values,
        &c.returns,
        &c.mask,
        batch,
        time,
        &value,
        0.05,
    );

    let up = |x: &[f32]| eng.upload(x);
    let (logp_d, old_d, adv_d, w_d, ref_d) = (
        up(&c.logp)?,
        up(&c.old)?,
        up(&c.adv)?,
        up(&weights)?,
        up(&c.reference)?,
    );
    let (v_d, ov_d, r_d) = (up(&c.values)?, up(&c.old_values)?, up(&c.returns)?);
    let mut grad_d = eng.zeros::<f32>(n)?;
    let mut vgrad_d = eng.zeros::<f32>(n)?;
    let mut gpu_p = Default::default();
    let ms_p = timed(eng, "ppo_policy_loss", || {
        gpu_p = cuda::ppo_loss::ppo_policy_loss(
            eng,
            &mut grad_d,
            &logp_d,
            &old_d,
            &adv_d,
            &w_d,
            Some((&ref_d, kl)),
            &policy,
            0.5,
        )?;
        Ok(())
    })?;
    let mut gpu_v = Default::default();
    let ms_v = timed(eng, "ppo_value_loss", || {
        gpu_v = cuda::ppo_loss::ppo_value_loss(
            eng,
            &mut vgrad_d,
            &v_d,
            &ov_d,
            &r_d,
            &w_d,
            &value,
            0.05,
        )?;
        Ok(())
    })?;
    let shape = format!("B={batch} T={time} ({count} tokens)");
    // A clip decision may flip on one token where exp rounds differently: one token's share.
    let one = 1.0 / count.max(1) as f32;
    let scalars = |rows: &[(&str, f32, f32, f32)], ms: f64| -> Vec<CheckRow> {
        let row =
            |&(op, gpu, cpu, tol): &(&str, f32, f32, f32)| scalar(op, &shape, gpu, cpu, tol, ms);
        rows.iter().map(row).collect()
    };
    let policy_grad = eng.download(&grad_d)?;
    let value_grad = eng.download(&vgrad_d)?;
    let mut rows = vec![compare(
        "ppo_policy_loss grad",
        &shape,
        &policy_grad,
        &grad,
        1e-5,
        ms_p,
    )];
    rows.extend(scalars(
        &[
            ("ppo_policy_loss loss", gpu_p.loss, cpu_p.loss, 1e-5),
            (
                "ppo_policy_loss approx_kl",
                gpu_p.approx_kl,
                cpu_p.approx_kl,
                1e-5,
            ),
            (
                "ppo_policy_loss clipfrac",
                gpu_p.clip_fraction,
                cpu_p.clip_fraction,
                one,
            ),
        ],
        ms_p,
    ));
    rows.push(compare(
        "ppo_value_loss grad",
        &shape,
        &value_grad,
        &vgrad,
        1e-5,
        ms_v,
    ));
    let explained = (gpu_v.explained_variance, cpu_v.explained_variance);
    rows.extend(scalars(
        &[
            ("ppo_value_loss loss", gpu_v.loss, cpu_v.loss, 1e-5),
            (
                "ppo_value_loss explained var",
                explained.0,
                explained.1,
                1e-5,
            ),
        ],
        ms_v,
    ));
    Ok(rows)
}
