//! The run skeleton every trainer runs in (`rm`, `dpo`, `ppo`, `grpo`, `rloo`), written once:
//! 1. [`open_run`]: the run folder opened or resumed (locked, never over an input or a folder
//!    prefer did not make; a resumed run's inputs unchanged), and [`OpenedRun::write_run_toml`];
//! 2. [`drive`]: the step cadence (restore, evaluate, step, log, save, stop on a signal or
//!    `--stop-after`), then the final save, summary.json and curves.png.
//!
//! A trainer supplies only its stages ([`Stages`]): offline, batches → objective → optimiser
//! step (src/train/trainer.rs); online, rollouts → scoring → advantages → PPO epochs
//! (src/rl/trainer.rs). The learning rate comes from one schedule ([`RunOptions::schedule`]).

use super::checkpoint::read_trainer_state;
use super::layered_options::TrainerArgs;
use super::metrics::plot_curves;
use super::run_args::RunOptions;
use super::run_folder::{refuse_changed_run_inputs, write_run_toml, OpenRun, RunFolder};
use crate::dist::group::Group;
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a trainer is, for the skeleton's messages and files.
pub struct RunSpec<'a> {
    /// `prefer dpo`, for messages.
    pub command: String,
    /// What one step is called: "step", or "iteration" for ppo.
    pub unit: &'static str,
    /// The command's inputs by flag, so that none of them is written over and a resume can check
    /// that none changed.
    pub inputs: &'a [(&'a str, Option<&'a Path>)],
    /// Where in checkpoint/ the run's position (trainer_state.json) is: "" or "policy".
    pub position_in_checkpoint: &'static str,
}

/// How an opened run starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    New,
    Resume,
    /// A resumed run that had already finished, at this step: nothing to do.
    Finished(usize),
}

/// A locked run folder (until dropped), and how the run starts in it.
pub struct OpenedRun {
    /// Rank 0's lock on the folder; the other ranks of a data-parallel run hold none and write
    /// nothing there.
    _folder: Option<RunFolder>,
    pub start: Start,
    pub out: PathBuf,
    pub command: String,
    pub unit: &'static str,
    /// The ranks the run is split over (one for a plain run).
    pub group: Arc<Group>,
}

impl Start {
    /// As numbers, for rank 0 to tell the others: [kind, step].
    fn encode(self) -> [f64; 2] {
        match self {
            Start::New => [0.0, 0.0],
            Start::Resume => [1.0, 0.0],
            Start::Finished(n) => [2.0, n as f64],
        }
    }

    fn decode(v: [f64; 2]) -> Option<Start> {
        match v[0] as i64 {
            0 => Some(Start::New),
            1 => Some(Start::Resume),
            2 => Some(Start::Finished(v[1] as usize)),
            _ => None,
        }
    }
}

/// Opens `run.out` for a new run or a resumed one. Call before reading anything large, so a
/// refusal comes at once. In a data-parallel run rank 0 opens (and locks) the folder and tells
/// the others how the run starts, or that it refused.
pub fn open_run(
    spec: &RunSpec,
    run: &RunOptions,
    overwrite: bool,
    group: Arc<Group>,
) -> Result<OpenedRun> {
    let out = &run.out;
    let opened = if group.is_root() {
        let opened = OpenRun {
            out,
            resume: run.resume,
            overwrite,
            inputs: spec.inputs,
            command: &spec.command,
        }
        .open()
        .and_then(|folder| {
            let start = if run.resume {
                resumed_start(out, spec)?
            } else {
                Start::New
            };
            Ok((folder, start))
        });
        let mut told = match &opened {
            Ok((_, start)) => start.encode(),
            Err(_) => [-1.0, 0.0],
        };
        group.broadcast_f64("run start", &mut told)?;
        let (folder, start) = opened?;
        (Some(folder), start)
    } else {
        let mut told = [0.0; 2];
        group.broadcast_f64("run start", &mut told)?;
        let Some(start) = Start::decode(told) else {
            bail!(
                "rank 0 could not open {} (its error says why)",
                out.display()
            );
        };
        (None, start)
    };
    Ok(OpenedRun {
        _folder: opened.0,
        start: opened.1,
        out: out.clone(),
        command: spec.command.clone(),
        unit: spec.unit,
        group,
    })
}

