//! `prefer eval-rm`: a reward model's pairwise accuracy on a preference file.

use super::objective::{Objective, PairStats, Split};
use super::rm::RewardObjective;
use crate::data::chat_template::ChatTemplate;
use crate::data::preference::{load_preferences, DataOptions, Encoder, Overflow};
use crate::data::tokenizer::TextTokenizer;
use crate::model::weights::load_checkpoint;
use crate::model::Llama;
use crate::ops::Device;
use anyhow::{bail, Result};
use std::path::Path;

/// Pairwise accuracy of a reward model on a preference file (the `eval-rm` command), with string
/// prompts read raw or, under `chat_template`, templated as the model was trained.
pub fn evaluate_reward_model(
    model_dir: &Path,
    data: &Path,
    batch_size: usize,
    device: Device,
    chat_template: bool,
) -> Result<PairStats> {
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let device = device.prepare()?;
    let (cfg, params) = load_checkpoint(model_dir)?;
    if !cfg.scalar_head {
        bail!(
            "{} has no scalar head (score.weight): it is not a reward model",
            model_dir.display()
        );
    }
    let tokenizer = TextTokenizer::load(model_dir, &cfg)?;
    let template = ChatTemplate::for_model(model_dir)?;
    let enc = Encoder {
        tokenizer: &tokenizer,
        template: &template,
        cfg: &cfg,
    };
    // Evaluation keeps every pair: one longer than the model's context is cut to fit it (the
    // prompt's start first), not dropped, and the report counts it.
    let context = cfg.max_position_embeddings;
    let opts = DataOptions {
        max_prompt_len: context.saturating_sub(1),
        max_len: context,
        overflow: Overflow::Truncate,
        skip_bad: false,
        chat_template,
    };
    let (pairs, report) = load_preferences(data, &enc, &opts)?;
    eprintln!("{}: {report}", data.display());
    if pairs.is_empty() {
        bail!(
            "{}: no preference pairs to score; an accuracy over no pairs would mean nothing",
            data.display()
        );
    }
    crate::signals::install();
    let model = Llama::new(cfg, params);
    let split = Split {
        pairs: &pairs,
        reference: None,
    };
    fn score<B: crate::ops::Backend>(
        model: &Llama<B>,
        split: &Split,
        batch_size: usize,
    ) -> Result<PairStats>
    where
        RewardObjective: Objective<B>,
    {
        let mut stats = PairStats::default();
        let idx: Vec<usize> = (0..split.pairs.len()).collect();
        for chunk in idx.chunks(batch_size) {
            crate::signals::check(|| "no result was printed".to_string())?;
            stats.add(&RewardObjective.evaluate(model, split, chunk)?);
        }
        Ok(stats)
    }
    match device.engine()? {
        Some(cuda) => score(&model.upload(cuda)?, &split, batch_size),
        None => score(&model, &split, batch_size),
    }
}
