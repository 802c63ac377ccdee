//! The options every offline trainer takes, from flags or a TOML file (`--config run.toml`, whose
//! keys are the flags' names); flags override the file, and the file overrides the defaults.

use crate::data::preference::{DataOptions, Overflow};
use crate::loss::{DpoConfig, DpoLoss};
use crate::ops::Device;
use crate::train::bounds::whole_number;
use crate::train::schedule::Decay;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Every flag is optional here so that a flag, a config key and a default can be told apart.
#[derive(clap::Args, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TrainArgs {
    /// The starting checkpoint (an HF Llama folder).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Preference JSONL for training.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Held-out preference JSONL, evaluated at the start, every --eval-every steps and at the end.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// The run folder: the final model (HF files at its root), checkpoint/, metrics.jsonl, curves.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Peak learning rate (AdamW), reached after the warm-up.
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    /// Passes over the training data.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub epochs: Option<usize>,
    /// Stop after this many optimiser steps (the schedule is laid out over them).
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub max_steps: Option<usize>,
    /// Pairs per micro-batch.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimiser step.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub grad_accum: Option<usize>,
    /// Fraction of the steps over which the learning rate rises linearly from 0: W = ⌈steps ×
    /// ratio⌉ warm-up steps, step t < W at lr·t/W (the first step's rate is 0), as transformers'
    /// schedules.
    #[arg(long, allow_negative_numbers = true)]
    pub warmup_ratio: Option<f64>,
    /// The learning rate's shape after the warm-up.
    #[arg(long, value_enum)]
    pub decay: Option<Decay>,
    /// AdamW's decoupled weight decay.
    #[arg(long, allow_negative_numbers = true)]
    pub weight_decay: Option<f32>,
    /// Global gradient-norm clip (0 turns it off).
    #[arg(long, allow_negative_numbers = true)]
    pub max_grad_norm: Option<f32>,
    /// Keep only each layer's input through the forward and recompute the rest in the backward:
    /// far less activation memory for about a third more compute; the same gradients.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub recompute: Option<bool>,
    /// Seed of the data order.
    #[arg(long, value_parser = crate::train::bounds::seed, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// cpu, cuda, emu (the software GPU) or auto
    #[arg(long, value_enum, env = "PREFER_DEVICE")]
    pub device: Option<Device>,
    /// Write a resumable checkpoint every N optimiser steps.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub save_every: Option<usize>,
    /// Evaluate on --eval-data every N optimiser steps (0: only at the start and the end).
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub eval_every: Option<usize>,
    /// When stderr is not a terminal (a log file, CI, Slurm): a plain progress line every N steps
    /// [default: about 20 lines a run].
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub log_every: Option<usize>,
    /// Longest prompt, in tokens.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub max_prompt_len: Option<usize>,
    /// Longest prompt + response, in tokens.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub max_len: Option<usize>,
    /// What to do with pairs over the length limits.
    #[arg(long, value_enum)]
    pub overflow: Option<Overflow>,
    /// Count and report bad JSONL lines instead of stopping at the first.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub skip_bad: Option<bool>,
    /// Render a string "prompt" as a user turn of the model's chat template (else the Tulu format
    /// `<|user|>\n…\n<|assistant|>\n`), as the paper's Tulu data needs. Off, string prompts and
    /// responses are read raw, as TRL reads them; message lists are always templated.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub chat_template: Option<bool>,
    /// DPO: the loss.
    #[arg(long, value_enum)]
    pub loss: Option<DpoLoss>,
    /// DPO: β.
    #[arg(long, allow_negative_numbers = true)]
    pub beta: Option<f32>,
    /// DPO: label smoothing ε (conservative DPO).
    #[arg(long, allow_negative_numbers = true)]
    pub label_smoothing: Option<f32>,
    /// DPO: SimPO's target margin γ.
    #[arg(long, allow_negative_numbers = true)]
    pub simpo_gamma: Option<f32>,
    /// DPO: compare per-token means of the response log-probs instead of sums, for every loss
    /// (`--loss ipo --average-logps` is TRL's IPO; `--loss sigmoid --average-logps` is
    /// open-instruct's dpo_norm). SimPO always averages: it is a no-op there, and `false` an error.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub average_logps: Option<bool>,
    /// DPO: where reference log-probs are cached (default: ~/.cache/prefer/reference).
    #[arg(long)]
    pub ref_cache_dir: Option<PathBuf>,

    /// A TOML file with any of the options above.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Continue the run in this folder where it stopped, with its saved options.
    #[arg(long)]
    #[serde(skip)]
    pub resume: Option<PathBuf>,
    /// Replace the earlier run in --out: its own files (checkpoint, logs, model) are removed
    /// first, and nothing else in the folder is touched.
    #[arg(long)]
    #[serde(skip)]
    pub overwrite: bool,
    /// Stop (with a checkpoint) after this many steps, as Ctrl-C would: for testing resumes.
    #[arg(long, hide = true, value_parser = whole_number, allow_negative_numbers = true)]
    #[serde(skip)]
    pub stop_after: Option<usize>,
    /// Which trainer wrote the run (recorded in run.toml, so a resume can check it).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainer: Option<TrainerKind>,
}

