//! `prefer check`: every CUDA op against the CPU oracle of the same name, on random inputs of
//! several shapes (odd sizes, padded batches, GQA ratios 1, 4 and 8, head dims 64 and 128).
//! Inputs are rounded to bf16 first, so both sides see the same values; the CPU computes in f32.
//!
//! Error is measured relative to the reference tensor's scale, max|gpu − cpu| / max|cpu|, which
//! is what bf16 storage bounds: an output rounded to bf16 is off by at most 2⁻⁹ of its own size.

use crate::model::config::LlamaConfig;
use crate::ops::cpu::{self, AttentionShape};
use crate::ops::cuda::{self, CudaEngine};
use anyhow::Result;
use cudarc::driver::CudaSlice;
use half::bf16;
use std::time::Instant;

/// One line of the check table.
#[derive(Clone, Debug)]
pub struct CheckRow {
    pub op: String,
    pub shape: String,
    pub max_abs: f32,
    pub max_rel: f32,
    pub tol: f32,
    pub pass: bool,
    pub gpu_ms: f64,
}

/// Tolerance for outputs stored in bf16 (2⁻⁸ relative spacing) after f32 accumulation whose order
/// differs from the CPU's: 1e-2 of the tensor's scale leaves 2.5× margin over one rounding.
pub(super) const TOL_BF16: f32 = 1e-2;
/// Tolerance for f32 outputs of bf16 inputs: only the summation order differs.
pub(super) const TOL_F32: f32 = 1e-4;

/// Runs every check whose op name contains `filter` (all without one).
pub fn run_checks(eng: &CudaEngine, filter: Option<&str>) -> Result<Vec<CheckRow>> {
    let wants = |op: &str| filter.is_none_or(|f| op.contains(f));
    let mut rows = Vec::new();
    if wants("embedding") {
        // (tokens, vocabulary, hidden, padded): padded batches repeat one pad token on two
        // positions in three, so its group runs through the chunked sums.
        for (n, v, d, padded) in [
            (7, 50, 64, false),
            (1000, 259, 2048, false),
            (3001, 259, 320, true),
        ] {
            rows.extend(check_embedding(eng, n, v, d, padded)?);
        }
    }
    if wants("rmsnorm") {
        for (n, d) in [(1, 64), (37, 2048), (300, 770)] {
            rows.extend(check_rmsnorm(eng, n, d)?);
        }
    }
    if wants("rope") {
        for (n, heads, hd, preset) in [
            (9, 4, 64, "tiny"),
            (1024, 32, 64, "llama-1b"),
            (33, 8, 128, "llama-1b"),
        ] {
            rows.extend(check_rope(eng, n, heads, hd, preset)?);
        }
    }
    if wants("attention") {
        // (batch, seq, heads, kv_heads, head_dim): GQA 1, 3, 4 and 8, every tensor-core head dim,
        // odd lengths, tiles that end mid-group; hd 24 runs the fp32 reference kernels.
        for (b, t, h, kvh, hd) in [
            (2, 37, 4, 4, 64),
            (3, 130, 8, 2, 64),
            (2, 100, 16, 2, 128),
            (1, 64, 8, 8, 128),
            (2, 70, 6, 2, 32),
            (2, 21, 4, 2, 16),
            (2, 45, 4, 2, 24),
        ] {
            rows.extend(check_attention(
                eng,
                AttentionShape {
                    batch: b,
                    seq: t,
                    heads: h,
                    kv_heads: kvh,
                    head_dim: hd,
                },
            )?);
        }
    }
    if wants("swiglu") {
        for n in [1usize, 4099, 8192 * 16] {
            rows.extend(check_swiglu(eng, n)?);
        }
    }
    if wants("scalar_head") {
        for (n, d) in [(5, 64), (513, 2048)] {
            rows.extend(check_scalar_head(eng, n, d)?);
        }
    }
    if wants("matmul") || wants("logprob") {
        let gemm = cuda::matmul::Gemm::new(eng)?;
        if wants("matmul") {
            // (N, I, O): tiny, an MLP projection at llama-1b widths, odd sizes.
            for (n, i, o) in [(37, 64, 96), (512, 2048, 8192), (130, 2048, 2050)] {
                rows.extend(check_matmul(eng, &gemm, n, i, o)?);
            }
        }
        if wants("logprob") {
            // (N, D, V, temperature): one partial chunk, the same at PPO's temperature 0.7, then
            // llama-1b's vocabulary (15 full chunks and a partial).
            for (n, d, v, t) in [
                (70, 64, 259, 1.0),
                (70, 64, 259, 0.7),
                (64, 2048, 128256, 1.0),
            ] {
                rows.extend(check_logprob(eng, &gemm, n, d, v, t)?);
            }
        }
    }
    if wants("model") {
        // The whole model on the CUDA backend against the CPU oracle: tiny, and two layers at
        // llama-1b widths and vocabulary (GQA 4, head dim 64, llama3 rope, tied head), with a
        // scalar head so both heads run.
        for (preset, layers) in [("tiny", None), ("llama-1b", Some(2))] {
            rows.extend(check_model(preset, layers)?);
        }
    }
    if wants("copy_rows") || wants("decode_attention") || wants("sample") || wants("generate") {
        rows.extend(super::decode::run_decode_checks(eng, &wants)?);
    }
    if wants("dpo_loss") {
        rows.extend(super::losses::run_dpo_checks(eng)?);
    }
    if wants("bradley_terry") {
        rows.extend(super::losses::run_reward_checks(eng)?);
    }
    if wants("ppo_loss") {
        rows.extend(super::losses::run_ppo_checks(eng)?);
    }
    if wants("adamw") {
        // Weight decay skips the ranges (norm gains in a model): none, the only element, and
        // ranges at the buffer's start and end and across the grid-stride boundaries.
        let ranges = vec![0..5, 64..320, 50_000..50_257, 99_990..100_003];
        let whole = std::iter::once(0..1).collect();
        for (n, no_decay) in [(1usize, Vec::new()), (1, whole), (100_003, ranges)] {
            rows.extend(check_adamw(eng, n, no_decay)?);
        }
    }
    Ok(rows)
}

