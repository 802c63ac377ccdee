//! The software GPU's NCCL (emu/nccl/nccl.cpp) on its own: threads play the ranks, host memory
//! plays device memory (without the stand-in driver loaded, each collective runs at once on the
//! calling thread). Checks what NCCL documents: all-reduce, reduce-scatter, all-gather and
//! broadcast; sums in rank order, the same bits on every rank, bf16 rounded once; send and receive,
//! matched in order per pair, and inside a group free of deadlock whatever the message size; and
//! what a stand-in must add: a call that differs between ranks fails on every rank naming both, an
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

    /// ncclSend (`send` true) or ncclRecv of `count` values at `buf` with `peer`.
    fn p2p(
        &self,
        send: bool,
        buf: *mut c_void,
        count: usize,
        ty: c_int,
        peer: usize,
        comm: Comm,
    ) -> c_int {
        type P2p =
            unsafe extern "C" fn(*mut c_void, usize, c_int, c_int, Comm, *mut c_void) -> c_int;
        let f: Symbol<P2p> = self.sym(if send { b"ncclSend\0" } else { b"ncclRecv\0" });
        unsafe { f(buf, count, ty, peer as c_int, comm, std::ptr::null_mut()) }
    }

    /// ncclGroupStart (`start` true) or ncclGroupEnd.
    fn group(&self, start: bool) -> c_int {
        let f: Symbol<unsafe extern "C" fn() -> c_int> = self.sym(if start {
            b"ncclGroupStart\0"
        } else {
            b"ncclGroupEnd\0"
        });
        unsafe { f() }
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

/// A ring exchange in one group, each message over four times the stand-in's 256 KiB channel
/// (without the group's joint progress every rank would wait in its send), with a second, bf16
/// message to the same peer behind it, a zero-length one, and a message to the rank itself.
#[test]
fn sends_and_receives_in_a_group_pass_a_ring_of_large_messages_in_order() {
    let Some(nccl) = Nccl::open() else { return };
    let n = 300_000;
    let size = 4;
    let out = ranks(&nccl, size, move |nc, rank, comm| {
        let (next, prev) = ((rank + 1) % size, (rank + size - 1) % size);
        let mut big: Vec<f32> = (0..n).map(|i| (i * 7 + rank * 1_000_003) as f32).collect();
        let mut small: Vec<u16> = (0..5).map(|i| bf16(i as f32 + 0.5 * rank as f32)).collect();
        let mut own: Vec<f32> = vec![rank as f32 + 0.25; 3];
        let (mut got_big, mut got_small, mut got_own) =
            (vec![0f32; n], vec![0u16; 5], vec![0f32; 3]);
        let mut none = [0f32; 1];
        let p = |v: &mut [f32]| v.as_mut_ptr() as *mut c_void;
        assert_eq!(nc.group(true), 0);
        let calls = [
            nc.p2p(true, p(&mut big), n, F32, next, comm),
            nc.p2p(true, small.as_mut_ptr() as *mut c_void, 5, BF16, next, comm),
            nc.p2p(true, p(&mut none), 0, F32, next, comm),
            nc.p2p(true, p(&mut own), 3, F32, rank, comm),
            nc.p2p(false, p(&mut got_own), 3, F32, rank, comm),
            nc.p2p(false, p(&mut got_big), n, F32, prev, comm),
            nc.p2p(
                false,
                got_small.as_mut_ptr() as *mut c_void,
                5,
                BF16,
                prev,
                comm,
            ),
            nc.p2p(false, p(&mut none), 0, F32, prev, comm),
        ];
        assert_eq!(calls, [0; 8], "rank {rank}: {}", nc.last_error(comm));
        assert_eq!(nc.group(false), 0, "rank {rank}: {}", nc.last_error(comm));
        (got_big, got_small, got_own)
    });
    for (rank, (got_big, got_small, got_own)) in out.iter().enumerate() {
        let prev = (rank + size - 1) % size;
        let want: Vec<f32> = (0..n).map(|i| (i * 7 + prev * 1_000_003) as f32).collect();
        assert!(
            got_big == &want,
            "rank {rank}: the big message from rank {prev}"
        );
        let want: Vec<u16> = (0..5).map(|i| bf16(i as f32 + 0.5 * prev as f32)).collect();
        assert_eq!(
            got_small, &want,
            "rank {rank}: the second message, after the first"
        );
        assert_eq!(
            got_own,
            &vec![rank as f32 + 0.25; 3],
            "rank {rank}: to itself"
        );
    }
}

/// Outside a group each call is its own; messages between a pair arrive in the order sent.
#[test]
fn sends_outside_a_group_arrive_in_order() {
    let Some(nccl) = Nccl::open() else { return };
    let out = ranks(&nccl, 2, |nc, rank, comm| {
        let mut got = Vec::new();
        for k in 0..5usize {
            let mut v = vec![k as f32 * 10.0 + 1.0; k + 1];
            let r = nc.p2p(
                rank == 0,
                v.as_mut_ptr() as *mut c_void,
                k + 1,
                F32,
                1 - rank,
                comm,
            );
            assert_eq!(r, 0, "rank {rank}: {}", nc.last_error(comm));
            got.push(v);
        }
        got
    });
    for (k, v) in out[1].iter().enumerate() {
        assert_eq!(v, &vec![k as f32 * 10.0 + 1.0; k + 1]);
    }
}

/// A receive whose count differs from the send fails on both ranks, naming both calls.
#[test]
fn a_receive_that_does_not_match_its_send_fails_on_both_ranks_naming_both() {
    let Some(nccl) = Nccl::open() else { return };
    let out = ranks(&nccl, 2, |nc, rank, comm| {
        // Larger than the channel, so the sender is still waiting when the receiver objects.
        let n = if rank == 0 { 100_000 } else { 100_001 };
        let mut v = vec![1f32; n];
        let r = nc.p2p(
            rank == 0,
            v.as_mut_ptr() as *mut c_void,
            n,
            F32,
            1 - rank,
            comm,
        );
        (r, nc.last_error(comm))
    });
    assert_eq!(out[1].0, 5, "ncclInvalidUsage");
    assert!(
        out[1].1.contains("rank 1: ncclRecv #1 of 100001 f32 values from rank 0, and rank 0's ncclSend #1 to rank 1 sends 100000 f32 values"),
        "{}",
        out[1].1
    );
    assert_eq!(out[0].0, 5, "ncclInvalidUsage");
    assert!(
        out[0].1.contains("rank 0: ncclSend #1 of 100000 f32 values to rank 1: rank 1's matching ncclRecv takes another count or type"),
        "{}",
        out[0].1
    );
    let Some(nccl) = Nccl::open() else { return };
    assert_eq!(nccl.group(false), 5, "ncclGroupEnd without ncclGroupStart");
}