/// A resumed run: finished (its final model is written and its checkpoint is at the last step),
/// or to continue from its checkpoint, whose inputs must not have changed.
fn resumed_start(out: &Path, spec: &RunSpec) -> Result<Start> {
    let checkpoint = out.join("checkpoint");
    let position = read_trainer_state(&checkpoint.join(spec.position_in_checkpoint)).ok();
    if let Some(p) = position.filter(|p| p.next_step >= p.total_steps) {
        if out.join("config.json").is_file() {
            eprintln!(
                "the run in {} is finished ({} {}; the model is in {}); nothing to do",
                out.display(),
                spec.unit,
                p.next_step,
                out.display()
            );
            return Ok(Start::Finished(p.next_step));
        }
    }
    if !crate::model::weights::resolve_checkpoint_dir(&checkpoint).exists() {
        bail!(
            "{} has run.toml but no checkpoint yet (it stopped before its first save); start it again with --overwrite",
            out.display()
        );
    }
    let inputs: Vec<Option<&Path>> = spec.inputs.iter().map(|(_, p)| *p).collect();
    refuse_changed_run_inputs(out, &inputs)?;
    Ok(Start::Resume)
}

impl OpenedRun {
    /// A new run's run.toml: every option (defaults included, so a resume keeps them even if a
    /// default changes), paths made absolute, and the inputs' fingerprints. Written once the
    /// inputs have been read and found usable: a refused start leaves the folder empty, free for
    /// the next try. A resumed run keeps its own.
    pub fn write_run_toml<T: TrainerArgs>(&self, args: &T) -> Result<()> {
        if self.start != Start::New || !self.group.is_root() {
            return Ok(());
        }
        write_run_toml(&self.out, args.with_defaults()?, |a| a.paths_mut())
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.out.join("checkpoint")
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug)]
pub struct RunEnd {
    /// Steps done.
    pub steps: usize,
    /// Stopped before its last step (by a signal or `--stop-after`), with a checkpoint saved.
    pub stopped_early: bool,
    /// Stopped by a signal (SIGINT, SIGTERM, SIGHUP, SIGUSR1): the command then exits with
    /// 128 + the signal, as shells expect.
    pub interrupted: bool,
}

/// What curves.png plots.
pub struct Curves {
    /// metrics.jsonl (and eval.jsonl) columns, one panel each.
    pub keys: &'static [&'static str],
    /// "DPO", "PPO", ...: the plot's title, with the run folder.
    pub label: String,
}

/// A trainer's stages. The skeleton calls them in this order: `restore` (on resume), `begin`,
/// `evaluate(0)` (on a new run), then per step `step`, and when the cadence says so `log`, `evaluate`, `save`;
/// at the end `finish`.
pub trait Stages {
    type Summary: Serialize;
    /// The run's length in steps.
    fn total_steps(&self) -> usize;
    /// Loads the checkpoint in `checkpoint`; returns the step to continue at.
    fn restore(&mut self, checkpoint: &Path) -> Result<usize>;
    /// The run starts (or continues) at step `start`: logs open there, keeping the rows of the
    /// steps before it.
    fn begin(&mut self, start: usize) -> Result<()>;
    /// Held-out evaluation after `done` steps (0: before training), if the trainer has one.
    fn evaluate(&mut self, _done: usize) -> Result<()> {
        Ok(())
    }
    /// Step `step` (0-based) at learning rate `lr`.
    fn step(&mut self, step: usize, lr: f32) -> Result<()>;
    /// Writes what the steps since the last call left pending (metrics the device still held);
    /// returns the last step's status, for the progress line.
    fn log(&mut self) -> Result<String>;
    /// A resumable checkpoint in `checkpoint`, whose next step is `next_step`.
    fn save(&mut self, checkpoint: &Path, next_step: usize) -> Result<()>;
    /// The run's end. A finished run writes its trained model (at the run folder's root) and any
    /// last evaluation; a stopped one only reports.
    fn finish(&mut self, end: RunEnd) -> Result<Self::Summary>;
    fn curves(&self) -> Curves;
}

/// The step cadence of a run.
#[derive(Clone, Copy, Debug)]
pub struct Cadence {
    /// Evaluate every N steps (0: only before and after training).
    pub eval_every: usize,
    pub save_every: usize,
    /// A plain progress line every N steps when stderr is not a terminal [default: ~20 a run].
    pub log_every: Option<usize>,
    /// Stop (saved) after this many steps, as a signal would.
    pub stop_after: Option<usize>,
}

impl Cadence {
    pub fn of(run: &RunOptions, eval_every: usize) -> Cadence {
        Cadence {
            eval_every,
            save_every: run.save_every,
            log_every: run.log_every,
            stop_after: run.stop_after,
        }
    }
}

