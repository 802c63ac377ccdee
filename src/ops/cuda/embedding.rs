//! Launchers for kernels/embedding.cu. The CPU oracle of the same names is src/ops/cpu/embedding.rs.

use super::CudaEngine;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::bf16;

/// out (N,D) bf16 = table[ids]. `ids` are checked against the vocabulary before they get here.
pub fn embedding_forward(
    eng: &CudaEngine,
    out: &mut CudaSlice<bf16>,
    ids: &CudaSlice<u32>,
    table: &CudaView<bf16>,
    n: usize,
    d: usize,
) -> Result<()> {
    ensure!(
        out.len() == n * d && ids.len() == n && table.len() % d == 0,
        "embedding_forward: N={n}, D={d}"
    );
    let f = eng.function("embedding_forward")?;
    let cfg = LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (n_i, d_i) = (n as i32, d as i32);
    let mut l = eng.stream.launch_builder(&f);
    l.arg(out).arg(ids).arg(table).arg(&n_i).arg(&d_i);
    // SAFETY: arguments match the kernel's signature; lengths checked above.
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("embedding_forward (N={n}, D={d}): {e:?}"))?;
    Ok(())
}

/// dtable (V,D) f32 += dout (N,D) f32 rows by token. The host groups each distinct token's
/// positions (in order), so the device sums in a fixed order: deterministic without atomics.
pub fn embedding_backward(
    eng: &CudaEngine,
    dtable: &mut CudaViewMut<f32>,
    dout: &CudaSlice<f32>,
    ids: &[u32],
    d: usize,
) -> Result<()> {
    ensure!(
        dout.len() == ids.len() * d && dtable.len() % d == 0,
        "embedding_backward: N={}, D={d}",
        ids.len()
    );
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&p| (ids[p as usize], p)); // stable by position within a token
    let (mut tokens, mut starts) = (Vec::new(), Vec::new());
    for (k, &p) in order.iter().enumerate() {
        if tokens.last() != Some(&ids[p as usize]) {
            tokens.push(ids[p as usize]);
            starts.push(k as u32);
        }
    }
    starts.push(order.len() as u32);
    if tokens.is_empty() {
        return Ok(());
    }
    let (tok_d, starts_d, pos_d) = (
        eng.upload(&tokens)?,
        eng.upload(&starts)?,
        eng.upload(&order)?,
    );
    let f = eng.function("embedding_backward")?;
    let cfg = LaunchConfig {
        grid_dim: (tokens.len() as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (u_i, d_i) = (tokens.len() as i32, d as i32);
    let mut l = eng.stream.launch_builder(&f);
    l.arg(dtable)
        .arg(dout)
        .arg(&tok_d)
        .arg(&starts_d)
        .arg(&pos_d)
        .arg(&u_i)
        .arg(&d_i);
    // SAFETY: as above; the CSR arrays were built from `ids`.
    unsafe { l.launch(cfg) }
        .map_err(|e| anyhow!("embedding_backward (N={}, D={d}): {e:?}", ids.len()))?;
    Ok(())
}
