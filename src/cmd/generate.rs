//! `prefer generate`: completions for a JSONL file of prompts, on the rollout engine
//! (src/generate/), with optional reward-model scores and best-of-N selection.

use super::Device;
use crate::data::chat_template::ChatTemplate;
use crate::data::preference::Encoder;
use crate::data::prompts::{context_note, read_prompts, Prompt};
use crate::data::reward_input::RewardInput;
use crate::data::tokenizer::TextTokenizer;
use crate::generate::kv_budget::block_bytes;
use crate::generate::stopping::{eos_ids, StopStrings};
use crate::generate::{Engine, EngineOptions, EngineStats, Rollout};
use crate::generate::{KvRequest, BLOCK_SIZE};
use crate::model::weights::load_checkpoint;
use crate::model::Llama;
use crate::ops::cpu::SamplingParams;
use crate::ops::cuda::backend::Cuda;
use crate::ops::memory_budget;
use crate::ops::Backend;
use crate::output::{refuse_output_that_is_an_input, AtomicFile};
use crate::rl::reward_model::reward_model_scores;
use crate::train::bounds::whole_number;
use crate::train::options::MAX_TOKENS;
use anyhow::{bail, Result};
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Clone, Debug)]
pub struct GenerateArgs {
    /// The policy: an HF Llama folder with an LM head.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL of prompts: {"prompt": "..."} (rendered with the chat template), {"messages": [...]}
    /// or {"prompt_ids": [...]}; other fields are copied to the output.
    #[arg(long)]
    pub prompts: PathBuf,
    /// JSONL written here, one line per completion.
    #[arg(long)]
    pub out: PathBuf,
    /// Completions per prompt.
    #[arg(long, default_value_t = 1, value_parser = whole_number, allow_negative_numbers = true)]
    pub n: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Keep the smallest set of most likely tokens holding this probability (1: off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Keep the K most likely tokens (0: off).
    #[arg(long, default_value_t = 0, value_parser = whole_number, allow_negative_numbers = true)]
    pub top_k: usize,
    /// Most tokens generated per completion.
    #[arg(long, default_value_t = 256, value_parser = whole_number, allow_negative_numbers = true)]
    pub max_new_tokens: usize,
    /// Stop a completion when its text holds this string (repeatable); the text ends before it.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Seed of the sampling; a completion's tokens depend only on it, the prompt's index and the
    /// completion's index.
    #[arg(long, default_value_t = 0, value_parser = crate::train::bounds::seed, allow_negative_numbers = true)]
    pub seed: u64,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 64, value_parser = whole_number, allow_negative_numbers = true)]
    pub max_batch: usize,
    /// Memory for the KV cache, e.g. 512M or 8G [default: what the batch can use, within 85% of
    /// the GPU memory left after the weights].
    #[arg(long)]
    pub kv_memory: Option<String>,
    /// A reward model (HF folder with a scalar head): each completion gets its "reward".
    #[arg(long)]
    pub reward_model: Option<PathBuf>,
    /// Best-of-N: sample K completions per prompt and keep the one the reward model scores
    /// highest (needs --reward-model; sets --n).
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub best_of: Option<usize>,
    /// cpu, cuda, emu (the software GPU) or auto.
    #[arg(long, value_enum, env = "PREFER_DEVICE", default_value_t = Device::Auto)]
    pub device: Device,
}

/// What a run reports at the end.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GenerateSummary {
    pub prompts: usize,
    pub completions: usize,
    pub generated_tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub prompts_per_s: f64,
    pub mean_reward_best: Option<f64>,
    pub mean_reward_first: Option<f64>,
}

