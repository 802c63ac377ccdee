// Launching a kernel: blocks go to a pool of OS threads; each block's threads run as fibers on
// one of them. Between two synchronisation points a fiber runs alone, and which ready fiber runs
// next is drawn from a generator seeded by PREFER_EMU_SEED (0: thread order), so code that
// depends on an unsynchronised order gives different results under different seeds.
//
// __syncthreads waits for every thread of the block that has not exited. A warp collective
// (shuffle, vote, reduce, __syncwarp) waits for the lanes its mask names, and the last to arrive
// computes every lane's result at once. Whatever can never complete is reported as a deadlock.
#include "runtime.h"

#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdlib>
#include <cmath>
#include <cstring>

namespace emu {

// ---- configuration ----------------------------------------------------------------------------
size_t worker_count() {
    static const size_t n = [] {
        if (const char* s = getenv("PREFER_EMU_THREADS")) {
            const long v = strtol(s, nullptr, 10);
            if (v > 0) return (size_t)(v > 64 ? 64 : v);
        }
        const unsigned hw = std::thread::hardware_concurrency();
        return (size_t)(hw == 0 ? 1 : (hw > 16 ? 16 : hw));
    }();
    return n;
}

namespace {
std::atomic<uint64_t> seed_setting{[] {
    const char* s = getenv("PREFER_EMU_SEED");
    return s ? strtoull(s, nullptr, 10) : 1ull;
}()};
}  // namespace

uint64_t current_seed() { return seed_setting.load(); }

std::atomic<bool> race_check_enabled{[] {
    const char* s = getenv("PREFER_EMU_RACE_CHECK");
    return !(s && strcmp(s, "0") == 0);
}()};

// For tests: the schedule seed (0: thread order) and whether the race check runs.
extern "C" void prefer_emu_set_schedule(uint64_t seed, int race_check) {
    seed_setting.store(seed);
    race_check_enabled.store(race_check != 0);
}

// ---- errors inside a block --------------------------------------------------------------------
static std::string where(const Worker& w, const Fiber* f) {
    std::string s = format("kernel %s, block (%u,%u,%u)", w.launch->kernel->name, w.block_idx.x, w.block_idx.y,
                           w.block_idx.z);
    if (f) {
        const uint3 t = f->info->thread_idx;
        s += format(", thread (%u,%u,%u)", t.x, t.y, t.z);
    }
    return s;
}

void fail_block(Worker& w, const std::string& why, int code) {
    if (!w.block_error.empty()) return;
    w.block_error = why;
    w.block_error_code = code;
}

// Records the error and leaves the fiber for good; the scheduler then abandons the block.
[[noreturn]] __attribute__((noinline, cold)) static void abort_fiber(Fiber& f, const std::string& why) {
    fail_block(*f.worker, where(*f.worker, &f) + ": " + why);
    f.state = FiberState::Faulted;
    switch_to_scheduler(f);
}

static void make_ready(Worker& w, Fiber& f) {
    f.state = FiberState::Ready;
    w.ready.push_back(f.tid);
}

// ---- barriers ---------------------------------------------------------------------------------
extern "C" int emu_syncthreads_op(int op, int predicate) {
    Fiber& f = *current_fiber();
    f.coll_kind = op;
    f.barrier_pred = predicate;
    f.state = FiberState::AtBarrier;
    yield_fiber(f);
    return (int)f.coll_result;
}

// A __syncthreads of kind `op` carrying the thread's value in and the block's result out
// (resolve_block_reduce, from release_barrier).
extern "C" uint64_t emu_block_reduce(int op, uint64_t value) {
    Fiber& f = *current_fiber();
    f.butterfly_value = value;
    emu_syncthreads_op(op, 0);
    return f.butterfly_value;
}

// One step of an xor butterfly for one lane: op (an EmuButterflyOp) of its value and its partner's,
// both an f32's bits, or an f64's for EMU_BUTTERFLY_ADD_F64.
static uint64_t butterfly_combine(int op, uint64_t a, uint64_t b) {
    switch (op) {
        case EMU_BUTTERFLY_ADD_F32:
            return __builtin_bit_cast(uint32_t, __builtin_bit_cast(float, (uint32_t)a) + __builtin_bit_cast(float, (uint32_t)b));
        case EMU_BUTTERFLY_MAX_F32:
            return __builtin_bit_cast(uint32_t,
                                      fmaxf(__builtin_bit_cast(float, (uint32_t)a), __builtin_bit_cast(float, (uint32_t)b)));
        default: return __builtin_bit_cast(uint64_t, __builtin_bit_cast(double, a) + __builtin_bit_cast(double, b));
    }
}

// A whole warp's butterfly over offsets 16 to 1 (warp_sum, warp_max), every lane's result from
// both values before each step, as resolve_butterfly and the shuffles compute it.
static void butterfly_16_to_1(uint64_t (&v)[32], int butterfly_op) {
    for (int o = 16; o >= 1; o /= 2) {
        uint64_t next[32];
        for (uint32_t l = 0; l < 32; ++l) next[l] = butterfly_combine(butterfly_op, v[l], v[l ^ (uint32_t)o]);
        memcpy(v, next, sizeof v);
    }
}

// Every thread waits in emu_block_reduce: the block's result, as common.cuh's CUDA code computes it,
// to each. False (the block failed) where that code could not run: a thread that exited or waits at
// another barrier, a warp not whole, a block of more than one dimension.
static bool resolve_block_reduce(Worker& w, int op) {
    const uint32_t n = w.block_threads;
    std::string why;
    if (w.launch->block.y != 1 || w.launch->block.z != 1)
        why = "a block reduction (common.cuh) in a block of more than one dimension";
    else if (n % 32 != 0)
        why = format("a block reduction (common.cuh) in a block of %u threads, not whole warps: the warp butterfly's "
                     "full mask names lanes that do not exist",
                     n);
    for (uint32_t i = 0; i < n && why.empty(); ++i) {
        const Fiber& f = w.fibers[i];
        if (f.state != FiberState::AtBarrier)
            why = format("thread %u %s while the others wait in a block reduction (common.cuh), whose warp butterflies "
                         "need every lane",
                         i, f.state == FiberState::Done ? "exited" : "is elsewhere");
        else if (f.coll_kind != op)
            why = format("thread %u waits at another barrier (kind %d) than the block reduction (kind %d) of the others", i,
                         f.coll_kind, op);
    }
    if (!why.empty()) {
        fail_block(w, where(w, nullptr) + ": " + why);
        return false;
    }
    const int butterfly_op = op == EMU_BLOCK_SUM_F64   ? EMU_BUTTERFLY_ADD_F64
                             : op == EMU_BLOCK_MAX_F32 ? EMU_BUTTERFLY_MAX_F32
                                                       : EMU_BUTTERFLY_ADD_F32;
    const uint32_t warps = n / 32;
    uint64_t partial[32];
    for (uint32_t warp = 0; warp < warps; ++warp) {
        uint64_t v[32];
        for (uint32_t l = 0; l < 32; ++l) v[l] = w.fibers[warp * 32 + l].butterfly_value;
        butterfly_16_to_1(v, butterfly_op);
        partial[warp] = v[0];  // every lane holds the same bits (each step's sum is commutative)
    }
    const uint64_t identity = op == EMU_BLOCK_SUM_F64   ? __builtin_bit_cast(uint64_t, 0.0)
                              : op == EMU_BLOCK_MAX_F32 ? __builtin_bit_cast(uint32_t, -INFINITY)
                                                        : __builtin_bit_cast(uint32_t, 0.0f);
    uint64_t v[32];
    for (uint32_t l = 0; l < 32; ++l) v[l] = l < warps ? partial[l] : identity;
    butterfly_16_to_1(v, butterfly_op);
    race_barrier(w);
    for (uint32_t i = 0; i < n; ++i) {
        w.fibers[i].butterfly_value = v[0];
        make_ready(w, w.fibers[i]);
    }
    return true;
}

static bool release_barrier(Worker& w) {
    for (uint32_t i = 0; i < w.block_threads; ++i) {
        const Fiber& f = w.fibers[i];
        if (f.state == FiberState::AtBarrier && f.coll_kind >= EMU_BLOCK_SUM_F32)
            return resolve_block_reduce(w, f.coll_kind);
    }
    uint32_t count = 0, total = 0;
    for (uint32_t i = 0; i < w.block_threads; ++i) {
        const Fiber& f = w.fibers[i];
        if (f.state != FiberState::AtBarrier) continue;
        ++total;
        count += f.barrier_pred != 0;
    }
    race_barrier(w);
    for (uint32_t i = 0; i < w.block_threads; ++i) {
        Fiber& f = w.fibers[i];
        if (f.state != FiberState::AtBarrier) continue;
        switch (f.coll_kind) {
            case EMU_SYNC_COUNT: f.coll_result = count; break;
            case EMU_SYNC_AND: f.coll_result = count == total; break;
            case EMU_SYNC_OR: f.coll_result = count != 0; break;
            default: f.coll_result = 0;
        }
        make_ready(w, f);
    }
    return true;
}

// ---- warp collectives -------------------------------------------------------------------------
static constexpr int kShuffle = -1, kSyncWarp = -2, kGather = -3, kButterfly = -4, kMma = -5;

static const char* collective_name(int kind) {
    switch (kind) {
        case kShuffle: return "a shuffle";
        case kSyncWarp: return "__syncwarp";
        case kGather: return "a warp gather (ldmatrix)";
        case kButterfly: return "a butterfly of xor shuffles";
        case kMma: return "mma.m16n8k16";
        case EMU_BALLOT: return "__ballot_sync";
        case EMU_ANY: return "__any_sync";
        case EMU_ALL: return "__all_sync";
        default: return "a __reduce_*_sync";
    }
}

static uint32_t lanes_of_warp(const Worker& w, uint32_t warp) {
    const uint32_t n = w.block_threads - warp * 32;
    return n >= 32 ? 0xffffffffu : (1u << n) - 1u;
}

// A gather's words, lane-major, into the last lane's buffer, once; every lane of the mask lands in
// its slot and the others' slots are zero. The other lanes then get a copy of the whole block.
static void pack_gather(Fiber& self, Fiber* lanes, uint32_t warp, uint32_t need) {
    const uint32_t words = self.gather_words;
    for (uint32_t l = 0; l < 32; ++l)
        if ((need >> l & 1) && lanes[l].gather_words != words)
            abort_fiber(self, format("lanes %u and %u of warp %u gather %u and %u words", l, self.tid % 32, warp,
                                     lanes[l].gather_words, words));
    for (uint32_t s = 0; s < 32; ++s) {
        uint32_t* slot = self.gather_dst + s * words;
        if (need >> s & 1)
            memcpy(slot, lanes[s].gather_src, words * sizeof(uint32_t));
        else
            memset(slot, 0, words * sizeof(uint32_t));
    }
}

// A butterfly's steps over every lane at once, each lane's result into its butterfly_value. The
// lanes' (first, last) offsets sit in coll_value and the operation in coll_src, checked equal.
static void resolve_butterfly(Fiber& self, Fiber* lanes, uint32_t warp, uint32_t need) {
    const int op = self.coll_src, first = (int)(self.coll_value & 0xffff), last = (int)(self.coll_value >> 16);
    uint64_t v[32] = {}, next[32] = {};
    for (uint32_t l = 0; l < 32; ++l) {
        if (!(need >> l & 1)) continue;
        if (lanes[l].coll_value != self.coll_value || lanes[l].coll_src != op)
            abort_fiber(self, format("lanes %u and %u of warp %u run different butterflies (offsets %u to %u, "
                                     "operation %d; offsets %d to %d, operation %d)",
                                     l, self.tid % 32, warp, lanes[l].coll_value & 0xffff, lanes[l].coll_value >> 16,
                                     lanes[l].coll_src, first, last, op));
        v[l] = lanes[l].butterfly_value;
    }
    for (int o = first;; o = first > last ? o / 2 : o * 2) {
        for (uint32_t l = 0; l < 32; ++l) {
            if (!(need >> l & 1)) continue;
            const uint32_t src = l ^ (uint32_t)o;
            if (!(need >> src & 1))
                abort_fiber(self, format("lane %u of warp %u shuffles from lane %u, which is not in the mask 0x%08x "
                                         "(or does not exist in this block)",
                                         l, warp, src, need));
            next[l] = butterfly_combine(op, v[l], v[src]);
        }
        memcpy(v, next, sizeof v);
        if (o == last) break;
    }
    for (uint32_t l = 0; l < 32; ++l)
        if (need >> l & 1) lanes[l].butterfly_value = v[l];
}

static float bf16_half(uint32_t word, int high) {
    return emu_bf16_bits_to_f32((unsigned short)(high ? word >> 16 : word));
}

// mma.m16n8k16 for the whole warp. With g = lane / 4 and c = lane % 4 (kernels/mma.cuh's
// layouts): lane registers 0-3 hold A[g][2c..], A[g+8][2c..], A[g][2c+8..], A[g+8][2c+8..];
// 4-5 hold B[2c..][g] and B[2c+8..][g]; the lane's D is rows g, g+8 and columns 2c, 2c+1. Each D
// element is accumulated over k = 0..15 in order, with fmaf, from the lane's own accumulator. A lane
// outside the warp (a block of fewer than 32 threads) gives zeros.
static void resolve_mma(Fiber* lanes, uint32_t need) {
    float a[16][16] = {}, b[8][16] = {};  // a[row][k], b[column][k]
    for (uint32_t l = 0; l < 32; ++l) {
        if (!(need >> l & 1)) continue;
        const uint32_t* w = lanes[l].gather_src;
        const int g = (int)l / 4, c = (int)l % 4;
        for (int half = 0; half < 2; ++half) {
            a[g][2 * c + half] = bf16_half(w[0], half);
            a[g + 8][2 * c + half] = bf16_half(w[1], half);
            a[g][2 * c + 8 + half] = bf16_half(w[2], half);
            a[g + 8][2 * c + 8 + half] = bf16_half(w[3], half);
            b[g][2 * c + half] = bf16_half(w[4], half);
            b[g][2 * c + 8 + half] = bf16_half(w[5], half);
        }
    }
    for (uint32_t l = 0; l < 32; ++l) {
        if (!(need >> l & 1)) continue;
        float* d = (float*)lanes[l].gather_dst;
        const int g = (int)l / 4, c = (int)l % 4;
        for (int i = 0; i < 4; ++i) {
            const float* x = a[g + 8 * (i / 2)];
            const float* y = b[2 * c + i % 2];
            float acc = d[i];
            for (int k = 0; k < 16; ++k) acc = fmaf(x[k], y[k], acc);
            d[i] = acc;
        }
    }
}

// The last lane of `need` has arrived: every lane's result at once, then all go on. Not inlined:
// its frame (the lanes' values, the formatted errors) would otherwise sit in every waiting lane's
// stack, in cache lines a resumed lane touches.
__attribute__((noinline)) static void resolve_warp(Worker& w, Fiber& self, uint32_t warp, uint32_t need) {
    Fiber* lanes = &w.fibers[warp * 32];
    const int kind = self.coll_kind;
    for (uint32_t l = 0; l < 32; ++l) {
        if (!(need >> l & 1)) continue;
        if (lanes[l].coll_kind != kind || lanes[l].coll_mask != self.coll_mask)
            abort_fiber(self, format("lanes %u and %u of warp %u meet in different warp collectives (%s with mask "
                                     "0x%08x, %s with mask 0x%08x)",
                                     l, self.tid % 32, warp, collective_name(lanes[l].coll_kind), lanes[l].coll_mask,
                                     collective_name(kind), self.coll_mask));
    }
    if (kind == kGather) pack_gather(self, lanes, warp, need);
    if (kind == kButterfly) resolve_butterfly(self, lanes, warp, need);
    if (kind == kMma) resolve_mma(lanes, need);
    uint32_t ballot = 0, add = 0, umin = 0xffffffffu, umax = 0, band = 0xffffffffu, bor = 0, bxor = 0;
    int32_t imin = INT32_MAX, imax = INT32_MIN;
    for (uint32_t l = 0; l < 32 && kind >= 0; ++l) {
        if (!(need >> l & 1)) continue;
        const uint32_t v = lanes[l].coll_value;
        ballot |= (v != 0) << l;
        add += v;
        umin = v < umin ? v : umin;
        umax = v > umax ? v : umax;
        imin = (int32_t)v < imin ? (int32_t)v : imin;
        imax = (int32_t)v > imax ? (int32_t)v : imax;
        band &= v;
        bor |= v;
        bxor ^= v;
    }
    for (uint32_t l = 0; l < 32; ++l) {
        if (!(need >> l & 1)) continue;
        Fiber& f = lanes[l];
        switch (kind) {
            case kShuffle: {
                const int src = f.coll_src;
                if (src < 0 || src > 31 || !(need >> src & 1))
                    abort_fiber(self, format("lane %u of warp %u shuffles from lane %d, which is not in the mask 0x%08x "
                                             "(or does not exist in this block of %u threads)",
                                             l, warp, src, need, w.block_threads));
                f.coll_result = lanes[src].coll_value;
                break;
            }
            case kSyncWarp: f.coll_result = 0; break;
            case kButterfly: f.coll_result = 0; break;
            case kMma: f.coll_result = 0; break;
            case kGather:
                // The packed words are already in the last lane's buffer (pack_gather).
                if (&f != &self) memcpy(f.gather_dst, self.gather_dst, 32 * sizeof(uint32_t) * self.gather_words);
                f.coll_result = 0;
                break;
            case EMU_BALLOT: f.coll_result = ballot; break;
            case EMU_ANY: f.coll_result = ballot != 0; break;
            case EMU_ALL: f.coll_result = ballot == need; break;
            case EMU_REDUCE_ADD: f.coll_result = add; break;
            case EMU_REDUCE_MIN_U: f.coll_result = umin; break;
            case EMU_REDUCE_MAX_U: f.coll_result = umax; break;
            case EMU_REDUCE_MIN_I: f.coll_result = (uint32_t)imin; break;
            case EMU_REDUCE_MAX_I: f.coll_result = (uint32_t)imax; break;
            case EMU_REDUCE_AND: f.coll_result = band; break;
            case EMU_REDUCE_OR: f.coll_result = bor; break;
            case EMU_REDUCE_XOR: f.coll_result = bxor; break;
        }
    }
    w.warps[warp].arrived &= ~need;
    w.warps[warp].syncs++;
    // The others wait for the scheduler; the last to arrive goes straight on.
    for (uint32_t l = 0; l < 32; ++l)
        if ((need >> l & 1) && &lanes[l] != &self) make_ready(w, lanes[l]);
    self.state = FiberState::Ready;
}

static uint32_t warp_collective(unsigned mask, int kind, uint32_t value, int src) {
    Fiber& f = *current_fiber();
    Worker& w = *f.worker;
    const uint32_t lane = f.tid % 32, warp = f.tid / 32;
    if (!(mask >> lane & 1))
        abort_fiber(f, format("%s with mask 0x%08x, which leaves out the calling lane %u", collective_name(kind), mask,
                              lane));
    const uint32_t need = mask & lanes_of_warp(w, warp);
    f.coll_mask = mask;
    f.coll_kind = kind;
    f.coll_value = value;
    f.coll_src = src;
    f.state = FiberState::AtWarp;
    WarpState& ws = w.warps[warp];
    ws.arrived |= 1u << lane;
    if ((ws.arrived & need) == need) {
        resolve_warp(w, f, warp, need);
    } else {
        yield_fiber(f);
    }
    return f.coll_result;
}

extern "C" uint32_t emu_shfl(unsigned mask, uint32_t value, int src_lane) {
    return warp_collective(mask, kShuffle, value, src_lane);
}
extern "C" uint32_t emu_vote(unsigned mask, int op, uint32_t value) { return warp_collective(mask, op, value, 0); }
extern "C" void emu_syncwarp(unsigned mask) { warp_collective(mask, kSyncWarp, 0, 0); }

// The emulated twins of the warp-wide tensor-core instructions (kernels/mma.cuh) need every
// lane's operands at once: one collective copies `words` words from each lane into `all`
// (lane-major, 32 × words), instead of 32 × words shuffles.
extern "C" void emu_warp_gather(unsigned mask, const uint32_t* mine, uint32_t words, uint32_t* all) {
    Fiber& f = *current_fiber();
    f.gather_src = mine;
    f.gather_dst = all;
    f.gather_words = words;
    warp_collective(mask, kGather, 0, 0);
}

extern "C" void emu_mma_bf16_16816(unsigned mask, const uint32_t mine[6], float d[4]) {
    Fiber& f = *current_fiber();
    f.gather_src = mine;
    f.gather_dst = (uint32_t*)d;
    f.gather_words = 6;
    warp_collective(mask, kMma, 0, 0);
}

extern "C" uint64_t emu_xor_butterfly(unsigned mask, int op, uint64_t value, int first, int last) {
    Fiber& f = *current_fiber();
    auto offset = [](int o) { return o >= 1 && o <= 16 && (o & (o - 1)) == 0; };
    if (!offset(first) || !offset(last) || op < EMU_BUTTERFLY_ADD_F32 || op > EMU_BUTTERFLY_ADD_F64)
        abort_fiber(f, format("a butterfly from offset %d to %d (operation %d): offsets are powers of two up to 16",
                              first, last, op));
    f.butterfly_value = value;
    warp_collective(mask, kButterfly, (uint32_t)first | (uint32_t)last << 16, op);
    return f.butterfly_value;
}

extern "C" unsigned emu_activemask(void) {
    Fiber& f = *current_fiber();
    const Worker& w = *f.worker;
    const uint32_t warp = f.tid / 32;
    unsigned m = 0;
    for (uint32_t l = 0; l < 32 && warp * 32 + l < w.block_threads; ++l)
        if (w.fibers[warp * 32 + l].state != FiberState::Done) m |= 1u << l;
    return m;
}

extern "C" void emu_trap(const char* why) { abort_fiber(*current_fiber(), why); }

// ---- atomics ----------------------------------------------------------------------------------
extern "C" float emu_atomic_add_f32(float* p, float v) {
    note_atomic(p, 4);
    uint32_t* u = (uint32_t*)p;
    uint32_t old = __atomic_load_n(u, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(u, &old, __builtin_bit_cast(uint32_t, __builtin_bit_cast(float, old) + v), true,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return __builtin_bit_cast(float, old);
}
extern "C" double emu_atomic_add_f64(double* p, double v) {
    note_atomic(p, 8);
    uint64_t* u = (uint64_t*)p;
    uint64_t old = __atomic_load_n(u, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(u, &old, __builtin_bit_cast(uint64_t, __builtin_bit_cast(double, old) + v),
                                        true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return __builtin_bit_cast(double, old);
}

template <typename U, typename S>
static U rmw(U* p, int op, U v) {
    note_atomic(p, sizeof(U));
    U old = __atomic_load_n(p, __ATOMIC_RELAXED);
    for (;;) {
        U next = old;
        switch (op) {
            case EMU_RMW_ADD: next = old + v; break;
            case EMU_RMW_SUB: next = old - v; break;
            case EMU_RMW_EXCH: next = v; break;
            case EMU_RMW_MIN: next = v < old ? v : old; break;
            case EMU_RMW_MAX: next = v > old ? v : old; break;
            case EMU_RMW_MIN_S: next = (S)v < (S)old ? v : old; break;
            case EMU_RMW_MAX_S: next = (S)v > (S)old ? v : old; break;
            case EMU_RMW_AND: next = old & v; break;
            case EMU_RMW_OR: next = old | v; break;
            case EMU_RMW_XOR: next = old ^ v; break;
            case EMU_RMW_INC: next = old >= v ? 0 : old + 1; break;             // CUDA's wrapping increment
            case EMU_RMW_DEC: next = (old == 0 || old > v) ? v : old - 1; break;  // and decrement
        }
        if (__atomic_compare_exchange_n(p, &old, next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return old;
    }
}
extern "C" uint32_t emu_atomic_rmw_u32(uint32_t* p, int op, uint32_t v) { return rmw<uint32_t, int32_t>(p, op, v); }
extern "C" uint64_t emu_atomic_rmw_u64(uint64_t* p, int op, uint64_t v) { return rmw<uint64_t, int64_t>(p, op, v); }
extern "C" uint32_t emu_atomic_cas_u32(uint32_t* p, uint32_t expected, uint32_t desired) {
    note_atomic(p, 4);
    __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return expected;
}
extern "C" uint64_t emu_atomic_cas_u64(uint64_t* p, uint64_t expected, uint64_t desired) {
    note_atomic(p, 8);
    __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return expected;
}
extern "C" void emu_threadfence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
extern "C" long long emu_clock64(void) { return (long long)__builtin_ia32_rdtsc(); }

// ---- one block --------------------------------------------------------------------------------
static std::string describe_deadlock(const Worker& w) {
    std::string s = "deadlock:";
    uint32_t at_barrier = 0, done = 0;
    for (uint32_t i = 0; i < w.block_threads; ++i) {
        at_barrier += w.fibers[i].state == FiberState::AtBarrier;
        done += w.fibers[i].state == FiberState::Done;
    }
    for (uint32_t warp = 0; warp * 32 < w.block_threads; ++warp) {
        const uint32_t arrived = w.warps[warp].arrived;
        if (!arrived) continue;
        uint32_t mask = 0;
        for (uint32_t l = 0; l < 32; ++l)
            if (arrived >> l & 1) mask = w.fibers[warp * 32 + l].coll_mask;
        const uint32_t missing = mask & lanes_of_warp(w, warp) & ~arrived;
        uint32_t exited = 0;
        for (uint32_t l = 0; l < 32; ++l)
            if ((missing >> l & 1) && w.fibers[warp * 32 + l].state == FiberState::Done) exited |= 1u << l;
        s += format(" warp %u: lanes 0x%08x wait in %s with mask 0x%08x; lanes 0x%08x never arrive (0x%08x of them "
                    "exited, the rest wait at __syncthreads).",
                    warp, arrived, collective_name(w.fibers[warp * 32 + __builtin_ctz(arrived)].coll_kind), mask,
                    missing, exited);
    }
    s += format(" %u of %u threads wait at __syncthreads, %u exited", at_barrier, w.block_threads, done);
    return s;
}

uint3 thread_index(const Worker& w, uint32_t tid) {
    const dim3 b = w.launch->block;
    if (b.y == 1 && b.z == 1) return {tid, 0, 0};  // the usual case, without three divisions
    return {tid % b.x, tid / b.x % b.y, tid / (b.x * b.y)};
}

void begin_thread(Worker& w, Fiber& f) {
    start_fiber(w, f);
    const Launch& l = *w.launch;
    EmuThreadInfo& t = *f.info;
    t.thread_idx = thread_index(w, f.tid);
    t.block_idx = w.block_idx;
    t.block_dim = {l.block.x, l.block.y, l.block.z};
    t.grid_dim = {l.grid.x, l.grid.y, l.grid.z};
    t.lane = f.tid % 32;
    t.linear = f.tid;
    t.shared_lo = w.shared_lo;
    t.shared_size = w.shared_size;
    t.track_global = !l.buffers.empty();
}

static void run_block(Worker& w, Launch& l, uint64_t linear) {
    const dim3 g = l.grid, b = l.block;
    w.block_idx = {(unsigned)(linear % g.x), (unsigned)(linear / g.x % g.y), (unsigned)(linear / ((uint64_t)g.x * g.y))};
    const uint32_t n = b.x * b.y * b.z;
    ensure_stacks(w, n);
    if (w.fibers.size() < n) w.fibers.resize(n);
    w.block_threads = n;
    w.block_error.clear();
    w.race_reported = false;
    w.warps.assign((n + 31) / 32, WarpState{0, 0});
    race_begin_block(w);
    w.free_slots.resize(n);
    for (uint32_t i = 0; i < n; ++i) w.free_slots[i] = n - 1 - i;  // slot 0 first
    for (uint32_t i = 0; i < n; ++i) {
        Fiber& f = w.fibers[i];
        f.worker = &w;
        f.tid = i;
        f.state = FiberState::Ready;
        f.slot = kNoSlot;
        f.info = nullptr;
    }
    w.ready.resize(n);
    for (uint32_t i = 0; i < n; ++i) w.ready[i] = i;
    w.ready_head = 0;
    w.ready_drawn = 0;
    w.rng = l.seed * 0x2545f4914f6cdd1dull ^ l.id * 0x9e3779b97f4a7c15ull ^ linear;
    for (;;) {
        // The fibers hand the CPU to one another (yield_fiber) and come back here only when none
        // is ready, or when one faults.
        if (Fiber* first = next_ready(w)) {
            run_ready_fibers(w, *first);
            Fiber& f = *w.running;
            w.running = nullptr;
            if (f.state == FiberState::Done) w.free_slots.push_back(f.slot);
            if (f.state == FiberState::Faulted) {
                if (w.fault_signal) {
                    fail_block(w, where(w, &f) + ": " + describe_fault(w), kIllegalAddress);
                    w.fault_signal = 0;
                }
                return;
            }
            continue;
        }
        w.ready.clear();
        w.ready_head = 0;
        w.ready_drawn = 0;
        uint32_t done = 0, at_warp = 0;
        for (uint32_t i = 0; i < n; ++i) {
            done += w.fibers[i].state == FiberState::Done;
            at_warp += w.fibers[i].state == FiberState::AtWarp;
        }
        if (done == n) return;
        if (at_warp == 0) {
            if (!release_barrier(w)) return;
            continue;
        }
        fail_block(w, where(w, nullptr) + ": " + describe_deadlock(w));
        return;
    }
}

// ---- the pool ---------------------------------------------------------------------------------
// Never destroyed: workers still wait on these when the process exits, and destroying a condition
// variable that threads wait on blocks forever.
struct Pool {
    std::mutex lock;
    std::condition_variable work_ready, work_done;
    std::vector<Worker*> workers;
    Launch* current = nullptr;
    uint64_t generation = 0;
    size_t busy = 0;
    std::mutex launch_lock;  // one launch at a time, as on one stream
    uint64_t launches = 0;
};
namespace {
Pool& pool = *new Pool();
}  // namespace

static void run_blocks(Worker& w, Launch& l) {
    const uint64_t total = (uint64_t)l.grid.x * l.grid.y * l.grid.z;
    w.launch = &l;
    w.touch.assign(l.buffers.size(), Touch{});
    w.touch_hint = 0;
    for (;;) {
        if (l.failed.load(std::memory_order_relaxed)) break;
        const uint64_t b = l.next_block.fetch_add(1);
        if (b >= total) break;
        run_block(w, l, b);
        if (!w.block_error.empty()) {
            std::lock_guard<std::mutex> g(l.error_lock);
            if (!l.failed.exchange(true)) {
                l.error = w.block_error;
                l.error_code = w.block_error_code;
            }
            break;
        }
    }
    w.launch = nullptr;
}

static void worker_main(Worker* w) {
    register_worker(w);
    prepare_worker_signals(*w);
    init_shared_range(*w);
    uint64_t seen = 0;
    for (;;) {
        Launch* l;
        {
            std::unique_lock<std::mutex> g(pool.lock);
            pool.work_ready.wait(g, [&] { return pool.generation != seen; });
            seen = pool.generation;
            l = pool.current;
        }
        run_blocks(*w, *l);
        std::lock_guard<std::mutex> g(pool.lock);
        if (--pool.busy == 0) pool.work_done.notify_all();
    }
}

static void start_pool() {
    if (!pool.workers.empty()) return;
    install_fault_handler();
    for (size_t i = 0; i < worker_count(); ++i) {
        Worker* w = new Worker();  // lives as long as the process
        w->index = (int)i;
        pool.workers.push_back(w);
        w->thread = std::thread(worker_main, w);
        w->thread.detach();
    }
}

// The allocations a kernel can reach: every 8-byte word of its parameters that points into one
// (a pointer loaded from device memory is not followed).
static std::vector<Buffer> parameter_buffers(const Launch& l) {
    std::vector<Buffer> buffers;
    const Kernel& k = *l.kernel;
    for (size_t i = 0; i < k.arg_count; ++i) {
        for (size_t at = 0; at + 8 <= k.arg_sizes[i]; at += 8) {
            uintptr_t v, base;
            size_t size;
            memcpy(&v, (const uint8_t*)l.params[i] + at, 8);
            if (!find_allocation(v, &base, &size)) continue;
            const bool seen = std::any_of(buffers.begin(), buffers.end(), [&](const Buffer& b) { return b.lo == base; });
            if (!seen) buffers.push_back(Buffer{base, base + size});
        }
    }
    return buffers;
}

// The launch's blocks will record what they touch in its parameter buffers.
static void watch_parameters(Launch& l, std::vector<Buffer> buffers) {
    l.buffers = std::move(buffers);
    if (l.buffers.empty()) return;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (const Buffer& b : l.buffers) {
        lo = std::min(lo, b.lo);
        hi = std::max(hi, b.hi);
    }
    l.buffers_lo = lo;
    l.buffers_span = hi - lo;
}

// What the blocks touched, merged over the workers, handed to the stream work now running.
static void report_touches(const Launch& l) {
    for (size_t i = 0; i < l.buffers.size(); ++i) {
        Touch all;
        for (const Worker* w : pool.workers) {
            const Touch& t = w->touch[i];
            all.read_lo = std::min(all.read_lo, t.read_lo);
            all.read_hi = std::max(all.read_hi, t.read_hi);
            all.write_lo = std::min(all.write_lo, t.write_lo);
            all.write_hi = std::max(all.write_hi, t.write_hi);
        }
        if (all.read_lo < all.read_hi) note_access(all.read_lo, all.read_hi, false);
        if (all.write_lo < all.write_hi) note_access(all.write_lo, all.write_hi, true);
    }
}

// Launches whose global accesses were followed for the cross-stream check.
static std::atomic<uint64_t> followed_launches{0};

// ---- the profile (PREFER_EMU_PROFILE=1) --------------------------------------------------------
// Launches, blocks, threads and wall time per kernel, printed to stderr at exit, slowest first:
// where the software GPU's time goes, to choose what to make faster.
namespace {
struct KernelProfile {
    uint64_t launches = 0, blocks = 0, threads = 0;
    double seconds = 0;
};
struct Profile {
    std::mutex lock;
    std::vector<std::pair<const Kernel*, KernelProfile>> kernels;
};
Profile* profile_if_enabled() {
    static Profile* p = [] {
        const char* s = getenv("PREFER_EMU_PROFILE");
        if (!s || !*s || strcmp(s, "0") == 0) return (Profile*)nullptr;
        Profile* made = new Profile();
        atexit([] {
            Profile& p = *profile_if_enabled();
            std::lock_guard<std::mutex> g(p.lock);
            std::sort(p.kernels.begin(), p.kernels.end(),
                      [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
            double total = 0;
            for (const auto& k : p.kernels) total += k.second.seconds;
            fprintf(stderr, "\nsoftware GPU profile: %.2f s in kernels; %llu of %llu launches followed their accesses "
                            "(work on two streams could run unordered)\n%-40s %9s %11s %13s %9s %6s\n", total,
                    (unsigned long long)followed_launches.load(), (unsigned long long)pool.launches, "kernel", "launches", "blocks", "threads", "seconds", "share");
            for (const auto& [k, v] : p.kernels)
                fprintf(stderr, "%-40s %9llu %11llu %13llu %9.2f %5.1f%%\n", k->name, (unsigned long long)v.launches,
                        (unsigned long long)v.blocks, (unsigned long long)v.threads, v.seconds,
                        total > 0 ? 100 * v.seconds / total : 0.0);
        });
        return made;
    }();
    return p;
}
void record_profile(const Kernel* k, dim3 grid, dim3 block, double seconds) {
    Profile& p = *profile_if_enabled();
    std::lock_guard<std::mutex> g(p.lock);
    auto it = std::find_if(p.kernels.begin(), p.kernels.end(), [&](const auto& e) { return e.first == k; });
    if (it == p.kernels.end()) it = p.kernels.insert(p.kernels.end(), {k, KernelProfile{}});
    const uint64_t blocks = (uint64_t)grid.x * grid.y * grid.z;
    it->second.launches += 1;
    it->second.blocks += blocks;
    it->second.threads += blocks * block.x * block.y * block.z;
    it->second.seconds += seconds;
}
}  // namespace

int launch_kernel(const Kernel* k, dim3 grid, dim3 block, size_t dynamic_shared, void** params) {
    std::lock_guard<std::mutex> serial(pool.launch_lock);
    const auto started = std::chrono::steady_clock::now();
    {
        std::lock_guard<std::mutex> g(pool.lock);
        start_pool();
    }
    Launch l;
    l.kernel = k;
    l.params = params;
    l.grid = grid;
    l.block = block;
    l.dynamic_shared = dynamic_shared;
    l.id = pool.launches++;
    l.seed = current_seed();
    // Followed accesses while work on two streams may run unordered; before that, the whole
    // parameter buffers, counted as written (streams.cpp).
    std::vector<Buffer> whole;
    if (race_check_enabled.load(std::memory_order_relaxed)) {
        if (watching_accesses()) {
            watch_parameters(l, parameter_buffers(l));
            ++followed_launches;
        } else {
            whole = parameter_buffers(l);
        }
    }
    {
        std::unique_lock<std::mutex> g(pool.lock);
        pool.current = &l;
        pool.busy = pool.workers.size();
        ++pool.generation;
        pool.work_ready.notify_all();
        pool.work_done.wait(g, [] { return pool.busy == 0; });
        pool.current = nullptr;
    }
    if (profile_if_enabled())
        record_profile(k, grid, block, std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    if (l.failed) {
        set_error(l.error_code, l.error);
        return l.error_code;
    }
    report_touches(l);
    for (const Buffer& b : whole) note_access(b.lo, b.hi, true, true);
    const std::string guards = check_guards();
    if (!guards.empty()) {
        set_error(kIllegalAddress, format("kernel %s wrote outside its buffers: %s", k->name, guards.c_str()));
        return kIllegalAddress;
    }
    return 0;
}

}  // namespace emu
