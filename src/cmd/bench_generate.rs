//! `prefer bench generate`: rollout throughput on the engine `prefer generate` and PPO use
//! (T4: llama-1b, 64 prompts of 128 tokens, 256 new tokens each; T5: the same at batch 1).
//! Reports generated tokens/s (no padding counted; prefill included, as bench_torch.py counts HF
//! generate) and, on a GPU, the memory bandwidth the decode steps achieve as a fraction of the
//! card's. Sampling at temperature 0.7, as the PyTorch side samples. On the CPU it also times recomputing the whole
//! forward for every new token, the speed-up the KV cache buys.

use super::Device;
use crate::generate::{Engine, EngineOptions};
use crate::generate::{KvRequest, BLOCK_SIZE};
use crate::model::init::init_params;
use crate::model::{Batch, Llama, LlamaConfig, ParamLayout};
use crate::ops::cpu::SamplingParams;
use crate::ops::cuda::probe_gpu;
use crate::ops::Backend;
use anyhow::Result;
use std::time::Instant;

const SAMPLING: SamplingParams = SamplingParams {
    temperature: 0.7,
    top_k: 0,
    top_p: 1.0,
};

pub struct GenerateBenchArgs {
    pub preset: String,
    pub batch: usize,
    pub prompt_len: usize,
    pub new_tokens: usize,
    pub device: Device,
}

/// HBM bandwidth of the cards the project targets, bytes/s.
fn peak_bandwidth(gpu: &str) -> Option<f64> {
    if gpu.contains("H200") {
        Some(4.8e12)
    } else if gpu.contains("H100") {
        Some(3.35e12)
    } else {
        None
    }
}

pub fn bench_generate(a: &GenerateBenchArgs) -> Result<serde_json::Value> {
    let cfg = LlamaConfig::preset(&a.preset)?;
    let layout = ParamLayout::new(&cfg);
    let cpu = Llama::new(cfg.clone(), init_params(&cfg, &layout, 0));
    let prompts: Vec<Vec<u32>> = (0..a.batch)
        .map(|b| {
            (0..a.prompt_len)
                .map(|t| ((b * 7919 + t * 104_729) % cfg.vocab_size) as u32)
                .collect()
        })
        .collect();
    if let Some(cuda) = a.device.engine()? {
        let gpu = cpu.upload(cuda)?;
        let name = if crate::emu::is_active() {
            "the software GPU".to_string()
        } else {
            probe_gpu()?.name
        };
        let r = time_engine(&gpu, &prompts, a)?;
        // Per decode step: every weight once, and each sequence's K and V so far (bf16).
        let weights = 2.0 * layout.len as f64;
        let kv_per_token = 2.0 * 2.0 * (cfg.num_hidden_layers * cfg.kv_dim()) as f64;
        let steps = a.new_tokens.saturating_sub(1) as f64;
        let avg_ctx = a.prompt_len as f64 + a.new_tokens as f64 / 2.0;
        let bytes = steps * (weights + a.batch as f64 * avg_ctx * kv_per_token);
        let bw = bytes / r.seconds;
        let frac = peak_bandwidth(&name).map(|p| bw / p);
        println!(
            "prefer bench generate on {name}: {} ({:.1}M parameters), {} prompts x {} tokens, {} new each",
            a.preset,
            layout.len as f64 / 1e6,
            a.batch,
            a.prompt_len,
            a.new_tokens
        );
        println!(
            "{:.0} generated tokens/s ({} tokens in {:.2} s; {} of {} decode steps replayed from CUDA graphs); decode reads {:.0} GB/s{}",
            r.tokens_per_s,
            r.tokens,
            r.seconds,
            r.stats.graph_steps,
            r.stats.decode_steps,
            bw / 1e9,
            frac.map(|f| format!(", {:.0}% of the card's bandwidth", f * 100.0))
                .unwrap_or_default()
        );
        return Ok(serde_json::json!({
            "device": name, "preset": a.preset, "batch": a.batch, "prompt_len": a.prompt_len,
            "new_tokens": a.new_tokens, "tokens_per_s": r.tokens_per_s, "seconds": r.seconds,
            "graph_steps": r.stats.graph_steps, "decode_steps": r.stats.decode_steps,
            "bandwidth_gb_s": bw / 1e9, "bandwidth_fraction": frac,
        }));
    }
    let r = time_engine(&cpu, &prompts, a)?;
    let recompute = time_recompute(&cpu, &prompts, a)?;
    let speedup = r.tokens_per_s / recompute;
    println!(
        "prefer bench generate on the CPU: {} ({:.1}M parameters), {} prompts x {} tokens, {} new each",
        a.preset,
        layout.len as f64 / 1e6,
        a.batch,
        a.prompt_len,
        a.new_tokens
    );
    println!(
        "KV cache: {:.0} generated tokens/s ({} tokens in {:.2} s); full recompute per token: {:.0} tokens/s; speed-up {:.1}x",
        r.tokens_per_s, r.tokens, r.seconds, recompute, speedup
    );
    Ok(serde_json::json!({
        "device": "cpu", "preset": a.preset, "batch": a.batch, "prompt_len": a.prompt_len,
        "new_tokens": a.new_tokens, "tokens_per_s": r.tokens_per_s, "seconds": r.seconds,
        "recompute_tokens_per_s": recompute, "speedup": speedup,
    }))
}

