//! The offline trainers (`prefer rm`, `prefer dpo`) as stages of the run skeleton
//! (src/train/run.rs): each step takes `grad_accum` micro-batches of pairs through the objective
//! (Bradley-Terry or a DPO loss) and one optimiser step; evaluation runs on held-out pairs.

use super::dpo::DpoObjective;
use super::gpu_step::GpuTrainer;
use super::layered_options::TrainerArgs;
use super::objective::{Objective, Split};
use super::offline_stages::Offline;
use super::options::{TrainArgs, TrainOptions, TrainerKind};
use super::rm::RewardObjective;
use super::run::{drive, open_run, Cadence, OpenedRun, RunEnd, RunSpec, Start};
use super::run_args::RunOptions;
use super::starting_model::{relayout, tokenizer_files, trained_config};
use super::state::{CpuState, TrainState};
use crate::data::chat_template::ChatTemplate;
use crate::data::preference::{load_preferences, Encoder, PreferencePair};
use crate::data::tokenizer::TextTokenizer;
use crate::dist::group::Group;
use crate::model::weights::load_checkpoint;
use crate::model::Llama;
use crate::ops::cuda::backend::Cuda;
use anyhow::{bail, Result};
use std::sync::Arc;

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

/// The training data and held-out pairs, read with the starting model's tokenizer.
struct Data {
    train: Vec<PreferencePair>,
    eval: Option<Vec<PreferencePair>>,
}

/// Runs `prefer rm` or `prefer dpo` as one process.
pub fn run_training(args: TrainArgs, kind: TrainerKind) -> Result<RunSummary> {
    run_training_in(args, kind, Arc::new(Group::single()))
}

/// Runs `prefer rm` or `prefer dpo` in `group`: one process, or one rank of a data-parallel run
/// whose ranks each take their share of every global batch.
pub fn run_training_in(
    args: TrainArgs,
    kind: TrainerKind,
    group: Arc<Group>,
) -> Result<RunSummary> {
    // From here on SIGINT, SIGTERM, SIGHUP and SIGUSR1 finish the step and save.
    crate::signals::install();
    let overwrite = args.run.overwrite;
    let mut args = args.with_files()?;
    args.trainer.get_or_insert(kind); // a resumed run keeps the trainer that started it
    let opts = args.clone().resolve(kind)?;
    let inputs = [
        ("--model", Some(opts.model.as_path())),
        ("--data", Some(opts.data.as_path())),
        ("--eval-data", opts.eval_data.as_deref()),
    ];
    let spec = RunSpec {
        command: format!("prefer {}", kind.command()),
        unit: "step",
        inputs: &inputs,
        position_in_checkpoint: "",
    };
    // Held until the run ends: a second run in the same folder fails at once.
    let run = open_run(&spec, &opts.run, overwrite, group)?;
    if let Start::Finished(steps) = run.start {
        return Ok(RunSummary {
            steps,
            ..Default::default()
        });
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
    let data = read_data(&opts, &enc, run.group.is_root())?;
    run.write_run_toml(&args)?;
    let extra = tokenizer_files(&opts.model);

    let mut cpu_model = Llama::new(cfg, start_params);
    cpu_model.recompute = opts.run.recompute;
    let weight_decay = opts.run.weight_decay;
    // bf16 on CUDA, f32 on the CPU; `auto` takes the GPU when kernels and a GPU are usable.
    let (summary, end) = match opts.run.device.engine()? {
        None => {
            opts.run.refuse_shard_on_cpu()?;
            let state = CpuState::new(cpu_model, weight_decay);
            drive_offline(state, &opts, &data, &extra, &run)?
        }
        Some(cuda) => {
            let state = gpu_state(cuda, &cpu_model, &opts.run, &run.group)?;
            drive_offline(state, &opts, &data, &extra, &run)?
        }
    };
    Ok(RunSummary {
        steps: end.steps,
        stopped_early: end.stopped_early,
        interrupted: end.interrupted,
        ..summary
    })
}

/// The training and held-out pairs; an error if no training pair is usable.
fn read_data(opts: &TrainOptions, enc: &Encoder, root: bool) -> Result<Data> {
    let (train, report) = load_preferences(&opts.data, enc, &opts.data_opts)?;
    if root {
        eprintln!("train data {}: {report}", opts.data.display());
    }
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
            let (pairs, report) = load_preferences(path, enc, &opts.data_opts)?;
            if root {
                eprintln!("eval data {}: {report}", path.display());
            }
            Some(pairs)
        }
        None => None,
    };
    Ok(Data { train, eval })
}

