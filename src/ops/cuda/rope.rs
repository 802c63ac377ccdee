//! Launchers for kernels/rope.cu. The CPU oracle of the same names is src/ops/cpu/rope.rs.

use super::CudaEngine;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::{CudaSlice, PushKernelArg};
use half::bf16;

fn rotate(
    eng: &CudaEngine,
    x: &mut CudaSlice<bf16>,
    pos: &CudaSlice<u32>,
    inv_freq: &CudaSlice<f32>,
    heads: usize,
    hd: usize,
    sign: f32,
    op: &str,
) -> Result<()> {
    let n = pos.len();
    ensure!(
        x.len() == n * heads * hd && inv_freq.len() == hd / 2,
        "{op}: N={n}, heads={heads}, hd={hd}"
    );
    let f = eng.function("rope_rotate")?;
    let cfg = super::grid_for(n * heads * hd / 2, op)?;
    let (n_i, h_i, hd_i) = (n as i32, heads as i32, hd as i32);
    let mut l = eng.stream.launch_builder(&f);
    l.arg(x)
        .arg(pos)
        .arg(inv_freq)
        .arg(&n_i)
        .arg(&h_i)
        .arg(&hd_i)
        .arg(&sign);
    // SAFETY: arguments match rope_rotate's signature; lengths checked above.
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("{op} (N={n}, heads={heads}, hd={hd}): {e:?}"))?;
    Ok(())
}

/// In place on x (N, heads, hd) bf16, positions (N), inv_freq (hd/2) from `rope_inv_freq`.
pub fn rope_forward(
    eng: &CudaEngine,
    x: &mut CudaSlice<bf16>,
    pos: &CudaSlice<u32>,
    inv_freq: &CudaSlice<f32>,
    heads: usize,
    hd: usize,
) -> Result<()> {
    rotate(eng, x, pos, inv_freq, heads, hd, 1.0, "rope_forward")
}

/// The inverse rotation, in place on the gradient.
pub fn rope_backward(
    eng: &CudaEngine,
    dx: &mut CudaSlice<bf16>,
    pos: &CudaSlice<u32>,
    inv_freq: &CudaSlice<f32>,
    heads: usize,
    hd: usize,
) -> Result<()> {
    rotate(eng, dx, pos, inv_freq, heads, hd, -1.0, "rope_backward")
}
