//! The commands behind the CLI, one file each. `main.rs` only parses arguments.

pub mod bench;
pub mod bench_generate;
pub mod check;
pub mod demo;
pub mod generate;
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
    /// The f32 CPU oracle.
    Cpu,
    /// The CUDA engine on a GPU.
    Cuda,
    /// The CUDA engine on the software GPU: every kernel and cuBLASLt call run on the CPU, with
    /// race and bounds checks (slow; for changing kernels without a GPU).
    Emu,
    /// CUDA where a GPU and kernels are usable, else the CPU.
    Auto,
}

impl Device {
    /// Loads the software GPU when it is asked for; call before anything opens the driver.
    pub fn prepare(self) -> anyhow::Result<Self> {
        if self == Device::Emu {
            crate::emu::activate()?;
        }
        Ok(self)
    }
}
