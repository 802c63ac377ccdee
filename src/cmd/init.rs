//! `prefer init`: a random checkpoint for a preset, with its config.json and tokenizer.

use crate::data::tokenizer::{byte_tokenizer_config_json, byte_tokenizer_json};
use crate::model::init::init_params;
use crate::model::weights::{save_model_into, SaveDtype};
use crate::model::{LlamaConfig, ParamLayout};
use crate::output::folder::{list_entries, INIT_MARKER};
use crate::output::{inspect_folder, write_file_atomically, FolderState};
use anyhow::{bail, Context, Result};
use std::path::Path;

pub struct InitOptions {
    pub seed: u64,
    pub scalar_head: bool,
    pub dtype: SaveDtype,
    pub layers: Option<usize>,
    pub init_std: Option<f32>,
    /// Override the preset's vocabulary size (at least the byte tokenizer's 259 ids): the
    /// preset's widths with a small embedding, for tests of large layers.
    pub vocab_size: Option<usize>,
    /// Replace a checkpoint an earlier `prefer init` wrote in the folder.
    pub overwrite: bool,
}

/// Refuses any folder but a new or empty one, or (with `--overwrite`) one an earlier `prefer init`
/// wrote: init never writes over a user's model or files.
fn check_out(out: &Path, overwrite: bool) -> Result<()> {
    let shown = out.display();
    match inspect_folder(out)? {
        FolderState::Absent | FolderState::Empty => Ok(()),
        FolderState::InitCheckpoint if overwrite => Ok(()),
        FolderState::InitCheckpoint => bail!(
            "{shown} holds a checkpoint an earlier prefer init wrote; --overwrite replaces it"
        ),
        FolderState::Run => bail!("{shown} is a training run's folder; choose another --out"),
        FolderState::Foreign(names) => bail!(
            "{shown} is not empty (it holds {}) and prefer init did not write it; choose a new or empty folder",
            list_entries(&names)
        ),
        FolderState::NotAFolder => bail!("--out {shown} exists and is not a folder"),
    }
}

pub fn run_init(preset: &str, out: &Path, opts: &InitOptions) -> Result<()> {
    let InitOptions {
        seed,
        scalar_head,
        dtype,
        ..
    } = *opts;
    check_out(out, opts.overwrite)?;
    let mut cfg = LlamaConfig::preset(preset)?;
    cfg.scalar_head = scalar_head;
    if let Some(layers) = opts.layers {
        anyhow::ensure!(layers > 0, "--layers must be at least 1");
        cfg.num_hidden_layers = layers;
    }
    if let Some(v) = opts.vocab_size {
        let least = crate::model::config::BYTE_VOCAB;
        anyhow::ensure!(
            v >= least,
            "--vocab-size {v}: the byte tokenizer needs at least {least} ids"
        );
        cfg.vocab_size = v;
    }
    if let Some(std) = opts.init_std {
        anyhow::ensure!(
            std.is_finite() && std >= 0.0,
            "--init-std must be a finite non-negative number"
        );
        cfg.initializer_range = std;
    }
    cfg.validate().context("--layers")?;
    let layout = ParamLayout::new(&cfg);
    // Held twice at the peak: the f32 values and their encoded bytes while saving.
    crate::ops::memory_budget::ensure_fits_host(
        &format!("a {preset} model of {} parameters", layout.len),
        layout.len as u128 * 8,
        "lower --layers",
    )?;
    let params = init_params(&cfg, &layout, seed);
    let tokenizer = byte_tokenizer_json();
    let tokenizer_config = byte_tokenizer_config_json();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // The marker first: an interrupted init leaves a folder it may finish later.
    let marker = serde_json::json!({"written_by": "prefer init", "preset": preset, "seed": seed});
    write_file_atomically(&out.join(INIT_MARKER), marker.to_string().as_bytes())?;
    // Each file whole (staged in the folder, renamed in with config.json last).
    save_model_into(
        out,
        &cfg,
        &params,
        dtype,
        &[
            ("tokenizer.json", tokenizer.as_bytes()),
            ("tokenizer_config.json", tokenizer_config.as_bytes()),
        ],
    )?;
    eprintln!(
        "wrote {} ({preset}, {:.1}M parameters{}, seed {seed}) to {}",
        if scalar_head {
            "a reward-model checkpoint"
        } else {
            "a checkpoint"
        },
        layout.len as f64 / 1e6,
        if scalar_head { ", scalar head" } else { "" },
        out.display()
    );
    Ok(())
}
