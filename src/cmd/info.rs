//! `prefer info`: the version, the compiled kernels, the driver in use and whether a GPU is usable.

use super::Device;
use crate::ops::cuda::{compiled_archs, kernel_resources, probe_gpu, CudaEngine};
use anyhow::Result;

pub fn run_info(list_kernels: bool, device: Device) -> Result<()> {
    println!("prefer {}", env!("CARGO_PKG_VERSION"));
    match compiled_archs() {
        Some(archs) => println!("kernels: compiled in for {archs}"),
        None => println!("kernels: none for a GPU (built without nvcc)"),
    }
    match crate::emu::built() {
        Ok(()) => println!("software GPU: built in (--device emu or PREFER_DEVICE=emu)"),
        Err(e) => println!("software GPU: {e:#}"),
    }
    match crate::dist::world::World::from_env() {
        Ok(world) => println!("processes: {}", world.describe()),
        Err(e) => println!("processes: {e:#}"),
    }
    // Where many-GPU runs will load NCCL from (a world of one process never loads it).
    match crate::dist::nccl_lib::find_nccl() {
        Ok(at) => println!("nccl: {at}"),
        Err(_) => println!(
            "nccl: not found (only runs of several processes need it: pip install \
             nvidia-nccl-cu13==2.28.9, or PREFER_NCCL=/path/to/libnccl.so.2)"
        ),
    }
    device.prepare()?;
    match probe_gpu() {
        Ok(gpu) => {
            let driver = crate::emu::describe().unwrap_or_else(|| "the CUDA driver".to_string());
            println!("driver: {driver}");
            println!(
                "gpu: {} (sm_{}{}), {:.1} GiB total, {:.1} GiB free",
                gpu.name,
                gpu.compute_capability.0,
                gpu.compute_capability.1,
                gpu.total_bytes as f64 / (1u64 << 30) as f64,
                gpu.free_bytes as f64 / (1u64 << 30) as f64
            );
            match CudaEngine::new() {
                Ok(_) => println!("kernels: loaded"),
                Err(e) => println!("kernels: not usable here: {e:#}"),
            }
        }
        // The reason `prefer check` and `bench` give too: the engine names what is missing first
        // (kernels in this build, then a driver, then a GPU).
        Err(probe) => println!(
            "gpu: not usable: {:#}",
            CudaEngine::new().err().unwrap_or(probe)
        ),
    }
    if list_kernels {
        let rows = kernel_resources();
        if rows.is_empty() {
            println!("no ptxas report: this build had no nvcc");
        } else {
            println!(
                "\n{:<28} {:>9} {:>12} {:>11} {:>12} {:>11}",
                "kernel (sm_90a)", "registers", "spill store", "spill load", "static smem", "stack"
            );
            for k in rows {
                println!(
                    "{:<28} {:>9} {:>12} {:>11} {:>12} {:>11}",
                    k.name,
                    k.registers,
                    k.spill_store_bytes,
                    k.spill_load_bytes,
                    k.shared_bytes,
                    k.stack_bytes
                );
            }
        }
    }
    Ok(())
}
