//! `prefer check` for the whole model: forward log-probs and values, and every parameter
//! gradient, of the model on the CUDA backend against the CPU oracle with the same (bf16-rounded)
//! weights and inputs; and `--recompute`'s gradients against the stored forward's, bit for bit.

use super::harness::{bf16_model, compare, count_row, CheckRow, Lcg};
use crate::model::{Batch, Forward, HeadGrads, Llama, LlamaConfig, ParamLayout};
use crate::ops::cuda::backend::Cuda;
use crate::ops::cuda::CudaEngine;
use anyhow::Result;
use cudarc::driver::CudaSlice;
use rayon::prelude::*;
use std::time::Instant;

/// Tiny, and two layers at llama-1b widths and vocabulary (GQA 4, head dim 64, llama3 rope, tied
/// head), each with a scalar head so both heads run.
pub(super) fn model(_eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    for (preset, layers) in [("tiny", None), ("llama-1b", Some(2))] {
        rows.extend(check_model(preset, layers)?);
    }
    Ok(rows)
}

/// One model check's inputs.
struct ModelCase {
    /// The CPU oracle, its weights rounded to bf16.
    model: Llama,
    /// Two left-padded sequences of 61 and 40 tokens.
    batch: Batch,
    /// Where a next token exists [N].
    next: Vec<bool>,
    /// Upstream gradient of the log-probs [N], zero where no next token exists.
    r_logp: Vec<f32>,
    /// Upstream gradient of the values [N], zero on padding.
    r_value: Vec<f32>,
}

fn model_case(preset: &str, layers: Option<usize>) -> Result<ModelCase> {
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
    let model = bf16_model(&cfg, 5);
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
    Ok(ModelCase {
        model,
        batch,
        next,
        r_logp,
        r_value,
    })
}

/// The forward and backward of `model` on the GPU into fresh gradients; milliseconds to the end
/// of the work.
fn gpu_forward_backward(
    model: &Llama<Cuda>,
    batch: &Batch,
    heads: &HeadGrads<Cuda>,
    what: &str,
) -> Result<(Forward<Cuda>, CudaSlice<f32>, f64)> {
    let eng = &model.backend.eng;
    let mut grads = eng.zeros::<f32>(model.layout.len)?;
    let t0 = Instant::now();
    let fwd = model.forward(batch)?;
    model.backward(&fwd, heads, &mut grads)?;
    eng.synchronize(what)?;
    Ok((fwd, grads, t0.elapsed().as_secs_f64() * 1e3))
}

/// Gradients are compared by cosine similarity per parameter tensor (the acceptance bar is
/// 0.999), which bf16 activations leave intact while any wrong index or missing term destroys.
fn gradient_row(
    layout: &ParamLayout,
    gpu: &[f32],
    cpu: &[f32],
    shape: &str,
    gpu_ms: f64,
) -> CheckRow {
    // 1 − cos per tensor, in parallel (llama-1b's tied embedding alone is 262M values).
    let misses: Vec<f64> = layout
        .slots
        .par_iter()
        .map(|slot| {
            let (a, c) = (&gpu[slot.range.clone()], &cpu[slot.range.clone()]);
            let (dot, na, nc) = a
                .par_chunks(1 << 16)
                .zip(c.par_chunks(1 << 16))
                .map(|(a, c)| {
                    a.iter()
                        .zip(c)
                        .fold((0.0, 0.0, 0.0), |(d, x2, y2), (&x, &y)| {
                            let (x, y) = (x as f64, y as f64);
                            (d + x * y, x2 + x * x, y2 + y * y)
                        })
                })
                .reduce(|| (0.0, 0.0, 0.0), |p, q| (p.0 + q.0, p.1 + q.1, p.2 + q.2));
            1.0 - dot / (na.sqrt() * nc.sqrt()).max(1e-30)
        })
        .collect();
    let (mut worst, mut worst_name) = (0.0f64, String::from("-"));
    for (slot, &miss) in layout.slots.iter().zip(&misses) {
        // A NaN gradient counts as the worst miss.
        if miss.is_nan() || miss > worst {
            (worst, worst_name) = (miss, slot.name.clone());
        }
    }
    CheckRow {
        op: "model backward 1-cos".into(),
        shape: format!("{shape} worst {worst_name}"),
        max_abs: worst as f32,
        max_rel: worst as f32,
        tol: 1e-3,
        pass: worst <= 1e-3, // false for NaN
        gpu_ms,
    }
}

