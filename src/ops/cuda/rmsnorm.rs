//! Launchers for kernels/rmsnorm.cu. The CPU oracle of the same names is src/ops/cpu/rmsnorm.rs.

use super::CudaEngine;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::bf16;

fn block_for(d: usize) -> u32 {
    (d.div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// out (N,D) bf16, rstd (N) f32 from x (N,D) bf16 and w (D) bf16.
pub fn rmsnorm_forward(
    eng: &CudaEngine,
    out: &mut CudaSlice<bf16>,
    rstd: &mut CudaSlice<f32>,
    x: &CudaSlice<bf16>,
    w: &CudaView<bf16>,
    n: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    ensure!(
        out.len() == n * d && x.len() == n * d && rstd.len() == n && w.len() == d,
        "rmsnorm_forward: buffers do not match N={n}, D={d}"
    );
    let f = eng.function("rmsnorm_forward")?;
    let cfg = LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (block_for(d), 1, 1),
        shared_mem_bytes: 0,
    };
    let (n_i, d_i) = (n as i32, d as i32);
    let mut launch = eng.stream.launch_builder(&f);
    launch
        .arg(out)
        .arg(rstd)
        .arg(x)
        .arg(w)
        .arg(&n_i)
        .arg(&d_i)
        .arg(&eps);
    // SAFETY: the argument list matches the kernel's signature and the lengths were checked.
    unsafe { launch.launch(cfg) }.map_err(|e| anyhow!("rmsnorm_forward (N={n}, D={d}): {e:?}"))?;
    Ok(())
}

/// dx (N,D) f32 += ..., dw (D) f32 += ... ; `partial` is (N,D) f32 scratch.
pub fn rmsnorm_backward(
    eng: &CudaEngine,
    dx: &mut CudaSlice<f32>,
    dw: &mut CudaViewMut<f32>,
    partial: &mut CudaSlice<f32>,
    dout: &CudaSlice<f32>,
    x: &CudaSlice<bf16>,
    w: &CudaView<bf16>,
    rstd: &CudaSlice<f32>,
    n: usize,
    d: usize,
) -> Result<()> {
    ensure!(
        dx.len() == n * d
            && partial.len() >= column_scratch_len(n, d)
            && dout.len() == n * d
            && x.len() == n * d,
        "rmsnorm_backward: buffers do not match N={n}, D={d}"
    );
    let (mut rows, mut sums) = partial.split_at_mut(n * d);
    ensure!(
        dw.len() == d && w.len() == d && rstd.len() == n,
        "rmsnorm_backward: D={d}, N={n}"
    );
    let (n_i, d_i) = (n as i32, d as i32);
    let f = eng.function("rmsnorm_backward")?;
    let cfg = LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (block_for(d), 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = eng.stream.launch_builder(&f);
    launch
        .arg(&mut *dx)
        .arg(&mut rows)
        .arg(dout)
        .arg(x)
        .arg(w)
        .arg(rstd)
        .arg(&n_i)
        .arg(&d_i);
    // SAFETY: matches the kernel's signature; lengths checked above.
    unsafe { launch.launch(cfg) }.map_err(|e| anyhow!("rmsnorm_backward (N={n}, D={d}): {e:?}"))?;

    column_sum_accumulate(eng, dw, &mut rows, &mut sums, n, d)
}

/// Rows per chunk of the column sums' first pass: enough chunks to fill the GPU at D = 2048
/// (8 column blocks × up to 128 chunks), few enough that the second pass is short.
const ROWS_PER_CHUNK_MIN: usize = 32;
const MAX_CHUNKS: usize = 128;

/// Rows of each chunk and the chunks, for N rows.
fn chunking(n: usize) -> (usize, usize) {
    let rows_per_chunk = n.div_ceil(MAX_CHUNKS).max(ROWS_PER_CHUNK_MIN);
    (rows_per_chunk, n.div_ceil(rows_per_chunk))
}

/// f32 values of the scratch a backward with column sums needs: the rows' partial products
/// [N, D], then the chunk sums [chunks, D].
pub fn column_scratch_len(n: usize, d: usize) -> usize {
    (n + chunking(n).1) * d
}

/// dw (D) f32 += the column sums of partial (N,D) f32, in two passes of fixed order through
/// chunk_sums (deterministic: the chunking depends on N alone).
pub fn column_sum_accumulate(
    eng: &CudaEngine,
    dw: &mut CudaViewMut<f32>,
    partial: &mut CudaViewMut<f32>, // read only
    chunk_sums: &mut CudaViewMut<f32>,
    n: usize,
    d: usize,
) -> Result<()> {
    let (rows_per_chunk, chunks) = chunking(n);
    ensure!(
        dw.len() == d && partial.len() == n * d && chunk_sums.len() >= chunks * d && n > 0,
        "column_sum_accumulate: N={n}, D={d}"
    );
    let col_blocks = d.div_ceil(256) as u32;
    let (n_i, d_i, r_i, c_i) = (n as i32, d as i32, rows_per_chunk as i32, chunks as i32);
    let err = |pass: &str, e| anyhow!("column_sum_accumulate {pass} (N={n}, D={d}): {e:?}");

    let f = eng.function("column_sum_chunks")?;
    let cfg = LaunchConfig {
        grid_dim: (col_blocks, chunks as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = eng.stream.launch_builder(&f);
    launch
        .arg(&mut *chunk_sums)
        .arg(&mut *partial)
        .arg(&n_i)
        .arg(&d_i)
        .arg(&r_i);
    // SAFETY: matches the kernel's signature; chunk_sums holds chunks × D, partial N × D.
    unsafe { launch.launch(cfg) }.map_err(|e| err("chunks", e))?;

    let f = eng.function("column_sum_finish")?;
    let cfg = LaunchConfig {
        grid_dim: (col_blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = eng.stream.launch_builder(&f);
    launch.arg(dw).arg(&mut *chunk_sums).arg(&c_i).arg(&d_i);
    // SAFETY: matches the kernel's signature; lengths checked above.
    unsafe { launch.launch(cfg) }.map_err(|e| err("finish", e))?;
    Ok(())
}
