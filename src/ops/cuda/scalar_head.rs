//! Launchers for kernels/scalar_head.cu. The CPU oracle of the same names is
//! src/ops/cpu/scalar_head.rs.

use super::CudaEngine;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::bf16;

/// value (N) f32 = h (N,D) · w (D).
pub fn scalar_head_forward(
    eng: &CudaEngine,
    value: &mut CudaSlice<f32>,
    h: &CudaSlice<bf16>,
    w: &CudaView<bf16>,
    n: usize,
    d: usize,
) -> Result<()> {
    ensure!(
        value.len() == n && h.len() == n * d && w.len() == d,
        "scalar_head_forward: N={n}, D={d}"
    );
    let f = eng.function("scalar_head_forward")?;
    let cfg = LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (n_i, d_i) = (n as i32, d as i32);
    let mut l = eng.stream.launch_builder(&f);
    l.arg(value).arg(h).arg(w).arg(&n_i).arg(&d_i);
    // SAFETY: arguments match the kernel; lengths checked above.
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("scalar_head_forward (N={n}, D={d}): {e:?}"))?;
    Ok(())
}

/// dh (N,D) f32 += dvalue ⊗ w; dw (D) f32 += Σ_n dvalue·h, through the (N,D) scratch `partial`.
pub fn scalar_head_backward(
    eng: &CudaEngine,
    dh: &mut CudaSlice<f32>,
    dw: &mut CudaViewMut<f32>,
    partial: &mut CudaSlice<f32>,
    dvalue: &CudaSlice<f32>,
    h: &CudaSlice<bf16>,
    w: &CudaView<bf16>,
    n: usize,
    d: usize,
) -> Result<()> {
    ensure!(
        dh.len() == n * d
            && partial.len() >= super::rmsnorm::column_scratch_len(n, d)
            && dvalue.len() == n
            && dw.len() == d,
        "scalar_head_backward: N={n}, D={d}"
    );
    let (mut rows, mut sums) = partial.split_at_mut(n * d);
    let f = eng.function("scalar_head_backward")?;
    let cfg = LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (n_i, d_i) = (n as i32, d as i32);
    let mut l = eng.stream.launch_builder(&f);
    l.arg(&mut *dh)
        .arg(&mut rows)
        .arg(dvalue)
        .arg(h)
        .arg(w)
        .arg(&n_i)
        .arg(&d_i);
    // SAFETY: as above.
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("scalar_head_backward (N={n}, D={d}): {e:?}"))?;
    super::rmsnorm::column_sum_accumulate(eng, dw, &mut rows, &mut sums, n, d)
}
