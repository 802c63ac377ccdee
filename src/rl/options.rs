//! `prefer ppo`'s options, from flags or a TOML file (`--config`, keys are the flags' names); flags
//! override the file, the file overrides the defaults, and a resumed run takes its run.toml.
//! Defaults depend on the algorithm: PPO's are the paper's (Ivison et al. 2024, and its table of
//! PPO implementations), GRPO's and RLOO's are TRL's (`PpoArgs::defaults`).

use super::advantages::{Algo, RewardSwitches};
use super::task_eval::{EvalTask, TaskEvalOptions};
use crate::loss::{EosPenalty, GaeConfig, KlController, KlEstimator};
use crate::train::bounds::whole_number;
use crate::train::layered_options::{over, TrainerArgs};
use crate::train::run_args::{shown_default, RunArgs, RunOptions};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where an iteration's scores come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RewardSource {
    /// The reward model's score.
    Rm,
    /// 1 when the last number in the completion equals the prompt line's "answer" (GSM8K style).
    MathAnswer,
    /// The reward model's score plus --math-weight × the math-answer reward.
    Both,
}

/// Every flag is optional so that a flag, a config key, a resumed run's value and a default can
/// be told apart.
#[derive(clap::Args, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PpoArgs {
    /// The starting policy (an HF Llama folder); also the frozen reference.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// The reward model (an HF folder with a scalar head).
    #[arg(long)]
    pub reward_model: Option<PathBuf>,
    /// The value model's starting point [default: the reward model, as in the paper].
    #[arg(long)]
    pub value_model: Option<PathBuf>,
    /// Prompts JSONL: {"prompt": ...}, {"messages": [...]} or {"prompt_ids": [...]}; with
    /// --reward math-answer each line also has "answer".
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// The options every trainer takes: run folder, optimiser, schedule, cadence, device, seed.
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
    /// ppo (GAE with a value model), grpo or rloo (group baselines, no value model). Each takes
    /// its own defaults: ppo the paper's, grpo and rloo TRL's (no EOS trick, temperature 1, and
    /// their own β and --rollouts-per-prompt), as each option's default below shows.
    #[arg(long, value_enum)]
    pub algo: Option<Algo>,
    /// Where scores come from.
    #[arg(long, value_enum)]
    pub reward: Option<RewardSource>,
    /// Weight of the math-answer reward with --reward both.
    #[arg(long, allow_negative_numbers = true)]
    pub math_weight: Option<f32>,
    /// β of the KL penalty (the starting β with --adaptive-kl). At 0 (and not adaptive) the
    /// reference model is not run at all.
    #[arg(long, allow_negative_numbers = true)]
    pub kl_coef: Option<f32>,
    /// Adapt β towards --target-kl (Ziegler et al. 2019).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub adaptive_kl: Option<bool>,
    /// The sequence KL the adaptive controller aims for.
    #[arg(long, allow_negative_numbers = true)]
    pub target_kl: Option<f32>,
    /// The adaptive controller's horizon, in sequences.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub kl_horizon: Option<usize>,
    /// The per-token KL estimator.
    #[arg(long, value_enum)]
    pub kl_estimator: Option<KlEstimator>,
    /// Clamp the per-token log-ratio to [-C, C] before the KL estimate (off unless given).
    #[arg(long, allow_negative_numbers = true)]
    pub kl_clamp: Option<f32>,
    /// The EOS trick's score for a completion that never emitted EOS.
    #[arg(long, allow_negative_numbers = true)]
    pub eos_penalty: Option<f32>,
    /// Turn the EOS trick off (`--no-eos-trick false` turns it on for grpo and rloo).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub no_eos_trick: Option<bool>,
    /// Normalise scores by their running mean and std over the run.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub reward_norm: Option<bool>,
    /// Whiten the shaped per-token rewards over each batch.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub reward_whiten: Option<bool>,
    /// Turn advantage whitening off.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub no_advantage_whiten: Option<bool>,
    /// Completions sampled per prompt (at least 2 for grpo and rloo).
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub rollouts_per_prompt: Option<usize>,
    /// Prompts per iteration.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub prompt_batch_size: Option<usize>,
    /// Passes over each iteration's rollouts.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub ppo_epochs: Option<usize>,
    /// Sequences per optimiser step.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub minibatch_size: Option<usize>,
    /// Micro-batches per minibatch (memory, not math).
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub grad_accum: Option<usize>,
    /// Most tokens per completion; a completion also stops where the policy's context is full.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature; the trainer scores log-probs at the same temperature.
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Most sequences decoded together [default: the iteration's sequences, at most 256].
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub max_batch: Option<usize>,
    /// Memory for the KV cache, e.g. 512M or 8G [default: what the batch can use].
    #[arg(long)]
    pub kv_memory: Option<String>,
    /// PPO's ε.
    #[arg(long, allow_negative_numbers = true)]
    pub clip: Option<f32>,
    /// The value loss's clip range.
    #[arg(long, allow_negative_numbers = true)]
    pub value_clip: Option<f32>,
    /// Weight of the value loss.
    #[arg(long, allow_negative_numbers = true)]
    pub value_coef: Option<f32>,
    /// GAE's γ.
    #[arg(long, allow_negative_numbers = true)]
    pub gamma: Option<f32>,
    /// GAE's λ.
    #[arg(long, allow_negative_numbers = true)]
    pub lam: Option<f32>,
    /// Score the policy on a benchmark while it trains: before the first iteration, every
    /// --eval-every iterations and after the last, greedy, with the prompts and scoring of
    /// `prefer eval --task ...` (gsm8k: 8-shot, plain text; ifeval: the chat template). Logged
    /// to eval.jsonl (eval_gsm8k_accuracy; eval_ifeval_prompt_level_strict_acc, ...) and drawn
    /// in curves.png.
    #[arg(long, value_enum)]
    pub eval_task: Option<EvalTask>,
    /// The benchmark's rows for --eval-task (JSONL or parquet), e.g. openai/gsm8k's test split.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Evaluate every N iterations (0: before the first and after the last only).
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub eval_every: Option<usize>,
    /// Only the first N rows of --eval-data.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub eval_limit: Option<usize>,
    /// gsm8k: few-shot exemplars before each question [default: 8].
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub eval_shots: Option<usize>,
    /// Most new tokens per evaluation answer [default: gsm8k 512, ifeval 1280].
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub eval_max_new_tokens: Option<usize>,
    /// Take each iteration's completions from this rollouts.jsonl (another run's) instead of
    /// sampling them: for comparing devices on the same rollouts.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub replay_rollouts: Option<PathBuf>,
}

