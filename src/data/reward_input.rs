//! What a reward model reads for a prompt and a policy's completion.
//!
//! A reward model that shares the policy's tokenizer and chat template reads the policy's token
//! ids as they are (no decoding, no re-tokenising). One that does not (a Llama 3 reward model
//! scoring a Tulu 2 policy) would read those ids as different tokens, even when the two
//! vocabularies have the same size; it reads the conversation as text instead: the prompt's
//! messages and the completion decoded with the policy's tokenizer, rendered with the reward
//! model's own chat template and tokenised with its own tokenizer, exactly as its training pairs
//! were (`Encoder::prompt_ids` then the reply's ids).

use super::chat_template::{ChatTemplate, Message};
use super::preference::Encoder;
use super::prompts::Prompt;
use super::tokenizer::TextTokenizer;
use crate::model::LlamaConfig;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// How a reward model's input is made from the policy's tokens.
pub enum RewardInput {
    /// The same tokenizer and chat template: the policy's ids, as they are.
    PolicyIds,
    /// Another tokenizer or template: the text, re-tokenised the reward model's way (boxed: most
    /// runs pass ids through, and a tokenizer is large).
    Text(Box<OwnWay>),
}

/// The reward model's own way of turning a conversation into ids.
pub struct OwnWay {
    tokenizer: TextTokenizer,
    template: ChatTemplate,
    cfg: LlamaConfig,
}

