//! NCCL: collectives on device buffers between the ranks' GPUs, on a communication stream ordered
//! against the compute stream by events.
//!
//! The library is opened by path, through our own table of the dozen entry points we call, not
//! through cudarc's `nccl` module: cudarc looks only for names such as `libnccl.so` and
//! `libnccl.so.13`, while the `nvidia-nccl-cu13` wheel (and PyTorch) ship `libnccl.so.2`, and it
//! panics when none is found. On the software GPU (`--device emu`) the library is the stand-in
//! in emu/nccl/, collectives between the rank processes over shared memory.
//!
//! World size 1 never gets here: no library is looked for and no call is made.

use super::group::Group;
use super::nccl_lib::{find_nccl, NcclLocation, LIBRARY};
use crate::ops::cuda::device::CudaEngine;
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

type RawComm = *mut c_void;
type Stream = cudarc::driver::sys::CUstream;

/// ncclUniqueId: 128 opaque bytes rank 0 makes and every rank passes to ncclCommInitRank.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId([u8; 128]);

/// ncclAllReduce and ncclReduceScatter: (send, recv, count, type, operator, comm, stream).
type ReduceFn =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, RawComm, Stream) -> c_int;

/// The entry points, from one opened library that stays loaded for the process's life.
struct Api {
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> c_int,
    comm_init_rank: unsafe extern "C" fn(*mut RawComm, c_int, UniqueId, c_int) -> c_int,
    comm_destroy: unsafe extern "C" fn(RawComm) -> c_int,
    comm_abort: unsafe extern "C" fn(RawComm) -> c_int,
    comm_get_async_error: unsafe extern "C" fn(RawComm, *mut c_int) -> c_int,
    get_error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    get_last_error: Option<unsafe extern "C" fn(RawComm) -> *const c_char>,
    all_reduce: ReduceFn,
    reduce_scatter: ReduceFn,
    all_gather:
        unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, RawComm, Stream) -> c_int,
    /// (send, recv, count, type, root, comm, stream): the shape of a reduction, with the root
    /// rank where the operator goes.
    broadcast: ReduceFn,
    /// Where it was loaded from, for messages.
    from: String,
}

const NCCL_SUM: c_int = 0;

/// Element types NCCL moves and sums.
pub trait NcclType: DeviceRepr {
    const TYPE: c_int;
}
impl NcclType for f32 {
    const TYPE: c_int = 7;
}
impl NcclType for f64 {
    const TYPE: c_int = 8;
}
impl NcclType for half::bf16 {
    const TYPE: c_int = 9;
}
impl NcclType for half::f16 {
    const TYPE: c_int = 6;
}
impl NcclType for i32 {
    const TYPE: c_int = 2;
}
impl NcclType for u8 {
    const TYPE: c_int = 1;
}

static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();

/// The communicators alive in this process (as addresses), for [`abort_all`].
static LIVE: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

/// Aborts every communicator of this process: a stream blocked in a collective whose peer is gone
/// is freed. For a process about to exit (the heartbeat's verdict); nothing is usable after.
pub fn abort_all() {
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|p| p.into_inner()));
    if live.is_empty() {
        return;
    }
    if let Ok(api) = api() {
        for comm in live {
            // SAFETY: a communicator this process made and has not destroyed.
            unsafe { (api.comm_abort)(comm as RawComm) };
        }
    }
}

/// How long an error NCCL reports may stand before the watchdog acts. The thread whose
/// collective failed normally reports it and ends the run well within this; a thread blocked on
/// the GPU behind an NCCL kernel that can no longer finish never would.
const WATCHDOG_GRACE: Duration = Duration::from_secs(10);

/// Starts, once a process, the thread that polls `ncclCommGetAsyncError` on every live
/// communicator each second (as PyTorch's NCCL watchdog does): an error that stands for
/// [`WATCHDOG_GRACE`] aborts the communicators and exits 1, naming the rank (`who`) and the error.
fn start_watchdog(who: String) {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let watch = move || {
            let mut since: Option<Instant> = None;
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let Some(error) = first_async_error() else {
                    since = None;
                    continue;
                };
                if since.get_or_insert_with(Instant::now).elapsed() >= WATCHDOG_GRACE {
                    eprintln!(
                        "error: {who}: NCCL reported an error {} s ago and the run has not stopped; \
                         aborting the NCCL communicators: {error}",
                        WATCHDOG_GRACE.as_secs()
                    );
                    abort_all();
                    std::process::exit(1);
                }
            }
        };
        let _ = std::thread::Builder::new()
            .name("nccl-watchdog".into())
            .spawn(watch);
    });
}

