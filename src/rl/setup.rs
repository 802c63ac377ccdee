//! What a PPO run reads before its first iteration: the policy (also the frozen reference), the
//! reward model, the value model's start, the prompts, and the memory plan of it all.

use super::advantages::Algo;
use super::options::{PpoOptions, RewardSource};
use super::rewards::answer_of;
use crate::data::chat_template::ChatTemplate;
use crate::data::preference::Encoder;
use crate::data::prompts::{context_note, read_prompts, Prompt};
use crate::data::reward_input::RewardInput;
use crate::data::tokenizer::TextTokenizer;
use crate::generate::kv_budget::block_bytes;
use crate::generate::stopping::eos_ids;
use crate::generate::KvRequest;
use crate::loss::KlController;
use crate::model::weights::load_checkpoint;
use crate::model::{Llama, LlamaConfig};
use crate::train::state::TrainState;
use anyhow::{bail, Result};
use std::path::Path;

/// Everything an iteration reads that does not change.
pub struct Setup {
    pub opts: PpoOptions,
    pub prompts: Vec<Prompt>,
    pub tokenizer: TextTokenizer,
    pub eos: Vec<u32>,
    pub pad: u32,
    pub policy_cfg: LlamaConfig,
    pub value_cfg: Option<LlamaConfig>,
    /// How the reward model reads a rollout: the policy's ids, or the text re-tokenised.
    pub reward_input: Option<RewardInput>,
    pub extra_files: Vec<(&'static str, Vec<u8>)>,
}

/// The two trained models and the two frozen ones, on one backend.
pub struct Models<S: TrainState> {
    pub policy: S,
    pub value: Option<S>,
    /// None when β is 0 and fixed: the KL is not needed, so neither is the reference's forward
    /// (as TRL's GRPO skips its reference model at β = 0).
    pub reference: Option<Llama<S::B>>,
    pub reward: Option<Llama<S::B>>,
}

/// The four models as read, on the CPU, before they go to the device.
pub struct HostModels {
    pub policy: Llama,
    pub value: Option<Llama>,
    pub reference: Option<Llama>,
    pub reward: Option<Llama>,
}

/// Reads the models and prompts `opts` names and checks they fit together.
pub fn load(opts: PpoOptions) -> Result<(Setup, HostModels)> {
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
    let extra_files = crate::train::starting_model::tokenizer_files(&opts.policy);
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
    let recompute = setup.opts.run.recompute;
    policy.recompute = recompute;
    let reward = reward.map(|(c, p)| Llama {
        recompute: true,
        ..Llama::new(c, p)
    });
    let value = value.map(|(c, p)| Llama {
        recompute,
        ..Llama::new(c, p)
    });
    let models = HostModels {
        policy,
        value,
        reference,
        reward,
    };
    Ok((setup, models))
}

/// Whether the frozen reference model is loaded and scored: not when β is fixed at 0, where the
/// KL it measures would be multiplied by 0 (TRL's GRPO does not load it either).
pub fn needs_reference(o: &PpoOptions) -> bool {
    !matches!(o.kl, KlController::Fixed { coef } if coef == 0.0)
}

fn print_memory_plan(s: &Setup, reward: Option<&LlamaConfig>) {
    let o = &s.opts;
    // A GPU's plan, printed once (by rank 0); the CPU trainer keeps f32 everything.
    let world = crate::dist::world::World::from_env().ok();
    if world.as_ref().is_some_and(|w| w.rank != 0) {
        return;
    }
    if o.run.device == crate::ops::Device::Cpu {
        if !needs_reference(o) {
            eprintln!(
                "reference (not loaded: β is 0): every KL it measured would be multiplied by 0"
            );
        }
        return;
    }
    let lens: Vec<usize> = s.prompts.iter().map(|p| p.ids.len()).collect();
    let longest = lens.iter().copied().max().unwrap_or(1);
    let max_pos = s.policy_cfg.max_position_embeddings;
    let seq =
        longest + crate::generate::engine::new_tokens_room(longest, o.max_new_tokens, max_pos);
    let k = o.rollouts_per_prompt;
    let bs = crate::generate::BLOCK_SIZE;
    // The plan is a GPU's, where the cache holds bf16; each rank generates its share of the
    // prompts.
    let ranks = world.as_ref().map_or(1, |w| w.size);
    let kv_blocks = kv_request(o, &lens, o.prompt_batch_size.div_ceil(ranks) * k, max_pos)
        .size(block_bytes(&s.policy_cfg, 2), None)
        .expect("--kv-memory was checked with the options")
        .kv_blocks;
    let mut plan = crate::train::memory_plan::MemoryPlan::ppo_under(
        o.run.shard,
        ranks,
        &s.policy_cfg,
        s.value_cfg.as_ref(),
        reward,
        o.minibatch_size / o.grad_accum,
        seq,
        kv_blocks * bs,
        o.run.recompute,
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
            "GPU, {} sequences an iteration, micro-batches of {} x {seq} tokens{}{}",
            o.prompt_batch_size * k,
            o.minibatch_size / o.grad_accum,
            if o.run.recompute { ", --recompute" } else { "" },
            match (o.run.shard, ranks) {
                (_, 1) | (crate::train::run_args::Shard::None, _) => String::new(),
                (crate::train::run_args::Shard::Full, _) => {
                    format!(", one rank of {ranks} (--shard full)")
                }
                (crate::train::run_args::Shard::Optimizer, _) => {
                    format!(", optimizer state split over {ranks} ranks")
                }
            }
        ))
    );
}

/// The rollout engine's size for `sequences` rollouts of prompts of lengths `lens`, by the rule
/// `prefer generate` uses (src/generate/kv_budget.rs), with `--max-batch` and `--kv-memory`.
pub fn kv_request<'a>(
    o: &'a PpoOptions,
    lens: &'a [usize],
    sequences: usize,
    context: usize,
) -> KvRequest<'a> {
    KvRequest {
        prompt_lens: lens,
        n: o.rollouts_per_prompt,
        max_new_tokens: o.max_new_tokens,
        context,
        sequences,
        max_batch: o.max_batch,
        kv_memory: o.kv_memory.as_deref(),
    }
}
