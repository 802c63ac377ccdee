//! `prefer check` for the optimiser: the global gradient norm and two fused AdamW steps (clip,
//! moments, decoupled weight decay with no-decay ranges, bf16 copy) against the CPU AdamW.

use super::harness::{compare, CheckRow, Lcg, TOL_F32};
use crate::ops::cuda::{self, CudaEngine};
use anyhow::Result;
use half::bf16;
use std::time::Instant;

/// Weight decay skips the ranges (norm gains in a model): none, the only element, and ranges at
/// the buffer's start and end and across the grid-stride boundaries.
pub(super) fn adamw(eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    let ranges = vec![0..5, 64..320, 50_000..50_257, 99_990..100_003];
    let whole = std::iter::once(0..1).collect();
    let mut rows = Vec::new();
    for (n, no_decay) in [(1usize, Vec::new()), (1, whole), (100_003, ranges)] {
        rows.extend(check_adamw(eng, n, no_decay)?);
    }
    Ok(rows)
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
            &mut p16_d.slice_mut(..),
            &grads_d.slice(..),
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

/// The gradient shard's accumulation (`--shard full`): a piece added into a shard at an offset,
/// the values around it untouched. (elements of the shard, the piece's offset and length)
pub(super) fn accumulate(eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    for (n, at, len) in [(1usize, 0usize, 1usize), (100_003, 7, 65_537)] {
        let mut g = Lcg(31 + n as u64);
        let shard: Vec<f32> = (0..n).map(|_| g.uniform()).collect();
        let piece: Vec<f32> = (0..len).map(|_| g.uniform() * 0.01).collect();
        let mut want = shard.clone();
        crate::ops::cpu::accumulate_f32(&mut want[at..at + len], &piece);
        let mut shard_d = eng.upload(&shard)?;
        let piece_d = eng.upload(&piece)?;
        // Once (timed's two launches would add the piece twice).
        let t0 = std::time::Instant::now();
        crate::ops::cuda::accumulate::accumulate_f32(
            eng,
            &mut shard_d.slice_mut(at..at + len),
            &piece_d.slice(0..len),
        )?;
        eng.synchronize("accumulate_f32")?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let got = eng.download(&shard_d)?;
        rows.push(super::harness::compare(
            "accumulate_f32",
            &format!("n={n} at {at}+{len}"),
            &got,
            &want,
            super::harness::TOL_F32,
            ms,
        ));
    }
    Ok(rows)
}