/// The first error a live communicator of this process reports (`ncclCommGetAsyncError`), if
/// any; NCCL's "in progress" is not one.
pub fn first_async_error() -> Option<String> {
    const IN_PROGRESS: c_int = 7;
    let live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    let api = api().ok()?;
    for &comm in live.iter() {
        let mut r: c_int = 0;
        // SAFETY: a live communicator (Drop and abort_all take it out under this lock first);
        // NCCL allows this query from any thread while the communicator is in use.
        unsafe { (api.comm_get_async_error)(comm as RawComm, &mut r) };
        if r != 0 && r != IN_PROGRESS {
            return check(api, Some(comm as RawComm), r, "an NCCL collective")
                .err()
                .map(|e| format!("{e:#}"));
        }
    }
    None
}

/// How many communicators this process has joined and not yet destroyed or aborted.
pub fn live_communicators() -> usize {
    LIVE.lock().unwrap_or_else(|p| p.into_inner()).len()
}

fn api() -> Result<&'static Api> {
    API.get_or_init(|| load().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn load() -> Result<Api> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    let path = if crate::emu::is_active() {
        crate::emu::nccl_library()?
    } else {
        match find_nccl()? {
            NcclLocation::File(p) => p,
            NcclLocation::Loader => LIBRARY.into(),
        }
    };
    // SAFETY: NCCL's initialisers only set up its own state.
    let lib = unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_LOCAL) }
        .with_context(|| format!("loading NCCL from {}", path.display()))?;
    macro_rules! get {
        ($name:literal) => {
            // SAFETY: the symbol's type is NCCL's documented signature (nccl.h).
            *unsafe { lib.get($name) }.with_context(|| {
                format!(
                    "{} has no {}",
                    path.display(),
                    String::from_utf8_lossy(&$name[..$name.len() - 1])
                )
            })?
        };
    }
    let api = Api {
        get_unique_id: get!(b"ncclGetUniqueId\0"),
        comm_init_rank: get!(b"ncclCommInitRank\0"),
        comm_destroy: get!(b"ncclCommDestroy\0"),
        comm_abort: get!(b"ncclCommAbort\0"),
        comm_get_async_error: get!(b"ncclCommGetAsyncError\0"),
        get_error_string: get!(b"ncclGetErrorString\0"),
        // SAFETY: as above; older NCCLs lack it.
        get_last_error: unsafe { lib.get(b"ncclGetLastError\0") }.ok().map(|s| *s),
        all_reduce: get!(b"ncclAllReduce\0"),
        reduce_scatter: get!(b"ncclReduceScatter\0"),
        all_gather: get!(b"ncclAllGather\0"),
        broadcast: get!(b"ncclBroadcast\0"),
        from: path.display().to_string(),
    };
    // Loaded for the life of the process: communicators and their streams may outlive any owner.
    std::mem::forget(lib);
    Ok(api)
}

/// A communicator over every rank of a group, with its own stream.
pub struct DeviceComm {
    comm: RawComm,
    api: &'static Api,
    rank: usize,
    size: usize,
    /// The communication stream: collectives run here, ordered after the compute stream's work
    /// by an event, and the compute stream waits for them by another.
    stream: Arc<CudaStream>,
    compute: Arc<CudaStream>,
    /// A collective failed: the communicator is aborted on drop, not destroyed.
    failed: bool,
}

