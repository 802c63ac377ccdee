//! Criterion benches of the CUDA kernels, timed with CUDA events through `iter_custom`. Without
//! a GPU they print why and measure nothing; `prefer bench kernels` prints the same shapes as a
//! table with throughput.

use criterion::{criterion_group, criterion_main, Criterion};
use half::bf16;
use prefer::ops::cpu::AttentionShape;
use prefer::ops::cuda::{self, CudaEngine};
use std::time::Duration;

fn kernels(c: &mut Criterion) {
    let eng = match CudaEngine::new() {
        Ok(e) => e,
        Err(why) => {
            eprintln!("SKIPPED cuda_kernels: no usable GPU: {why:#}");
            return;
        }
    };
    let gemm = cuda::matmul::Gemm::new(&eng).expect("cuBLASLt");
    let time = |iters: u64, run: &mut dyn FnMut()| -> Duration {
        let ms = eng
            .time_ms(iters as usize, || {
                run();
                Ok(())
            })
            .expect("timed");
        Duration::from_secs_f64(ms * iters as f64 / 1e3)
    };

    let (m, k, n) = (8192, 2048, 8192);
    let x = eng.zeros::<bf16>(m * k).unwrap();
    let w = eng.zeros::<bf16>(n * k).unwrap();
    let mut y = eng.zeros::<bf16>(m * n).unwrap();
    c.bench_function("matmul_forward 8192x2048 -> 8192 (cuBLASLt)", |b| {
        b.iter_custom(|iters| {
            time(iters, &mut || {
                cuda::matmul::matmul_forward(&eng, &gemm, &mut y, &x, &w, m, k, n).unwrap()
            })
        })
    });

    let s = AttentionShape {
        batch: 8,
        seq: 1024,
        heads: 32,
        kv_heads: 8,
        head_dim: 64,
    };
    let (nt, qd, kvd) = (
        s.batch * s.seq,
        s.heads * s.head_dim,
        s.kv_heads * s.head_dim,
    );
    let q = eng.zeros::<bf16>(nt * qd).unwrap();
    let kk = eng.zeros::<bf16>(nt * kvd).unwrap();
    let v = eng.zeros::<bf16>(nt * kvd).unwrap();
    let mask = eng.upload(&vec![1u8; nt]).unwrap();
    let (mut out, mut lse) = (
        eng.zeros::<bf16>(nt * qd).unwrap(),
        eng.zeros::<f32>(nt * s.heads).unwrap(),
    );
    c.bench_function("attention_forward T8 8x32(8)x1024x64", |b| {
        b.iter_custom(|iters| {
            time(iters, &mut || {
                cuda::attention::attention_forward(&eng, &mut out, &mut lse, &q, &kk, &v, &mask, s)
                    .unwrap()
            })
        })
    });

    let (nr, d) = (8192, 2048);
    let xr = eng.zeros::<bf16>(nr * d).unwrap();
    let wr = eng.upload(&vec![bf16::ONE; d]).unwrap();
    let (mut yr, mut rstd) = (
        eng.zeros::<bf16>(nr * d).unwrap(),
        eng.zeros::<f32>(nr).unwrap(),
    );
    c.bench_function("rmsnorm_forward 8192x2048", |b| {
        b.iter_custom(|iters| {
            time(iters, &mut || {
                cuda::rmsnorm::rmsnorm_forward(
                    &eng,
                    &mut yr,
                    &mut rstd,
                    &xr,
                    &wr.as_view(),
                    nr,
                    d,
                    1e-5,
                )
                .unwrap()
            })
        })
    });
}

criterion_group!(benches, kernels);
criterion_main!(benches);
