//! `prefer bench`: kernel throughput at the targets' shapes (`kernels`), and a whole training step
//! (`train`: forward, backward and AdamW) with tokens/s, MFU and peak memory.

use super::bench_generate::{bench_generate, GenerateBenchArgs};
use crate::check::bench::{print_bench, run_kernel_benches};
use crate::model::init::init_params;
use crate::model::{Batch, Llama, LlamaConfig, ParamLayout};
use crate::ops::cuda::{probe_gpu, CudaEngine};
use crate::train::gpu_step::GpuTrainer;
use crate::train::memory_plan::MemoryPlan;
use anyhow::{anyhow, bail, Result};
use std::path::Path;

/// H100 SXM dense bf16 peak, the denominator of MFU in DESIGN.md.
const PEAK_FLOPS: f64 = 989e12;

#[derive(Clone)]
pub struct TrainBenchArgs {
    pub preset: String,
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    pub recompute: bool,
    /// Print the memory plan and stop.
    pub plan_only: bool,
    /// The plan is one rank's of this many, keeping this much of the state.
    pub world_size: usize,
    pub shard: crate::train::run_args::Shard,
    /// ppo --plan-only: sequences an iteration generates.
    pub rollouts: usize,
}

impl TrainBenchArgs {
    /// The step's memory plan (a DPO step runs 2·batch sequences).
    fn plan(&self, cfg: &LlamaConfig, what: &str) -> MemoryPlan {
        let rows = if what == "dpo" {
            2 * self.batch
        } else {
            self.batch
        };
        let plan = MemoryPlan::training(cfg, rows, self.seq, self.recompute);
        match self.shard {
            crate::train::run_args::Shard::Optimizer => plan.optimizer_sharded(self.world_size),
            crate::train::run_args::Shard::Full => plan.fully_sharded(cfg, self.world_size),
            crate::train::run_args::Shard::None => plan,
        }
    }

    fn plan_title(&self, what: &str) -> String {
        let rows = if what == "dpo" {
            format!("{} pairs", self.batch)
        } else {
            format!("{} sequences", self.batch)
        };
        format!(
            "{}, {rows} x {} tokens{}{}",
            self.preset,
            self.seq,
            if self.recompute { ", --recompute" } else { "" },
            self.rank_of()
        )
    }

    /// ", one rank of N (--shard S)" for a plan of one rank of several; nothing for one.
    fn rank_of(&self) -> String {
        if self.world_size > 1 {
            format!(
                ", one rank of {} (--shard {:?})",
                self.world_size, self.shard
            )
            .to_lowercase()
        } else {
            String::new()
        }
    }
}

/// One rank's plan of a PPO iteration with four models of the preset (the value and reward
/// models with a scalar head in place of the LM head), printed; it needs no GPU.
fn ppo_plan(train: &TrainBenchArgs, generate: &GenerateBenchArgs) -> Result<MemoryPlan> {
    let policy = LlamaConfig::preset(&train.preset)?;
    let critic = LlamaConfig {
        scalar_head: true,
        ..policy.clone()
    };
    let seq = generate.prompt_len + generate.new_tokens;
    let ranks = train.world_size;
    let kv_tokens = train.rollouts.div_ceil(ranks) * seq;
    let plan = MemoryPlan::ppo_under(
        train.shard,
        ranks,
        &policy,
        Some(&critic),
        Some(&critic),
        train.batch,
        seq,
        kv_tokens,
        train.recompute,
    );
    print!(
        "{}",
        plan.render(&format!(
            "PPO, four {} models, {} rollouts of {} + {} tokens, micro-batches of {}{}{}",
            train.preset,
            train.rollouts,
            generate.prompt_len,
            generate.new_tokens,
            train.batch,
            if train.recompute { ", --recompute" } else { "" },
            train.rank_of()
        ))
    );
    Ok(plan)
}

