//! The model: its config, the flat parameter layout, checkpoint I/O, and the forward and backward.

pub mod config;
pub mod init;
pub mod llama;
pub mod params;
pub mod weights;

pub use config::LlamaConfig;
pub use llama::{Batch, Forward, HeadGrads, Heads, Llama};
pub use params::ParamLayout;
