//! `prefer check` for the cuBLASLt matmuls and the fused log-prob head (LM-head GEMM, log-softmax
//! and entropy in vocabulary chunks), forward and backward, against the CPU oracle.

use super::harness::{compare, down_bf16, timed, to_bf16, CheckRow, Lcg, TOL_BF16, TOL_F32};
use crate::ops::cpu;
use crate::ops::cuda::{self, CudaEngine};
use anyhow::Result;
use half::bf16;

/// (N, I, O): tiny, an MLP projection at llama-1b widths, odd sizes.
pub(super) fn matmul(eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    let gemm = cuda::matmul::Gemm::new(eng)?;
    let mut rows = Vec::new();
    for (n, i, o) in [(37, 64, 96), (512, 2048, 8192), (130, 2048, 2050)] {
        rows.extend(check_matmul(eng, &gemm, n, i, o)?);
    }
    Ok(rows)
}

/// (N, D, V, temperature): one partial chunk, the same at PPO's temperature 0.7, then llama-1b's
/// vocabulary (15 full chunks and a partial).
pub(super) fn logprob(eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    let gemm = cuda::matmul::Gemm::new(eng)?;
    let mut rows = Vec::new();
    for (n, d, v, t) in [
        (70, 64, 259, 1.0),
        (70, 64, 259, 0.7),
        (64, 2048, 128256, 1.0),
    ] {
        rows.extend(check_logprob(eng, &gemm, n, d, v, t)?);
    }
    Ok(rows)
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
    // The CPU oracle on a thread of its own while the device side runs: at V = 128256 each takes
    // seconds, and neither keeps both cores busy alone (on the software GPU).
    std::thread::scope(|s| {
        let oracle = s.spawn(|| {
            let (mut lp, mut ent, mut lse) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            cpu::logprob::logprob_forward(&mut lp, &mut ent, &mut lse, &h, &w, &targets, d, scale);
            let (mut dh, mut dw) = (vec![0.0; n * d], vec![0.0; v * d]);
            cpu::logprob::logprob_backward(
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
            (lp, ent, dh, dw)
        });
        let device = device_logprob(eng, gemm, (&h, &w, &targets), (&dlogp, &dent), d, scale);
        let (lp, ent, dh, dw) = oracle
            .join()
            .map_err(|_| anyhow::anyhow!("the CPU oracle's log-prob panicked"))?;
        let (lp_d, ent_d, dh_d, dw_d, ms_f, ms_b) = device?;
        let shape = format!("N={n} D={d} V={v} T={temperature}");
        Ok(vec![
            compare(
                "logprob_forward logp",
                &shape,
                &lp_d,
                &lp,
                TOL_F32 * 10.0,
                ms_f,
            ),
            compare(
                "logprob_forward entropy",
                &shape,
                &ent_d,
                &ent,
                TOL_F32 * 10.0,
                ms_f,
            ),
            compare("logprob_backward dh", &shape, &dh_d, &dh, TOL_BF16, ms_b),
            compare("logprob_backward dw", &shape, &dw_d, &dw, TOL_BF16, ms_b),
        ])
    })
}

/// Log-prob forward and backward of one shape on the device: logp, entropy, dh and dw downloaded,
/// and the forward's and backward's milliseconds.
#[allow(clippy::type_complexity)]
fn device_logprob(
    eng: &CudaEngine,
    gemm: &cuda::matmul::Gemm,
    (h, w, targets): (&[f32], &[f32], &[u32]),
    (dlogp, dent): (&[f32], &[f32]),
    d: usize,
    scale: f32,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, f64, f64)> {
    let (n, v) = (targets.len(), w.len() / d);
    let (h_d, w_d, t_d) = (
        eng.upload(&to_bf16(h))?,
        eng.upload(&to_bf16(w))?,
        eng.upload(targets)?,
    );
    let (dlogp_d, dent_d) = (eng.upload(dlogp)?, eng.upload(dent)?);
    let mut scratch = cuda::logprob::LogprobScratch::new(eng, n)?;
    let (mut lp_d, mut ent_d, mut lse_d) = (
        eng.zeros::<f32>(n)?,
        eng.zeros::<f32>(n)?,
        eng.zeros::<f32>(n)?,
    );
    let (mut dh_d, mut dw_d) = (eng.zeros::<f32>(n * d)?, eng.zeros::<f32>(v * d)?);
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
    Ok((
        eng.download(&lp_d)?,
        eng.download(&ent_d)?,
        eng.download(&dh_d)?,
        eng.download(&dw_d)?,
        ms_f,
        ms_b,
    ))
}
