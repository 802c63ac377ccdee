//! Launchers for kernels/ppo_loss.cu. The CPU oracle of the same names is src/ops/cpu/ppo_loss.rs
//! (the src/loss functions).

use super::CudaEngine;
use crate::loss::{KlPenalty, PolicyLossConfig, ValueLossConfig};
use crate::ops::cpu::ppo_loss::{ensure_fused_policy_loss, PolicyLossStats, ValueLossStats};
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

const THREADS: usize = 256;

/// Blocks and tokens per block for `n` tokens: at most 64 blocks, each a contiguous range.
fn split(n: usize) -> (usize, usize) {
    let blocks = n.div_ceil(4 * THREADS).clamp(1, 64);
    (blocks, n.div_ceil(blocks).max(1))
}

fn sums(eng: &CudaEngine, partials: &CudaSlice<f64>, blocks: usize, k: usize) -> Result<Vec<f64>> {
    let host = eng.download(partials)?;
    let mut s = vec![0.0f64; k];
    for b in 0..blocks {
        for j in 0..k {
            s[j] += host[b * k + j];
        }
    }
    Ok(s)
}

/// grad (n) = the scaled gradient of the clipped policy loss (+ GRPO's k3 term against the
/// reference log-probs (n) `kl` brings); the loss and metrics as the src/loss function reports
/// them. `weights` (n) are the token-mean weights, 0 at masked tokens.
#[allow(clippy::too_many_arguments)]
pub fn ppo_policy_loss(
    eng: &CudaEngine,
    grad: &mut CudaSlice<f32>,
    logp: &CudaSlice<f32>,
    old_logp: &CudaSlice<f32>,
    advantages: &CudaSlice<f32>,
    weights: &CudaSlice<f32>,
    kl: Option<(&CudaSlice<f32>, KlPenalty)>,
    cfg: &PolicyLossConfig,
    grad_scale: f32,
) -> Result<PolicyLossStats> {
    ensure_fused_policy_loss(cfg)?;
    let n = grad.len();
    let ref_logp = kl.map(|(r, _)| r);
    ensure!(
        logp.len() == n
            && old_logp.len() == n
            && advantages.len() == n
            && weights.len() == n
            && ref_logp.is_none_or(|r| r.len() == n),
        "ppo_policy_loss: {n} tokens, inputs of {}, {}, {}, {}",
        logp.len(),
        old_logp.len(),
        advantages.len(),
        weights.len()
    );
    let (blocks, per_block) = split(n);
    let mut partials = eng.zeros::<f64>(blocks * 5)?;
    let (ni, pb) = (n as i32, per_block as i32);
    // No KL term: a null reference and β = 0; a clamp below 0 is none.
    let (kl_coef, clamp) = kl.map_or((0.0, -1.0), |(_, p)| (p.coef, p.clamp.unwrap_or(-1.0)));
    let null: u64 = 0;
    let f = eng.function("ppo_policy_loss")?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(grad)
        .arg(&mut partials)
        .arg(logp)
        .arg(old_logp)
        .arg(advantages)
        .arg(weights);
    match ref_logp {
        Some(r) => l.arg(r),
        None => l.arg(&null),
    };
    l.arg(&ni)
        .arg(&pb)
        .arg(&cfg.clip_eps)
        .arg(&kl_coef)
        .arg(&clamp)
        .arg(&grad_scale);
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match the kernel (a null ref_logp is a 0 pointer); lengths checked above.
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("ppo_policy_loss (n={n}): {e:?}"))?;
    let s = sums(eng, &partials, blocks, 5)?;
    let mean = |x: f64| if s[1] > 0.0 { (x / s[1]) as f32 } else { 0.0 };
    Ok(PolicyLossStats {
        loss: s[0] as f32,
        clip_fraction: mean(s[2]),
        approx_kl: mean(s[3]),
    })
}

/// grad (n) = the scaled gradient of the clipped value loss; its loss, clip fraction and
/// explained variance.
#[allow(clippy::too_many_arguments)]
pub fn ppo_value_loss(
    eng: &CudaEngine,
    grad: &mut CudaSlice<f32>,
    values: &CudaSlice<f32>,
    old_values: &CudaSlice<f32>,
    returns: &CudaSlice<f32>,
    weights: &CudaSlice<f32>,
    cfg: &ValueLossConfig,
    grad_scale: f32,
) -> Result<ValueLossStats> {
    let n = grad.len();
    ensure!(
        values.len() == n && old_values.len() == n && returns.len() == n && weights.len() == n,
        "ppo_value_loss: {n} tokens, inputs of {}, {}, {}, {}",
        values.len(),
        old_values.len(),
        returns.len(),
        weights.len()
    );
    let (blocks, per_block) = split(n);
    let mut partials = eng.zeros::<f64>(blocks * 7)?;
    let (ni, pb, c) = (n as i32, per_block as i32, cfg.clip_range.unwrap_or(-1.0));
    let f = eng.function("ppo_value_loss")?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(grad)
        .arg(&mut partials)
        .arg(values)
        .arg(old_values)
        .arg(returns)
        .arg(weights);
    l.arg(&ni).arg(&pb).arg(&c).arg(&grad_scale);
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match the kernel; lengths checked above.
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("ppo_value_loss (n={n}): {e:?}"))?;
    let s = sums(eng, &partials, blocks, 7)?;
    if s[1] == 0.0 {
        return Ok(ValueLossStats::default());
    }
    let count = s[1];
    let var = |sum: f64, sq: f64| sq / count - (sum / count).powi(2);
    let (var_r, var_res) = (var(s[3], s[4]), var(s[5], s[6]));
    Ok(ValueLossStats {
        loss: (s[0] / count) as f32,
        clip_fraction: (s[2] / count) as f32,
        explained_variance: if var_r == 0.0 {
            0.0
        } else {
            (1.0 - var_res / var_r) as f32
        },
    })
}
