//! What an output folder holds, so that a command writes only into a folder that is absent,
//! empty, or one prefer made for the same purpose, and never into one of its own inputs.

use super::lock::LOCK_FILE;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// The file `prefer init` leaves in a checkpoint it wrote, so that it can tell its own
/// checkpoints from a user's model folder.
pub const INIT_MARKER: &str = ".prefer-init";

#[derive(Debug, PartialEq, Eq)]
pub enum FolderState {
    Absent,
    /// Nothing in it (a lock file prefer left does not count).
    Empty,
    /// A run folder: it has the run.toml a trainer writes first.
    Run,
    /// A checkpoint `prefer init` wrote.
    InitCheckpoint,
    /// Anything else: up to five of its entries, to name in the refusal.
    Foreign(Vec<String>),
    /// The path exists and is not a folder.
    NotAFolder,
}

pub fn inspect_folder(dir: &Path) -> Result<FolderState> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FolderState::Absent),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    if !meta.is_dir() {
        return Ok(FolderState::NotAFolder);
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    names.retain(|n| n != LOCK_FILE);
    names.sort();
    Ok(if names.is_empty() {
        FolderState::Empty
    } else if names.iter().any(|n| n == "run.toml") {
        FolderState::Run
    } else if names.iter().any(|n| n == INIT_MARKER) {
        FolderState::InitCheckpoint
    } else {
        names.truncate(5);
        FolderState::Foreign(names)
    })
}

/// `a, b, c` for the first entries of a folder, with "…" when there are more.
pub fn list_entries(names: &[String]) -> String {
    let shown = names.join(", ");
    if names.len() >= 5 {
        format!("{shown}, …")
    } else {
        shown
    }
}

/// Whether two paths name the same file or folder (through links, `..` and relative paths).
fn same_place(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Refuses an output (`flag`, `path`) that is one of the command's inputs: writing it would
/// destroy what the command reads.
pub fn refuse_output_that_is_an_input(
    out: (&str, &Path),
    inputs: &[(&str, Option<&Path>)],
) -> Result<()> {
    for (flag, input) in inputs {
        if let Some(input) = input {
            if same_place(out.1, input) {
                bail!(
                    "{} {} is also {flag}: prefer never writes over its own input; choose another {}",
                    out.0,
                    out.1.display(),
                    out.0
                );
            }
        }
    }
    Ok(())
}
