//! The CUDA engine: the kernels from kernels/*.cu, compiled by build.rs into one embedded fatbin,
//! and one launcher file per kernel file. Launchers are thin: they check shapes, pick the grid and
//! name the op and its shapes in any error.

pub mod accumulate;
pub mod adamw;
pub mod attention;
pub mod backend;
pub mod copy_rows;
pub mod decode_attention;
pub mod device;
pub mod dpo_loss;
pub mod embedding;
pub mod logprob;
pub mod matmul;
pub mod pool;
pub mod ppo_loss;
pub mod residual;
pub mod reward_loss;
pub mod rmsnorm;
pub mod rope;
pub mod sample;
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

/// What ptxas reported for one kernel on sm_90a, when nvcc built it (build.rs).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KernelResources {
    pub name: String,
    pub registers: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    pub shared_bytes: u32,
    pub stack_bytes: u32,
}

static RESOURCES: &str = include_str!(concat!(env!("OUT_DIR"), "/kernel_resources.tsv"));

/// Every kernel's registers, spills and static shared memory on sm_90a; empty without nvcc.
pub fn kernel_resources() -> Vec<KernelResources> {
    RESOURCES
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
            (f.len() == 6).then(|| KernelResources {
                name: f[0].to_string(),
                registers: n(1),
                spill_store_bytes: n(2),
                spill_load_bytes: n(3),
                shared_bytes: n(4),
                stack_bytes: n(5),
            })
        })
        .collect()
}