/// Prints the table; returns whether every row passed.
pub fn print_table(rows: &[CheckRow]) -> bool {
    println!(
        "{:<22} {:<34} {:>10} {:>10} {:>8} {:>5} {:>9}",
        "op", "shape", "max abs", "max rel", "tol", "pass", "gpu ms"
    );
    for r in rows {
        println!(
            "{:<22} {:<34} {:>10.2e} {:>10.2e} {:>8.0e} {:>5} {:>9.3}",
            r.op,
            r.shape,
            r.max_abs,
            r.max_rel,
            r.tol,
            if r.pass { "ok" } else { "FAIL" },
            r.gpu_ms
        );
    }
    let failed = rows.iter().filter(|r| !r.pass).count();
    println!("{} checks, {} failed", rows.len(), failed);
    failed == 0
}

/// A small deterministic generator: the same inputs on every machine.
pub(super) struct Lcg(pub(super) u64);

impl Lcg {
    pub(super) fn uniform(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// Values in [-scale, scale), rounded to bf16.
    pub(super) fn bf16s(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| bf16::from_f32(self.uniform() * scale).to_f32())
            .collect()
    }
}

pub(super) fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

pub(super) fn down_bf16(eng: &CudaEngine, d: &CudaSlice<bf16>) -> Result<Vec<f32>> {
    Ok(eng.download(d)?.iter().map(|x| x.to_f32()).collect())
}

pub(super) fn compare(
    op: &str,
    shape: &str,
    gpu: &[f32],
    cpu: &[f32],
    tol: f32,
    gpu_ms: f64,
) -> CheckRow {
    let scale = cpu.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-30);
    let max_abs = gpu
        .iter()
        .zip(cpu)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    let finite = gpu.iter().all(|x| x.is_finite()) && gpu.len() == cpu.len();
    let max_rel = max_abs / scale;
    CheckRow {
        op: op.into(),
        shape: shape.into(),
        max_abs,
        max_rel,
        tol,
        pass: finite && max_rel <= tol,
        gpu_ms,
    }
}

