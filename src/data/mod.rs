//! Data in: tokenizers, and JSONL or parquet files.

pub mod chat_template;
pub mod jsonl;
pub mod parquet;
pub mod preference;
pub mod prompts;
pub mod reward_input;
pub mod synthetic;
pub mod tokenizer;
