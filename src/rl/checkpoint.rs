//! A PPO run's checkpoint: policy/ and value/ (each an HF folder with its AdamW state) and
//! rl_state.json (the iteration, the KL controller, the running score statistics).

use super::setup::{Models, Setup};
use crate::loss::{KlController, RunningMoments};
use crate::model::weights::{replace_dir, staging_dir};
use crate::train::checkpoint::{load_training_checkpoint, save_training_checkpoint, TrainerState};
use crate::train::state::{HostState, TrainState};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The run position that is not in the models: saved with every checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RlState {
    pub next_iteration: usize,
    pub total_iterations: usize,
    pub kl: KlController,
    pub moments: RunningMoments,
}

/// policy/ and value/ (each an HF folder with its AdamW state) and rl_state.json, swapped in as
/// one folder so a crash leaves the previous checkpoint whole.
pub fn save_rl_checkpoint(
    dir: &Path,
    policy: &HostState,
    value: Option<&HostState>,
    s: &Setup,
    state: &RlState,
) -> Result<()> {
    let tmp = staging_dir(dir)?;
    let extra: Vec<(&str, &[u8])> = s
        .extra_files
        .iter()
        .map(|(n, b)| (*n, b.as_slice()))
        .collect();
    let pos = TrainerState {
        next_step: state.next_iteration,
        total_steps: state.total_iterations,
        adam_t: 0,
        micro_batches_per_step: None,
    };
    save_training_checkpoint(
        &tmp.join("policy"),
        &s.policy_cfg,
        policy,
        &TrainerState {
            adam_t: policy.t,
            ..pos.clone()
        },
        &extra,
    )?;
    if let (Some(host), Some(cfg)) = (value, &s.value_cfg) {
        save_training_checkpoint(
            &tmp.join("value"),
            cfg,
            host,
            &TrainerState {
                adam_t: host.t,
                ..pos
            },
            &[],
        )?;
    }
    std::fs::write(tmp.join("rl_state.json"), serde_json::to_vec_pretty(state)?)?;
    replace_dir(&tmp, dir)
}

/// Loads what [`save_rl_checkpoint`] wrote into the models; returns the run position.
pub fn load_rl_checkpoint<S: TrainState>(dir: &Path, m: &mut Models<S>) -> Result<RlState> {
    let dir = crate::model::weights::resolve_checkpoint_dir(dir);
    let state_file = dir.join("rl_state.json");
    let state: RlState = serde_json::from_slice(
        &std::fs::read(&state_file).with_context(|| format!("reading {}", state_file.display()))?,
    )
    .with_context(|| format!("parsing {}", state_file.display()))?;
    let (_, host, _) = load_training_checkpoint(&dir.join("policy"))?;
    m.policy.restore(host)?;
    if let Some(v) = m.value.as_mut() {
        let (_, host, _) = load_training_checkpoint(&dir.join("value"))?;
        v.restore(host)?;
    }
    Ok(state)
}
