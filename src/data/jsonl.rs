//! JSONL readers: one JSON value per line, blank lines skipped, and every error names
//! `file:line`.

use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// A parsed record and the line it came from (1-based).
pub struct Record<T> {
    pub line: usize,
    pub value: T,
}

/// Parses every non-blank line of `path` as a `T`. The first bad line is an error that names the
/// file, the line and serde's reason.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<Record<T>>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let line =
            line.with_context(|| format!("{}:{line_no}: unreadable line", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str(&line)
            .map_err(|e| anyhow!("{}:{line_no}: {e}", path.display()))?;
        out.push(Record {
            line: line_no,
            value,
        });
    }
    Ok(out)
}
