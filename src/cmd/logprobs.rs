//! `prefer logprobs`: per-token next-token log-probs (and a reward model's score) for each line of
//! a JSONL file. This is how anyone checks prefer against another implementation.

use super::Device;
use crate::data::jsonl::read_jsonl;
use crate::data::tokenizer::TextTokenizer;
use crate::model::weights::load_checkpoint;
use crate::model::{Batch, Llama};
use crate::output::{refuse_output_that_is_an_input, AtomicFile};
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
    refuse_output_that_is_an_input(("--out", out), &[("--input", Some(input))])?;
    crate::signals::install();
    let (cfg, params) = load_checkpoint(model_dir)?;
    let model = Llama::new(cfg, params);
    let lines = read_jsonl::<InputLine>(input)?;
    let mut tokenizer = None;
    let mut seqs = Vec::with_capacity(lines.len());
    let max_pos = model.cfg.max_position_embeddings;
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
                if tok.certainly_longer(text, max_pos) {
                    bail!(
                        "{}: the text ({} bytes) is longer than the model's context of {max_pos} tokens (max_position_embeddings)",
                        at(),
                        text.len()
                    );
                }
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
        if ids.len() > max_pos {
            bail!(
                "{}: {} tokens, longer than the model's context of {max_pos} (max_position_embeddings)",
                at(),
                ids.len()
            );
        }
        seqs.push(ids);
    }

    // The forward on the device asked for; `auto` takes the GPU when kernels and a GPU are usable.
    let gpu = device.engine()?.map(|c| model.upload(c)).transpose()?;
    eprintln!(
        "logprobs on {}",
        if gpu.is_some() && crate::emu::is_active() {
            "the software GPU (bf16)"
        } else if gpu.is_some() {
            "the GPU (bf16)"
        } else {
            "the CPU (f32)"
        }
    );
    let run = |batch: &Batch| -> Result<(Vec<f32>, Vec<f32>)> {
        match &gpu {
            None => {
                let f = model.forward(batch)?;
                Ok((f.logp, f.value))
            }
            Some(m) => {
                let f = m.forward(batch)?;
                let get = |x, on: bool| {
                    if on {
                        m.backend.download(x)
                    } else {
                        Ok(Vec::new())
                    }
                };
                Ok((
                    get(&f.logp, m.layout.lm_head.is_some())?,
                    get(&f.value, m.layout.score.is_some())?,
                ))
            }
        }
    };

    let pad = model.cfg.pad_token_id.unwrap_or(0);
    // Written beside --out and renamed over it when whole: a failure or a signal leaves the old
    // file as it was.
    let mut w = AtomicFile::create(out)?;
    for (c, chunk) in seqs.chunks(BATCH).enumerate() {
        crate::signals::check(|| format!("{} was left as it was", out.display()))?;
        let batch = Batch::right_padded(chunk, pad);
        let (logp, value) = run(&batch)?;
        for (b, s) in chunk.iter().enumerate() {
            let row = b * batch.seq;
            let at = || format!("{}:{}", input.display(), lines[c * BATCH + b].line);
            let mut line = serde_json::Map::new();
            if !logp.is_empty() {
                let lp = &logp[row..row + s.len() - 1];
                // JSON has no NaN: written out it would be a silent null.
                if let Some(p) = lp.iter().position(|x| !x.is_finite()) {
                    bail!(
                        "{}: the log-prob of token {} is {}: the model's logits are not finite (broken weights or config numerics)",
                        at(),
                        p + 1,
                        lp[p]
                    );
                }
                line.insert("logprobs".into(), lp.into());
            }
            if !value.is_empty() {
                let r = value[batch.reward_position(b, s.len(), model.cfg.pad_token_id)];
                if !r.is_finite() {
                    bail!(
                        "{}: the reward is {r}: the reward model's output is not finite",
                        at()
                    );
                }
                line.insert("reward".into(), r.into());
            }
            writeln!(w, "{}", serde_json::Value::Object(line))?;
        }
    }
    w.commit()?;
    eprintln!("wrote {} lines to {}", seqs.len(), out.display());
    Ok(())
}
