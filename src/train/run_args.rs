//! The options every trainer (`rm`, `dpo`, `ppo`) takes, written once and flattened into each
//! trainer's arguments: the run folder, the optimiser and its schedule, the run's length and
//! cadence, the device, and how the run starts (`--config`, `--resume`, `--overwrite`).
//!
//! Every field is optional so that a flag, a `--config` key, a resumed run's run.toml and a
//! default can be told apart (src/train/layered_options.rs layers them); the defaults live in each
//! trainer's `defaults`, over [`RunArgs::common_defaults`].

use crate::ops::Device;
use crate::train::bounds::whole_number;
use crate::train::schedule::{Decay, Schedule};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What a data-parallel rank keeps of the training state (`--shard`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shard {
    /// A whole copy on every rank (DDP).
    None,
    /// The fp32 master weights and AdamW moments split over the ranks (ZeRO-1).
    Optimizer,
    /// The bf16 weights, the gradients, the masters and the moments split over the ranks
    /// (FSDP, ZeRO-3): each layer is gathered just before it runs.
    Full,
}

#[derive(clap::Args, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunArgs {
    /// The run folder: the trained model at its root (HF files), checkpoint/, metrics.jsonl,
    /// curves.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Peak learning rate (AdamW), reached after the warm-up, then shaped by --decay.
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    /// Passes over the training data, when --max-steps is not given.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub epochs: Option<usize>,
    /// Stop after this many optimiser steps; the schedule is laid out over them.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub max_steps: Option<usize>,
    /// Fraction of the steps over which the learning rate rises linearly from 0: W = ⌈steps ×
    /// ratio⌉ warm-up steps, step t < W at lr·t/W (the first step's rate is 0), as transformers'
    /// schedules.
    #[arg(long, allow_negative_numbers = true)]
    pub warmup_ratio: Option<f64>,
    /// The learning rate's shape after the warm-up.
    #[arg(long, value_enum)]
    pub decay: Option<Decay>,
    /// AdamW's decoupled weight decay (never on norms or biases).
    #[arg(long, allow_negative_numbers = true)]
    pub weight_decay: Option<f32>,
    /// Global gradient-norm clip (0 turns it off).
    #[arg(long, allow_negative_numbers = true)]
    pub max_grad_norm: Option<f32>,
    /// Keep only each layer's input through the forward and recompute the rest in the backward:
    /// far less activation memory for about a third more compute; the same gradients.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub recompute: Option<bool>,
    /// Over several ranks: gradients are summed in buckets of at least this many MiB (fp32),
    /// each started as soon as the backward has finished it, overlapping the rest of the backward
    /// (DDP's bucket_cap_mb, same default); 0: a bucket per layer.
    #[arg(long, allow_negative_numbers = true)]
    pub bucket_mb: Option<f64>,
    /// Over several GPU ranks: `optimizer` splits the fp32 master weights and AdamW's moments
    /// (12 of the 18 bytes a parameter) over the ranks, each updating its slice and sending its
    /// bf16 weights to the others (ZeRO-1; gradients are still summed whole); `full` (FSDP,
    /// ZeRO-3; dpo and rm) splits the bf16 weights and gradients too, gathering each layer just
    /// before it runs and reduce-scattering its gradients; `none` keeps a whole copy on every
    /// rank (DDP). `prefer bench train --plan-only --world-size N --shard S` prints one rank's
    /// bytes.
    #[arg(long, value_enum)]
    pub shard: Option<Shard>,
    /// Seed of the data order.
    #[arg(long, value_parser = crate::train::bounds::seed, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// cpu, cuda, emu (the software GPU) or auto.
    #[arg(long, value_enum, env = "PREFER_DEVICE")]
    pub device: Option<Device>,
    /// Write a resumable checkpoint every N optimiser steps.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub save_every: Option<usize>,
    /// When stderr is not a terminal (a log file, CI, Slurm): a plain progress line every N steps
    /// [default: about 20 lines a run].
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub log_every: Option<usize>,

    /// A TOML file with any of the options (keys are the flags' names).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Continue the run in this folder where it stopped, with its saved options.
    #[arg(long)]
    #[serde(skip)]
    pub resume: Option<PathBuf>,
    /// Replace the earlier run in --out: its own files (checkpoint, logs, models) are removed
    /// first, and nothing else in the folder is touched.
    #[arg(long)]
    #[serde(skip)]
    pub overwrite: bool,
    /// Stop (with a checkpoint) after this many steps, as Ctrl-C would: for testing resumes.
    #[arg(long, hide = true, value_parser = whole_number, allow_negative_numbers = true)]
    #[serde(skip)]
    pub stop_after: Option<usize>,
}