/// Concrete options of a run.
#[derive(Clone, Debug)]
pub struct PpoOptions {
    pub policy: PathBuf,
    pub reward_model: Option<PathBuf>,
    pub value_model: Option<PathBuf>,
    pub prompts: PathBuf,
    pub run: RunOptions,
    pub algo: Algo,
    pub reward: RewardSource,
    pub math_weight: f32,
    pub kl: KlController,
    pub switches: RewardSwitches,
    pub rollouts_per_prompt: usize,
    pub prompt_batch_size: usize,
    pub ppo_epochs: usize,
    pub minibatch_size: usize,
    pub grad_accum: usize,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub max_batch: Option<usize>,
    pub kv_memory: Option<String>,
    pub clip: f32,
    pub value_clip: f32,
    pub value_coef: f32,
    pub replay_rollouts: Option<PathBuf>,
    /// The benchmark scored during training (--eval-task), if any.
    pub task_eval: Option<TaskEvalOptions>,
}

/// `prefer ppo --help` with each option's default, per algorithm where they differ:
/// `[default: ppo 0.7, grpo 1, rloo 1]`.
pub fn with_default_help(cmd: clap::Command) -> clap::Command {
    let algos = [Algo::Ppo, Algo::Grpo, Algo::Rloo];
    let tables =
        algos.map(|a| toml::Value::try_from(PpoArgs::defaults(a)).expect("defaults serialise"));
    let ids: Vec<String> = cmd
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    ids.into_iter().fold(cmd, |cmd, id| {
        let key = id.replace('_', "-");
        let values: Vec<Option<String>> = tables
            .iter()
            .map(|t| t.get(&key).map(shown_default))
            .collect();
        let shown = if key == "algo" {
            "ppo".to_string()
        } else if values.iter().all(|v| v == &values[0]) {
            match &values[0] {
                Some(v) => v.clone(),
                None => return cmd,
            }
        } else {
            algos
                .iter()
                .zip(&values)
                .map(|(a, v)| {
                    format!(
                        "{} {}",
                        format!("{a:?}").to_lowercase(),
                        v.as_deref().unwrap_or("none")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        cmd.mut_arg(id.as_str(), |a| {
            let text = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            a.help(format!("{text} [default: {shown}]"))
        })
    })
}

impl TrainerArgs for PpoArgs {
    fn command(&self) -> String {
        "prefer ppo".to_string()
    }
    fn run(&self) -> &RunArgs {
        &self.run
    }
    fn run_mut(&mut self) -> &mut RunArgs {
        &mut self.run
    }
    /// The defaults of the algorithm (itself resolved from the same layers: flag, --config,
    /// run.toml, else ppo).
    fn defaults(&self) -> PpoArgs {
        PpoArgs::defaults(self.algo.unwrap_or(Algo::Ppo))
    }
    fn carry_unsaved(&mut self, from: &PpoArgs) {
        self.replay_rollouts.clone_from(&from.replay_rollouts);
    }
    /// A run.toml from before per-algorithm defaults holds only the options given (a new one holds
    /// every value); the rest were the paper's for every algorithm.
    fn upgrade_saved(saved: PpoArgs) -> Result<PpoArgs> {
        if saved.temperature.is_some() {
            return Ok(saved);
        }
        over(&saved, &PpoArgs::defaults(Algo::Ppo))
    }
    fn paths_mut(&mut self) -> Vec<&mut Option<PathBuf>> {
        vec![
            &mut self.policy,
            &mut self.reward_model,
            &mut self.value_model,
            &mut self.prompts,
            &mut self.eval_data,
            &mut self.run.out,
        ]
    }
}

impl PpoArgs {
    /// The defaults of `algo` (what `--help` shows and `resolve` falls back on). PPO's are the
    /// paper's. GRPO and RLOO take their own methods' defaults as TRL has them (GRPOConfig and
    /// RLOOConfig in trl/trainer/grpo_config.py and rloo_config.py, TRL main of 2026): sampling
    /// temperature 1.0 for both; β 0.0 with 8 generations per prompt for GRPO, β 0.05 with 2 for
    /// RLOO (rewritten GRPO-style in TRL 0.2x); and neither has an EOS penalty, nor does
    /// DeepSeekMath's GRPO. The paper's −10 for a completion without EOS would swamp a 0/1
    /// verifiable reward, so GRPO would learn to stop instead of to answer.
    pub fn defaults(algo: Algo) -> PpoArgs {
        let (no_eos_trick, temperature, kl_coef, rollouts_per_prompt) = match algo {
            Algo::Ppo => (false, 0.7, KlController::default().coef(), 1),
            Algo::Grpo => (true, 1.0, 0.0, 8),
            Algo::Rloo => (true, 1.0, 0.05, 2),
        };
        PpoArgs {
            algo: Some(algo),
            reward: Some(RewardSource::Rm),
            math_weight: Some(1.0),
            kl_coef: Some(kl_coef),
            adaptive_kl: Some(false),
            target_kl: Some(6.0),
            kl_horizon: Some(10_000),
            kl_estimator: Some(KlEstimator::K1),
            eos_penalty: Some(EosPenalty::default().missing_eos_score),
            no_eos_trick: Some(no_eos_trick),
            reward_norm: Some(false),
            reward_whiten: Some(false),
            no_advantage_whiten: Some(false),
            rollouts_per_prompt: Some(rollouts_per_prompt),
            prompt_batch_size: Some(64),
            ppo_epochs: Some(1),
            minibatch_size: Some(64),
            grad_accum: Some(1),
            max_new_tokens: Some(256),
            eval_every: Some(0),
            eval_shots: Some(8),
            temperature: Some(temperature),
            clip: Some(0.2),
            value_clip: Some(0.2),
            value_coef: Some(crate::loss::DEFAULT_VALUE_COEF),
            gamma: Some(1.0),
            lam: Some(0.95),
            run: RunArgs {
                lr: Some(1e-6),
                epochs: Some(1),
                save_every: Some(50),
                ..RunArgs::common_defaults()
            },
            ..PpoArgs::default()
        }
    }

    /// Concrete options: what is still unset takes the algorithm's defaults. Call after
    /// [`TrainerArgs::with_files`].
    pub fn resolve(self) -> Result<PpoOptions> {
        let a = self.with_defaults()?;
        let need =
            |p: Option<PathBuf>, flag: &str| p.with_context(|| format!("--{flag} is required"));
        let given = "set by PpoArgs::defaults";
        let algo = a.algo.expect(given);
        let reward = a.reward.expect(given);
        let k = a.rollouts_per_prompt.expect(given);
        if algo != Algo::Ppo && k < 2 {
            bail!("--algo {algo:?} compares the rollouts of a prompt with each other: give --rollouts-per-prompt 2 or more");
        }
        if algo == Algo::Ppo && reward != RewardSource::MathAnswer && a.reward_model.is_none() {
            bail!("--reward-model is required (it scores the rollouts and, for ppo, starts the value model)");
        }
        if reward != RewardSource::MathAnswer && a.reward_model.is_none() {
            bail!("--reward {reward:?} needs --reward-model");
        }
        if algo == Algo::Ppo && a.reward_model.is_none() && a.value_model.is_none() {
            bail!(
                "ppo needs a value model: give --value-model (or --reward-model, which starts it)"
            );
        }
        let kl_coef = a.kl_coef.expect(given);
        let kl = if a.adaptive_kl.expect(given) {
            KlController::Adaptive {
                coef: kl_coef,
                target: a.target_kl.expect(given),
                horizon: a.kl_horizon.expect(given),
            }
        } else {
            KlController::Fixed { coef: kl_coef }
        };
        let task_eval = task_eval_options(&a)?;
        let o = PpoOptions {
            policy: need(a.policy, "policy")?,
            value_model: a.value_model.or_else(|| a.reward_model.clone()),
            reward_model: a.reward_model,
            prompts: need(a.prompts, "prompts")?,
            run: RunOptions::from_args(&a.run)?,
            algo,
            reward,
            math_weight: a.math_weight.expect(given),
            kl,
            switches: RewardSwitches {
                kl_estimator: a.kl_estimator.expect(given),
                kl_clamp: a.kl_clamp,
                eos_penalty: (!a.no_eos_trick.expect(given)).then(|| EosPenalty {
                    missing_eos_score: a.eos_penalty.expect(given),
                }),
                reward_norm: a.reward_norm.expect(given),
                reward_whiten: a.reward_whiten.expect(given),
                advantage_whiten: !a.no_advantage_whiten.expect(given),
                gae: GaeConfig {
                    gamma: a.gamma.expect(given),
                    lambda: a.lam.expect(given),
                },
            },
            rollouts_per_prompt: k,
            prompt_batch_size: a.prompt_batch_size.expect(given),
            ppo_epochs: a.ppo_epochs.expect(given),
            minibatch_size: a.minibatch_size.expect(given),
            grad_accum: a.grad_accum.expect(given),
            max_new_tokens: a.max_new_tokens.expect(given),
            temperature: a.temperature.expect(given),
            max_batch: a.max_batch,
            kv_memory: a.kv_memory,
            clip: a.clip.expect(given),
            value_clip: a.value_clip.expect(given),
            value_coef: a.value_coef.expect(given),
            replay_rollouts: a.replay_rollouts,
            task_eval,
        };
        o.check_ranges(
            kl_coef,
            a.target_kl.expect(given),
            a.kl_horizon.expect(given),
        )?;
        let batch = o.prompt_batch_size * o.rollouts_per_prompt;
        if o.minibatch_size > batch || !batch.is_multiple_of(o.minibatch_size) {
            bail!(
                "--minibatch-size ({}) must divide the iteration's {} sequences (--prompt-batch-size {} x --rollouts-per-prompt {})",
                o.minibatch_size,
                batch,
                o.prompt_batch_size,
                o.rollouts_per_prompt
            );
        }
        if !o.minibatch_size.is_multiple_of(o.grad_accum) {
            bail!(
                "--grad-accum ({}) must divide --minibatch-size ({})",
                o.grad_accum,
                o.minibatch_size
            );
        }
        Ok(o)
    }
}

/// The task evaluation's options, or None; a flag of it without --eval-task (or one the task
/// does not use) is refused rather than ignored.
fn task_eval_options(a: &PpoArgs) -> Result<Option<TaskEvalOptions>> {
    let name = |t: EvalTask| match t {
        EvalTask::Gsm8k => "gsm8k",
        EvalTask::Ifeval => "ifeval",
    };
    let every = a.eval_every.unwrap_or(0);
    let shots = a.eval_shots.unwrap_or(8);
    match (a.eval_task, &a.eval_data) {
        (Some(task), Some(data)) => {
            if task != EvalTask::Gsm8k && shots != 8 {
                bail!(
                    "--eval-shots is gsm8k's few-shot count; --eval-task {} has no exemplars",
                    name(task)
                );
            }
            Ok(Some(TaskEvalOptions {
                task,
                data: data.clone(),
                every,
                limit: a.eval_limit,
                shots,
                max_new_tokens: a
                    .eval_max_new_tokens
                    .unwrap_or_else(|| task.default_max_new_tokens()),
            }))
        }
        (Some(task), None) => bail!(
            "--eval-task {} needs --eval-data (the benchmark's rows)",
            name(task)
        ),
        (None, Some(_)) => bail!("--eval-data needs --eval-task (gsm8k or ifeval)"),
        (None, None) => {
            let given = [
                ("--eval-every", every != 0),
                ("--eval-limit", a.eval_limit.is_some()),
                ("--eval-shots", shots != 8),
                ("--eval-max-new-tokens", a.eval_max_new_tokens.is_some()),
            ];
            if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
                bail!("{flag} needs --eval-task and --eval-data");
            }
            Ok(None)
        }
    }
}

impl PpoOptions {
    /// Every numeric option against its allowed range (one table), whether it came from a flag,
    /// `--config` or a resumed run's run.toml. The KL controller's values are passed as given,
    /// since a fixed controller does not keep them.
    fn check_ranges(&self, kl_coef: f32, target_kl: f32, kl_horizon: usize) -> Result<()> {
        use crate::train::bounds::{check_all, Bound::*, FloatRange as R, BIG};
        use crate::train::options::MAX_TOKENS;
        let sw = &self.switches;
        check_all(&[
            Int("--rollouts-per-prompt", self.rollouts_per_prompt, 1..=4096),
            Int("--prompt-batch-size", self.prompt_batch_size, 1..=1_000_000),
            Int("--ppo-epochs", self.ppo_epochs, 1..=1000),
            Int("--minibatch-size", self.minibatch_size, 1..=1_000_000),
            Int("--grad-accum", self.grad_accum, 1..=65_536),
            Int("--max-new-tokens", self.max_new_tokens, 1..=MAX_TOKENS),
            Int(
                "--eval-every",
                self.task_eval.as_ref().map_or(0, |t| t.every),
                0..=BIG,
            ),
            Int(
                "--eval-limit",
                self.task_eval.as_ref().and_then(|t| t.limit).unwrap_or(1),
                1..=BIG,
            ),
            Int(
                "--eval-shots",
                self.task_eval.as_ref().map_or(0, |t| t.shots),
                0..=8,
            ),
            Int(
                "--eval-max-new-tokens",
                self.task_eval.as_ref().map_or(1, |t| t.max_new_tokens),
                1..=MAX_TOKENS,
            ),
            Int("--max-batch", self.max_batch.unwrap_or(1), 1..=65_536),
            Int("--kl-horizon", kl_horizon, 1..=BIG),
            Float("--math-weight", self.math_weight, R::closed(-1e6, 1e6)),
            Float("--kl-coef", kl_coef, R::closed(0.0, 1e3)),
            Float("--target-kl", target_kl, R::open_closed(0.0, 1e6)),
            Float(
                "--kl-clamp",
                sw.kl_clamp.unwrap_or(1.0),
                R::open_closed(0.0, 1e3),
            ),
            Float(
                "--eos-penalty",
                sw.eos_penalty.map_or(0.0, |p| p.missing_eos_score),
                R::closed(-1e6, 1e6),
            ),
            Float(
                "--temperature",
                self.temperature,
                R::open_closed(0.0, 100.0),
            ),
            Float("--clip", self.clip, R::open(0.0, 1.0)),
            Float("--value-clip", self.value_clip, R::open_closed(0.0, 1e6)),
            Float("--value-coef", self.value_coef, R::closed(0.0, 1e3)),
            Float("--gamma", sw.gae.gamma, R::closed(0.0, 1.0)),
            Float("--lam", sw.gae.lambda, R::closed(0.0, 1.0)),
        ])?;
        self.check_kv_options()
    }

    /// `--max-batch` holds a prompt's rollouts; `--kv-memory` is a size, and on the CPU (where
    /// the cache is host memory) one the host has. On a GPU the cache is never larger than the
    /// batch can use, so a larger size only means no limit.
    fn check_kv_options(&self) -> Result<()> {
        if let Some(b) = self.max_batch {
            if b < self.rollouts_per_prompt {
                bail!(
                    "--max-batch {b} must hold a prompt's {} rollouts (--rollouts-per-prompt)",
                    self.rollouts_per_prompt
                );
            }
        }
        if let Some(mem) = &self.kv_memory {
            let bytes = crate::generate::kv_budget::parse_bytes(mem)?;
            if self.run.device == crate::ops::Device::Cpu {
                crate::ops::memory_budget::ensure_fits_host(
                    &format!("--kv-memory {mem}"),
                    bytes as u128,
                    "give a smaller --kv-memory, or leave it out to size the cache from the batch",
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(algo: Option<Algo>) -> PpoArgs {
        PpoArgs {
            policy: Some("p".into()),
            prompts: Some("x".into()),
            run: RunArgs {
                out: Some("o".into()),
                ..RunArgs::default()
            },
            reward_model: Some("r".into()),
            algo,
            ..PpoArgs::default()
        }
    }

    /// (EOS trick's score, temperature, β, rollouts per prompt) of resolved options.
    fn key_values(o: &PpoOptions) -> (Option<f32>, f32, f32, usize) {
        (
            o.switches.eos_penalty.map(|p| p.missing_eos_score),
            o.temperature,
            o.kl.coef(),
            o.rollouts_per_prompt,
        )
    }

    #[test]
    fn each_algorithm_takes_its_own_defaults() {
        let ppo = args(None).resolve().unwrap();
        assert_eq!(ppo.algo, Algo::Ppo);
        assert_eq!(key_values(&ppo), (Some(-10.0), 0.7, 0.05, 1));
        // TRL's GRPOConfig: no EOS penalty, temperature 1.0, beta 0.0, num_generations 8.
        let grpo = args(Some(Algo::Grpo)).resolve().unwrap();
        assert_eq!(key_values(&grpo), (None, 1.0, 0.0, 8));
        assert_eq!(grpo.kl, KlController::Fixed { coef: 0.0 });
        // TRL's RLOOConfig: no EOS penalty, temperature 1.0, beta 0.05, num_generations 2.
        let rloo = args(Some(Algo::Rloo)).resolve().unwrap();
        assert_eq!(key_values(&rloo), (None, 1.0, 0.05, 2));
        // The rest stays the paper's for all three.
        for o in [&grpo, &rloo] {
            assert_eq!((o.run.lr, o.clip, o.max_new_tokens), (1e-6, 0.2, 256));
        }
    }

    #[test]
    fn a_flag_overrides_the_algorithms_default() {
        let o = PpoArgs {
            temperature: Some(0.7),
            kl_coef: Some(0.04),
            rollouts_per_prompt: Some(4),
            no_eos_trick: Some(false),
            eos_penalty: Some(-3.0),
            ..args(Some(Algo::Grpo))
        }
        .resolve()
        .unwrap();
        assert_eq!(key_values(&o), (Some(-3.0), 0.7, 0.04, 4));
    }

    #[test]
    fn the_algorithm_from_a_config_file_picks_the_defaults_and_run_toml_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "algo = \"rloo\"\n").unwrap();
        let mut given = args(None);
        given.run.config = Some(cfg);
        let given = given.with_files().unwrap();
        assert_eq!(
            key_values(&given.clone().resolve().unwrap()),
            (None, 1.0, 0.05, 2)
        );
        // What run.toml holds: every value, so a resume does not depend on today's defaults.
        let saved = given.with_defaults().unwrap();
        assert_eq!(
            (
                saved.no_eos_trick,
                saved.temperature,
                saved.kl_coef,
                saved.rollouts_per_prompt
            ),
            (Some(true), Some(1.0), Some(0.05), Some(2))
        );
        let text = toml::to_string(&saved).unwrap();
        let back: PpoArgs = toml::from_str(&text).unwrap();
        assert_eq!(key_values(&back.resolve().unwrap()), (None, 1.0, 0.05, 2));
    }

    #[test]
    fn a_run_started_before_per_algorithm_defaults_resumes_with_the_papers() {
        let dir = tempfile::tempdir().unwrap();
        // What such a run wrote: the options given, no defaults.
        std::fs::write(
            dir.path().join("run.toml"),
            "policy = \"/p\"\nprompts = \"/x\"\nout = \"/o\"\nreward-model = \"/r\"\nalgo = \"grpo\"\nrollouts-per-prompt = 4\n",
        )
        .unwrap();
        let mut resumed = PpoArgs::default();
        resumed.run.resume = Some(dir.path().to_path_buf());
        let resumed = resumed.with_files().unwrap().resolve().unwrap();
        assert_eq!(resumed.algo, Algo::Grpo);
        assert_eq!(key_values(&resumed), (Some(-10.0), 0.7, 0.05, 4));
    }
}
