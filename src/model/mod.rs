//! The model: its config, the flat parameter layout, checkpoint I/O, and the forward and backward,
//! written over the op set of src/ops/. `Batch` (the ops' input) is re-exported for the model's
//! callers.

pub mod config;
pub mod decode;
pub mod grad_sink;
pub mod init;
pub mod llama;
pub mod param_units;
pub mod params;
pub mod weight_shards;
pub mod weights;

pub use crate::ops::Batch;
pub use config::LlamaConfig;
pub use decode::{DecodeView, DecodeWorkspace, KvCache, SlotMap};
pub use grad_sink::GradSink;
pub use llama::{Forward, HeadGrads, Heads, Llama};
pub use params::ParamLayout;