/// Runs `stages` from where the run stands to its end: the loop every trainer shares. A finished
/// run ([`Start::Finished`]) has nothing to drive: its trainer returns at the start.
pub fn drive<S: Stages>(
    run: &OpenedRun,
    stages: &mut S,
    opts: &RunOptions,
    cadence: Cadence,
) -> Result<(S::Summary, RunEnd)> {
    let checkpoint = run.checkpoint();
    let unit = run.unit;
    // Restored first: a checkpoint may set the run's length (an offline run resumed on another
    // number of ranks keeps its global batch, so its step count).
    let start = match run.start {
        // The trainer returns before loading anything for a finished run.
        Start::Finished(done) => {
            bail!("the run in {} finished at {unit} {done}", run.out.display())
        }
        Start::Resume => {
            let next = stages.restore(&checkpoint)?;
            if run.group.is_root() {
                eprintln!(
                    "resuming {} at {unit} {next} of {}",
                    run.out.display(),
                    stages.total_steps()
                );
            }
            next
        }
        Start::New => 0,
    };
    let total = stages.total_steps();
    let schedule = opts.schedule(total);
    stages.begin(start)?;
    if start == 0 {
        stages.evaluate(0)?;
    }
    let group = &run.group;
    let root = group.is_root();
    let progress = Progress::new(start, total, cadence.log_every, unit, root);
    for step in start..total {
        stages.step(step, schedule.lr(step))?;
        progress.bar.inc(1);
        let done = step + 1;
        let eval_now =
            cadence.eval_every > 0 && done.is_multiple_of(cadence.eval_every) && done < total;
        // Every rank stops at the same step, saved, when any of them got a signal (a launcher
        // may deliver it to each rank at a slightly different step).
        let signalled = group.any("stop signal", crate::signals::received().is_some())?;
        let signal =
            crate::signals::received().or(signalled.then_some(signal_hook::consts::SIGINT));
        let stop = signal.is_some() || cadence.stop_after == Some(done);
        let save_now = stop || done.is_multiple_of(cadence.save_every) || done == total;
        if progress.due(done) || eval_now || save_now {
            progress.show(done, &stages.log()?);
        }
        if eval_now {
            stages.evaluate(done)?;
        }
        if save_now {
            stages.save(&checkpoint, done)?;
        }
        if stop && done < total {
            progress.bar.abandon();
            // A plain line that stays, whether stderr is a terminal or a log file.
            if root {
                eprintln!(
                "{} at {unit} {done}/{total}; checkpoint saved in {}; continue with {} --resume {}",
                crate::signals::stop_reason(signal),
                checkpoint.display(),
                run.command,
                run.out.display()
                );
            }
            let end = RunEnd {
                steps: done,
                stopped_early: true,
                interrupted: signal.is_some(),
            };
            return Ok((stages.finish(end)?, end));
        }
    }
    progress.bar.finish_and_clear();
    let end = RunEnd {
        steps: total,
        stopped_early: false,
        interrupted: false,
    };
    let summary = stages.finish(end)?;
    if root {
        write_summary_and_curves(&run.out, &summary, &stages.curves())?;
    }
    Ok((summary, end))
}

/// summary.json and curves.png of a finished run, and where to find them.
fn write_summary_and_curves<T: Serialize>(out: &Path, summary: &T, curves: &Curves) -> Result<()> {
    let plot = out.join("curves.png");
    let plotted = plot_curves(
        &out.join("metrics.jsonl"),
        &out.join("eval.jsonl"),
        curves.keys,
        &plot,
        &format!("{} - {}", curves.label, out.display()),
    )?;
    crate::output::write_file_atomically(
        &out.join("summary.json"),
        serde_json::to_string_pretty(summary)?.as_bytes(),
    )?;
    if plotted {
        eprintln!("model in {}, curves in {}", out.display(), plot.display());
    } else {
        eprintln!(
            "model in {}; no curves (no step or evaluation was logged)",
            out.display()
        );
    }
    Ok(())
}

/// A progress bar on a terminal; plain lines in a log file, where a bar would be noise.
struct Progress {
    bar: indicatif::ProgressBar,
    plain: bool,
    every: usize,
    total: usize,
    unit: &'static str,
}

impl Progress {
    /// Only rank 0 shows progress; the other ranks' would repeat it.
    fn new(
        start: usize,
        total: usize,
        log_every: Option<usize>,
        unit: &'static str,
        shown: bool,
    ) -> Progress {
        let bar = indicatif::ProgressBar::new(total as u64).with_position(start as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}")
                .expect("a valid template"),
        );
        let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
        if plain || !shown {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        Progress {
            bar,
            plain: plain && shown,
            every: log_every.unwrap_or(total.div_ceil(20)).max(1),
            total,
            unit,
        }
    }

    /// Whether step `done` is one the log shows.
    fn due(&self, done: usize) -> bool {
        done.is_multiple_of(self.every) || done == self.total
    }

    fn show(&self, done: usize, status: &str) {
        if self.plain {
            eprintln!("{} {done}/{}: {status}", self.unit, self.total);
        }
        self.bar.set_message(status.to_string());
    }
}