/// Runs `launch` twice (a warm-up, then timed) and returns the second run's milliseconds. Each
/// launch must reset what it accumulates into, so both runs leave the same result.
pub(super) fn timed(
    eng: &CudaEngine,
    op: &str,
    mut launch: impl FnMut() -> Result<()>,
) -> Result<f64> {
    launch()?;
    eng.synchronize(op)?;
    let t0 = Instant::now();
    launch()?;
    eng.synchronize(op)?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
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

fn check_attention(eng: &CudaEngine, s: AttentionShape) -> Result<Vec<CheckRow>> {
    let (n, qd, kvd) = (
        s.batch * s.seq,
        s.heads * s.head_dim,
        s.kv_heads * s.head_dim,
    );
    let mut g = Lcg(13 + s.seq as u64 * 31 + s.heads as u64);
    let (q, k, v, dout) = (
        g.bf16s(n * qd, 1.5),
        g.bf16s(n * kvd, 1.5),
        g.bf16s(n * kvd, 1.0),
        g.bf16s(n * qd, 1.0),
    );
    // Row 0 left-padded by 3, row 1 (if any) right-padded by 5, the rest full.
    let mask: Vec<bool> = (0..n)
        .map(|i| {
            let (b, t) = (i / s.seq, i % s.seq);
            !(b == 0 && t < 3 || b == 1 && t >= s.seq - 5)
        })
        .collect();
    let (mut out, mut lse) = (vec![0.0; n * qd], vec![0.0; n * s.heads]);
    cpu::attention_forward(&mut out, &mut lse, &q, &k, &v, &mask, s);
    // The backward reads the forward's output; feed both sides the bf16-rounded one.
    let out = out
        .iter()
        .map(|&x| bf16::from_f32(x).to_f32())
        .collect::<Vec<_>>();
    let (mut dq, mut dk, mut dv) = (vec![0.0; n * qd], vec![0.0; n * kvd], vec![0.0; n * kvd]);
    cpu::attention_backward(
        &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &mask, s,
    );

    let up = |x: &[f32]| eng.upload(&to_bf16(x));
    let (q_d, k_d, v_d, dout_d) = (up(&q)?, up(&k)?, up(&v)?, up(&dout)?);
    let mask_d = eng.upload(&mask.iter().map(|&m| m as u8).collect::<Vec<u8>>())?;
    let (mut out_d, mut lse_d) = (eng.zeros::<bf16>(n * qd)?, eng.zeros::<f32>(n * s.heads)?);
    let kernel = match cuda::attention::AttentionKernel::for_shape(&s) {
        cuda::attention::AttentionKernel::Flash => "flash",
        cuda::attention::AttentionKernel::Reference => "reference",
    };
    let shape = format!(
        "B={} T={} H={} Hkv={} hd={} {kernel}",
        s.batch, s.seq, s.heads, s.kv_heads, s.head_dim
    );
    let ms_f = timed(eng, "attention_forward", || {
        cuda::attention::attention_forward(
            eng, &mut out_d, &mut lse_d, &q_d, &k_d, &v_d, &mask_d, s,
        )
    })?;
    let gpu_out = down_bf16(eng, &out_d)?;
    let gpu_lse = eng.download(&lse_d)?;
    let out_ref_d = up(&out)?;
    let (mut dq_d, mut dk_d, mut dv_d) = (
        eng.zeros::<bf16>(n * qd)?,
        eng.zeros::<bf16>(n * kvd)?,
        eng.zeros::<bf16>(n * kvd)?,
    );
    let mut rowdot = eng.zeros::<f32>(n * s.heads)?;
    let lse_ref_d = eng.upload(&lse)?;
    let ms_b = timed(eng, "attention_backward", || {
        cuda::attention::attention_backward(
            eng,
            &mut dq_d,
            &mut dk_d,
            &mut dv_d,
            &mut rowdot,
            &dout_d,
            &q_d,
            &k_d,
            &v_d,
            &out_ref_d,
            &lse_ref_d,
            &mask_d,
            s,
        )
    })?;
    // lse is −∞ for queries that see no key; compare the finite ones and require the same pattern.
    let lse_same_pattern = gpu_lse
        .iter()
        .zip(&lse)
        .all(|(a, b)| a.is_finite() == b.is_finite());
    let finite = |v: &[f32]| {
        v.iter()
            .map(|x| if x.is_finite() { *x } else { 0.0 })
            .collect::<Vec<_>>()
    };
    let mut lse_row = compare(
        "attention_forward lse",
        &shape,
        &finite(&gpu_lse),
        &finite(&lse),
        TOL_F32 * 10.0,
        ms_f,
    );
    lse_row.pass &= lse_same_pattern;
    Ok(vec![
        compare("attention_forward", &shape, &gpu_out, &out, TOL_BF16, ms_f),
        lse_row,
        compare(
            "attention_backward dq",
            &shape,
            &down_bf16(eng, &dq_d)?,
            &dq,
            TOL_BF16,
            ms_b,
        ),
        compare(
            "attention_backward dk",
            &shape,
            &down_bf16(eng, &dk_d)?,
            &dk,
            TOL_BF16,
            ms_b,
        ),
        compare(
            "attention_backward dv",
            &shape,
            &down_bf16(eng, &dv_d)?,
            &dv,
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

fn check_matmul(
    eng: &CudaEngine,
    gemm: &cuda::matmul::Gemm,
    n: usize,
    i: usize,
    o: usize,
) -> Result<Vec<CheckRow>> {
    let mut g = Lcg(29 + (n * o) as u64);
    let (x, w, dout) = (
        g.bf16s(n * i, 1.0),
        g.bf16s(o * i, 0.05),
        g.bf16s(n * o, 1.0),
    );
    let mut y = vec![0.0; n * o];
    cpu::matmul_forward(&mut y, &x, &w, n, i, o);
    let (mut dx, mut dw) = (vec![0.0; n * i], vec![0.0; o * i]);
    cpu::matmul_backward(Some(&mut dx), &mut dw, &dout, &x, &w, n, i, o);
    // The backward's dout is f32: the sum of the matmul gradients that read the normed input.
    let (x_d, w_d, dout_d) = (
        eng.upload(&to_bf16(&x))?,
        eng.upload(&to_bf16(&w))?,
        eng.upload(&to_bf16(&dout))?,
    );
    let mut y_d = eng.zeros::<bf16>(n * o)?;
    let (mut dx_d, mut dw_d) = (eng.zeros::<bf16>(n * i)?, eng.zeros::<f32>(o * i)?);
    let shape = format!("N={n} I={i} O={o}");
    let ms_f = timed(eng, "matmul_forward", || {
        cuda::matmul::matmul_forward(eng, gemm, &mut y_d, &x_d, &w_d, n, i, o)
    })?;
    let ms_b = timed(eng, "matmul_backward", || {
        eng.zero(&mut dw_d)?;
        cuda::matmul::matmul_backward(
            eng,
            gemm,
            Some(&mut dx_d),
            false,
            &mut dw_d,
            &dout_d,
            &x_d,
            &w_d,
            n,
            i,
            o,
        )
    })?;
    Ok(vec![
        compare(
            "matmul_forward",
            &shape,
            &down_bf16(eng, &y_d)?,
            &y,
            TOL_BF16,
            ms_f,
        ),
        compare(
            "matmul_backward dx",
            &shape,
            &down_bf16(eng, &dx_d)?,
            &dx,
            TOL_BF16,
            ms_b,
        ),
        compare(
            "matmul_backward dw",
            &shape,
            &eng.download(&dw_d)?,
            &dw,
            TOL_F32 * 10.0,
            ms_b,
        ),
    ])
}

fn check_logprob(
    eng: &CudaEngine,
    gemm: &cuda::matmul::Gemm,
    n: usize,
    d: usize,
    v: usize,
    temperature: f32,
) -> Result<Vec<CheckRow>> {
    let scale = 1.0 / temperature;
    let mut g = Lcg(31 + (n * v) as u64);
    let (h, w) = (g.bf16s(n * d, 1.0), g.bf16s(v * d, 0.1));
    let targets: Vec<u32> = (0..n).map(|t| ((t * 104_729) % v) as u32).collect();
    let (dlogp, dent) = (g.bf16s(n, 1.0), g.bf16s(n, 0.5));
    let (mut lp, mut ent, mut lse) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    cpu::logprob::logprob_forward_scaled(&mut lp, &mut ent, &mut lse, &h, &w, &targets, d, scale);
    let (mut dh, mut dw) = (vec![0.0; n * d], vec![0.0; v * d]);
    cpu::logprob::logprob_backward_scaled(
        &mut dh,
        &mut dw,
        &dlogp,
        Some(&dent),
        &h,
        &w,
        &targets,
        &lse,
        &ent,
        d,
        scale,
    );

    let (h_d, w_d, t_d) = (
        eng.upload(&to_bf16(&h))?,
        eng.upload(&to_bf16(&w))?,
        eng.upload(&targets)?,
    );
    let (dlogp_d, dent_d) = (eng.upload(&dlogp)?, eng.upload(&dent)?);
    let mut scratch = cuda::logprob::LogprobScratch::new(eng, n)?;
    let (mut lp_d, mut ent_d, mut lse_d) = (
        eng.zeros::<f32>(n)?,
        eng.zeros::<f32>(n)?,
        eng.zeros::<f32>(n)?,
    );
    let (mut dh_d, mut dw_d) = (eng.zeros::<f32>(n * d)?, eng.zeros::<f32>(v * d)?);
    let shape = format!("N={n} D={d} V={v} T={temperature}");
    let ms_f = timed(eng, "logprob_forward", || {
        cuda::logprob::logprob_forward(
            eng,
            gemm,
            &mut scratch,
            &mut lp_d,
            &mut ent_d,
            &mut lse_d,
            &h_d,
            &w_d.as_view(),
            &t_d,
            d,
            scale,
        )
    })?;
    let ms_b = timed(eng, "logprob_backward", || {
        eng.zero(&mut dh_d)?;
        eng.zero(&mut dw_d)?;
        cuda::logprob::logprob_backward(
            eng,
            gemm,
            &mut scratch,
            &mut dh_d,
            &mut dw_d.as_view_mut(),
            &dlogp_d,
            Some(&dent_d),
            &h_d,
            &w_d.as_view(),
            &t_d,
            &lse_d,
            &ent_d,
            d,
            scale,
        )
    })?;
    Ok(vec![
        compare(
            "logprob_forward logp",
            &shape,
            &eng.download(&lp_d)?,
            &lp,
            TOL_F32 * 10.0,
            ms_f,
        ),
        compare(
            "logprob_forward entropy",
            &shape,
            &eng.download(&ent_d)?,
            &ent,
            TOL_F32 * 10.0,
            ms_f,
        ),
        compare(
            "logprob_backward dh",
            &shape,
            &eng.download(&dh_d)?,
            &dh,
            TOL_BF16,
            ms_b,
        ),
        compare(
            "logprob_backward dw",
            &shape,
            &eng.download(&dw_d)?,
            &dw,
            TOL_BF16,
            ms_b,
        ),
    ])
}

/// Forward log-probs and values, and every parameter gradient, of the model on the GPU against the
/// CPU oracle with the same (bf16-rounded) weights and inputs. Gradients are compared by cosine
/// similarity per parameter tensor (the acceptance bar is 0.999), which bf16 activations leave
/// intact while any wrong index or missing term destroys.
fn check_model(preset: &str, layers: Option<usize>) -> Result<Vec<CheckRow>> {
    use crate::model::{init::init_params, Batch, HeadGrads, Llama, ParamLayout};
    let mut cfg = LlamaConfig::preset(preset)?;
    cfg.scalar_head = true;
    // A sharp random model at tiny widths; Llama's own 0.02 at llama-1b widths. At 0.05 a 2048-wide
    // model's logits grow so large that bf16 rounding alone moves log-probs by 0.15 nats (the
    // error shrinks in proportion to the init: 0.156 at 0.05, 0.026 at 0.02, 0.009 at 0.01, as
    // measured on the software GPU), which would hide a real bug under the tolerance.
    cfg.initializer_range = if cfg.hidden_size > 512 { 0.02 } else { 0.05 };
    if let Some(l) = layers {
        cfg.num_hidden_layers = l;
    }
    let layout = ParamLayout::new(&cfg);
    let params: Vec<f32> = init_params(&cfg, &layout, 5)
        .iter()
        .map(|&x| bf16::from_f32(x).to_f32())
        .collect();
    let cpu_model = Llama::new(cfg.clone(), params);
    let mut g = Lcg(41);
    let seqs: Vec<Vec<u32>> = [61usize, 40]
        .iter()
        .map(|&len| {
            (0..len)
                .map(|_| ((g.uniform() + 1.0) * 127.0) as u32)
                .collect()
        })
        .collect();
    let batch = Batch::left_padded(&seqs, cfg.pad_token_id.unwrap_or(0));
    let n = batch.tokens();
    let next = batch.next_token_mask();
    let keep = |m: &[bool], r: Vec<f32>| {
        r.into_iter()
            .zip(m)
            .map(|(x, &k)| if k { x } else { 0.0 })
            .collect::<Vec<_>>()
    };
    let r_logp = keep(&next, (0..n).map(|_| g.uniform()).collect());
    let r_value = keep(&batch.mask, (0..n).map(|_| g.uniform()).collect());

    let fwd = cpu_model.forward(&batch)?;
    let mut grads = vec![0.0; layout.len];
    cpu_model.backward(
        &fwd,
        &HeadGrads {
            logp: Some(&r_logp),
            value: Some(&r_value),
            entropy: None,
        },
        &mut grads,
    )?;

    let mut gpu_model = cpu_model.upload(cuda::backend::Cuda::new()?)?;
    let b = &gpu_model.backend;
    let (r_logp_d, r_value_d) = (b.eng.upload(&r_logp)?, b.eng.upload(&r_value)?);
    let mut grads_d = b.eng.zeros::<f32>(layout.len)?;
    let t0 = Instant::now();
    let gfwd = gpu_model.forward(&batch)?;
    gpu_model.backward(
        &gfwd,
        &HeadGrads {
            logp: Some(&r_logp_d),
            value: Some(&r_value_d),
            entropy: None,
        },
        &mut grads_d,
    )?;
    b.eng.synchronize("model forward+backward")?;
    let gpu_ms = t0.elapsed().as_secs_f64() * 1e3;

    let shape = format!("{preset} {}L B=2 T={}", cfg.num_hidden_layers, batch.seq);
    let pick = |v: &[f32], m: &[bool]| {
        v.iter()
            .zip(m)
            .filter(|(_, &k)| k)
            .map(|(x, _)| *x)
            .collect::<Vec<f32>>()
    };
    let (lp_gpu, lp_cpu) = (
        pick(&b.download(&gfwd.logp)?, &next),
        pick(&fwd.logp, &next),
    );
    let (v_gpu, v_cpu) = (
        pick(&b.download(&gfwd.value)?, &batch.mask),
        pick(&fwd.value, &batch.mask),
    );
    // Log-probs in nats: bf16 activations through a few layers stay well inside 0.05.
    let mut lp_row = compare("model forward logp", &shape, &lp_gpu, &lp_cpu, 0.05, gpu_ms);
    lp_row.max_rel = lp_row.max_abs;
    lp_row.pass = lp_row.max_abs <= 0.05 && lp_gpu.iter().all(|x| x.is_finite());
    let v_row = compare("model forward value", &shape, &v_gpu, &v_cpu, 0.02, gpu_ms);

    let grads_gpu = b.download(&grads_d)?;
    let (mut worst, mut worst_name) = (0.0f64, String::from("-"));
    for slot in &layout.slots {
        let (a, c) = (&grads_gpu[slot.range.clone()], &grads[slot.range.clone()]);
        let dot: f64 = a.iter().zip(c).map(|(x, y)| *x as f64 * *y as f64).sum();
        let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nc: f64 = c.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let miss = 1.0 - dot / (na * nc).max(1e-30);
        // A NaN gradient counts as the worst miss.
        if miss.is_nan() || miss > worst {
            (worst, worst_name) = (miss, slot.name.clone());
        }
    }
    let grad_row = CheckRow {
        op: "model backward 1-cos".into(),
        shape: format!("{shape} worst {worst_name}"),
        max_abs: worst as f32,
        max_rel: worst as f32,
        tol: 1e-3,
        pass: worst <= 1e-3, // false for NaN
        gpu_ms,
    };

    // --recompute rebuilds each layer in the backward from its input with the same kernels in
    // the same order, so its gradients are the same bits; and it runs on recycled buffers.
    // (On tiny only: llama-1b's two layers take the software GPU another ten seconds.)
    if preset != "tiny" {
        return Ok(vec![lp_row, v_row, grad_row]);
    }
    gfwd.recycle(b);
    gpu_model.recompute = true;
    let recomputing = &gpu_model;
    let mut grads_r = b.eng.zeros::<f32>(layout.len)?;
    let t0 = Instant::now();
    let rfwd = recomputing.forward(&batch)?;
    recomputing.backward(
        &rfwd,
        &HeadGrads {
            logp: Some(&r_logp_d),
            value: Some(&r_value_d),
            entropy: None,
        },
        &mut grads_r,
    )?;
    b.eng.synchronize("model forward+backward with recompute")?;
    let r_ms = t0.elapsed().as_secs_f64() * 1e3;
    let grads_r = b.download(&grads_r)?;
    let differ = grads_r
        .iter()
        .zip(&grads_gpu)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    let recompute_row = CheckRow {
        op: "model backward recompute".into(),
        shape: format!("{shape}; gradients not bitwise equal"),
        max_abs: differ as f32,
        max_rel: differ as f32,
        tol: 0.0,
        pass: differ == 0,
        gpu_ms: r_ms,
    };
    Ok(vec![lp_row, v_row, grad_row, recompute_row])
}

fn check_adamw(
    eng: &CudaEngine,
    n: usize,
    no_decay: Vec<std::ops::Range<usize>>,
) -> Result<Vec<CheckRow>> {
    use crate::ops::cpu::adamw::{clip_grad_norm, AdamW};
    let mut g = Lcg(23 + n as u64);
    let params = g.bf16s(n, 1.0);
    let grads: Vec<f32> = (0..n).map(|_| g.uniform() * 0.05).collect();
    let max_norm = 1.0;
    // A decay as large as the Adam update, so decaying an exempt weight (or sparing one that
    // decays) moves it by about half the update and fails the row.
    let weight_decay = 1.0;
    let no_decay_d = cuda::adamw::upload_no_decay(eng, &no_decay)?;
    let exempt = no_decay.len();
    // CPU: two steps, so the moments from the first are used by the second.
    let mut adam = AdamW::new(n, weight_decay, no_decay);
    let mut p = params.clone();
    let mut norms = Vec::new();
    for _ in 0..2 {
        let mut gr = grads.clone();
        norms.push(clip_grad_norm(&mut gr, max_norm));
        adam.step(&mut p, &gr, 1e-3);
    }
    let mut master_d = eng.upload(&params)?;
    let mut p16_d = eng.zeros::<bf16>(n)?;
    let grads_d = eng.upload(&grads)?;
    let (mut m_d, mut v_d) = (eng.zeros::<f32>(n)?, eng.zeros::<f32>(n)?);
    let (mut norm_d, mut partial) = (eng.zeros::<f32>(1)?, cuda::adamw::norm_scratch(eng)?);
    let mut ms = 0.0;
    for t in 1..=2u64 {
        let t0 = Instant::now();
        cuda::adamw::grad_norm(eng, &mut norm_d, &mut partial, &grads_d)?;
        let hp = cuda::adamw::AdamWStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            t,
            max_norm,
        };
        cuda::adamw::adamw_step(
            eng,
            &mut master_d,
            &mut p16_d,
            &grads_d,
            &mut m_d,
            &mut v_d,
            &norm_d,
            no_decay_d.as_ref(),
            hp,
        )?;
        eng.synchronize("adamw_step")?;
        ms = t0.elapsed().as_secs_f64() * 1e3;
    }
    let shape = format!("n={n}, 2 steps, {exempt} no-decay ranges");
    // Compare the update (p − p0), which is what the optimiser computes, not p itself.
    let delta = |a: &[f32]| {
        a.iter()
            .zip(&params)
            .map(|(x, p0)| x - p0)
            .collect::<Vec<_>>()
    };
    Ok(vec![
        compare(
            "grad_norm",
            &format!("n={n}"),
            &eng.download(&norm_d)?,
            &norms[1..],
            TOL_F32,
            ms,
        ),
        compare(
            "adamw_step",
            &shape,
            &delta(&eng.download(&master_d)?),
            &delta(&p),
            1e-3,
            ms,
        ),
    ])
}
