//! `prefer rm`, `prefer dpo` and `prefer eval-rm`.

use super::Device;
use crate::dist::group::Group;
use crate::train::{evaluate_reward_model, run_training_in, RunSummary, TrainArgs, TrainerKind};
use anyhow::Result;
use std::path::Path;
use std::sync::Arc;

pub fn run_rm(args: TrainArgs) -> Result<()> {
    let group = join_group()?;
    let summary = run_training_in(args, TrainerKind::RewardModel, group.clone())?;
    group.finish();
    exit_if_interrupted(&summary);
    Ok(())
}

pub fn run_dpo(args: TrainArgs) -> Result<()> {
    let group = join_group()?;
    let summary = run_training_in(args, TrainerKind::Dpo, group.clone())?;
    group.finish();
    exit_if_interrupted(&summary);
    Ok(())
}

/// The ranks a launcher started (torchrun, srun, mpirun, `prefer launch`), met at
/// MASTER_ADDR:MASTER_PORT; one process without a launcher. The command line is the job's
/// identity, so a rank of another job is refused. Call `finish` on it when the command has
/// written everything: a rank that exits without it is taken for dead by the others.
pub fn join_group() -> Result<Arc<Group>> {
    let job: Vec<String> = std::env::args().skip(1).collect();
    Ok(Arc::new(Group::join(&job.join(" "))?))
}

/// A run stopped by a signal has saved its checkpoint and said so; the exit status is 128 + the
/// signal (130 for Ctrl-C, 143 for SIGTERM), so schedulers, scripts and shells see the
/// interruption.
pub fn exit_if_interrupted(summary: &RunSummary) {
    if summary.interrupted {
        exit_for_signal();
    }
}

/// Exits with 128 + the stop signal received (130 when none is known).
pub fn exit_for_signal() -> ! {
    let sig = crate::signals::received().unwrap_or(signal_hook::consts::SIGINT);
    std::process::exit(crate::signals::exit_status(sig));
}

pub fn run_eval_rm(
    model: &Path,
    data: &Path,
    batch_size: usize,
    device: Device,
    chat_template: bool,
    json: Option<&Path>,
) -> Result<()> {
    let eval = evaluate_reward_model(model, data, batch_size, device, chat_template)?;
    let s = &eval.overall;
    let mut report = serde_json::json!({
        "pairs": s.pairs, "accuracy": s.accuracy(), "ties": s.ties, "loss": s.loss(),
        "mean_margin": s.margin(), "mean_chosen_reward": s.chosen_reward(),
        "mean_rejected_reward": s.rejected_reward(),
    });
    if let Some(subsets) = &eval.subsets {
        use crate::eval::rewardbench::{score, table, SubsetResult};
        let tallies = subsets
            .iter()
            .map(|(name, s)| {
                let r = SubsetResult {
                    pairs: s.pairs,
                    correct: s.correct,
                    ties: s.ties,
                };
                (name.clone(), r)
            })
            .collect();
        let rb = score(&tallies);
        eprint!("{}", table(&rb));
        let serde_json::Value::Object(fields) = serde_json::to_value(&rb)? else {
            unreachable!("a struct serialises to an object")
        };
        report.as_object_mut().expect("an object").extend(fields);
    }
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(path) = json {
        let mut w = crate::output::AtomicFile::create(path)?;
        std::io::Write::write_all(&mut w, format!("{text}\n").as_bytes())?;
        w.commit()?;
    }
    Ok(())
}