pub fn run_bench(
    what: &str,
    json: Option<&Path>,
    train: &TrainBenchArgs,
    generate: &GenerateBenchArgs,
) -> Result<()> {
    if !matches!(what, "kernels" | "train" | "dpo" | "generate" | "ppo") {
        bail!("unknown benchmark {what:?} (kernels, train, dpo, generate, ppo)");
    }
    if what == "ppo" {
        if !train.plan_only {
            bail!("bench ppo prints a PPO iteration's memory plan: add --plan-only");
        }
        let plan = ppo_plan(train, generate)?;
        return write_json(json, &plan);
    }
    let sharded = train.shard != crate::train::run_args::Shard::None;
    let world = crate::dist::world::World::from_env()?;
    let full = train.shard == crate::train::run_args::Shard::Full;
    if !train.plan_only && !world.is_single() {
        // Over a launcher's ranks: bench train of --shard full, each rank a GPU.
        if what != "train" || !full {
            bail!(
                "over several ranks ({}) prefer bench runs `train --shard full` (a fully sharded \
                 step: its gathers and reduce-scatters are the step); other benchmarks run one \
                 process on one GPU",
                world.describe()
            );
        }
        if train.world_size > 1 && train.world_size != world.size {
            bail!(
                "--world-size {} but the launcher started {} ranks",
                train.world_size,
                world.size
            );
        }
    } else if !train.plan_only && (train.world_size > 1 || sharded) {
        bail!(
            "--world-size and --shard describe a plan (--plan-only); a benchmark runs one process \
             on one GPU, or `train --shard full` over a launcher's ranks (prefer launch \
             --nproc-per-node N -- bench train --shard full)"
        );
    }
    if train.plan_only {
        if !matches!(what, "train" | "dpo") {
            bail!("--plan-only is for bench train and bench dpo");
        }
        let cfg = LlamaConfig::preset(&train.preset)?;
        let plan = train.plan(&cfg, what);
        print!("{}", plan.render(&train.plan_title(what)));
        return write_json(json, &plan);
    }
    if what == "generate" {
        return write_json(json, &bench_generate(generate)?);
    }
    // The engine first: where it cannot run, its error names what is missing in the order
    // `prefer check` and `info` give it (kernels in this build, a driver, a GPU).
    CudaEngine::new()?;
    let gpu = probe_gpu()?.name;
    let doc = match what {
        "kernels" => {
            let eng = CudaEngine::new()?;
            let rows = run_kernel_benches(&eng)?;
            print_bench(&rows, &gpu);
            serde_json::json!({"gpu": gpu, "rows": rows})
        }
        "train" => bench_train(train, &gpu)?,
        "dpo" => bench_dpo(train, &gpu)?,
        _ => unreachable!("checked above"),
    };
    // Over several ranks rank 0 alone reports (the others' documents are null).
    match doc.is_null() {
        true => Ok(()),
        false => write_json(json, &doc),
    }
}

/// `doc` as pretty JSON at `--json`'s path (atomically), when one was given.
fn write_json(json: Option<&Path>, doc: &impl serde::Serialize) -> Result<()> {
    if let Some(path) = json {
        crate::output::write_file_atomically(path, serde_json::to_string_pretty(doc)?.as_bytes())?;
    }
    Ok(())
}

/// MFU's FLOPs per token (DESIGN.md): 6·N for the matmuls of forward and backward, plus
/// 12·L·d·T for attention.
fn flops_per_token(cfg: &LlamaConfig, params: usize, seq: usize) -> f64 {
    6.0 * params as f64 + 12.0 * (cfg.num_hidden_layers * cfg.hidden_size * seq) as f64
}

