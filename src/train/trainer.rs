//! The offline training loop shared by the reward model and DPO: data, batching, accumulation,
//! clipping, AdamW, the schedule, evaluation, metrics, progress, checkpoints, resume and Ctrl-C.

use super::batching::epoch_batches;
use super::checkpoint::{
    load_training_checkpoint, read_trainer_state, save_training_checkpoint, TrainerState,
};
use super::dpo::DpoObjective;
use super::gpu_step::GpuTrainer;
use super::metrics::{plot_curves, MetricsLog};
use super::objective::{Objective, PairStats, PendingStats, Split};
use super::options::{TrainArgs, TrainOptions, TrainerKind};
use super::rm::RewardObjective;
use super::run_folder::{refuse_changed_run_inputs, write_run_toml, OpenRun};
use super::schedule::Schedule;
use super::state::{CpuState, TrainState};
use crate::data::chat_template::ChatTemplate;
use crate::data::preference::{load_preferences, DataOptions, Encoder, Overflow, PreferencePair};
use crate::data::tokenizer::TextTokenizer;
use crate::model::weights::{load_checkpoint, save_model_into, SaveDtype};
use crate::model::{Llama, LlamaConfig, ParamLayout};
use crate::ops::cuda::backend::Cuda;
use crate::ops::Device;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// An optimiser step whose micro-batch metrics may still be on the device.
struct PendingStep<B: crate::ops::Backend> {
    step: usize,
    lr: f32,
    micro: Vec<PendingStats<B>>,
}

/// What a finished (or stopped) run reports.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunSummary {
    pub steps: usize,
    pub stopped_early: bool,
    /// Stopped by a signal (SIGINT, SIGTERM, SIGHUP, SIGUSR1) after saving: the command then exits
    /// with 128 + the signal, as shells expect.
    pub interrupted: bool,
    pub initial_eval_accuracy: Option<f64>,
    /// Fraction of held-out pairs with a margin of exactly 0 before training (counted as wrong).
    pub initial_eval_ties: Option<f64>,
    pub final_eval_accuracy: Option<f64>,
    pub final_eval_ties: Option<f64>,
    pub final_eval_loss: Option<f64>,
    pub train_pairs: usize,
}

/// Files of the starting model's folder that travel with every checkpoint.
const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
];

/// The tokenizer files `dir` holds, read, to travel with every checkpoint written from it.
pub(crate) fn tokenizer_files(dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    TOKENIZER_FILES
        .iter()
        .filter_map(|&name| std::fs::read(dir.join(name)).ok().map(|b| (name, b)))
        .collect()
}

/// The step a finished run ended at: it has its final model and a checkpoint at the last step.
fn finished_run(out: &Path) -> Option<usize> {
    if !out.join("config.json").is_file() {
        return None;
    }
    let s = read_trainer_state(&out.join("checkpoint")).ok()?;
    (s.next_step >= s.total_steps).then_some(s.next_step)
}

