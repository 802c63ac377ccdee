//! Llama-family model configuration: the presets, and Hugging Face `config.json` in and out.

use crate::ops::cpu::{Llama3RopeScaling, RopeSpec};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// Token ids of the built-in byte-level tokenizer: ids 0..=255 are the bytes, then the specials.
pub const BYTE_BOS: u32 = 256;
pub const BYTE_EOS: u32 = 257;
pub const BYTE_PAD: u32 = 258;
pub const BYTE_VOCAB: usize = 259;

/// Bounds on config.json's sizes: well past any Llama released (Llama 3.1 405B has a 128256
/// vocabulary, hidden 16384, 126 layers, 128 heads), and small enough that every size computed
/// from them fits in 64 bits.
pub const MAX_VOCAB: usize = 1 << 22;
pub const MAX_WIDTH: usize = 1 << 16;
pub const MAX_LAYERS: usize = 1024;
pub const MAX_HEADS: usize = 1024;
pub const MAX_HEAD_DIM: usize = 1024;
pub const MAX_CONTEXT: usize = 1 << 24;

/// The shape and numerics of a Llama model, the subset of HF `LlamaConfig` this engine honours.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub initializer_range: f32,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// A scalar head `score.weight` [1, hidden] (HF `LlamaForSequenceClassification`, num_labels 1)
    /// for reward and value models.
    pub scalar_head: bool,
}

impl LlamaConfig {
    /// llama-134m is DESIGN.md's "llama-124m" (T2), named for its 134.1M parameters (an untied
    /// 32000-token vocabulary); the old name still works. The Llama 2 and Llama 3 presets have the
    /// published shapes (llama-2-13b is Tulu 2 13B's, the paper's policy), for memory plans and
    /// benchmarks; their special ids are the byte tokenizer's, as every preset's.
    pub const PRESETS: [&'static str; 8] = [
        "tiny",
        "llama-134m",
        "llama-1b",
        "llama-2-7b",
        "llama-2-13b",
        "llama-2-70b",
        "llama-3-8b",
        "llama-3-70b",
    ];

    /// A named preset. Every preset uses the built-in byte tokenizer's special ids.
    pub fn preset(name: &str) -> Result<Self> {
        let base = LlamaConfig {
            vocab_size: BYTE_VOCAB,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 2048,
            tie_word_embeddings: true,
            initializer_range: 0.02,
            bos_token_id: Some(BYTE_BOS),
            eos_token_id: Some(BYTE_EOS),
            pad_token_id: Some(BYTE_PAD),
            scalar_head: false,
        };
        Ok(match name {
            "tiny" => base,
            "llama-134m" | "llama-124m" => LlamaConfig {
                vocab_size: 32000,
                hidden_size: 768,
                intermediate_size: 2048,
                num_hidden_layers: 12,
                num_attention_heads: 12,
                num_key_value_heads: 12,
                head_dim: 64,
                tie_word_embeddings: false,
                ..base
            },
            // The Llama-3.2-1B shape.
            "llama-1b" => LlamaConfig {
                vocab_size: 128256,
                hidden_size: 2048,
                intermediate_size: 8192,
                num_hidden_layers: 16,
                num_attention_heads: 32,
                num_key_value_heads: 8,
                head_dim: 64,
                rope_theta: 500000.0,
                rope_scaling: Some(Llama3RopeScaling {
                    factor: 32.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                }),
                max_position_embeddings: 131072,
                ..base
            },
            // Llama 2 (4096 positions, untied 32000-token vocabulary); 70B with 8 KV heads.
            "llama-2-7b" | "llama-2-13b" | "llama-2-70b" => {
                let (d, f, l, h, kv) = match name {
                    "llama-2-7b" => (4096, 11008, 32, 32, 32),
                    "llama-2-13b" => (5120, 13824, 40, 40, 40),
                    _ => (8192, 28672, 80, 64, 8),
                };
                LlamaConfig {
                    vocab_size: 32000,
                    hidden_size: d,
                    intermediate_size: f,
                    num_hidden_layers: l,
                    num_attention_heads: h,
                    num_key_value_heads: kv,
                    head_dim: 128,
                    max_position_embeddings: 4096,
                    tie_word_embeddings: false,
                    ..base
                }
            }
            // Llama 3 (8192 positions, θ 500000, 128256-token vocabulary, 8 KV heads).
            "llama-3-8b" | "llama-3-70b" => {
                let (d, f, l, h) = match name {
                    "llama-3-8b" => (4096, 14336, 32, 32),
                    _ => (8192, 28672, 80, 64),
                };
                LlamaConfig {
                    vocab_size: 128256,
                    hidden_size: d,
                    intermediate_size: f,
                    num_hidden_layers: l,
                    num_attention_heads: h,
                    num_key_value_heads: 8,
                    head_dim: 128,
                    rope_theta: 500000.0,
                    max_position_embeddings: 8192,
                    tie_word_embeddings: false,
                    ..base
                }
            }
            other => bail!(
                "unknown preset {other:?}; the presets are {}",
                Self::PRESETS.join(", ")
            ),
        })
    }

