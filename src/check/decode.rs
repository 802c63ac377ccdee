//! `prefer check` for generation: the decode ops against their CPU oracles (copy_rows,
//! decode_attention, sample), and the rollout engine on the CUDA backend against the training
//! forward on the same device (greedy tokens, and the sampled tokens' log-probs).

use super::harness::{
    bf16_model, compare, count_row, down_bf16, timed, to_bf16, CheckRow, Lcg, TOL_BF16,
};
use crate::generate::philox::draw_uniform;
use crate::generate::{Engine, EngineOptions, Rollout};
use crate::model::{Batch, Heads, LlamaConfig};
use crate::ops::cpu::{self, DecodeShape, SamplingParams};
use crate::ops::cuda::{self, CudaEngine};
use crate::ops::Backend;
use anyhow::Result;
use half::bf16;
use std::time::Instant;

pub(super) fn copy_rows(eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    Ok(vec![check_copy_rows(eng)?])
}

/// (heads, kv_heads, head_dim, context lengths): GQA 1, 4 and 8, head dims 16 to 128; contexts
/// from one token to past two 256-token slices.
pub(super) fn decode_attention(eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    for (h, kvh, hd, lens) in [
        (4, 2, 16, vec![1, 5, 16, 17]),
        (8, 2, 64, vec![3, 300, 40]),
        (8, 1, 128, vec![600, 2]),
        (4, 4, 64, vec![33]),
    ] {
        rows.push(check_decode_attention(eng, h, kvh, hd, &lens)?);
    }
    Ok(rows)
}

/// Vocabularies: tiny's, and an odd one past a block of 4096.
pub(super) fn sample(eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    for v in [259usize, 4099] {
        rows.extend(check_sample(eng, v)?);
    }
    Ok(rows)
}

/// The engine makes its own CUDA backend, as `prefer generate` does.
pub(super) fn generate(_eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    check_generate()
}

fn check_copy_rows(eng: &CudaEngine) -> Result<CheckRow> {
    let (rows, width) = (9, 48);
    let mut g = Lcg(3);
    let src = g.bf16s(rows * width, 1.0);
    let init = g.bf16s(20 * width, 1.0);
    // Row 4 goes to three places (a prompt's partial block, once per rollout).
    let pairs: Vec<u32> = vec![0, 19, 4, 2, 4, 7, 4, 11, 8, 0];
    let mut dst = init.clone();
    cpu::copy_rows(&mut dst, &src, &pairs, width);
    let (src_d, pairs_d) = (eng.upload(&to_bf16(&src))?, eng.upload(&pairs)?);
    let mut dst_d = eng.upload(&to_bf16(&init))?;
    let ms = timed(eng, "copy_rows", || {
        cuda::copy_rows::copy_rows(eng, &mut dst_d, &src_d, &pairs_d, pairs.len() / 2, width)
    })?;
    Ok(compare(
        "copy_rows",
        &format!("M={} width={width}", pairs.len() / 2),
        &down_bf16(eng, &dst_d)?,
        &dst,
        0.0,
        ms,
    ))
}

