//! Prompt files for generation and online RL: {"prompt": "..."} (rendered with the chat
//! template), {"messages": [...]} or {"prompt_ids": [...]}; other fields (an "answer", an id)
//! travel with the prompt.

use super::chat_template::Message;
use super::jsonl::read_jsonl;
use super::preference::Encoder;
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// One prompt: its ids, and the input line's other fields.
pub struct Prompt {
    pub ids: Vec<u32>,
    pub fields: Map<String, Value>,
    /// The line of the file it came from.
    pub line: usize,
}

/// Every prompt of `path`; a bad line, or a prompt that leaves no room in the model's context
/// for one new token, is an error naming `file:line`.
pub fn read_prompts(path: &Path, enc: &Encoder) -> Result<Vec<Prompt>> {
    let vocab = enc.cfg.vocab_size;
    let context = enc.cfg.max_position_embeddings;
    let lines = read_jsonl::<Map<String, Value>>(path)?;
    let mut out = Vec::with_capacity(lines.len());
    for rec in lines {
        let at = format!("{}:{}", path.display(), rec.line);
        let mut fields = rec.value;
        // Known longer than the context from its bytes: refused before tokenising it.
        let max_pos = enc.cfg.max_position_embeddings;
        for key in ["prompt", "messages"] {
            if let Some(text) = fields.get(key).map(super::preference::text_of) {
                if enc.tokenizer.certainly_longer(&text, max_pos) {
                    bail!(
                        "{at}: the prompt ({} bytes) is longer than the model's context of {max_pos} tokens (max_position_embeddings)",
                        text.len()
                    );
                }
            }
        }
        let ids = match (
            fields.remove("prompt"),
            fields.remove("messages"),
            fields.remove("prompt_ids"),
        ) {
            (Some(Value::String(p)), None, None) => {
                let turn = [Message {
                    role: "user".into(),
                    content: p.clone(),
                }];
                fields.insert("prompt".into(), Value::String(p));
                enc.prompt_ids(&turn).with_context(|| at.clone())?
            }
            (None, Some(m), None) => {
                let msgs: Vec<Message> = serde_json::from_value(m.clone()).map_err(|e| {
                    anyhow::anyhow!("{at}: \"messages\" is not a list of {{role, content}}: {e}")
                })?;
                fields.insert("messages".into(), m);
                enc.prompt_ids(&msgs).with_context(|| at.clone())?
            }
            (None, None, Some(ids)) => {
                let ids: Vec<u32> = serde_json::from_value(ids.clone()).map_err(|e| {
                    anyhow::anyhow!("{at}: \"prompt_ids\" must be a list of token ids: {e}")
                })?;
                fields.insert("prompt_ids".into(), serde_json::json!(ids));
                ids
            }
            _ => bail!(
                "{at}: expected exactly one of \"prompt\" (a string), \"messages\" or \"prompt_ids\""
            ),
        };
        if ids.is_empty() {
            bail!("{at}: the prompt is empty");
        }
        if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
            bail!("{at}: token id {id} is outside the model's vocabulary of {vocab}");
        }
        // Found here, by its line, rather than when its batch comes up. A prompt that fits with
        // room to spare generates until the context is full (finish_reason "length"), however
        // many new tokens were asked for.
        if ids.len() >= context {
            bail!(
                "{at}: prompt of {} tokens leaves no room to generate: the model's context is {context} tokens (max_position_embeddings); shorten it to at most {} tokens",
                ids.len(),
                context.saturating_sub(1)
            );
        }
        out.push(Prompt {
            ids,
            fields,
            line: rec.line,
        });
    }
    Ok(out)
}

/// A note on the prompts whose completions the model's context cuts short: generation stops
/// where the context is full (finish_reason "length"), before `max_new_tokens`. None if no
/// prompt is that long.
pub fn context_note(
    path: &Path,
    prompts: &[Prompt],
    max_new_tokens: usize,
    context: usize,
) -> Option<String> {
    let room = context.saturating_sub(max_new_tokens);
    let long: Vec<&Prompt> = prompts.iter().filter(|p| p.ids.len() > room).collect();
    let first = long.first()?;
    Some(format!(
        "note: {} of {} prompts leave less than --max-new-tokens {max_new_tokens} of the model's context of {context} tokens (the first: {}:{}, {} tokens); their completions stop where the context is full (finish_reason \"length\")",
        long.len(),
        prompts.len(),
        path.display(),
        first.line,
        first.ids.len()
    ))
}
