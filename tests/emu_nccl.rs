//! The software GPU's NCCL (emu/nccl/nccl.cpp) on its own: threads play the ranks, host memory
//! plays device memory (without the stand-in driver loaded, each collective runs at once on the
//! calling thread). Checks what NCCL documents: all-reduce, reduce-scatter, all-gather and
//! broadcast; sums in rank order, the same bits on every rank, bf16 rounded once; and what a
//! stand-in must add: a call that differs between ranks fails on every rank naming both, an
//! abort or a rank that never comes stops the others.

mod common;

use libloading::os::unix::{Library, Symbol};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Arc;

type Comm = *mut c_void;

#[repr(C)]
#[derive(Clone, Copy)]
struct Id([u8; 128]);

struct Nccl {
    lib: Library,
}

// The library's functions are thread-safe per communicator; each thread has its own.
unsafe impl Send for Nccl {}
unsafe impl Sync for Nccl {}

const F32: c_int = 7;
const BF16: c_int = 9;
const SUM: c_int = 0;
const MAX: c_int = 2;

impl Nccl {
    fn open() -> Option<Arc<Nccl>> {
        if !common::emu_available() {
            return None;
        }
        let path = prefer::emu::nccl_standin().unwrap();
        // SAFETY: the stand-in's initialisers set up nothing.
        let lib = unsafe { Library::open(Some(&path), libc::RTLD_NOW) }.unwrap();
        Some(Arc::new(Nccl { lib }))
    }

    fn sym<T>(&self, name: &[u8]) -> Symbol<T> {
        // SAFETY: callers name the type nccl.h gives the symbol.
        unsafe { self.lib.get(name) }.unwrap()
    }

    fn unique_id(&self) -> Id {
        let mut id = Id([0; 128]);
        let f: Symbol<unsafe extern "C" fn(*mut Id) -> c_int> = self.sym(b"ncclGetUniqueId\0");
        assert_eq!(unsafe { f(&mut id) }, 0);
        id
    }

    fn init(&self, id: Id, rank: usize, size: usize) -> Comm {
        let f: Symbol<unsafe extern "C" fn(*mut Comm, c_int, Id, c_int) -> c_int> =
            self.sym(b"ncclCommInitRank\0");
        let mut c: Comm = std::ptr::null_mut();
        assert_eq!(unsafe { f(&mut c, size as c_int, id, rank as c_int) }, 0);
        c
    }

    fn last_error(&self, comm: Comm) -> String {
        let f: Symbol<unsafe extern "C" fn(Comm) -> *const c_char> =
            self.sym(b"ncclGetLastError\0");
        unsafe { CStr::from_ptr(f(comm)) }
            .to_string_lossy()
            .into_owned()
    }

    /// ncclAllReduce, ncclReduceScatter (reduce = true, `op`), or ncclAllGather.
    #[allow(clippy::too_many_arguments)]
    fn collective(
        &self,
        name: &[u8],
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        ty: c_int,
        op: c_int,
        comm: Comm,
    ) -> c_int {
        if name == b"ncclAllGather\0" {
            let f: Symbol<
                unsafe extern "C" fn(
                    *const c_void,
                    *mut c_void,
                    usize,
                    c_int,
                    Comm,
                    *mut c_void,
                ) -> c_int,
            > = self.sym(name);
            return unsafe { f(send, recv, count, ty, comm, std::ptr::null_mut()) };
        }
        let f: Symbol<
            unsafe extern "C" fn(
                *const c_void,
                *mut c_void,
                usize,
                c_int,
                c_int,
                Comm,
                *mut c_void,
            ) -> c_int,
        > = self.sym(name);
        unsafe { f(send, recv, count, ty, op, comm, std::ptr::null_mut()) }
    }

    fn broadcast(
        &self,
        buf: *mut c_void,
        count: usize,
        ty: c_int,
        root: usize,
        comm: Comm,
    ) -> c_int {
        let f: Symbol<
            unsafe extern "C" fn(
                *const c_void,
                *mut c_void,
                usize,
                c_int,
                c_int,
                Comm,
                *mut c_void,
            ) -> c_int,
        > = self.sym(b"ncclBroadcast\0");
        unsafe {
            f(
                buf,
                buf,
                count,
                ty,
                root as c_int,
                comm,
                std::ptr::null_mut(),
            )
        }
    }

    fn destroy(&self, comm: Comm) {
        let f: Symbol<unsafe extern "C" fn(Comm) -> c_int> = self.sym(b"ncclCommDestroy\0");
        unsafe { f(comm) };
    }
}

/// Runs `body(rank, comm)` on `size` threads sharing one communicator, destroyed after.
fn ranks<T: Send + 'static>(
    nccl: &Arc<Nccl>,
    size: usize,
    body: impl Fn(&Nccl, usize, Comm) -> T + Send + Sync + 'static,
) -> Vec<T> {
    ranks_keeping(nccl, size, move |nc, rank, comm| {
        let out = body(nc, rank, comm);
        nc.destroy(comm);
        out
    })
}

