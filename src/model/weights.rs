//! Checkpoints in Hugging Face's format: `config.json` plus safetensors, one file or sharded
//! (`model.safetensors.index.json`), in bf16, f16 or f32, read through mmap. Saving is atomic:
//! the folder is written under a temporary name and renamed into place.

use super::config::LlamaConfig;
use super::params::ParamLayout;
use super::weight_shards::{self, INDEX_FILE, MAX_SHARD_BYTES, SINGLE_FILE};
use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The dtype tensors are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SaveDtype {
    F32,
    Bf16,
}

impl SaveDtype {
    fn torch_name(self) -> &'static str {
        match self {
            SaveDtype::F32 => "float32",
            SaveDtype::Bf16 => "bfloat16",
        }
    }
}

/// The folder to read a checkpoint from: `dir`, or the previous version a save had just moved
/// aside (`dir.old`) when the process died between the two renames of a save.
pub fn resolve_checkpoint_dir(dir: &Path) -> PathBuf {
    let old = sibling(dir, "old");
    if !dir.join("config.json").exists() && old.join("config.json").exists() {
        eprintln!(
            "{} is incomplete; reading the previous checkpoint {}",
            dir.display(),
            old.display()
        );
        return old;
    }
    dir.to_path_buf()
}

/// Reads `dir/config.json` and the weights beside it into a flat f32 parameter buffer.
pub fn load_checkpoint(dir: &Path) -> Result<(LlamaConfig, Vec<f32>)> {
    let dir = &resolve_checkpoint_dir(dir);
    let cfg = LlamaConfig::from_hf_json(&dir.join("config.json"))?;
    let layout = ParamLayout::new(&cfg);
    let params = load_params(dir, &layout)?;
    Ok((cfg, params))
}

/// The safetensors files of a checkpoint folder: the shards listed by the index, or the one file.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("reading {}", index.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", index.display()))?;
        let map = v["weight_map"]
            .as_object()
            .with_context(|| format!("{}: no weight_map object", index.display()))?;
        let shards: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        return Ok(shards.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    bail!(
        "{}: no model.safetensors or model.safetensors.index.json",
        dir.display()
    )
}

/// Fills every tensor of `layout` from the checkpoint's safetensors files.
pub fn load_params(dir: &Path, layout: &ParamLayout) -> Result<Vec<f32>> {
    let files = weight_files(dir)?;
    let maps: Vec<Mmap> = files
        .iter()
        .map(|f| {
            let file = File::open(f).with_context(|| format!("opening {}", f.display()))?;
            // SAFETY: the file is only read; a checkpoint changed underneath a running process is
            // outside what any reader can defend against.
            unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", f.display()))
        })
        .collect::<Result<_>>()?;
    let parsed: Vec<SafeTensors> = maps
        .iter()
        .zip(&files)
        .map(|(m, f)| {
            SafeTensors::deserialize(m)
                .with_context(|| format!("{} is not a valid safetensors file", f.display()))
        })
        .collect::<Result<_>>()?;
    let mut where_is: HashMap<String, usize> = HashMap::new();
    for (i, st) in parsed.iter().enumerate() {
        for name in st.names() {
            where_is.insert(name.to_string(), i);
        }
    }

    // The buffer is sized by config.json: refused by name if the machine cannot hold it, rather
    // than aborting in the allocator.
    crate::ops::memory_budget::ensure_fits_host(
        &format!("{}'s {} parameters (f32)", dir.display(), layout.len),
        layout.len as u128 * 4,
        "check config.json's sizes (vocab_size, hidden_size, intermediate_size, num_hidden_layers)",
    )?;
    let mut params = vec![0.0f32; layout.len];
    for slot in &layout.slots {
        let Some(&i) = where_is.get(&slot.name) else {
            bail!(
                "checkpoint {}: missing tensor {} (expected shape {:?})",
                dir.display(),
                slot.name,
                slot.shape
            );
        };
        let file = files[i].display();
        let t = parsed[i].tensor(&slot.name)?;
        if t.shape() != slot.shape.as_slice() {
            bail!(
                "tensor {} in {file} has shape {:?}, but the config asks for {:?}",
                slot.name,
                t.shape(),
                slot.shape
            );
        }
        convert_to_f32(&mut params[slot.range.clone()], t.dtype(), t.data())
            .with_context(|| format!("tensor {} in {file}", slot.name))?;
    }
    Ok(params)
}

