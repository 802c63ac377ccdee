//! `prefer check` for the per-token layers: embedding, RMSNorm, rope, SwiGLU and the scalar
//! head, forward and backward, against the CPU oracle of the same name.

use super::harness::{compare, down_bf16, timed, to_bf16, CheckRow, Lcg, TOL_BF16, TOL_F32};
use crate::model::config::LlamaConfig;
use crate::ops::cpu;
use crate::ops::cuda::{self, CudaEngine};
use anyhow::Result;
use half::bf16;

/// (tokens, vocabulary, hidden, padded): padded batches repeat one pad token on two positions in
/// three, so its group runs through the chunked sums.
pub(super) fn embedding(eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    for (n, v, d, padded) in [
        (7, 50, 64, false),
        (1000, 259, 2048, false),
        (3001, 259, 320, true),
    ] {
        rows.extend(check_embedding(eng, n, v, d, padded)?);
    }
    Ok(rows)
}

/// (rows, width): one row, llama-1b's width, an odd width.
pub(super) fn rmsnorm(eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    for (n, d) in [(1, 64), (37, 2048), (300, 770)] {
        rows.extend(check_rmsnorm(eng, n, d)?);
    }
    Ok(rows)
}

/// (tokens, heads, head dim, preset): the tiny preset's rope, and llama-1b's llama3 rope at head
/// dims 64 and 128.
pub(super) fn rope(eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    for (n, heads, hd, preset) in [
        (9, 4, 64, "tiny"),
        (1024, 32, 64, "llama-1b"),
        (33, 8, 128, "llama-1b"),
    ] {
        rows.extend(check_rope(eng, n, heads, hd, preset)?);
    }
    Ok(rows)
}

/// Elements: one, an odd count, a llama-1b MLP's 16 rows.
pub(super) fn swiglu(eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    for n in [1usize, 4099, 8192 * 16] {
        rows.extend(check_swiglu(eng, n)?);
    }
    Ok(rows)
}

/// (tokens, hidden): tiny, and llama-1b's width.
pub(super) fn scalar_head(eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    for (n, d) in [(5, 64), (513, 2048)] {
        rows.extend(check_scalar_head(eng, n, d)?);
    }
    Ok(rows)
}

fn check_embedding(
    eng: &CudaEngine,
    n: usize,
    v: usize,
    d: usize,
    padded: bool,
) -> Result<Vec<CheckRow>> {
    let mut g = Lcg(1 + n as u64);
    let ids: Vec<u32> = (0..n)
        .map(|i| match padded && i % 3 != 0 {
            true => (v - 1) as u32,
            false => ((i * 7919 + i * i) % v) as u32,
        })
        .collect();
    let table = g.bf16s(v * d, 1.0);
    let dout = g.bf16s(n * d, 1.0);
    let (mut out, mut dtable) = (vec![0.0; n * d], vec![0.0; v * d]);
    cpu::embedding_forward(&mut out, &ids, &table, d);
    cpu::embedding_backward(&mut dtable, &dout, &ids, d);

    let (ids_d, table_d, dout_d) = (
        eng.upload(&ids)?,
        eng.upload(&to_bf16(&table))?,
        eng.upload(&dout)?,
    );
    let mut out_d = eng.zeros::<bf16>(n * d)?;
    let mut dtable_d = eng.zeros::<f32>(v * d)?;
    let groups = cuda::embedding::TokenGroups::new(eng, &ids)?;
    let mut partial = eng.zeros::<f32>(cuda::embedding::partial_len(n, d))?;
    let shape = format!("N={n} V={v} D={d}{}", if padded { " padded" } else { "" });
    let ms_f = timed(eng, "embedding_forward", || {
        cuda::embedding::embedding_forward(eng, &mut out_d, &ids_d, &table_d.as_view(), n, d)
    })?;
    let ms_b = timed(eng, "embedding_backward", || {
        eng.zero(&mut dtable_d)?;
        cuda::embedding::embedding_backward(
            eng,
            &mut dtable_d.as_view_mut(),
            &dout_d,
            &groups,
            &mut partial,
            d,
        )
    })?;
    Ok(vec![
        compare(
            "embedding_forward",
            &shape,
            &down_bf16(eng, &out_d)?,
            &out,
            0.0,
            ms_f,
        ),
        compare(
            "embedding_backward",
            &shape,
            &eng.download(&dtable_d)?,
            &dtable,
            TOL_F32,
            ms_b,
        ),
    ])
}

