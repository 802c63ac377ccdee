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

/// Each distinct token's positions, in order (CSR), on the device: built once per batch on the
/// host (before the forward, where the ids are known), so the backward needs no host copy.
pub struct TokenGroups {
    tokens: CudaSlice<u32>,
    starts: CudaSlice<u32>,
    positions: CudaSlice<u32>,
    unique: usize,
    n: usize,
}

impl TokenGroups {
    pub fn new(eng: &CudaEngine, ids: &[u32]) -> Result<Self> {
        let mut order: Vec<u32> = (0..ids.len() as u32).collect();
        order.sort_by_key(|&p| (ids[p as usize], p)); // position order within a token
        let (mut tokens, mut starts) = (Vec::new(), Vec::new());
        for (k, &p) in order.iter().enumerate() {
            if tokens.last() != Some(&ids[p as usize]) {
                tokens.push(ids[p as usize]);
                starts.push(k as u32);
            }
        }
        starts.push(order.len() as u32);
        let unique = tokens.len();
        // CUDA refuses empty allocations; an empty batch keeps one unused element.
        tokens.resize(unique.max(1), 0);
        order.resize(ids.len().max(1), 0);
        Ok(TokenGroups {
            tokens: eng.upload(&tokens)?,
            starts: eng.upload(&starts)?,
            positions: eng.upload(&order)?,
            unique,
            n: ids.len(),
        })
    }
}

/// dtable (V,D) f32 += dout (N,D) f32 rows by token: one block per distinct token sums its rows
/// in position order, so the result is deterministic without float atomics.
pub fn embedding_backward(
    eng: &CudaEngine,
    dtable: &mut CudaViewMut<f32>,
    dout: &CudaSlice<f32>,
    groups: &TokenGroups,
    d: usize,
) -> Result<()> {
    let n = groups.n;
    ensure!(
        dout.len() == n * d && dtable.len() % d == 0,
        "embedding_backward: N={n}, D={d}"
    );
    if groups.unique == 0 {
        return Ok(());
    }
    let f = eng.function("embedding_backward")?;
    let cfg = LaunchConfig {
        grid_dim: (groups.unique as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (u_i, d_i) = (groups.unique as i32, d as i32);
    let mut l = eng.stream.launch_builder(&f);
    l.arg(dtable)
        .arg(dout)
        .arg(&groups.tokens)
        .arg(&groups.starts)
        .arg(&groups.positions)
        .arg(&u_i)
        .arg(&d_i);
    // SAFETY: arguments match the kernel; the CSR arrays were built from this batch's ids.
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("embedding_backward (N={n}, D={d}): {e:?}"))?;
    Ok(())
}