/// Which trainer the defaults are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainerKind {
    RewardModel,
    Dpo,
}

impl TrainerKind {
    /// The subcommand that runs it: `prefer rm`, `prefer dpo`.
    pub fn command(self) -> &'static str {
        match self {
            TrainerKind::RewardModel => "rm",
            TrainerKind::Dpo => "dpo",
        }
    }
    /// What it trains, for people: "reward model", "DPO".
    pub fn label(self) -> &'static str {
        match self {
            TrainerKind::RewardModel => "reward model",
            TrainerKind::Dpo => "DPO",
        }
    }
}

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub kind: TrainerKind,
    pub model: PathBuf,
    pub data: PathBuf,
    pub eval_data: Option<PathBuf>,
    pub out: PathBuf,
    pub lr: f32,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub warmup_ratio: f64,
    pub decay: Decay,
    pub weight_decay: f32,
    pub max_grad_norm: f32,
    pub recompute: bool,
    pub seed: u64,
    pub device: Device,
    pub save_every: usize,
    pub eval_every: usize,
    pub log_every: Option<usize>,
    pub data_opts: DataOptions,
    pub dpo: DpoConfig,
    pub ref_cache_dir: PathBuf,
    pub stop_after: Option<usize>,
}

/// Fills every field of `a` that is unset from `b`.
fn merge(a: TrainArgs, b: TrainArgs) -> TrainArgs {
    macro_rules! pick {
        ($($f:ident),*) => { TrainArgs { $($f: a.$f.or(b.$f),)* config: a.config, resume: a.resume, overwrite: a.overwrite, stop_after: a.stop_after, trainer: a.trainer.or(b.trainer) } };
    }
    pick!(
        model,
        data,
        eval_data,
        out,
        lr,
        epochs,
        max_steps,
        batch_size,
        grad_accum,
        warmup_ratio,
        decay,
        weight_decay,
        max_grad_norm,
        recompute,
        seed,
        device,
        save_every,
        eval_every,
        max_prompt_len,
        max_len,
        overflow,
        skip_bad,
        chat_template,
        loss,
        beta,
        label_smoothing,
        simpo_gamma,
        average_logps,
        ref_cache_dir,
        log_every
    )
}

pub fn read_toml(path: &Path) -> Result<TrainArgs> {
    Ok(crate::train::run_folder::read_options_toml(path)?.0)
}

