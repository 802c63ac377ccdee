// The software GPU's NCCL: the collectives src/dist/nccl.rs calls, between the rank processes of
// one machine, through a shared-memory segment the ranks map by the name in their unique id.
//
//   ncclGetUniqueId, ncclCommInitRank, ncclCommDestroy, ncclCommAbort, ncclCommGetAsyncError,
//   ncclCommCount, ncclCommUserRank, ncclGetErrorString, ncclGetLastError, ncclGetVersion,
//   ncclAllReduce, ncclReduceScatter, ncclAllGather, ncclBroadcast, ncclSend, ncclRecv,
//   ncclGroupStart, ncclGroupEnd
//
// Each collective is work on the caller's stream (through libcuda's stand-in, so it runs in
// stream order, after the events it waits on, and its device ranges take part in the cross-stream
// race check). When it runs, the ranks meet at barriers in the segment:
//   1. every rank posts what it called (which collective, count, type, operator, root);
//      a rank whose call differs from another's fails on every rank, naming both: no hang;
//   2. the data moves in chunks: each rank copies its part into its slot, then reads all slots.
// Sums go in rank order (rank 0's, plus rank 1's, ...), accumulated in f32 for bf16 and f16 and
// rounded once, so every rank gets the same bits on every run.
//
// A rank that exits (or is killed) while others wait is found by its pid and named; a rank that
// never arrives fails after PREFER_COLLECTIVE_TIMEOUT seconds (1800 by default). ncclCommAbort
// marks the segment so the others stop waiting too.
//
// Point-to-point: each ordered pair of ranks has a channel in the segment (a ring of bytes and a
// ring of message headers, one writer and one reader). ncclSend and ncclRecv between
// ncclGroupStart and ncclGroupEnd become one piece of work on the stream that moves all of them a
// little at a time, so a ring exchange whose messages exceed the channel cannot deadlock (as in
// NCCL, where the group is what makes that safe); outside a group each is its own. Sends to a peer
// match its receives from this rank in order; a receive whose count or type differs from the send
// fails on the receiver naming both, and on the sender too while it still has bytes to hand over
// (a send that fits the channel completes before the receiver looks). Collectives inside a group
// run as they are issued.
#include "../include/emu_cuda.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <string>
#include <sys/mman.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>
#include <vector>

typedef int ncclResult_t;
enum : int {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
};
enum : int {
    ncclInt8 = 0, ncclUint8 = 1, ncclInt32 = 2, ncclUint32 = 3, ncclInt64 = 4, ncclUint64 = 5,
    ncclFloat16 = 6, ncclFloat32 = 7, ncclFloat64 = 8, ncclBfloat16 = 9,
};
enum : int { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 };
enum Op : int { kAllReduce = 1, kReduceScatter, kAllGather, kBroadcast, kSend, kRecv };

