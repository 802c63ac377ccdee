//! A trainer's run folder, opened the one way every trainer (rm, dpo, ppo) opens it: never over
//! one of its inputs, never over a folder prefer did not make, one process at a time (a lock held
//! for the whole run), and with run.toml recording the options and the inputs' fingerprints.

use super::fingerprint::{fingerprint_inputs, refuse_changed_inputs, Fingerprints};
use crate::output::folder::list_entries;
use crate::output::{inspect_folder, refuse_output_that_is_an_input, FolderLock, FolderState};
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Everything a trainer writes into its run folder, and so all that `--overwrite` removes.
pub const RUN_FILES: [&str; 21] = [
    "run.toml",
    "checkpoint",
    "checkpoint.tmp",
    "checkpoint.old",
    "value",
    "value.tmp",
    "value.old",
    ".final-model",
    "metrics.jsonl",
    "eval.jsonl",
    "rollouts.jsonl",
    "curves.png",
    "summary.json",
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "run.toml.tmp",
];

/// The table of run.toml that holds the inputs' fingerprints (not an option).
const FINGERPRINTS: &str = "fingerprints";

/// An open run folder; the lock is held until it is dropped.
pub struct RunFolder {
    _lock: FolderLock,
}

/// How a trainer was asked to use its folder.
pub struct OpenRun<'a> {
    pub out: &'a Path,
    pub resume: bool,
    /// Replace an earlier run in `out` (only its own files are removed).
    pub overwrite: bool,
    /// The command's inputs by flag, so that none of them is written over.
    pub inputs: &'a [(&'a str, Option<&'a Path>)],
    /// `prefer dpo`, for messages.
    pub command: &'a str,
}

impl OpenRun<'_> {
    /// Checks and locks the folder; for a new run, creates it (or clears an earlier run's files
    /// with `--overwrite`). Call before reading anything large, so a refusal comes at once.
    pub fn open(&self) -> Result<RunFolder> {
        let out = self.out;
        if self.resume && self.overwrite {
            bail!("--overwrite starts a new run in place of an earlier one; --resume continues one: give one of them");
        }
        refuse_output_that_is_an_input(("--out", out), self.inputs)?;
        let state = inspect_folder(out)?;
        let shown = out.display();
        if self.resume {
            if state != FolderState::Run {
                bail!("{shown} is not a run folder (it has no run.toml): --resume continues a run that {} started there", self.command);
            }
            return Ok(RunFolder {
                _lock: FolderLock::acquire(out)?,
            });
        }
        match state {
            FolderState::Absent | FolderState::Empty => {}
            FolderState::Run if self.overwrite => {}
            FolderState::Run => bail!(
                "{shown} already holds a run: continue it with --resume {shown}, replace it with --overwrite, or choose another --out"
            ),
            FolderState::InitCheckpoint => bail!(
                "{shown} holds a checkpoint prefer init wrote, not a run; choose another --out (a new or empty folder)"
            ),
            FolderState::Foreign(names) => bail!(
                "{shown} is not empty and not a prefer run folder (it holds {}); prefer writes only into a new or empty folder, or an earlier run's (with --resume or --overwrite)",
                list_entries(&names)
            ),
            FolderState::NotAFolder => bail!("--out {shown} exists and is not a folder"),
        }
        std::fs::create_dir_all(out).with_context(|| format!("creating {shown}"))?;
        let lock = FolderLock::acquire(out)?;
        // Under the lock: another run may have started here since the look above.
        match inspect_folder(out)? {
            FolderState::Run if self.overwrite => remove_run_files(out)?,
            FolderState::Absent | FolderState::Empty => {}
            _ => bail!("{shown} was filled by another process while this run started; choose another --out"),
        }
        Ok(RunFolder { _lock: lock })
    }
}

/// Removes what an earlier run wrote into `out`, and nothing else.
fn remove_run_files(out: &Path) -> Result<()> {
    // The trained model's weights may be shards (model-00001-of-00003.safetensors, ...).
    let mut names: Vec<String> = RUN_FILES.iter().map(|s| s.to_string()).collect();
    for entry in std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if crate::model::weight_shards::is_weights_file(&name) && !names.contains(&name) {
            names.push(name);
        }
    }
    for name in names {
        let p = out.join(&name);
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let removed = if meta.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        removed.with_context(|| format!("--overwrite: removing {}", p.display()))?;
    }
    eprintln!(
        "--overwrite: removed the earlier run's files from {}",
        out.display()
    );
    Ok(())
}

/// Writes a run's options to `out/run.toml`, with the path options `paths` picks made absolute
/// (so `--resume` works from any directory), and the fingerprints of `inputs` (the files behind
/// those paths), whole or not at all.
pub fn write_run_toml<T: Serialize>(
    out: &Path,
    mut saved: T,
    paths: impl FnOnce(&mut T) -> Vec<&mut Option<PathBuf>>,
) -> Result<()> {
    let out_abs =
        std::path::absolute(out).with_context(|| format!("resolving {}", out.display()))?;
    let mut inputs = Vec::new();
    for p in paths(&mut saved).into_iter().flatten() {
        *p = std::path::absolute(&*p).with_context(|| format!("resolving {}", p.display()))?;
        if p.exists() && !p.starts_with(&out_abs) {
            inputs.push(p.clone());
        }
    }
    let inputs: Vec<&Path> = inputs.iter().map(|p| p.as_path()).collect();
    let fingerprints = fingerprint_inputs(&inputs)?;
    let mut table = toml::Table::try_from(&saved)?;
    table.insert(FINGERPRINTS.into(), toml::Value::try_from(&fingerprints)?);
    crate::output::write_file_atomically(&out.join("run.toml"), toml::to_string(&table)?.as_bytes())
}

/// Reads an options file (`--config`, or a run's run.toml) into the trainer's options, and the
/// inputs' fingerprints run.toml recorded (none in a `--config` file).
pub fn read_options_toml<T: DeserializeOwned>(path: &Path) -> Result<(T, Fingerprints)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("{}: not a valid run config", path.display()))?;
    let fingerprints = match table.remove(FINGERPRINTS) {
        Some(v) => v
            .try_into()
            .with_context(|| format!("{}: [{FINGERPRINTS}] is malformed", path.display()))?,
        None => Fingerprints::new(),
    };
    let options = table
        .try_into()
        .with_context(|| format!("{}: not a valid run config", path.display()))?;
    Ok((options, fingerprints))
}

/// On `--resume`: refuses inputs that changed since the run started (the paths `inputs` names,
/// as run.toml saved them).
pub fn refuse_changed_run_inputs(out: &Path, inputs: &[Option<&Path>]) -> Result<()> {
    let run_toml = out.join("run.toml");
    let (_, recorded): (toml::Table, Fingerprints) = read_options_toml(&run_toml)?;
    let out_abs =
        std::path::absolute(out).with_context(|| format!("resolving {}", out.display()))?;
    let inputs: Vec<&Path> = inputs
        .iter()
        .flatten()
        .copied()
        .filter(|p| std::path::absolute(p).is_ok_and(|p| !p.starts_with(&out_abs)))
        .collect();
    refuse_changed_inputs(&recorded, &inputs, &run_toml)
}