struct EngineTiming {
    stats: crate::generate::EngineStats,
    tokens: usize,
    seconds: f64,
    tokens_per_s: f64,
}

/// The engine on `prompts` (no EOS, so every rollout makes `new_tokens`), after one warm-up run.
fn time_engine<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    a: &GenerateBenchArgs,
) -> Result<EngineTiming> {
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    // Every prompt's rollout fits at once: no memory limit, the batch is --batch.
    let kv = KvRequest {
        prompt_lens: &lens,
        n: 1,
        max_new_tokens: a.new_tokens,
        context: model.cfg.max_position_embeddings,
        sequences: prompts.len(),
        max_batch: Some(a.batch),
        kv_memory: None,
    }
    .size(1, None)?; // with no memory to fit in, a block's bytes are not read
    let opts = EngineOptions {
        n: 1,
        sampling: SAMPLING,
        max_new_tokens: a.new_tokens,
        seed: 0,
        first_prompt: 0,
        max_batch: kv.max_batch,
        block_size: BLOCK_SIZE,
        kv_blocks: kv.kv_blocks,
        eos: vec![],
        prefill_tokens: usize::MAX,
        graphs: true,
    };
    let mut engine = Engine::new(model, opts)?;
    let mut count = 0;
    engine.run(&prompts[..1], &mut |_| false, &mut |_| Ok(()))?; // warm-up: plans, scratch
    engine.stats = Default::default();
    let t0 = Instant::now();
    engine.run(prompts, &mut |_| false, &mut |r| {
        count += r.completion_ids.len();
        Ok(())
    })?;
    let seconds = t0.elapsed().as_secs_f64();
    Ok(EngineTiming {
        stats: engine.stats.clone(),
        tokens: count,
        seconds,
        tokens_per_s: count as f64 / seconds,
    })
}

/// Tokens/s without a cache: the whole forward over every sequence for every new token.
fn time_recompute(model: &Llama, prompts: &[Vec<u32>], a: &GenerateBenchArgs) -> Result<f64> {
    let v = model.cfg.vocab_size;
    let mut seqs = prompts.to_vec();
    let t0 = Instant::now();
    for step in 0..a.new_tokens {
        let batch = Batch::right_padded(&seqs, 0);
        let logits = model.full_logits(&batch)?;
        for (b, s) in seqs.iter_mut().enumerate() {
            let row = &logits[(b * batch.seq + s.len() - 1) * v..][..v];
            let u = crate::generate::philox::draw_uniform(0, b as u64, 0, step as u32);
            s.push(crate::ops::cpu::sample::sample_row(row, u, SAMPLING).0);
        }
    }
    Ok((prompts.len() * a.new_tokens) as f64 / t0.elapsed().as_secs_f64())
}
