//! `prefer bench kernels`: the kernels at the shapes of DESIGN.md's targets, timed with CUDA
//! events, with throughput next to the card's limits. PyTorch's side of the same shapes is
//! tests/reference/bench_torch.py. [`SHAPES`] is the one table of those shapes: the criterion
//! bench (benches/cuda_kernels.rs) times the same ones, on the same buffers.

use crate::ops::cpu::AttentionShape;
use crate::ops::cuda::{self, CudaEngine};
use anyhow::Result;
use cudarc::driver::CudaSlice;
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

/// A bf16 GEMM, y[m, n] = x[m, k] · w[n, k]ᵀ.
#[derive(Clone, Copy, Debug)]
pub struct GemmShape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// What the shape stands for, in the table.
    pub what: &'static str,
}

/// The fused log-prob head: `tokens` hidden states of width `hidden` against a vocabulary.
#[derive(Clone, Copy, Debug)]
pub struct LogprobShape {
    pub tokens: usize,
    pub hidden: usize,
    pub vocab: usize,
}

/// RMSNorm over `rows` rows of `width`.
#[derive(Clone, Copy, Debug)]
pub struct RmsnormShape {
    pub rows: usize,
    pub width: usize,
}

/// The shapes the kernels are timed at.
#[derive(Clone, Copy, Debug)]
pub struct BenchShapes {
    /// The GEMM ceiling, then the llama-1b MLP's up projection.
    pub gemm: &'static [GemmShape],
    /// T8: causal GQA attention.
    pub attention: AttentionShape,
    /// T7: the fused log-prob forward and backward.
    pub logprob: LogprobShape,
    /// A llama-1b layer's norm (criterion only).
    pub rmsnorm: RmsnormShape,
}

pub const SHAPES: BenchShapes = BenchShapes {
    // bf16 8192³ (DESIGN.md measured 819 TFLOP/s through cuBLAS).
    gemm: &[
        GemmShape {
            m: 8192,
            k: 8192,
            n: 8192,
            what: "bf16 GEMM 8192³",
        },
        GemmShape {
            m: 8192,
            k: 2048,
            n: 8192,
            what: "llama-1b MLP up, 8×1024 tokens",
        },
    ],
    // 8 × 32 heads (8 KV) × 1024 × 64.
    attention: AttentionShape {
        batch: 8,
        seq: 1024,
        heads: 32,
        kv_heads: 8,
        head_dim: 64,
    },
    // Hidden 2048, vocab 128256, 8192 tokens.
    logprob: LogprobShape {
        tokens: 8192,
        hidden: 2048,
        vocab: 128256,
    },
    rmsnorm: RmsnormShape {
        rows: 8192,
        width: 2048,
    },
};

const ITERS: usize = 20;

/// A GEMM's buffers (zeros: the time does not depend on the values).
pub struct GemmBench {
    pub shape: GemmShape,
    x: CudaSlice<bf16>,
    w: CudaSlice<bf16>,
    y: CudaSlice<bf16>,
}

impl GemmBench {
    pub fn new(eng: &CudaEngine, shape: GemmShape) -> Result<Self> {
        let GemmShape { m, k, n, .. } = shape;
        Ok(GemmBench {
            shape,
            x: eng.zeros(m * k)?,
            w: eng.zeros(n * k)?,
            y: eng.zeros(m * n)?,
        })
    }

    pub fn forward(&mut self, eng: &CudaEngine, gemm: &cuda::matmul::Gemm) -> Result<()> {
        let GemmShape { m, k, n, .. } = self.shape;
        cuda::matmul::matmul_forward(eng, gemm, &mut self.y, &self.x, &self.w, m, k, n)
    }
}

/// Attention's inputs (every value 0.01, every key unmasked) and outputs at one shape.
pub struct AttentionBench {
    pub shape: AttentionShape,
    q: CudaSlice<bf16>,
    k: CudaSlice<bf16>,
    v: CudaSlice<bf16>,
    mask: CudaSlice<u8>,
    out: CudaSlice<bf16>,
    lse: CudaSlice<f32>,
}

impl AttentionBench {
    pub fn new(eng: &CudaEngine, s: AttentionShape) -> Result<Self> {
        // Tokens [B·T], query width H·hd, key/value width Hkv·hd.
        let (n, qd, kvd) = (
            s.batch * s.seq,
            s.heads * s.head_dim,
            s.kv_heads * s.head_dim,
        );
        let small = |len: usize| eng.upload(&vec![bf16::from_f32(0.01); len]);
        Ok(AttentionBench {
            shape: s,
            q: small(n * qd)?,
            k: small(n * kvd)?,
            v: small(n * kvd)?,
            mask: eng.upload(&vec![1u8; n])?,
            out: eng.zeros(n * qd)?,
            lse: eng.zeros(n * s.heads)?,
        })
    }