fn bench_train(a: &TrainBenchArgs, gpu: &str) -> Result<serde_json::Value> {
    let cfg = LlamaConfig::preset(&a.preset)?;
    let layout = ParamLayout::new(&cfg);
    let n_params = layout.len;
    // Over a launcher's ranks, one rank's fully sharded step (run_bench checked the flags).
    let group = crate::cmd::train::join_group()?;
    let ranks = group.size();
    let a = &TrainBenchArgs {
        world_size: ranks,
        ..a.clone()
    };
    let root = group.is_root();
    let plan = a.plan(&cfg, "train");
    if root {
        print!("{}", plan.render(&a.plan_title("train")));
    }
    let mut cpu = Llama::new(cfg.clone(), init_params(&cfg, &layout, 0));
    cpu.recompute = a.recompute;
    // On the software GPU the bytes the step holds are counted: its peak, against the plan.
    let emu_before = crate::emu::is_active()
        .then(crate::emu::reset_peak)
        .transpose()?;
    let mut trainer = match ranks {
        1 => GpuTrainer::new(&cpu)?,
        _ => GpuTrainer::fully_sharded(crate::ops::cuda::backend::Cuda::new()?, &cpu, &group)?,
    };
    drop(cpu);

    let seqs: Vec<Vec<u32>> = (0..a.batch)
        .map(|b| {
            (0..a.seq)
                .map(|t| ((b * 7919 + t * 104_729) % cfg.vocab_size) as u32)
                .collect()
        })
        .collect();
    let batch = Batch::right_padded(&seqs, cfg.pad_token_id.unwrap_or(0));
    let dlogp = trainer.lm_loss_grad(&batch)?;
    let eng_ms = {
        let t = &mut trainer;
        // time_ms borrows the engine; the step needs the trainer mutably, so time by hand.
        t.lm_step(&batch, &dlogp, 1e-5)?; // warm-up: plans, scratch
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = t
            .model
            .backend
            .eng
            .stream
            .record_event(timing)
            .map_err(|e| anyhow!("{e:?}"))?;
        for _ in 0..a.steps {
            t.lm_step(&batch, &dlogp, 1e-5)?;
        }
        let end = t
            .model
            .backend
            .eng
            .stream
            .record_event(timing)
            .map_err(|e| anyhow!("{e:?}"))?;
        start.elapsed_ms(&end).map_err(|e| anyhow!("{e:?}"))? as f64 / a.steps.max(1) as f64
    };
    let (free1, total) = trainer
        .model
        .backend
        .eng
        .ctx
        .mem_get_info()
        .map_err(|e| anyhow!("{e:?}"))?;
    let tokens = (a.batch * a.seq) as f64;
    let tok_s = tokens / (eng_ms / 1e3);
    let mfu = tok_s * flops_per_token(&cfg, n_params, a.seq) / PEAK_FLOPS;
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    // Every rank's peak on the software GPU (the bytes live at the most since before the
    // trainer was made), gathered to rank 0.
    let peaks: Option<Vec<f64>> = match emu_before {
        Some(before) => {
            let peak = (crate::emu::memory()?.peak_bytes - before.live_bytes) as f64;
            let all = group.all_gather_f64("bench peaks", &[peak])?;
            Some(all.into_iter().map(|v| v[0]).collect())
        }
        None => None,
    };
    group.finish();
    if !root {
        return Ok(serde_json::Value::Null);
    }
    println!(
        "prefer bench train on {gpu}: {} ({:.1}M parameters), {} × {} tokens{}",
        a.preset,
        n_params as f64 / 1e6,
        a.batch,
        a.seq,
        if ranks > 1 {
            format!(" a rank, {ranks} ranks (--shard full)")
        } else {
            String::new()
        }
    );
    println!(
        "memory: planned {:.2} GiB; in use after the steps {:.2} GiB of {:.1} GiB",
        plan.total_gib(),
        gib(total - free1),
        gib(total)
    );
    if let Some(p) = &peaks {
        let shown: Vec<String> = p
            .iter()
            .map(|b| format!("{:.3}", b / plan.total as f64))
            .collect();
        println!(
            "software GPU peak, each rank's against the plan: {}",
            shown.join(", ")
        );
    }
    println!(
        "step {eng_ms:.1} ms, {tok_s:.0} tokens/s, MFU {:.1}%",
        mfu * 100.0
    );
    Ok(serde_json::json!({
        "gpu": gpu, "preset": a.preset, "batch": a.batch, "seq": a.seq, "params": n_params,
        "recompute": a.recompute, "step_ms": eng_ms, "tokens_per_s": tok_s, "mfu": mfu,
        "planned_gib": plan.total_gib(), "used_gib": gib(total - free1), "ranks": ranks,
        "planned_bytes": plan.total, "emu_peak_bytes": peaks,
    }))
}