/// Decodes a tensor's bytes into `dst`, refusing a NaN or infinite weight: one would make every
/// log-prob NaN (and `generate` emit garbage) with no word of where it came from. The finiteness
/// test rides along the conversion, so the weights are read once.
fn convert_to_f32(dst: &mut [f32], dtype: Dtype, bytes: &[u8]) -> Result<()> {
    // safetensors data is little-endian and may sit at any alignment inside the mmap, so each
    // element is decoded from its bytes rather than cast in place.
    let mut all_finite = true;
    let mut put = |d: &mut f32, x: f32| {
        all_finite &= x.is_finite();
        *d = x;
    };
    match dtype {
        Dtype::F32 => {
            for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                put(d, f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            }
        }
        Dtype::BF16 => {
            for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                put(d, bf16::from_le_bytes([b[0], b[1]]).to_f32());
            }
        }
        Dtype::F16 => {
            for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                put(d, f16::from_le_bytes([b[0], b[1]]).to_f32());
            }
        }
        other => bail!("has dtype {other:?}; supported are F32, BF16 and F16"),
    }
    if !all_finite {
        let i = dst.iter().position(|x| !x.is_finite()).unwrap_or(0);
        bail!(
            "holds a non-finite weight ({} at flat index {i}); the checkpoint is corrupt or diverged",
            dst[i]
        );
    }
    Ok(())
}

/// Writes `params` as an HF checkpoint folder `dir` (config.json, the weights, and any extra
/// files such as tokenizer.json), atomically: a reader sees the old folder or the new one. The
/// weights are one model.safetensors, or shards with an index past [`MAX_SHARD_BYTES`], as
/// transformers writes them.
pub fn save_checkpoint(
    dir: &Path,
    cfg: &LlamaConfig,
    params: &[f32],
    dtype: SaveDtype,
    extra_files: &[(&str, &[u8])],
) -> Result<()> {
    save_checkpoint_sharded(dir, cfg, params, dtype, extra_files, MAX_SHARD_BYTES)
}

/// [`save_checkpoint`] with files of at most `max_shard_bytes` of weights (a tensor bigger than
/// that has a file to itself). Each file's bytes are encoded only while it is written, so a save
/// holds at most one shard beside the parameters.
pub fn save_checkpoint_sharded(
    dir: &Path,
    cfg: &LlamaConfig,
    params: &[f32],
    dtype: SaveDtype,
    extra_files: &[(&str, &[u8])],
    max_shard_bytes: usize,
) -> Result<()> {
    let layout = ParamLayout::new(cfg);
    anyhow::ensure!(
        params.len() == layout.len,
        "parameter buffer has {} values, the config needs {}",
        params.len(),
        layout.len
    );
    let tmp = staging_dir(dir)?;
    let value_bytes = match dtype {
        SaveDtype::F32 => 4,
        SaveDtype::Bf16 => 2,
    };
    let sizes: Vec<usize> = layout
        .slots
        .iter()
        .map(|s| s.range.len() * value_bytes)
        .collect();
    let shards = weight_shards::plan(&sizes, max_shard_bytes);
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let name = if shards.len() == 1 {
            SINGLE_FILE.to_string()
        } else {
            weight_shards::shard_name(i, shards.len())
        };
        let slots: Vec<&_> = shard.iter().map(|&t| &layout.slots[t]).collect();
        let bytes: Vec<Vec<u8>> = slots
            .iter()
            .map(|s| encode(&params[s.range.clone()], dtype))
            .collect();
        let st_dtype = match dtype {
            SaveDtype::F32 => Dtype::F32,
            SaveDtype::Bf16 => Dtype::BF16,
        };
        let views: Vec<(&str, TensorView)> = slots
            .iter()
            .zip(&bytes)
            .map(|(s, b)| {
                Ok((
                    s.name.as_str(),
                    TensorView::new(st_dtype, s.shape.clone(), b)?,
                ))
            })
            .collect::<Result<_>>()?;
        safetensors::serialize_to_file(views, Some(metadata.clone()), &tmp.join(&name))
            .with_context(|| format!("writing {name}"))?;
        for s in &slots {
            weight_map.insert(s.name.clone(), name.clone().into());
        }
    }
    if shards.len() > 1 {
        let index = serde_json::json!({
            "metadata": {"total_size": sizes.iter().sum::<usize>()},
            "weight_map": weight_map,
        });
        std::fs::write(tmp.join(INDEX_FILE), serde_json::to_string_pretty(&index)?)
            .with_context(|| format!("writing {INDEX_FILE}"))?;
    }
    let config = serde_json::to_string_pretty(&cfg.to_hf_json(dtype.torch_name()))?;
    std::fs::write(tmp.join("config.json"), config)?;
    for (name, data) in extra_files {
        std::fs::write(tmp.join(name), data).with_context(|| format!("writing {name}"))?;
    }
    replace_dir(&tmp, dir)
}

