//! Launchers for kernels/attention.cu. The CPU oracle of the same names is
//! src/ops/cpu/attention.rs; shapes are in `AttentionShape`.

use super::CudaEngine;
use crate::ops::cpu::AttentionShape;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;

/// Must match ATT_ROWS, ATT_TILE and ATT_MAX_HD in kernels/attention.cu.
const ROWS: usize = 4;
const TILE: usize = 32;
const MAX_HD: usize = 128;

fn check_shape(s: &AttentionShape, op: &str) -> Result<()> {
    ensure!(
        s.head_dim <= MAX_HD && s.kv_heads > 0 && s.heads % s.kv_heads == 0,
        "{op}: head_dim {} (at most {MAX_HD}), heads {} over kv_heads {}",
        s.head_dim,
        s.heads,
        s.kv_heads
    );
    Ok(())
}

fn dims(s: &AttentionShape) -> [i32; 5] {
    [
        s.batch as i32,
        s.seq as i32,
        s.heads as i32,
        s.kv_heads as i32,
        s.head_dim as i32,
    ]
}

fn grid(s: &AttentionShape, heads: usize, rows_shared: usize, tile_shared: usize) -> LaunchConfig {
    let stride = s.head_dim + 1;
    LaunchConfig {
        grid_dim: (s.seq.div_ceil(ROWS) as u32, heads as u32, s.batch as u32),
        block_dim: ((ROWS * 32) as u32, 1, 1),
        shared_mem_bytes: ((rows_shared * ROWS + tile_shared * TILE) * stride * 4) as u32,
    }
}

/// out (B,T,H,hd) bf16 and lse (B,H,T) f32 from q, k, v and key_mask (B,T) u8.
pub fn attention_forward(
    eng: &CudaEngine,
    out: &mut CudaSlice<bf16>,
    lse: &mut CudaSlice<f32>,
    q: &CudaSlice<bf16>,
    k: &CudaSlice<bf16>,
    v: &CudaSlice<bf16>,
    key_mask: &CudaSlice<u8>,
    s: AttentionShape,
) -> Result<()> {
    check_shape(&s, "attention_forward")?;
    let n = s.batch * s.seq;
    ensure!(
        out.len() == n * s.heads * s.head_dim
            && q.len() == out.len()
            && lse.len() == n * s.heads
            && k.len() == n * s.kv_heads * s.head_dim
            && v.len() == k.len()
            && key_mask.len() == n,
        "attention_forward: buffers do not match {s:?}"
    );
    let [b, t, h, hkv, hd] = dims(&s);
    let scale = 1.0 / (s.head_dim as f32).sqrt();
    let f = eng.function("attention_forward")?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(out).arg(lse).arg(q).arg(k).arg(v).arg(key_mask);
    l.arg(&b).arg(&t).arg(&h).arg(&hkv).arg(&hd).arg(&scale);
    // SAFETY: arguments match the kernel; lengths checked above; shared memory sized for its tiles.
    unsafe { l.launch(grid(&s, s.heads, 1, 2)) }
        .map_err(|e| anyhow!("attention_forward ({s:?}): {e:?}"))?;
    Ok(())
}

/// dq (B,T,H,hd), dk, dv (B,T,Hkv,hd), all bf16 and written (not accumulated), from dout, the
/// forward's inputs, out and lse. `rowdot` is (B,H,T) f32 scratch.
pub fn attention_backward(
    eng: &CudaEngine,
    dq: &mut CudaSlice<bf16>,
    dk: &mut CudaSlice<bf16>,
    dv: &mut CudaSlice<bf16>,
    rowdot: &mut CudaSlice<f32>,
    dout: &CudaSlice<bf16>,
    q: &CudaSlice<bf16>,
    k: &CudaSlice<bf16>,
    v: &CudaSlice<bf16>,
    out: &CudaSlice<bf16>,
    lse: &CudaSlice<f32>,
    key_mask: &CudaSlice<u8>,
    s: AttentionShape,
) -> Result<()> {
    check_shape(&s, "attention_backward")?;
    let n = s.batch * s.seq;
    ensure!(
        dq.len() == q.len()
            && dout.len() == q.len()
            && out.len() == q.len()
            && dk.len() == k.len()
            && dv.len() == k.len()
            && v.len() == k.len()
            && rowdot.len() == n * s.heads
            && lse.len() == n * s.heads
            && key_mask.len() == n
            && q.len() == n * s.heads * s.head_dim,
        "attention_backward: buffers do not match {s:?}"
    );
    let [b, t, h, hkv, hd] = dims(&s);
    let scale = 1.0 / (s.head_dim as f32).sqrt();

    let f = eng.function("attention_backward_rowdot")?;
    let rows = (n * s.heads) as u32;
    let cfg = LaunchConfig {
        grid_dim: (rows.div_ceil(8), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = eng.stream.launch_builder(&f);
    l.arg(&mut *rowdot)
        .arg(dout)
        .arg(out)
        .arg(&b)
        .arg(&t)
        .arg(&h)
        .arg(&hd);
    // SAFETY: one warp per (b,t,h) row; lengths checked above.
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("attention_backward_rowdot ({s:?}): {e:?}"))?;

    let f = eng.function("attention_backward_dq")?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(dq)
        .arg(dout)
        .arg(q)
        .arg(k)
        .arg(v)
        .arg(lse)
        .arg(&*rowdot)
        .arg(key_mask);
    l.arg(&b).arg(&t).arg(&h).arg(&hkv).arg(&hd).arg(&scale);
    // SAFETY: as the forward.
    unsafe { l.launch(grid(&s, s.heads, 2, 2)) }
        .map_err(|e| anyhow!("attention_backward_dq ({s:?}): {e:?}"))?;

    let f = eng.function("attention_backward_dkv")?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(dk)
        .arg(dv)
        .arg(dout)
        .arg(q)
        .arg(k)
        .arg(v)
        .arg(lse)
        .arg(&*rowdot)
        .arg(key_mask);
    l.arg(&b).arg(&t).arg(&h).arg(&hkv).arg(&hd).arg(&scale);
    // SAFETY: as the forward, one block per ROWS keys of one KV head.
    unsafe { l.launch(grid(&s, s.kv_heads, 2, 2)) }
        .map_err(|e| anyhow!("attention_backward_dkv ({s:?}): {e:?}"))?;
    Ok(())
}
