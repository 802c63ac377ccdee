//! The first CUDA kernel against its CPU oracle. Skips, saying why, where there is no GPU.

use half::bf16;
use prefer::ops::cpu;
use prefer::ops::cuda::{self, CudaEngine};

fn engine() -> Option<CudaEngine> {
    match CudaEngine::new() {
        Ok(e) => Some(e),
        Err(why) => {
            // Written to the process's stderr directly, past libtest's capture, so the skip and its
            // reason show in every run, not only in failing ones.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED gpu_rmsnorm: no usable GPU: {why:#}"
            );
            None
        }
    }
}

#[test]
fn rmsnorm_matches_the_cpu_oracle() {
    let Some(eng) = engine() else { return };
    // Odd sizes: a row not a multiple of the block, more rows than one wave.
    for (n, d) in [(1usize, 64usize), (37, 2048), (300, 770)] {
        let mut s = 1u32;
        let mut next = || {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 9) as f32 / (1 << 23) as f32 * 2.0 - 1.0
        };
        // Inputs rounded to bf16 first, so both sides see the same values.
        let round = |v: Vec<f32>| {
            v.into_iter()
                .map(|x| bf16::from_f32(x).to_f32())
                .collect::<Vec<_>>()
        };
        let x = round((0..n * d).map(|_| next() * 3.0).collect());
        let w = round((0..d).map(|_| 1.0 + next() * 0.5).collect());
        let dout = round((0..n * d).map(|_| next()).collect());
        let (mut y, mut rstd) = (vec![0.0; n * d], vec![0.0; n]);
        cpu::rmsnorm_forward(&mut y, &mut rstd, &x, &w, 1e-5);
        let (mut dx, mut dw) = (vec![0.0; n * d], vec![0.0; d]);
        cpu::rmsnorm_backward(&mut dx, &mut dw, &dout, &x, &w, &rstd);

        let to16 = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
        let (xg, wg, dog) = (
            eng.upload(&to16(&x)).unwrap(),
            eng.upload(&to16(&w)).unwrap(),
            eng.upload(&to16(&dout)).unwrap(),
        );
        let mut yg = eng.zeros::<bf16>(n * d).unwrap();
        let mut rg = eng.zeros::<f32>(n).unwrap();
        cuda::rmsnorm::rmsnorm_forward(&eng, &mut yg, &mut rg, &xg, &wg, n, d, 1e-5).unwrap();
        let (mut dxg, mut dwg, mut part) = (
            eng.zeros::<f32>(n * d).unwrap(),
            eng.zeros::<f32>(d).unwrap(),
            eng.zeros::<f32>(n * d).unwrap(),
        );
        cuda::rmsnorm::rmsnorm_backward(
            &eng, &mut dxg, &mut dwg, &mut part, &dog, &xg, &wg, &rg, n, d,
        )
        .unwrap();
        eng.synchronize("rmsnorm").unwrap();

        // bf16 output: 8 bits of mantissa, so a relative error of 2^-8 plus fp32 reduction-order noise.
        let y_gpu: Vec<f32> = eng
            .download(&yg)
            .unwrap()
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let max_err = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
                .fold(0.0f32, f32::max)
        };
        assert!(max_err(&y_gpu, &y) < 1.0 / 128.0, "forward N={n} D={d}");
        assert!(
            max_err(&eng.download(&rg).unwrap(), &rstd) < 1e-4,
            "rstd N={n} D={d}"
        );
        assert!(
            max_err(&eng.download(&dxg).unwrap(), &dx) < 1e-4,
            "dx N={n} D={d}"
        );
        assert!(
            max_err(&eng.download(&dwg).unwrap(), &dw) < 1e-3,
            "dw N={n} D={d}"
        );
        eprintln!("rmsnorm N={n} D={d}: matches the CPU oracle");
    }
}
