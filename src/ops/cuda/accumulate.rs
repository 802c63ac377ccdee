//! Launcher for kernels/accumulate.cu. The CPU oracle of the same name is src/ops/cpu/accumulate.rs.

use super::CudaEngine;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

/// dst (n) += src (n), f32.
pub fn accumulate_f32(
    eng: &CudaEngine,
    dst: &mut CudaViewMut<f32>,
    src: &CudaView<f32>,
) -> Result<()> {
    let n = dst.len();
    ensure!(src.len() == n, "accumulate_f32: {n} vs {}", src.len());
    if n == 0 {
        return Ok(());
    }
    let f = eng.function("accumulate_f32")?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(dst).arg(src).arg(&n);
    // SAFETY: arguments match the kernel; lengths checked above.
    unsafe { l.launch(super::grid_for(n, "elementwise")?) }
        .map_err(|e| anyhow!("accumulate_f32 (n={n}): {e:?}"))?;
    Ok(())
}
