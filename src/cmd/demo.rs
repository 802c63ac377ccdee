//! `prefer demo`: the whole pipeline on an embedded default, with no downloads. Builds the tiny
//! model, writes the built-in synthetic preference task, trains a reward model and a DPO policy on
//! it, then PPO from the base model against that reward model, and prints held-out accuracy before
//! and after, and the reward model's score of the PPO policy's completions.

use super::init::{run_init, InitOptions};
use super::Device;
use crate::data::synthetic::synthetic_preferences;
use crate::model::weights::SaveDtype;
use crate::train::{run_training, RunArgs, RunSummary, TrainArgs, TrainerKind};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Settings for the tiny model on the synthetic task: far larger learning rates than the paper's
/// (which are for pretrained 7B-70B models), so a random 0.1M-parameter model learns in seconds.
fn demo_args(
    out: &Path,
    base: &Path,
    data: &Path,
    eval: &Path,
    device: Device,
    seed: u64,
) -> TrainArgs {
    TrainArgs {
        model: Some(base.to_path_buf()),
        data: Some(data.to_path_buf()),
        eval_data: Some(eval.to_path_buf()),
        run: RunArgs {
            out: Some(out.to_path_buf()),
            epochs: Some(2),
            warmup_ratio: Some(0.1),
            seed: Some(seed),
            device: Some(device),
            save_every: Some(50),
            ..RunArgs::default()
        },
        batch_size: Some(16),
        grad_accum: Some(1),
        // The PPO stage renders its prompts with the chat template, so the reward model and the
        // DPO policy learn them in the same form.
        chat_template: Some(true),
        eval_every: Some(20),
        ref_cache_dir: Some(out.join("reference-cache")),
        ..Default::default()
    }
}

fn with_lr(mut args: TrainArgs, lr: f32) -> TrainArgs {
    args.run.lr = Some(lr);
    args
}

/// Marks a folder as the demo's own, so a later demo may replace what it wrote there.
const MARKER: &str = ".prefer-demo";
/// Everything the demo writes in its folder.
const DEMO_ENTRIES: [&str; 6] = [MARKER, "base", "data", "rm", "dpo", "ppo"];

/// Makes `out` ready for a fresh demo without ever deleting what the user put there: an empty or
/// missing folder is fine; a previous demo's folder loses only the entries the demo wrote; any
/// other non-empty folder is refused.
fn prepare_out(out: &Path) -> Result<()> {
    if out.exists() {
        if !out.is_dir() {
            bail!(
                "{} exists and is not a folder; choose another --out",
                out.display()
            );
        }
        let entries: Vec<String> = std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        if !entries.is_empty() {
            if !out.join(MARKER).is_file() {
                bail!(
                    "{} is not empty and is not a previous demo's folder; choose an empty or new --out",
                    out.display()
                );
            }
            for name in DEMO_ENTRIES {
                let p = out.join(name);
                if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                        .with_context(|| format!("clearing {}", p.display()))?;
                } else if p.exists() {
                    std::fs::remove_file(&p)
                        .with_context(|| format!("clearing {}", p.display()))?;
                }
            }
        }
    }
    std::fs::create_dir_all(out.join("data"))?;
    std::fs::write(
        out.join(MARKER),
        "written by prefer demo; a later demo may replace this folder's demo entries\n",
    )?;
    Ok(())
}

pub fn run_demo(out: &Path, device: Device, seed: u64) -> Result<()> {
    prepare_out(out)?;
    let base = out.join("base");
    let opts = InitOptions {
        seed,
        scalar_head: false,
        dtype: SaveDtype::F32,
        layers: None,
        init_std: None,
        vocab_size: None,
        overwrite: false,
    };
    run_init("tiny", &base, &opts)?;
    let (train, eval) = (out.join("data/train.jsonl"), out.join("data/eval.jsonl"));
    std::fs::write(&train, synthetic_preferences(512, seed))?;
    std::fs::write(&eval, synthetic_preferences(128, seed + 1_000_003))?;
    eprintln!("wrote the synthetic preference task: 512 training pairs, 128 held out");

    eprintln!("\n== reward model (Bradley-Terry) ==");
    let rm_out = out.join("rm");
    let rm = run_training(
        with_lr(demo_args(&rm_out, &base, &train, &eval, device, seed), 3e-3),
        TrainerKind::RewardModel,
    )?;
    super::train::exit_if_interrupted(&rm);
    eprintln!("\n== DPO (sigmoid, β = 0.1) ==");
    let dpo_out = out.join("dpo");
    let dpo = run_training(
        with_lr(
            demo_args(&dpo_out, &base, &train, &eval, device, seed),
            2e-3,
        ),
        TrainerKind::Dpo,
    )?;
    super::train::exit_if_interrupted(&dpo);

    eprintln!("\n== PPO (the paper's switches: KL 0.05, EOS trick, advantage whitening) ==");
    let prompts = out.join("data/prompts.jsonl");
    std::fs::write(&prompts, demo_prompts(&std::fs::read_to_string(&train)?))?;
    let ppo_out = out.join("ppo");
    let ppo = crate::rl::run_ppo(crate::rl::PpoArgs {
        policy: Some(base.clone()),
        reward_model: Some(rm_out.clone()),
        prompts: Some(prompts),
        run: RunArgs {
            out: Some(ppo_out.clone()),
            lr: Some(3e-3),
            max_steps: Some(40),
            seed: Some(seed),
            device: Some(device),
            ..RunArgs::default()
        },
        prompt_batch_size: Some(12),
        rollouts_per_prompt: Some(4),
        minibatch_size: Some(16),
        max_new_tokens: Some(40),
        ppo_epochs: Some(2),
        temperature: Some(1.0),
        ..Default::default()
    })?;
    if ppo.interrupted {
        super::train::exit_for_signal();
    }

    let show = |name: &str, s: &RunSummary, dir: &Path| {
        println!(
            "{name:<14} held-out accuracy {:.3} -> {:.3} (ties {:.3} -> {:.3}, counted as wrong)   ({} steps; model, metrics.jsonl and curves.png in {})",
            s.initial_eval_accuracy.unwrap_or(f64::NAN),
            s.final_eval_accuracy.unwrap_or(f64::NAN),
            s.initial_eval_ties.unwrap_or(f64::NAN),
            s.final_eval_ties.unwrap_or(f64::NAN),
            s.steps,
            dir.display()
        );
    };
    println!();
    show("reward model", &rm, &rm_out);
    show("DPO policy", &dpo, &dpo_out);
    let (first, last) = (
        ppo.scores.first().copied().unwrap_or(f64::NAN),
        ppo.scores.iter().rev().take(5).sum::<f64>() / ppo.scores.len().clamp(1, 5) as f64,
    );
    println!(
        "PPO policy     reward-model score of its completions {first:.3} -> {last:.3} (mean of the last 5 of {} iterations; policy, metrics.jsonl and curves.png in {})",
        ppo.iterations,
        ppo_out.display()
    );
    Ok(())
}

/// The task's distinct prompts, one JSONL line each, for PPO's rollouts.
fn demo_prompts(pairs: &str) -> String {
    let mut seen: Vec<String> = Vec::new();
    for line in pairs.lines() {
        let p = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["prompt"].as_str().map(str::to_string));
        if let Some(p) = p.filter(|p| !seen.contains(p)) {
            seen.push(p);
        }
    }
    seen.iter()
        .map(|p| serde_json::json!({ "prompt": p }).to_string() + "\n")
        .collect()
}