/// As [`ranks`], where `body` ends the communicator itself.
fn ranks_keeping<T: Send + 'static>(
    nccl: &Arc<Nccl>,
    size: usize,
    body: impl Fn(&Nccl, usize, Comm) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let id = nccl.unique_id();
    let body = Arc::new(body);
    let handles: Vec<_> = (0..size)
        .map(|rank| {
            let (n, body) = (nccl.clone(), body.clone());
            std::thread::spawn(move || {
                let comm = n.init(id, rank, size);
                body(&n, rank, comm)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

#[test]
fn collectives_give_nccls_results_with_sums_in_rank_order() {
    let Some(nccl) = Nccl::open() else { return };
    // Over 1 MiB of f32, so the data moves in more than one chunk.
    let n = 300_000;
    let input = move |rank: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7 + rank * 13) % 101) as f32 * 0.37 - 11.0 + 1e-3 * rank as f32)
            .collect()
    };
    let sums = ranks(&nccl, 3, move |nc, rank, comm| {
        let mut v = input(rank);
        let p = v.as_mut_ptr() as *mut c_void;
        assert_eq!(
            nc.collective(b"ncclAllReduce\0", p, p, n, F32, SUM, comm),
            0
        );
        v
    });
    let mut want = input(0);
    for r in 1..3 {
        for (w, x) in want.iter_mut().zip(input(r)) {
            *w += x; // rank 0's, plus rank 1's, plus rank 2's
        }
    }
    for (rank, got) in sums.iter().enumerate() {
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "rank {rank}"
        );
    }

    // bf16: accumulated in f32 in rank order, rounded once.
    let vals = [1.0f32, 1.0 / 256.0, 1.0 / 256.0, -0.5];
    let got = ranks(&nccl, 4, move |nc, rank, comm| {
        let mut v = vec![bf16(vals[rank]); 5];
        let p = v.as_mut_ptr() as *mut c_void;
        assert_eq!(
            nc.collective(b"ncclAllReduce\0", p, p, 5, BF16, SUM, comm),
            0
        );
        v
    });
    let exact = bf16(vals.iter().sum::<f32>());
    assert!(got.iter().all(|v| v.iter().all(|&b| b == exact)));

    // Reduce-scatter: rank r gets the sum of every rank's block r. All-gather: every rank's
    // block, in rank order. Broadcast: the root's buffer. Max as an operator.
    let out = ranks(&nccl, 2, |nc, rank, comm| {
        let send: Vec<f32> = (0..6).map(|i| (i + 10 * rank) as f32).collect();
        let mut part = vec![0f32; 3];
        let r = nc.collective(
            b"ncclReduceScatter\0",
            send.as_ptr() as *const c_void,
            part.as_mut_ptr() as *mut c_void,
            3,
            F32,
            SUM,
            comm,
        );
        assert_eq!(r, 0);
        let mut all = vec![0f32; 6];
        let r = nc.collective(
            b"ncclAllGather\0",
            part.as_ptr() as *const c_void,
            all.as_mut_ptr() as *mut c_void,
            3,
            F32,
            SUM,
            comm,
        );
        assert_eq!(r, 0);
        let mut b = vec![rank as f32 + 5.0; 2];
        assert_eq!(
            nc.broadcast(b.as_mut_ptr() as *mut c_void, 2, F32, 1, comm),
            0
        );
        let mut m = vec![rank as f32, -(rank as f32)];
        let p = m.as_mut_ptr() as *mut c_void;
        assert_eq!(
            nc.collective(b"ncclAllReduce\0", p, p, 2, F32, MAX, comm),
            0
        );
        (part, all, b, m)
    });
    assert_eq!(out[0].0, vec![10.0, 12.0, 14.0]);
    assert_eq!(out[1].0, vec![16.0, 18.0, 20.0]);
    for (_, all, b, m) in &out {
        assert_eq!(all, &vec![10.0, 12.0, 14.0, 16.0, 18.0, 20.0]);
        assert_eq!(b, &vec![6.0, 6.0]);
        assert_eq!(m, &vec![1.0, 0.0]);
    }
}

#[test]
fn a_call_that_differs_between_ranks_fails_on_every_rank_naming_both() {
    let Some(nccl) = Nccl::open() else { return };
    let out = ranks(&nccl, 2, |nc, rank, comm| {
        let n = if rank == 1 { 8 } else { 4 };
        let mut v = vec![1f32; n];
        let p = v.as_mut_ptr() as *mut c_void;
        let r = nc.collective(b"ncclAllReduce\0", p, p, n, F32, SUM, comm);
        (r, nc.last_error(comm))
    });
    for (rank, (r, msg)) in out.iter().enumerate() {
        assert_eq!(*r, 5, "rank {rank}: ncclInvalidUsage");
        assert!(
            msg.contains("rank 0 called ncclAllReduce of 4 f32 values")
                || msg.contains("rank 1 called ncclAllReduce of 8 f32 values"),
            "rank {rank}: {msg}"
        );
        assert!(msg.contains("collective #1 differs between ranks"), "{msg}");
    }
}

#[test]
fn an_abort_stops_the_ranks_waiting_for_it() {
    let Some(nccl) = Nccl::open() else { return };
    let out = ranks_keeping(&nccl, 2, |nc, rank, comm| {
        if rank == 1 {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let abort: Symbol<unsafe extern "C" fn(Comm) -> c_int> = nc.sym(b"ncclCommAbort\0");
            unsafe { abort(comm) };
            return (0, String::new());
        }
        let mut v = vec![1f32; 4];
        let p = v.as_mut_ptr() as *mut c_void;
        let r = nc.collective(b"ncclAllReduce\0", p, p, 4, F32, SUM, comm);
        let msg = nc.last_error(comm);
        nc.destroy(comm);
        (r, msg)
    });
    assert_eq!(out[0].0, 6, "ncclRemoteError");
    assert!(
        out[0].1.contains("rank 1 aborted the communicator"),
        "{}",
        out[0].1
    );
}