impl GenerateArgs {
    /// Every option against its range and the others (also what tests/fuzz.rs drives).
    pub fn validate(&mut self) -> Result<()> {
        if let Some(k) = self.best_of {
            crate::train::bounds::check_int("--best-of", k, 1..=4096)?;
            if self.reward_model.is_none() {
                bail!("--best-of {k} keeps the completion a reward model scores highest: give --reward-model");
            }
            if self.n != 1 && self.n != k {
                bail!(
                    "--best-of {k} samples {k} completions per prompt; drop --n {}",
                    self.n
                );
            }
            self.n = k;
        }
        use crate::train::bounds::{check_all, Bound::*, FloatRange as R};
        check_all(&[
            Int("--n", self.n, 1..=4096),
            Int("--top-k", self.top_k, 0..=1 << 24),
            Int("--max-new-tokens", self.max_new_tokens, 1..=MAX_TOKENS),
            Int("--max-batch", self.max_batch, 1..=65_536),
            Float("--temperature", self.temperature, R::closed(0.0, 100.0)),
            Float("--top-p", self.top_p, R::open_closed(0.0, 1.0)),
        ])?;
        if self.stop.iter().any(String::is_empty) {
            bail!("--stop takes a non-empty string");
        }
        Ok(())
    }
}

/// "512M", "8G", "1.5G", "65536" (bytes): the rule is [`crate::generate::kv_budget::parse_bytes`].
pub use crate::generate::kv_budget::parse_bytes;

/// What the rollout engine made of a set of prompts: every completion in (prompt, completion)
/// order, its text (cut at the first stop string), and the reward model's scores if one was given.
pub struct Completions {
    pub rollouts: Vec<Rollout>,
    pub texts: Vec<String>,
    pub rewards: Option<Vec<f32>>,
    pub stats: EngineStats,
    pub seconds: f64,
}

