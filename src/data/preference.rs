//! Preference pairs from JSONL, in the shapes people already have:
//!   {"prompt": str, "chosen": str, "rejected": str}            (raw text, as TRL's "standard"
//!                                                              format; with `chat_template`, the
//!                                                              prompt is one user turn)
//!   {"chosen": [messages], "rejected": [messages]}            (UltraFeedback-binarized; the prompt
//!                                                              is the messages both share)
//!   {"prompt": [messages], "chosen": [reply], "rejected": [reply]}  (TRL's explicit prompt)
//!   {"chosen": str, "rejected": str}                          (TRL's implicit prompt: plain text,
//!                                                              the shared prefix is the prompt)
//!   {"prompt_ids": [..], "chosen_ids": [..], "rejected_ids": [..]}   (pre-tokenised)
//! Any shape may carry "margin": a number for the reward model's margin loss.
//! Responses are the model's reply plus EOS; the loss covers response tokens only.

use super::chat_template::{ChatTemplate, Message};
use super::tokenizer::TextTokenizer;
use crate::model::LlamaConfig;
use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use std::path::Path;

/// One tokenised pair; `line` is where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct PreferencePair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    pub margin: Option<f32>,
    pub line: usize,
}

impl PreferencePair {
    pub fn chosen_len(&self) -> usize {
        self.prompt.len() + self.chosen.len()
    }
    pub fn rejected_len(&self) -> usize {
        self.prompt.len() + self.rejected.len()
    }
    pub fn max_len(&self) -> usize {
        self.chosen_len().max(self.rejected_len())
    }
}

/// What to do with a pair longer than the limits.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    /// Leave the pair out (counted in the report).
    Drop,
    /// Keep the end of the prompt and the start of each response.
    Truncate,
}

#[derive(Clone, Debug)]
pub struct DataOptions {
    pub max_prompt_len: usize,
    pub max_len: usize,
    pub overflow: Overflow,
    /// Count and report bad lines instead of stopping at the first.
    pub skip_bad: bool,
    /// Render a string `"prompt"` as one user turn of the model's chat template (the paper's
    /// Tulu format needs it). Off, it is read raw, as TRL reads its "standard" format: the
    /// prompt's ids, then the response's, as they are. Message lists are always templated.
    pub chat_template: bool,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            max_prompt_len: 512,
            max_len: 1024,
            overflow: Overflow::Drop,
            skip_bad: false,
            chat_template: false,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    pub pairs: usize,
    pub bad_lines: usize,
    /// `file:line: problem` of the first few bad lines, so a skipped line can still be found.
    pub first_bad: Vec<String>,
    pub dropped_too_long: usize,
    pub truncated: usize,
}

/// "1 pair", "2 pairs".
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{} ({} skipped, {} dropped as too long, {} truncated)",
            plural(self.pairs, "pair"),
            plural(self.bad_lines, "bad line"),
            self.dropped_too_long,
            self.truncated
        )?;
        for bad in &self.first_bad {
            write!(f, "\n  skipped {bad}")?;
        }
        Ok(())
    }
}

/// Turns text into ids the way training sees them.
pub struct Encoder<'a> {
    pub tokenizer: &'a TextTokenizer,
    pub template: &'a ChatTemplate,
    pub cfg: &'a LlamaConfig,
}

