// Asynchronous copies: cp.async, cp.async.commit_group and cp.async.wait_group, as the PTX ISA
// defines them, so a missing or misplaced wait fails on the software GPU as it may on the GPU.
//
// A copy does not happen when it is issued. Its 16 destination bytes turn to garbage (0xff: NaN
// as f32, bf16 and f16) and are marked in the race check's shadow as in flight for the issuing
// thread; any access to them, by any thread, the issuer included, fails the launch naming the
// array and both threads. Copies join the thread's open group; cp_async_commit closes it. The
// thread's cp_async_wait<N> lands every copy of its committed groups but the newest N (copies not
// yet committed are not covered, as PTX says). Landing reads the source then, not at issue: PTX
// only promises the copy happens somewhere between the two, and the source must stay unchanged
// until the wait, so reading it as late as possible is the stricter of the models that the GPU
// may follow. A landed copy counts, for the race check, as the waiting thread's write at that
// moment: other threads see it after the next __syncthreads, as on the GPU.
//
// PTX says nothing of a thread that exits with copies in flight: nothing may read their bytes
// without that thread's wait, so the copies are dropped when the block ends, and an access to them
// before then is the race above.
#include "runtime.h"

#include <cstring>

namespace emu {

constexpr size_t kCopyBytes = 16;

static void mark(Worker& w, const CpAsyncCopy& c, uint16_t who) {
    const uintptr_t cell = ((uintptr_t)c.dst - w.shared_lo) / 2;
    for (size_t i = 0; i < kCopyBytes / 2; ++i) w.shadow[cell + i].cp_pending = who;
}

void cp_async_begin_block(Worker& w) {
    // Most kernels issue no cp.async: then every queue is still empty and at group 0.
    if (w.cp_async_used) {
        for (CpAsyncQueue& q : w.cp_async) {
            for (const CpAsyncCopy& c : q.copies) mark(w, c, 0);
            q.copies.clear();
            q.open_group = 0;
        }
    }
    w.cp_async_used = false;
    if (w.cp_async.size() < w.block_threads) w.cp_async.resize(w.block_threads);
    w.cp_async_pending = 0;
}

bool cp_async_check_access(Worker& w, Fiber& f, uintptr_t offset, size_t size, bool write) {
    for (uintptr_t cell = offset / 2; cell <= (offset + size - 1) / 2; ++cell) {
        const uint16_t who = w.shadow[cell].cp_pending;
        if (who == 0) continue;
        if (!w.race_reported) {
            w.race_reported = true;
            const uint3 t = f.info->thread_idx, o = thread_index(w, who - 1u);
            fail_block(w, format("kernel %s, block (%u,%u,%u): shared-memory race on %s: thread %u (%u,%u,%u) %s it "
                                 "while thread %u (%u,%u,%u)'s cp.async to it is still in flight (no cp_async_wait "
                                 "of that thread covers it yet)",
                                 w.launch->kernel->name, w.block_idx.x, w.block_idx.y, w.block_idx.z,
                                 describe_shared(cell * 2).c_str(), f.tid, t.x, t.y, t.z,
                                 write ? "wrote" : "read", who - 1u, o.x, o.y, o.z));
        }
        return false;
    }
    return true;
}

static void land(Worker& w, const CpAsyncCopy& c) {
    mark(w, c, 0);
    --w.cp_async_pending;
    if (c.valid)
        memcpy(c.dst, c.src, kCopyBytes);  // a bad source faults here, on the waiting thread's fiber
    else
        memset(c.dst, 0, kCopyBytes);
    race_access((uintptr_t)c.dst, kCopyBytes, true);
}

}  // namespace emu

using namespace emu;

extern "C" void emu_cp_async(void* dst, const void* src, int valid) {
    Fiber& f = *current_fiber();
    Worker& w = *f.worker;
    const uintptr_t offset = (uintptr_t)dst - w.shared_lo;
    if (offset >= w.shared_size || offset + kCopyBytes > w.shared_size || (uintptr_t)dst % kCopyBytes != 0 ||
        (valid && (uintptr_t)src % kCopyBytes != 0)) {
        fail_block(w, format("kernel %s, block (%u,%u,%u), thread %u: cp.async of 16 bytes from %p to %p: the "
                             "destination must be 16-byte aligned shared memory, the source 16-byte aligned",
                             w.launch->kernel->name, w.block_idx.x, w.block_idx.y, w.block_idx.z, f.tid, src, dst),
                   kIllegalAddress);
        return;
    }
    // The write check now: the copy may land at once, so it must not overtake another thread's
    // access that no barrier has ordered before it.
    race_access((uintptr_t)dst, kCopyBytes, true);
    w.cp_async_used = true;
    CpAsyncQueue& q = w.cp_async[f.tid];
    const CpAsyncCopy c{(uint8_t*)dst, (const uint8_t*)src, q.open_group, valid != 0};
    memset(c.dst, 0xff, kCopyBytes);
    mark(w, c, (uint16_t)(f.tid + 1));
    q.copies.push_back(c);
    ++w.cp_async_pending;
}

extern "C" void emu_cp_async_commit(void) {
    Fiber& f = *current_fiber();
    f.worker->cp_async_used = true;
    ++f.worker->cp_async[f.tid].open_group;
}

extern "C" void emu_cp_async_wait(int pending) {
    Fiber& f = *current_fiber();
    Worker& w = *f.worker;
    CpAsyncQueue& q = w.cp_async[f.tid];
    // Committed groups are those below open_group; the newest `pending` of them stay in flight.
    const uint32_t covered = q.open_group > (uint32_t)pending ? q.open_group - (uint32_t)pending : 0;
    size_t n = 0;
    while (n < q.copies.size() && q.copies[n].group < covered) land(w, q.copies[n++]);
    q.copies.erase(q.copies.begin(), q.copies.begin() + n);
}
