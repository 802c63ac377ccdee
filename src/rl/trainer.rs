//! `prefer ppo`: online RL on the rollout engine, written once over `TrainState` (the CPU oracle
//! and the CUDA engine run the same loop). One iteration:
//! 1. rollouts of the policy's own weights through the engine (src/generate/);
//! 2. one scoring pass per model: the policy's and the reference's log-probs (at the sampling
//!    temperature), the value model's estimates, the reward model's scores;
//! 3. advantages (src/rl/advantages.rs: GAE, or GRPO/RLOO group baselines);
//! 4. PPO epochs over shuffled minibatches: clipped policy loss, clipped value loss.
//!
//! The run folder holds run.toml, metrics.jsonl, checkpoint/ (policy and value with their AdamW
//! state, and rl_state.json: the iteration, the KL controller and the score statistics), and at
//! the end the policy at its root and the value model in value/.

use super::advantages::{advantages, Advantages, Algo, ScoredBatch};
use super::options::{PpoArgs, PpoOptions, RewardSource};
use super::reward_model::reward_model_scores;
use super::rewards::{answer_of, math_answer};
use crate::data::chat_template::ChatTemplate;
use crate::data::preference::Encoder;
use crate::data::prompts::{context_note, read_prompts, Prompt};
use crate::data::reward_input::RewardInput;
use crate::data::tokenizer::TextTokenizer;
use crate::generate::philox::philox4x32;
use crate::generate::stopping::eos_ids;
use crate::generate::{Engine, EngineOptions, Rollout};
use crate::loss::{
    aggregation_weights, mean_sequence_kl, per_token_kl, KlController, KlEstimator, KlPenalty,
    LossAggregation, PolicyLossConfig, RunningMoments, ValueLossConfig,
};
use crate::model::weights::{
    load_checkpoint, replace_dir, save_checkpoint, save_model_into, staging_dir, SaveDtype,
};
use crate::model::{Batch, HeadGrads, Heads, Llama, LlamaConfig};
use crate::ops::cpu::SamplingParams;
use crate::ops::Backend;
use crate::train::checkpoint::{load_training_checkpoint, save_training_checkpoint, TrainerState};
use crate::train::gpu_step::GpuTrainer;
use crate::train::metrics::MetricsLog;
use crate::train::run_folder::{refuse_changed_run_inputs, write_run_toml, OpenRun};
use crate::train::schedule::{Decay, Schedule};
use crate::train::state::{CpuState, TrainState};
use anyhow::{bail, Context, Result};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// What a run did, for the command line and the demo.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PpoSummary {
    pub iterations: usize,
    pub interrupted: bool,
    /// Mean raw score (reward model, or math-answer accuracy) of each iteration's rollouts.
    pub scores: Vec<f64>,
    /// Largest gap between a rollout's log-probs and the trainer's for the same tokens.
    pub max_logprob_gap: f64,
}

/// The run position that is not in the models: saved with every checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RlState {
    next_iteration: usize,
    total_iterations: usize,
    kl: KlController,
    moments: RunningMoments,
}

/// The two trained models and the two frozen ones, on one backend.
struct Models<'a, S: TrainState> {
    policy: &'a mut S,
    value: Option<&'a mut S>,
    /// None when β is 0 and fixed: the KL is not needed, so neither is the reference's forward
    /// (as TRL's GRPO skips its reference model at β = 0).
    reference: Option<&'a Llama<S::B>>,
    reward: Option<&'a Llama<S::B>>,
}