impl Encoder<'_> {
    /// The prompt conversation rendered with the generation prompt, BOS first.
    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = self.template.render(messages, true)?;
        let mut ids = self.tokenizer.encode(&text, false)?;
        if let Some(bos) = self.cfg.bos_token_id {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// A pair given as plain text, tokenised as TRL 1.x tokenises its "standard" format: the
    /// prompt, and the prompt followed by each response and the EOS token's text, each with the
    /// tokenizer's own special tokens (BOS where its post-processor adds one, as
    /// `tokenizer(text)` does; none where it does not); the prompt is the ids the three share,
    /// so a token merged across the boundary goes to the responses, as in TRL.
    pub fn raw_pair(
        &self,
        prompt: &str,
        chosen: &str,
        rejected: &str,
    ) -> Result<(Vec<u32>, Vec<u32>, Vec<u32>)> {
        let eos = self.template.eos_token();
        // An EOS name the tokenizer does not know would be tokenised as plain text: then the
        // responses end with config.json's eos id instead, as `response_ids` does.
        let eos_known = self.tokenizer.token_id(eos).is_some();
        let with_eos = |text: &str| {
            if !eos_known || text.ends_with(eos) {
                text.to_string()
            } else {
                format!("{text}{eos}")
            }
        };
        let prompt_ids = self.tokenizer.encode(prompt, true)?;
        let full_chosen = self
            .tokenizer
            .encode(&format!("{prompt}{}", with_eos(chosen)), true)?;
        let full_rejected = self
            .tokenizer
            .encode(&format!("{prompt}{}", with_eos(rejected)), true)?;
        let shared = |full: &[u32]| {
            prompt_ids
                .iter()
                .zip(full)
                .take_while(|(a, b)| a == b)
                .count()
        };
        let cut = shared(&full_chosen).min(shared(&full_rejected));
        let (mut chosen, mut rejected) =
            (full_chosen[cut..].to_vec(), full_rejected[cut..].to_vec());
        if !eos_known {
            chosen.extend(self.cfg.eos_token_id);
            rejected.extend(self.cfg.eos_token_id);
        }
        Ok((prompt_ids[..cut].to_vec(), chosen, rejected))
    }

    /// A reply: its text's ids, then the tokenizer's end-of-turn token (config.json's eos id
    /// where the tokenizer does not know it).
    pub fn response_ids(&self, content: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(content, false)?;
        ids.extend(
            self.tokenizer
                .token_id(self.template.eos_token())
                .or(self.cfg.eos_token_id),
        );
        Ok(ids)
    }
}

/// Reads every pair of `path`. A bad line is an error naming `file:line` and the problem, or, with
/// `skip_bad`, counted in the report.
pub fn load_preferences(
    path: &Path,
    enc: &Encoder,
    opts: &DataOptions,
) -> Result<(Vec<PreferencePair>, LoadReport)> {
    load_preferences_from(super::jsonl::open_lines(path)?, path, enc, opts)
}

/// [`load_preferences`] over lines already at hand (`path` names them in errors).
pub fn load_preferences_from(
    lines: impl Iterator<Item = std::io::Result<String>>,
    path: &Path,
    enc: &Encoder,
    opts: &DataOptions,
) -> Result<(Vec<PreferencePair>, LoadReport)> {
    let mut pairs = Vec::new();
    let mut report = LoadReport::default();
    for (i, line) in lines.enumerate() {
        let line_no = i + 1;
        let parsed = match &line {
            Ok(l) if l.trim().is_empty() => continue,
            // Known too long from its bytes: dropped without tokenising (which would take a
            // minute and gigabytes for a 50 MB line).
            Ok(l) if opts.overflow == Overflow::Drop && certainly_too_long(l, enc, opts) => {
                report.dropped_too_long += 1;
                continue;
            }
            // With --overflow truncate only the texts' ends that truncation keeps are tokenised.
            Ok(l) => parse_pair(&shortened(l, enc, opts), enc, opts.chat_template)
                .and_then(|p| check_ids(p, enc.cfg.vocab_size)),
            Err(e) => Err(anyhow!("unreadable line (not UTF-8?): {e}")),
        };
        let mut pair = match parsed {
            Ok(p) => p,
            Err(e) if opts.skip_bad => {
                report.bad_lines += 1;
                if report.first_bad.len() < 3 {
                    report
                        .first_bad
                        .push(format!("{}:{line_no}: {e:#}", path.display()));
                }
                continue;
            }
            Err(e) => bail!("{}:{line_no}: {e:#}", path.display()),
        };
        pair.line = line_no;
        if pair.prompt.len() > opts.max_prompt_len || pair.max_len() > opts.max_len {
            match opts.overflow {
                Overflow::Drop => {
                    report.dropped_too_long += 1;
                    continue;
                }
                Overflow::Truncate => {
                    truncate(&mut pair, opts, enc.cfg.bos_token_id);
                    report.truncated += 1;
                }
            }
        }
        pairs.push(pair);
    }
    report.pairs = pairs.len();
    Ok((pairs, report))
}

/// Whether a line's pair is sure to be over `--max-len` before tokenising: its prompt, chosen or
/// rejected text alone has more bytes than `max_len` tokens can cover. The line's own length
/// bounds every text in it (JSON escapes only lengthen text), so a short line costs nothing.
fn certainly_too_long(line: &str, enc: &Encoder, opts: &DataOptions) -> bool {
    let tok = enc.tokenizer;
    if !tok.certainly_longer(line, opts.max_len) {
        return false;
    }
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else {
        return false; // parse_pair names the problem
    };
    ["prompt", "chosen", "rejected"].iter().any(|k| {
        obj.get(*k)
            .is_some_and(|v| tok.certainly_longer(&text_of(v), opts.max_len))
    })
}

