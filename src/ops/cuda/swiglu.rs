//! Launchers for kernels/swiglu.cu. The CPU oracle of the same names is src/ops/cpu/swiglu.rs.

use super::CudaEngine;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::{CudaSlice, PushKernelArg};
use half::bf16;

/// out = silu(gate) · up, all (N·F) bf16.
pub fn swiglu_forward(
    eng: &CudaEngine,
    out: &mut CudaSlice<bf16>,
    gate: &CudaSlice<bf16>,
    up: &CudaSlice<bf16>,
) -> Result<()> {
    let n = out.len();
    ensure!(
        gate.len() == n && up.len() == n,
        "swiglu_forward: {n} vs {} and {}",
        gate.len(),
        up.len()
    );
    let f = eng.function("swiglu_forward")?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(out).arg(gate).arg(up).arg(&n);
    // SAFETY: arguments match the kernel; lengths checked above.
    unsafe { l.launch(super::grid_for(n, "elementwise")?) }
        .map_err(|e| anyhow!("swiglu_forward (n={n}): {e:?}"))?;
    Ok(())
}

/// dgate, dup (written, not accumulated) from dout, gate, up; all (N·F) bf16.
pub fn swiglu_backward(
    eng: &CudaEngine,
    dgate: &mut CudaSlice<bf16>,
    dup: &mut CudaSlice<bf16>,
    dout: &CudaSlice<bf16>,
    gate: &CudaSlice<bf16>,
    up: &CudaSlice<bf16>,
) -> Result<()> {
    let n = dout.len();
    ensure!(
        dgate.len() == n && dup.len() == n && gate.len() == n && up.len() == n,
        "swiglu_backward: n={n}"
    );
    let f = eng.function("swiglu_backward")?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(dgate).arg(dup).arg(dout).arg(gate).arg(up).arg(&n);
    // SAFETY: as above.
    unsafe { l.launch(super::grid_for(n, "elementwise")?) }
        .map_err(|e| anyhow!("swiglu_backward (n={n}): {e:?}"))?;
    Ok(())
}
