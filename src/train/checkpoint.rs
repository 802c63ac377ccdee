//! Resumable training checkpoints: the model as an HF folder (f32, so resuming is exact), plus
//! the AdamW moments and the trainer's position, written together and atomically.

use super::state::HostState;
use crate::model::weights::{load_checkpoint, save_checkpoint, SaveDtype};
use crate::model::LlamaConfig;
use anyhow::{bail, Context, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where the run stands: the next optimiser step to take, and the optimiser's step count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub next_step: usize,
    pub total_steps: usize,
    pub adam_t: u64,
    /// Offline trainers: micro-batches per optimiser step over all ranks (`--grad-accum` ×
    /// ranks when the run started), so a run resumed on another number of ranks keeps its global
    /// batch. Absent in checkpoints of one-process runs written before data parallel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batches_per_step: Option<usize>,
}

/// Writes `dir` (the model, optimizer.safetensors, trainer_state.json and `extra_files`) in one
/// atomic folder swap.
pub fn save_training_checkpoint(
    dir: &Path,
    cfg: &LlamaConfig,
    host: &HostState,
    state: &TrainerState,
    extra_files: &[(&str, &[u8])],
) -> Result<()> {
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (m, v) = (bytes(&host.m), bytes(&host.v));
    let views = vec![
        (
            "exp_avg",
            TensorView::new(Dtype::F32, vec![host.m.len()], &m)?,
        ),
        (
            "exp_avg_sq",
            TensorView::new(Dtype::F32, vec![host.v.len()], &v)?,
        ),
    ];
    let optimizer = safetensors::serialize(views, None)?;
    let state_json = serde_json::to_vec_pretty(state)?;
    let mut files: Vec<(&str, &[u8])> = vec![
        ("optimizer.safetensors", &optimizer),
        ("trainer_state.json", &state_json),
    ];
    files.extend_from_slice(extra_files);
    save_checkpoint(dir, cfg, &host.params, SaveDtype::F32, &files)
}

/// The run position of a training checkpoint folder (`OUT/checkpoint`, or its `.old` twin).
pub fn read_trainer_state(dir: &Path) -> Result<TrainerState> {
    let state_path = crate::model::weights::resolve_checkpoint_dir(dir).join("trainer_state.json");
    serde_json::from_slice(
        &std::fs::read(&state_path).with_context(|| format!("reading {}", state_path.display()))?,
    )
    .with_context(|| format!("parsing {}", state_path.display()))
}

/// Reads what [`save_training_checkpoint`] wrote.
pub fn load_training_checkpoint(dir: &Path) -> Result<(LlamaConfig, HostState, TrainerState)> {
    let state = read_trainer_state(dir)?;
    let dir = &crate::model::weights::resolve_checkpoint_dir(dir);
    let (cfg, params) = load_checkpoint(dir)?;
    let opt_path = dir.join("optimizer.safetensors");
    let bytes =
        std::fs::read(&opt_path).with_context(|| format!("reading {}", opt_path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("parsing {}", opt_path.display()))?;
    let (mut m, mut v) = (Vec::new(), Vec::new());
    for (name, dst) in [("exp_avg", &mut m), ("exp_avg_sq", &mut v)] {
        let t = st
            .tensor(name)
            .with_context(|| format!("{}: no tensor {name}", opt_path.display()))?;
        if t.dtype() != Dtype::F32 || t.shape() != [params.len()] {
            bail!(
                "{}: {name} has {:?} {:?}, expected F32 [{}]",
                opt_path.display(),
                t.dtype(),
                t.shape(),
                params.len()
            );
        }
        *dst = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
    }
    let host = HostState {
        params,
        m,
        v,
        t: state.adam_t,
    };
    Ok((cfg, host, state))
}
