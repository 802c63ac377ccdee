//! Data in: tokenizers and JSONL files.

pub mod jsonl;
pub mod tokenizer;
