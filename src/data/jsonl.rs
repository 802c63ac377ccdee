//! JSONL readers: one JSON value per line, blank lines skipped, and every error names
//! `file:line`.

use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// A parsed record and the line it came from (1-based).
pub struct Record<T> {
    pub line: usize,
    pub value: T,
}

/// Opens a JSONL file for reading by lines, with a clear error for a folder, and skipping a UTF-8
/// byte-order mark at the start (as some Windows editors write). Parquet input (a `.parquet`
/// file, a folder of them or a glob: see [`super::parquet`]) reads as the JSON lines of its rows.
pub fn open_lines(path: &Path) -> Result<Box<dyn Iterator<Item = std::io::Result<String>>>> {
    if super::parquet::is_parquet(path) {
        return Ok(Box::new(super::parquet::rows_as_json_lines(path)?));
    }
    if path.is_dir() {
        anyhow::bail!(
            "{} is a folder with no parquet files; give a JSONL file (one JSON object a line), a parquet file, or a folder or glob of parquet shards",
            path.display()
        );
    }
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut i = 0;
    Ok(Box::new(std::iter::from_fn(move || {
        let line = read_line_bounded(&mut reader, MAX_LINE_BYTES).transpose()?;
        i += 1;
        Some(line.map(|l| match (i, l.strip_prefix('\u{feff}')) {
            (1, Some(rest)) => rest.to_string(),
            _ => l,
        }))
    })))
}

/// The longest JSONL line read (1 GiB): a longer one is refused by its bytes before it is held
/// whole or parsed, so a file with no newlines cannot exhaust memory.
pub const MAX_LINE_BYTES: usize = 1 << 30;

/// The next line without its `\n` (or `\r\n`), `None` at the end; a line past `limit` bytes is an
/// error (and the rest of it is skipped, so the next call reads the next line).
fn read_line_bounded(r: &mut impl BufRead, limit: usize) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(limit as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > limit && buf.last() != Some(&b'\n') {
        // Skip to the end of this line.
        let mut sink = Vec::new();
        loop {
            sink.clear();
            let m = r.by_ref().take(1 << 20).read_until(b'\n', &mut sink)?;
            if m == 0 || sink.last() == Some(&b'\n') {
                break;
            }
        }
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the line is longer than {limit} bytes"),
        ));
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    String::from_utf8(buf).map(Some).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8 ({e})"))
    })
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