    /// What the rotary embedding reads of this config.
    pub fn rope(&self) -> RopeSpec {
        RopeSpec {
            head_dim: self.head_dim,
            theta: self.rope_theta,
            scaling: self.rope_scaling,
        }
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Whether the model can produce next-token log-probs (an LM head, tied or its own).
    /// HF `LlamaForSequenceClassification` checkpoints with untied embeddings have none.
    pub fn has_lm_head(&self) -> bool {
        self.tie_word_embeddings || !self.scalar_head
    }

    /// Every field against the bounds a Llama model can have: sizes far past any real model
    /// (they would only make an allocation that aborts) and floats that would make the forward
    /// NaN. Each error names the field and its range.
    pub fn validate(&self) -> Result<()> {
        let c = self;
        for (field, v, max) in [
            ("vocab_size", c.vocab_size, MAX_VOCAB),
            ("hidden_size", c.hidden_size, MAX_WIDTH),
            ("intermediate_size", c.intermediate_size, 4 * MAX_WIDTH),
            ("num_hidden_layers", c.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", c.num_attention_heads, MAX_HEADS),
            ("num_key_value_heads", c.num_key_value_heads, MAX_HEADS),
            ("head_dim", c.head_dim, MAX_HEAD_DIM),
            (
                "max_position_embeddings",
                c.max_position_embeddings,
                MAX_CONTEXT,
            ),
        ] {
            if !(1..=max).contains(&v) {
                bail!("config: {field} {v} is out of range: it must be from 1 to {max}");
            }
        }
        for (field, v, ok) in [
            (
                "rms_norm_eps",
                c.rms_norm_eps,
                c.rms_norm_eps > 0.0 && c.rms_norm_eps < 1.0,
            ),
            ("rope_theta", c.rope_theta, c.rope_theta > 0.0),
        ] {
            if !(v.is_finite() && ok) {
                bail!(
                    "config: {field} {v} is out of range: it must be a finite number above 0{}",
                    if field == "rms_norm_eps" {
                        " and below 1"
                    } else {
                        ""
                    }
                );
            }
        }
        if let Some(s) = &c.rope_scaling {
            for (field, v) in [
                ("rope_scaling.factor", s.factor),
                ("rope_scaling.low_freq_factor", s.low_freq_factor),
                ("rope_scaling.high_freq_factor", s.high_freq_factor),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    bail!("config: {field} {v} must be a finite number above 0");
                }
            }
            if s.high_freq_factor <= s.low_freq_factor {
                bail!(
                    "config: rope_scaling.high_freq_factor ({}) must be above low_freq_factor ({})",
                    s.high_freq_factor,
                    s.low_freq_factor
                );
            }
            if !(1..=MAX_CONTEXT).contains(&s.original_max_position_embeddings) {
                bail!(
                    "config: rope_scaling.original_max_position_embeddings {} is out of range: it must be from 1 to {MAX_CONTEXT}",
                    s.original_max_position_embeddings
                );
            }
        }
        if !c.num_attention_heads.is_multiple_of(c.num_key_value_heads) {
            bail!(
                "config: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                c.num_attention_heads,
                c.num_key_value_heads
            );
        }
        if c.head_dim == 0 {
            bail!("config: head_dim must be positive");
        }
        for (name, id) in [
            ("bos_token_id", c.bos_token_id),
            ("eos_token_id", c.eos_token_id),
            ("pad_token_id", c.pad_token_id),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= c.vocab_size) {
                bail!(
                    "config: {name} {id} is outside the vocabulary of {}",
                    c.vocab_size
                );
            }
        }
        if !(c.initializer_range.is_finite() && c.initializer_range >= 0.0) {
            bail!("config: initializer_range must be a finite non-negative number");
        }
        if !c.head_dim.is_multiple_of(2) {
            bail!(
                "config: head_dim ({}) must be even for rotary embeddings",
                c.head_dim
            );
        }
        Ok(())
    }

