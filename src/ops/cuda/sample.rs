//! Launcher for kernels/sample.cu. The CPU oracle of the same name is src/ops/cpu/sample.rs.

use super::CudaEngine;
use crate::ops::cpu::SamplingParams;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// ids[N], logprobs[N] from logits[N, V] f32 and uniforms[N].
pub fn sample_tokens(
    eng: &CudaEngine,
    ids: &mut CudaSlice<u32>,
    logprobs: &mut CudaSlice<f32>,
    logits: &CudaSlice<f32>,
    uniforms: &CudaSlice<f32>,
    n: usize,
    vocab: usize,
    p: SamplingParams,
) -> Result<()> {
    ensure!(
        ids.len() >= n && logprobs.len() >= n && uniforms.len() >= n && logits.len() >= n * vocab,
        "sample_tokens: N={n} V={vocab} with {} logits",
        logits.len()
    );
    let (ni, vi) = (n as i32, vocab as i32);
    let top_k = p.top_k.min(i32::MAX as usize) as i32;
    let f = eng.function("sample_tokens")?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(ids).arg(logprobs).arg(logits).arg(uniforms);
    l.arg(&ni)
        .arg(&vi)
        .arg(&p.temperature)
        .arg(&top_k)
        .arg(&p.top_p);
    let cfg = LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match the kernel; lengths checked above.
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("sample_tokens (N={n}, V={vocab}): {e:?}"))?;
    Ok(())
}
