//! Criterion benches of the CUDA kernels, timed with CUDA events through `iter_custom`. Without
//! a GPU they print why and measure nothing; `prefer bench kernels` prints the same shapes
//! (`prefer::check::bench::SHAPES`, on the same buffers) as a table with throughput.

use criterion::{criterion_group, criterion_main, Criterion};
use prefer::check::bench::{AttentionBench, GemmBench, RmsnormBench, SHAPES};
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
    let time = |iters: u64, run: &mut dyn FnMut() -> anyhow::Result<()>| -> Duration {
        let ms = eng.time_ms(iters as usize, &mut *run).expect("timed");
        Duration::from_secs_f64(ms * iters as f64 / 1e3)
    };

    for &shape in SHAPES.gemm {
        let mut b = GemmBench::new(&eng, shape).unwrap();
        let name = format!(
            "matmul_forward {}x{} -> {} (cuBLASLt)",
            shape.m, shape.k, shape.n
        );
        c.bench_function(&name, |bench| {
            bench.iter_custom(|iters| time(iters, &mut || b.forward(&eng, &gemm)))
        });
    }

    let s = SHAPES.attention;
    let mut attention = AttentionBench::new(&eng, s).unwrap();
    let name = format!(
        "attention_forward T8 {}x{}({})x{}x{}",
        s.batch, s.heads, s.kv_heads, s.seq, s.head_dim
    );
    c.bench_function(&name, |bench| {
        bench.iter_custom(|iters| time(iters, &mut || attention.forward(&eng)))
    });

    let r = SHAPES.rmsnorm;
    let mut rmsnorm = RmsnormBench::new(&eng, r).unwrap();
    c.bench_function(
        &format!("rmsnorm_forward {}x{}", r.rows, r.width),
        |bench| bench.iter_custom(|iters| time(iters, &mut || rmsnorm.forward(&eng))),
    );
}

criterion_group!(benches, kernels);
criterion_main!(benches);
