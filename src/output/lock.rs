//! One process writes a folder at a time: a lock file held (`flock`) while a run writes. The
//! kernel releases it when the process ends, however it ends, so a crash leaves no stale lock.
//! The file holds the holder's pid and command line, to name it in the second run's refusal.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

pub const LOCK_FILE: &str = ".prefer.lock";

/// Held for as long as it lives.
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
}

impl FolderLock {
    /// Takes `dir`'s lock, or fails at once naming the process that holds it.
    pub fn acquire(dir: &Path) -> Result<FolderLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("creating the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                bail!(
                    "{} is in use by another prefer run ({}); wait for it to finish, or choose another folder",
                    dir.display(),
                    if holder.is_empty() { "process unknown".to_string() } else { holder.replace('\n', ": ") }
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        let me = format!(
            "pid {}\n{}",
            std::process::id(),
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(me.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(FolderLock { _file: file })
    }
}
