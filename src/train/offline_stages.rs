//! The offline trainers' stages (reward model, DPO) in the run skeleton: a step is `grad_accum`
//! micro-batches of pairs through the objective and one optimiser step; metrics stay on the
//! device until the skeleton logs; evaluation runs over the held-out pairs.

use super::batching::epoch_batches;
use super::checkpoint::{load_training_checkpoint, save_training_checkpoint, TrainerState};
use super::metrics::MetricsLog;
use super::objective::{Objective, PairStats, PendingStats, Split};
use super::options::TrainOptions;
use super::run::{Curves, RunEnd, Stages};
use super::state::TrainState;
use super::trainer::RunSummary;
use crate::dist::group::Group;
use crate::model::weights::{save_model_into, SaveDtype};
use crate::ops::Backend;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// An optimiser step whose micro-batch metrics may still be on the device.
struct PendingStep<B: Backend> {
    step: usize,
    lr: f32,
    micro: Vec<PendingStats<B>>,
}

/// metrics.jsonl (a row per step) and eval.jsonl (a row per evaluation).
struct Logs {
    metrics: MetricsLog,
    eval: MetricsLog,
}

/// The offline trainer's state between the skeleton's calls.
pub struct Offline<'a, S: TrainState> {
    state: S,
    opts: &'a TrainOptions,
    objective: &'a dyn Objective<S::B>,
    train: Split<'a>,
    eval: Option<Split<'a>>,
    extra: Vec<(&'a str, &'a [u8])>,
    total_steps: usize,
    total_micro: usize,
    /// Micro-batches per optimiser step over all ranks: `--grad-accum` × ranks for a new run,
    /// the checkpoint's for a resumed one (which may run on another number of ranks).
    micro_per_step: usize,
    batches_per_epoch: usize,
    /// The current epoch's shuffled micro-batches.
    epoch_cache: Option<(usize, Vec<Vec<usize>>)>,
    /// Steps whose metrics are still on the device: they are read back together when the loop
    /// logs (on a GPU the loop's only host synchronisation), evaluates, saves or stops.
    pending: Vec<PendingStep<S::B>>,
    /// Start of the interval tokens/s is measured over (training only).
    since: Instant,
    logs: Option<Logs>,
    initial_eval: Option<PairStats>,
    final_eval: Option<PairStats>,
    /// The ranks a step's micro-batches are split over; rank 0 writes the logs and the model.
    group: Arc<Group>,
}

/// The run's optimiser steps: every micro-batch of every epoch, `micro_per_step` a step (the
/// last step takes what is left), or `--max-steps`.
fn steps_of(opts: &TrainOptions, total_micro: usize, micro_per_step: usize) -> usize {
    opts.run
        .max_steps
        .unwrap_or(usize::MAX)
        .min(total_micro.div_ceil(micro_per_step))
}

/// Sums `stats` over the ranks of `group`, every rank getting the totals.
fn sum_over_ranks(group: &Group, name: &str, stats: &[PairStats]) -> Result<Vec<PairStats>> {
    if group.size() == 1 {
        return Ok(stats.to_vec());
    }
    let mut flat: Vec<f64> = stats.iter().flat_map(PairStats::to_sums).collect();
    group.all_reduce_sum(name, &mut flat)?;
    Ok(flat
        .chunks_exact(PairStats::SUMS)
        .map(PairStats::from_sums)
        .collect())
}