/// The model check of one preset: forward log-probs and values, the gradients, and (on tiny)
/// the gradients again with `--recompute`.
fn check_model(preset: &str, layers: Option<usize>) -> Result<Vec<CheckRow>> {
    let case = model_case(preset, layers)?;
    let (cpu_model, batch, next) = (&case.model, &case.batch, &case.next);
    // The CPU oracle's forward and backward on a thread of its own while the device side uploads
    // the model and runs: at llama-1b widths each takes seconds, and neither keeps both cores busy
    // alone (on the software GPU).
    let oracle = |case: &ModelCase| -> Result<(Forward, Vec<f32>)> {
        let fwd = case.model.forward(&case.batch)?;
        let mut grads = vec![0.0; case.model.layout.len];
        case.model.backward(
            &fwd,
            &HeadGrads {
                logp: Some(&case.r_logp),
                value: Some(&case.r_value),
                entropy: None,
            },
            &mut grads,
        )?;
        Ok((fwd, grads))
    };
    let device = |case: &ModelCase| -> Result<_> {
        let gpu_model = case.model.upload(Cuda::new()?)?;
        let b = &gpu_model.backend;
        let (r_logp_d, r_value_d) = (b.eng.upload(&case.r_logp)?, b.eng.upload(&case.r_value)?);
        let heads = HeadGrads {
            logp: Some(&r_logp_d),
            value: Some(&r_value_d),
            entropy: None,
        };
        let (gfwd, grads_d, gpu_ms) =
            gpu_forward_backward(&gpu_model, &case.batch, &heads, "model forward+backward")?;
        Ok((gpu_model, r_logp_d, r_value_d, gfwd, grads_d, gpu_ms))
    };
    // The oracle's thread builds its own copy of the case (the same bits: model_case is
    // deterministic), as a model is not shared between threads.
    let (oracle_out, device_out) = std::thread::scope(|s| {
        let cpu = s.spawn(|| oracle(&model_case(preset, layers)?));
        let gpu = device(&case);
        (cpu.join(), gpu)
    });
    let (fwd, grads) =
        oracle_out.map_err(|_| anyhow::anyhow!("the CPU oracle's model panicked"))??;
    let (mut gpu_model, r_logp_d, r_value_d, gfwd, grads_d, gpu_ms) = device_out?;
    let b = &gpu_model.backend;
    let heads = HeadGrads {
        logp: Some(&r_logp_d),
        value: Some(&r_value_d),
        entropy: None,
    };

    let shape = format!(
        "{preset} {}L B=2 T={}",
        cpu_model.cfg.num_hidden_layers, batch.seq
    );
    let pick = |v: &[f32], m: &[bool]| {
        v.iter()
            .zip(m)
            .filter(|(_, &k)| k)
            .map(|(x, _)| *x)
            .collect::<Vec<f32>>()
    };
    let (lp_gpu, lp_cpu) = (pick(&b.download(&gfwd.logp)?, next), pick(&fwd.logp, next));
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
    let grad_row = gradient_row(&cpu_model.layout, &grads_gpu, &grads, &shape, gpu_ms);

    // --recompute rebuilds each layer in the backward from its input with the same kernels in
    // the same order, so its gradients are the same bits; and it runs on recycled buffers.
    // (On tiny only: llama-1b's two layers take the software GPU another ten seconds.)
    if preset != "tiny" {
        return Ok(vec![lp_row, v_row, grad_row]);
    }
    gfwd.recycle(b);
    gpu_model.recompute = true;
    let (_, grads_r, r_ms) = gpu_forward_backward(
        &gpu_model,
        batch,
        &heads,
        "model forward+backward with recompute",
    )?;
    let grads_r = gpu_model.backend.download(&grads_r)?;
    let differ = grads_r
        .iter()
        .zip(&grads_gpu)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    let recompute_row = count_row(
        "model backward recompute",
        format!("{shape}; gradients not bitwise equal"),
        differ,
        r_ms,
    );
    Ok(vec![lp_row, v_row, grad_row, recompute_row])
}