fn check_rmsnorm(eng: &CudaEngine, n: usize, d: usize) -> Result<Vec<CheckRow>> {
    let mut g = Lcg(7 + d as u64);
    let (x, dout) = (g.bf16s(n * d, 3.0), g.bf16s(n * d, 1.0));
    let w: Vec<f32> = (0..d)
        .map(|_| bf16::from_f32(1.0 + 0.5 * g.uniform()).to_f32())
        .collect();
    let (mut y, mut rstd) = (vec![0.0; n * d], vec![0.0; n]);
    cpu::rmsnorm_forward(&mut y, &mut rstd, &x, &w, 1e-5);
    let (mut dx, mut dw) = (vec![0.0; n * d], vec![0.0; d]);
    cpu::rmsnorm_backward(&mut dx, &mut dw, &dout, &x, &w, &rstd);

    // The backward's dout is f32: the sum of the matmul gradients that read the normed input.
    let (x_d, w_d, dout_d) = (
        eng.upload(&to_bf16(&x))?,
        eng.upload(&to_bf16(&w))?,
        eng.upload(&dout)?,
    );
    let (mut y_d, mut rstd_d) = (eng.zeros::<bf16>(n * d)?, eng.zeros::<f32>(n)?);
    let (mut dx_d, mut dw_d, mut part) = (
        eng.zeros::<f32>(n * d)?,
        eng.zeros::<f32>(d)?,
        eng.zeros::<f32>(cuda::rmsnorm::column_scratch_len(n, d))?,
    );
    let shape = format!("N={n} D={d}");
    let ms_f = timed(eng, "rmsnorm_forward", || {
        cuda::rmsnorm::rmsnorm_forward(eng, &mut y_d, &mut rstd_d, &x_d, &w_d.as_view(), n, d, 1e-5)
    })?;
    let ms_b = timed(eng, "rmsnorm_backward", || {
        eng.zero(&mut dx_d)?;
        eng.zero(&mut dw_d)?;
        cuda::rmsnorm::rmsnorm_backward(
            eng,
            &mut dx_d,
            &mut dw_d.as_view_mut(),
            &mut part,
            &dout_d,
            &x_d,
            &w_d.as_view(),
            &rstd_d,
            n,
            d,
        )
    })?;
    Ok(vec![
        compare(
            "rmsnorm_forward",
            &shape,
            &down_bf16(eng, &y_d)?,
            &y,
            TOL_BF16,
            ms_f,
        ),
        compare(
            "rmsnorm_forward rstd",
            &shape,
            &eng.download(&rstd_d)?,
            &rstd,
            TOL_F32,
            ms_f,
        ),
        compare(
            "rmsnorm_backward dx",
            &shape,
            &eng.download(&dx_d)?,
            &dx,
            TOL_F32 * 10.0,
            ms_b,
        ),
        compare(
            "rmsnorm_backward dw",
            &shape,
            &eng.download(&dw_d)?,
            &dw,
            TOL_F32 * 10.0,
            ms_b,
        ),
    ])
}

fn check_rope(
    eng: &CudaEngine,
    n: usize,
    heads: usize,
    hd: usize,
    preset: &str,
) -> Result<Vec<CheckRow>> {
    let mut cfg = LlamaConfig::preset(preset)?;
    cfg.head_dim = hd;
    let mut g = Lcg(11 + n as u64);
    // Positions up to the tens of thousands, where angle accuracy matters.
    let pos: Vec<u32> = (0..n).map(|i| ((i * 977) % 40_000) as u32).collect();
    let x = g.bf16s(n * heads * hd, 1.0);
    let tables = cpu::RopeTables::new(&cfg.rope(), &pos);
    let (mut y, mut back) = (x.clone(), x.clone());
    cpu::rope_forward(&mut y, &tables, heads);
    cpu::rope_backward(&mut back, &tables, heads);

    let inv = eng.upload(&cpu::rope::rope_inv_freq(&cfg.rope()))?;
    let pos_d = eng.upload(&pos)?;
    let x16 = to_bf16(&x);
    let mut y_d = eng.upload(&x16)?;
    let mut b_d = eng.upload(&x16)?;
    let shape = format!("N={n} heads={heads} hd={hd} {preset}");
    let ms_f = timed(eng, "rope_forward", || {
        eng.stream
            .memcpy_htod(&x16, &mut y_d)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        cuda::rope::rope_forward(eng, &mut y_d, &pos_d, &inv, heads, hd)
    })?;
    let ms_b = timed(eng, "rope_backward", || {
        eng.stream
            .memcpy_htod(&x16, &mut b_d)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        cuda::rope::rope_backward(eng, &mut b_d, &pos_d, &inv, heads, hd)
    })?;
    Ok(vec![
        compare(
            "rope_forward",
            &shape,
            &down_bf16(eng, &y_d)?,
            &y,
            TOL_BF16,
            ms_f,
        ),
        compare(
            "rope_backward",
            &shape,
            &down_bf16(eng, &b_d)?,
            &back,
            TOL_BF16,
            ms_b,
        ),
    ])
}