/// The shared options' help in an RL trainer's words: its step is an iteration (generate, score,
/// optimise), and its data are prompts.
pub fn in_rl_words(cmd: clap::Command) -> clap::Command {
    [
        ("out", "The run folder: the trained policy at its root (HF files), the value model in value/ (--algo ppo), checkpoint/, metrics.jsonl, curves.png"),
        ("epochs", "Passes over the prompts, when --max-steps is not given"),
        ("max_steps", "Stop after this many iterations (rollouts, then PPO epochs over them); the schedule is laid out over them"),
        ("seed", "Seed of the prompt order and of the sampling"),
        ("save_every", "Write a resumable checkpoint every N iterations"),
        ("log_every", "When stderr is not a terminal (a log file, CI, Slurm): a plain progress line every N iterations [default: about 20 lines a run]"),
    ]
    .into_iter()
    .fold(cmd, |cmd, (id, text)| cmd.mut_arg(id, |a| a.help(text)))
}

/// A default as `--help` shows it: strings bare, and f32 options in their shortest form (1e-5,
/// not 9.999999747378752e-6).
pub fn shown_default(v: &toml::Value) -> String {
    match v {
        toml::Value::Float(f) => {
            let x = *f as f32;
            if x != 0.0 && x.abs() < 1e-3 {
                format!("{x:e}")
            } else {
                x.to_string()
            }
        }
        toml::Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

impl RunArgs {
    /// The defaults every trainer shares; each trainer's `defaults` adds its learning rate,
    /// epochs, warm-up and checkpoint cadence. Transformers' `TrainingArguments` where it has
    /// one: linear decay, no weight decay, gradients clipped at norm 1.
    pub fn common_defaults() -> RunArgs {
        RunArgs {
            warmup_ratio: Some(0.0),
            decay: Some(Decay::Linear),
            weight_decay: Some(0.0),
            max_grad_norm: Some(1.0),
            recompute: Some(false),
            bucket_mb: Some(25.0),
            shard: Some(Shard::None),
            seed: Some(0),
            device: Some(Device::Auto),
            ..RunArgs::default()
        }
    }

    /// The fields a run does not save (they say how this process starts, not what the run is),
    /// carried from `from` onto options rebuilt from saved ones.
    pub fn carry_unsaved(&mut self, from: &RunArgs) {
        self.config.clone_from(&from.config);
        self.resume.clone_from(&from.resume);
        self.overwrite = from.overwrite;
        self.stop_after = from.stop_after;
    }
}

/// The concrete shared options of a run, every default filled in.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub out: PathBuf,
    pub lr: f32,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub warmup_ratio: f64,
    pub decay: Decay,
    pub weight_decay: f32,
    pub max_grad_norm: f32,
    pub recompute: bool,
    pub bucket_mb: f64,
    pub shard: Shard,
    pub seed: u64,
    pub device: Device,
    pub save_every: usize,
    pub log_every: Option<usize>,
    pub resume: bool,
    pub stop_after: Option<usize>,
}

impl RunOptions {
    /// `a` with its defaults merged in (every field but the optional ones set); `--out` is
    /// required.
    pub fn from_args(a: &RunArgs) -> anyhow::Result<RunOptions> {
        use anyhow::Context;
        let given = "set by the trainer's defaults";
        let opts = RunOptions {
            out: a.out.clone().context("--out is required")?,
            lr: a.lr.expect(given),
            epochs: a.epochs.expect(given),
            max_steps: a.max_steps,
            warmup_ratio: a.warmup_ratio.expect(given),
            decay: a.decay.expect(given),
            weight_decay: a.weight_decay.expect(given),
            max_grad_norm: a.max_grad_norm.expect(given),
            recompute: a.recompute.expect(given),
            bucket_mb: a.bucket_mb.expect(given),
            shard: a.shard.expect(given),
            seed: a.seed.expect(given),
            device: a.device.expect(given),
            save_every: a.save_every.expect(given),
            log_every: a.log_every,
            resume: a.resume.is_some(),
            stop_after: a.stop_after,
        };
        if opts.max_steps == Some(0) {
            anyhow::bail!("--max-steps 0 would train nothing; give at least 1 (or leave it out)");
        }
        opts.check_ranges()?;
        Ok(opts)
    }

    /// The learning-rate schedule over a run of `total_steps`: the one every trainer takes.
    pub fn schedule(&self, total_steps: usize) -> Schedule {
        Schedule::new(self.lr, self.warmup_ratio, total_steps, self.decay)
    }

    /// The run's length: --max-steps, else `epochs` passes of `per_epoch` steps.
    pub fn total_steps(&self, per_epoch: usize, unit: &str) -> anyhow::Result<usize> {
        match self.max_steps {
            Some(n) => Ok(n),
            None => crate::train::bounds::total_steps(self.epochs, per_epoch, unit),
        }
    }

    /// Every shared numeric option against its allowed range, whether it came from a flag,
    /// `--config` or a resumed run's run.toml.
    fn check_ranges(&self) -> anyhow::Result<()> {
        use crate::train::bounds::{check_all, Bound::*, FloatRange as R, BIG};
        let optional = |v: Option<usize>| v.unwrap_or(1);
        check_all(&[
            Int("--epochs", self.epochs, 1..=1_000_000),
            Int("--max-steps", optional(self.max_steps), 1..=BIG),
            Int("--save-every", self.save_every, 1..=BIG),
            Int("--log-every", optional(self.log_every), 1..=BIG),
            Int("--stop-after", optional(self.stop_after), 1..=BIG),
            Float("--lr", self.lr, crate::train::bounds::LR_RANGE),
            // f64 for the schedule's ceil (as Python's); the range check's f32 keeps NaN and inf.
            Float(
                "--warmup-ratio",
                self.warmup_ratio as f32,
                R::closed_open(0.0, 1.0),
            ),
            Float("--weight-decay", self.weight_decay, R::closed(0.0, 10.0)),
            Float("--max-grad-norm", self.max_grad_norm, R::closed(0.0, 1e9)),
            Float("--bucket-mb", self.bucket_mb as f32, R::closed(0.0, 1e6)),
        ])
    }

    /// Whether the GPU trainer's whole state (`--shard full`) is split over `group`'s ranks.
    pub fn fully_sharded(&self, group: &crate::dist::group::Group) -> bool {
        self.shard == Shard::Full && group.size() > 1
    }

    /// This rank and the world under `--shard optimizer` over several ranks; None otherwise.
    pub fn optimizer_shard(&self, group: &crate::dist::group::Group) -> Option<(usize, usize)> {
        (self.shard == Shard::Optimizer && group.size() > 1).then(|| (group.rank(), group.size()))
    }

    /// `--shard optimizer` splits the GPU trainer's state; the CPU trainer (f32 weights, the
    /// oracle) keeps it whole.
    pub fn refuse_shard_on_cpu(&self) -> anyhow::Result<()> {
        if self.shard != Shard::None {
            anyhow::bail!(
                "--shard {} splits the GPU trainer's state over the ranks; the CPU trainer keeps it \
                 whole: use --device cuda (or emu), or --shard none",
                match self.shard {
                    Shard::Full => "full",
                    _ => "optimizer",
                }
            );
        }
        Ok(())
    }

    /// --bucket-mb as a count of fp32 gradient values.
    pub fn bucket_values(&self) -> usize {
        (self.bucket_mb * (1u64 << 20) as f64 / 4.0) as usize
    }
}