/// Everything an iteration reads that does not change.
struct Setup {
    opts: PpoOptions,
    prompts: Vec<Prompt>,
    tokenizer: TextTokenizer,
    eos: Vec<u32>,
    pad: u32,
    policy_cfg: LlamaConfig,
    value_cfg: Option<LlamaConfig>,
    /// How the reward model reads a rollout: the policy's ids, or the text re-tokenised.
    reward_input: Option<RewardInput>,
    extra_files: Vec<(&'static str, Vec<u8>)>,
}

pub fn run_ppo(args: PpoArgs) -> Result<PpoSummary> {
    let resume = args.resume.is_some();
    let overwrite = args.overwrite;
    let args = args.with_files()?;
    let opts = args.clone().resolve()?;
    let ckpt = opts.out.join("checkpoint");
    let inputs = [
        ("--policy", Some(opts.policy.as_path())),
        ("--reward-model", opts.reward_model.as_deref()),
        ("--value-model", opts.value_model.as_deref()),
        ("--prompts", Some(opts.prompts.as_path())),
    ];
    // Held until the run ends: a second run in the same folder fails at once.
    let _folder = OpenRun {
        out: &opts.out,
        resume,
        overwrite,
        inputs: &inputs,
        command: "prefer ppo",
    }
    .open()?;
    if resume {
        if !crate::model::weights::resolve_checkpoint_dir(&ckpt).exists() {
            bail!(
                "{} has run.toml but no checkpoint yet (it stopped before its first save); start it again with --overwrite",
                opts.out.display()
            );
        }
        refuse_changed_run_inputs(&opts.out, &inputs.map(|(_, p)| p))?;
    }
    crate::signals::install();

    let (policy_cfg, policy_params) = load_checkpoint(&opts.policy)?;
    if !policy_cfg.has_lm_head() || policy_cfg.scalar_head {
        bail!(
            "{} is not a causal LM (the policy needs an LM head and no scalar head)",
            opts.policy.display()
        );
    }
    let tokenizer = TextTokenizer::load(&opts.policy, &policy_cfg)?;
    let template = ChatTemplate::for_model(&opts.policy)?;
    let enc = Encoder {
        tokenizer: &tokenizer,
        template: &template,
        cfg: &policy_cfg,
    };
    let prompts = read_prompts(&opts.prompts, &enc)?;
    let context = policy_cfg.max_position_embeddings;
    if let Some(note) = context_note(&opts.prompts, &prompts, opts.max_new_tokens, context) {
        eprintln!("{note}");
    }
    if prompts.len() < opts.prompt_batch_size {
        bail!(
            "{} has {} prompts, fewer than --prompt-batch-size {}",
            opts.prompts.display(),
            prompts.len(),
            opts.prompt_batch_size
        );
    }
    if opts.reward != RewardSource::Rm {
        for (i, p) in prompts.iter().enumerate() {
            if p.fields.get("answer").and_then(answer_of).is_none() {
                bail!("{}: prompt {} has no numeric \"answer\" field, which --reward math-answer grades against", opts.prompts.display(), i + 1);
            }
        }
    }
    let mut eos = eos_ids(&opts.policy)?;
    if eos.is_empty() {
        eos.extend(policy_cfg.eos_token_id);
    }
    let load_scalar = |dir: &Path, what: &str| -> Result<(LlamaConfig, Vec<f32>, RewardInput)> {
        let (cfg, params) = load_checkpoint(dir)?;
        if !cfg.scalar_head {
            bail!(
                "{} has no scalar head (score.weight); it cannot be the {what}",
                dir.display()
            );
        }
        let input = RewardInput::for_models(&opts.policy, &policy_cfg, dir, &cfg, what)?;
        Ok((cfg, params, input))
    };
    let reward = match (&opts.reward_model, opts.reward) {
        (Some(dir), RewardSource::Rm | RewardSource::Both) => {
            let (cfg, params, input) = load_scalar(dir, "reward model")?;
            if input.is_text() {
                eprintln!(
                    "the reward model {} has another tokenizer or chat template than the policy: it scores each prompt and completion as text, tokenised its own way",
                    dir.display()
                );
            }
            Some((cfg, params, input))
        }
        _ => None,
    };
    let value = match (&opts.value_model, opts.algo) {
        (Some(dir), Algo::Ppo) => {
            let (cfg, params, input) = load_scalar(dir, "value model")?;
            if input.is_text() {
                bail!(
                    "the value model {} (by default the reward model) has another tokenizer or chat template than the policy, but a value model reads the policy's own tokens: give --value-model a scalar-head model with the policy's tokenizer, or use --algo grpo or rloo (no value model)",
                    dir.display()
                );
            }
            Some((cfg, params))
        }
        _ => None,
    };
    let (reward, reward_input) = match reward {
        Some((cfg, params, input)) => (Some((cfg, params)), Some(input)),
        None => (None, None),
    };
    let extra_files = crate::train::trainer::tokenizer_files(&opts.policy);
    // run.toml once the inputs have been read and found usable: a refused start leaves the
    // folder empty, free for the next try.
    if !resume {
        // Every value, defaults included, so a resume keeps them even if a default changes.
        write_run_toml(&opts.out, args.with_defaults()?, |a| {
            vec![
                &mut a.policy,
                &mut a.reward_model,
                &mut a.value_model,
                &mut a.prompts,
                &mut a.out,
            ]
        })?;
    }
    let setup = Setup {
        pad: policy_cfg.pad_token_id.unwrap_or(0),
        value_cfg: value.as_ref().map(|(c, _)| c.clone()),
        reward_input,
        policy_cfg: policy_cfg.clone(),
        opts,
        prompts,
        tokenizer,
        eos,
        extra_files,
    };
    print_memory_plan(&setup, reward.as_ref().map(|r| &r.0));

    let mut policy = Llama::new(policy_cfg, policy_params);
    // The frozen models only run forwards: with `recompute` a forward keeps no layer's tensors
    // (nothing is rebuilt, as no backward follows), so their scoring passes stay small.
    let reference = needs_reference(&setup.opts).then(|| Llama {
        recompute: true,
        ..policy.clone()
    });
    policy.recompute = setup.opts.recompute;
    let reward = reward.map(|(c, p)| Llama {
        recompute: true,
        ..Llama::new(c, p)
    });
    let value = value.map(|(c, p)| Llama {
        recompute: setup.opts.recompute,
        ..Llama::new(c, p)
    });
    if let Some(cuda) = setup.opts.device.engine()? {
        // One engine for the four models: one stream, and one set of recycled buffers that the
        // scoring passes, the PPO micro-batches and the rollouts take turns with.
        let up = |m: &Llama| m.upload(cuda.share());
        let mut p = GpuTrainer::on(cuda.share(), &policy)?;
        let mut v = value
            .as_ref()
            .map(|m| GpuTrainer::on(cuda.share(), m))
            .transpose()?;
        let r = reference.as_ref().map(up).transpose()?;
        let rm = reward.as_ref().map(up).transpose()?;
        let models = Models {
            policy: &mut p,
            value: v.as_mut(),
            reference: r.as_ref(),
            reward: rm.as_ref(),
        };
        train(models, &setup, resume)
    } else {
        let mut p = CpuState::new(policy, 0.0);
        let mut v = value.map(|m| CpuState::new(m, 0.0));
        let models = Models::<CpuState> {
            policy: &mut p,
            value: v.as_mut(),
            reference: reference.as_ref(),
            reward: reward.as_ref(),
        };
        train(models, &setup, resume)
    }
}

/// Whether the frozen reference model is loaded and scored: not when β is fixed at 0, where the
/// KL it measures would be multiplied by 0 (TRL's GRPO does not load it either).
fn needs_reference(o: &PpoOptions) -> bool {
    !matches!(o.kl, KlController::Fixed { coef } if coef == 0.0)
}

fn print_memory_plan(s: &Setup, reward: Option<&LlamaConfig>) {
    let o = &s.opts;
    let lens: Vec<usize> = s.prompts.iter().map(|p| p.ids.len()).collect();
    let longest = lens.iter().copied().max().unwrap_or(1);
    let max_pos = s.policy_cfg.max_position_embeddings;
    let seq =
        longest + crate::generate::engine::new_tokens_room(longest, o.max_new_tokens, max_pos);
    let k = o.rollouts_per_prompt;
    let bs = crate::generate::BLOCK_SIZE;
    let max_batch = (o.prompt_batch_size * k).min(256);
    let kv_blocks =
        crate::generate::engine::pool_blocks(&lens, k, o.max_new_tokens, max_batch, bs, max_pos);
    let mut plan = crate::train::memory_plan::MemoryPlan::ppo(
        &s.policy_cfg,
        s.value_cfg.as_ref(),
        reward,
        o.minibatch_size / o.grad_accum,
        seq,
        kv_blocks * bs,
        o.recompute,
    );
    if !needs_reference(o) {
        if let Some(line) = plan.lines.iter_mut().find(|l| l.0.starts_with("reference")) {
            plan.total -= line.1;
            *line = ("reference (not loaded: β is 0)", 0);
        }
    }
    eprint!(
        "{}",
        plan.render(&format!(
            "GPU, {} sequences an iteration, micro-batches of {} x {seq} tokens{}",
            o.prompt_batch_size * k,
            o.minibatch_size / o.grad_accum,
            if o.recompute { ", --recompute" } else { "" }
        ))
    );
}

/// Token tensors of one iteration's rollouts: sequences right-padded to T, and which positions
/// predict a completion token (position t holds the log-prob of token t+1).
struct RolloutBatch {
    batch: Batch,
    mask: Vec<bool>,
    lens: Vec<usize>,
    /// The engine's log-probs, at their positions [N, T] (0 elsewhere).
    rollout_logp: Vec<f32>,
    ends_with_eos: Vec<bool>,
}

fn rollout_batch(prompts: &[&[u32]], rollouts: &[Rollout], eos: &[u32], pad: u32) -> RolloutBatch {
    let seqs: Vec<Vec<u32>> = rollouts
        .iter()
        .zip(prompts)
        .map(|(r, p)| [*p, &r.completion_ids].concat())
        .collect();
    let batch = Batch::right_padded(&seqs, pad);
    let t = batch.seq;
    let mut mask = vec![false; batch.tokens()];
    let mut rollout_logp = vec![0.0; batch.tokens()];
    for (b, (r, p)) in rollouts.iter().zip(prompts).enumerate() {
        for (j, &lp) in r.logprobs.iter().enumerate() {
            let pos = b * t + p.len() - 1 + j;
            mask[pos] = true;
            rollout_logp[pos] = lp;
        }
    }
    RolloutBatch {
        lens: seqs.iter().map(Vec::len).collect(),
        ends_with_eos: rollouts
            .iter()
            .map(|r| r.completion_ids.last().is_some_and(|id| eos.contains(id)))
            .collect(),
        batch,
        mask,
        rollout_logp,
    }
}

/// Rows `rows` of `b`, at the same length.
fn rows_of(b: &Batch, rows: &[usize]) -> Batch {
    let t = b.seq;
    let pick = |v: &[u32]| {
        rows.iter()
            .flat_map(|&r| v[r * t..(r + 1) * t].to_vec())
            .collect()
    };
    Batch {
        batch: rows.len(),
        seq: t,
        ids: pick(&b.ids),
        positions: pick(&b.positions),
        mask: rows
            .iter()
            .flat_map(|&r| b.mask[r * t..(r + 1) * t].to_vec())
            .collect(),
    }
}

fn gather<T: Copy>(v: &[T], rows: &[usize], t: usize) -> Vec<T> {
    rows.iter()
        .flat_map(|&r| v[r * t..(r + 1) * t].to_vec())
        .collect()
}

/// The iteration's prompt indices: a shuffled order per pass over the prompts, a pure function of
/// (seed, pass), so a resumed run draws the same prompts.
fn iteration_prompts(n_prompts: usize, per_iter: usize, seed: u64, iteration: usize) -> Vec<usize> {
    let per_pass = n_prompts / per_iter;
    let (pass, k) = (iteration / per_pass, iteration % per_pass);
    let mut order: Vec<usize> = (0..n_prompts).collect();
    order.shuffle(&mut StdRng::seed_from_u64(
        seed ^ (pass as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    ));
    order[k * per_iter..(k + 1) * per_iter].to_vec()
}

fn mean(v: impl IntoIterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for x in v {
        s += x;
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

fn train<S: TrainState>(mut m: Models<S>, s: &Setup, resume: bool) -> Result<PpoSummary> {
    let o = &s.opts;
    let ckpt = o.out.join("checkpoint");
    let per_pass = s.prompts.len() / o.prompt_batch_size;
    let total = match o.max_steps {
        Some(n) => n,
        None => crate::train::bounds::total_steps(o.epochs, per_pass, "iterations")?,
    };
    let mut state = RlState {
        next_iteration: 0,
        total_iterations: total,
        kl: o.kl,
        moments: RunningMoments::new(),
    };
    if resume {
        let dir = crate::model::weights::resolve_checkpoint_dir(&ckpt);
        state = serde_json::from_slice(
            &std::fs::read(dir.join("rl_state.json"))
                .with_context(|| format!("reading {}", dir.join("rl_state.json").display()))?,
        )?;
        if state.next_iteration >= state.total_iterations {
            eprintln!(
                "the run in {} is finished (iteration {}); nothing to do",
                o.out.display(),
                state.next_iteration
            );
            return Ok(PpoSummary {
                iterations: state.next_iteration,
                ..Default::default()
            });
        }
        let (_, host, _) = load_training_checkpoint(&dir.join("policy"))?;
        m.policy.restore(host)?;
        if let Some(v) = m.value.as_mut() {
            let (_, host, _) = load_training_checkpoint(&dir.join("value"))?;
            v.restore(host)?;
        }
        eprintln!(
            "resuming {} at iteration {}/{}",
            o.out.display(),
            state.next_iteration,
            total
        );
    }
    let mut metrics = MetricsLog::open(&o.out.join("metrics.jsonl"), state.next_iteration + 1)?;
    // Every completion with its score, per iteration (TRL logs a table of them).
    let mut rollout_log =
        MetricsLog::open(&o.out.join("rollouts.jsonl"), state.next_iteration + 1)?;
    let mut summary = PpoSummary::default();
    let k = o.rollouts_per_prompt;
    let log_every = (total / 20).max(1);
    for it in state.next_iteration..total {
        let t_start = Instant::now();
        // 1. Rollouts.
        let picked = iteration_prompts(s.prompts.len(), o.prompt_batch_size, o.seed, it);
        let prompt_ids: Vec<Vec<u32>> = picked.iter().map(|&i| s.prompts[i].ids.clone()).collect();
        let iteration_seed = {
            let r = philox4x32(
                [it as u32, (it >> 32) as u32, 0x5050_4f00, 0],
                [o.seed as u32, (o.seed >> 32) as u32],
            );
            (r[0] as u64) << 32 | r[1] as u64
        };
        // The rollouts' KV cache and the training buffers take turns with the device memory: each
        // phase starts with the other's idle buffers freed (the four models share one engine).
        m.policy.model().backend.release_idle();
        let rollouts = match &o.replay_rollouts {
            Some(file) => replayed_rollouts(file, it, prompt_ids.len(), k)?,
            None => generate(m.policy.model(), &prompt_ids, s, iteration_seed)?,
        };
        m.policy.model().backend.release_idle();
        let t_gen = t_start.elapsed().as_secs_f64();
        let prompts_per_row: Vec<&[u32]> = rollouts
            .iter()
            .map(|r| prompt_ids[r.prompt_index].as_slice())
            .collect();
        let rb = rollout_batch(&prompts_per_row, &rollouts, &s.eos, s.pad);
        let (n, t) = (rb.batch.batch, rb.batch.seq);

        // 2. Scoring: one pass per model.
        let t1 = Instant::now();
        let micro = o.minibatch_size / o.grad_accum;
        let heads = Heads::logp_at(o.temperature);
        let (mut old_logp, mut entropy, mut ref_logp, mut values) = (
            vec![0.0; n * t],
            vec![0.0; n * t],
            vec![0.0; n * t],
            vec![0.0; n * t],
        );
        let mut rm_scores = vec![0.0f32; n];
        for chunk in (0..n).collect::<Vec<_>>().chunks(micro) {
            let sub = rows_of(&rb.batch, chunk);
            let f = m.policy.model().forward_heads(&sub, heads)?;
            let (lp, ent) = (
                m.policy.model().backend.to_host(&f.logp)?,
                m.policy.model().backend.to_host(&f.entropy)?,
            );
            f.recycle(&m.policy.model().backend);
            // With no reference (β fixed at 0) its log-probs are taken as the policy's: every KL
            // is then exactly 0, which β = 0 multiplies anyway.
            let rl = match m.reference {
                Some(reference) => {
                    let f = reference.forward_heads(&sub, heads)?;
                    let rl = reference.backend.to_host(&f.logp)?;
                    f.recycle(&reference.backend);
                    rl
                }
                None => lp.clone(),
            };
            for (i, &row) in chunk.iter().enumerate() {
                old_logp[row * t..(row + 1) * t].copy_from_slice(&lp[i * t..(i + 1) * t]);
                entropy[row * t..(row + 1) * t].copy_from_slice(&ent[i * t..(i + 1) * t]);
                ref_logp[row * t..(row + 1) * t].copy_from_slice(&rl[i * t..(i + 1) * t]);
            }
            if let Some(vm) = m.value.as_ref() {
                let f = vm.model().forward_heads(&sub, Heads::VALUE)?;
                let vals = vm.model().backend.to_host(&f.value)?;
                f.recycle(&vm.model().backend);
                for (i, &row) in chunk.iter().enumerate() {
                    values[row * t..(row + 1) * t].copy_from_slice(&vals[i * t..(i + 1) * t]);
                }
            }
            match (m.reward, &s.reward_input) {
                (Some(rm), Some(RewardInput::PolicyIds)) => {
                    let f = rm.forward_heads(&sub, Heads::VALUE)?;
                    let r = rm.backend.to_host(&f.value)?;
                    f.recycle(&rm.backend);
                    for (i, &row) in chunk.iter().enumerate() {
                        rm_scores[row] =
                            r[sub.reward_position(i, rb.lens[row], rm.cfg.pad_token_id)];
                    }
                }
                // Another tokenizer: the prompt and the completion's text, tokenised its way.
                (Some(rm), Some(input)) => {
                    let seqs = chunk
                        .iter()
                        .map(|&row| {
                            let r = &rollouts[row];
                            input.ids(
                                &s.prompts[picked[r.prompt_index]],
                                &prompt_ids[r.prompt_index],
                                &r.completion_ids,
                                rb.ends_with_eos[row],
                                &s.tokenizer,
                            )
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let r = reward_model_scores(rm, &seqs)?;
                    for (&row, score) in chunk.iter().zip(r) {
                        rm_scores[row] = score;
                    }
                }
                _ => {}
            }
        }
        let math: Vec<f32> = rollouts
            .iter()
            .map(|r| {
                let answer = s.prompts[picked[r.prompt_index]]
                    .fields
                    .get("answer")
                    .and_then(answer_of);
                match answer {
                    Some(a) => math_answer(
                        &s.tokenizer
                            .decode_generated(&r.completion_ids)
                            .unwrap_or_default(),
                        a,
                    ),
                    None => 0.0,
                }
            })
            .collect();
        let scores: Vec<f32> = match o.reward {
            RewardSource::Rm => rm_scores.clone(),
            RewardSource::MathAnswer => math.clone(),
            RewardSource::Both => rm_scores
                .iter()
                .zip(&math)
                .map(|(r, a)| r + o.math_weight * a)
                .collect(),
        };
        let gaps: Vec<f64> = (0..n * t)
            .filter(|&i| rb.mask[i])
            .map(|i| (rb.rollout_logp[i] as f64 - old_logp[i] as f64).abs())
            .collect();
        let t_score = t1.elapsed().as_secs_f64();

        // 3. Advantages.
        let kl_coef = state.kl.coef();
        let scored = ScoredBatch {
            batch: n,
            time: t,
            mask: &rb.mask,
            old_logp: &old_logp,
            ref_logp: &ref_logp,
            values: if m.value.is_some() { &values } else { &[] },
            scores: &scores,
            ends_with_eos: &rb.ends_with_eos,
        };
        let adv: Advantages =
            advantages(o.algo, &scored, &o.switches, kl_coef, k, &mut state.moments);

        // 4. PPO epochs over minibatches.
        let t2 = Instant::now();
        // transformers' linear decay with no warm-up, as the offline trainers' schedule.
        let lr = Schedule::new(o.lr, 0.0, total, Decay::Linear).lr(it);
        let (mut pl, mut vl, mut clipfrac, mut approxkl, mut vclip) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut explained = Vec::new();
        let scale = 1.0 / o.grad_accum as f32;
        for epoch in 0..o.ppo_epochs {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut StdRng::seed_from_u64(
                iteration_seed ^ (epoch as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407),
            ));
            for mb in order.chunks(o.minibatch_size) {
                m.policy.zero_grads()?;
                if let Some(vm) = m.value.as_mut() {
                    vm.zero_grads()?;
                }
                for rows in mb.chunks(micro) {
                    let sub = rows_of(&rb.batch, rows);
                    let mask = gather(&rb.mask, rows, t);
                    // The micro-batch's inputs go to the device; the losses run there, fused
                    // (kernels/ppo_loss.cu on CUDA, the src/loss functions on the CPU).
                    let weights =
                        aggregation_weights(&mask, rows.len(), t, LossAggregation::TokenMean);
                    let (pol, grads) = m.policy.model_and_grads();
                    let o_dev = &pol.backend;
                    let (w_d, old_d, adv_d) = (
                        o_dev.to_device(&weights)?,
                        o_dev.to_device(&gather(&old_logp, rows, t))?,
                        o_dev.to_device(&gather(&adv.advantages, rows, t))?,
                    );
                    let grpo_kl = o.algo == Algo::Grpo && kl_coef > 0.0;
                    let ref_d = if grpo_kl {
                        Some(o_dev.to_device(&gather(&ref_logp, rows, t))?)
                    } else {
                        None
                    };
                    let f = pol.forward_heads(&sub, heads)?;
                    let mut g = o_dev.acc(rows.len() * t)?;
                    // GRPO's KL term: β · token mean of k3(π ‖ π_ref), differentiated in log π.
                    let kl = ref_d.as_ref().map(|r| {
                        let penalty = KlPenalty {
                            coef: kl_coef,
                            clamp: o.switches.kl_clamp,
                        };
                        (r, penalty)
                    });
                    let policy_loss = PolicyLossConfig {
                        clip_eps: o.clip,
                        ..Default::default()
                    };
                    let out = o_dev.ppo_policy_loss(
                        &mut g,
                        &f.logp,
                        &old_d,
                        &adv_d,
                        &w_d,
                        kl,
                        &policy_loss,
                        scale,
                    )?;
                    pol.backward(
                        &f,
                        &HeadGrads {
                            logp: Some(&g),
                            ..Default::default()
                        },
                        grads,
                    )?;
                    f.recycle(o_dev);
                    for x in [Some(g), Some(w_d), Some(old_d), Some(adv_d), ref_d] {
                        x.into_iter().for_each(|x| o_dev.recycle_acc(x));
                    }
                    pl.push(out.loss as f64);
                    clipfrac.push(out.clip_fraction as f64);
                    approxkl.push(out.approx_kl as f64);
                    if let Some(vm) = m.value.as_mut() {
                        let (val, vgrads) = vm.model_and_grads();
                        let v_dev = &val.backend;
                        let (w_d, old_v, ret_d) = (
                            v_dev.to_device(&weights)?,
                            v_dev.to_device(&gather(&values, rows, t))?,
                            v_dev.to_device(&gather(&adv.returns, rows, t))?,
                        );
                        let f = val.forward_heads(&sub, Heads::VALUE)?;
                        let mut g = v_dev.acc(rows.len() * t)?;
                        let out = v_dev.ppo_value_loss(
                            &mut g,
                            &f.value,
                            &old_v,
                            &ret_d,
                            &w_d,
                            &ValueLossConfig {
                                clip_range: Some(o.value_clip),
                            },
                            scale * o.value_coef,
                        )?;
                        val.backward(
                            &f,
                            &HeadGrads {
                                value: Some(&g),
                                ..Default::default()
                            },
                            vgrads,
                        )?;
                        f.recycle(v_dev);
                        for x in [g, w_d, old_v, ret_d] {
                            v_dev.recycle_acc(x);
                        }
                        vl.push(out.loss as f64);
                        vclip.push(out.clip_fraction as f64);
                        explained.push(out.explained_variance as f64);
                    }
                }
                m.policy.step(lr, o.max_grad_norm)?;
                if let Some(vm) = m.value.as_mut() {
                    vm.step(lr, o.max_grad_norm)?;
                }
            }
        }
        let t_train = t2.elapsed().as_secs_f64();
        // The optimiser steps' gradient norms (before clipping), read once an iteration.
        let policy_norms = m.policy.take_grad_norms()?;
        let value_norms = match m.value.as_mut() {
            Some(vm) => vm.take_grad_norms()?,
            None => Vec::new(),
        };
        let mean_norm = |v: &[f32]| mean(v.iter().map(|&x| x as f64));

        // KL control, metrics.
        let seq_kl = mean_sequence_kl(&adv.kl, &rb.mask, n, t);
        let k3 = per_token_kl(&old_logp, &ref_logp, &rb.mask, KlEstimator::K3, None).kl;
        let k1 = per_token_kl(&old_logp, &ref_logp, &rb.mask, KlEstimator::K1, None).kl;
        state.kl.update(mean_sequence_kl(&k1, &rb.mask, n, t), n);
        let seq_entropy = mean((0..n).map(|b| {
            (0..t)
                .filter(|&j| rb.mask[b * t + j])
                .map(|j| entropy[b * t + j] as f64)
                .sum::<f64>()
        }));
        let lengths: Vec<f64> = rollouts
            .iter()
            .map(|r| r.completion_ids.len() as f64)
            .collect();
        let eos_count = rb.ends_with_eos.iter().filter(|&&e| e).count();
        let raw_score = mean(scores.iter().map(|&x| x as f64));
        let final_mean = mean(adv.scores.iter().map(|&x| x as f64));
        let final_std = (mean(adv.scores.iter().map(|&x| (x as f64 - final_mean).powi(2)))).sqrt();
        let gap_max = gaps.iter().copied().fold(0.0, f64::max);
        let elapsed = t_start.elapsed().as_secs_f64();
        let tokens = rollouts
            .iter()
            .map(|r| r.completion_ids.len())
            .sum::<usize>();
        for (r, score) in rollouts.iter().zip(&scores) {
            rollout_log.write(&json!({
                "step": it + 1, "prompt_index": picked[r.prompt_index], "rollout_index": r.rollout_index,
                "text": s.tokenizer.decode_generated(&r.completion_ids).unwrap_or_default(),
                "completion_ids": r.completion_ids, "logprobs": r.logprobs,
                "finish_reason": r.finish_reason, "score": score,
            }))?;
        }
        let mut row = json!({
            "step": it + 1, "episode": (it + 1) * n,
            "objective/scores": if o.reward == RewardSource::MathAnswer { mean(math.iter().map(|&x| x as f64)) } else { raw_score },
            "objective/kl": seq_kl,
            "objective/entropy": seq_entropy,
            "objective/rlhf_reward": mean(adv.rlhf_reward.iter().map(|&x| x as f64)),
            "policy/clipfrac_avg": mean(clipfrac.iter().copied()),
            "policy/approxkl_avg": mean(approxkl.iter().copied()),
            "loss/policy_avg": mean(pl.iter().copied()),
            "loss/value_avg": mean(vl.iter().copied()),
            "policy/grad_norm": mean_norm(&policy_norms), "value/grad_norm": mean_norm(&value_norms),
            "val/num_eos_tokens": eos_count,
            "lr": lr,
            "reward/mean": final_mean, "reward/std": final_std,
            "reward/rm_score": mean(rm_scores.iter().map(|&x| x as f64)),
            "reward/math_accuracy": mean(math.iter().map(|&x| x as f64)),
            "kl/k1": mean_sequence_kl(&k1, &rb.mask, n, t), "kl/k3": mean_sequence_kl(&k3, &rb.mask, n, t),
            "kl/coef": kl_coef,
            "value/explained_variance": mean(explained.iter().copied()),
            "value/clipfrac": mean(vclip.iter().copied()),
            "response/length": mean(lengths.iter().copied()), "response/eos_rate": eos_count as f64 / n as f64,
            "logprob_gap/max": gap_max, "logprob_gap/mean": mean(gaps.iter().copied()),
            "tokens_per_s": tokens as f64 / elapsed,
            "time/generate": t_gen, "time/score": t_score, "time/train": t_train,
        });
        if m.reference.is_none() {
            // No reference pass (β fixed at 0), so no KL was measured; TRL's GRPO logs none either.
            if let Some(fields) = row.as_object_mut() {
                for key in ["objective/kl", "kl/k1", "kl/k3"] {
                    fields.remove(key);
                }
            }
        }
        metrics.write(&row)?;
        summary.scores.push(raw_score);
        summary.max_logprob_gap = summary.max_logprob_gap.max(gap_max);
        summary.iterations = it + 1;
        let done = it + 1;
        if done % log_every == 0 || done == total {
            let kl = match m.reference {
                Some(_) => format!(", kl {seq_kl:.4}"),
                None => String::new(),
            };
            eprintln!(
                "iteration {done}/{total}: score {raw_score:.4}{kl}, policy loss {:.4}, {:.1} s (generate {t_gen:.1}, score {t_score:.1}, train {t_train:.1})",
                mean(pl.iter().copied()),
                elapsed
            );
        }
        state.next_iteration = done;
        let signal = crate::signals::received();
        let by_user = signal.is_some();
        let stop = by_user || o.stop_after == Some(done);
        if stop || done % o.save_every == 0 || done == total {
            save_rl_checkpoint(&ckpt, &m, s, &state)?;
        }
        if stop && done < total {
            eprintln!(
                "{} at iteration {done}/{total}; checkpoint saved; continue with prefer ppo --resume {}",
                crate::signals::stop_reason(signal),
                o.out.display()
            );
            summary.interrupted = by_user;
            return Ok(summary);
        }
    }
    // The final policy at the run's root, the value model in value/.
    let extra: Vec<(&str, &[u8])> = s
        .extra_files
        .iter()
        .map(|(n, b)| (*n, b.as_slice()))
        .collect();
    save_model_into(
        &o.out,
        &s.policy_cfg,
        &m.policy.host_state()?.params,
        SaveDtype::F32,
        &extra,
    )?;
    if let (Some(vm), Some(cfg)) = (m.value.as_ref(), &s.value_cfg) {
        save_checkpoint(
            &o.out.join("value"),
            cfg,
            &vm.host_state()?.params,
            SaveDtype::F32,
            &extra,
        )?;
    }
    let plotted = crate::train::metrics::plot_curves(
        &o.out.join("metrics.jsonl"),
        &o.out.join("nonexistent-eval.jsonl"),
        &["objective/scores", "objective/kl", "loss/policy_avg", "lr"],
        &o.out.join("curves.png"),
        &format!(
            "{} - {}",
            format!("{:?}", o.algo).to_uppercase(),
            o.out.display()
        ),
    )?;
    eprintln!(
        "policy in {}{}",
        o.out.display(),
        if plotted {
            format!(", curves in {}", o.out.join("curves.png").display())
        } else {
            String::new()
        }
    );
    Ok(summary)
}

fn generate<B: Backend>(
    policy: &Llama<B>,
    prompts: &[Vec<u32>],
    s: &Setup,
    seed: u64,
) -> Result<Vec<Rollout>> {
    let o = &s.opts;
    let k = o.rollouts_per_prompt;
    let bs = crate::generate::BLOCK_SIZE;
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let max_batch = (prompts.len() * k).min(256);
    let opts = EngineOptions {
        n: k,
        sampling: SamplingParams {
            temperature: o.temperature,
            top_k: 0,
            top_p: 1.0,
        },
        max_new_tokens: o.max_new_tokens,
        seed,
        max_batch,
        block_size: bs,
        kv_blocks: crate::generate::engine::pool_blocks(
            &lens,
            k,
            o.max_new_tokens,
            max_batch,
            bs,
            policy.cfg.max_position_embeddings,
        ),
        eos: s.eos.clone(),
        prefill_tokens: 8192,
        graphs: true,
    };
    let mut engine = Engine::new(policy, opts)?;
    engine.run_in_order(prompts, &mut |_| false, &mut |_| {})
}

/// policy/ and value/ (each an HF folder with its AdamW state) and rl_state.json, swapped in as
/// one folder so a crash leaves the previous checkpoint whole.
fn save_rl_checkpoint<S: TrainState>(
    dir: &Path,
    m: &Models<S>,
    s: &Setup,
    state: &RlState,
) -> Result<()> {
    let tmp = staging_dir(dir)?;
    let extra: Vec<(&str, &[u8])> = s
        .extra_files
        .iter()
        .map(|(n, b)| (*n, b.as_slice()))
        .collect();
    let pos = TrainerState {
        next_step: state.next_iteration,
        total_steps: state.total_iterations,
        adam_t: 0,
    };
    let host = m.policy.host_state()?;
    save_training_checkpoint(
        &tmp.join("policy"),
        &s.policy_cfg,
        &host,
        &TrainerState {
            adam_t: host.t,
            ..pos.clone()
        },
        &extra,
    )?;
    if let (Some(vm), Some(cfg)) = (m.value.as_ref(), &s.value_cfg) {
        let host = vm.host_state()?;
        save_training_checkpoint(
            &tmp.join("value"),
            cfg,
            &host,
            &TrainerState {
                adam_t: host.t,
                ..pos
            },
            &[],
        )?;
    }
    std::fs::write(tmp.join("rl_state.json"), serde_json::to_vec_pretty(state)?)?;
    replace_dir(&tmp, dir)
}

/// Iteration `it`'s completions from another run's rollouts.jsonl, in (prompt, rollout) order.
fn replayed_rollouts(file: &Path, it: usize, prompts: usize, k: usize) -> Result<Vec<Rollout>> {
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
