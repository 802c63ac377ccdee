//! Launchers for kernels/logprob.cu: the fused LM head over vocabulary chunks, with cuBLASLt for
//! the chunk GEMMs. The CPU oracle of the same names is src/ops/cpu/logprob.rs.
//! Extra memory is one chunk of logits (N·Vc f32) and of their gradient (N·Vc bf16), never N·V.

use super::matmul::{matmul_backward, matmul_forward, Gemm, GemmShape};
use super::CudaEngine;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::bf16;

/// Vocabulary columns per chunk.
pub const VOCAB_CHUNK: usize = 8192;

/// Per-token state and chunk buffers, sized once for up to `cap` tokens; `n` is the current
/// batch's count (the kernels take it; buffers may be longer).
pub struct LogprobScratch {
    n: usize,
    cap: usize,
    logits: CudaSlice<f32>,   // [N, VOCAB_CHUNK]
    dlogits: CudaSlice<bf16>, // [N, VOCAB_CHUNK]
    run_max: CudaSlice<f32>,
    run_sum: CudaSlice<f32>,
    run_sumz: CudaSlice<f32>,
    target_logit: CudaSlice<f32>,
}

impl LogprobScratch {
    pub fn new(eng: &CudaEngine, n: usize) -> Result<Self> {
        Ok(LogprobScratch {
            n,
            cap: n,
            logits: eng.zeros(n * VOCAB_CHUNK)?,
            dlogits: eng.zeros(n * VOCAB_CHUNK)?,
            run_max: eng.zeros(n)?,
            run_sum: eng.zeros(n)?,
            run_sumz: eng.zeros(n)?,
            target_logit: eng.zeros(n)?,
        })
    }

    /// Serves `n` tokens from these buffers if they are long enough.
    pub fn fit(&mut self, n: usize) -> bool {
        self.n = n;
        n <= self.cap
    }
}

