//! `prefer init`: a random checkpoint for a preset, with its config.json and tokenizer.

use crate::data::tokenizer::{byte_tokenizer_config_json, byte_tokenizer_json};
use crate::model::init::init_params;
use crate::model::weights::{save_checkpoint, SaveDtype};
use crate::model::{LlamaConfig, ParamLayout};
use anyhow::{Context, Result};
use std::path::Path;

pub struct InitOptions {
    pub seed: u64,
    pub scalar_head: bool,
    pub dtype: SaveDtype,
    pub layers: Option<usize>,
    pub init_std: Option<f32>,
}

pub fn run_init(preset: &str, out: &Path, opts: &InitOptions) -> Result<()> {
    let InitOptions {
        seed,
        scalar_head,
        dtype,
        ..
    } = *opts;
    let mut cfg = LlamaConfig::preset(preset)?;
    cfg.scalar_head = scalar_head;
    if let Some(layers) = opts.layers {
        anyhow::ensure!(layers > 0, "--layers must be at least 1");
        cfg.num_hidden_layers = layers;
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
    crate::model::memory_budget::ensure_fits_host(
        &format!("a {preset} model of {} parameters", layout.len),
        layout.len as u128 * 8,
        "lower --layers",
    )?;
    let params = init_params(&cfg, &layout, seed);
    let tokenizer = byte_tokenizer_json();
    let tokenizer_config = byte_tokenizer_config_json();
    save_checkpoint(
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
