//! The software GPU (`--device emu`): the CUDA engine, kernels and cuBLASLt calls included, running
//! unchanged on the CPU. build.rs compiles kernels/*.cu a second time with the system C++
//! compiler, through emu/include/emu_cuda.h, into a stand-in `libcuda.so`, and builds a stand-in
//! `libcublasLt.so`; both are embedded in this binary.
//!
//! [`activate`] writes them to the cache folder and opens them by absolute path before cudarc's
//! first call. Their soname is the one cudarc asks for, so the dynamic loader hands cudarc the
//! library already loaded, and `LD_LIBRARY_PATH` is never needed. The real driver is never
//! shadowed unless the software GPU was asked for. `PREFER_EMU_LIBRARY=/path/libcuda.so` loads
//! another stand-in driver in place of the embedded one (the planted-bug test builds them).

use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;
use std::sync::OnceLock;

static LIBCUDA: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libcuda.so"));
static LIBCUBLASLT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libcublasLt.so"));
static LIBNCCL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libnccl.so"));
static BUILD_ERROR: &str = include_str!(concat!(env!("OUT_DIR"), "/emu_build_error.txt"));

static ACTIVE: OnceLock<std::result::Result<Libraries, String>> = OnceLock::new();

struct Libraries {
    cuda: libloading::os::unix::Library,
    /// The stand-in NCCL, written out beside the others; opened only by a run of several ranks.
    nccl: PathBuf,
}

/// Whether this build has the software GPU, and if not, why.
pub fn built() -> Result<()> {
    if LIBCUDA.is_empty() || LIBCUBLASLT.is_empty() || LIBNCCL.is_empty() {
        let why = BUILD_ERROR
            .lines()
            .next()
            .unwrap_or("no C++ compiler was found");
        bail!("this build has no software GPU (--device emu): it was not built ({why})");
    }
    Ok(())
}

/// Whether the software GPU has been loaded into this process.
pub fn is_active() -> bool {
    matches!(ACTIVE.get(), Some(Ok(_)))
}

/// Loads the software GPU in place of the CUDA driver. Idempotent; it must come before anything
/// that opens the driver (`probe_gpu`, `CudaEngine::new`).
pub fn activate() -> Result<()> {
    ACTIVE
        .get_or_init(|| load().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map(|_| ())
        .map_err(|e| anyhow!("{e}"))
}

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    // The libraries' own bytes name the folder, so two builds never share a stale copy.
    let mut hash: u64 = 0xcbf29ce484222325;
    for &b in LIBCUDA.iter().chain(LIBCUBLASLT).chain(LIBNCCL) {
        hash = (hash ^ b as u64).wrapping_mul(0x100000001b3);
    }
    base.join("prefer").join("emu").join(format!("{hash:016x}"))
}

/// Writes `bytes` to `dir/name` unless an identical file is there; atomically, so two processes
/// starting at once never open a half-written library.
fn materialise(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
        return Ok(path);
    }
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(path)
}

fn open_global(path: &std::path::Path) -> Result<libloading::os::unix::Library> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: our own library; its initialisers only set up static tables.
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }
        .with_context(|| format!("loading the software GPU from {}", path.display()))
}

fn load() -> Result<Libraries> {
    built()?;
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // A stand-in rebuilt from other kernel text (tests/emu_mutants.rs, through OUT_DIR's
    // emu_rebuild.sh) replaces the embedded one.
    let cuda_path = match std::env::var_os("PREFER_EMU_LIBRARY") {
        Some(path) => PathBuf::from(path),
        None => materialise(&dir, "libcuda.so", LIBCUDA)?,
    };
    let lt_path = materialise(&dir, "libcublasLt.so", LIBCUBLASLT)?;
    let nccl = materialise(&dir, "libnccl.so.2", LIBNCCL)?;
    // The driver first: the cuBLASLt stand-in binds to its range check when it loads.
    let cuda = open_global(&cuda_path)?;
    let lt = open_global(&lt_path)?;
    // SAFETY: the symbol's type is the one emu/cublaslt/cublaslt.cpp defines.
    unsafe {
        let set: libloading::os::unix::Symbol<unsafe extern "C" fn(Sgemm)> = lt
            .get(b"prefer_emu_set_sgemm")
            .context("the cuBLASLt stand-in lacks prefer_emu_set_sgemm")?;
        set(sgemm);
    }
    // Both stay loaded for the life of the process (cudarc holds its own handles too).
    std::mem::forget(lt);
    Ok(Libraries { cuda, nccl })
}

type Sgemm = extern "C" fn(
    usize,
    usize,
    usize,
    f32,
    *const f32,
    isize,
    isize,
    *const f32,
    isize,
    isize,
    f32,
    *mut f32,
    isize,
    isize,
);