/// Loads `args.model` (and `args.reward_model`), builds the prompts with `make_prompts` from the
/// model's tokenizer and chat template, and completes each `args.n` times on the rollout engine:
/// what `prefer generate` and `prefer eval` share.
pub fn complete(
    args: &GenerateArgs,
    make_prompts: impl FnOnce(&Encoder) -> Result<Vec<Prompt>>,
) -> Result<(Vec<Prompt>, Completions)> {
    let (cfg, params) = load_checkpoint(&args.model)?;
    let policy = Llama::new(cfg, params);
    if policy.layout.lm_head.is_none() {
        bail!(
            "{} is a reward model (no LM head); generate needs a causal LM",
            args.model.display()
        );
    }
    let tokenizer = TextTokenizer::load(&args.model, &policy.cfg)?;
    let template = ChatTemplate::for_model(&args.model)?;
    let enc = Encoder {
        tokenizer: &tokenizer,
        template: &template,
        cfg: &policy.cfg,
    };
    let prompts = make_prompts(&enc)?;
    let context = policy.cfg.max_position_embeddings;
    if let Some(note) = context_note(&args.prompts, &prompts, args.max_new_tokens, context) {
        eprintln!("{note}");
    }
    let mut eos = eos_ids(&args.model)?;
    if eos.is_empty() {
        eos.extend(policy.cfg.eos_token_id);
    }
    let reward = match &args.reward_model {
        Some(dir) => {
            let (rcfg, rparams) = load_checkpoint(dir)?;
            let rm = Llama::new(rcfg, rparams);
            if rm.layout.score.is_none() {
                bail!(
                    "{} has no scalar head (score.weight); it is not a reward model",
                    dir.display()
                );
            }
            let input =
                RewardInput::for_models(&args.model, &policy.cfg, dir, &rm.cfg, "reward model")?;
            if input.is_text() {
                eprintln!(
                    "the reward model {} has another tokenizer or chat template than the policy: it scores each prompt and completion as text, tokenised its own way",
                    dir.display()
                );
            }
            Some((rm, input))
        }
        None => None,
    };
    let (reward, reward_input) = match reward {
        Some((rm, input)) => (Some(rm), Some(input)),
        None => (None, None),
    };
    let stops = StopStrings {
        strings: args.stop.clone(),
        tokenizer: &tokenizer,
    };
    let job = Job {
        args,
        prompts: &prompts,
        eos,
        stops: &stops,
        tokenizer: &tokenizer,
        reward_input: reward_input.as_ref(),
    };
    let (rollouts, rewards, stats, seconds) = match args.device.engine()? {
        None => job.run(&policy, reward.as_ref(), None)?,
        Some(cuda) => job.run_cuda(cuda, &policy, reward.as_ref())?,
    };
    let texts = rollouts
        .iter()
        .map(|r| {
            let mut text = tokenizer.decode_generated(&r.completion_ids)?;
            if let Some(cut) = stops.find(&text) {
                text.truncate(cut);
            }
            Ok(text)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((
        prompts,
        Completions {
            rollouts,
            texts,
            rewards,
            stats,
            seconds,
        },
    ))
}

pub fn run_generate(mut args: GenerateArgs) -> Result<GenerateSummary> {
    args.validate()?;
    refuse_output_that_is_an_input(("--out", &args.out), &[("--prompts", Some(&args.prompts))])?;
    crate::signals::install();
    let (prompts, done) = complete(&args, |enc| read_prompts(&args.prompts, enc))?;
    write_output(&args, &prompts, &done)?;
    let (stats, seconds, rewards) = (&done.stats, done.seconds, &done.rewards);
    let rollouts = &done.rollouts;

    let mut summary = GenerateSummary {
        prompts: prompts.len(),
        completions: rollouts.len(),
        generated_tokens: stats.generated_tokens,
        seconds,
        tokens_per_s: stats.generated_tokens as f64 / seconds.max(1e-9),
        prompts_per_s: prompts.len() as f64 / seconds.max(1e-9),
        ..Default::default()
    };
    eprintln!(
        "{} prompts x {} -> {} completions, {} tokens in {:.2} s: {:.1} prompts/s, {:.0} generated tokens/s (no padding counted); wrote {}",
        prompts.len(),
        args.n,
        rollouts.len(),
        stats.generated_tokens,
        seconds,
        summary.prompts_per_s,
        summary.tokens_per_s,
        args.out.display()
    );
    if let Some(r) = rewards {
        let n = args.n;
        let mean = |f: &dyn Fn(&[f32]) -> f32| {
            r.chunks(n).map(|c| f(c) as f64).sum::<f64>() / prompts.len().max(1) as f64
        };
        let best = mean(&|c| c.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        let first = mean(&|c| c[0]);
        summary.mean_reward_best = Some(best);
        summary.mean_reward_first = Some(first);
        eprintln!("mean reward: best of {n} {best:.4}, first completion {first:.4}");
    }
    Ok(summary)
}

struct Job<'a> {
    args: &'a GenerateArgs,
    prompts: &'a [Prompt],
    eos: Vec<u32>,
    stops: &'a StopStrings<'a>,
    tokenizer: &'a TextTokenizer,
    /// How the reward model's input is made (with --reward-model).
    reward_input: Option<&'a RewardInput>,
}

type JobResult = (Vec<Rollout>, Option<Vec<f32>>, EngineStats, f64);

impl Job<'_> {
    fn run_cuda(&self, cuda: Cuda, policy: &Llama, reward: Option<&Llama>) -> Result<JobResult> {
        let gpu = policy.upload(cuda.share())?;
        let rm = reward.map(|r| r.upload(cuda.share())).transpose()?;
        let free = cudarc::driver::result::mem_get_info()
            .map(|(free, _)| free)
            .ok();
        self.run(&gpu, rm.as_ref(), free)
    }

    /// The engine on the policy's backend; rollouts in (prompt, rollout) order, and their rewards.
    fn run<B: Backend>(
        &self,
        policy: &Llama<B>,
        reward: Option<&Llama<B>>,
        free_bytes: Option<usize>,
    ) -> Result<JobResult> {
        let a = self.args;
        let bytes_per_value = if free_bytes.is_some() { 2 } else { 4 };
        let block_bytes = block_bytes(&policy.cfg, bytes_per_value);
        let lens: Vec<usize> = self.prompts.iter().map(|p| p.ids.len()).collect();
        // Enough for a full batch of the neediest prompts (never more than the context can
        // hold), within the memory there is: the GPU's free memory, or the host's.
        let available = free_bytes
            .map(|f| f as u128)
            .or_else(memory_budget::host_available_bytes);
        let kv = KvRequest {
            prompt_lens: &lens,
            n: a.n,
            max_new_tokens: a.max_new_tokens,
            context: policy.cfg.max_position_embeddings,
            sequences: lens.len() * a.n,
            max_batch: Some(a.max_batch),
            kv_memory: a.kv_memory.as_deref(),
        }
        .size(block_bytes, available)?;
        let opts = EngineOptions {
            n: a.n,
            sampling: SamplingParams {
                temperature: a.temperature,
                top_k: a.top_k,
                top_p: a.top_p,
            },
            max_new_tokens: a.max_new_tokens,
            seed: a.seed,
            first_prompt: 0,
            max_batch: kv.max_batch,
            block_size: BLOCK_SIZE,
            kv_blocks: kv.kv_blocks,
            eos: self.eos.clone(),
            prefill_tokens: 8192,
            graphs: true,
        };
        let mut engine = Engine::new(policy, opts)?;
        engine.stop_on_signal = true;
        let total = self.prompts.len() * a.n;
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} completions [{elapsed}<{eta}] {msg}",
            )
            .expect("valid template"),
        );
        let ids: Vec<Vec<u32>> = self.prompts.iter().map(|p| p.ids.clone()).collect();
        let t0 = Instant::now();
        let rollouts =
            engine.run_in_order(&ids, &mut |c| self.stops.hit(c), &mut |_| bar.inc(1))?;
        let seconds = t0.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let rewards = match (reward, self.reward_input) {
            (Some(rm), Some(input)) => Some(self.score(rm, input, &ids, &rollouts)?),
            _ => None,
        };
        Ok((
            rollouts,
            rewards,
            std::mem::take(&mut engine.stats),
            seconds,
        ))
    }

    /// The reward model's score of prompt + completion, for every rollout: the policy's ids, or
    /// the text re-tokenised the reward model's way when its tokenizer differs.
    fn score<B: Backend>(
        &self,
        rm: &Llama<B>,
        input: &RewardInput,
        prompts: &[Vec<u32>],
        rollouts: &[Rollout],
    ) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(rollouts.len());
        for chunk in rollouts.chunks(8) {
            let seqs = chunk
                .iter()
                .map(|r| {
                    let ended = r
                        .completion_ids
                        .last()
                        .is_some_and(|id| self.eos.contains(id));
                    input.ids(
                        &self.prompts[r.prompt_index],
                        &prompts[r.prompt_index],
                        &r.completion_ids,
                        ended,
                        self.tokenizer,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            out.extend(reward_model_scores(rm, &seqs)?);
        }
        debug_assert_eq!(out.len(), prompts.len() * self.args.n);
        Ok(out)
    }
}

fn write_output(args: &GenerateArgs, prompts: &[Prompt], done: &Completions) -> Result<()> {
    crate::signals::check(|| format!("{} was not written", args.out.display()))?;
    let rewards = done.rewards.as_deref();
    // A uniquely named file beside --out, renamed over it when whole (see AtomicFile).
    let mut w = AtomicFile::create(&args.out)?;
    for (p, prompt) in prompts.iter().enumerate() {
        let keep: Vec<usize> = match (args.best_of, rewards) {
            (Some(_), Some(r)) => vec![best_index(&r[p * args.n..(p + 1) * args.n])],
            _ => (0..args.n).collect(),
        };
        for i in keep {
            let r = &done.rollouts[p * args.n + i];
            let mut line = prompt.fields.clone();
            line.insert("prompt_index".into(), r.prompt_index.into());
            line.insert("rollout_index".into(), r.rollout_index.into());
            line.insert("text".into(), done.texts[p * args.n + i].clone().into());
            line.insert("completion_ids".into(), serde_json::json!(r.completion_ids));
            line.insert("logprobs".into(), serde_json::json!(r.logprobs));
            line.insert(
                "finish_reason".into(),
                serde_json::to_value(r.finish_reason)?,
            );
            if let Some(rw) = rewards {
                line.insert("reward".into(), rw[p * args.n + i].into());
            }
            writeln!(w, "{}", Value::Object(line))?;
        }
    }
    w.commit()
}

/// Best-of-N's pick: the index of the highest reward, the first of equal ones.
pub fn best_index(rewards: &[f32]) -> usize {
    (0..rewards.len()).fold(0, |b, i| if rewards[i] > rewards[b] { i } else { b })
}