/// `dir/tokenizer.json` as a JSON value (so whitespace and key order do not count), or None
/// where the folder has none.
fn tokenizer_json(dir: &Path) -> Result<Option<serde_json::Value>> {
    let path = dir.join("tokenizer.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

impl RewardInput {
    /// Compares the tokenizer.json contents and chat templates of the policy in `policy_dir` and
    /// the scalar-head model in `rm_dir` (`what` it is, for errors). One with no tokenizer.json is
    /// taken to share the policy's (as before this comparison existed), which needs equal
    /// vocabulary sizes.
    pub fn for_models(
        policy_dir: &Path,
        policy_cfg: &LlamaConfig,
        rm_dir: &Path,
        rm_cfg: &LlamaConfig,
        what: &str,
    ) -> Result<RewardInput> {
        let rm_tokenizer = tokenizer_json(rm_dir)?;
        let same = match &rm_tokenizer {
            None => true,
            Some(rm) => {
                tokenizer_json(policy_dir)?.as_ref() == Some(rm)
                    && ChatTemplate::for_model(policy_dir)? == ChatTemplate::for_model(rm_dir)?
            }
        };
        if same {
            if rm_cfg.vocab_size != policy_cfg.vocab_size {
                bail!(
                    "the {what} {} has a vocabulary of {} and the policy {} has {}, yet {}: give the {what} its own tokenizer.json",
                    rm_dir.display(),
                    rm_cfg.vocab_size,
                    policy_dir.display(),
                    policy_cfg.vocab_size,
                    if rm_tokenizer.is_none() {
                        "it has no tokenizer.json"
                    } else {
                        "they have the same tokenizer.json"
                    }
                );
            }
            return Ok(RewardInput::PolicyIds);
        }
        Ok(RewardInput::Text(Box::new(OwnWay {
            tokenizer: TextTokenizer::load(rm_dir, rm_cfg)?,
            template: ChatTemplate::for_model(rm_dir)?,
            cfg: rm_cfg.clone(),
        })))
    }

    pub fn is_text(&self) -> bool {
        matches!(self, RewardInput::Text(_))
    }

    /// The reward model's ids for `prompt` followed by `completion_ids` (the policy's ids; its
    /// EOS, if it stopped, last). `prompt_ids` are the policy's ids of the prompt.
    pub fn ids(
        &self,
        prompt: &Prompt,
        prompt_ids: &[u32],
        completion_ids: &[u32],
        ended_with_eos: bool,
        policy_tokenizer: &TextTokenizer,
    ) -> Result<Vec<u32>> {
        let own = match self {
            RewardInput::PolicyIds => return Ok([prompt_ids, completion_ids].concat()),
            RewardInput::Text(own) => own,
        };
        let enc = Encoder {
            tokenizer: &own.tokenizer,
            template: &own.template,
            cfg: &own.cfg,
        };
        let messages = prompt_messages(prompt, policy_tokenizer)?;
        let mut ids = enc.prompt_ids(&messages)?;
        // The completion's text without the policy's special tokens (its EOS among them); the
        // reward model's end-of-turn token takes the EOS's place, as in its training replies.
        let text = policy_tokenizer.decode_generated(completion_ids)?;
        if ended_with_eos {
            ids.extend(enc.response_ids(&text)?);
        } else {
            ids.extend(own.tokenizer.encode(&text, false)?);
        }
        Ok(ids)
    }
}

/// The conversation a prompt line holds: its "messages", its "prompt" as one user turn, or its
/// "prompt_ids" decoded with the policy's tokenizer (special tokens skipped) as one user turn.
pub fn prompt_messages(prompt: &Prompt, policy_tokenizer: &TextTokenizer) -> Result<Vec<Message>> {
    let user = |content: String| {
        vec![Message {
            role: "user".into(),
            content,
        }]
    };
    if let Some(serde_json::Value::String(p)) = prompt.fields.get("prompt") {
        return Ok(user(p.clone()));
    }
    if let Some(m) = prompt.fields.get("messages") {
        return Ok(serde_json::from_value(m.clone())?);
    }
    Ok(user(policy_tokenizer.decode_generated(&prompt.ids)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tokenizer::byte_tokenizer_json;

    fn folder(root: &Path, name: &str, tokenizer: Option<&str>) -> std::path::PathBuf {
        let dir = root.join(name);
        std::fs::create_dir(&dir).unwrap();
        if let Some(json) = tokenizer {
            std::fs::write(dir.join("tokenizer.json"), json).unwrap();
        }
        dir
    }

    #[test]
    fn the_same_tokenizer_passes_ids_through_and_another_reads_text() {
        let root = tempfile::tempdir().unwrap();
        let cfg = LlamaConfig::preset("tiny").unwrap();
        let json = byte_tokenizer_json();
        let policy = folder(root.path(), "policy", Some(&json));
        // The same content written another way (no indentation) is the same tokenizer.
        let compact: serde_json::Value = serde_json::from_str(&json).unwrap();
        let same = folder(root.path(), "same", Some(&compact.to_string()));
        let input = RewardInput::for_models(&policy, &cfg, &same, &cfg, "reward model").unwrap();
        assert!(!input.is_text());
        // Two bytes' ids swapped is another tokenizer, though the vocabulary size is the same.
        let mut other = compact.clone();
        other["model"]["vocab"]["a"] = serde_json::json!(98);
        other["model"]["vocab"]["b"] = serde_json::json!(97);
        let other = folder(root.path(), "other", Some(&other.to_string()));
        let input = RewardInput::for_models(&policy, &cfg, &other, &cfg, "reward model").unwrap();
        assert!(input.is_text());
        // The same tokenizer with another chat template reads text too.
        let templated = folder(root.path(), "templated", Some(&json));
        std::fs::write(
            templated.join("chat_template.jinja"),
            "{{ messages[0].content }}",
        )
        .unwrap();
        let input =
            RewardInput::for_models(&policy, &cfg, &templated, &cfg, "reward model").unwrap();
        assert!(input.is_text());
    }

    #[test]
    fn a_model_without_a_tokenizer_must_match_the_policys_vocabulary() {
        let root = tempfile::tempdir().unwrap();
        let cfg = LlamaConfig::preset("tiny").unwrap();
        let policy = folder(root.path(), "policy", Some(&byte_tokenizer_json()));
        let bare = folder(root.path(), "bare", None);
        let input = RewardInput::for_models(&policy, &cfg, &bare, &cfg, "value model").unwrap();
        assert!(!input.is_text());
        let wider = LlamaConfig {
            vocab_size: cfg.vocab_size + 5,
            ..cfg.clone()
        };
        let e = RewardInput::for_models(&policy, &cfg, &bare, &wider, "value model")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("the value model")
                && e.contains("has a vocabulary of 264")
                && e.contains("it has no tokenizer.json"),
            "{e}"
        );
    }
}
