//! The CUDA engine: the kernels from kernels/*.cu, compiled by build.rs into one embedded fatbin,
//! and one launcher file per kernel file. Launchers are thin: they check shapes, pick the grid and
//! name the op and its shapes in any error.

pub mod adamw;
pub mod attention;
pub mod backend;
pub mod device;
pub mod embedding;
pub mod logprob;
pub mod matmul;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub mod scalar_head;
pub mod swiglu;

pub use device::{grid_for, probe_gpu, CudaEngine, GpuInfo};

/// The embedded fatbin; empty when the crate was built without nvcc.
pub static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/prefer_kernels.fatbin"));

/// Whether kernels were compiled in, and for which architectures.
pub fn compiled_archs() -> Option<&'static str> {
    #[cfg(prefer_kernels)]
    {
        Some(env!("PREFER_KERNEL_ARCHS"))
    }
    #[cfg(not(prefer_kernels))]
    {
        None
    }
}
