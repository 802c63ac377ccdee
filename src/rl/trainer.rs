//! `prefer ppo` (PPO, GRPO, RLOO) as stages of the run skeleton (src/train/run.rs), written once
//! over `TrainState` (the CPU oracle and the CUDA engine run the same stages). One iteration:
//! 1. rollouts of the policy's own weights through the engine (rollouts.rs);
//! 2. one scoring pass per model: the policy's and the reference's log-probs (at the sampling
//!    temperature), the value model's estimates, the reward model's scores (scoring.rs);
//! 3. advantages (advantages.rs: GAE, or GRPO/RLOO group baselines);
//! 4. PPO epochs over shuffled minibatches: clipped policy loss, clipped value loss
//!    (ppo_epochs.rs).
//!
//! The run folder holds run.toml, metrics.jsonl, rollouts.jsonl, checkpoint/ (checkpoint.rs), and
//! at the end the policy at its root and the value model in value/.

use super::advantages::advantages;
use super::checkpoint::{load_rl_checkpoint, save_rl_checkpoint, RlState};
use super::iteration_log::{Iteration, Timings};
use super::options::PpoArgs;
use super::ppo_epochs::ppo_epochs;
use super::rollout_batch::{iteration_prompts, rollout_batch};
use super::rollouts::{all_gather_rollouts, generate, iteration_seed, replayed_rollouts};
use super::scoring::score;
use super::setup::{self, HostModels, Models, Setup};
use super::task_eval::{EvalTask, TaskEval};
use crate::dist::group::Group;
use crate::loss::RunningMoments;
use crate::model::weights::{save_checkpoint, save_model_into, SaveDtype};
use crate::ops::Backend;
use crate::train::gpu_step::GpuTrainer;
use crate::train::layered_options::TrainerArgs;
use crate::train::metrics::MetricsLog;
use crate::train::run::{
    drive, open_run, Cadence, Curves, OpenedRun, RunEnd, RunSpec, Stages, Start,
};
use crate::train::state::{CpuState, TrainState};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
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

/// `prefer ppo` (and grpo, rloo) as one process.
pub fn run_ppo(args: PpoArgs) -> Result<PpoSummary> {
    run_ppo_in(args, Arc::new(Group::single()))
}

/// `prefer ppo` in `group`: each rank samples its share of an iteration's prompts; the
/// rollouts are then gathered, so scoring, advantages (whitening, running reward statistics,
/// the adaptive KL) see the whole batch as one process does, and the PPO minibatches' micro-
/// batches are split over the ranks with gradients summed before each optimiser step.
pub fn run_ppo_in(args: PpoArgs, group: Arc<Group>) -> Result<PpoSummary> {
    // From here on SIGINT, SIGTERM, SIGHUP and SIGUSR1 finish the iteration and save.
    crate::signals::install();
    let overwrite = args.run.overwrite;
    let args = args.with_files()?;
    let opts = args.clone().resolve()?;
    let inputs = [
        ("--policy", Some(opts.policy.as_path())),
        ("--reward-model", opts.reward_model.as_deref()),
        ("--value-model", opts.value_model.as_deref()),
        ("--prompts", Some(opts.prompts.as_path())),
        (
            "--eval-data",
            opts.task_eval.as_ref().map(|t| t.data.as_path()),
        ),
    ];
    let spec = RunSpec {
        command: "prefer ppo".to_string(),
        unit: "iteration",
        inputs: &inputs,
        position_in_checkpoint: "policy",
    };
    // Held until the run ends: a second run in the same folder fails at once.
    let run = open_run(&spec, &opts.run, overwrite, group)?;
    if let Start::Finished(iterations) = run.start {
        return Ok(PpoSummary {
            iterations,
            ..Default::default()
        });
    }
    let (setup, host) = setup::load(opts.clone())?;
    // The benchmark's rows are read and tokenised before any training, so bad rows stop the run
    // at once.
    let task_eval = setup
        .opts
        .task_eval
        .as_ref()
        .map(|t| TaskEval::load(t, &setup))
        .transpose()?;
    run.write_run_toml(&args)?;
    let HostModels {
        policy,
        value,
        reference,
        reward,
    } = host;
    let (weight_decay, bucket_values) =
        (setup.opts.run.weight_decay, setup.opts.run.bucket_values());
    let (summary, _) = if let Some(cuda) = setup.opts.run.device.engine()? {
        // One engine for the four models: one stream, and one set of recycled buffers that the
        // scoring passes, the PPO micro-batches and the rollouts take turns with.
        // Under --shard full every model is sharded, the frozen ones too, each with a
        // communicator of its own, joined in this order on every rank.
        let full = setup.opts.run.fully_sharded(&run.group);
        let trainer = |m: &crate::model::Llama| -> Result<GpuTrainer> {
            let mut t = match full {
                true => GpuTrainer::fully_sharded(cuda.share(), m, &run.group)?,
                false => {
                    let shard = setup.opts.run.optimizer_shard(&run.group);
                    GpuTrainer::sharded(cuda.share(), m, shard)?
                }
            };
            t.weight_decay = weight_decay;
            t.bucket_values = bucket_values;
            Ok(t)
        };
        let up = |m: &crate::model::Llama| match full {
            true => crate::train::fsdp::shard_frozen(m, cuda.share(), &run.group),
            false => m.upload(cuda.share()),
        };
        let models = Models {
            policy: trainer(&policy)?,
            value: value.as_ref().map(trainer).transpose()?,
            reference: reference.as_ref().map(up).transpose()?,
            reward: reward.as_ref().map(up).transpose()?,
        };
        drive_ppo(models, &setup, &run, task_eval.as_ref())?
    } else {
        setup.opts.run.refuse_shard_on_cpu()?;
        let models = Models {
            policy: CpuState::new(policy, weight_decay),
            value: value.map(|m| CpuState::new(m, weight_decay)),
            reference,
            reward,
        };
        drive_ppo(models, &setup, &run, task_eval.as_ref())?
    };
    Ok(summary)
}

