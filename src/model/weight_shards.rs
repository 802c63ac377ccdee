//! How a checkpoint's weights are split into files, as transformers' `save_pretrained` splits
//! them: one `model.safetensors` up to [`MAX_SHARD_BYTES`], else shards named
//! `model-00001-of-00003.safetensors` with a `model.safetensors.index.json` that maps every
//! tensor to its shard and gives the weights' total size in bytes.
//!
//! The split follows huggingface_hub's `split_state_dict_into_shards_factory`: tensors in order,
//! a new shard when the next tensor would take the current one past the limit; a tensor bigger
//! than the limit gets a shard of its own at once, while the shard being filled stays open.

/// transformers' default `max_shard_size` for `save_pretrained` ("5GB", decimal). A 13B model in
/// f32 (52 GB) would otherwise be one file past the Hub's 50 GB limit for a file.
pub const MAX_SHARD_BYTES: usize = 5_000_000_000;

/// The index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The weights file of an unsharded checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

/// The file name of shard `i` (from 0) of `n`, as transformers names it.
pub fn shard_name(i: usize, n: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
}

/// Whether `name` is a weights file of an HF checkpoint folder: the single file, the index, or a
/// shard (`model-NNNNN-of-NNNNN.safetensors`).
pub fn is_weights_file(name: &str) -> bool {
    if name == SINGLE_FILE || name == INDEX_FILE {
        return true;
    }
    let Some(rest) = name
        .strip_prefix("model-")
        .and_then(|r| r.strip_suffix(".safetensors"))
    else {
        return false;
    };
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    matches!(rest.split_once("-of-"), Some((a, b)) if digits(a) && digits(b))
}

/// The tensors (by position) of each file, in file order, for tensors of `sizes` bytes and
/// files of at most `max_bytes` (one entry: the single file).
pub fn plan(sizes: &[usize], max_bytes: usize) -> Vec<Vec<usize>> {
    let mut shards = Vec::new();
    let (mut current, mut bytes) = (Vec::new(), 0usize);
    for (i, &size) in sizes.iter().enumerate() {
        if size > max_bytes {
            shards.push(vec![i]);
            continue;
        }
        if bytes + size > max_bytes {
            shards.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(i);
        bytes += size;
    }
    if !current.is_empty() || shards.is_empty() {
        shards.push(current);
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_fill_shards_in_order_and_a_big_one_stands_alone() {
        // huggingface_hub's own example: [6, 6, 2, 6, 2, 2] GB at 10 GB → [6], [6+2], [6+2+2].
        assert_eq!(
            plan(&[6, 6, 2, 6, 2, 2], 10),
            [vec![0], vec![1, 2], vec![3, 4, 5]]
        );
        // A tensor past the limit is a shard of its own, the open shard keeps filling.
        assert_eq!(plan(&[3, 12, 1], 10), [vec![1], vec![0, 2]]);
        assert_eq!(plan(&[1, 2, 3], 10), [vec![0, 1, 2]]);
        assert_eq!(plan(&[10, 10], 10), [vec![0], vec![1]]);
    }

    #[test]
    fn weights_files_are_told_from_other_files() {
        for name in [
            "model.safetensors",
            "model.safetensors.index.json",
            "model-00001-of-00003.safetensors",
            &shard_name(11, 12),
        ] {
            assert!(is_weights_file(name), "{name}");
        }
        for name in [
            "config.json",
            "model-1-of-3.safetensors",
            "model-00001-of-00003.safetensors.tmp",
            "adapter_model.safetensors",
            "model-0000a-of-00003.safetensors",
        ] {
            assert!(!is_weights_file(name), "{name}");
        }
        assert_eq!(shard_name(0, 3), "model-00001-of-00003.safetensors");
    }
}

#[cfg(test)]
mod saved {
    use super::*;
    use crate::model::config::LlamaConfig;
    use crate::model::params::ParamLayout;
    use crate::model::weights::{
        load_checkpoint, save_checkpoint_sharded, save_model_into_sharded, SaveDtype,
    };

    fn tiny() -> (LlamaConfig, Vec<f32>) {
        let cfg = LlamaConfig::preset("tiny").unwrap();
        let n = ParamLayout::new(&cfg).len;
        (cfg, (0..n).map(|i| (i as f32 * 0.618).sin()).collect())
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A checkpoint past the limit is shards and an index, as transformers writes them, and
    /// reads back bit for bit; under the limit it is one file.
    #[test]
    fn a_large_checkpoint_is_written_as_shards_with_an_index_and_reads_back_exactly() {
        let (cfg, params) = tiny();
        let layout = ParamLayout::new(&cfg);
        let total: usize = layout.slots.iter().map(|s| s.range.len() * 4).sum();
        let max = total / 3;
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("ck");
        save_checkpoint_sharded(&ck, &cfg, &params, SaveDtype::F32, &[], max).unwrap();
        let files = names(&ck);
        let shards: Vec<&String> = files.iter().filter(|n| n.starts_with("model-")).collect();
        let n = shards.len();
        assert!(n >= 3, "{files:?}");
        for (i, s) in shards.iter().enumerate() {
            assert_eq!(**s, shard_name(i, n));
        }
        assert!(!files.contains(&SINGLE_FILE.to_string()));
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(ck.join(INDEX_FILE)).unwrap()).unwrap();
        assert_eq!(index["metadata"]["total_size"], total);
        let map = index["weight_map"].as_object().unwrap();
        assert_eq!(map.len(), layout.slots.len());
        for s in &layout.slots {
            assert!(is_weights_file(map[&s.name].as_str().unwrap()));
        }
        // No shard holds more than the limit unless it is one tensor.
        for s in &shards {
            let in_it: Vec<_> = layout
                .slots
                .iter()
                .filter(|t| map[&t.name] == s.as_str())
                .collect();
            let bytes: usize = in_it.iter().map(|t| t.range.len() * 4).sum();
            assert!(bytes <= max || in_it.len() == 1, "{s}: {bytes} > {max}");
        }
        let (cfg2, back) = load_checkpoint(&ck).unwrap();
        assert_eq!(cfg2.hidden_size, cfg.hidden_size);
        assert!(back
            .iter()
            .zip(&params)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        // bf16 halves the bytes; under the limit it is the single file.
        save_checkpoint_sharded(&ck, &cfg, &params, SaveDtype::Bf16, &[], total).unwrap();
        assert_eq!(names(&ck), ["config.json", SINGLE_FILE]);
    }

    /// Saving into a folder that holds an earlier save's weights in another layout leaves only
    /// the new ones (the stale file would be read in their place).
    #[test]
    fn a_save_into_a_run_folder_replaces_weights_of_another_layout() {
        let (cfg, params) = tiny();
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        std::fs::write(run.join("metrics.jsonl"), "{}\n").unwrap();
        save_model_into_sharded(run, &cfg, &params, SaveDtype::F32, &[], usize::MAX).unwrap();
        assert!(run.join(SINGLE_FILE).exists());
        save_model_into_sharded(run, &cfg, &params, SaveDtype::F32, &[], 200_000).unwrap();
        let files = names(run);
        assert!(!files.contains(&SINGLE_FILE.to_string()), "{files:?}");
        assert!(files.contains(&INDEX_FILE.to_string()));
        assert!(files.contains(&"metrics.jsonl".to_string()));
        let (_, back) = load_checkpoint(run).unwrap();
        assert_eq!(back, params);
        save_model_into_sharded(run, &cfg, &params, SaveDtype::F32, &[], usize::MAX).unwrap();
        assert_eq!(names(run), ["config.json", "metrics.jsonl", SINGLE_FILE]);
    }
}
