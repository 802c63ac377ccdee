//! Checkpoint I/O: a round trip keeps every value, and bad checkpoints give errors that name the
//! tensor, the shapes or the dtype.

use prefer::model::init::init_params;
use prefer::model::weights::{load_checkpoint, save_checkpoint, SaveDtype};
use prefer::model::{LlamaConfig, ParamLayout};
use safetensors::{tensor::TensorView, Dtype};
use std::path::Path;

fn tiny() -> (LlamaConfig, Vec<f32>) {
    let cfg = LlamaConfig::preset("tiny").unwrap();
    let params = init_params(&cfg, &ParamLayout::new(&cfg), 7);
    (cfg, params)
}

/// Rewrites dir/model.safetensors with `edit` applied to the (name, dtype, shape, bytes) list.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

#[test]
fn f32_round_trip_is_exact_and_bf16_is_close() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, params) = tiny();
    let out = dir.path().join("ckpt");
    save_checkpoint(&out, &cfg, &params, SaveDtype::F32, &[]).unwrap();
    let (cfg2, params2) = load_checkpoint(&out).unwrap();
    assert_eq!(cfg, cfg2);
    assert_eq!(params, params2);
    // Saving over an existing checkpoint replaces it and leaves no temporary folder behind.
    save_checkpoint(&out, &cfg, &params, SaveDtype::Bf16, &[]).unwrap();
    let (_, params3) = load_checkpoint(&out).unwrap();
    for (a, b) in params.iter().zip(&params3) {
        assert!(
            (a - b).abs() <= a.abs() / 128.0,
            "bf16 keeps 8 bits of mantissa: {a} vs {b}"
        );
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("ckpt")]);
}

#[test]
fn sharded_checkpoints_load() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, params) = tiny();
    save_checkpoint(dir.path(), &cfg, &params, SaveDtype::F32, &[]).unwrap();
    // Split the one file into two shards with an index, as transformers does for large models.
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut weight_map = serde_json::Map::new();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (name, t) in st.tensors() {
        let shard = if name.contains("layers.1") {
            "model-00002-of-00002.safetensors"
        } else {
            "model-00001-of-00002.safetensors"
        };
        weight_map.insert(name.clone(), shard.into());
        let entry = (
            name,
            TensorView::new(t.dtype(), t.shape().to_vec(), t.data()).unwrap(),
        );
        if shard.starts_with("model-00002") {
            b.push(entry)
        } else {
            a.push(entry)
        }
    }
    safetensors::serialize_to_file(
        a,
        None,
        &dir.path().join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    safetensors::serialize_to_file(
        b,
        None,
        &dir.path().join("model-00002-of-00002.safetensors"),
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let (_, loaded) = load_checkpoint(dir.path()).unwrap();
    assert_eq!(loaded, params);
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, params) = tiny();
    save_checkpoint(dir.path(), &cfg, &params, SaveDtype::F32, &[]).unwrap();
    rewrite(dir.path(), |t| {
        t.retain(|(n, ..)| n != "model.layers.1.mlp.up_proj.weight")
    });
    let err = format!("{:#}", load_checkpoint(dir.path()).unwrap_err());
    assert!(
        err.contains("missing tensor model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
    assert!(err.contains("[128, 64]"), "{err}");
}

#[test]
fn wrong_shape_names_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, params) = tiny();
    save_checkpoint(dir.path(), &cfg, &params, SaveDtype::F32, &[]).unwrap();
    rewrite(dir.path(), |t| {
        let q = t
            .iter_mut()
            .find(|(n, ..)| n == "model.layers.0.self_attn.q_proj.weight")
            .unwrap();
        q.2 = vec![32, 128];
    });
    let err = format!("{:#}", load_checkpoint(dir.path()).unwrap_err());
    assert!(
        err.contains("model.layers.0.self_attn.q_proj.weight"),
        "{err}"
    );
    assert!(
        err.contains("[32, 128]") && err.contains("[64, 64]"),
        "{err}"
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, params) = tiny();
    save_checkpoint(dir.path(), &cfg, &params, SaveDtype::F32, &[]).unwrap();
    rewrite(dir.path(), |t| {
        let norm = t
            .iter_mut()
            .find(|(n, ..)| n == "model.norm.weight")
            .unwrap();
        norm.1 = Dtype::I32;
    });
    let err = format!("{:#}", load_checkpoint(dir.path()).unwrap_err());
    assert!(
        err.contains("model.norm.weight") && err.contains("I32"),
        "{err}"
    );
}

#[test]
fn hf_config_variants_are_read() {
    // A transformers-5 style config: rope_parameters, a list of eos ids, no head_dim.
    let dir = tempfile::tempdir().unwrap();
    let cfg_json = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "vocab_size": 300, "hidden_size": 64,
        "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 8,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "tie_word_embeddings": false,
        "eos_token_id": [5, 6], "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0,
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}
    });
    std::fs::write(dir.path().join("config.json"), cfg_json.to_string()).unwrap();
    let cfg = LlamaConfig::from_hf_json(&dir.path().join("config.json")).unwrap();
    assert_eq!(
        (cfg.head_dim, cfg.eos_token_id, cfg.rope_theta),
        (8, Some(5), 500000.0)
    );
    assert_eq!(cfg.rope_scaling.unwrap().factor, 8.0);
    // 8 heads over 3 KV heads is no GQA layout: a clear error, not a panic later.
    let bad = serde_json::json!({"vocab_size": 10, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 1, "num_attention_heads": 8, "num_key_value_heads": 3});
    std::fs::write(dir.path().join("config.json"), bad.to_string()).unwrap();
    let err = format!(
        "{:#}",
        LlamaConfig::from_hf_json(&dir.path().join("config.json")).unwrap_err()
    );
    assert!(
        err.contains("not a multiple of num_key_value_heads"),
        "{err}"
    );
}
