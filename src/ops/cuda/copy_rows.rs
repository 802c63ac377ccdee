//! Launcher for kernels/copy_rows.cu. The CPU oracle of the same name is src/ops/cpu/copy_rows.rs.

use super::CudaEngine;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;

/// dst[pairs[m].1] = src[pairs[m].0] for m < `m`, rows of `width` bf16; `pairs` [M, 2] u32.
/// The row indices are the caller's (the scheduler's) to keep in range: they index the cache.
pub fn copy_rows(
    eng: &CudaEngine,
    dst: &mut CudaSlice<bf16>,
    src: &CudaSlice<bf16>,
    pairs: &CudaSlice<u32>,
    m: usize,
    width: usize,
) -> Result<()> {
    ensure!(
        pairs.len() >= 2 * m
            && width > 0
            && dst.len().is_multiple_of(width)
            && src.len().is_multiple_of(width),
        "copy_rows: {m} pairs ({} indices), width {width}, dst {}, src {}",
        pairs.len(),
        dst.len(),
        src.len()
    );
    if m == 0 {
        return Ok(());
    }
    let (mi, wi) = (m as i32, width as i32);
    let f = eng.function("copy_rows")?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(dst).arg(src).arg(pairs).arg(&mi).arg(&wi);
    let cfg = LaunchConfig {
        grid_dim: (m as u32, 1, 1),
        block_dim: (width.min(256) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match the kernel; pair count checked above.
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("copy_rows (m={m}, width={width}): {e:?}"))?;
    Ok(())
}