pub fn run_training(args: TrainArgs, kind: TrainerKind) -> Result<RunSummary> {
    let resume = args.resume.is_some();
    let overwrite = args.overwrite;
    // From here on SIGINT, SIGTERM, SIGHUP and SIGUSR1 finish the step and save.
    crate::signals::install();
    let mut args = args.with_files()?;
    args.trainer.get_or_insert(kind); // a resumed run keeps the trainer that started it
    let opts = args.clone().resolve(kind)?;
    let ckpt_dir = opts.out.join("checkpoint");
    let inputs = [
        ("--model", Some(opts.model.as_path())),
        ("--data", Some(opts.data.as_path())),
        ("--eval-data", opts.eval_data.as_deref()),
    ];
    // Held until the run ends: a second run in the same folder fails at once.
    let _folder = OpenRun {
        out: &opts.out,
        resume,
        overwrite,
        inputs: &inputs,
        command: &format!("prefer {}", kind.command()),
    }
    .open()?;
    if resume {
        if let Some(done) = finished_run(&opts.out) {
            eprintln!(
                "the run in {} is finished (step {done}; the model is in {}); nothing to do",
                opts.out.display(),
                opts.out.display()
            );
            return Ok(RunSummary {
                steps: done,
                ..Default::default()
            });
        }
        if !crate::model::weights::resolve_checkpoint_dir(&ckpt_dir).exists() {
            bail!(
                "{} has run.toml but no checkpoint yet (it stopped before its first save); start it again with --overwrite",
                opts.out.display()
            );
        }
        refuse_changed_run_inputs(&opts.out, &inputs.map(|(_, p)| p))?;
    }

    // The starting model: the policy's initial weights and, for DPO, the frozen reference.
    let (base_cfg, base_params) = load_checkpoint(&opts.model)?;
    let cfg = trained_config(&base_cfg, kind, &opts.model)?;
    let start_params = relayout(&base_cfg, &base_params, &cfg);
    let tokenizer = TextTokenizer::load(&opts.model, &cfg)?;
    let template = ChatTemplate::for_model(&opts.model)?;
    let enc = Encoder {
        tokenizer: &tokenizer,
        template: &template,
        cfg: &cfg,
    };
    let (train, report) = load_preferences(&opts.data, &enc, &opts.data_opts)?;
    eprintln!("train data {}: {report}", opts.data.display());
    if train.is_empty() {
        bail!(
            "{}: no usable pairs ({} too long for --max-len {} / --max-prompt-len {}; --overflow truncate keeps them, cut to fit)",
            opts.data.display(),
            report.dropped_too_long,
            opts.data_opts.max_len,
            opts.data_opts.max_prompt_len
        );
    }
    let eval = match &opts.eval_data {
        Some(path) => {
            let (pairs, report) = load_preferences(path, &enc, &opts.data_opts)?;
            eprintln!("eval data {}: {report}", path.display());
            Some(pairs)
        }
        None => None,
    };
    // run.toml once the inputs have been read and found usable: a refused start leaves the
    // folder empty, free for the next try.
    if !resume {
        write_run_toml(&opts.out, args.clone(), |a| {
            vec![
                &mut a.model,
                &mut a.data,
                &mut a.eval_data,
                &mut a.out,
                &mut a.ref_cache_dir,
            ]
        })?;
    }
    let tokenizer_files = tokenizer_files(&opts.model);
    let extra: Vec<(&str, &[u8])> = tokenizer_files
        .iter()
        .map(|(n, b)| (*n, b.as_slice()))
        .collect();

    let mut cpu_model = Llama::new(cfg, start_params);
    cpu_model.recompute = opts.recompute;
    let data = RunData {
        opts: &opts,
        kind,
        resume,
        ckpt_dir: &ckpt_dir,
        train: &train,
        eval: eval.as_deref(),
        extra: &extra,
    };
    // bf16 on CUDA, f32 on the CPU; `auto` takes the GPU when kernels and a GPU are usable.
    match opts.device.engine()? {
        None => train_on(CpuState::new(cpu_model, opts.weight_decay), &data),
        Some(cuda) => train_on(gpu_state(cuda, &cpu_model, opts.weight_decay)?, &data),
    }
}

fn gpu_state(cuda: Cuda, cpu: &Llama, weight_decay: f32) -> Result<GpuTrainer> {
    let mut state = GpuTrainer::on(cuda, cpu)?;
    state.weight_decay = weight_decay;
    let on = if crate::emu::is_active() {
        "the software GPU"
    } else {
        "the GPU"
    };
    eprintln!("training on {on} (bf16 weights and activations, fp32 masters and AdamW)");
    Ok(state)
}

/// Everything a run reads, whichever device it trains on.
struct RunData<'a> {
    opts: &'a TrainOptions,
    kind: TrainerKind,
    resume: bool,
    ckpt_dir: &'a Path,
    train: &'a [PreferencePair],
    eval: Option<&'a [PreferencePair]>,
    extra: &'a [(&'a str, &'a [u8])],
}

