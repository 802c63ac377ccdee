//! `prefer rm`, `prefer dpo` and `prefer eval-rm`.

use crate::train::{evaluate_reward_model, run_training, TrainArgs, TrainerKind};
use anyhow::Result;
use std::path::Path;

pub fn run_rm(args: TrainArgs) -> Result<()> {
    run_training(args, TrainerKind::RewardModel).map(|_| ())
}

pub fn run_dpo(args: TrainArgs) -> Result<()> {
    run_training(args, TrainerKind::Dpo).map(|_| ())
}

pub fn run_eval_rm(model: &Path, data: &Path, batch_size: usize) -> Result<()> {
    let s = evaluate_reward_model(model, data, batch_size)?;
    let report = serde_json::json!({
        "pairs": s.pairs, "accuracy": s.accuracy(), "loss": s.loss(), "mean_margin": s.margin(),
        "mean_chosen_reward": s.chosen_reward(), "mean_rejected_reward": s.rejected_reward(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