fn check_decode_attention(
    eng: &CudaEngine,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    lens: &[usize],
) -> Result<CheckRow> {
    let bs = 16;
    let b = lens.len();
    let max_blocks = lens.iter().map(|l| l.div_ceil(bs)).max().unwrap_or(1);
    let blocks = b * max_blocks + 3;
    let kvd = kv_heads * hd;
    let mut g = Lcg(17 + hd as u64 + lens.len() as u64);
    let (k, v) = (
        g.bf16s(blocks * bs * kvd, 1.5),
        g.bf16s(blocks * bs * kvd, 1.0),
    );
    let q = g.bf16s(b * heads * hd, 1.5);
    // Blocks handed out in a scrambled order; sequence 1 shares sequence 0's first block.
    let mut next = (0..blocks as u32).rev().collect::<Vec<_>>();
    let mut table = vec![0u32; b * max_blocks];
    for (i, &len) in lens.iter().enumerate() {
        for j in 0..len.div_ceil(bs) {
            table[i * max_blocks + j] = if i == 1 && j == 0 {
                table[0]
            } else {
                next.pop().expect("enough blocks") * 7 % blocks as u32
            };
        }
    }
    let ctx: Vec<u32> = lens.iter().map(|&l| l as u32).collect();
    let s = DecodeShape {
        batch: b,
        heads,
        kv_heads,
        head_dim: hd,
        block_size: bs,
        max_blocks,
    };
    let mut out = vec![0.0; b * heads * hd];
    cpu::decode_attention(&mut out, &q, &k, &v, &table, &ctx, s);

    let up = |x: &[f32]| eng.upload(&to_bf16(x));
    let (q_d, k_d, v_d) = (up(&q)?, up(&k)?, up(&v)?);
    let (table_d, ctx_d) = (eng.upload(&table)?, eng.upload(&ctx)?);
    let mut out_d = eng.zeros::<bf16>(out.len())?;
    let mut partial = eng.zeros::<f32>(cuda::decode_attention::partial_len(&s))?;
    let ms = timed(eng, "decode_attention", || {
        cuda::decode_attention::decode_attention(
            eng,
            &mut out_d,
            &mut partial,
            &q_d,
            &k_d,
            &v_d,
            &table_d,
            &ctx_d,
            s,
        )
    })?;
    Ok(compare(
        "decode_attention",
        &format!("H={heads} Hkv={kv_heads} hd={hd} ctx={lens:?}"),
        &down_bf16(eng, &out_d)?,
        &out,
        TOL_BF16,
        ms,
    ))
}

fn check_sample(eng: &CudaEngine, vocab: usize) -> Result<Vec<CheckRow>> {
    let n = 6;
    let mut g = Lcg(23 + vocab as u64);
    let logits: Vec<f32> = (0..n * vocab).map(|_| 4.0 * g.uniform()).collect();
    let uniforms: Vec<f32> = (0..n as u64).map(|i| draw_uniform(9, i, 0, 0)).collect();
    let logits_d = eng.upload(&logits)?;
    let u_d = eng.upload(&uniforms)?;
    let mut rows = Vec::new();
    for p in [
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
        },
        SamplingParams::default(),
        SamplingParams {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.9,
        },
    ] {
        let (mut ids, mut lps) = (vec![0u32; n], vec![0.0f32; n]);
        cpu::sample(&mut ids, &mut lps, &logits, &uniforms, p);
        let (mut ids_d, mut lps_d) = (eng.zeros::<u32>(n)?, eng.zeros::<f32>(n)?);
        let ms = timed(eng, "sample_tokens", || {
            cuda::sample::sample_tokens(eng, &mut ids_d, &mut lps_d, &logits_d, &u_d, n, vocab, p)
        })?;
        let gpu_ids = eng.download(&ids_d)?;
        let shape = format!(
            "N={n} V={vocab} T={} k={} p={}",
            p.temperature, p.top_k, p.top_p
        );
        // The same f32 logits and uniforms on both sides: the same tokens.
        let mismatched = ids.iter().zip(&gpu_ids).filter(|(a, b)| a != b).count();
        rows.push(CheckRow {
            op: "sample ids".into(),
            shape: shape.clone(),
            max_abs: mismatched as f32,
            max_rel: mismatched as f32,
            tol: 0.0,
            pass: mismatched == 0,
            gpu_ms: ms,
        });
        let gpu_lps = eng.download(&lps_d)?;
        let mut lp = compare("sample logprobs", &shape, &gpu_lps, &lps, 1e-4, ms);
        // Log-probs in nats, absolute.
        lp.max_rel = lp.max_abs;
        lp.pass = lp.max_abs <= 1e-4 && gpu_lps.iter().all(|x| x.is_finite());
        rows.push(lp);
    }
    Ok(rows)
}

