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

/// Must match EMB_CHUNK in kernels/embedding.cu.
const CHUNK: usize = 64;

/// Each distinct token's positions, in order (CSR), on the device, and the chunks that cut the
/// long groups: built on the host before the forward (where the ids are known), so the backward
/// needs no host copy. Buffers are sized for N tokens once; `fill` rewrites them in place for
/// another batch of N, so reused inputs allocate nothing.
pub struct TokenGroups {
    tokens: CudaSlice<u32>,    // [≤ N] distinct tokens
    starts: CudaSlice<u32>,    // [≤ N + 1] each token's first index into `positions`
    first: CudaSlice<u32>,     // [≤ N + 1] each token's first chunk (equal neighbours: none)
    chunks: CudaSlice<u32>,    // [≤ N/32 + 1, 2] each chunk's [start, end) in `positions`
    positions: CudaSlice<u32>, // [N]
    unique: usize,
    n_chunks: usize,
    n: usize,
}

impl TokenGroups {
    /// Buffers for batches of `ids.len()` tokens, filled from `ids`.
    pub fn new(eng: &CudaEngine, ids: &[u32]) -> Result<Self> {
        let n = ids.len();
        let mut g = TokenGroups {
            tokens: eng.zeros(n.max(1))?,
            starts: eng.zeros(n + 1)?,
            first: eng.zeros(n + 1)?,
            chunks: eng.zeros(2 * max_chunks(n))?,
            positions: eng.zeros(n.max(1))?,
            unique: 0,
            n_chunks: 0,
            n,
        };
        g.fill(eng, ids)?;
        Ok(g)
    }

    /// Regroups for new ids of the same count, in place.
    pub fn fill(&mut self, eng: &CudaEngine, ids: &[u32]) -> Result<()> {
        ensure!(
            ids.len() == self.n,
            "token groups for {} tokens refilled with {}",
            self.n,
            ids.len()
        );
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
        let (mut first, mut chunks) = (Vec::with_capacity(starts.len()), Vec::new());
        for w in starts.windows(2) {
            first.push((chunks.len() / 2) as u32);
            if (w[1] - w[0]) as usize > CHUNK {
                for a in (w[0]..w[1]).step_by(CHUNK) {
                    chunks.extend([a, (a + CHUNK as u32).min(w[1])]);
                }
            }
        }
        first.push((chunks.len() / 2) as u32);
        (self.unique, self.n_chunks) = (tokens.len(), chunks.len() / 2);
        debug_assert!(self.n_chunks <= max_chunks(self.n));
        let s = &eng.stream;
        let put = |host: &[u32], dst: &mut CudaSlice<u32>, what: &str| -> Result<()> {
            if host.is_empty() {
                return Ok(());
            }
            s.memcpy_htod(host, &mut dst.slice_mut(0..host.len()))
                .map_err(|e| anyhow!("embedding groups ({what}, {} values): {e:?}", host.len()))
        };
        put(&tokens, &mut self.tokens, "tokens")?;
        put(&starts, &mut self.starts, "starts")?;
        put(&first, &mut self.first, "first chunks")?;
        put(&chunks, &mut self.chunks, "chunks")?;
        put(&order, &mut self.positions, "positions")
    }
}

/// Chunks of the long groups of N tokens, at most: a long group has over CHUNK positions, so there
/// are under N/CHUNK of them and under N/CHUNK + their count chunks.
fn max_chunks(n: usize) -> usize {
    n / (CHUNK / 2) + 1
}

/// f32 values of the chunk sums' scratch for N tokens of hidden size D.
pub fn partial_len(n: usize, d: usize) -> usize {
    max_chunks(n) * d
}

/// dtable (V,D) f32 += dout (N,D) f32 rows by token, deterministically without float atomics: a
/// block per distinct token sums its rows in position order, a long group through its chunk sums.
pub fn embedding_backward(
    eng: &CudaEngine,
    dtable: &mut CudaViewMut<f32>,
    dout: &CudaSlice<f32>,
    groups: &TokenGroups,
    partial: &mut CudaSlice<f32>,
    d: usize,
) -> Result<()> {
    let n = groups.n;
    ensure!(
        dout.len() == n * d && dtable.len() % d == 0 && partial.len() >= groups.n_chunks * d,
        "embedding_backward: N={n}, D={d}, {} chunk sums into {} values",
        groups.n_chunks,
        partial.len()
    );
    if groups.unique == 0 {
        return Ok(());
    }
    let (d_i, cols) = (d as i32, d.div_ceil(256) as u32);
    if groups.n_chunks > 0 {
        let f = eng.function("embedding_backward_chunks")?;
        let cfg = LaunchConfig {
            grid_dim: (groups.n_chunks as u32, cols, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let c_i = groups.n_chunks as i32;
        let mut l = eng.stream.launch_builder(&f);
        l.arg(&mut *partial)
            .arg(dout)
            .arg(&groups.chunks)
            .arg(&groups.positions)
            .arg(&c_i)
            .arg(&d_i);
        // SAFETY: arguments match the kernel; chunks index `positions`, partial holds them all.
        unsafe { l.launch(cfg) }
            .map_err(|e| anyhow!("embedding_backward_chunks (N={n}, D={d}): {e:?}"))?;
    }
    let f = eng.function("embedding_backward")?;
    let cfg = LaunchConfig {
        grid_dim: (groups.unique as u32, cols, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let u_i = groups.unique as i32;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(dtable)
        .arg(dout)
        .arg(&*partial)
        .arg(&groups.tokens)
        .arg(&groups.starts)
        .arg(&groups.first)
        .arg(&groups.positions)
        .arg(&u_i)
        .arg(&d_i);
    // SAFETY: arguments match the kernel; the CSR arrays were built from this batch's ids.
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("embedding_backward (N={n}, D={d}): {e:?}"))?;
    Ok(())
}
