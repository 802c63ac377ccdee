//! Launchers for kernels/adamw.cu: the global gradient norm and the AdamW step. The CPU oracle
//! is src/ops/cpu/adamw.rs (`clip_grad_norm`, `AdamW::step`).

use super::CudaEngine;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::bf16;

/// Blocks of the norm's first pass: fixed, so the sum's order (and value) never changes.
const NORM_BLOCKS: usize = 512;

/// norm[0] = ‖grads‖₂, in two deterministic passes through `partial` (NORM_BLOCKS f64 sums).
pub fn grad_norm(
    eng: &CudaEngine,
    norm: &mut CudaSlice<f32>,
    partial: &mut CudaSlice<f64>,
    grads: &CudaSlice<f32>,
) -> Result<()> {
    grad_norm_partial(eng, partial, grads)?;
    grad_norm_finish(eng, norm, partial)
}

/// The norm's first pass: `partial` (NORM_BLOCKS f64) = sums of squares of fixed strided parts
/// of `grads`. Under `--shard full` the ranks' partials are summed before the second pass.
pub fn grad_norm_partial(
    eng: &CudaEngine,
    partial: &mut CudaSlice<f64>,
    grads: &CudaSlice<f32>,
) -> Result<()> {
    ensure!(partial.len() == NORM_BLOCKS, "grad_norm: scratch sizes");
    let n = grads.len();
    let f = eng.function("grad_norm_partial")?;
    let cfg = LaunchConfig {
        grid_dim: (NORM_BLOCKS as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = eng.stream.launch_builder(&f);
    l.arg(&mut *partial).arg(grads).arg(&n);
    // SAFETY: arguments match the kernel.
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("grad_norm_partial (n={n}): {e:?}"))?;
    Ok(())
}

/// The norm's second pass: norm[0] = sqrt(Σ partial).
pub fn grad_norm_finish(
    eng: &CudaEngine,
    norm: &mut CudaSlice<f32>,
    partial: &CudaSlice<f64>,
) -> Result<()> {
    ensure!(
        norm.len() == 1 && partial.len() == NORM_BLOCKS,
        "grad_norm: scratch sizes"
    );
    let f = eng.function("grad_norm_finish")?;
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (512, 1, 1),
        shared_mem_bytes: 0,
    };
    let blocks = NORM_BLOCKS as i32;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(norm).arg(partial).arg(&blocks);
    // SAFETY: as above.
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("grad_norm_finish: {e:?}"))?;
    Ok(())
}

pub fn norm_scratch(eng: &CudaEngine) -> Result<CudaSlice<f64>> {
    eng.zeros(NORM_BLOCKS)
}

/// The optimiser's hyper-parameters for one step.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// The step number, from 1, for the bias corrections.
    pub t: u64,
    /// Clip the global gradient norm to this (0 turns clipping off).
    pub max_norm: f32,
}

/// The ranges weight decay skips, on the device as the kernel reads them: [start, end) pairs,
/// flattened. None for no ranges (a zero-length allocation is not a thing to ask a driver for).
pub fn upload_no_decay(
    eng: &CudaEngine,
    ranges: &[std::ops::Range<usize>],
) -> Result<Option<CudaSlice<u64>>> {
    ensure!(
        ranges.windows(2).all(|w| w[0].end <= w[1].start),
        "adamw: the no-decay ranges must be sorted and disjoint"
    );
    if ranges.is_empty() {
        return Ok(None);
    }
    let flat: Vec<u64> = ranges
        .iter()
        .flat_map(|r| [r.start as u64, r.end as u64])
        .collect();
    Ok(Some(eng.upload(&flat)?))
}

/// One AdamW step over the flat buffers: master (f32) and its bf16 copy, m and v, with the
/// gradient scaled by min(1, max_norm / norm[0]) and no weight decay inside `no_decay`
/// (from [`upload_no_decay`], offsets into these buffers). The bf16 copy and the gradients are
/// views: under `--shard optimizer` a rank updates its slice of the model's.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    eng: &CudaEngine,
    master: &mut CudaSlice<f32>,
    params_bf16: &mut CudaViewMut<bf16>,
    grads: &CudaView<f32>,
    m: &mut CudaSlice<f32>,
    v: &mut CudaSlice<f32>,
    norm: &CudaSlice<f32>,
    no_decay: Option<&CudaSlice<u64>>,
    h: AdamWStep,
) -> Result<()> {
    let n = master.len();
    ensure!(
        params_bf16.len() == n && grads.len() == n && m.len() == n && v.len() == n,
        "adamw_step: n={n}"
    );
    let no_decay_count = no_decay.map_or(0, |r| r.len() / 2) as i32;
    let null: u64 = 0;
    let bias1 = 1.0 - h.beta1.powi(h.t as i32);
    let bias2 = 1.0 - h.beta2.powi(h.t as i32);
    let f = eng.function("adamw_step")?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(master)
        .arg(params_bf16)
        .arg(grads)
        .arg(m)
        .arg(v)
        .arg(norm);
    l.arg(&h.max_norm)
        .arg(&h.lr)
        .arg(&h.beta1)
        .arg(&h.beta2)
        .arg(&h.eps)
        .arg(&h.weight_decay);
    l.arg(&bias1).arg(&bias2);
    match no_decay {
        Some(r) => l.arg(r),
        None => l.arg(&null),
    };
    l.arg(&no_decay_count).arg(&n);
    // SAFETY: arguments match the kernel's signature (a null no_decay is a 0 pointer with a count
    // of 0); lengths checked above.
    unsafe {
        l.launch(LaunchConfig {
            grid_dim: (n.div_ceil(256).clamp(1, 132 * 16) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(|e| anyhow!("adamw_step (n={n}): {e:?}"))?;
    Ok(())
}