/// The engine on the CUDA backend: greedy tokens against the argmax of the training forward on
/// the same device, and sampled tokens' log-probs against the trainer's log-prob kernels on the
/// same sequences (the distance `prefer check` reports for rollouts).
fn check_generate() -> Result<Vec<CheckRow>> {
    let mut cfg = LlamaConfig::preset("tiny")?;
    cfg.initializer_range = 0.2;
    let cpu_model = bf16_model(&cfg, 7);
    let gpu = cpu_model.upload(cuda::backend::Cuda::new()?)?;
    let prompts: Vec<Vec<u32>> = [5usize, 16, 23]
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|t| ((t * 11 + i * 37) % 250) as u32).collect())
        .collect();
    let run = |sampling: SamplingParams| -> Result<(Vec<Rollout>, f64)> {
        let o = EngineOptions {
            n: 2,
            sampling,
            max_new_tokens: 20,
            seed: 3,
            first_prompt: 0,
            max_batch: 4,
            block_size: 16,
            kv_blocks: 64,
            eos: vec![],
            prefill_tokens: 8192,
            graphs: true,
        };
        let mut engine = Engine::new(&gpu, o)?;
        let mut out = Vec::new();
        let t0 = Instant::now();
        engine.run(&prompts, &mut |_| false, &mut |r| {
            out.push(r);
            Ok(())
        })?;
        Ok((out, t0.elapsed().as_secs_f64() * 1e3))
    };
    let shape = "tiny 3 prompts x2, 20 new, 16-token blocks".to_string();
    let v = cfg.vocab_size;

    // Greedy: every token the argmax of the training forward's logits (at a clear margin).
    let (greedy, ms_g) = run(SamplingParams {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
    })?;
    let mut wrong = 0;
    for r in &greedy {
        let p = &prompts[r.prompt_index];
        let seq = [p.as_slice(), &r.completion_ids].concat();
        let batch = Batch::right_padded(&[seq], 0);
        let logits = gpu.backend.to_host(&gpu.full_logits(&batch)?)?;
        for (i, &tok) in r.completion_ids.iter().enumerate() {
            let row = &logits[(p.len() + i - 1) * v..(p.len() + i) * v];
            let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            // A token within bf16 rounding of the best is a tie, not an error.
            if row[tok as usize] < best - 0.02 * best.abs().max(1.0) {
                wrong += 1;
            }
        }
    }
    let greedy_row = count_row(
        "generate greedy",
        format!("{shape}; steps not the forward's argmax"),
        wrong,
        ms_g,
    );

    // Sampled (T = 1, untruncated): the log-probs the engine reports vs the trainer's kernels.
    let (sampled, ms_s) = run(SamplingParams::default())?;
    let seqs: Vec<Vec<u32>> = sampled
        .iter()
        .map(|r| [prompts[r.prompt_index].as_slice(), &r.completion_ids].concat())
        .collect();
    let batch = Batch::right_padded(&seqs, 0);
    let fwd = gpu.forward_heads(&batch, Heads::LOGP)?;
    let logp = gpu.backend.to_host(&fwd.logp)?;
    let (mut engine_lp, mut forward_lp) = (Vec::new(), Vec::new());
    for (b, r) in sampled.iter().enumerate() {
        let p = prompts[r.prompt_index].len();
        for (i, &lp) in r.logprobs.iter().enumerate() {
            engine_lp.push(lp);
            forward_lp.push(logp[b * batch.seq + p + i - 1]);
        }
    }
    // The training forward's attention rounds its probabilities to bf16 before P·V (as
    // FlashAttention does); decode attention keeps them in f32. On this deliberately sharp
    // model (initializer range 0.2) that alone moves log-probs by up to ~0.05 nats; a wrong
    // position or cache row moves them by whole nats.
    const TOL_NATS: f32 = 0.1;
    let mut lp_row = compare(
        "generate logprobs",
        &format!("{shape}; vs forward recompute (nats)"),
        &engine_lp,
        &forward_lp,
        TOL_NATS,
        ms_s,
    );
    lp_row.max_rel = lp_row.max_abs;
    lp_row.pass = lp_row.max_abs <= TOL_NATS && engine_lp.iter().all(|x| x.is_finite());
    Ok(vec![greedy_row, lp_row])
}
