//! Launchers for kernels/flash_attention.cu (tensor cores, head dims 16, 32, 64, 128) and
//! kernels/attention.cu (the fp32 reference kernels, every other head dim). The CPU oracle of
//! the same names is src/ops/cpu/attention.rs; shapes are in `AttentionShape`.

use super::CudaEngine;
use crate::ops::cpu::AttentionShape;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;

/// Must match ATT_ROWS, ATT_TILE and ATT_MAX_HD in kernels/attention.cu.
const ROWS: usize = 4;
const TILE: usize = 32;
const MAX_HD: usize = 128;

/// Must match kernels/flash_attention.cu: FA_WARPS warps of 16 rows, 64-row tiles, FA_PAD.
const FA_THREADS: u32 = 128;
const FA_TILE: usize = 64;
const FA_DKV_QTILE: usize = 32;
const FA_PAD: usize = 8;

/// Which kernels serve a shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// kernels/flash_attention.cu: bf16 tensor cores.
    Flash,
    /// kernels/attention.cu: fp32 FMA, any head dim up to 128.
    Reference,
}

impl AttentionKernel {
    /// The tensor-core kernels where they are instantiated for the head dim.
    pub fn for_shape(s: &AttentionShape) -> Self {
        if matches!(s.head_dim, 16 | 32 | 64 | 128) {
            AttentionKernel::Flash
        } else {
            AttentionKernel::Reference
        }
    }
}

/// The three attention kernels of each implementation.
#[derive(Clone, Copy)]
enum Op {
    Forward,
    BackwardDq,
    BackwardDkv,
}

/// The kernel that serves `op` at this shape, and its launch. Tensor cores: grid (tiles, Hkv, B)
/// over packed query rows (or keys, for dk/dv), shared memory as the kernel lays its tiles out
/// (above 48 KB with the function's opt-in). Reference: grid (ceil(T/ROWS), heads, B).
fn kernel_for(
    eng: &CudaEngine,
    s: &AttentionShape,
    op: Op,
) -> Result<(CudaFunction, LaunchConfig)> {
    let name = match op {
        Op::Forward => "forward",
        Op::BackwardDq => "backward_dq",
        Op::BackwardDkv => "backward_dkv",
    };
    if AttentionKernel::for_shape(s) == AttentionKernel::Reference {
        let f = eng.function(&format!("attention_reference_{name}"))?;
        let cfg = match op {
            Op::Forward => grid(s, s.heads, 1, 2),
            Op::BackwardDq => grid(s, s.heads, 2, 2),
            Op::BackwardDkv => grid(s, s.kv_heads, 2, 2),
        };
        return Ok((f, cfg));
    }
    let f = eng.function(&format!("flash_{name}_hd{}", s.head_dim))?;
    let packed = s.seq * (s.heads / s.kv_heads);
    let (rows, shared) = match op {
        // Q tile, K and V double-buffered, the key tiles' masks (u16).
        Op::Forward => (packed, fa_rows(s, 5 * FA_TILE) + 2 * FA_TILE * 2),
        // Q and dO tiles, K and V double-buffered, masks.
        Op::BackwardDq => (packed, fa_rows(s, 6 * FA_TILE) + 2 * FA_TILE * 2),
        // K and V of the block's keys, Q and dO tiles double-buffered, their lse and D (f32).
        Op::BackwardDkv => (
            s.seq,
            fa_rows(s, 2 * FA_TILE + 4 * FA_DKV_QTILE) + 4 * FA_DKV_QTILE * 4,
        ),
    };
    if shared > 48 * 1024 {
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            shared as i32,
        )
        .map_err(|e| anyhow!("attention: {shared} bytes of shared memory per block: {e:?}"))?;
    }
    let cfg = LaunchConfig {
        grid_dim: (
            rows.div_ceil(FA_TILE) as u32,
            s.kv_heads as u32,
            s.batch as u32,
        ),
        block_dim: (FA_THREADS, 1, 1),
        shared_mem_bytes: shared as u32,
    };
    Ok((f, cfg))
}

/// Bytes of `n` shared rows of the head dim, padded.
fn fa_rows(s: &AttentionShape, n: usize) -> usize {
    n * (s.head_dim + FA_PAD) * 2
}

fn check_shape(s: &AttentionShape, op: &str) -> Result<()> {
    ensure!(
        s.head_dim <= MAX_HD && s.kv_heads > 0 && s.heads.is_multiple_of(s.kv_heads),
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
    let (f, cfg) = kernel_for(eng, &s, Op::Forward)?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(out).arg(lse).arg(q).arg(k).arg(v).arg(key_mask);
    l.arg(&b).arg(&t).arg(&h).arg(&hkv).arg(&hd).arg(&scale);
    // SAFETY: arguments match both kernels' signatures; lengths checked above; shared memory
    // sized for the chosen kernel's tiles.
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("attention_forward ({s:?}): {e:?}"))?;
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

    let (f, cfg) = kernel_for(eng, &s, Op::BackwardDq)?;
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
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("attention_backward_dq ({s:?}): {e:?}"))?;

    let (f, cfg) = kernel_for(eng, &s, Op::BackwardDkv)?;
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
    // SAFETY: as the forward; one block per tile of keys of one KV head.
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("attention_backward_dkv ({s:?}): {e:?}"))?;
    Ok(())
}