fn drive_ppo<S: TrainState>(
    models: Models<S>,
    s: &Setup,
    run: &OpenedRun,
    task_eval: Option<&TaskEval>,
) -> Result<(PpoSummary, RunEnd)> {
    let o = &s.opts;
    let per_pass = s.prompts.len() / o.prompt_batch_size;
    let total = o.run.total_steps(per_pass, "iterations")?;
    let mut stages = Ppo {
        m: models,
        group: run.group.clone(),
        s,
        state: RlState {
            next_iteration: 0,
            total_iterations: total,
            kl: o.kl,
            moments: RunningMoments::new(),
        },
        logs: None,
        summary: PpoSummary::default(),
        status: String::new(),
        task_eval,
    };
    let every = task_eval.map_or(0, |_| o.task_eval.as_ref().map_or(0, |t| t.every));
    drive(run, &mut stages, &o.run, Cadence::of(&o.run, every))
}

/// metrics.jsonl (a row per iteration), rollouts.jsonl (a row per completion) and, with
/// --eval-task, eval.jsonl (a row per evaluation).
struct Logs {
    metrics: MetricsLog,
    rollouts: MetricsLog,
    eval: MetricsLog,
}

/// The online trainer's state between the skeleton's calls.
struct Ppo<'a, S: TrainState> {
    m: Models<S>,
    /// The ranks the rollouts and minibatches are split over; rank 0 writes the run's files.
    group: Arc<Group>,
    s: &'a Setup,
    state: RlState,
    logs: Option<Logs>,
    summary: PpoSummary,
    /// The last iteration's progress line.
    status: String,
    /// The benchmark scored during training (--eval-task).
    task_eval: Option<&'a TaskEval>,
}

