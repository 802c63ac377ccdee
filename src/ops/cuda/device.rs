//! Finding a GPU, loading the embedded kernels, and moving data.

use super::{compiled_archs, FATBIN};
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One thread per element, refusing sizes a u32 grid cannot cover rather than wrapping.
pub fn grid_for(n: usize, op: &str) -> Result<cudarc::driver::LaunchConfig> {
    anyhow::ensure!(
        n <= u32::MAX as usize,
        "{op}: {n} elements exceed one launch's grid"
    );
    Ok(cudarc::driver::LaunchConfig::for_num_elems(n as u32))
}

/// What `prefer info` reports about the GPU.
pub struct GpuInfo {
    pub name: String,
    pub total_bytes: usize,
    pub free_bytes: usize,
    pub compute_capability: (i32, i32),
}

/// Whether a driver that sees a GPU is there, without panicking (cudarc panics where there is no
/// libcuda) and without creating a context.
fn driver_sees_a_gpu() -> Result<()> {
    // SAFETY: only asks the dynamic loader whether libcuda can be opened.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        bail!("no CUDA driver (libcuda) found on this machine; --device emu runs the CUDA engine on the CPU");
    }
    let count = CudaContext::device_count().map_err(|e| anyhow!("cuDeviceGetCount: {e:?}"))?;
    if count < 1 {
        bail!("a CUDA driver is present but it sees no GPU");
    }
    Ok(())
}

/// This process's place among the processes of its node (the launcher's LOCAL_RANK), which the
/// process group sets when it joins (src/dist/group.rs); 0 for a plain run.
static LOCAL_RANK: AtomicUsize = AtomicUsize::new(0);

/// Makes [`CudaEngine::new`] open the GPU of local rank `rank`.
pub fn set_local_rank(rank: usize) {
    LOCAL_RANK.store(rank, Ordering::Relaxed);
}

/// The GPU this process drives: its local rank's (one process per GPU, as torchrun and srun
/// start them), or the only one it sees (a launcher that gives each rank its own
/// CUDA_VISIBLE_DEVICES). The software GPU gives each process a GPU of its own.
fn gpu_of_this_rank(emu: bool) -> Result<usize> {
    let local = LOCAL_RANK.load(Ordering::Relaxed);
    if emu || local == 0 {
        return Ok(0);
    }
    let count =
        CudaContext::device_count().map_err(|e| anyhow!("cuDeviceGetCount: {e:?}"))? as usize;
    match count {
        1 => Ok(0),
        n if local < n => Ok(local),
        n => bail!(
            "local rank {local} but this node shows {n} GPUs: start at most one process per GPU"
        ),
    }
}

/// Whether a CUDA driver and GPU are usable, and what they are.
pub fn probe_gpu() -> Result<GpuInfo> {
    driver_sees_a_gpu()?;
    let ctx = CudaContext::new(0).map_err(|e| anyhow!("creating a context on GPU 0: {e:?}"))?;
    let (free_bytes, total_bytes) = ctx.mem_get_info().map_err(|e| anyhow!("{e:?}"))?;
    Ok(GpuInfo {
        name: ctx.name().map_err(|e| anyhow!("{e:?}"))?,
        total_bytes,
        free_bytes,
        compute_capability: ctx.compute_capability().map_err(|e| anyhow!("{e:?}"))?,
    })
}

/// One GPU with the kernels loaded and a stream to run them on.
pub struct CudaEngine {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    functions: std::sync::Mutex<std::collections::HashMap<String, CudaFunction>>,
}

impl CudaEngine {
    /// Opens GPU 0 and loads the embedded kernels. Errors say which of the three is missing:
    /// kernels in this build, a driver, or a GPU.
    pub fn new() -> Result<Self> {
        // The software GPU runs the kernels it compiled from the same text; it takes any image.
        let emu = crate::emu::is_active();
        if !emu && (compiled_archs().is_none() || FATBIN.is_empty()) {
            bail!("this build has no CUDA kernels (nvcc was not found when it was compiled); --device emu runs them on the CPU");
        }
        let image = if FATBIN.is_empty() {
            b"prefer software GPU".to_vec()
        } else {
            FATBIN.to_vec()
        };
        driver_sees_a_gpu()?;
        let ordinal = gpu_of_this_rank(emu)?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| anyhow!("creating a CUDA context on GPU {ordinal}: {e:?}"))?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(image))
            .map_err(|e| anyhow!("loading the embedded kernels: {e:?}"))?;
        // Streams are ordered by explicit events (see dist::nccl), not by cudarc's tracking: an
        // event recorded per buffer per launch costs a call per kernel argument, and inside a graph
        // capture a wait on an event recorded outside it is refused (capture isolation).
        // SAFETY: set before the first allocation; every cross-stream use waits on an event.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own, not the legacy default stream: CUDA refuses to capture that one
        // into a graph (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED), and it would serialise against
        // every other blocking stream.
        let stream = ctx
            .new_stream()
            .map_err(|e| anyhow!("creating the compute stream on GPU {ordinal}: {e:?}"))?;
        Ok(CudaEngine {
            ctx,
            stream,
            module,
            functions: Default::default(),
        })
    }

    /// A kernel of the embedded module, looked up once and then served from a cache.
    pub fn function(&self, name: &str) -> Result<CudaFunction> {
        let mut cache = self
            .functions
            .lock()
            .map_err(|_| anyhow!("kernel cache poisoned"))?;
        if let Some(f) = cache.get(name) {
            return Ok(f.clone());
        }
        let f = self
            .module
            .load_function(name)
            .map_err(|e| anyhow!("kernel {name} is not in the embedded module: {e:?}"))?;
        cache.insert(name.to_string(), f.clone());
        Ok(f)
    }

    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(host)
            .map_err(|e| anyhow!("copying {} values to the GPU: {e:?}", host.len()))
    }

    pub fn zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros(n).map_err(|e| {
            // Only a failed allocation asks how much was free, for the message.
            let (free, _) = self.ctx.mem_get_info().unwrap_or((0, 0));
            anyhow!(
                "allocating {} bytes on the GPU ({free} free): {e:?}",
                n * std::mem::size_of::<T>()
            )
        })
    }

    /// Sets every element of `buf` to zero, on the stream.
    pub fn zero<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        buf: &mut CudaSlice<T>,
    ) -> Result<()> {
        self.stream
            .memset_zeros(buf)
            .map_err(|e| anyhow!("zeroing {} values on the GPU: {e:?}", buf.len()))
    }

    pub fn download<T: DeviceRepr + Default + Clone>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(dev)
            .map_err(|e| anyhow!("copying {} values from the GPU: {e:?}", dev.len()))
    }

    /// Mean milliseconds of `run` over `iters` calls, timed with CUDA events after one warm-up call.
    pub fn time_ms(&self, iters: usize, mut run: impl FnMut() -> Result<()>) -> Result<f64> {
        run()?;
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self
            .stream
            .record_event(timing)
            .map_err(|e| anyhow!("{e:?}"))?;
        for _ in 0..iters {
            run()?;
        }
        let end = self
            .stream
            .record_event(timing)
            .map_err(|e| anyhow!("{e:?}"))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| anyhow!("timing: {e:?}"))?;
        Ok(ms as f64 / iters.max(1) as f64)
    }

    pub fn synchronize(&self, op: &str) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| anyhow!("{e:?}"))
            .with_context(|| format!("after {op}"))
    }
}