impl DeviceComm {
    /// Joins the communicator of `group`'s ranks on `eng`'s GPU. Every rank calls it at the same
    /// point; it returns when all have.
    pub fn new(group: &Group, eng: &CudaEngine) -> Result<DeviceComm> {
        let api = api()?;
        let mut id = UniqueId([0; 128]);
        if group.is_root() {
            // SAFETY: writes the 128 bytes of `id`.
            check(
                api,
                None,
                unsafe { (api.get_unique_id)(&mut id) },
                "ncclGetUniqueId",
            )?;
        }
        let mut bytes = id.0.to_vec();
        group.broadcast_bytes("NCCL unique id", &mut bytes)?;
        anyhow::ensure!(
            bytes.len() == 128,
            "rank 0 sent an NCCL id of {} bytes",
            bytes.len()
        );
        id.0.copy_from_slice(&bytes);
        eng.ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("binding the CUDA context: {e:?}"))?;
        // Ordering across the two streams is by the events below, explicitly, so that a missing
        // one is a bug the software GPU's cross-stream check reports; cudarc's own tracking
        // (an event per buffer per launch) would hide it and cost a record per kernel argument.
        // SAFETY: every use of a buffer on the communication stream is ordered by those events.
        unsafe { eng.ctx.disable_event_tracking() };
        let stream = eng
            .ctx
            .new_stream()
            .map_err(|e| anyhow!("creating the communication stream: {e:?}"))?;
        let mut comm: RawComm = std::ptr::null_mut();
        let (rank, size) = (group.rank(), group.size());
        // SAFETY: `comm` receives the communicator; `id` is the one every rank got from rank 0.
        let r = unsafe { (api.comm_init_rank)(&mut comm, size as c_int, id, rank as c_int) };
        check(api, None, r, "ncclCommInitRank").with_context(|| {
            format!(
                "{}: joining the NCCL communicator ({})",
                group.world.describe(),
                api.from
            )
        })?;
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(comm as usize);
        start_watchdog(group.world.describe());
        Ok(DeviceComm {
            comm,
            api,
            rank,
            size,
            stream,
            compute: eng.stream.clone(),
            failed: false,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// `op` on the communication stream after the compute stream's work so far, without the
    /// compute stream waiting for it (that is [`DeviceComm::join_compute`]).
    fn after_compute(
        &mut self,
        what: &str,
        op: impl FnOnce(&Api, RawComm, Stream) -> c_int,
    ) -> Result<()> {
        let err = |e| anyhow!("{what}: ordering the streams: {e:?}");
        let ready = self.compute.record_event(None).map_err(err)?;
        self.stream.wait(&ready).map_err(err)?;
        let r = op(self.api, self.comm, self.stream.cu_stream());
        if let Err(e) = check(self.api, Some(self.comm), r, what) {
            self.failed = true;
            return Err(e);
        }
        Ok(())
    }

    /// The compute stream's later work waits for every collective queued so far.
    pub fn join_compute(&mut self) -> Result<()> {
        let err = |e| anyhow!("waiting for the NCCL stream: {e:?}");
        let done = self.stream.record_event(None).map_err(err)?;
        self.compute.wait(&done).map_err(err)
    }

    /// An event after everything queued on the communication stream so far: what the compute
    /// stream waits for when it needs one collective and not those queued after it.
    pub fn comm_event(&mut self) -> Result<CudaEvent> {
        self.stream
            .record_event(None)
            .map_err(|e| anyhow!("recording an event on the NCCL stream: {e:?}"))
    }

    /// The compute stream's later work waits for `event` (from [`DeviceComm::comm_event`]).
    pub fn compute_waits(&mut self, event: &CudaEvent) -> Result<()> {
        self.compute
            .wait(event)
            .map_err(|e| anyhow!("waiting for the NCCL stream: {e:?}"))
    }

    /// Sums `buf` over the ranks, in place.
    pub fn all_reduce_sum<T: NcclType>(&mut self, buf: &mut CudaSlice<T>) -> Result<()> {
        let n = buf.len();
        self.all_reduce_sum_part(buf, 0..n)?;
        self.join_compute()
    }

    /// Sums `buf[range]` over the ranks, in place, once the compute stream's work so far is
    /// done, and returns without the compute stream waiting: until [`DeviceComm::join_compute`]
    /// its kernels may run on beside the sum, and must not touch `range`. A data-parallel
    /// backward queues its finished buckets this way.
    pub fn all_reduce_sum_part<T: NcclType>(
        &mut self,
        buf: &mut CudaSlice<T>,
        range: Range<usize>,
    ) -> Result<()> {
        let api_fn = self.api.all_reduce;
        self.in_place_part("ncclAllReduce", buf, range, api_fn, NCCL_SUM, String::new())
    }

    /// `f` (a reduction-shaped entry point: all-reduce with `arg` the operator, broadcast with
    /// `arg` the root) in place over `buf[range]`, queued by [`DeviceComm::after_compute`].
    fn in_place_part<T: NcclType>(
        &mut self,
        name: &str,
        buf: &mut CudaSlice<T>,
        range: Range<usize>,
        f: ReduceFn,
        arg: c_int,
        suffix: String,
    ) -> Result<()> {
        if range.start > range.end || range.end > buf.len() {
            bail!(
                "{name} of values {range:?} of a buffer of {}{suffix}",
                buf.len()
            );
        }
        let n = range.len();
        let stream = self.stream.clone();
        let (base, _sync) = buf.device_ptr_mut(&stream);
        let ptr = base + (range.start * std::mem::size_of::<T>()) as u64;
        let what = format!("{name} of {n} values (at {}){suffix}", range.start);
        self.after_compute(&what, |_, comm, s| {
            // SAFETY: in place over `n` elements of T inside `buf`, on this GPU, ordered by events.
            unsafe {
                f(
                    ptr as *const c_void,
                    ptr as *mut c_void,
                    n,
                    T::TYPE,
                    arg,
                    comm,
                    s,
                )
            }
        })
    }

    /// `out` (len n) on rank r = the sum over ranks of `input[r·n .. (r+1)·n]`.
    pub fn reduce_scatter_sum<T: NcclType>(
        &mut self,
        input: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        let n = out.len();
        if input.len() != n * self.size {
            bail!(
                "ncclReduceScatter: {} values in, {} out over {} ranks",
                input.len(),
                n,
                self.size
            );
        }
        self.reduce_scatter_part(input, n, out)?;
        self.join_compute()
    }

    /// `out[r·n .. (r+1)·n]` = rank r's `input` (len n), on every rank.
    pub fn all_gather<T: NcclType>(
        &mut self,
        input: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        let n = input.len();
        if out.len() != n * self.size {
            bail!(
                "ncclAllGather: {n} values in, {} out over {} ranks",
                out.len(),
                self.size
            );
        }
        self.all_gather_part(input, 0..n, out)?;
        self.join_compute()
    }

    /// `out[r·n .. (r+1)·n]` = rank r's `input[range]` (n = `range.len()`), on every rank,
    /// queued after the compute stream's work so far without the compute stream waiting (that is
    /// [`DeviceComm::join_compute`]): FSDP's gather of the next unit while this one computes.
    pub fn all_gather_part<T: NcclType>(
        &mut self,
        input: &CudaSlice<T>,
        range: Range<usize>,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        let n = range.len();
        if range.start > range.end || range.end > input.len() || out.len() < n * self.size {
            bail!(
                "ncclAllGather of values {range:?} of {} into {} over {} ranks",
                input.len(),
                out.len(),
                self.size
            );
        }
        let stream = self.stream.clone();
        let (src, _a) = input.device_ptr(&stream);
        let src = src + (range.start * std::mem::size_of::<T>()) as u64;
        let (dst, _b) = out.device_ptr_mut(&stream);
        self.after_compute(&format!("ncclAllGather of {n} values"), |api, comm, s| {
            // SAFETY: sizes checked above; ordered by events.
            unsafe {
                (api.all_gather)(
                    src as *const c_void,
                    dst as *mut c_void,
                    n,
                    T::TYPE,
                    comm,
                    s,
                )
            }
        })
    }

    /// `out[..n]` on rank r = the sum over ranks of `input[r·n .. (r+1)·n]`, after the compute
    /// stream's work so far, without the compute stream waiting (an event from
    /// [`DeviceComm::comm_event`], or [`DeviceComm::join_compute`], orders its readers). `input`
    /// and `out` may be longer (pooled buffers).
    pub fn reduce_scatter_part<T: NcclType>(
        &mut self,
        input: &CudaSlice<T>,
        n: usize,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        if input.len() < n * self.size || out.len() < n {
            bail!(
                "ncclReduceScatter of {n} values a rank from {} into {} over {} ranks",
                input.len(),
                out.len(),
                self.size
            );
        }
        let stream = self.stream.clone();
        let (src, _a) = input.device_ptr(&stream);
        let (dst, _b) = out.device_ptr_mut(&stream);
        self.after_compute(
            &format!("ncclReduceScatter to {n} values"),
            |api, comm, s| {
                // SAFETY: sizes checked above; ordered by events.
                unsafe {
                    (api.reduce_scatter)(
                        src as *const c_void,
                        dst as *mut c_void,
                        n,
                        T::TYPE,
                        NCCL_SUM,
                        comm,
                        s,
                    )
                }
            },
        )
    }

    /// Rank `root`'s `buf` on every rank.
    pub fn broadcast<T: NcclType>(&mut self, buf: &mut CudaSlice<T>, root: usize) -> Result<()> {
        let n = buf.len();
        self.broadcast_part(buf, 0..n, root)?;
        self.join_compute()
    }

    /// Rank `root`'s `buf[range]` into every rank's `buf[range]`, after the compute stream's work
    /// so far, without the compute stream waiting (that is [`DeviceComm::join_compute`]). Ranks
    /// broadcasting their own slices in turn make an all-gather of unequal slices in place.
    pub fn broadcast_part<T: NcclType>(
        &mut self,
        buf: &mut CudaSlice<T>,
        range: Range<usize>,
        root: usize,
    ) -> Result<()> {
        if root >= self.size {
            bail!("ncclBroadcast from rank {root} of {}", self.size);
        }
        let api_fn = self.api.broadcast;
        let suffix = format!(" from rank {root}");
        self.in_place_part("ncclBroadcast", buf, range, api_fn, root as c_int, suffix)
    }

    /// An error a collective hit after it was queued (a dead peer, a mismatch), if any.
    pub fn async_error(&self) -> Result<()> {
        let mut r: c_int = 0;
        // SAFETY: reads the communicator's state.
        unsafe { (self.api.comm_get_async_error)(self.comm, &mut r) };
        check(self.api, Some(self.comm), r, "an NCCL collective")
    }
}

/// NCCL's result `r` as an error naming `what`, with NCCL's own last message.
fn check(api: &Api, comm: Option<RawComm>, r: c_int, what: &str) -> Result<()> {
    if r == 0 {
        return Ok(());
    }
    // SAFETY: NCCL returns static or communicator-owned C strings.
    let text = |p: *const c_char| unsafe {
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    let kind = text(unsafe { (api.get_error_string)(r) });
    let last = api
        .get_last_error
        .map(|f| text(unsafe { f(comm.unwrap_or(std::ptr::null_mut())) }))
        .unwrap_or_default();
    bail!(
        "{what} failed: {kind} (NCCL {r}){}",
        if last.is_empty() {
            String::new()
        } else {
            format!(": {last}")
        }
    )
}

impl Drop for DeviceComm {
    fn drop(&mut self) {
        let live = || LIVE.lock().unwrap_or_else(|p| p.into_inner());
        let healthy = {
            let live = live();
            if !live.contains(&(self.comm as usize)) {
                return; // already aborted by abort_all
            }
            !self.failed && self.async_error().is_ok()
        };
        // Its queued collectives finish first, while it is still where the heartbeat's and the
        // watchdog's abort_all can reach it (should a peer never come).
        if healthy {
            let _ = self.stream.synchronize();
        }
        let mut live = live();
        let Some(at) = live.iter().position(|&c| c == self.comm as usize) else {
            return; // aborted while its stream drained
        };
        live.remove(at);
        drop(live);
        // SAFETY: our communicator, not used after this, and no longer reachable by abort_all. A
        // failed one is aborted: destroying it could wait for peers that are gone.
        unsafe {
            if !healthy || self.async_error().is_err() {
                (self.api.comm_abort)(self.comm);
            } else {
                (self.api.comm_destroy)(self.comm);
            }
        }
    }
}