impl<S: TrainState> Stages for Ppo<'_, S> {
    type Summary = PpoSummary;

    fn total_steps(&self) -> usize {
        self.state.total_iterations
    }

    fn restore(&mut self, checkpoint: &Path) -> Result<usize> {
        let total = self.state.total_iterations;
        self.state = load_rl_checkpoint(checkpoint, &mut self.m)?;
        self.state.total_iterations = total;
        Ok(self.state.next_iteration)
    }

    fn begin(&mut self, start: usize) -> Result<()> {
        let out = &self.s.opts.run.out;
        let root = self.group.is_root();
        self.logs = Some(Logs {
            metrics: MetricsLog::open_if(root, &out.join("metrics.jsonl"), start + 1)?,
            rollouts: MetricsLog::open_if(root, &out.join("rollouts.jsonl"), start + 1)?,
            // A run resumed at its last iteration (it died in the final save) evaluates the
            // trained policy again in `finish`: its earlier final row goes.
            eval: MetricsLog::open_if(
                root && self.task_eval.is_some(),
                &out.join("eval.jsonl"),
                if start >= self.state.total_iterations {
                    start
                } else {
                    start + 1
                },
            )?,
        });
        Ok(())
    }

    /// The policy scored on --eval-task after `done` iterations, a row of eval.jsonl.
    fn evaluate(&mut self, done: usize) -> Result<()> {
        let Some(task) = self.task_eval else {
            return Ok(());
        };
        self.m.policy.model().backend.release_idle();
        // Under --shard full the policy is evaluated from a gathered copy, as it generates.
        let copy = self.m.policy.generation_copy()?;
        let policy = copy.as_ref().unwrap_or(self.m.policy.model());
        let mut row = task.run(policy, self.s, &self.group)?;
        drop(copy);
        self.m.policy.model().backend.release_idle();
        row.insert("step".into(), done.into());
        if self.group.is_root() {
            let shown: Vec<String> = row
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "eval_rows" | "eval_seconds" | "step"))
                .map(|(k, v)| format!("{} {:.4}", &k[5..], v.as_f64().unwrap_or(f64::NAN)))
                .collect();
            eprintln!("evaluation at iteration {done}: {}", shown.join(", "));
        }
        self.logs
            .as_mut()
            .context("the run's logs are opened by begin")?
            .eval
            .write(&serde_json::Value::Object(row))
    }

    fn step(&mut self, it: usize, lr: f32) -> Result<()> {
        let (s, o) = (self.s, &self.s.opts);
        let k = o.rollouts_per_prompt;
        let t_start = Instant::now();
        // 1. Rollouts.
        let picked = iteration_prompts(s.prompts.len(), o.prompt_batch_size, o.run.seed, it);
        let prompt_ids: Vec<Vec<u32>> = picked.iter().map(|&i| s.prompts[i].ids.clone()).collect();
        let seed = iteration_seed(o.run.seed, it);
        // The rollouts' KV cache and the training buffers take turns with the device memory: each
        // phase starts with the other's idle buffers freed (the four models share one engine).
        self.m.policy.model().backend.release_idle();
        let rollouts = match &o.replay_rollouts {
            Some(file) => replayed_rollouts(file, it, prompt_ids.len(), k)?,
            None => {
                // This rank's share of the prompts (whole groups of k), then everyone's. Under
                // --shard full from a whole copy of the policy gathered for the rollouts (the
                // hybrid engine), freed before scoring and training.
                let (rank, ranks) = (self.group.rank(), self.group.size());
                let n = prompt_ids.len();
                let (lo, hi) = (rank * n / ranks, (rank + 1) * n / ranks);
                let copy = self.m.policy.generation_copy()?;
                let policy = copy.as_ref().unwrap_or(self.m.policy.model());
                let mine = generate(policy, &prompt_ids[lo..hi], s, seed, lo)?;
                drop(copy);
                all_gather_rollouts(&self.group, mine)?
            }
        };
        self.m.policy.model().backend.release_idle();
        let t_gen = t_start.elapsed().as_secs_f64();
        let prompts_per_row: Vec<&[u32]> = rollouts
            .iter()
            .map(|r| prompt_ids[r.prompt_index].as_slice())
            .collect();
        let rb = rollout_batch(&prompts_per_row, &rollouts, &s.eos, s.pad);

        // 2. Scoring: one pass per model.
        let t1 = Instant::now();
        let scored = score(
            &self.group,
            &self.m,
            s,
            &rb,
            &rollouts,
            &picked,
            &prompt_ids,
        )?;
        let t_score = t1.elapsed().as_secs_f64();

        // 3. Advantages.
        let kl_coef = self.state.kl.coef();
        let batch = scored.batch(&rb, self.m.value.is_some());
        let adv = advantages(
            o.algo,
            &batch,
            &o.switches,
            kl_coef,
            k,
            &mut self.state.moments,
        );

        // 4. PPO epochs over minibatches.
        let t2 = Instant::now();
        let group = &self.group;
        let epochs = ppo_epochs(group, &mut self.m, s, &rb, &scored, &adv, kl_coef, lr, seed)?;
        let t_train = t2.elapsed().as_secs_f64();
        // The optimiser steps' gradient norms (before clipping), read once an iteration.
        let policy_norms = self.m.policy.take_grad_norms()?;
        let value_norms = match self.m.value.as_mut() {
            Some(vm) => vm.take_grad_norms()?,
            None => Vec::new(),
        };

        let iteration = Iteration {
            it,
            rollouts: &rollouts,
            picked: &picked,
            rb: &rb,
            scored: &scored,
            adv: &adv,
            epochs: &epochs,
            policy_norms: &policy_norms,
            value_norms: &value_norms,
            kl_coef,
            lr,
            has_reference: self.m.reference.is_some(),
            times: Timings {
                generate: t_gen,
                score: t_score,
                train: t_train,
                total: t_start.elapsed().as_secs_f64(),
            },
        };
        // KL control: β follows the sequence KL of this iteration's rollouts.
        self.state
            .kl
            .update(iteration.sequence_kl_k1(), rb.batch.batch);
        let logs = self
            .logs
            .as_mut()
            .context("the run's logs are opened by begin")?;
        for row in iteration.rollout_rows(s) {
            logs.rollouts.write(&row)?;
        }
        logs.metrics.write(&iteration.metrics_row(s))?;
        self.summary.scores.push(iteration.raw_score());
        self.summary.max_logprob_gap = self
            .summary
            .max_logprob_gap
            .max(iteration.max_logprob_gap());
        self.summary.iterations = it + 1;
        self.status = iteration.status();
        self.state.next_iteration = it + 1;
        Ok(())
    }

    fn log(&mut self) -> Result<String> {
        Ok(self.status.clone())
    }

    /// Rank 0 writes the checkpoint (every rank holds the same models and statistics); the
    /// others wait until it is whole.
    fn save(&mut self, checkpoint: &Path, next_step: usize) -> Result<()> {
        self.state.next_iteration = next_step;
        // Every rank takes part in gathering a sharded state; rank 0 writes.
        let policy = self.m.policy.gather_state(&self.group, false)?;
        let value = match self.m.value.as_mut() {
            Some(vm) => vm.gather_state(&self.group, false)?,
            None => None,
        };
        if let Some(policy) = policy {
            save_rl_checkpoint(checkpoint, &policy, value.as_ref(), self.s, &self.state)?;
        }
        self.group.barrier("checkpoint saved")
    }

    /// The final policy at the run's root, the value model in value/.
    fn finish(&mut self, end: RunEnd) -> Result<PpoSummary> {
        self.summary.interrupted = end.interrupted;
        if end.stopped_early {
            return Ok(self.summary.clone());
        }
        // The last evaluation, of the trained policy (the skeleton evaluates before the last
        // iteration only).
        self.evaluate(end.steps)?;
        let policy = self.m.policy.gather_state(&self.group, false)?;
        let value = match self.m.value.as_mut() {
            Some(vm) => vm.gather_state(&self.group, false)?,
            None => None,
        };
        let Some(policy) = policy else {
            return Ok(self.summary.clone());
        };
        let s = self.s;
        let extra: Vec<(&str, &[u8])> = s
            .extra_files
            .iter()
            .map(|(n, b)| (*n, b.as_slice()))
            .collect();
        let out = &s.opts.run.out;
        save_model_into(out, &s.policy_cfg, &policy.params, SaveDtype::F32, &extra)?;
        if let (Some(value), Some(cfg)) = (value, &s.value_cfg) {
            save_checkpoint(
                &out.join("value"),
                cfg,
                &value.params,
                SaveDtype::F32,
                &extra,
            )?;
        }
        Ok(self.summary.clone())
    }

    fn curves(&self) -> Curves {
        let keys: &'static [&'static str] = match self.task_eval.map(TaskEval::task) {
            None => &["objective/scores", "objective/kl", "loss/policy_avg", "lr"],
            Some(EvalTask::Gsm8k) => &[
                "objective/scores",
                "objective/kl",
                "loss/policy_avg",
                "gsm8k_accuracy",
            ],
            Some(EvalTask::Ifeval) => &[
                "objective/scores",
                "objective/kl",
                "ifeval_prompt_level_strict_acc",
                "ifeval_inst_level_loose_acc",
            ],
        };
        Curves {
            keys,
            label: format!("{:?}", self.s.opts.algo).to_uppercase(),
        }
    }
}