fn check_swiglu(eng: &CudaEngine, n: usize) -> Result<Vec<CheckRow>> {
    let mut g = Lcg(17 + n as u64);
    let (gate, up, dout) = (g.bf16s(n, 4.0), g.bf16s(n, 2.0), g.bf16s(n, 1.0));
    let mut out = vec![0.0; n];
    cpu::swiglu_forward(&mut out, &gate, &up);
    let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
    cpu::swiglu_backward(&mut dg, &mut du, &dout, &gate, &up);
    let (g_d, u_d, do_d) = (
        eng.upload(&to_bf16(&gate))?,
        eng.upload(&to_bf16(&up))?,
        eng.upload(&to_bf16(&dout))?,
    );
    let (mut out_d, mut dg_d, mut du_d) = (
        eng.zeros::<bf16>(n)?,
        eng.zeros::<bf16>(n)?,
        eng.zeros::<bf16>(n)?,
    );
    let shape = format!("n={n}");
    let ms_f = timed(eng, "swiglu_forward", || {
        cuda::swiglu::swiglu_forward(eng, &mut out_d, &g_d, &u_d)
    })?;
    let ms_b = timed(eng, "swiglu_backward", || {
        cuda::swiglu::swiglu_backward(eng, &mut dg_d, &mut du_d, &do_d, &g_d, &u_d)
    })?;
    Ok(vec![
        compare(
            "swiglu_forward",
            &shape,
            &down_bf16(eng, &out_d)?,
            &out,
            TOL_BF16,
            ms_f,
        ),
        compare(
            "swiglu_backward dgate",
            &shape,
            &down_bf16(eng, &dg_d)?,
            &dg,
            TOL_BF16,
            ms_b,
        ),
        compare(
            "swiglu_backward dup",
            &shape,
            &down_bf16(eng, &du_d)?,
            &du,
            TOL_BF16,
            ms_b,
        ),
    ])
}

fn check_scalar_head(eng: &CudaEngine, n: usize, d: usize) -> Result<Vec<CheckRow>> {
    let mut g = Lcg(19 + n as u64);
    let (h, w, dv) = (g.bf16s(n * d, 1.0), g.bf16s(d, 0.1), g.bf16s(n, 1.0));
    let mut value = vec![0.0; n];
    cpu::scalar_head_forward(&mut value, &h, &w);
    let (mut dh, mut dw) = (vec![0.0; n * d], vec![0.0; d]);
    cpu::scalar_head_backward(&mut dh, &mut dw, &dv, &h, &w);
    let (h_d, w_d, dv_d) = (
        eng.upload(&to_bf16(&h))?,
        eng.upload(&to_bf16(&w))?,
        eng.upload(&dv)?,
    );
    let mut value_d = eng.zeros::<f32>(n)?;
    let (mut dh_d, mut dw_d, mut part) = (
        eng.zeros::<f32>(n * d)?,
        eng.zeros::<f32>(d)?,
        eng.zeros::<f32>(cuda::rmsnorm::column_scratch_len(n, d))?,
    );
    let shape = format!("N={n} D={d}");
    let ms_f = timed(eng, "scalar_head_forward", || {
        cuda::scalar_head::scalar_head_forward(eng, &mut value_d, &h_d, &w_d.as_view(), n, d)
    })?;
    let ms_b = timed(eng, "scalar_head_backward", || {
        eng.zero(&mut dh_d)?;
        eng.zero(&mut dw_d)?;
        cuda::scalar_head::scalar_head_backward(
            eng,
            &mut dh_d,
            &mut dw_d.as_view_mut(),
            &mut part,
            &dv_d,
            &h_d,
            &w_d.as_view(),
            n,
            d,
        )
    })?;
    Ok(vec![
        compare(
            "scalar_head_forward",
            &shape,
            &eng.download(&value_d)?,
            &value,
            TOL_F32 * 10.0,
            ms_f,
        ),
        compare(
            "scalar_head_backward dh",
            &shape,
            &eng.download(&dh_d)?,
            &dh,
            TOL_F32,
            ms_b,
        ),
        compare(
            "scalar_head_backward dw",
            &shape,
            &eng.download(&dw_d)?,
            &dw,
            TOL_F32 * 10.0,
            ms_b,
        ),
    ])
}