/// The training loop, written once over the device's `TrainState`.
fn train_on<S: TrainState>(mut state: S, data: &RunData) -> Result<RunSummary>
where
    RewardObjective: Objective<S::B>,
    DpoObjective: Objective<S::B>,
{
    let RunData {
        opts,
        kind,
        resume,
        ckpt_dir,
        train,
        eval,
        extra,
    } = *data;
    let host_params = state.host_state()?.params;
    let dpo = DpoObjective { config: opts.dpo };
    let (ref_train, ref_eval) = if kind == TrainerKind::Dpo && opts.dpo.loss.uses_reference() {
        let (r, hit) = dpo.cached_reference(
            state.model(),
            &host_params,
            train,
            opts.batch_size,
            &opts.ref_cache_dir,
        )?;
        eprintln!(
            "reference log-probs: {} ({})",
            if hit {
                "from the cache"
            } else {
                "computed and cached"
            },
            opts.ref_cache_dir.display()
        );
        let e = match eval {
            Some(pairs) => Some(
                dpo.cached_reference(
                    state.model(),
                    &host_params,
                    pairs,
                    opts.batch_size,
                    &opts.ref_cache_dir,
                )?
                .0,
            ),
            None => None,
        };
        (Some(r), e)
    } else {
        (None, None)
    };
    let objective: &dyn Objective<S::B> = match kind {
        TrainerKind::RewardModel => &RewardObjective,
        TrainerKind::Dpo => &dpo,
    };
    let train_split = Split {
        pairs: train,
        reference: ref_train.as_deref(),
    };
    let eval_split = eval.map(|pairs| Split {
        pairs,
        reference: ref_eval.as_deref(),
    });

    // Exactly `epochs` passes over the data: the last optimiser step takes whatever micro-batches
    // are left, fewer than grad_accum when they do not divide evenly.
    let batches_per_epoch = train.len().div_ceil(opts.batch_size);
    let total_micro =
        crate::train::bounds::total_steps(opts.epochs, batches_per_epoch, "micro-batches")?;
    let total_steps = opts
        .max_steps
        .unwrap_or(usize::MAX)
        .min(total_micro.div_ceil(opts.grad_accum));
    let schedule = Schedule::new(opts.lr, opts.warmup_ratio, total_steps, opts.decay);
    let mut start_step = 0;
    if resume {
        let (_, host, saved) = load_training_checkpoint(ckpt_dir)
            .with_context(|| format!("resuming from {}", ckpt_dir.display()))?;
        if saved.total_steps != total_steps {
            bail!(
                "{} does not match this run's data and options",
                ckpt_dir.display()
            );
        }
        state.restore(host)?;
        start_step = saved.next_step;
        eprintln!("resuming at step {start_step} of {total_steps}");
    }

    // Both logs number a row by the steps done when it was written: evaluation before training is
    // step 0, the first training step's row is step 1. A resume keeps the rows up to its
    // checkpoint's step and rewrites the rest.
    let mut metrics = MetricsLog::open(&opts.out.join("metrics.jsonl"), start_step + 1)?;
    let mut eval_log = MetricsLog::open(&opts.out.join("eval.jsonl"), start_step + 1)?;
    let run_eval =
        |model: &Llama<S::B>, step: usize, log: &mut MetricsLog| -> Result<Option<PairStats>> {
            let Some(split) = &eval_split else {
                return Ok(None);
            };
            let mut stats = PairStats::default();
            let idx: Vec<usize> = (0..split.pairs.len()).collect();
            for chunk in idx.chunks(opts.batch_size) {
                stats.add(&objective.evaluate(model, split, chunk)?);
            }
            log.write(
                &json!({"step": step, "eval_loss": stats.loss(), "eval_accuracy": stats.accuracy(),
            "eval_margin": stats.margin(), "eval_ties": stats.tie_rate()}),
            )?;
            Ok(Some(stats))
        };
    let initial_eval = if start_step == 0 {
        run_eval(state.model(), 0, &mut eval_log)?
    } else {
        None
    };
    if let Some(s) = &initial_eval {
        eprintln!(
            "eval before training: loss {:.4}, accuracy {:.3} (ties {:.3}, counted as wrong)",
            s.loss(),
            s.accuracy(),
            s.tie_rate()
        );
    }
    // A resumed run reports the evaluation its first part made before training.
    let first_eval_row = || -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(opts.out.join("eval.jsonl")).ok()?;
        let row: serde_json::Value = serde_json::from_str(text.lines().next()?).ok()?;
        (row["step"] == 0).then_some(row)
    };
    let resumed_initial = if initial_eval.is_none() {
        first_eval_row()
    } else {
        None
    };

    let bar = indicatif::ProgressBar::new(total_steps as u64).with_position(start_step as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}")
            .expect("a valid template"),
    );
    let save = |state: &S, next_step: usize| -> Result<()> {
        let host = state.host_state()?;
        let position = TrainerState {
            next_step,
            total_steps,
            adam_t: host.t,
        };
        save_training_checkpoint(ckpt_dir, &state.model().cfg, &host, &position, extra)
    };

    // A progress bar on a terminal; plain lines in a log file, where a bar would be noise.
    let log_plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log_every = opts.log_every.unwrap_or(total_steps.div_ceil(20)).max(1);
    if log_plain {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut epoch_cache: Option<(usize, Vec<Vec<usize>>)> = None;
    let mut stopped_early = false;
    let mut interrupted_by_user = false;
    let mut steps = total_steps;
    // Steps whose metrics are still on the device: they are read back together when the loop
    // logs (on a GPU the loop's only host synchronisation), evaluates, saves or stops.
    let mut pending: Vec<PendingStep<S::B>> = Vec::new();
    let mut since = Instant::now();
    let mut flush = |state: &mut S,
                     pending: &mut Vec<PendingStep<S::B>>,
                     since: &mut Instant|
     -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let norms = state.take_grad_norms()?;
        anyhow::ensure!(
            norms.len() == pending.len(),
            "{} gradient norms for {} steps",
            norms.len(),
            pending.len()
        );
        let mut steps_stats = Vec::with_capacity(pending.len());
        for p in pending.drain(..) {
            let mut stats = PairStats::default();
            for m in p.micro {
                stats.add(&m.resolve(&state.model().backend)?);
            }
            steps_stats.push((p.step, p.lr, stats));
        }
        // Tokens per second over the interval: the device has finished its steps by now.
        let interval_tokens: usize = steps_stats.iter().map(|(_, _, s)| s.tokens).sum();
        let tokens_per_s = interval_tokens as f64 / since.elapsed().as_secs_f64();
        *since = Instant::now();
        for ((step, lr, stats), grad_norm) in steps_stats.iter().zip(norms) {
            let (step, lr) = (*step, *lr);
            if !stats.loss().is_finite() {
                let last = crate::model::weights::resolve_checkpoint_dir(ckpt_dir);
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
            // The short names, and TRL's (DPOTrainer, RewardTrainer) for the same values.
            let mut row = json!({
                "step": step + 1, "epoch": ((step + 1) * opts.grad_accum).min(total_micro) as f64 / batches_per_epoch as f64,
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
            metrics.write(&row)?;
        }
        let (step, lr, stats) = steps_stats.last().expect("not empty");
        if log_plain {
            eprintln!(
                "step {}/{total_steps}: loss {:.4}, accuracy {:.3}, lr {lr:.3e}, {:.0} tokens/s",
                step + 1,
                stats.loss(),
                stats.accuracy(),
                tokens_per_s
            );
        }
        bar.set_message(format!(
            "loss {:.4} acc {:.2} {:.0} tok/s",
            stats.loss(),
            stats.accuracy(),
            tokens_per_s
        ));
        Ok(())
    };
    for step in start_step..total_steps {
        state.zero_grads()?;
        let mut micro_stats = Vec::with_capacity(opts.grad_accum);
        let micro = step * opts.grad_accum..((step + 1) * opts.grad_accum).min(total_micro);
        let scale = 1.0 / micro.len() as f32;
        for g in micro {
            let epoch = g / batches_per_epoch;
            if epoch_cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
                epoch_cache = Some((
                    epoch,
                    epoch_batches(train, opts.batch_size, opts.seed, epoch),
                ));
            }
            let idx = &epoch_cache.as_ref().expect("set above").1[g % batches_per_epoch];
            let (model, grads) = state.model_and_grads();
            micro_stats.push(objective.accumulate(model, &train_split, idx, scale, grads)?);
        }
        let lr = schedule.lr(step);
        state.step(lr, opts.max_grad_norm)?;
        pending.push(PendingStep {
            step,
            lr,
            micro: micro_stats,
        });
        bar.inc(1);

        let done = step + 1;
        let eval_now = opts.eval_every > 0 && done % opts.eval_every == 0 && done < total_steps;
        let signal = crate::signals::received();
        let by_user = signal.is_some();
        let interrupted = by_user || opts.stop_after == Some(done);
        let save_now = interrupted || (opts.save_every > 0 && done % opts.save_every == 0);
        if done % log_every == 0 || done == total_steps || eval_now || save_now {
            flush(&mut state, &mut pending, &mut since)?;
        }
        if eval_now {
            run_eval(state.model(), done, &mut eval_log)?;
        }
        if save_now {
            save(&state, done)?;
        }
        if eval_now || save_now {
            since = Instant::now(); // tokens/s counts training only
        }
        if interrupted && done < total_steps {
            bar.abandon();
            // A plain line that stays, whether stderr is a terminal or a log file.
            eprintln!(
                "{} at step {done}/{total_steps}; checkpoint saved in {}; continue with prefer {} --resume {}",
                crate::signals::stop_reason(signal),
                ckpt_dir.display(),
                data.kind.command(),
                opts.out.display()
            );
            interrupted_by_user = by_user;
            stopped_early = true;
            steps = done;
            break;
        }
    }
    bar.finish_and_clear();

    let mut summary = RunSummary {
        steps,
        stopped_early,
        interrupted: interrupted_by_user,
        initial_eval_accuracy: initial_eval.as_ref().map(|s| s.accuracy()).or_else(|| {
            resumed_initial
                .as_ref()
                .and_then(|r| r["eval_accuracy"].as_f64())
        }),
        initial_eval_ties: initial_eval.as_ref().map(|s| s.tie_rate()).or_else(|| {
            resumed_initial
                .as_ref()
                .and_then(|r| r["eval_ties"].as_f64())
        }),
        final_eval_accuracy: None,
        final_eval_ties: None,
        final_eval_loss: None,
        train_pairs: train.len(),
    };
    if !stopped_early {
        save(&state, total_steps)?;
        let host = state.host_state()?;
        save_model_into(
            &opts.out,
            &state.model().cfg,
            &host.params,
            SaveDtype::F32,
            extra,
        )?;
        if let Some(s) = run_eval(state.model(), total_steps, &mut eval_log)? {
            eprintln!(
                "eval after training: loss {:.4}, accuracy {:.3}",
                s.loss(),
                s.accuracy()
            );
            summary.final_eval_accuracy = Some(s.accuracy());
            summary.final_eval_ties = Some(s.tie_rate());
            summary.final_eval_loss = Some(s.loss());
        }
        let plot = opts.out.join("curves.png");
        let title = format!("{} - {}", data.kind.label(), opts.out.display());
        let plotted = plot_curves(
            &opts.out.join("metrics.jsonl"),
            &opts.out.join("eval.jsonl"),
            &["loss", "accuracy", "margin", "lr"],
            &plot,
            &title,
        )?;
        crate::output::write_file_atomically(
            &opts.out.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
        if plotted {
            eprintln!(
                "model in {}, curves in {}",
                opts.out.display(),
                plot.display()
            );
        } else {
            eprintln!(
                "model in {}; no curves (no step or evaluation was logged)",
                opts.out.display()
            );
        }
    }
    Ok(summary)
}

/// The architecture a trainer produces from its starting checkpoint: a reward model is a
/// sequence classifier (a new scalar head, zero-initialised so every reward starts at 0 and the
/// loss at ln 2), a DPO policy a causal LM (a reward model's score head is dropped).
fn trained_config(base: &LlamaConfig, kind: TrainerKind, dir: &Path) -> Result<LlamaConfig> {
    let mut cfg = base.clone();
    match kind {
        TrainerKind::RewardModel => cfg.scalar_head = true,
        TrainerKind::Dpo => {
            if !base.has_lm_head() {
                bail!("{} has no LM head (it is a reward model with untied embeddings): DPO needs a causal LM", dir.display());
            }
            cfg.scalar_head = false;
        }
    }
    Ok(cfg)
}

/// `params` of `from` laid into the layout of `to`, by tensor name: tensors only `to` has (a new
/// score head) start at zero, tensors only `from` has (an LM head a reward model drops) are left.
fn relayout(from: &LlamaConfig, params: &[f32], to: &LlamaConfig) -> Vec<f32> {
    let (src, dst) = (ParamLayout::new(from), ParamLayout::new(to));
    let mut out = vec![0.0; dst.len];
    for slot in &dst.slots {
        if let Some(s) = src.slot(&slot.name) {
            out[slot.range.clone()].copy_from_slice(&params[s.range.clone()]);
        }
    }
    out
}

/// Pairwise accuracy of a reward model on a preference file (the `eval-rm` command), with string
/// prompts read raw or, under `chat_template`, templated as the model was trained.
pub fn evaluate_reward_model(
    model_dir: &Path,
    data: &Path,
    batch_size: usize,
    device: Device,
    chat_template: bool,
) -> Result<PairStats> {
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let device = device.prepare()?;
    let (cfg, params) = load_checkpoint(model_dir)?;
    if !cfg.scalar_head {
        bail!(
            "{} has no scalar head (score.weight): it is not a reward model",
            model_dir.display()
        );
    }
    let tokenizer = TextTokenizer::load(model_dir, &cfg)?;
    let template = ChatTemplate::for_model(model_dir)?;
    let enc = Encoder {
        tokenizer: &tokenizer,
        template: &template,
        cfg: &cfg,
    };
    // Evaluation keeps every pair: one longer than the model's context is cut to fit it (the
    // prompt's start first), not dropped, and the report counts it.
    let context = cfg.max_position_embeddings;
    let opts = DataOptions {
        max_prompt_len: context.saturating_sub(1),
        max_len: context,
        overflow: Overflow::Truncate,
        skip_bad: false,
        chat_template,
    };
    let (pairs, report) = load_preferences(data, &enc, &opts)?;
    eprintln!("{}: {report}", data.display());
    if pairs.is_empty() {
        bail!(
            "{}: no preference pairs to score; an accuracy over no pairs would mean nothing",
            data.display()
        );
    }
    crate::signals::install();
    let model = Llama::new(cfg, params);
    let split = Split {
        pairs: &pairs,
        reference: None,
    };
    fn score<B: crate::ops::Backend>(
        model: &Llama<B>,
        split: &Split,
        batch_size: usize,
    ) -> Result<PairStats>
    where
        RewardObjective: Objective<B>,
    {
        let mut stats = PairStats::default();
        let idx: Vec<usize> = (0..split.pairs.len()).collect();
        for chunk in idx.chunks(batch_size) {
            crate::signals::check(|| "no result was printed".to_string())?;
            stats.add(&RewardObjective.evaluate(model, split, chunk)?);
        }
        Ok(stats)
    }
    match device.engine()? {
        Some(cuda) => score(&model.upload(cuda)?, &split, batch_size),
        None => score(&model, &split, batch_size),
    }
}
