//! The prefer command line. Each subcommand lives in src/cmd/.

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use prefer::cmd::{self, Device};
use prefer::model::weights::SaveDtype;
use prefer::train::bounds::{check_all, whole_number, Bound::Int};
use prefer::train::{TrainArgs, TrainerKind};
use std::path::PathBuf;

#[global_allocator]
static ALLOCATOR: prefer::huge_pages::HugePageAlloc = prefer::huge_pages::HugePageAlloc;

#[derive(Parser)]
#[command(
    name = "prefer",
    version,
    about = "Preference learning for Llama models: DPO, reward models, PPO"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole pipeline on a built-in task, no downloads: tiny model, reward model, DPO.
    Demo {
        /// The demo's folder: empty, new, or an earlier demo's (whose demo files it replaces).
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
        /// cpu, cuda, emu (the software GPU) or auto.
        #[arg(long, value_enum, env = "PREFER_DEVICE", default_value_t = Device::Auto)]
        device: Device,
        /// Seed of the base model, the task's data and training.
        #[arg(long, default_value_t = 0, value_parser = prefer::train::bounds::seed, allow_negative_numbers = true)]
        seed: u64,
    },
    /// Train a Bradley-Terry reward model on preference pairs.
    Rm(TrainArgs),
    /// Train a policy with DPO or a variant (IPO, hinge, SimPO, ...).
    Dpo(TrainArgs),
    /// A reward model's pairwise accuracy on a preference file, as JSON (a tie counts as wrong,
    /// as RewardBench and TRL count it). On RewardBench's format (a "subset" on every line) also
    /// each subset's accuracy, the Chat / Chat Hard / Safety / Reasoning section scores weighted
    /// as RewardBench weights them, the overall score, and the prior sets at half weight
    /// (score_with_prior_sets), with a table on stderr.
    EvalRm {
        /// The reward model: an HF folder with a scalar head (score.weight).
        #[arg(long)]
        model: PathBuf,
        /// Preference JSONL to score (long pairs are truncated, never dropped).
        #[arg(long)]
        data: PathBuf,
        /// Pairs per forward pass.
        #[arg(long, default_value_t = 16, value_parser = whole_number, allow_negative_numbers = true)]
        batch_size: usize,
        /// cpu, cuda, emu (the software GPU) or auto.
        #[arg(long, value_enum, env = "PREFER_DEVICE", default_value_t = Device::Auto)]
        device: Device,
        /// Render string prompts with the chat template, as `prefer rm --chat-template` trained.
        #[arg(long)]
        chat_template: bool,
        /// Also write the JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Write a randomly initialised checkpoint (config.json, model.safetensors, tokenizer.json).
    Init {
        /// tiny, llama-134m or llama-1b
        #[arg(long)]
        preset: String,
        /// The folder to write: new or empty (or, with --overwrite, an earlier init's checkpoint).
        #[arg(long)]
        out: PathBuf,
        /// Replace the checkpoint an earlier prefer init wrote in --out (only its files).
        #[arg(long)]
        overwrite: bool,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 0, value_parser = prefer::train::bounds::seed, allow_negative_numbers = true)]
        seed: u64,
        /// Add a scalar head (score.weight) and save as LlamaForSequenceClassification.
        #[arg(long)]
        scalar_head: bool,
        /// The weights' dtype in model.safetensors.
        #[arg(long, value_enum, default_value_t = SaveDtype::F32)]
        dtype: SaveDtype,
        /// Override the preset's layer count (e.g. a 2-layer model with llama-1b widths).
        #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
        layers: Option<usize>,
        /// Override the init std (initializer_range); larger values give a sharper random model.
        #[arg(long, allow_negative_numbers = true)]
        init_std: Option<f32>,
        /// Override the preset's vocabulary size (at least 259, the byte tokenizer's): e.g. llama-1b
        /// widths with a small embedding.
        #[arg(long, value_parser = whole_number)]
        vocab_size: Option<usize>,
    },
    /// Print the version, the compiled kernels, the driver in use and whether a GPU is usable.
    Info {
        /// Also list every kernel's registers, spills and shared memory on sm_90a (from ptxas).
        #[arg(long)]
        kernels: bool,
        /// emu: load the software GPU and report it.
        #[arg(long, value_enum, env = "PREFER_DEVICE", default_value_t = Device::Auto)]
        device: Device,
    },
    /// Time the kernels at the shapes of the project's GPU targets (kernels), a training step
    /// (train) or a DPO step (dpo).
    Bench {
        /// kernels, train (T1/T2), dpo (T3), generate (T4/T5; on the CPU too), or ppo (--plan-only:
        /// one PPO iteration's memory with four models of the preset)
        what: String,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// train/dpo: the model preset.
        #[arg(long, default_value = "llama-1b")]
        preset: String,
        /// train: sequences per step; dpo: pairs per step; generate: prompts decoded together.
        #[arg(long, default_value_t = 8, value_parser = whole_number, allow_negative_numbers = true)]
        batch: usize,
        /// generate: tokens per prompt.
        #[arg(long, default_value_t = 128, value_parser = whole_number, allow_negative_numbers = true)]
        prompt_len: usize,
        /// generate: new tokens per prompt.
        #[arg(long, default_value_t = 256, value_parser = whole_number, allow_negative_numbers = true)]
        new: usize,
        /// train: tokens per sequence.
        #[arg(long, default_value_t = 1024, value_parser = whole_number, allow_negative_numbers = true)]
        seq: usize,
        /// train: timed steps (after one warm-up step).
        #[arg(long, default_value_t = 5, value_parser = whole_number, allow_negative_numbers = true)]
        steps: usize,
        /// train/dpo: keep only each layer's input through the forward and recompute the rest in
        /// the backward (less memory, about a third more compute).
        #[arg(long)]
        recompute: bool,
        /// train/dpo: print the memory plan and stop; needs no GPU.
        #[arg(long)]
        plan_only: bool,
        /// ppo --plan-only: sequences an iteration generates (split over the ranks), each of
        /// --prompt-len + --new tokens, trained in micro-batches of --batch.
        #[arg(long, default_value_t = 64, value_parser = whole_number, allow_negative_numbers = true)]
        rollouts: usize,
        /// train/dpo --plan-only: the plan of one rank of this many.
        #[arg(long, default_value_t = 1)]
        world_size: usize,
        /// train/dpo --plan-only: what each rank keeps of the training state (see `prefer dpo
        /// --help`).
        #[arg(long, value_enum, default_value_t = prefer::train::run_args::Shard::None)]
        shard: prefer::train::run_args::Shard,
        /// cuda (or auto) on a GPU; emu on the software GPU, which times the CPU, not a GPU;
        /// generate also runs on cpu.
        #[arg(long, value_enum, env = "PREFER_DEVICE", default_value_t = Device::Auto)]
        device: Device,
    },
    /// Check every CUDA op against the CPU oracle on several shapes; exits non-zero on a failure.
    Check {
        #[arg(
            long,
            value_parser = prefer::check::parse_op,
            help = prefer::check::op_help(),
            long_help = prefer::check::op_long_help()
        )]
        op: Option<String>,
        /// cuda (or auto) on a GPU; emu on the software GPU, with race and bounds checks.
        #[arg(long, value_enum, env = "PREFER_DEVICE", default_value_t = Device::Auto)]
        device: Device,
    },
    /// Online RL from a reward model or a verifiable reward: PPO (the paper's, with every switch),
    /// GRPO or RLOO, on the rollout engine.
    Ppo(Box<prefer::rl::PpoArgs>),
    /// Completions for a JSONL file of prompts: paged KV cache, continuous batching, seeded
    /// sampling; with --reward-model, rewards and best-of-N.
    Generate(cmd::generate::GenerateArgs),
    /// A policy on a benchmark: GSM8K (8-shot chain of thought, lm-evaluation-harness's answer
    /// extraction), with majority vote (--n) or Best-of-N by a reward model (--best-of); or the
    /// same scoring of existing answers (--responses). Prints a table and the figures as JSON.
    Eval(cmd::eval::EvalArgs),
    /// Start one process per GPU, as torchrun does (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...):
    /// `prefer launch --nproc-per-node 8 -- dpo ...`.
    Launch(cmd::launch::LaunchArgs),
    /// Per-token log-probs (and rewards) for each JSONL line {"input_ids": [...]} or {"text": "..."}.
    Logprobs {
        /// An HF Llama folder (a causal LM, or a reward model with a scalar head).
        #[arg(long)]
        model: PathBuf,
        /// JSONL, one sequence a line: {"input_ids": [...]} or {"text": "..."}.
        #[arg(long)]
        input: PathBuf,
        /// JSONL written here: each line's "logprobs" (and "reward" for a reward model).
        #[arg(long)]
        out: PathBuf,
        /// cpu, cuda, emu (the software GPU) or auto.
        #[arg(long, value_enum, env = "PREFER_DEVICE", default_value_t = Device::Auto)]
        device: Device,
    },
}