impl<'a, S: TrainState> Offline<'a, S> {
    pub fn new(
        state: S,
        opts: &'a TrainOptions,
        objective: &'a dyn Objective<S::B>,
        train: Split<'a>,
        eval: Option<Split<'a>>,
        extra: &'a [(&'static str, Vec<u8>)],
        group: Arc<Group>,
    ) -> Result<Self> {
        // Exactly `epochs` passes over the data: the last optimiser step takes whatever
        // micro-batches are left, fewer than grad_accum × ranks when they do not divide evenly.
        let batches_per_epoch = train.pairs.len().div_ceil(opts.batch_size);
        let total_micro =
            crate::train::bounds::total_steps(opts.run.epochs, batches_per_epoch, "micro-batches")?;
        let micro_per_step = opts.grad_accum * group.size();
        Ok(Offline {
            state,
            opts,
            objective,
            train,
            eval,
            extra: extra.iter().map(|(n, b)| (*n, b.as_slice())).collect(),
            total_steps: steps_of(opts, total_micro, micro_per_step),
            total_micro,
            micro_per_step,
            batches_per_epoch,
            epoch_cache: None,
            pending: Vec::new(),
            since: Instant::now(),
            logs: None,
            initial_eval: None,
            final_eval: None,
            group,
        })
    }

    /// Micro-batches (counted over the run) per optimiser step, over all ranks.
    fn micro_per_step(&self) -> usize {
        self.micro_per_step
    }

    fn logs(&mut self) -> Result<&mut Logs> {
        self.logs
            .as_mut()
            .context("the run's logs are opened by begin")
    }

    /// The micro-batch `g` (counted over the whole run) of its epoch's shuffled order.
    fn micro_batch(&mut self, g: usize) -> Vec<usize> {
        let epoch = g / self.batches_per_epoch;
        if self.epoch_cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let order = epoch_batches(
                self.train.pairs,
                self.opts.batch_size,
                self.opts.run.seed,
                epoch,
            );
            self.epoch_cache = Some((epoch, order));
        }
        self.epoch_cache.as_ref().expect("set above").1[g % self.batches_per_epoch].clone()
    }

    /// The metrics row of step `step` (0-based): the short names, and TRL's (DPOTrainer,
    /// RewardTrainer) for the same values.
    fn metrics_row(
        &self,
        step: usize,
        lr: f32,
        stats: &PairStats,
        grad_norm: f32,
        tokens_per_s: f64,
    ) -> serde_json::Value {
        let epoch = ((step + 1) * self.micro_per_step()).min(self.total_micro) as f64
            / self.batches_per_epoch as f64;
        let mut row = json!({
            "step": step + 1, "epoch": epoch,
            "loss": stats.loss(), "accuracy": stats.accuracy(), "margin": stats.margin(),
            "chosen_reward": stats.chosen_reward(), "rejected_reward": stats.rejected_reward(),
            "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s, "pairs": stats.pairs,
            "rewards/chosen": stats.chosen_reward(), "rewards/rejected": stats.rejected_reward(),
            "rewards/accuracies": stats.accuracy(), "rewards/margins": stats.margin(),
            "learning_rate": lr,
        });
        if let Some((chosen, rejected)) = stats.policy_logps() {
            row["logps/chosen"] = json!(chosen);
            row["logps/rejected"] = json!(rejected);
        }
        row
    }

    /// The held-out loss and accuracy after `done` steps, logged to eval.jsonl. Each rank
    /// evaluates the chunks `rank, rank + ranks, ...`.
    fn run_eval(&mut self, done: usize) -> Result<Option<PairStats>> {
        let Some(split) = &self.eval else {
            return Ok(None);
        };
        let mut stats = PairStats::default();
        let idx: Vec<usize> = (0..split.pairs.len()).collect();
        let chunks: Vec<&[usize]> = idx.chunks(self.opts.batch_size).collect();
        let model = self.state.model();
        for c in self.group.rounds(chunks.len()) {
            match c {
                Some(c) => stats.add(&self.objective.evaluate(model, split, chunks[c])?),
                // Fully sharded, every forward gathers with the other ranks.
                None if model.in_lockstep() => model.idle_pass(None)?,
                None => {}
            }
        }
        let stats = sum_over_ranks(&self.group, "evaluation", &[stats])?.remove(0);
        self.logs()?
            .eval
            .write(&json!({"step": done, "eval_loss": stats.loss(),
            "eval_accuracy": stats.accuracy(), "eval_margin": stats.margin(),
            "eval_ties": stats.tie_rate()}))?;
        self.since = Instant::now(); // tokens/s counts training only
        Ok(Some(stats))
    }

    /// The evaluation a resumed run's first part made before training (eval.jsonl's step 0).
    fn first_eval_row(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.opts.run.out.join("eval.jsonl")).ok()?;
        let row: serde_json::Value = serde_json::from_str(text.lines().next()?).ok()?;
        (row["step"] == 0).then_some(row)
    }
}

