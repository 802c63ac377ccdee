//! The commands behind the CLI, one file each. `main.rs` only parses arguments.

pub mod bench;
pub mod check;
pub mod demo;
pub mod info;
pub mod init;
pub mod logprobs;
pub mod train;

/// Where a command runs.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
    /// CUDA where a GPU and kernels are usable, else the CPU.
    Auto,
}
