//! A file written whole or not at all: the bytes go to a uniquely named temporary file beside the
//! target, which is synced and renamed over the target on [`AtomicFile::commit`]. Dropped without
//! a commit (an error, a signal), the temporary file is removed and the target stays as it was.
//!
//! What the target may be: nothing, or a regular file (replaced). A symbolic link is followed, so
//! the file it points to is replaced and the link stays. A device, FIFO or socket is written
//! through in place (`--out /dev/stdout` works), never renamed over. A folder is refused.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct AtomicFile {
    /// Where the bytes end up (links resolved).
    target: PathBuf,
    /// The temporary file renamed over `target` on commit; `None` when writing through.
    tmp: Option<PathBuf>,
    writer: Option<BufWriter<File>>,
}

/// Makes temporary names unique within a process; the pid makes them unique across processes.
static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// `path` with its symbolic links followed to what they point to, even when that does not exist
/// yet (a dangling link names the file to create).
fn resolve_links(path: &Path) -> Result<PathBuf> {
    let mut p =
        std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(&p)
                    .with_context(|| format!("reading the link {}", p.display()))?;
                p = p.parent().unwrap_or(Path::new("/")).join(to);
            }
            _ => return Ok(p),
        }
    }
    bail!("{}: too many levels of symbolic links", path.display())
}

impl AtomicFile {
    /// Opens `path` for writing as described above. Nothing is visible at `path` until commit.
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let target = resolve_links(path)?;
        if let Ok(meta) = std::fs::metadata(&target) {
            if meta.is_dir() {
                bail!("{} is a folder, not a file", path.display());
            }
            if !meta.is_file() {
                // A device, FIFO or socket: write into it, as a shell's `>` would.
                let file = OpenOptions::new()
                    .write(true)
                    .open(&target)
                    .with_context(|| format!("opening {}", path.display()))?;
                return Ok(AtomicFile {
                    target,
                    tmp: None,
                    writer: Some(BufWriter::new(file)),
                });
            }
        }
        let dir = target.parent().unwrap_or(Path::new("."));
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(
            ".{name}.{}-{}.prefer-tmp",
            std::process::id(),
            NEXT_TMP.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("creating a temporary file beside {}", path.display()))?;
        Ok(AtomicFile {
            target,
            tmp: Some(tmp),
            writer: Some(BufWriter::new(file)),
        })
    }

    /// Makes the written bytes the target's contents: synced, then renamed over it.
    pub fn commit(mut self) -> Result<()> {
        let writer = self.writer.take().expect("only commit takes the writer");
        let file = writer
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", self.target.display()))?;
        let Some(tmp) = self.tmp.take() else {
            return Ok(()); // written through
        };
        let done = file
            .sync_all()
            .and_then(|()| std::fs::rename(&tmp, &self.target));
        if let Err(e) = done {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("writing {}", self.target.display()));
        }
        if let Some(dir) = self.target.parent() {
            // The rename on disk too; a failure here leaves a whole file either way.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.as_mut().expect("open until commit").write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.as_mut().expect("open until commit").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            drop(self.writer.take());
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Writes `bytes` to `path` whole or not at all (see [`AtomicFile`]).
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_writers_of_one_target_never_share_a_temporary_file_and_the_last_whole_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.jsonl");
        std::fs::write(&target, "previous\n").unwrap();
        let mut a = AtomicFile::create(&target).unwrap();
        let mut b = AtomicFile::create(&target).unwrap();
        assert_ne!(
            a.tmp, b.tmp,
            "two runs writing one --out share a temporary file"
        );
        a.write_all(b"from a\n").unwrap();
        b.write_all(b"from b\n").unwrap();
        // Until a commit, the target keeps its old contents.
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "previous\n");
        a.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "from a\n");
        b.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "from b\n");
        // A writer dropped without a commit leaves neither its bytes nor its temporary file.
        let mut c = AtomicFile::create(&target).unwrap();
        c.write_all(b"partial").unwrap();
        drop(c);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "from b\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
