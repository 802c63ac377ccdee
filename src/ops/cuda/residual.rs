//! Launchers for kernels/residual.cu. The CPU oracle of the same name is src/ops/cpu/residual.rs.

use super::CudaEngine;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::{CudaSlice, PushKernelArg};
use half::bf16;

/// out = a + b, all (n) bf16.
pub fn residual_forward(
    eng: &CudaEngine,
    out: &mut CudaSlice<bf16>,
    a: &CudaSlice<bf16>,
    b: &CudaSlice<bf16>,
) -> Result<()> {
    let n = out.len();
    ensure!(
        a.len() == n && b.len() == n,
        "residual_forward: {n} vs {} and {}",
        a.len(),
        b.len()
    );
    let f = eng.function("residual_forward")?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(out).arg(a).arg(b).arg(&n);
    // SAFETY: arguments match the kernel; lengths checked above.
    unsafe { l.launch(super::grid_for(n, "elementwise")?) }
        .map_err(|e| anyhow!("residual_forward (n={n}): {e:?}"))?;
    Ok(())
}

/// out (n) bf16 = x (n) f32.
pub fn cast_to_bf16(eng: &CudaEngine, out: &mut CudaSlice<bf16>, x: &CudaSlice<f32>) -> Result<()> {
    let n = out.len();
    ensure!(x.len() == n, "cast_to_bf16: {n} vs {}", x.len());
    let f = eng.function("cast_to_bf16")?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(out).arg(x).arg(&n);
    // SAFETY: as above.
    unsafe { l.launch(super::grid_for(n, "elementwise")?) }
        .map_err(|e| anyhow!("cast_to_bf16 (n={n}): {e:?}"))?;
    Ok(())
}