/// T3: a DPO optimiser step on the GPU, `batch` pairs of `seq` tokens (half prompt, half
/// response) each, through the same objective and state the `dpo` command trains with.
fn bench_dpo(a: &TrainBenchArgs, gpu: &str) -> Result<serde_json::Value> {
    use crate::data::preference::PreferencePair;
    use crate::loss::DpoConfig;
    use crate::train::dpo::DpoObjective;
    use crate::train::objective::{Objective, Split};
    use crate::train::state::TrainState;

    let cfg = LlamaConfig::preset(&a.preset)?;
    let layout = ParamLayout::new(&cfg);
    let plan = a.plan(&cfg, "dpo");
    print!("{}", plan.render(&a.plan_title("dpo")));
    let mut cpu = Llama::new(cfg.clone(), init_params(&cfg, &layout, 0));
    cpu.recompute = a.recompute;
    let mut state = GpuTrainer::new(&cpu)?;
    let half = a.seq / 2;
    let ids = |salt: usize, len: usize| {
        (0..len)
            .map(|t| ((salt * 7919 + t * 104_729) % cfg.vocab_size) as u32)
            .collect::<Vec<_>>()
    };
    let pairs: Vec<PreferencePair> = (0..a.batch)
        .map(|i| PreferencePair {
            prompt: ids(i, half),
            chosen: ids(1000 + i, half),
            rejected: ids(2000 + i, half),
            margin: None,
            line: i + 1,
        })
        .collect();
    let reference: Vec<(f32, f32)> = vec![(-1000.0, -1000.0); pairs.len()];
    let split = Split {
        pairs: &pairs,
        reference: Some(&reference),
    };
    let objective = DpoObjective {
        config: DpoConfig::default(),
    };
    let idx: Vec<usize> = (0..pairs.len()).collect();
    let step = |state: &mut GpuTrainer| -> Result<()> {
        state.zero_grads()?;
        let (model, grads) = state.model_and_grads();
        objective.accumulate(model, &split, &idx, 1.0, grads)?;
        state.step(1e-6, 1.0).map(|_| ())
    };
    step(&mut state)?; // warm-up
    let t0 = std::time::Instant::now();
    for _ in 0..a.steps {
        step(&mut state)?; // each step reads the norm back, so it ends synchronised
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3 / a.steps.max(1) as f64;
    let (free, total) = state
        .model
        .backend
        .eng
        .ctx
        .mem_get_info()
        .map_err(|e| anyhow!("{e:?}"))?;
    let tokens = (2 * a.batch * a.seq) as f64;
    let tok_s = tokens / (ms / 1e3);
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    println!("prefer bench dpo on {gpu}: {}, {} pairs × {} tokens: step {ms:.1} ms, {tok_s:.0} tokens/s, {:.2} GiB in use ({:.2} GiB planned)", a.preset, a.batch, a.seq, gib(total - free), plan.total_gib());
    Ok(
        serde_json::json!({"gpu": gpu, "preset": a.preset, "pairs": a.batch, "seq": a.seq, "recompute": a.recompute, "step_ms": ms, "tokens_per_s": tok_s, "used_gib": gib(total - free), "planned_gib": plan.total_gib()}),
    )
}
