//! `prefer demo`: the whole offline pipeline on an embedded default, with no downloads. Builds the
//! tiny model, writes the built-in synthetic preference task, trains a reward model and a DPO
//! policy on it, and prints their held-out accuracy before and after.

use super::init::{run_init, InitOptions};
use super::Device;
use crate::data::synthetic::synthetic_preferences;
use crate::model::weights::SaveDtype;
use crate::train::{run_training, RunSummary, TrainArgs, TrainerKind};
use anyhow::{Context, Result};
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
        out: Some(out.to_path_buf()),
        batch_size: Some(16),
        grad_accum: Some(1),
        epochs: Some(2),
        warmup_ratio: Some(0.1),
        seed: Some(seed),
        device: Some(device),
        eval_every: Some(20),
        save_every: Some(50),
        ref_cache_dir: Some(out.join("reference-cache")),
        ..Default::default()
    }
}

pub fn run_demo(out: &Path, device: Device, seed: u64) -> Result<()> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(out.join("data"))?;
    let base = out.join("base");
    let opts = InitOptions {
        seed,
        scalar_head: false,
        dtype: SaveDtype::F32,
        layers: None,
        init_std: None,
    };
    run_init("tiny", &base, &opts)?;
    let (train, eval) = (out.join("data/train.jsonl"), out.join("data/eval.jsonl"));
    std::fs::write(&train, synthetic_preferences(512, seed))?;
    std::fs::write(&eval, synthetic_preferences(128, seed + 1_000_003))?;
    eprintln!("wrote the synthetic preference task: 512 training pairs, 128 held out");

    eprintln!("\n== reward model (Bradley-Terry) ==");
    let rm_out = out.join("rm");
    let rm = run_training(
        TrainArgs {
            lr: Some(3e-3),
            ..demo_args(&rm_out, &base, &train, &eval, device, seed)
        },
        TrainerKind::RewardModel,
    )?;
    eprintln!("\n== DPO (sigmoid, β = 0.1) ==");
    let dpo_out = out.join("dpo");
    let dpo = run_training(
        TrainArgs {
            lr: Some(2e-3),
            ..demo_args(&dpo_out, &base, &train, &eval, device, seed)
        },
        TrainerKind::Dpo,
    )?;

    let show = |name: &str, s: &RunSummary, dir: &Path| {
        println!(
            "{name:<14} held-out accuracy {:.3} -> {:.3}   ({} steps; model, metrics.jsonl and curves.png in {})",
            s.initial_eval_accuracy.unwrap_or(f64::NAN),
            s.final_eval_accuracy.unwrap_or(f64::NAN),
            s.steps,
            dir.display()
        );
    };
    println!();
    show("reward model", &rm, &rm_out);
    show("DPO policy", &dpo, &dpo_out);
    Ok(())
}
