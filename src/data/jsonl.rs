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

/// Opens a JSONL file for reading by lines, with a clear error for a folder, and skipping a UTF-8
/// byte-order mark at the start (as some Windows editors write).
pub fn open_lines(path: &Path) -> Result<impl Iterator<Item = std::io::Result<String>>> {
    if path.is_dir() {
        anyhow::bail!(
            "{} is a folder; give a JSONL file (one JSON object a line)",
            path.display()
        );
    }
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(BufReader::new(file).lines().enumerate().map(|(i, line)| {
        line.map(|l| match (i, l.strip_prefix('\u{feff}')) {
            (0, Some(rest)) => rest.to_string(),
            _ => l,
        })
    }))
}

/// Parses every non-blank line of `path` as a `T`. The first bad line is an error that names the
/// file, the line and serde's reason.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<Record<T>>> {
    let mut out = Vec::new();
    for (i, line) in open_lines(path)?.enumerate() {
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