    pub fn forward(&mut self, eng: &CudaEngine) -> Result<()> {
        let b = self;
        cuda::attention::attention_forward(
            eng, &mut b.out, &mut b.lse, &b.q, &b.k, &b.v, &b.mask, b.shape,
        )
    }
}

/// RMSNorm's input (zeros), unit gains and outputs at one shape.
pub struct RmsnormBench {
    pub shape: RmsnormShape,
    x: CudaSlice<bf16>,
    w: CudaSlice<bf16>,
    y: CudaSlice<bf16>,
    rstd: CudaSlice<f32>,
}

impl RmsnormBench {
    pub fn new(eng: &CudaEngine, shape: RmsnormShape) -> Result<Self> {
        let RmsnormShape { rows, width } = shape;
        Ok(RmsnormBench {
            shape,
            x: eng.zeros(rows * width)?,
            w: eng.upload(&vec![bf16::ONE; width])?,
            y: eng.zeros(rows * width)?,
            rstd: eng.zeros(rows)?,
        })
    }

    pub fn forward(&mut self, eng: &CudaEngine) -> Result<()> {
        let RmsnormShape { rows, width } = self.shape;
        cuda::rmsnorm::rmsnorm_forward(
            eng,
            &mut self.y,
            &mut self.rstd,
            &self.x,
            &self.w.as_view(),
            rows,
            width,
            1e-5,
        )
    }
}

/// Every row of `prefer bench kernels`, at [`SHAPES`].
pub fn run_kernel_benches(eng: &CudaEngine) -> Result<Vec<BenchRow>> {
    let gemm = cuda::matmul::Gemm::new(eng)?;
    let mut rows = gemm_rows(eng, &gemm)?;
    rows.extend(attention_rows(eng)?);
    rows.push(logprob_row(eng, &gemm)?);
    Ok(rows)
}

fn gemm_rows(eng: &CudaEngine, gemm: &cuda::matmul::Gemm) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    for &shape in SHAPES.gemm {
        let mut b = GemmBench::new(eng, shape)?;
        let ms = eng.time_ms(ITERS, || b.forward(eng, gemm))?;
        let flops = 2.0 * (shape.m * shape.k * shape.n) as f64;
        rows.push(BenchRow {
            id: "gemm".into(),
            workload: shape.what.into(),
            ms,
            tflops: flops / ms / 1e9,
            extra_gib: 0.0,
        });
    }
    Ok(rows)
}

/// T8: causal GQA attention, forward, then forward and backward.
fn attention_rows(eng: &CudaEngine) -> Result<Vec<BenchRow>> {
    let s = SHAPES.attention;
    let mut fwd = AttentionBench::new(eng, s)?;
    let fwd_ms = eng.time_ms(ITERS, || fwd.forward(eng))?;
    let (n, qd, kvd) = (
        s.batch * s.seq,
        s.heads * s.head_dim,
        s.kv_heads * s.head_dim,
    );
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
            &fwd.q,
            &fwd.k,
            &fwd.v,
            &fwd.out,
            &fwd.lse,
            &fwd.mask,
            s,
        )
    })?;
    // Causal forward FLOPs: two (T×T×hd) matmuls, half of them masked: 2·2·B·H·T²·hd / 2.
    let fwd_flops = 2.0 * (s.batch * s.heads * s.seq * s.seq * s.head_dim) as f64;
    let shape = format!(
        "{}×{}({})×{}×{}",
        s.batch, s.heads, s.kv_heads, s.seq, s.head_dim
    );
    Ok(vec![
        BenchRow {
            id: "T8".into(),
            workload: format!("attention fwd {shape}"),
            ms: fwd_ms,
            tflops: fwd_flops / fwd_ms / 1e9,
            extra_gib: 0.0,
        },
        // The backward does 2.5× the forward's matmul work (5 products to the forward's 2).
        BenchRow {
            id: "T8".into(),
            workload: "attention fwd+bwd".into(),
            ms: fwd_ms + bwd_ms,
            tflops: 3.5 * fwd_flops / (fwd_ms + bwd_ms) / 1e9,
            extra_gib: 0.0,
        },
    ])
}

/// T7: the fused log-prob forward and backward.
fn logprob_row(eng: &CudaEngine, gemm: &cuda::matmul::Gemm) -> Result<BenchRow> {
    let LogprobShape {
        tokens: n,
        hidden: d,
        vocab,
    } = SHAPES.logprob;
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
            gemm,
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
            gemm,
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
    Ok(BenchRow {
        id: "T7".into(),
        workload: format!("fused log-prob fwd+bwd, {n}×{d}→{vocab}"),
        ms,
        tflops: flops / ms / 1e9,
        extra_gib: extra,
    })
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
