//! What a run read when it started, so that a resume can refuse inputs that changed since: the
//! starting model's weights and config, its tokenizer, and the data. A changed base model would
//! otherwise silently change the DPO reference, and changed data the meaning of every step
//! count. Each file is identified by its length and the xxh3 hash of its bytes (read at disk
//! speed: seconds for a 13B checkpoint), so a copy or `touch` of the same bytes still resumes.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File (absolute path) → "xxh3:HASH:LENGTH", in run.toml's `[fingerprints]` table.
pub type Fingerprints = BTreeMap<String, String>;

/// The files of a model folder that decide what it computes and how it tokenises.
const MODEL_FILES: [&str; 6] = [
    "config.json",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

fn fingerprint_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    // Streamed rather than memory-mapped: a file truncated while it is read is an error, not a
    // SIGBUS.
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut len = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok(format!("xxh3:{:016x}:{len}", hasher.digest()))
}

/// The files of `input` to fingerprint: a model folder's config, weights and tokenizer files, or
/// the file itself.
fn files_of(input: &Path) -> Result<Vec<PathBuf>> {
    if !input.exists() {
        return Ok(Vec::new()); // named as gone by the caller
    }
    if !input.is_dir() {
        return Ok(vec![input.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(input)
        .with_context(|| format!("reading {}", input.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.ends_with(".safetensors") || MODEL_FILES.contains(&name.as_ref())
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Fingerprints of every file of `inputs` (model folders and data files).
pub fn fingerprint_inputs(inputs: &[&Path]) -> Result<Fingerprints> {
    let mut out = Fingerprints::new();
    for input in inputs {
        for file in files_of(input)? {
            let key = std::path::absolute(&file)
                .with_context(|| format!("resolving {}", file.display()))?;
            out.insert(key.display().to_string(), fingerprint_file(&file)?);
        }
    }
    Ok(out)
}

/// Refuses a resume whose inputs are not the ones the run started with, naming the first file
/// that changed, appeared or went missing.
pub fn refuse_changed_inputs(
    recorded: &Fingerprints,
    inputs: &[&Path],
    run_toml: &Path,
) -> Result<()> {
    if recorded.is_empty() {
        return Ok(()); // a run from before fingerprints were recorded
    }
    let now = fingerprint_inputs(inputs)?;
    let advice =
        "a resumed run must read the inputs it started with (start a new run to use the new ones)";
    for (file, was) in recorded {
        match now.get(file) {
            None => bail!("{file} is gone since this run started ({}); {advice}", run_toml.display()),
            Some(is) if is != was => bail!(
                "{file} changed since this run started ({} recorded {was}, it is now {is}); {advice}",
                run_toml.display()
            ),
            Some(_) => {}
        }
    }
    if let Some(file) = now.keys().find(|f| !recorded.contains_key(*f)) {
        bail!(
            "{file} is new since this run started ({} does not list it); {advice}",
            run_toml.display()
        );
    }
    Ok(())
}
