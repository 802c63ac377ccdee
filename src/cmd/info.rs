//! `prefer info`: the version, the compiled kernels, and whether a GPU is usable.

use crate::ops::cuda::{compiled_archs, probe_gpu, CudaEngine};

pub fn run_info() {
    println!("prefer {}", env!("CARGO_PKG_VERSION"));
    match compiled_archs() {
        Some(archs) => println!("kernels: compiled in for {archs}"),
        None => println!("kernels: none (built without nvcc; CPU engine only)"),
    }
    match probe_gpu() {
        Ok(gpu) => {
            println!(
                "gpu: {} (sm_{}{}), {:.1} GiB total, {:.1} GiB free",
                gpu.name,
                gpu.compute_capability.0,
                gpu.compute_capability.1,
                gpu.total_bytes as f64 / (1u64 << 30) as f64,
                gpu.free_bytes as f64 / (1u64 << 30) as f64
            );
            match CudaEngine::new() {
                Ok(_) => println!("kernels: loaded on the GPU"),
                Err(e) => println!("kernels: not usable here: {e:#}"),
            }
        }
        Err(e) => println!("gpu: not usable: {e:#}"),
    }
}
