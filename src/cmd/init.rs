//! `prefer init`: a random checkpoint for a preset, with its config.json and tokenizer.

use crate::data::tokenizer::{byte_tokenizer_config_json, byte_tokenizer_json};
use crate::model::init::init_params;
use crate::model::weights::{save_checkpoint, SaveDtype};
use crate::model::{LlamaConfig, ParamLayout};
use anyhow::Result;
use std::path::Path;

pub fn run_init(preset: &str, out: &Path, seed: u64, scalar_head: bool, dtype: SaveDtype) -> Result<()> {
    let mut cfg = LlamaConfig::preset(preset)?;
    cfg.scalar_head = scalar_head;
    let layout = ParamLayout::new(&cfg);
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
        if scalar_head { "a reward-model checkpoint" } else { "a checkpoint" },
        layout.len as f64 / 1e6,
        if scalar_head { ", scalar head" } else { "" },
        out.display()
    );
    Ok(())
}