fn rows(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// logp, entropy, lse (N) f32 from h (N,D) bf16, W (V,D) bf16 and targets (N), for the logits
/// z = scale·(h·Wᵀ) (scale = 1/temperature).
#[allow(clippy::too_many_arguments)]
pub fn logprob_forward(
    eng: &CudaEngine,
    gemm: &Gemm,
    s: &mut LogprobScratch,
    logp: &mut CudaSlice<f32>,
    entropy: &mut CudaSlice<f32>,
    lse: &mut CudaSlice<f32>,
    h: &CudaSlice<bf16>,
    w: &CudaView<bf16>,
    targets: &CudaSlice<u32>,
    d: usize,
    scale: f32,
) -> Result<()> {
    let n = s.n;
    let v = w.len() / d;
    ensure!(
        h.len() == n * d
            && targets.len() == n
            && logp.len() == n
            && entropy.len() == n
            && lse.len() == n
            && w.len() == v * d,
        "logprob_forward: N={n} D={d} V={v}"
    );
    // The first chunk starts the running state (kernels/logprob.cu): no reset, no host copy.
    let fold = eng.function("logprob_chunk_forward")?;
    for c0 in (0..v).step_by(VOCAB_CHUNK) {
        let vc = VOCAB_CHUNK.min(v - c0);
        chunk_logits(
            eng,
            gemm,
            s,
            h,
            &w.slice(c0 * d..(c0 + vc) * d),
            n,
            d,
            vc,
            scale,
        )?;
        let logits = s.logits.slice(..n * vc);
        let (n_i, vc_i, c0_i) = (n as i32, vc as i32, c0 as i32);
        let mut l = eng.stream.launch_builder(&fold);
        l.arg(&mut s.run_max)
            .arg(&mut s.run_sum)
            .arg(&mut s.run_sumz)
            .arg(&mut s.target_logit);
        l.arg(&logits).arg(targets).arg(&n_i).arg(&vc_i).arg(&c0_i);
        // SAFETY: arguments match the kernel; the chunk holds N·vc logits.
        unsafe { l.launch(rows(n)) }
            .map_err(|e| anyhow!("logprob_chunk_forward (N={n}, chunk {c0}+{vc}): {e:?}"))?;
    }
    let f = eng.function("logprob_finish")?;
    let n_i = n as i32;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(logp)
        .arg(entropy)
        .arg(lse)
        .arg(&s.run_max)
        .arg(&s.run_sum)
        .arg(&s.run_sumz)
        .arg(&s.target_logit)
        .arg(&n_i);
    // SAFETY: as above.
    unsafe { l.launch(super::grid_for(n, "elementwise")?) }
        .map_err(|e| anyhow!("logprob_finish (N={n}): {e:?}"))?;
    Ok(())
}

/// One vocabulary chunk's logits (N, vc) f32 = scale·(h·W_chunkᵀ).
#[allow(clippy::too_many_arguments)]
fn chunk_logits(
    eng: &CudaEngine,
    gemm: &Gemm,
    s: &mut LogprobScratch,
    h: &CudaSlice<bf16>,
    w_chunk: &CudaView<bf16>,
    n: usize,
    d: usize,
    vc: usize,
    scale: f32,
) -> Result<()> {
    if scale == 1.0 {
        return matmul_forward(
            eng,
            gemm,
            &mut s.logits.slice_mut(..n * vc),
            h,
            w_chunk,
            n,
            d,
            vc,
        );
    }
    // matmul_forward's product, with alpha = scale.
    let shape = GemmShape {
        transa: true,
        transb: false,
        m: vc as u64,
        n: n as u64,
        k: d as u64,
        lda: d as i64,
        ldb: d as i64,
        ldc: vc as i64,
        c_f32: true,
    };
    let mut out = s.logits.slice_mut(..n * vc);
    gemm.gemm(
        eng,
        shape,
        scale,
        w_chunk,
        h,
        0.0,
        &mut out,
        "logprob logits",
    )
}

/// dh (N,D) f32 += and dW (V,D) f32 += the gradient of Σ dlogp·logp + Σ dentropy·entropy.
#[allow(clippy::too_many_arguments)]
pub fn logprob_backward(
    eng: &CudaEngine,
    gemm: &Gemm,
    s: &mut LogprobScratch,
    dh: &mut CudaSlice<f32>,
    dw: &mut CudaViewMut<f32>,
    dlogp: &CudaSlice<f32>,
    dentropy: Option<&CudaSlice<f32>>,
    h: &CudaSlice<bf16>,
    w: &CudaView<bf16>,
    targets: &CudaSlice<u32>,
    lse: &CudaSlice<f32>,
    entropy: &CudaSlice<f32>,
    d: usize,
    scale: f32,
) -> Result<()> {
    let n = s.n;
    let v = w.len() / d;
    ensure!(
        dh.len() == n * d
            && dw.len() == v * d
            && dlogp.len() == n
            && lse.len() == n
            && entropy.len() == n
            && targets.len() == n
            && h.len() == n * d,
        "logprob_backward: N={n} D={d} V={v}"
    );
    let grad = eng.function("logprob_chunk_backward")?;
    let null: u64 = 0;
    for c0 in (0..v).step_by(VOCAB_CHUNK) {
        let vc = VOCAB_CHUNK.min(v - c0);
        let w_chunk = w.slice(c0 * d..(c0 + vc) * d);
        chunk_logits(eng, gemm, s, h, &w_chunk, n, d, vc, scale)?;
        let logits = s.logits.slice(..n * vc);
        let mut dlogits = s.dlogits.slice_mut(..n * vc);
        let (n_i, vc_i, c0_i) = (n as i32, vc as i32, c0 as i32);
        let mut l = eng.stream.launch_builder(&grad);
        l.arg(&mut dlogits)
            .arg(&logits)
            .arg(lse)
            .arg(entropy)
            .arg(dlogp);
        match dentropy {
            Some(de) => l.arg(de),
            None => l.arg(&null),
        };
        l.arg(targets).arg(&n_i).arg(&vc_i).arg(&c0_i).arg(&scale);
        // SAFETY: arguments match the kernel (a null dentropy is a 0 pointer); sizes checked.
        unsafe { l.launch(rows(n)) }
            .map_err(|e| anyhow!("logprob_chunk_backward (N={n}, chunk {c0}+{vc}): {e:?}"))?;
        // dhᶜ[D,N] += Wᶜ[D,vc] · dlogitsᶜ[vc,N]
        let shape = GemmShape {
            transa: false,
            transb: false,
            m: d as u64,
            n: n as u64,
            k: vc as u64,
            lda: d as i64,
            ldb: vc as i64,
            ldc: d as i64,
            c_f32: true,
        };
        gemm.gemm(
            eng,
            shape,
            1.0,
            &w_chunk,
            &dlogits,
            1.0,
            dh,
            "logprob_backward dh",
        )?;
        let mut dw_chunk = dw.slice_mut(c0 * d..(c0 + vc) * d);
        matmul_backward::<f32>(
            eng,
            gemm,
            None::<&mut CudaSlice<f32>>,
            false,
            &mut dw_chunk,
            &dlogits,
            h,
            &w_chunk,
            n,
            d,
            vc,
        )?;
    }
    Ok(())
}
