//! `prefer logprobs`: per-token next-token log-probs (and a reward model's score) for each line of
//! a JSONL file. This is how anyone checks prefer against another implementation.

use super::Device;
use crate::data::jsonl::read_jsonl;
use crate::data::tokenizer::TextTokenizer;
use crate::model::weights::load_checkpoint;
use crate::model::{Batch, Llama};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::io::Write;
use std::path::Path;

/// Sequences per forward pass on the CPU.
const BATCH: usize = 8;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    input_ids: Option<Vec<i64>>,
    text: Option<String>,
}

pub fn run_logprobs(model_dir: &Path, input: &Path, out: &Path, device: Device) -> Result<()> {
    if device == Device::Cuda {
        bail!(
            "--device cuda: the CUDA model forward is not built yet (only single kernels are); \
             use --device cpu or auto"
        );
    }
    let (cfg, params) = load_checkpoint(model_dir)?;
    let model = Llama::new(cfg, params);
    let lines = read_jsonl::<InputLine>(input)?;
    let mut tokenizer = None;
    let mut seqs = Vec::with_capacity(lines.len());
    for rec in &lines {
        let at = || format!("{}:{}", input.display(), rec.line);
        let ids = match (&rec.value.input_ids, &rec.value.text) {
            (Some(ids), None) => ids
                .iter()
                .map(|&id| {
                    u32::try_from(id)
                        .ok()
                        .filter(|&i| (i as usize) < model.cfg.vocab_size)
                        .with_context(|| {
                            format!(
                                "{}: token id {id} is outside the vocabulary of {}",
                                at(),
                                model.cfg.vocab_size
                            )
                        })
                })
                .collect::<Result<Vec<u32>>>()?,
            (None, Some(text)) => {
                if tokenizer.is_none() {
                    tokenizer = Some(TextTokenizer::load(model_dir, &model.cfg)?);
                }
                let tok = tokenizer.as_ref().expect("loaded above");
                tok.encode(text, true).with_context(at)?
            }
            _ => bail!(
                "{}: expected exactly one of \"input_ids\" or \"text\"",
                at()
            ),
        };
        if ids.is_empty() {
            bail!("{}: the sequence is empty", at());
        }
        seqs.push(ids);
    }

    let pad = model.cfg.pad_token_id.unwrap_or(0);
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for chunk in seqs.chunks(BATCH) {
        let batch = Batch::right_padded(chunk, pad);
        let fwd = model.forward(&batch)?;
        for (b, s) in chunk.iter().enumerate() {
            let row = b * batch.seq;
            let mut line = serde_json::Map::new();
            if !fwd.logp.is_empty() {
                line.insert("logprobs".into(), fwd.logp[row..row + s.len() - 1].into());
            }
            if !fwd.value.is_empty() {
                let at = batch.reward_position(b, s.len(), model.cfg.pad_token_id);
                line.insert("reward".into(), fwd.value[at].into());
            }
            writeln!(w, "{}", serde_json::Value::Object(line))?;
        }
    }
    w.flush()?;
    eprintln!("wrote {} lines to {}", seqs.len(), out.display());
    Ok(())
}