/// The stand-in cuBLASLt's inner product, C = alpha·A·B + beta·C in f32 with any strides (beta 0
/// never reads C), by matrixmultiply. With fewer rows than columns it computes Cᵀ = Bᵀ·Aᵀ: the
/// same dot products with the long side first, which matrixmultiply splits over threads.
#[allow(clippy::too_many_arguments)]
extern "C" fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    // SAFETY: the stand-in passes buffers that hold every element these strides reach.
    unsafe {
        if m >= n {
            matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
        } else {
            matrixmultiply::sgemm(n, k, m, alpha, b, csb, rsb, a, csa, rsa, beta, c, csc, rsc)
        }
    }
}

/// One line about the software GPU, for `prefer info`; None when it is not loaded.
pub fn describe() -> Option<String> {
    let libs = ACTIVE.get()?.as_ref().ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: the symbol's type is the one emu/runtime/driver.cpp defines; it writes a C string
    // of at most `len` bytes.
    unsafe {
        let f: libloading::os::unix::Symbol<unsafe extern "C" fn(*mut u8, usize) -> i32> =
            libs.cuda.get(b"prefer_emu_describe").ok()?;
        f(buf.as_mut_ptr(), buf.len());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Sets the schedule seed (0: thread order; else shuffled) and whether the race check runs, for
/// every launch from now on. `PREFER_EMU_SEED` and `PREFER_EMU_RACE_CHECK=0` set them at start.
pub fn set_schedule(seed: u64, race_check: bool) -> Result<()> {
    let libs = loaded()?;
    // SAFETY: the symbol's type is the one emu/runtime/launch.cpp defines.
    unsafe {
        let f: libloading::os::unix::Symbol<unsafe extern "C" fn(u64, i32)> =
            libs.cuda.get(b"prefer_emu_set_schedule")?;
        f(seed, race_check as i32);
    }
    Ok(())
}

/// Where the stand-in NCCL is, once the software GPU is loaded.
pub fn nccl_library() -> Result<PathBuf> {
    Ok(loaded()?.nccl.clone())
}

/// The stand-in NCCL written to the cache folder, without loading anything (its tests open it
/// alone, where each collective runs at once on the calling thread).
pub fn nccl_standin() -> Result<PathBuf> {
    built()?;
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    materialise(&dir, "libnccl.so.2", LIBNCCL)
}

/// Runs every stream's queued work to the end. A rank waiting for the others on the host (a
/// host collective) first lets its queued device collectives run: the software GPU makes
/// progress only when the host drives it, where a GPU runs on by itself. Nothing when the software
/// GPU is not loaded.
pub fn drain() {
    if !is_active() {
        return;
    }
    // SAFETY: the stand-in's cuCtxSynchronize needs no current context. An error it reports
    // stays pending for the next synchronisation, which reports it.
    let _ = unsafe { cudarc::driver::sys::cuCtxSynchronize() };
}

fn loaded() -> Result<&'static Libraries> {
    ACTIVE
        .get()
        .and_then(|r| r.as_ref().ok())
        .ok_or_else(|| anyhow!("the software GPU is not loaded"))
}

/// Driver calls the software GPU has served so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub launches: u64,
    pub allocations: u64,
    pub frees: u64,
    pub host_to_device: u64,
    pub device_to_host: u64,
    pub host_syncs: u64,
}

pub fn counters() -> Result<Counters> {
    let libs = loaded()?;
    let mut raw = [0u64; 6];
    // SAFETY: the symbol's type is the one emu/runtime/driver.cpp defines; it fills six u64s.
    unsafe {
        let f: libloading::os::unix::Symbol<unsafe extern "C" fn(*mut u64)> =
            libs.cuda.get(b"prefer_emu_counters")?;
        f(raw.as_mut_ptr());
    }
    Ok(Counters {
        launches: raw[0],
        allocations: raw[1],
        frees: raw[2],
        host_to_device: raw[3],
        device_to_host: raw[4],
        host_syncs: raw[5],
    })
}

/// Device bytes the software GPU holds now, and at the most since the last `reset_peak`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub live_bytes: u64,
    pub peak_bytes: u64,
}

fn memory_call(reset_peak: bool) -> Result<Memory> {
    let libs = loaded()?;
    let mut raw = [0u64; 2];
    // SAFETY: the symbol's type is the one emu/runtime/memory.cpp defines; it fills two u64s.
    unsafe {
        let f: libloading::os::unix::Symbol<unsafe extern "C" fn(*mut u64, i32)> =
            libs.cuda.get(b"prefer_emu_memory")?;
        f(raw.as_mut_ptr(), reset_peak as i32);
    }
    Ok(Memory {
        live_bytes: raw[0],
        peak_bytes: raw[1],
    })
}

pub fn memory() -> Result<Memory> {
    memory_call(false)
}

/// Starts a new peak at the bytes live now.
pub fn reset_peak() -> Result<Memory> {
    memory_call(true)
}
