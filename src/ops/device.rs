//! Where a command runs: the CPU oracle, the CUDA engine on a GPU or on the software GPU, or
//! whichever is usable; every command resolves its `--device` through [`Device::engine`].

use super::cuda::backend::Cuda;

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

    /// The CUDA engine this device asks for, resolved in this one place: none on the CPU; one on
    /// `cuda` and `emu` (an error when it cannot start); on `auto`, one where kernels and a GPU
    /// are usable, else none (the CPU).
    pub fn engine(self) -> anyhow::Result<Option<Cuda>> {
        match self.prepare()? {
            Device::Cpu => Ok(None),
            Device::Cuda | Device::Emu => Cuda::new().map(Some),
            Device::Auto => Ok(Cuda::new().ok()),
        }
    }
}