fn gpu_state(cuda: Cuda, cpu: &Llama, run: &RunOptions, group: &Group) -> Result<GpuTrainer> {
    let root = group.is_root();
    let mut state = match run.fully_sharded(group) {
        true => GpuTrainer::fully_sharded(cuda, cpu, group)?,
        false => GpuTrainer::sharded(cuda, cpu, run.optimizer_shard(group))?,
    };
    state.weight_decay = run.weight_decay;
    state.bucket_values = run.bucket_values();
    let on = if crate::emu::is_active() {
        "the software GPU"
    } else {
        "the GPU"
    };
    if root {
        let split = match (run.fully_sharded(group), run.optimizer_shard(group)) {
            (true, _) => format!(
                "; weights, gradients, masters and moments sharded over {} ranks (--shard full)",
                group.size()
            ),
            (false, Some((_, size))) => {
                format!("; masters and moments sharded over {size} ranks (--shard optimizer)")
            }
            _ => String::new(),
        };
        eprintln!("training on {on} (bf16 weights and activations, fp32 masters and AdamW{split})");
    }
    Ok(state)
}

/// The reference log-probs DPO's loss compares with (train, eval), from the cache or computed
/// once with the starting weights; none for the reward model or a reference-free loss.
type References = (Option<Vec<(f32, f32)>>, Option<Vec<(f32, f32)>>);

fn reference_logprobs<S: TrainState>(
    state: &mut S,
    opts: &TrainOptions,
    data: &Data,
    group: &Group,
) -> Result<References>
where
    DpoObjective: Objective<S::B>,
{
    let Some(dpo) = opts.dpo.as_ref().filter(|d| d.config.loss.uses_reference()) else {
        return Ok((None, None));
    };
    let objective = DpoObjective { config: dpo.config };
    let host_params = state.gather_params(group)?;
    let cached = |pairs: &[PreferencePair]| {
        objective.cached_reference(
            state.model(),
            &host_params,
            pairs,
            opts.batch_size,
            &dpo.ref_cache_dir,
            group,
        )
    };
    let (train, hit) = cached(&data.train)?;
    if group.is_root() {
        eprintln!(
            "reference log-probs: {} ({})",
            if hit {
                "from the cache"
            } else {
                "computed and cached"
            },
            dpo.ref_cache_dir.display()
        );
    }
    let eval = data
        .eval
        .as_deref()
        .map(cached)
        .transpose()?
        .map(|(r, _)| r);
    Ok((Some(train), eval))
}

/// Builds the stages over the device's `TrainState` and drives them.
fn drive_offline<S: TrainState>(
    mut state: S,
    opts: &TrainOptions,
    data: &Data,
    extra: &[(&'static str, Vec<u8>)],
    run: &OpenedRun,
) -> Result<(RunSummary, RunEnd)>
where
    RewardObjective: Objective<S::B>,
    DpoObjective: Objective<S::B>,
{
    let group = run.group.clone();
    let (ref_train, ref_eval) = reference_logprobs(&mut state, opts, data, &group)?;
    let dpo;
    let objective: &dyn Objective<S::B> = match &opts.dpo {
        None => &RewardObjective,
        Some(d) => {
            dpo = DpoObjective { config: d.config };
            &dpo
        }
    };
    let train = Split {
        pairs: &data.train,
        reference: ref_train.as_deref(),
    };
    let eval = data.eval.as_deref().map(|pairs| Split {
        pairs,
        reference: ref_eval.as_deref(),
    });
    let mut stages = Offline::new(state, opts, objective, train, eval, extra, group)?;
    drive(
        run,
        &mut stages,
        &opts.run,
        Cadence::of(&opts.run, opts.eval_every),
    )
}