impl TrainArgs {
    /// Every option's default for `kind`: what `resolve` falls back on and what `--help` shows.
    /// Options with no default (the paths, --eval-data, --max-steps, --log-every) stay unset.
    pub fn defaults(kind: TrainerKind) -> TrainArgs {
        let (lr, epochs, warmup) = match kind {
            // The paper's settings: RM lr 1e-5 for 1 epoch; DPO lr 5e-7, 3 epochs, 10% warm-up.
            TrainerKind::RewardModel => (1e-5, 1, 0.0),
            TrainerKind::Dpo => (5e-7, 3, 0.1),
        };
        let dpo = DpoConfig::default();
        let data = DataOptions::default();
        TrainArgs {
            lr: Some(lr),
            epochs: Some(epochs),
            batch_size: Some(8),
            grad_accum: Some(4),
            warmup_ratio: Some(warmup),
            decay: Some(Decay::Linear),
            weight_decay: Some(0.0),
            max_grad_norm: Some(1.0),
            recompute: Some(false),
            seed: Some(0),
            device: Some(Device::Auto),
            save_every: Some(500),
            eval_every: Some(0),
            max_prompt_len: Some(data.max_prompt_len),
            max_len: Some(data.max_len),
            overflow: Some(data.overflow),
            skip_bad: Some(data.skip_bad),
            chat_template: Some(data.chat_template),
            loss: Some(dpo.loss),
            beta: Some(dpo.beta),
            label_smoothing: Some(dpo.label_smoothing),
            simpo_gamma: Some(dpo.simpo_gamma),
            average_logps: Some(dpo.average_logps),
            ref_cache_dir: Some(default_cache_dir()),
            ..TrainArgs::default()
        }
    }

    /// The DPO-only options, which `prefer rm` neither shows nor takes.
    pub const DPO_ONLY: [&'static str; 6] = [
        "loss",
        "beta",
        "label_smoothing",
        "simpo_gamma",
        "average_logps",
        "ref_cache_dir",
    ];

    /// Flags over `--config` over the saved options of a resumed run.
    pub fn with_files(self) -> Result<TrainArgs> {
        let mut args = self;
        if let Some(run) = &args.resume {
            // A resumed run continues with the options it was started with: a changed option would
            // silently change the run without run.toml recording it.
            let given = toml::Value::try_from(&args)?;
            let changed: Vec<String> = given
                .as_table()
                .map(|t| {
                    t.keys()
                        .filter(|k| !matches!(k.as_str(), "device" | "ref-cache-dir"))
                        .map(|k| format!("--{k}"))
                        .collect()
                })
                .unwrap_or_default();
            if !changed.is_empty() || args.config.is_some() {
                bail!(
                    "--resume continues {} with the options saved in its run.toml; drop {} (only --device may change), or start a new run",
                    run.display(),
                    if changed.is_empty() { "--config".to_string() } else { changed.join(", ") }
                );
            }
        }
        if let Some(cfg) = args.config.clone() {
            args = merge(args, read_toml(&cfg)?);
        }
        if let Some(run) = args.resume.clone() {
            let saved = run.join("run.toml");
            args = merge(
                args,
                read_toml(&saved).context("--resume needs the run folder of an earlier run")?,
            );
            args.out = Some(run);
        }
        Ok(args)
    }

