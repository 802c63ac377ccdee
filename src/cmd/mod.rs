//! The commands behind the CLI, one file each. `main.rs` only parses arguments.

pub mod bench;
pub mod bench_generate;
pub mod check;
pub mod demo;
pub mod eval;
pub mod generate;
pub mod info;
pub mod init;
pub mod launch;
pub mod logprobs;
pub mod train;

pub use crate::ops::Device;