namespace {

constexpr uint64_t kMagic = 0x31636e6566657270ull;  // "prefernc1"
constexpr size_t kSlotBytes = 1 << 20;               // each rank's staging slot
constexpr int kMaxRanks = 1024;
constexpr int kMaxP2pRanks = 64;                     // channels for every pair up to this many
constexpr size_t kRingBytes = 256 << 10;             // each channel's ring of bytes
constexpr uint64_t kHeaders = 64;                    // each channel's ring of message headers

struct NcclUniqueId {
    char internal[128];
};

// What one rank called, posted before the data moves.
struct Call {
    int32_t op, type, redop, root;
    uint64_t count, seq;
};

struct alignas(64) RankState {
    std::atomic<uint64_t> arrived;  // barriers this rank has reached
    std::atomic<int32_t> pid;
    Call call;
};

struct Segment {
    uint64_t magic;
    int32_t nranks;
    std::atomic<int32_t> aborted_by;  // a rank + 1 that aborted, or 0
    RankState ranks[1];               // [nranks], then nranks slots of kSlotBytes
};

// A point-to-point message's header, posted by the sender before its bytes.
struct MsgHeader {
    uint64_t count;
    int32_t type;
    int32_t pad;
};

struct alignas(64) Cursor {
    std::atomic<uint64_t> v;
};

// One direction between two ranks. Byte offsets and message numbers only grow: the ring holds
// bytes [read, written), the header ring messages (acked, posted].
struct Channel {
    Cursor written;  // bytes the sender has put in (all messages)
    Cursor read;     // bytes the receiver has taken
    Cursor posted;   // messages whose header the sender has posted
    Cursor acked;    // messages the receiver has taken whole
    std::atomic<int32_t> broken;  // a receiver found a mismatch: the sender stops too
    MsgHeader headers[kHeaders];
};

size_t channel_bytes() { return ((sizeof(Channel) + 63) / 64) * 64 + kRingBytes; }

size_t slots_offset(int nranks) {
    const size_t head = sizeof(Segment) + (size_t)(nranks - 1) * sizeof(RankState);
    return ((head + 63) / 64) * 64;
}

size_t segment_bytes(int nranks) {
    const size_t channels = nranks <= kMaxP2pRanks ? (size_t)nranks * nranks * channel_bytes() : 0;
    return slots_offset(nranks) + (size_t)nranks * kSlotBytes + channels;
}

struct Comm {
    Segment* seg = nullptr;
    size_t bytes = 0;
    int rank = 0, nranks = 0;
    uint64_t generation = 0;  // barriers passed
    uint64_t seq = 0;         // collectives run
    std::atomic<int> async_error{ncclSuccess};
    std::string last_error;
    bool aborted = false;
    // Point-to-point, counted as the host issues the calls: messages and bytes to each peer, and
    // from each.
    std::vector<uint64_t> sends, sent_bytes, recvs, recv_bytes;
    char* slot(int r) const { return (char*)seg + slots_offset(nranks) + (size_t)r * kSlotBytes; }
    // The channel from rank `from` to rank `to`, and its ring.
    Channel* channel(int from, int to) const {
        return (Channel*)((char*)seg + slots_offset(nranks) + (size_t)nranks * kSlotBytes +
                          ((size_t)from * nranks + to) * channel_bytes());
    }
    char* ring(Channel* ch) const { return (char*)ch + ((sizeof(Channel) + 63) / 64) * 64; }
};

thread_local std::string g_last_error;

std::string format(const char* f, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

ncclResult_t fail(Comm* c, ncclResult_t code, const std::string& why) {
    g_last_error = why;
    if (c) {
        c->last_error = why;
        c->async_error.store(code);
    }
    fprintf(stderr, "prefer-nccl (software GPU): %s\n", why.c_str());
    return code;
}

double timeout_seconds() {
    const char* v = getenv("PREFER_COLLECTIVE_TIMEOUT");
    const double s = v ? atof(v) : 0.0;
    return s > 0 ? s : 1800.0;
}

const char* op_name(int op) {
    switch (op) {
        case kAllReduce: return "ncclAllReduce";
        case kReduceScatter: return "ncclReduceScatter";
        case kAllGather: return "ncclAllGather";
        case kBroadcast: return "ncclBroadcast";
        case kSend: return "ncclSend";
        case kRecv: return "ncclRecv";
    }
    return "a collective";
}

const char* type_name(int t) {
    static const char* names[] = {"int8", "uint8", "int32", "uint32", "int64", "uint64", "f16", "f32", "f64", "bf16"};
    return t >= 0 && t <= 9 ? names[t] : "an unknown type";
}

size_t type_size(int t) {
    switch (t) {
        case ncclInt8: case ncclUint8: return 1;
        case ncclFloat16: case ncclBfloat16: return 2;
        case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
        case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    }
    return 0;
}

// Waits until every rank has reached this rank's next barrier. Names a dead rank, an aborted
// communicator or a rank that never came.
ncclResult_t barrier(Comm* c, const char* what) {
    const uint64_t g = ++c->generation;
    c->seg->ranks[c->rank].arrived.store(g, std::memory_order_release);
    const auto start = std::chrono::steady_clock::now();
    const double limit = timeout_seconds();
    for (uint64_t spins = 0;; ++spins) {
        int missing = -1;
        for (int r = 0; r < c->nranks; ++r)
            if (c->seg->ranks[r].arrived.load(std::memory_order_acquire) < g) {
                missing = r;
                break;
            }
        if (missing < 0) return ncclSuccess;
        if (const int by = c->seg->aborted_by.load()) return fail(c, ncclRemoteError, format("rank %d: %s: rank %d aborted the communicator", c->rank, what, by - 1));
        if (spins < 2000) {
            std::this_thread::yield();
            continue;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        if (spins % 256 == 0) {
            const int pid = c->seg->ranks[missing].pid.load();
            if (pid > 0 && kill(pid, 0) != 0 && errno == ESRCH)
                return fail(c, ncclRemoteError, format("rank %d: %s: rank %d (pid %d) exited or was killed", c->rank, what, missing, pid));
            const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            if (waited > limit)
                return fail(c, ncclRemoteError, format("rank %d: %s: rank %d did not arrive within %.0f s (PREFER_COLLECTIVE_TIMEOUT)", c->rank, what, missing, limit));
        }
    }
}

float load_f(const char* p, int t) {
    switch (t) {
        case ncclFloat32: { float v; memcpy(&v, p, 4); return v; }
        case ncclBfloat16: { unsigned short b; memcpy(&b, p, 2); return emu_bf16_bits_to_f32(b); }
        case ncclFloat16: { unsigned short b; memcpy(&b, p, 2); return emu_f16_bits_to_f32(b); }
    }
    return 0;
}

void store_f(char* p, int t, float v) {
    switch (t) {
        case ncclFloat32: memcpy(p, &v, 4); return;
        case ncclBfloat16: { const unsigned short b = emu_f32_to_bf16_bits(v); memcpy(p, &b, 2); return; }
        case ncclFloat16: { const unsigned short b = emu_f32_to_f16_bits(v); memcpy(p, &b, 2); return; }
    }
}

template <typename T>
T combine(T a, T b, int redop) {
    switch (redop) {
        case ncclProd: return a * b;
        case ncclMax: return a < b ? b : a;
        case ncclMin: return b < a ? b : a;
        default: return a + b;  // sum and avg
    }
}

template <typename T>
void reduce_int(Comm* c, size_t from, size_t n, char* out, int redop) {
    for (size_t i = 0; i < n; ++i) {
        T acc;
        memcpy(&acc, c->slot(0) + (from + i) * sizeof(T), sizeof(T));
        for (int r = 1; r < c->nranks; ++r) {
            T v;
            memcpy(&v, c->slot(r) + (from + i) * sizeof(T), sizeof(T));
            acc = combine(acc, v, redop);
        }
        if (redop == ncclAvg) acc = (T)(acc / (T)c->nranks);
        memcpy(out + i * sizeof(T), &acc, sizeof(T));
    }
}

// out[i] = slot_0[from + i] (op) slot_1[from + i] (op) ..., in rank order.
void reduce_slots(Comm* c, int type, int redop, size_t from, size_t n, char* out) {
    switch (type) {
        case ncclInt8: reduce_int<int8_t>(c, from, n, out, redop); return;
        case ncclUint8: reduce_int<uint8_t>(c, from, n, out, redop); return;
        case ncclInt32: reduce_int<int32_t>(c, from, n, out, redop); return;
        case ncclUint32: reduce_int<uint32_t>(c, from, n, out, redop); return;
        case ncclInt64: reduce_int<int64_t>(c, from, n, out, redop); return;
        case ncclUint64: reduce_int<uint64_t>(c, from, n, out, redop); return;
        case ncclFloat64: reduce_int<double>(c, from, n, out, redop); return;
    }
    const size_t es = type_size(type);
    for (size_t i = 0; i < n; ++i) {
        float acc = load_f(c->slot(0) + (from + i) * es, type);
        for (int r = 1; r < c->nranks; ++r) acc = combine(acc, load_f(c->slot(r) + (from + i) * es, type), redop);
        if (redop == ncclAvg) acc /= (float)c->nranks;
        store_f(out + i * es, type, acc);
    }
}

struct Job {
    Comm* comm;
    Call call;
    const char* send;
    char* recv;
};

// Posts the call, then checks it against every other rank's.
ncclResult_t agree(Comm* c, const Call& call, const std::string& what) {
    c->seg->ranks[c->rank].call = call;
    if (ncclResult_t r = barrier(c, what.c_str())) return r;
    for (int r = 0; r < c->nranks; ++r) {
        const Call& o = c->seg->ranks[r].call;
        if (o.op != call.op || o.count != call.count || o.type != call.type || o.redop != call.redop || o.root != call.root)
            return fail(c, ncclInvalidUsage,
                        format("collective #%llu differs between ranks: rank %d called %s of %llu %s values (operator %d, root %d), "
                               "rank %d called %s of %llu %s values (operator %d, root %d)",
                               (unsigned long long)call.seq, r, op_name(o.op), (unsigned long long)o.count, type_name(o.type), o.redop,
                               o.root, c->rank, op_name(call.op), (unsigned long long)call.count, type_name(call.type), call.redop,
                               call.root));
    }
    // Nobody reuses the posted calls or the slots until all have read them.
    return barrier(c, what.c_str());
}

int run_job(void* arg) {
    Job* j = (Job*)arg;
    Comm* c = j->comm;
    const Call& call = j->call;
    const std::string what = format("%s #%llu of %llu %s values", op_name(call.op), (unsigned long long)call.seq,
                                    (unsigned long long)call.count, type_name(call.type));
    if (c->aborted) return fail(c, ncclInvalidUsage, what + " on an aborted communicator");
    if (ncclResult_t r = agree(c, call, what)) return r;
    const size_t es = type_size(call.type), per_chunk = kSlotBytes / es;
    const int R = c->nranks;
    // The input each rank stages: count values, or count × ranks for a reduce-scatter.
    const size_t input = call.op == kReduceScatter ? call.count * (size_t)R : call.count;
    for (size_t from = 0; from < input || (from == 0 && input == 0); from += per_chunk) {
        const size_t n = std::min(per_chunk, input - from);
        if (n == 0) break;
        if (call.op != kBroadcast || c->rank == call.root) memcpy(c->slot(c->rank), j->send + from * es, n * es);
        if (ncclResult_t r = barrier(c, what.c_str())) return r;
        switch (call.op) {
            case kAllReduce:
                reduce_slots(c, call.type, call.redop, 0, n, j->recv + from * es);
                break;
            case kBroadcast:
                memcpy(j->recv + from * es, c->slot(call.root), n * es);
                break;
            case kAllGather:
                for (int r = 0; r < R; ++r) memcpy(j->recv + ((size_t)r * call.count + from) * es, c->slot(r), n * es);
                break;
            case kReduceScatter: {
                // This rank's output is input [rank·count, (rank+1)·count): its part of this chunk.
                const size_t lo = std::max(from, (size_t)c->rank * call.count);
                const size_t hi = std::min(from + n, (size_t)(c->rank + 1) * call.count);
                if (lo < hi) reduce_slots(c, call.type, call.redop, lo - from, hi - lo, j->recv + (lo - (size_t)c->rank * call.count) * es);
                break;
            }
        }
        if (ncclResult_t r = barrier(c, what.c_str())) return r;
    }
    return ncclSuccess;
}

void drop_job(void* arg) { delete (Job*)arg; }

ncclResult_t enqueue(Comm* c, int op, const void* send, void* recv, size_t count, int type, int redop, int root, void* stream) {
    if (!c || !c->seg) return fail(c, ncclInvalidArgument, format("%s on no communicator", op_name(op)));
    if (type_size(type) == 0) return fail(c, ncclInvalidArgument, format("%s: data type %d", op_name(op), type));
    if (redop < ncclSum || redop > ncclAvg) return fail(c, ncclInvalidArgument, format("%s: reduction operator %d", op_name(op), redop));
    if (op == kBroadcast && (root < 0 || root >= c->nranks)) return fail(c, ncclInvalidArgument, format("ncclBroadcast: root %d of %d ranks", root, c->nranks));
    if (const int e = c->async_error.load()) return e;
    const size_t es = type_size(type);
    const size_t in_n = op == kReduceScatter ? count * c->nranks : count;
    const size_t out_n = op == kAllGather ? count * c->nranks : count;
    if (count && ((op != kBroadcast || c->rank == root) && !send)) return fail(c, ncclInvalidArgument, format("%s: no send buffer", op_name(op)));
    if (count && !recv) return fail(c, ncclInvalidArgument, format("%s: no receive buffer", op_name(op)));
    Job* job = new Job{c, Call{op, type, redop, root, (uint64_t)count, ++c->seq}, (const char*)send, (char*)recv};
    using SubmitHost = int (*)(void*, const char*, int (*)(void*), void*, void (*)(void*), const uint64_t*, size_t);
    static const SubmitHost submit = (SubmitHost)dlsym(RTLD_DEFAULT, "prefer_emu_submit_host");
    if (!submit) {
        // Without the driver's stand-in: at once, on the calling thread.
        const int status = run_job(job);
        drop_job(job);
        return status;
    }
    const bool sends = op != kBroadcast || c->rank == root;
    const uint64_t ranges[] = {(uint64_t)send, sends ? in_n * es : 0, 0, (uint64_t)recv, out_n * es, 1};
    const std::string label = format("%s #%llu", op_name(op), (unsigned long long)job->call.seq);
    return submit(stream, label.c_str(), run_job, job, drop_job, ranges, 2) ? ncclUnhandledCudaError : ncclSuccess;
}

// ---- point-to-point ------------------------------------------------------------------------

// One ncclSend or ncclRecv, and how far it has come.
struct P2p {
    Comm* comm;
    int op;  // kSend or kRecv
    int peer;
    int type;
    uint64_t count;
    uint64_t msg;    // its number among this direction's messages, from 1
    uint64_t start;  // its first byte's offset in this direction's stream of bytes
    uint64_t bytes;
    const char* send;
    char* recv;
    bool started;  // a send's header is posted; a receive's is checked
    bool done;
};

std::string p2p_name(const P2p& p) {
    return format("rank %d: %s #%llu of %llu %s values %s rank %d", p.comm->rank, op_name(p.op), (unsigned long long)p.msg,
                  (unsigned long long)p.count, type_name(p.type), p.op == kSend ? "to" : "from", p.peer);
}

// Moves `p` as far as it goes without waiting; true when it moved. An error goes to `err`.
bool advance_send(P2p& p, ncclResult_t* err) {
    Comm* c = p.comm;
    Channel* ch = c->channel(c->rank, p.peer);
    if (ch->broken.load(std::memory_order_acquire)) {
        *err = fail(c, ncclInvalidUsage, p2p_name(p) + format(": rank %d's matching ncclRecv takes another count or type", p.peer));
        return false;
    }
    bool moved = false;
    if (!p.started) {
        // After this rank's earlier sends to the peer, and while the peer's header ring has room.
        if (ch->posted.v.load(std::memory_order_acquire) != p.msg - 1) return false;
        if (p.msg - ch->acked.v.load(std::memory_order_acquire) > kHeaders) return false;
        ch->headers[p.msg % kHeaders] = MsgHeader{p.count, p.type, 0};
        ch->posted.v.store(p.msg, std::memory_order_release);
        p.started = moved = true;
    }
    const uint64_t w = ch->written.v.load(std::memory_order_relaxed), end = p.start + p.bytes;
    if (w < p.start) return moved;  // an earlier send's bytes are still going in
    if (w < end) {
        const uint64_t r = ch->read.v.load(std::memory_order_acquire), at = w % kRingBytes;
        const uint64_t n = std::min({kRingBytes - (w - r), end - w, kRingBytes - at});
        if (n == 0) return moved;
        memcpy(c->ring(ch) + at, p.send + (w - p.start), n);
        ch->written.v.store(w + n, std::memory_order_release);
        if (w + n < end) return true;
    }
    p.done = true;
    return true;
}

bool advance_recv(P2p& p, ncclResult_t* err) {
    Comm* c = p.comm;
    Channel* ch = c->channel(p.peer, c->rank);
    bool moved = false;
    if (!p.started) {
        if (ch->posted.v.load(std::memory_order_acquire) < p.msg) return false;
        const MsgHeader h = ch->headers[p.msg % kHeaders];
        if (h.count != p.count || h.type != p.type) {
            ch->broken.store(1, std::memory_order_release);
            *err = fail(c, ncclInvalidUsage,
                        p2p_name(p) + format(", and rank %d's ncclSend #%llu to rank %d sends %llu %s values", p.peer,
                                             (unsigned long long)p.msg, c->rank, (unsigned long long)h.count, type_name(h.type)));
            return false;
        }
        p.started = moved = true;
    }
    const uint64_t r = ch->read.v.load(std::memory_order_relaxed), end = p.start + p.bytes;
    if (r < p.start) return moved;  // an earlier receive from the peer is still coming out
    if (r < end) {
        const uint64_t w = ch->written.v.load(std::memory_order_acquire), at = r % kRingBytes;
        const uint64_t n = std::min({w - r, end - r, kRingBytes - at});
        if (n == 0) return moved;
        memcpy(p.recv + (r - p.start), c->ring(ch) + at, n);
        ch->read.v.store(r + n, std::memory_order_release);
        if (r + n < end) return true;
    }
    // Receives on two streams can finish out of order: acked only grows.
    uint64_t acked = ch->acked.v.load(std::memory_order_relaxed);
    while (acked < p.msg && !ch->acked.v.compare_exchange_weak(acked, p.msg, std::memory_order_release)) {
    }
    p.done = true;
    return true;
}

struct P2pJob {
    std::vector<P2p> ops;
};

// Moves every call of the group a little at a time until all are done. Names a dead or aborting
// peer, and one that has not moved within PREFER_COLLECTIVE_TIMEOUT.
int run_p2p(void* arg) {
    P2pJob* j = (P2pJob*)arg;
    const double limit = timeout_seconds();
    auto last_move = std::chrono::steady_clock::now();
    for (uint64_t idle = 0;;) {
        bool all = true, moved = false;
        for (P2p& p : j->ops) {
            if (p.done) continue;
            if (p.comm->aborted) return fail(p.comm, ncclInvalidUsage, p2p_name(p) + " on an aborted communicator");
            ncclResult_t err = ncclSuccess;
            moved |= p.op == kSend ? advance_send(p, &err) : advance_recv(p, &err);
            if (err) return err;
            all = all && p.done;
        }
        if (all) return ncclSuccess;
        if (moved) {
            idle = 0;
            last_move = std::chrono::steady_clock::now();
            continue;
        }
        if (++idle < 2000) {
            std::this_thread::yield();
            continue;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        if (idle % 256 != 0) continue;
        const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_move).count();
        for (const P2p& p : j->ops) {
            if (p.done) continue;
            Comm* c = p.comm;
            if (const int by = c->seg->aborted_by.load())
                return fail(c, ncclRemoteError, p2p_name(p) + format(": rank %d aborted the communicator", by - 1));
            const int pid = c->seg->ranks[p.peer].pid.load();
            if (pid > 0 && kill(pid, 0) != 0 && errno == ESRCH)
                return fail(c, ncclRemoteError, p2p_name(p) + format(": rank %d (pid %d) exited or was killed", p.peer, pid));
            if (waited > limit)
                return fail(c, ncclRemoteError,
                            p2p_name(p) + format(": rank %d made no matching call within %.0f s (PREFER_COLLECTIVE_TIMEOUT)", p.peer, limit));
        }
    }
}

void drop_p2p(void* arg) { delete (P2pJob*)arg; }

// The calls of one group (or one call outside a group) as one piece of work on `stream`.
ncclResult_t submit_p2p(std::vector<P2p> ops, void* stream) {
    std::vector<uint64_t> ranges;
    for (const P2p& p : ops) {
        ranges.push_back(p.op == kSend ? (uint64_t)p.send : (uint64_t)p.recv);
        ranges.push_back(p.bytes);
        ranges.push_back(p.op == kRecv);
    }
    const std::string label = ops.size() == 1 ? p2p_name(ops[0]) : format("a group of %zu ncclSend/ncclRecv calls", ops.size());
    P2pJob* job = new P2pJob{std::move(ops)};
    using SubmitHost = int (*)(void*, const char*, int (*)(void*), void*, void (*)(void*), const uint64_t*, size_t);
    static const SubmitHost submit = (SubmitHost)dlsym(RTLD_DEFAULT, "prefer_emu_submit_host");
    if (!submit) {
        const int status = run_p2p(job);
        drop_p2p(job);
        return status;
    }
    return submit(stream, label.c_str(), run_p2p, job, drop_p2p, ranges.data(), ranges.size() / 3) ? ncclUnhandledCudaError
                                                                                                    : ncclSuccess;
}

// The calling thread's open group (NCCL's groups are per thread): its depth, and the
// point-to-point calls waiting for its ncclGroupEnd.
thread_local int g_group_depth = 0;
thread_local std::vector<P2p> g_group_calls;
thread_local void* g_group_stream = nullptr;

ncclResult_t enqueue_p2p(Comm* c, int op, const void* send, void* recv, size_t count, int type, int peer, void* stream) {
    const char* name = op_name(op);
    if (!c || !c->seg) return fail(c, ncclInvalidArgument, format("%s on no communicator", name));
    if (type_size(type) == 0) return fail(c, ncclInvalidArgument, format("%s: data type %d", name, type));
    if (peer < 0 || peer >= c->nranks) return fail(c, ncclInvalidArgument, format("%s: peer %d of %d ranks", name, peer, c->nranks));
    if (c->nranks > kMaxP2pRanks)
        return fail(c, ncclInvalidUsage,
                    format("%s: the software GPU's NCCL has point-to-point channels for up to %d ranks, and this communicator has %d",
                           name, kMaxP2pRanks, c->nranks));
    if (const int e = c->async_error.load()) return e;
    if (count && !(op == kSend ? send : recv)) return fail(c, ncclInvalidArgument, format("%s: no buffer", name));
    if (g_group_depth > 0 && !g_group_calls.empty() && stream != g_group_stream)
        return fail(c, ncclInvalidUsage,
                    format("%s: the software GPU's NCCL runs a group's point-to-point calls on one stream, and this one is on another", name));
    if (c->sends.empty()) c->sends = c->sent_bytes = c->recvs = c->recv_bytes = std::vector<uint64_t>((size_t)c->nranks, 0);
    const uint64_t bytes = (uint64_t)count * type_size(type);
    P2p p{c, op, peer, type, (uint64_t)count, 0, 0, bytes, (const char*)send, (char*)recv, false, false};
    auto& msgs = op == kSend ? c->sends : c->recvs;
    auto& moved = op == kSend ? c->sent_bytes : c->recv_bytes;
    p.msg = ++msgs[peer];
    p.start = moved[peer];
    moved[peer] += bytes;
    if (g_group_depth > 0) {
        g_group_stream = stream;
        g_group_calls.push_back(p);
        return ncclSuccess;
    }
    return submit_p2p({p}, stream);
}

}  // namespace

extern "C" {

ncclResult_t ncclGetVersion(int* version) {
    if (!version) return ncclInvalidArgument;
    *version = 22800;
    return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t r) {
    switch (r) {
        case ncclSuccess: return "no error";
        case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
        case ncclSystemError: return "unhandled system error";
        case ncclInternalError: return "internal error";
        case ncclInvalidArgument: return "invalid argument";
        case ncclInvalidUsage: return "invalid usage";
        case ncclRemoteError: return "remote process exited or there was a network error";
    }
    return "unknown result code";
}

const char* ncclGetLastError(void* comm) {
    Comm* c = (Comm*)comm;
    return c && !c->last_error.empty() ? c->last_error.c_str() : g_last_error.c_str();
}

ncclResult_t ncclGetUniqueId(NcclUniqueId* id) {
    if (!id) return ncclInvalidArgument;
    memset(id, 0, sizeof *id);
    static std::atomic<unsigned> counter{0};
    const unsigned long long now = (unsigned long long)std::chrono::steady_clock::now().time_since_epoch().count();
    snprintf(id->internal, sizeof id->internal, "/prefer-nccl-%d-%llx-%u", (int)getpid(), now, counter++);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(void** out, int nranks, NcclUniqueId id, int rank) {
    if (!out) return fail(nullptr, ncclInvalidArgument, "ncclCommInitRank: no communicator to return");
    if (nranks < 1 || nranks > kMaxRanks || rank < 0 || rank >= nranks)
        return fail(nullptr, ncclInvalidArgument, format("ncclCommInitRank: rank %d of %d", rank, nranks));
    char name[129];
    memcpy(name, id.internal, 128);
    name[128] = 0;
    if (strncmp(name, "/prefer-nccl-", 13) != 0) return fail(nullptr, ncclInvalidArgument, "ncclCommInitRank: a unique id ncclGetUniqueId did not make");
    const size_t bytes = segment_bytes(nranks);
    const int fd = shm_open(name, O_CREAT | O_RDWR, 0600);
    if (fd < 0) return fail(nullptr, ncclSystemError, format("ncclCommInitRank: shm_open %s: %s", name, strerror(errno)));
    // Every rank sizes it the same; the first makes it, zero-filled.
    struct stat st;
    if (fstat(fd, &st) != 0 || ((size_t)st.st_size < bytes && ftruncate(fd, (off_t)bytes) != 0)) {
        const int e = errno;
        close(fd);
        return fail(nullptr, ncclSystemError, format("ncclCommInitRank: sizing %s to %zu bytes: %s", name, bytes, strerror(e)));
    }
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return fail(nullptr, ncclSystemError, format("ncclCommInitRank: mapping %zu bytes: %s", bytes, strerror(errno)));
    Comm* c = new Comm;
    c->seg = (Segment*)p;
    c->bytes = bytes;
    c->rank = rank;
    c->nranks = nranks;
    c->seg->ranks[rank].pid.store((int32_t)getpid());
    if (rank == 0) {
        c->seg->magic = kMagic;
        c->seg->nranks = nranks;
    }
    if (ncclResult_t r = barrier(c, "ncclCommInitRank")) {
        if (rank == 0) shm_unlink(name);
        munmap(p, bytes);
        delete c;
        return r;
    }
    if (c->seg->magic != kMagic || c->seg->nranks != nranks) {
        munmap(p, bytes);
        delete c;
        return fail(nullptr, ncclInvalidUsage, format("ncclCommInitRank: rank %d was told of %d ranks, rank 0 of another number", rank, nranks));
    }
    // Everyone has it mapped: the name can go, so nothing is left in /dev/shm whatever happens next.
    if (rank == 0) shm_unlink(name);
    *out = c;
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(void* comm) {
    Comm* c = (Comm*)comm;
    if (!c) return ncclSuccess;
    if (c->seg) munmap(c->seg, c->bytes);
    delete c;
    return ncclSuccess;
}

ncclResult_t ncclCommAbort(void* comm) {
    Comm* c = (Comm*)comm;
    if (!c) return ncclSuccess;
    if (c->seg) {
        int32_t none = 0;
        c->seg->aborted_by.compare_exchange_strong(none, c->rank + 1);
        munmap(c->seg, c->bytes);
    }
    delete c;
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(void* comm, ncclResult_t* result) {
    Comm* c = (Comm*)comm;
    if (!c || !result) return ncclInvalidArgument;
    *result = c->async_error.load();
    return ncclSuccess;
}

ncclResult_t ncclCommCount(const void* comm, int* count) {
    if (!comm || !count) return ncclInvalidArgument;
    *count = ((const Comm*)comm)->nranks;
    return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const void* comm, int* rank) {
    if (!comm || !rank) return ncclInvalidArgument;
    *rank = ((const Comm*)comm)->rank;
    return ncclSuccess;
}

// Groups nest; the outermost ncclGroupEnd submits the point-to-point calls made inside as one
// piece of work. Collectives inside a group run in the order issued, the same on every rank.
ncclResult_t ncclGroupStart() {
    ++g_group_depth;
    return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
    if (g_group_depth == 0) return fail(nullptr, ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
    if (--g_group_depth > 0 || g_group_calls.empty()) return ncclSuccess;
    std::vector<P2p> calls;
    calls.swap(g_group_calls);
    return submit_p2p(std::move(calls), g_group_stream);
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, int type, int op, void* comm, void* stream) {
    return enqueue((Comm*)comm, kAllReduce, send, recv, count, type, op, 0, stream);
}

ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t recv_count, int type, int op, void* comm, void* stream) {
    return enqueue((Comm*)comm, kReduceScatter, send, recv, recv_count, type, op, 0, stream);
}

ncclResult_t ncclAllGather(const void* send, void* recv, size_t send_count, int type, void* comm, void* stream) {
    return enqueue((Comm*)comm, kAllGather, send, recv, send_count, type, ncclSum, 0, stream);
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, int type, int root, void* comm, void* stream) {
    return enqueue((Comm*)comm, kBroadcast, send, recv, count, type, ncclSum, root, stream);
}

ncclResult_t ncclSend(const void* send, size_t count, int type, int peer, void* comm, void* stream) {
    return enqueue_p2p((Comm*)comm, kSend, send, nullptr, count, type, peer, stream);
}

ncclResult_t ncclRecv(void* recv, size_t count, int type, int peer, void* comm, void* stream) {
    return enqueue_p2p((Comm*)comm, kRecv, nullptr, recv, count, type, peer, stream);
}

}  // extern "C"