/// The command line as clap builds it, with what derive cannot say: the trainers' defaults (one
/// set per trainer, from `TrainArgs::defaults`), `[required]` marks, and `rm` without DPO's
/// options.
fn cli_command() -> clap::Command {
    Cli::command()
        .mut_subcommand("rm", |c| {
            trainer_help(c, TrainerKind::RewardModel).after_help(REWARD_HEAD_INIT)
        })
        .mut_subcommand("dpo", |c| trainer_help(c, TrainerKind::Dpo))
        .mut_subcommand("ppo", |c| {
            prefer::rl::options::with_default_help(prefer::train::run_args::in_rl_words(c))
        })
        .mut_subcommands(mark_required)
}

/// How `prefer rm` starts the reward head, and how that differs from TRL.
const REWARD_HEAD_INIT: &str = "\
The reward head: a new scalar head (score.weight) starts at zero, so every reward is 0 and the \
loss is ln 2 at the first step, whatever the base model and seed, and the first gradient reaches \
the head alone (the body's first update waits for a non-zero head). transformers and TRL start \
it random (normal, std = initializer_range), which gives random step-0 rewards that depend on the \
seed. A base model that already has a score.weight keeps it: to reproduce a TRL run exactly, \
save TRL's initial head into the base model.";

fn trainer_help(cmd: clap::Command, kind: TrainerKind) -> clap::Command {
    let defaults = toml::Value::try_from(TrainArgs::defaults(kind)).expect("defaults serialise");
    let ids: Vec<String> = cmd
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    ids.into_iter().fold(cmd, |cmd, id| {
        let key = id.replace('_', "-");
        let shown = defaults
            .get(&key)
            .map(prefer::train::run_args::shown_default);
        let required = matches!(id.as_str(), "model" | "data" | "out");
        let hidden = kind == TrainerKind::RewardModel && TrainArgs::DPO_ONLY.contains(&id.as_str());
        cmd.mut_arg(id.as_str(), |a| {
            let text = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            let text = match (&shown, required) {
                (Some(v), _) => format!("{text} [default: {v}]"),
                (None, true) => format!("{text} [required unless --resume or --config gives it]"),
                (None, false) => text,
            };
            let a = a.help(text);
            if hidden {
                a.hide(true)
            } else {
                a
            }
        })
    })
}