/// `line` with every text longer than `--max-len` can use cut to twice the bytes that many
/// tokens can cover (its end for "prompt", which truncation keeps the end of; its start
/// elsewhere, for the replies), so truncating a 50 MB pair tokenises kilobytes. The tokens kept
/// lie far from the cut, so they are the ones the whole text gives. A line with no such text is
/// returned as it is.
fn shortened<'a>(line: &'a str, enc: &Encoder, opts: &DataOptions) -> std::borrow::Cow<'a, str> {
    let tok = enc.tokenizer;
    if !tok.certainly_longer(line, opts.max_len) {
        return line.into();
    }
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(line) else {
        return line.into(); // parse_pair names the problem
    };
    let keep = tok.most_bytes(opts.max_len).saturating_mul(2);
    for (key, v) in obj.iter_mut() {
        cut_texts(v, keep, key == "prompt");
    }
    Value::Object(obj).to_string().into()
}

fn cut_texts(v: &mut Value, keep: usize, keep_end: bool) {
    match v {
        Value::String(s) if s.len() > keep => {
            *s = if keep_end {
                let mut at = s.len() - keep;
                while !s.is_char_boundary(at) {
                    at += 1;
                }
                s[at..].to_string()
            } else {
                let mut at = keep;
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                s[..at].to_string()
            };
        }
        Value::Array(a) => a.iter_mut().for_each(|x| cut_texts(x, keep, keep_end)),
        Value::Object(o) => o.values_mut().for_each(|x| cut_texts(x, keep, keep_end)),
        _ => {}
    }
}

/// Every string inside `v` (a text, or a list of messages' roles and contents), joined.
pub(super) fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text_of).collect(),
        Value::Object(o) => o.values().map(text_of).collect(),
        _ => String::new(),
    }
}

fn truncate(pair: &mut PreferencePair, opts: &DataOptions, bos: Option<u32>) {
    if pair.prompt.len() > opts.max_prompt_len {
        // Keep the prompt's end: the turn being answered. BOS, if any, stays first.
        let cut = pair.prompt.len() - opts.max_prompt_len;
        let keep_first = usize::from(
            opts.max_prompt_len > 0 && bos.is_some() && pair.prompt.first() == bos.as_ref(),
        );
        pair.prompt.drain(keep_first..keep_first + cut);
    }
    let room = opts.max_len.saturating_sub(pair.prompt.len()).max(1);
    pair.chosen.truncate(room);
    pair.rejected.truncate(room);
}

