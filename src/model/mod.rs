//! The model: its config, the flat parameter layout, checkpoint I/O, and the forward and backward.

pub mod backend;
pub mod batch;
pub mod config;
pub mod decode;
pub mod init;
pub mod llama;
pub mod memory_budget;
pub mod params;
pub mod weights;

pub use backend::{Backend, Cpu};
pub use batch::Batch;
pub use config::LlamaConfig;
pub use decode::{DecodeView, DecodeWorkspace, KvCache, SlotMap};
pub use llama::{Forward, HeadGrads, Heads, Llama};
pub use params::ParamLayout;
