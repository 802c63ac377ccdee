//! The offline trainers' (`rm`, `dpo`) options: the shared ones (src/train/run_args.rs) and
//! their own, layered (flags, `--config`, run.toml, defaults) by src/train/layered_options.rs.

use crate::data::preference::{DataOptions, Overflow};
use crate::loss::{DpoConfig, DpoLoss};
use crate::train::bounds::whole_number;
use crate::train::layered_options::TrainerArgs;
use crate::train::run_args::{RunArgs, RunOptions};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Every flag is optional here so that a flag, a config key, a resumed run's value and a default
/// can be told apart.
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
    /// The options every trainer takes: run folder, optimiser, schedule, cadence, device, seed.
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
    /// Pairs per micro-batch.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimiser step (an optimiser step sees --batch-size × --grad-accum
    /// pairs).
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub grad_accum: Option<usize>,
    /// Evaluate on --eval-data every N optimiser steps (0: only at the start and the end).
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub eval_every: Option<usize>,
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
    pub run: RunOptions,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub eval_every: usize,
    pub data_opts: DataOptions,
    /// DPO's loss and where its reference log-probs are cached (None for the reward model).
    pub dpo: Option<DpoOptions>,
}

#[derive(Clone, Debug)]
pub struct DpoOptions {
    pub config: DpoConfig,
    pub ref_cache_dir: PathBuf,
}

impl TrainerArgs for TrainArgs {
    fn command(&self) -> String {
        match self.trainer {
            Some(kind) => format!("prefer {}", kind.command()),
            None => "prefer rm or prefer dpo".to_string(),
        }
    }
    fn run(&self) -> &RunArgs {
        &self.run
    }
    fn run_mut(&mut self) -> &mut RunArgs {
        &mut self.run
    }
    /// The defaults of the trainer recorded in `trainer` (set before the defaults are needed).
    fn defaults(&self) -> TrainArgs {
        TrainArgs::defaults(
            self.trainer
                .expect("the trainer is set before its defaults"),
        )
    }
    fn may_change_on_resume(&self) -> &'static [&'static str] {
        &["device", "bucket-mb", "shard", "ref-cache-dir"]
    }
    fn paths_mut(&mut self) -> Vec<&mut Option<PathBuf>> {
        vec![
            &mut self.model,
            &mut self.data,
            &mut self.eval_data,
            &mut self.run.out,
            &mut self.ref_cache_dir,
        ]
    }
}

impl TrainArgs {
    /// Every option's default for `kind`: what `resolve` falls back on, what run.toml records and
    /// what `--help` shows. Options with no default (the paths, --eval-data, --max-steps,
    /// --log-every) stay unset, and so do DPO's options for the reward model.
    pub fn defaults(kind: TrainerKind) -> TrainArgs {
        let (lr, epochs, warmup) = match kind {
            // The paper's settings: RM lr 1e-5 for 1 epoch; DPO lr 5e-7, 3 epochs, 10% warm-up.
            TrainerKind::RewardModel => (1e-5, 1, 0.0),
            TrainerKind::Dpo => (5e-7, 3, 0.1),
        };
        let data = DataOptions::default();
        let mut args = TrainArgs {
            run: RunArgs {
                lr: Some(lr),
                epochs: Some(epochs),
                warmup_ratio: Some(warmup),
                save_every: Some(500),
                ..RunArgs::common_defaults()
            },
            batch_size: Some(8),
            grad_accum: Some(4),
            eval_every: Some(0),
            max_prompt_len: Some(data.max_prompt_len),
            max_len: Some(data.max_len),
            overflow: Some(data.overflow),
            skip_bad: Some(data.skip_bad),
            chat_template: Some(data.chat_template),
            trainer: Some(kind),
            ..TrainArgs::default()
        };
        if kind == TrainerKind::Dpo {
            let dpo = DpoConfig::default();
            args.loss = Some(dpo.loss);
            args.beta = Some(dpo.beta);
            args.label_smoothing = Some(dpo.label_smoothing);
            args.simpo_gamma = Some(dpo.simpo_gamma);
            args.average_logps = Some(dpo.average_logps);
            args.ref_cache_dir = Some(default_cache_dir());
        }
        args
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

    /// Concrete options: what is still unset takes the trainer's defaults. Call after
    /// [`TrainerArgs::with_files`].
    pub fn resolve(self, kind: TrainerKind) -> Result<TrainOptions> {
        let mut a = self;
        if let Some(saved) = a.trainer.filter(|t| *t != kind) {
            bail!(
                "{} is a {} run: continue it with prefer {} --resume",
                a.run.out.as_deref().unwrap_or(Path::new(".")).display(),
                saved.label(),
                saved.command()
            );
        }
        a.trainer = Some(kind);
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
        let a = a.with_defaults()?;
        let given = "set by TrainArgs::defaults";
        let model = need(a.model, "model")?;
        let data = need(a.data, "data")?;
        let dpo = match kind {
            TrainerKind::RewardModel => None,
            TrainerKind::Dpo => Some(DpoOptions {
                config: DpoConfig {
                    loss: a.loss.expect(given),
                    beta: a.beta.expect(given),
                    label_smoothing: a.label_smoothing.expect(given),
                    simpo_gamma: a.simpo_gamma.expect(given),
                    average_logps: a.average_logps.expect(given),
                },
                ref_cache_dir: a.ref_cache_dir.expect(given),
            }),
        };
        let opts = TrainOptions {
            kind,
            model,
            data,
            eval_data: a.eval_data,
            run: RunOptions::from_args(&a.run)?,
            batch_size: a.batch_size.expect(given),
            grad_accum: a.grad_accum.expect(given),
            eval_every: a.eval_every.expect(given),
            data_opts: DataOptions {
                max_prompt_len: a.max_prompt_len.expect(given),
                max_len: a.max_len.expect(given),
                overflow: a.overflow.expect(given),
                skip_bad: a.skip_bad.expect(given),
                chat_template: a.chat_template.expect(given),
            },
            dpo,
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
    /// Every offline-only numeric option against its allowed range (the shared ones are checked
    /// in [`RunOptions::from_args`]), whether it came from a flag, `--config` or run.toml.
    fn check_ranges(&self) -> Result<()> {
        use crate::train::bounds::{check_all, Bound::*, FloatRange as R, BIG};
        let mut table = vec![
            Int("--batch-size", self.batch_size, 1..=65_536),
            Int("--grad-accum", self.grad_accum, 1..=65_536),
            Int("--eval-every", self.eval_every, 0..=BIG),
            Int(
                "--max-prompt-len",
                self.data_opts.max_prompt_len,
                1..=MAX_TOKENS,
            ),
            Int("--max-len", self.data_opts.max_len, 2..=MAX_TOKENS),
        ];
        if let Some(dpo) = &self.dpo {
            let c = &dpo.config;
            table.extend([
                Float("--beta", c.beta, R::open_closed(0.0, 1e3)),
                Float(
                    "--label-smoothing",
                    c.label_smoothing,
                    R::closed_open(0.0, 0.5),
                ),
                Float("--simpo-gamma", c.simpo_gamma, R::closed(-1e3, 1e3)),
            ]);
        }
        check_all(&table)
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
