//! The harness every `prefer check` check is written with: the row it reports, the tolerances,
//! the deterministic inputs, the comparison and the timing, and the table printed at the end.
//! Inputs are rounded to bf16 first, so both sides see the same values; the CPU computes in f32.
//!
//! Error is measured relative to the reference tensor's scale, max|gpu − cpu| / max|cpu|, which
//! is what bf16 storage bounds: an output rounded to bf16 is off by at most 2⁻⁹ of its own size.

use crate::model::{Llama, LlamaConfig, ParamLayout};
use crate::ops::cuda::CudaEngine;
use anyhow::Result;
use cudarc::driver::CudaSlice;
use half::bf16;
use rayon::prelude::*;
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
pub const TOL_BF16: f32 = 1e-2;
/// Tolerance for f32 outputs of bf16 inputs: only the summation order differs.
pub const TOL_F32: f32 = 1e-4;

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

const LCG_MUL: u64 = 6364136223846793005;
const LCG_ADD: u64 = 1442695040888963407;
/// Values drawn per parallel chunk by `Lcg::bf16s`.
const DRAW_CHUNK: usize = 1 << 18;

impl Lcg {
    pub(super) fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(LCG_MUL).wrapping_add(LCG_ADD);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// The generator `steps` draws ahead, in O(log steps) multiplications: x ↦ a·x + c applied
    /// `steps` times is one affine map, built from the map's repeated squares.
    fn jumped(&self, steps: u64) -> Lcg {
        let (mut mul, mut add) = (1u64, 0u64); // the map so far
        let (mut sq_mul, mut sq_add) = (LCG_MUL, LCG_ADD); // x ↦ a·x + c applied 2^bit times
        let mut left = steps;
        while left > 0 {
            if left & 1 == 1 {
                mul = mul.wrapping_mul(sq_mul);
                add = add.wrapping_mul(sq_mul).wrapping_add(sq_add);
            }
            sq_add = sq_add.wrapping_mul(sq_mul).wrapping_add(sq_add);
            sq_mul = sq_mul.wrapping_mul(sq_mul);
            left >>= 1;
        }
        Lcg(self.0.wrapping_mul(mul).wrapping_add(add))
    }
    /// Values in [-scale, scale), rounded to bf16: the next `n` draws, in order, drawn in
    /// parallel chunks (each chunk's generator jumped ahead to its first draw), so the values are
    /// those of `n` calls to `uniform` and the generator ends where they would leave it.
    pub(super) fn bf16s(&mut self, n: usize, scale: f32) -> Vec<f32> {
        let mut out = vec![0.0f32; n];
        out.par_chunks_mut(DRAW_CHUNK)
            .enumerate()
            .for_each(|(chunk, dst)| {
                let mut g = self.jumped((chunk * DRAW_CHUNK) as u64);
                dst.iter_mut()
                    .for_each(|x| *x = bf16::from_f32(g.uniform() * scale).to_f32());
            });
        *self = self.jumped(n as u64);
        out
    }
}

pub(super) fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.par_iter().map(|&x| bf16::from_f32(x)).collect()
}

pub(super) fn down_bf16(eng: &CudaEngine, d: &CudaSlice<bf16>) -> Result<Vec<f32>> {
    Ok(eng.download(d)?.par_iter().map(|x| x.to_f32()).collect())
}

pub(super) fn compare(
    op: &str,
    shape: &str,
    gpu: &[f32],
    cpu: &[f32],
    tol: f32,
    gpu_ms: f64,
) -> CheckRow {
    // Maxima in parallel: the same values in any order (f32::max passes over NaN either way).
    let scale = cpu
        .par_iter()
        .map(|x| x.abs())
        .reduce(|| 0.0f32, f32::max)
        .max(1e-30);
    let max_abs = gpu
        .par_iter()
        .zip(cpu)
        .map(|(a, b)| (a - b).abs())
        .reduce(|| 0.0f32, f32::max);
    let finite = gpu.par_iter().all(|x| x.is_finite()) && gpu.len() == cpu.len();
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

/// A scalar against its reference, as a row (absolute, and relative to max(1, |reference|)).
pub(super) fn scalar(op: &str, shape: &str, gpu: f32, cpu: f32, tol: f32, ms: f64) -> CheckRow {
    let err = (gpu - cpu).abs() / cpu.abs().max(1.0);
    CheckRow {
        op: op.into(),
        shape: shape.into(),
        max_abs: (gpu - cpu).abs(),
        max_rel: err,
        tol,
        pass: err <= tol && gpu.is_finite(),
        gpu_ms: ms,
    }
}

/// A count of mismatches (0 passes) as a row: steps off the argmax, bits that differ.
pub(super) fn count_row(op: &str, shape: String, count: usize, gpu_ms: f64) -> CheckRow {
    CheckRow {
        op: op.into(),
        shape,
        max_abs: count as f32,
        max_rel: count as f32,
        tol: 0.0,
        pass: count == 0,
        gpu_ms,
    }
}

/// The CPU model of `cfg` with random weights rounded to bf16, so the CPU oracle and the CUDA
/// backend (which stores bf16) hold the same weights; norm gains are 1, as at initialisation.
///
/// The weights have the initialiser's spread (σ = `initializer_range`) but are uniform on ±σ√3,
/// drawn by `Lcg` in parallel chunks: a kernel check needs the scale, not the normal shape, and
/// `init_params`'s sequential normal draws took 7 of the llama-1b model check's 40 seconds.
pub(super) fn bf16_model(cfg: &LlamaConfig, seed: u64) -> Llama {
    const CHUNK: usize = 1 << 20;
    let layout = ParamLayout::new(cfg);
    let half_width = cfg.initializer_range * 3f32.sqrt();
    let mut params = vec![0.0f32; layout.len];
    params
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, dst)| {
            let mut g = Lcg(seed ^ (chunk as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            dst.iter_mut()
                .for_each(|x| *x = bf16::from_f32(g.uniform() * half_width).to_f32());
        });
    for slot in layout.slots.iter().filter(|s| ParamLayout::is_norm(s)) {
        params[slot.range.clone()].fill(1.0);
    }
    Llama::new(cfg.clone(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_draws_are_the_sequential_draws_and_leave_the_generator_where_they_would() {
        let n = 3 * DRAW_CHUNK + 17;
        let (mut parallel, mut sequential) = (Lcg(12345), Lcg(12345));
        let drawn = parallel.bf16s(n, 0.5);
        let expected: Vec<f32> = (0..n)
            .map(|_| bf16::from_f32(sequential.uniform() * 0.5).to_f32())
            .collect();
        assert_eq!(drawn, expected);
        assert_eq!(parallel.0, sequential.0);
        assert_eq!(parallel.uniform(), sequential.uniform());
        assert_eq!(Lcg(7).jumped(0).0, 7);
    }
}
