//! Step 1 of an iteration: the rollouts, sampled from the policy's own weights on the rollout
//! engine (src/generate/), or replayed from another run's rollouts.jsonl.

use super::setup::{kv_request, Setup};
use crate::dist::group::Group;
use crate::generate::kv_budget::block_bytes;
use crate::generate::philox::philox4x32;
use crate::generate::{Engine, EngineOptions, FinishReason, Rollout};
use crate::model::Llama;
use crate::ops::cpu::SamplingParams;
use crate::ops::Backend;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// The sampling seed of iteration `it`: a pure function of (run seed, iteration), so a resumed run
/// samples what the uninterrupted one would have.
pub fn iteration_seed(seed: u64, it: usize) -> u64 {
    let r = philox4x32(
        [it as u32, (it >> 32) as u32, 0x5050_4f00, 0],
        [seed as u32, (seed >> 32) as u32],
    );
    (r[0] as u64) << 32 | r[1] as u64
}

/// `k` completions of each prompt, in (prompt, rollout) order. `prompts[0]` is the iteration's
/// prompt `first_prompt` (a rank samples its share of them as one process would).
pub fn generate<B: Backend>(
    policy: &Llama<B>,
    prompts: &[Vec<u32>],
    s: &Setup,
    seed: u64,
    first_prompt: usize,
) -> Result<Vec<Rollout>> {
    let o = &s.opts;
    let k = o.rollouts_per_prompt;
    let bs = crate::generate::BLOCK_SIZE;
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let max_pos = policy.cfg.max_position_embeddings;
    // The cache holds f32 on the CPU oracle, bf16 on the CUDA engine (--device auto is counted
    // as the CUDA engine: --kv-memory then caps an f32 cache at twice its bytes).
    let value_bytes = if o.run.device == crate::ops::Device::Cpu {
        4
    } else {
        2
    };
    let kv = kv_request(o, &lens, prompts.len() * k, max_pos)
        .size(block_bytes(&policy.cfg, value_bytes), None)?;
    let opts = EngineOptions {
        n: k,
        sampling: SamplingParams {
            temperature: o.temperature,
            top_k: 0,
            top_p: 1.0,
        },
        max_new_tokens: o.max_new_tokens,
        seed,
        first_prompt: first_prompt as u64,
        max_batch: kv.max_batch,
        block_size: bs,
        kv_blocks: kv.kv_blocks,
        eos: s.eos.clone(),
        prefill_tokens: 8192,
        graphs: true,
    };
    let mut engine = Engine::new(policy, opts)?;
    let mut rollouts = engine.run_in_order(prompts, &mut |_| false, &mut |_| {})?;
    for r in &mut rollouts {
        r.prompt_index += first_prompt;
    }
    Ok(rollouts)
}

/// Every rank's rollouts, in (prompt, rollout) order, on every rank. Each rollout travels as
/// numbers: prompt, rollout, finish reason, length, then its ids and log-probs (exact in f64).
pub fn all_gather_rollouts(group: &Group, mine: Vec<Rollout>) -> Result<Vec<Rollout>> {
    if group.size() == 1 {
        return Ok(mine);
    }
    let mut flat = Vec::new();
    for r in &mine {
        let reason = match r.finish_reason {
            FinishReason::Eos => 0.0,
            FinishReason::Stop => 1.0,
            FinishReason::Length => 2.0,
        };
        flat.extend([
            r.prompt_index as f64,
            r.rollout_index as f64,
            reason,
            r.completion_ids.len() as f64,
        ]);
        flat.extend(r.completion_ids.iter().map(|&t| t as f64));
        flat.extend(r.logprobs.iter().map(|&l| l as f64));
    }
    let mut all = Vec::new();
    for part in group.all_gather_f64("rollouts", &flat)? {
        let mut at = 0;
        while at < part.len() {
            let n = part[at + 3] as usize;
            let ids = &part[at + 4..at + 4 + n];
            let lps = &part[at + 4 + n..at + 4 + 2 * n];
            all.push(Rollout {
                prompt_index: part[at] as usize,
                rollout_index: part[at + 1] as usize,
                finish_reason: match part[at + 2] as u8 {
                    0 => FinishReason::Eos,
                    1 => FinishReason::Stop,
                    _ => FinishReason::Length,
                },
                completion_ids: ids.iter().map(|&t| t as u32).collect(),
                logprobs: lps.iter().map(|&l| l as f32).collect(),
            });
            at += 4 + 2 * n;
        }
    }
    Ok(all)
}

/// Iteration `it`'s completions from another run's rollouts.jsonl, in (prompt, rollout) order.
pub fn replayed_rollouts(file: &Path, it: usize, prompts: usize, k: usize) -> Result<Vec<Rollout>> {
    let n = prompts * k;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut out = Vec::with_capacity(n);
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not valid JSON", file.display(), i + 1))?;
        if v["step"].as_u64() != Some(it as u64 + 1) {
            continue;
        }
        let ids = serde_json::from_value(v["completion_ids"].clone())?;
        let logprobs = serde_json::from_value(v["logprobs"].clone())?;
        let finish = serde_json::from_value(v["finish_reason"].clone())?;
        out.push(Rollout {
            prompt_index: out.len() / k,
            rollout_index: out.len() % k,
            completion_ids: ids,
            logprobs,
            finish_reason: finish,
        });
    }
    if out.len() != n {
        bail!(
            "{}: iteration {} has {} completions, this run needs {n}",
            file.display(),
            it + 1,
            out.len()
        );
    }
    Ok(out)
}
