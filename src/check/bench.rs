//! `prefer bench kernels`: the kernels at the shapes of DESIGN.md's targets, timed with CUDA
//! events, with throughput next to the card's limits. PyTorch's side of the same shapes is
//! tests/reference/bench_torch.py.

use crate::ops::cpu::AttentionShape;
use crate::ops::cuda::{self, CudaEngine};
use anyhow::Result;
use half::bf16;

/// One line of the bench table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRow {
    pub id: String,
    pub workload: String,
    pub ms: f64,
    pub tflops: f64,
    pub extra_gib: f64,
}

const ITERS: usize = 20;

pub fn run_kernel_benches(eng: &CudaEngine) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    let gemm = cuda::matmul::Gemm::new(eng)?;

    // The GEMM ceiling: bf16 8192³ (DESIGN.md measured 819 TFLOP/s through cuBLAS).
    for (m, k, n, what) in [
        (8192usize, 8192usize, 8192usize, "bf16 GEMM 8192³"),
        (8192, 2048, 8192, "llama-1b MLP up, 8×1024 tokens"),
    ] {
        let x = eng.zeros::<bf16>(m * k)?;
        let w = eng.zeros::<bf16>(n * k)?;
        let mut y = eng.zeros::<bf16>(m * n)?;
        let ms = eng.time_ms(ITERS, || {
            cuda::matmul::matmul_forward(eng, &gemm, &mut y, &x, &w, m, k, n)
        })?;
        let flops = 2.0 * (m * k * n) as f64;
        rows.push(BenchRow {
            id: "gemm".into(),
            workload: what.into(),
            ms,
            tflops: flops / ms / 1e9,
            extra_gib: 0.0,
        });
    }

    // T8: causal GQA attention, 8 × 32 heads (8 KV) × 1024 × 64.
    let s = AttentionShape {
        batch: 8,
        seq: 1024,
        heads: 32,
        kv_heads: 8,
        head_dim: 64,
    };
    let (n, qd, kvd) = (
        s.batch * s.seq,
        s.heads * s.head_dim,
        s.kv_heads * s.head_dim,
    );
    let q = eng.upload(&vec![bf16::from_f32(0.01); n * qd])?;
    let k = eng.upload(&vec![bf16::from_f32(0.01); n * kvd])?;
    let v = eng.upload(&vec![bf16::from_f32(0.01); n * kvd])?;
    let mask = eng.upload(&vec![1u8; n])?;
    let (mut out, mut lse) = (eng.zeros::<bf16>(n * qd)?, eng.zeros::<f32>(n * s.heads)?);
    let fwd_ms = eng.time_ms(ITERS, || {
        cuda::attention::attention_forward(eng, &mut out, &mut lse, &q, &k, &v, &mask, s)
    })?;
    let (mut dq, mut dk, mut dv) = (
        eng.zeros::<bf16>(n * qd)?,
        eng.zeros::<bf16>(n * kvd)?,
        eng.zeros::<bf16>(n * kvd)?,
    );
    let mut rowdot = eng.zeros::<f32>(n * s.heads)?;
    let dout = eng.upload(&vec![bf16::from_f32(0.01); n * qd])?;
    let bwd_ms = eng.time_ms(ITERS, || {
        cuda::attention::attention_backward(
            eng,
            &mut dq,
            &mut dk,
            &mut dv,
            &mut rowdot,
            &dout,
            &q,
            &k,
            &v,
            &out,
            &lse,
            &mask,
            s,
        )
    })?;
    // Causal forward FLOPs: two (T×T×hd) matmuls, half of them masked: 2·2·B·H·T²·hd / 2.
    let fwd_flops = 2.0 * (s.batch * s.heads * s.seq * s.seq * s.head_dim) as f64;
    rows.push(BenchRow {
        id: "T8".into(),
        workload: "attention fwd 8×32(8)×1024×64".into(),
        ms: fwd_ms,
        tflops: fwd_flops / fwd_ms / 1e9,
        extra_gib: 0.0,
    });
    // The backward does 2.5× the forward's matmul work (5 products to the forward's 2).
    rows.push(BenchRow {
        id: "T8".into(),
        workload: "attention fwd+bwd".into(),
        ms: fwd_ms + bwd_ms,
        tflops: 3.5 * fwd_flops / (fwd_ms + bwd_ms) / 1e9,
        extra_gib: 0.0,
    });

    // T7: fused log-prob forward + backward, hidden 2048, vocab 128256, 8192 tokens.
    let (n, d, vocab) = (8192usize, 2048usize, 128256usize);
    let h = eng.upload(&vec![bf16::from_f32(0.01); n * d])?;
    let w = eng.upload(&vec![bf16::from_f32(0.01); vocab * d])?;
    let targets = eng.upload(
        &(0..n as u32)
            .map(|t| t * 13 % vocab as u32)
            .collect::<Vec<_>>(),
    )?;
    let mut scratch = cuda::logprob::LogprobScratch::new(eng, n)?;
    let (mut lp, mut ent, mut lse) = (
        eng.zeros::<f32>(n)?,
        eng.zeros::<f32>(n)?,
        eng.zeros::<f32>(n)?,
    );
    let (mut dh, mut dw) = (eng.zeros::<f32>(n * d)?, eng.zeros::<f32>(vocab * d)?);
    let dlogp = eng.upload(&vec![1.0f32 / n as f32; n])?;
    let ms = eng.time_ms(5, || {
        cuda::logprob::logprob_forward(
            eng,
            &gemm,
            &mut scratch,
            &mut lp,
            &mut ent,
            &mut lse,
            &h,
            &w.as_view(),
            &targets,
            d,
            1.0,
        )?;
        cuda::logprob::logprob_backward(
            eng,
            &gemm,
            &mut scratch,
            &mut dh,
            &mut dw.as_view_mut(),
            &dlogp,
            None,
            &h,
            &w.as_view(),
            &targets,
            &lse,
            &ent,
            d,
            1.0,
        )
    })?;
    // Forward GEMM, then recompute + two backward GEMMs: 4 × 2·N·D·V.
    let flops = 8.0 * (n * d * vocab) as f64;
    let extra = (n * cuda::logprob::VOCAB_CHUNK * 6) as f64 / (1u64 << 30) as f64; // f32 logits + bf16 dlogits
    rows.push(BenchRow {
        id: "T7".into(),
        workload: "fused log-prob fwd+bwd, 8192×2048→128256".into(),
        ms,
        tflops: flops / ms / 1e9,
        extra_gib: extra,
    });
    Ok(rows)
}

pub fn print_bench(rows: &[BenchRow], gpu: &str) {
    println!("prefer bench kernels on {gpu}");
    println!(
        "{:<5} {:<44} {:>10} {:>9} {:>10}",
        "id", "workload", "ms", "TFLOP/s", "extra GiB"
    );
    for r in rows {
        println!(
            "{:<5} {:<44} {:>10.3} {:>9.1} {:>10.2}",
            r.id, r.workload, r.ms, r.tflops, r.extra_gib
        );
    }
}
