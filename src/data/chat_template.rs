//! Chat templates: the model's own Jinja template from `tokenizer_config.json`, rendered with
//! minijinja as transformers renders it, or the Tulu format when the model has none.

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// Equal templates render every conversation the same way.
#[derive(Clone, Debug, PartialEq)]
pub enum ChatTemplate {
    /// A Jinja template with the special tokens it may refer to.
    Jinja {
        source: String,
        bos_token: String,
        eos_token: String,
    },
    /// `<|user|>\n…\n<|assistant|>\n…</s>\n`, the format of the paper's Tulu models.
    Tulu { eos_token: String },
}

impl ChatTemplate {
    /// The token that ends an assistant turn, as the tokenizer names it (`eos_token`): Llama 3
    /// Instruct's `<|eot_id|>`, not config.json's first eos id.
    pub fn eos_token(&self) -> &str {
        match self {
            ChatTemplate::Jinja { eos_token, .. } | ChatTemplate::Tulu { eos_token } => eos_token,
        }
    }

    /// The template of the model in `dir`: `chat_template.jinja` (where transformers 5 saves it),
    /// else `tokenizer_config.json`'s `chat_template` (a string, or a list whose "default" entry
    /// is used), else Tulu.
    pub fn for_model(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?,
            Err(_) => serde_json::Value::Null,
        };
        let token = |key: &str, default: &str| match &cfg[key] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => o
                .get("content")
                .and_then(|c| c.as_str())
                .unwrap_or(default)
                .to_string(),
            _ => default.to_string(),
        };
        let eos_token = token("eos_token", "</s>");
        let jinja_file = std::fs::read_to_string(dir.join("chat_template.jinja")).ok();
        let source = jinja_file.or_else(|| match &cfg["chat_template"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .map(str::to_string),
            _ => None,
        });
        Ok(match source {
            Some(source) => ChatTemplate::Jinja {
                source,
                bos_token: token("bos_token", "<s>"),
                eos_token,
            },
            None => ChatTemplate::Tulu { eos_token },
        })
    }

    /// The conversation as text; with `add_generation_prompt`, followed by the assistant header
    /// the model's reply would come after.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        match self {
            ChatTemplate::Tulu { eos_token } => {
                let mut out = String::new();
                for m in messages {
                    match m.role.as_str() {
                        "assistant" => out += &format!("<|assistant|>\n{}{eos_token}\n", m.content),
                        role => out += &format!("<|{role}|>\n{}\n", m.content),
                    }
                }
                if add_generation_prompt {
                    out += "<|assistant|>\n";
                }
                Ok(out)
            }
            ChatTemplate::Jinja {
                source,
                bos_token,
                eos_token,
            } => {
                // transformers renders with trim_blocks, lstrip_blocks and loop controls; without
                // them the same template yields different whitespace, so different tokens.
                let mut env = minijinja::Environment::new();
                env.set_trim_blocks(true);
                env.set_lstrip_blocks(true);
                minijinja_contrib::add_to_environment(&mut env);
                env.set_unknown_method_callback(
                    minijinja_contrib::pycompat::unknown_method_callback,
                );
                env.add_function(
                    "raise_exception",
                    |msg: String| -> Result<String, minijinja::Error> {
                        Err(minijinja::Error::new(
                            minijinja::ErrorKind::InvalidOperation,
                            msg,
                        ))
                    },
                );
                env.add_template("chat", source)
                    .map_err(|e| anyhow!("the model's chat template does not parse: {e}"))?;
                let ctx = minijinja::context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => bos_token,
                    eos_token => eos_token,
                };
                env.get_template("chat")
                    .and_then(|t| t.render(ctx))
                    .map_err(|e| anyhow!("rendering the chat template: {e}"))
            }
        }
    }
}
