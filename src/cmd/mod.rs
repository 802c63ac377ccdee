//! The commands behind the CLI, one file each. `main.rs` only parses arguments.

pub mod info;
pub mod init;
pub mod logprobs;

/// Where a command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
    /// CUDA where a GPU and kernels are usable, else the CPU.
    Auto,
}
