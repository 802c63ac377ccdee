//! Launchers for kernels/decode_attention.cu. The CPU oracle of the same name is
//! src/ops/cpu/decode_attention.rs.

use super::CudaEngine;
use crate::ops::cpu::DecodeShape;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;

/// Tokens per slice (SPLIT_TOKENS in the kernel): longer contexts spread over more blocks.
pub const SPLIT_TOKENS: usize = 256;
const MAX_GROUP: usize = 8;
const MAX_HEAD_DIM: usize = 128;

/// The f32 scratch the split kernel writes: [B, H, splits, hd + 2].
pub fn partial_len(s: &DecodeShape) -> usize {
    s.batch * s.heads * splits(s) * (s.head_dim + 2)
}

fn splits(s: &DecodeShape) -> usize {
    (s.max_blocks * s.block_size).div_ceil(SPLIT_TOKENS).max(1)
}

/// out[B, H·hd] from q[B, H·hd] and one layer's paged cache; `partial` from [`partial_len`].
#[allow(clippy::too_many_arguments)]
pub fn decode_attention(
    eng: &CudaEngine,
    out: &mut CudaSlice<bf16>,
    partial: &mut CudaSlice<f32>,
    q: &CudaSlice<bf16>,
    k_cache: &CudaSlice<bf16>,
    v_cache: &CudaSlice<bf16>,
    block_table: &CudaSlice<u32>,
    context_lens: &CudaSlice<u32>,
    s: DecodeShape,
) -> Result<()> {
    let group = s.heads / s.kv_heads.max(1);
    ensure!(
        s.kv_heads > 0
            && s.heads.is_multiple_of(s.kv_heads)
            && group <= MAX_GROUP
            && s.head_dim <= MAX_HEAD_DIM
            && s.head_dim > 0,
        "decode_attention: {s:?} (the kernel takes up to {MAX_GROUP} query heads per KV head and head_dim up to {MAX_HEAD_DIM})"
    );
    ensure!(
        out.len() == s.batch * s.heads * s.head_dim
            && q.len() == out.len()
            && k_cache.len() == v_cache.len()
            && k_cache
                .len()
                .is_multiple_of(s.block_size * s.kv_heads * s.head_dim)
            && block_table.len() >= s.batch * s.max_blocks
            && context_lens.len() >= s.batch
            && partial.len() >= partial_len(&s),
        "decode_attention: buffers do not match {s:?}"
    );
    let n_split = splits(&s);
    let [h, hkv, hd, bs, mb, sp] = [
        s.heads,
        s.kv_heads,
        s.head_dim,
        s.block_size,
        s.max_blocks,
        n_split,
    ]
    .map(|x| x as i32);
    let scale = 1.0 / (s.head_dim as f32).sqrt();
    let f = eng.function("decode_attention_split")?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(&mut *partial)
        .arg(q)
        .arg(k_cache)
        .arg(v_cache)
        .arg(block_table)
        .arg(context_lens);
    l.arg(&h)
        .arg(&hkv)
        .arg(&hd)
        .arg(&bs)
        .arg(&mb)
        .arg(&sp)
        .arg(&scale);
    let cfg = LaunchConfig {
        grid_dim: (s.batch as u32, s.kv_heads as u32, n_split as u32),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match the kernel; shapes and buffer sizes checked above.
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("decode_attention_split ({s:?}): {e:?}"))?;

    let f = eng.function("decode_attention_merge")?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(out).arg(&*partial).arg(context_lens);
    l.arg(&h).arg(&hd).arg(&sp);
    let cfg = LaunchConfig {
        grid_dim: (s.batch as u32, s.heads as u32, 1),
        block_dim: (s.head_dim as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: as above.
    unsafe { l.launch(cfg) }.map_err(|e| anyhow!("decode_attention_merge ({s:?}): {e:?}"))?;
    Ok(())
}