impl<S: TrainState> Stages for Offline<'_, S> {
    type Summary = RunSummary;

    fn total_steps(&self) -> usize {
        self.total_steps
    }

    fn restore(&mut self, checkpoint: &Path) -> Result<usize> {
        let (_, host, saved) = load_training_checkpoint(checkpoint)
            .with_context(|| format!("resuming from {}", checkpoint.display()))?;
        // The global batch the run started with, whatever the number of ranks now.
        let per_step = saved.micro_batches_per_step.unwrap_or(self.opts.grad_accum);
        if per_step != self.micro_per_step && self.group.is_root() {
            eprintln!(
                "the run started with {per_step} micro-batches a step over all ranks; {} ranks continue it with the same global batch of {} pairs",
                self.group.size(),
                per_step * self.opts.batch_size
            );
        }
        self.micro_per_step = per_step;
        self.total_steps = steps_of(self.opts, self.total_micro, per_step);
        if saved.total_steps != self.total_steps {
            bail!(
                "{} does not match this run's data and options",
                checkpoint.display()
            );
        }
        self.state.restore(host)?;
        Ok(saved.next_step)
    }

    /// Both logs number a row by the steps done when it was written: evaluation before training
    /// is step 0, the first training step's row is step 1. A resume keeps the rows up to its
    /// checkpoint's step and rewrites the rest.
    fn begin(&mut self, start: usize) -> Result<()> {
        let out = &self.opts.run.out;
        let root = self.group.is_root();
        if root {
            let ranks = self.group.size();
            let per_rank = self.micro_per_step.div_ceil(ranks);
            eprintln!(
                "global batch: {} pairs per step ({} per micro-batch × {} micro-batches{}); {} steps",
                self.opts.batch_size * self.micro_per_step,
                self.opts.batch_size,
                self.micro_per_step,
                if ranks > 1 {
                    format!(" over {ranks} ranks, up to {per_rank} each")
                } else {
                    String::new()
                },
                self.total_steps
            );
        }
        self.logs = Some(Logs {
            metrics: MetricsLog::open_if(root, &out.join("metrics.jsonl"), start + 1)?,
            eval: MetricsLog::open_if(root, &out.join("eval.jsonl"), start + 1)?,
        });
        self.since = Instant::now();
        Ok(())
    }

    fn evaluate(&mut self, done: usize) -> Result<()> {
        if done == 0 {
            self.initial_eval = self.run_eval(0)?;
            if let Some(s) = self.initial_eval.as_ref().filter(|_| self.group.is_root()) {
                eprintln!(
                    "eval before training: loss {:.4}, accuracy {:.3} (ties {:.3}, counted as wrong)",
                    s.loss(),
                    s.accuracy(),
                    s.tie_rate()
                );
            }
        } else {
            self.run_eval(done)?;
        }
        Ok(())
    }

    fn step(&mut self, step: usize, lr: f32) -> Result<()> {
        let opts = self.opts;
        self.state.join_group(&self.group)?;
        self.state.zero_grads()?;
        // The step's micro-batches over all ranks, the same for any world size; this rank takes
        // every ranks-th of them. The loss is the mean over all of them.
        let per_step = self.micro_per_step();
        let micro = step * per_step..((step + 1) * per_step).min(self.total_micro);
        let scale = 1.0 / micro.len() as f32;
        let (rank, ranks) = (self.group.rank(), self.group.size());
        let mut micro_stats = Vec::with_capacity(opts.grad_accum);
        let mine: Vec<usize> = micro.clone().filter(|g| g % ranks == rank).collect();
        for (k, &g) in mine.iter().enumerate() {
            let idx = self.micro_batch(g);
            let (model, grads) = if k + 1 == mine.len() {
                self.state.model_and_last_grads(&self.group)?
            } else {
                self.state.model_and_grads()
            };
            micro_stats.push(
                self.objective
                    .accumulate(model, &self.train, &idx, scale, grads)?,
            );
        }
        // Fully sharded, a rank with fewer micro-batches this step still gathers and reduces
        // with the others, through a pass that adds nothing.
        if self.state.model().in_lockstep() {
            for _ in mine.len()..micro.len().div_ceil(ranks) {
                let (model, grads) = self.state.model_and_grads();
                model.idle_pass(Some(grads.buf))?;
            }
        }
        self.state.all_reduce_grads(&self.group)?;
        self.state.step(lr, opts.run.max_grad_norm)?;
        self.pending.push(PendingStep {
            step,
            lr,
            micro: micro_stats,
        });
        Ok(())
    }

    fn log(&mut self) -> Result<String> {
        let norms = self.state.take_grad_norms()?;
        anyhow::ensure!(
            norms.len() == self.pending.len(),
            "{} gradient norms for {} steps",
            norms.len(),
            self.pending.len()
        );
        let mut steps = Vec::with_capacity(self.pending.len());
        for p in std::mem::take(&mut self.pending) {
            let mut stats = PairStats::default();
            for m in p.micro {
                stats.add(&m.resolve(&self.state.model().backend)?);
            }
            steps.push((p.step, p.lr, stats));
        }
        // Every rank's share of each step, summed: the rows are the global batch's.
        let per_rank: Vec<PairStats> = steps.iter().map(|(_, _, s)| s.clone()).collect();
        let summed = sum_over_ranks(&self.group, "step metrics", &per_rank)?;
        for ((_, _, s), total) in steps.iter_mut().zip(summed) {
            *s = total;
        }
        // Tokens per second over the interval: the device has finished its steps by now.
        let interval_tokens: usize = steps.iter().map(|(_, _, s)| s.tokens).sum();
        let tokens_per_s = interval_tokens as f64 / self.since.elapsed().as_secs_f64();
        self.since = Instant::now();
        for ((step, lr, stats), grad_norm) in steps.iter().zip(norms) {
            if !stats.loss().is_finite() {
                let last = crate::model::weights::resolve_checkpoint_dir(
                    &self.opts.run.out.join("checkpoint"),
                );
                bail!(
                    "step {}: the loss is {} (not finite); {}",
                    step + 1,
                    stats.loss(),
                    if last.join("config.json").is_file() {
                        format!("the last checkpoint is in {}", last.display())
                    } else {
                        "no checkpoint was saved before it".to_string()
                    }
                );
            }
            let row = self.metrics_row(*step, *lr, stats, grad_norm, tokens_per_s);
            self.logs()?.metrics.write(&row)?;
        }
        let Some((_, lr, stats)) = steps.last() else {
            return Ok(String::new());
        };
        Ok(format!(
            "loss {:.4}, accuracy {:.3}, lr {lr:.3e}, {tokens_per_s:.0} tokens/s",
            stats.loss(),
            stats.accuracy(),
        ))
    }

    /// Rank 0 writes the checkpoint (gathered from the ranks' slices under --shard optimizer);
    /// the others wait until it is whole, so none exits before it is.
    fn save(&mut self, checkpoint: &Path, next_step: usize) -> Result<()> {
        let Some(host) = self.state.gather_state(&self.group, false)? else {
            self.group.barrier("checkpoint saved")?;
            self.since = Instant::now();
            return Ok(());
        };
        let position = TrainerState {
            next_step,
            total_steps: self.total_steps,
            adam_t: host.t,
            micro_batches_per_step: Some(self.micro_per_step),
        };
        save_training_checkpoint(
            checkpoint,
            &self.state.model().cfg,
            &host,
            &position,
            &self.extra,
        )?;
        self.group.barrier("checkpoint saved")?;
        self.since = Instant::now(); // tokens/s counts training only
        Ok(())
    }

    fn finish(&mut self, end: RunEnd) -> Result<RunSummary> {
        let resumed_initial = match &self.initial_eval {
            Some(_) => None,
            None => self.first_eval_row(),
        };
        let initial = |key: &str, stats: fn(&PairStats) -> f64| {
            self.initial_eval
                .as_ref()
                .map(stats)
                .or_else(|| resumed_initial.as_ref().and_then(|r| r[key].as_f64()))
        };
        let mut summary = RunSummary {
            initial_eval_accuracy: initial("eval_accuracy", PairStats::accuracy),
            initial_eval_ties: initial("eval_ties", PairStats::tie_rate),
            train_pairs: self.train.pairs.len(),
            ..RunSummary::default()
        };
        if end.stopped_early {
            return Ok(summary);
        }
        if let Some(host) = self.state.gather_state(&self.group, false)? {
            save_model_into(
                &self.opts.run.out,
                &self.state.model().cfg,
                &host.params,
                SaveDtype::F32,
                &self.extra,
            )?;
        }
        self.final_eval = self.run_eval(end.steps)?;
        if let Some(s) = &self.final_eval {
            if self.group.is_root() {
                eprintln!(
                    "eval after training: loss {:.4}, accuracy {:.3}",
                    s.loss(),
                    s.accuracy()
                );
            }
            summary.final_eval_accuracy = Some(s.accuracy());
            summary.final_eval_ties = Some(s.tie_rate());
            summary.final_eval_loss = Some(s.loss());
        }
        summary.steps = end.steps;
        Ok(summary)
    }

    fn curves(&self) -> Curves {
        Curves {
            keys: &["loss", "accuracy", "margin", "lr"],
            label: self.opts.kind.label().to_string(),
        }
    }
}