    /// Reads an HF `config.json`. Fields this engine does not use are ignored; the architecture
    /// decides whether the model has a scalar head.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let hf: HfConfig = serde_json::from_str(&text)
            .with_context(|| format!("parsing {} as a Llama config.json", path.display()))?;
        // The engine computes Llama's architecture; another model_type (GPT-2, Mistral's sliding
        // window, Qwen's biases, ...) would train as something it is not.
        if let Some(t) = hf.model_type.as_deref().filter(|t| *t != "llama") {
            bail!(
                "{}: model_type {t:?} is not a Llama model; prefer trains model_type \"llama\"",
                path.display()
            );
        }
        // transformers 5 writes `rope_parameters` {rope_type, rope_theta, ...}; 4.x writes
        // `rope_theta` beside an optional `rope_scaling`.
        let rope_theta = hf
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(|t| t.as_f64())
            .map(|t| t as f32)
            .or(hf.rope_theta)
            .unwrap_or(10000.0);
        let rope_scaling = match hf.rope_scaling.or(hf.rope_parameters) {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let kind = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("");
                match kind {
                    "llama3" => Some(serde_json::from_value(v.clone()).with_context(|| {
                        format!(
                            "{}: rope_scaling of type llama3 is incomplete",
                            path.display()
                        )
                    })?),
                    "default" => None,
                    other => bail!(
                        "{}: rope_scaling type {other:?} is not supported (only llama3)",
                        path.display()
                    ),
                }
            }
        };
        if hf.hidden_act.as_deref().is_some_and(|a| a != "silu") {
            bail!(
                "{}: hidden_act {:?} is not supported (Llama uses silu)",
                path.display(),
                hf.hidden_act.unwrap_or_default()
            );
        }
        if hf.attention_bias == Some(true) || hf.mlp_bias == Some(true) {
            bail!(
                "{}: attention_bias / mlp_bias are not supported (Llama has no biases)",
                path.display()
            );
        }
        let scalar_head = hf
            .architectures
            .iter()
            .any(|a| a == "LlamaForSequenceClassification");
        let num_labels = hf.num_labels.or(hf.id2label.as_ref().map(|m| m.len()));
        if scalar_head && num_labels.unwrap_or(1) != 1 {
            bail!(
                "{}: a sequence-classification model must have num_labels 1 to be a reward model",
                path.display()
            );
        }
        let cfg = LlamaConfig {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            initializer_range: hf.initializer_range.unwrap_or(0.02),
            bos_token_id: hf.bos_token_id.and_then(first_id),
            eos_token_id: hf.eos_token_id.and_then(first_id),
            pad_token_id: hf.pad_token_id.and_then(first_id),
            scalar_head,
        };
        cfg.validate()
            .with_context(|| format!("in {}", path.display()))?;
        Ok(cfg)
    }

    /// The `config.json` transformers loads unchanged, as `LlamaForCausalLM` or, with a scalar
    /// head, `LlamaForSequenceClassification` (num_labels 1).
    pub fn to_hf_json(&self, dtype: &str) -> serde_json::Value {
        // An f32 through its shortest decimal form: 0.02, not 0.019999999552965164.
        let short = |x: f32| -> f64 { x.to_string().parse().unwrap_or(x as f64) };
        let arch = if self.scalar_head {
            "LlamaForSequenceClassification"
        } else {
            "LlamaForCausalLM"
        };
        let mut v = serde_json::json!({
            "architectures": [arch],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": short(self.rms_norm_eps),
            "rope_theta": short(self.rope_theta),
            "rope_scaling": self.rope_scaling.as_ref().map(|s| serde_json::json!({
                "rope_type": "llama3",
                "factor": short(s.factor),
                "low_freq_factor": short(s.low_freq_factor),
                "high_freq_factor": short(s.high_freq_factor),
                "original_max_position_embeddings": s.original_max_position_embeddings,
            })),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": short(self.initializer_range),
            "attention_bias": false,
            "mlp_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": dtype,
            "use_cache": true,
        });
        if self.scalar_head {
            v["num_labels"] = 1.into();
            v["id2label"] = serde_json::json!({"0": "LABEL_0"});
            v["label2id"] = serde_json::json!({"LABEL_0": 0});
        }
        v
    }
}

/// HF configs store eos_token_id as an int or a list of ints (Llama 3.1+); the first one is the
/// one that ends a sequence here.
fn first_id(v: serde_json::Value) -> Option<u32> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(|x| x as u32),
        serde_json::Value::Array(a) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
        _ => None,
    }
}

#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    initializer_range: Option<f32>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
    pad_token_id: Option<serde_json::Value>,
    num_labels: Option<usize>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    id2label: Option<serde_json::Map<String, serde_json::Value>>,
    /// transformers 5 keeps rope_theta and the scaling together under this name.
    rope_parameters: Option<serde_json::Value>,
}