    /// Concrete options: what is still unset takes the trainer's defaults. Call after
    /// [`Self::with_files`].
    pub fn resolve(self, kind: TrainerKind) -> Result<TrainOptions> {
        let a = self;
        if let Some(saved) = a.trainer.filter(|t| *t != kind) {
            bail!(
                "{} is a {} run: continue it with prefer {} --resume",
                a.out.as_deref().unwrap_or(Path::new(".")).display(),
                saved.label(),
                saved.command()
            );
        }
        if a.max_steps == Some(0) {
            bail!("--max-steps 0 would train nothing; give at least 1 (or leave it out)");
        }
        let need =
            |p: Option<PathBuf>, flag: &str| p.with_context(|| format!("--{flag} is required"));
        if kind == TrainerKind::RewardModel
            && (a.loss.is_some()
                || a.beta.is_some()
                || a.label_smoothing.is_some()
                || a.simpo_gamma.is_some()
                || a.average_logps.is_some())
        {
            bail!("--loss, --beta, --label-smoothing, --simpo-gamma and --average-logps are DPO options; the reward model trains with the Bradley-Terry loss");
        }
        if a.loss == Some(DpoLoss::Simpo) && a.average_logps == Some(false) {
            bail!("--loss simpo is defined on averaged log-probs; drop --average-logps false");
        }
        let a = merge(a, TrainArgs::defaults(kind));
        let given = "set by TrainArgs::defaults";
        let opts = TrainOptions {
            kind,
            model: need(a.model, "model")?,
            data: need(a.data, "data")?,
            eval_data: a.eval_data,
            out: need(a.out, "out")?,
            lr: a.lr.expect(given),
            epochs: a.epochs.expect(given),
            max_steps: a.max_steps,
            batch_size: a.batch_size.expect(given),
            grad_accum: a.grad_accum.expect(given),
            warmup_ratio: a.warmup_ratio.expect(given),
            decay: a.decay.expect(given),
            weight_decay: a.weight_decay.expect(given),
            max_grad_norm: a.max_grad_norm.expect(given),
            recompute: a.recompute.expect(given),
            seed: a.seed.expect(given),
            device: a.device.expect(given),
            save_every: a.save_every.expect(given),
            eval_every: a.eval_every.expect(given),
            log_every: a.log_every,
            data_opts: DataOptions {
                max_prompt_len: a.max_prompt_len.expect(given),
                max_len: a.max_len.expect(given),
                overflow: a.overflow.expect(given),
                skip_bad: a.skip_bad.expect(given),
                chat_template: a.chat_template.expect(given),
            },
            dpo: DpoConfig {
                loss: a.loss.expect(given),
                beta: a.beta.expect(given),
                label_smoothing: a.label_smoothing.expect(given),
                simpo_gamma: a.simpo_gamma.expect(given),
                average_logps: a.average_logps.expect(given),
            },
            ref_cache_dir: a.ref_cache_dir.expect(given),
            stop_after: a.stop_after,
        };
        opts.check_ranges()?;
        if opts.data_opts.max_prompt_len >= opts.data_opts.max_len {
            bail!(
                "--max-prompt-len ({}) must be below --max-len ({}) to leave room for a response",
                opts.data_opts.max_prompt_len,
                opts.data_opts.max_len
            );
        }
        Ok(opts)
    }
}

impl TrainOptions {
    /// Every numeric option against its allowed range (one table), whether it came from a flag,
    /// `--config` or a resumed run's run.toml.
    fn check_ranges(&self) -> Result<()> {
        use crate::train::bounds::{check_all, Bound::*, FloatRange as R};
        const BIG: usize = 1_000_000_000;
        let optional = |v: Option<usize>| v.unwrap_or(1);
        check_all(&[
            Int("--epochs", self.epochs, 1..=1_000_000),
            Int("--max-steps", optional(self.max_steps), 1..=BIG),
            Int("--batch-size", self.batch_size, 1..=65_536),
            Int("--grad-accum", self.grad_accum, 1..=65_536),
            Int("--save-every", self.save_every, 1..=BIG),
            Int("--eval-every", self.eval_every, 0..=BIG),
            Int("--log-every", optional(self.log_every), 1..=BIG),
            Int(
                "--max-prompt-len",
                self.data_opts.max_prompt_len,
                1..=MAX_TOKENS,
            ),
            Int("--max-len", self.data_opts.max_len, 2..=MAX_TOKENS),
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
            Float("--beta", self.dpo.beta, R::open_closed(0.0, 1e3)),
            Float(
                "--label-smoothing",
                self.dpo.label_smoothing,
                R::closed_open(0.0, 0.5),
            ),
            Float("--simpo-gamma", self.dpo.simpo_gamma, R::closed(-1e3, 1e3)),
        ])
    }
}

/// The longest sequence, in tokens, any length option may ask for (16M): far past any model's
/// context, and small enough that sizes computed from it cannot overflow.
pub const MAX_TOKENS: usize = 1 << 24;

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("prefer").join("reference")
}