fn parse_pair(line: &str, enc: &Encoder, chat_template: bool) -> Result<PreferencePair> {
    let v: Value = serde_json::from_str(line).map_err(|e| anyhow!("not valid JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| anyhow!("expected a JSON object"))?;
    let margin = match obj.get("margin") {
        None | Some(Value::Null) => None,
        Some(m) => Some(
            m.as_f64()
                .ok_or_else(|| anyhow!("\"margin\" must be a number"))? as f32,
        ),
    };
    let (prompt, chosen, rejected) = if obj.contains_key("prompt_ids")
        || obj.contains_key("chosen_ids")
    {
        (
            ids_field(obj, "prompt_ids")?,
            ids_field(obj, "chosen_ids")?,
            ids_field(obj, "rejected_ids")?,
        )
    } else {
        let chosen = obj
            .get("chosen")
            .ok_or_else(|| anyhow!("missing field \"chosen\""))?;
        let rejected = obj
            .get("rejected")
            .ok_or_else(|| anyhow!("missing field \"rejected\""))?;
        match (chosen, rejected) {
            (Value::String(c), Value::String(r)) if !obj.contains_key("prompt") => {
                let (prompt, c, r) = split_implicit_prompt(c, r)?;
                nonempty_text(c, r)?;
                enc.raw_pair(prompt, c, r)?
            }
            (Value::String(c), Value::String(r)) => {
                let prompt = obj
                    .get("prompt")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("missing string field \"prompt\""))?;
                if chat_template {
                    let turn = [Message {
                        role: "user".into(),
                        content: prompt.into(),
                    }];
                    (
                        enc.prompt_ids(&turn)?,
                        nonempty("chosen", c, enc)?,
                        nonempty("rejected", r, enc)?,
                    )
                } else {
                    nonempty_text(c, r)?;
                    enc.raw_pair(prompt, c, r)?
                }
            }
            (Value::Array(_), Value::Array(_)) => {
                let c: Vec<Message> = serde_json::from_value(chosen.clone()).map_err(|e| {
                    anyhow!("\"chosen\" is not a list of {{role, content}} messages: {e}")
                })?;
                let r: Vec<Message> = serde_json::from_value(rejected.clone()).map_err(|e| {
                    anyhow!("\"rejected\" is not a list of {{role, content}} messages: {e}")
                })?;
                // TRL's explicit-prompt shape: {"prompt": [messages], "chosen": [reply], ...}.
                let (c, r) = match obj.get("prompt") {
                    Some(Value::Array(_)) => {
                        let p: Vec<Message> = serde_json::from_value(obj["prompt"].clone())
                            .map_err(|e| {
                                anyhow!(
                                    "\"prompt\" is not a list of {{role, content}} messages: {e}"
                                )
                            })?;
                        ([p.clone(), c].concat(), [p, r].concat())
                    }
                    _ => (c, r),
                };
                let shared = c.iter().zip(&r).take_while(|(a, b)| a == b).count();
                let reply = |msgs: &[Message], which: &str| -> Result<String> {
                    match &msgs[shared..] {
                        [m] if m.role == "assistant" => Ok(m.content.clone()),
                        _ => bail!(
                            "\"{which}\" must be the shared prompt messages followed by one assistant message"
                        ),
                    }
                };
                let (cr, rr) = (reply(&c, "chosen")?, reply(&r, "rejected")?);
                if shared == 0 {
                    bail!("\"chosen\" and \"rejected\" share no prompt messages");
                }
                (
                    enc.prompt_ids(&c[..shared])?,
                    nonempty("chosen", &cr, enc)?,
                    nonempty("rejected", &rr, enc)?,
                )
            }
            _ => bail!("\"chosen\" and \"rejected\" must both be strings or both be message lists"),
        }
    };
    if chosen.is_empty() || rejected.is_empty() {
        bail!(
            "empty {} response",
            if chosen.is_empty() {
                "chosen"
            } else {
                "rejected"
            }
        );
    }
    Ok(PreferencePair {
        prompt,
        chosen,
        rejected,
        margin,
        line: 0,
    })
}

/// TRL's implicit prompt: the longest shared prefix of the two texts, less a space that ends it
/// (the space stays with the replies, as TRL's `extract_prompt` does).
fn split_implicit_prompt<'a>(
    chosen: &'a str,
    rejected: &'a str,
) -> Result<(&'a str, &'a str, &'a str)> {
    let mut cut = chosen
        .char_indices()
        .zip(rejected.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or(chosen.len().min(rejected.len()));
    if cut > 0 && chosen[..cut].ends_with(' ') {
        cut -= 1;
    }
    if cut == 0 {
        bail!(
            "\"chosen\" and \"rejected\" share no prompt prefix, and there is no \"prompt\" field"
        );
    }
    Ok((&chosen[..cut], &chosen[cut..], &rejected[cut..]))
}

fn nonempty(which: &str, text: &str, enc: &Encoder) -> Result<Vec<u32>> {
    if text.trim().is_empty() {
        bail!("empty {which} response");
    }
    enc.response_ids(text)
}

/// Refuses a pair with a blank response, naming which.
fn nonempty_text(chosen: &str, rejected: &str) -> Result<()> {
    for (which, text) in [("chosen", chosen), ("rejected", rejected)] {
        if text.trim().is_empty() {
            bail!("empty {which} response");
        }
    }
    Ok(())
}

fn ids_field(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Vec<u32>> {
    let v = obj
        .get(key)
        .ok_or_else(|| anyhow!("missing field \"{key}\""))?;
    serde_json::from_value(v.clone())
        .map_err(|e| anyhow!("\"{key}\" must be a list of token ids: {e}"))
}

fn check_ids(p: PreferencePair, vocab: usize) -> Result<PreferencePair> {
    for (name, ids) in [
        ("prompt", &p.prompt),
        ("chosen", &p.chosen),
        ("rejected", &p.rejected),
    ] {
        if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
            bail!("{name} token id {id} is outside the model's vocabulary of {vocab}");
        }
    }
    Ok(p)
}