/// A fresh, empty sibling of `dir` (`dir.tmp`) to write a folder's new contents into, for
/// [`replace_dir`].
pub fn staging_dir(dir: &Path) -> Result<PathBuf> {
    let tmp = sibling(dir, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    Ok(tmp)
}

/// Makes the staged folder `tmp` (from [`staging_dir`]) the new `dir`, atomically: its entries
/// reach the disk first, then the old folder moves aside (to `dir.old`, which
/// [`resolve_checkpoint_dir`] falls back on) and the new one takes its name.
pub fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    // Everything on disk before the rename makes it visible, so a crash leaves whole files.
    for entry in std::fs::read_dir(tmp)? {
        File::open(entry?.path())?.sync_all()?;
    }
    sync_dir(tmp)?;

    // Swap the folders: the old one (if any) moves aside, the new one takes its name.
    let old = sibling(dir, "old");
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(dir, &old).with_context(|| format!("moving {} aside", dir.display()))?;
    }
    std::fs::rename(tmp, dir).with_context(|| format!("renaming into {}", dir.display()))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// Writes a model into `dir`, a folder that holds other files too (a run folder, so that
/// `from_pretrained("runs/dpo")` works): the files are staged whole in `dir/.final-model`, then
/// renamed into `dir` one by one with config.json last, so a folder with a config.json always has
/// whole weights beside it.
pub fn save_model_into(
    dir: &Path,
    cfg: &LlamaConfig,
    params: &[f32],
    dtype: SaveDtype,
    extra_files: &[(&str, &[u8])],
) -> Result<()> {
    save_model_into_sharded(dir, cfg, params, dtype, extra_files, MAX_SHARD_BYTES)
}

/// [`save_model_into`] with shards of at most `max_shard_bytes`.
pub fn save_model_into_sharded(
    dir: &Path,
    cfg: &LlamaConfig,
    params: &[f32],
    dtype: SaveDtype,
    extra_files: &[(&str, &[u8])],
    max_shard_bytes: usize,
) -> Result<()> {
    let staging = dir.join(".final-model");
    save_checkpoint_sharded(&staging, cfg, params, dtype, extra_files, max_shard_bytes)?;
    let mut names: Vec<String> = std::fs::read_dir(&staging)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort_by_key(|n| n == "config.json");
    let (config, files) = names.split_at(names.len() - 1);
    let move_in = |name: &String| {
        std::fs::rename(staging.join(name), dir.join(name))
            .with_context(|| format!("moving {name} into {}", dir.display()))
    };
    for name in files {
        move_in(name)?;
    }
    // Weights of an earlier save in another layout (one file then, shards now, or shards of
    // another count) would be read in place of these (transformers reads a model.safetensors
    // before an index): they go, and config.json comes last.
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if weight_shards::is_weights_file(&name) && !files.contains(&name) {
            std::fs::remove_file(dir.join(&name))
                .with_context(|| format!("removing the earlier {name} from {}", dir.display()))?;
        }
    }
    for name in config {
        move_in(name)?;
    }
    sync_dir(dir)?;
    std::fs::remove_dir(&staging).with_context(|| format!("removing {}", staging.display()))
}

/// Flushes a folder's entries (the renames into it) to disk.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

fn encode(values: &[f32], dtype: SaveDtype) -> Vec<u8> {
    match dtype {
        SaveDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        SaveDtype::Bf16 => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

/// `runs/model` → `runs/model.tmp` (a sibling, so the final rename stays on one filesystem).
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}
