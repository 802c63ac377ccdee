//! Hugging Face datasets' parquet files as data: one file, a folder of shards
//! (`data/train-00000-of-00004.parquet`, ...), or a glob of them (`data/train-*.parquet`). Each
//! row becomes the JSON object its columns make (strings, numbers, lists, nested message lists
//! as lists of {role, content} objects), so every reader of JSONL reads parquet with the same
//! column rules, and the same rows give the same run bit for bit. Rows are numbered from 1
//! across the shards in name order; an error names the file, and the row as its "line".

use anyhow::{bail, Context, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use std::path::{Path, PathBuf};

/// Whether `path` names parquet input: a `.parquet` file, a folder holding some, or a glob
/// (`*` or `?` in its file name).
pub fn is_parquet(path: &Path) -> bool {
    if is_glob(path) {
        return true;
    }
    if path.is_dir() {
        return shards_in(path).is_ok_and(|s| !s.is_empty());
    }
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

fn is_glob(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains(['*', '?']))
}

/// The `.parquet` files directly in `dir`, in name order.
fn shards_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Whether `name` matches `pattern`, where `*` is any run of characters and `?` any one.
fn matches(pattern: &[char], name: &[char]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some('*'), _) => {
            matches(&pattern[1..], name) || (!name.is_empty() && matches(pattern, &name[1..]))
        }
        (Some('?'), Some(_)) => matches(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => matches(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// The files `path` names, in order; an error when it names none.
pub fn shards(path: &Path) -> Result<Vec<PathBuf>> {
    let files = if is_glob(path) {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if dir.to_string_lossy().contains(['*', '?']) {
            bail!(
                "{}: only the file name may hold * or ?, not the folders",
                path.display()
            );
        }
        let pattern: Vec<char> = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .chars()
            .collect();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading the folder {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| matches(&pattern, &n.chars().collect::<Vec<_>>()))
            })
            .collect();
        files.sort();
        files
    } else if path.is_dir() {
        shards_in(path)?
    } else {
        vec![path.to_path_buf()]
    };
    if files.is_empty() {
        bail!("{}: no parquet file matches", path.display());
    }
    Ok(files)
}

/// Every row of the parquet input `path` as a line of JSON, in order. A file that is not
/// parquet, or a row that cannot be read, is an error naming the file.
pub fn rows_as_json_lines(path: &Path) -> Result<impl Iterator<Item = std::io::Result<String>>> {
    let mut readers = Vec::new();
    for file in shards(path)? {
        let f =
            std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
        let reader = SerializedFileReader::new(f)
            .with_context(|| format!("{}: not a readable parquet file", file.display()))?;
        readers.push((file, reader));
    }
    let mut files = readers.into_iter();
    let mut current: Option<(PathBuf, RowIter<'static>)> = None;
    Ok(std::iter::from_fn(move || loop {
        if let Some((file, rows)) = current.as_mut() {
            match rows.next() {
                Some(Ok(row)) => return Some(Ok(row.to_json_value().to_string())),
                Some(Err(e)) => {
                    let msg = format!("{}: a row cannot be read: {e}", file.display());
                    current = None;
                    files.by_ref().for_each(drop);
                    return Some(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        msg,
                    )));
                }
                None => current = None,
            }
        }
        let (file, reader) = files.next()?;
        let reader: Box<dyn FileReader> = Box::new(reader);
        current = Some((file, RowIter::from_file_into(reader)));
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_shard_names() {
        let m = |p: &str, n: &str| {
            matches(
                &p.chars().collect::<Vec<_>>(),
                &n.chars().collect::<Vec<_>>(),
            )
        };
        assert!(m("train-*.parquet", "train-00000-of-00004.parquet"));
        assert!(m("*.parquet", "a.parquet"));
        assert!(m(
            "train-0000?-of-00002.parquet",
            "train-00001-of-00002.parquet"
        ));
        assert!(!m("train-*.parquet", "test-00000-of-00001.parquet"));
        assert!(!m("*.parquet", "a.parquet.tmp"));
        assert!(m("*", ""));
    }

    #[test]
    fn parquet_input_is_told_by_its_name_or_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert!(is_parquet(Path::new("data/train.parquet")));
        assert!(is_parquet(Path::new("data/train-*.parquet")));
        assert!(!is_parquet(Path::new("data/train.jsonl")));
        assert!(!is_parquet(dir.path()));
        std::fs::write(dir.path().join("b.parquet"), b"x").unwrap();
        std::fs::write(dir.path().join("a.parquet"), b"x").unwrap();
        assert!(is_parquet(dir.path()));
        let s = shards(dir.path()).unwrap();
        assert_eq!(
            s,
            [dir.path().join("a.parquet"), dir.path().join("b.parquet")]
        );
        let e = shards(&dir.path().join("none-*.parquet")).unwrap_err();
        assert!(format!("{e:#}").contains("no parquet file matches"));
        let e = rows_as_json_lines(&dir.path().join("a.parquet"))
            .err()
            .unwrap();
        assert!(
            format!("{e:#}").contains("a.parquet: not a readable parquet file"),
            "{e:#}"
        );
    }
}