fn mark_required(cmd: clap::Command) -> clap::Command {
    let ids: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.is_required_set())
        .map(|a| a.get_id().to_string())
        .collect();
    ids.into_iter().fold(cmd, |cmd, id| {
        cmd.mut_arg(id.as_str(), |a| {
            let text = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            a.help(format!("{text} [required]"))
        })
    })
}

/// Errors print as one line of context chain (`error: reading x.jsonl: ...`), never a backtrace
/// or a panic.
fn main() -> std::process::ExitCode {
    let matches = cli_command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A command a signal stopped (generate, logprobs, eval-rm) exits as one killed by it.
            match e.downcast_ref::<prefer::signals::Interrupted>() {
                Some(i) => {
                    std::process::ExitCode::from(prefer::signals::exit_status(i.signal) as u8)
                }
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}

fn run(command: Command) -> Result<()> {
    // Commands that do not split their work over ranks yet refuse a launch of several.
    let single_process_only = match &command {
        Command::Demo { .. } => Some("demo"),
        Command::EvalRm { .. } => Some("eval-rm"),
        Command::Init { .. } => Some("init"),
        Command::Generate(_) => Some("generate"),
        Command::Eval(_) => Some("eval"),
        Command::Logprobs { .. } => Some("logprobs"),
        Command::Rm(_)
        | Command::Dpo(_)
        | Command::Ppo(_)
        | Command::Info { .. }
        | Command::Bench { .. }
        | Command::Check { .. }
        | Command::Launch(_) => None,
    };
    if let Some(name) = single_process_only {
        prefer::dist::refuse_many_processes(name)?;
    }
    match command {
        Command::Init {
            preset,
            out,
            seed,
            scalar_head,
            dtype,
            layers,
            init_std,
            vocab_size,
            overwrite,
        } => {
            let opts = cmd::init::InitOptions {
                seed,
                scalar_head,
                dtype,
                layers,
                init_std,
                vocab_size,
                overwrite,
            };
            cmd::init::run_init(&preset, &out, &opts)
        }
        Command::Demo { out, device, seed } => cmd::demo::run_demo(&out, device, seed),
        Command::Rm(args) => cmd::train::run_rm(args),
        Command::Dpo(args) => cmd::train::run_dpo(args),
        Command::EvalRm {
            model,
            data,
            batch_size,
            device,
            chat_template,
            json,
        } => {
            check_all(&[Int("--batch-size", batch_size, 1..=65_536)])?;
            if let Some(j) = &json {
                prefer::output::refuse_output_that_is_an_input(
                    ("--json", j),
                    &[
                        ("--data", Some(data.as_path())),
                        ("--model", Some(model.as_path())),
                    ],
                )?;
            }
            cmd::train::run_eval_rm(
                &model,
                &data,
                batch_size,
                device,
                chat_template,
                json.as_deref(),
            )
        }
        Command::Bench {
            what,
            json,
            preset,
            batch,
            seq,
            steps,
            recompute,
            plan_only,
            world_size,
            shard,
            device,
            prompt_len,
            new,
            rollouts,
        } => {
            check_all(&[
                Int("--rollouts", rollouts, 1..=1 << 24),
                Int("--world-size", world_size, 1..=1 << 20),
                Int("--batch", batch, 1..=65_536),
                Int("--prompt-len", prompt_len, 1..=1 << 24),
                Int("--new", new, 1..=1 << 24),
                Int("--seq", seq, 1..=1 << 24),
                Int("--steps", steps, 1..=1_000_000),
            ])?;
            if !plan_only {
                device.prepare()?;
            }
            let generate = cmd::bench_generate::GenerateBenchArgs {
                preset: preset.clone(),
                batch,
                prompt_len,
                new_tokens: new,
                device,
            };
            let train = cmd::bench::TrainBenchArgs {
                preset,
                batch,
                seq,
                steps,
                recompute,
                plan_only,
                world_size,
                shard,
                rollouts,
            };
            cmd::bench::run_bench(&what, json.as_deref(), &train, &generate)
        }
        Command::Ppo(args) => {
            let group = cmd::train::join_group()?;
            let s = prefer::rl::run_ppo_in(*args, group.clone())?;
            group.finish();
            if s.interrupted {
                cmd::train::exit_for_signal();
            }
            Ok(())
        }
        Command::Generate(args) => cmd::generate::run_generate(args).map(|_| ()),
        Command::Eval(args) => {
            let summary = cmd::eval::run_eval(args)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Command::Check { op, device } => cmd::check::run_check(op.as_deref(), device),
        Command::Info { kernels, device } => cmd::info::run_info(kernels, device),
        Command::Launch(args) => match cmd::launch::run_launch(&args)? {
            0 => Ok(()),
            code => std::process::exit(code),
        },
        Command::Logprobs {
            model,
            input,
            out,
            device,
        } => cmd::logprobs::run_logprobs(&model, &input, &out, device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option of every subcommand says what it does.
    #[test]
    fn every_option_is_described() {
        let cmd = cli_command();
        for sub in cmd.get_subcommands() {
            for a in sub.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") || a.is_hide_set() {
                    continue;
                }
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                let bare = help.trim_start_matches('[').is_empty()
                    || help.starts_with(" [")
                    || help.is_empty();
                assert!(!bare, "prefer {} --{id} has no description", sub.get_name());
            }
        }
        cmd.debug_assert();
    }
}
