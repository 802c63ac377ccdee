// The software GPU's shim: what kernels/*.cu need from CUDA, with CUDA's semantics, for g++.
//
// The kernel text is compiled unchanged. Each GPU thread runs as a fiber (emu/runtime/fiber.cpp);
// the fiber's stack is aligned to EMU_STACK_BYTES and begins with an EmuThreadInfo, so the
// built-ins (threadIdx, blockIdx, ...) are read from the stack pointer with no thread-local.
// __shared__ variables are thread_local: all fibers of a block run on one OS thread, so they see
// one copy, and blocks on other threads see theirs. Barriers, warp collectives and atomics call
// the runtime (emu/runtime/), which implements them for real among the block's fibers.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <type_traits>

#if !defined(__x86_64__)
#error "the software GPU's fibers are written for x86-64"
#endif

// ---- qualifiers ------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __shared__ thread_local
#define __constant__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __CUDACC__EMU 1
#define warpSize 32

// ---- built-in variables ----------------------------------------------------------------------
struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};

#define EMU_STACK_BYTES (128u * 1024u)

// At the base of every fiber stack. Written by the runtime before the fiber starts.
struct EmuThreadInfo {
    uint3 thread_idx;
    uint3 block_idx;
    uint3 block_dim;
    uint3 grid_dim;
    unsigned int lane;    // linear thread index % 32
    unsigned int linear;  // x + y*bx + z*bx*by
    void* fiber;          // the runtime's record of this thread
    // This OS thread's shared memory, copied here so the race check's hooks can pass over every
    // other access (global memory, the stack) with two loads from this hot page.
    uintptr_t shared_lo, shared_size;
    // Whether this launch's global accesses are recorded for the cross-stream race check.
    uintptr_t track_global;
};
static_assert(sizeof(EmuThreadInfo) <= 128, "one slot of the stack's first page (emu_info_of_stack)");

// Plain (non-volatile) asm: the compiler may keep these values in registers across a kernel, and
// the thread sanitizer's instrumentation (the race check) does not see them as memory accesses.
//
// The info sits in the first page of the stack at one of 32 slots of 128 bytes, chosen by the
// stack's index: at offset 0 of every 128 KiB-aligned stack, the infos of a block's threads would
// all share one set of the L1 and L2 caches and evict one another at every switch.
static __forceinline__ EmuThreadInfo* emu_info_of_stack(uintptr_t base) {
    return (EmuThreadInfo*)(base + ((base / EMU_STACK_BYTES) % 32) * 128);
}
static __forceinline__ const EmuThreadInfo* emu_info() {
    uintptr_t sp;
    asm("movq %%rsp, %0" : "=r"(sp));
    return emu_info_of_stack(sp & ~(uintptr_t)(EMU_STACK_BYTES - 1));
}
static __forceinline__ uint3 emu_read_uint3(const uint3* p) {
    uint3 v;
    asm("movl (%3), %0\n\tmovl 4(%3), %1\n\tmovl 8(%3), %2" : "=&r"(v.x), "=&r"(v.y), "=&r"(v.z) : "r"(p));
    return v;
}
static __forceinline__ unsigned emu_read_u32(const unsigned* p) {
    unsigned v;
    asm("movl (%1), %0" : "=r"(v) : "r"(p));
    return v;
}
#define threadIdx (emu_read_uint3(&emu_info()->thread_idx))
#define blockIdx (emu_read_uint3(&emu_info()->block_idx))
#define blockDim (emu_read_uint3(&emu_info()->block_dim))
#define gridDim (emu_read_uint3(&emu_info()->grid_dim))
#define emu_lane() (emu_read_u32(&emu_info()->lane))

// ---- the runtime's side (emu/runtime/launch.cpp) ----------------------------------------------
enum EmuVote : int {
    EMU_BALLOT,
    EMU_ANY,
    EMU_ALL,
    EMU_REDUCE_ADD,
    EMU_REDUCE_MIN_U,
    EMU_REDUCE_MAX_U,
    EMU_REDUCE_MIN_I,
    EMU_REDUCE_MAX_I,
    EMU_REDUCE_AND,
    EMU_REDUCE_OR,
    EMU_REDUCE_XOR,
};
enum EmuBarrierOp : int { EMU_SYNC_PLAIN, EMU_SYNC_COUNT, EMU_SYNC_AND, EMU_SYNC_OR };
enum EmuButterflyOp : int { EMU_BUTTERFLY_ADD_F32, EMU_BUTTERFLY_MAX_F32, EMU_BUTTERFLY_ADD_F64 };
// Block-wide reductions (kernels/common.cuh's block_sum, block_max, block_sum_f64), as one barrier.
enum EmuBlockReduce : int { EMU_BLOCK_SUM_F32 = 16, EMU_BLOCK_MAX_F32, EMU_BLOCK_SUM_F64 };

extern "C" {
int emu_syncthreads_op(int op, int predicate);
void emu_syncwarp(unsigned mask);
// Every lane in `mask` deposits `value` and names the lane it reads; returns that lane's value.
uint32_t emu_shfl(unsigned mask, uint32_t value, int src_lane);
void emu_warp_gather(unsigned mask, const uint32_t* mine, uint32_t words, uint32_t* all);
uint32_t emu_vote(unsigned mask, int op, uint32_t value);
// A butterfly of xor-shuffles as one collective (kernels/common.cuh's xor_butterfly): for each
// offset from `first` to `last` (halving, or doubling), every lane's value becomes
// op(its value, the value of lane ^ offset), both from before the step. `value` holds an f32's
// bits (EMU_BUTTERFLY_ADD_F32, _MAX_F32) or an f64's (EMU_BUTTERFLY_ADD_F64).
uint64_t emu_xor_butterfly(unsigned mask, int op, uint64_t value, int first, int last);
// kernels/common.cuh's block reduction as one __syncthreads of the whole block: every thread gives
// its value (an f32's bits, or an f64's for EMU_BLOCK_SUM_F64) and gets back what the CUDA code
// computes: each warp's xor butterfly (offsets 16 to 1), then the butterfly of the warps' results
// (0, or -inf for the max, past the last warp), in the same order of operations, so the same bits.
uint64_t emu_block_reduce(int op, uint64_t value);
// mma.m16n8k16 (bf16 in, f32 accumulate) as one collective of the whole warp (kernels/mma.cuh):
// each lane gives its four A and two B registers in `mine` and its four accumulators in `d`,
// which come back as the instruction leaves them. The last lane to arrive widens A and B once and
// computes all 32 lanes' D.
void emu_mma_bf16_16816(unsigned mask, const uint32_t mine[6], float d[4]);
unsigned emu_activemask(void);
[[noreturn]] void emu_trap(const char* why);
float emu_atomic_add_f32(float* p, float v);
double emu_atomic_add_f64(double* p, double v);
uint32_t emu_atomic_rmw_u32(uint32_t* p, int op, uint32_t v);
uint64_t emu_atomic_rmw_u64(uint64_t* p, int op, uint64_t v);
uint32_t emu_atomic_cas_u32(uint32_t* p, uint32_t expected, uint32_t desired);
uint64_t emu_atomic_cas_u64(uint64_t* p, uint64_t expected, uint64_t desired);
void emu_threadfence(void);
long long emu_clock64(void);
}

// ---- asynchronous copies (emu/runtime/cp_async.cpp), called by kernels/mma.cuh's wrappers ------
extern "C" {
// 16 bytes, landed (or zeros, when !valid) by a later emu_cp_async_wait of this thread.
void emu_cp_async(void* dst, const void* src, int valid);
void emu_cp_async_commit(void);
// Lands this thread's committed copies but those of its newest `pending` groups.
void emu_cp_async_wait(int pending);
}

// ---- barriers and warp collectives -----------------------------------------------------------
static __forceinline__ void __syncthreads() { emu_syncthreads_op(EMU_SYNC_PLAIN, 0); }
static __forceinline__ int __syncthreads_count(int p) { return emu_syncthreads_op(EMU_SYNC_COUNT, p); }
static __forceinline__ int __syncthreads_and(int p) { return emu_syncthreads_op(EMU_SYNC_AND, p); }
static __forceinline__ int __syncthreads_or(int p) { return emu_syncthreads_op(EMU_SYNC_OR, p); }
static __forceinline__ void __syncwarp(unsigned mask = 0xffffffffu) { emu_syncwarp(mask); }
static __forceinline__ unsigned __activemask() { return emu_activemask(); }
static __forceinline__ void __threadfence() { emu_threadfence(); }
static __forceinline__ void __threadfence_block() { emu_threadfence(); }
static __forceinline__ long long clock64() { return emu_clock64(); }
#define __trap() emu_trap("__trap() called")

// A shuffle moves 32 bits; wider types go as several.
template <typename T>
static __forceinline__ T emu_shfl_value(unsigned mask, T var, int src) {
    static_assert(sizeof(T) % 4 == 0 || sizeof(T) < 4, "shuffles move 32-bit words");
    if constexpr (sizeof(T) < 4) {
        uint32_t w = 0;
        __builtin_memcpy(&w, &var, sizeof(T));
        w = emu_shfl(mask, w, src);
        T out;
        __builtin_memcpy(&out, &w, sizeof(T));
        return out;
    } else {
        uint32_t w[sizeof(T) / 4];
        __builtin_memcpy(w, &var, sizeof(T));
        for (unsigned i = 0; i < sizeof(T) / 4; ++i) w[i] = emu_shfl(mask, w[i], src);
        T out;
        __builtin_memcpy(&out, w, sizeof(T));
        return out;
    }
}

// Source lanes as the CUDA programming guide defines them for a sub-warp of `width` lanes.
template <typename T>
static __forceinline__ T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
    const int lane = (int)emu_lane();
    const int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
    return emu_shfl_value(mask, var, src);
}
template <typename T>
static __forceinline__ T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    const int lane = (int)emu_lane();
    const int src = (lane & (width - 1)) >= (int)delta ? lane - (int)delta : lane;
    return emu_shfl_value(mask, var, src);
}
template <typename T>
static __forceinline__ T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    const int lane = (int)emu_lane();
    const int src = (lane & (width - 1)) + (int)delta < width ? lane + (int)delta : lane;
    return emu_shfl_value(mask, var, src);
}
template <typename T>
static __forceinline__ T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
    const int lane = (int)emu_lane();
    int src = lane ^ lane_mask;
    // A lane may read earlier sub-warps but not later ones: those give its own value back.
    if (src >= ((lane / width) + 1) * width) src = lane;
    return emu_shfl_value(mask, var, src);
}

static __forceinline__ unsigned __ballot_sync(unsigned mask, int p) { return emu_vote(mask, EMU_BALLOT, p != 0); }
static __forceinline__ int __any_sync(unsigned mask, int p) { return (int)emu_vote(mask, EMU_ANY, p != 0); }
static __forceinline__ int __all_sync(unsigned mask, int p) { return (int)emu_vote(mask, EMU_ALL, p != 0); }
static __forceinline__ unsigned __reduce_add_sync(unsigned mask, unsigned v) { return emu_vote(mask, EMU_REDUCE_ADD, v); }
static __forceinline__ int __reduce_add_sync(unsigned mask, int v) { return (int)emu_vote(mask, EMU_REDUCE_ADD, (uint32_t)v); }
static __forceinline__ unsigned __reduce_min_sync(unsigned mask, unsigned v) { return emu_vote(mask, EMU_REDUCE_MIN_U, v); }
static __forceinline__ int __reduce_min_sync(unsigned mask, int v) { return (int)emu_vote(mask, EMU_REDUCE_MIN_I, (uint32_t)v); }
static __forceinline__ unsigned __reduce_max_sync(unsigned mask, unsigned v) { return emu_vote(mask, EMU_REDUCE_MAX_U, v); }
static __forceinline__ int __reduce_max_sync(unsigned mask, int v) { return (int)emu_vote(mask, EMU_REDUCE_MAX_I, (uint32_t)v); }
static __forceinline__ unsigned __reduce_and_sync(unsigned mask, unsigned v) { return emu_vote(mask, EMU_REDUCE_AND, v); }
static __forceinline__ unsigned __reduce_or_sync(unsigned mask, unsigned v) { return emu_vote(mask, EMU_REDUCE_OR, v); }
static __forceinline__ unsigned __reduce_xor_sync(unsigned mask, unsigned v) { return emu_vote(mask, EMU_REDUCE_XOR, v); }

// ---- atomics (real ones: blocks run in parallel on OS threads) --------------------------------
enum EmuRmw : int { EMU_RMW_ADD, EMU_RMW_SUB, EMU_RMW_EXCH, EMU_RMW_MIN, EMU_RMW_MAX, EMU_RMW_MIN_S, EMU_RMW_MAX_S, EMU_RMW_AND, EMU_RMW_OR, EMU_RMW_XOR, EMU_RMW_INC, EMU_RMW_DEC };

static __forceinline__ float atomicAdd(float* p, float v) { return emu_atomic_add_f32(p, v); }
static __forceinline__ double atomicAdd(double* p, double v) { return emu_atomic_add_f64(p, v); }
static __forceinline__ int atomicAdd(int* p, int v) { return (int)emu_atomic_rmw_u32((uint32_t*)p, EMU_RMW_ADD, (uint32_t)v); }
static __forceinline__ unsigned atomicAdd(unsigned* p, unsigned v) { return emu_atomic_rmw_u32(p, EMU_RMW_ADD, v); }
static __forceinline__ unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return emu_atomic_rmw_u64((uint64_t*)p, EMU_RMW_ADD, v); }
static __forceinline__ int atomicSub(int* p, int v) { return (int)emu_atomic_rmw_u32((uint32_t*)p, EMU_RMW_SUB, (uint32_t)v); }
static __forceinline__ unsigned atomicSub(unsigned* p, unsigned v) { return emu_atomic_rmw_u32(p, EMU_RMW_SUB, v); }
static __forceinline__ int atomicExch(int* p, int v) { return (int)emu_atomic_rmw_u32((uint32_t*)p, EMU_RMW_EXCH, (uint32_t)v); }
static __forceinline__ unsigned atomicExch(unsigned* p, unsigned v) { return emu_atomic_rmw_u32(p, EMU_RMW_EXCH, v); }
static __forceinline__ float atomicExch(float* p, float v) {
    return __builtin_bit_cast(float, emu_atomic_rmw_u32((uint32_t*)p, EMU_RMW_EXCH, __builtin_bit_cast(uint32_t, v)));
}
static __forceinline__ int atomicMin(int* p, int v) { return (int)emu_atomic_rmw_u32((uint32_t*)p, EMU_RMW_MIN_S, (uint32_t)v); }
static __forceinline__ unsigned atomicMin(unsigned* p, unsigned v) { return emu_atomic_rmw_u32(p, EMU_RMW_MIN, v); }
static __forceinline__ int atomicMax(int* p, int v) { return (int)emu_atomic_rmw_u32((uint32_t*)p, EMU_RMW_MAX_S, (uint32_t)v); }
static __forceinline__ unsigned atomicMax(unsigned* p, unsigned v) { return emu_atomic_rmw_u32(p, EMU_RMW_MAX, v); }
static __forceinline__ unsigned atomicAnd(unsigned* p, unsigned v) { return emu_atomic_rmw_u32(p, EMU_RMW_AND, v); }
static __forceinline__ unsigned atomicOr(unsigned* p, unsigned v) { return emu_atomic_rmw_u32(p, EMU_RMW_OR, v); }
static __forceinline__ unsigned atomicXor(unsigned* p, unsigned v) { return emu_atomic_rmw_u32(p, EMU_RMW_XOR, v); }
static __forceinline__ unsigned atomicInc(unsigned* p, unsigned v) { return emu_atomic_rmw_u32(p, EMU_RMW_INC, v); }
static __forceinline__ unsigned atomicDec(unsigned* p, unsigned v) { return emu_atomic_rmw_u32(p, EMU_RMW_DEC, v); }
static __forceinline__ int atomicCAS(int* p, int e, int d) { return (int)emu_atomic_cas_u32((uint32_t*)p, (uint32_t)e, (uint32_t)d); }
static __forceinline__ unsigned atomicCAS(unsigned* p, unsigned e, unsigned d) { return emu_atomic_cas_u32(p, e, d); }
static __forceinline__ unsigned long long atomicCAS(unsigned long long* p, unsigned long long e, unsigned long long d) {
    return emu_atomic_cas_u64((uint64_t*)p, e, d);
}

// ---- math ------------------------------------------------------------------------------------
// glibc already declares __expf and friends as its internal names, so these are macros.
#define __expf(x) expf(x)
#define __logf(x) logf(x)
#define __log2f(x) log2f(x)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanf(x) tanf(x)
#define __powf(x, y) powf(x, y)
#define __exp10f(x) exp10f(x)
#define __fdividef(x, y) ((x) / (y))
#define __fmaf_rn(x, y, z) fmaf(x, y, z)
#define __fadd_rn(x, y) ((x) + (y))
#define __fmul_rn(x, y) ((x) * (y))
#define __frcp_rn(x) (1.0f / (x))
#define __fsqrt_rn(x) sqrtf(x)
#define __ldg(p) (*(p))
// The GPU's rsqrtf is approximate (about 2 ulp); the CPU's is exact. Comparisons keep tolerances.
static __forceinline__ float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static __forceinline__ float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
static __forceinline__ int __float_as_int(float x) { return __builtin_bit_cast(int, x); }
static __forceinline__ unsigned __float_as_uint(float x) { return __builtin_bit_cast(unsigned, x); }
static __forceinline__ float __int_as_float(int x) { return __builtin_bit_cast(float, x); }
static __forceinline__ float __uint_as_float(unsigned x) { return __builtin_bit_cast(float, x); }
static __forceinline__ int __popc(unsigned x) { return __builtin_popcount(x); }
static __forceinline__ int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static __forceinline__ int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
static __forceinline__ int __ffs(unsigned x) { return __builtin_ffs((int)x); }
template <typename A, typename B>
static __forceinline__ std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <typename A, typename B>
static __forceinline__ std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }

// ---- bf16 and half: CUDA's round-to-nearest-even conversions, bit for bit -----------------------
static __forceinline__ unsigned short emu_f32_to_bf16_bits(float f) {
    uint32_t u = __builtin_bit_cast(uint32_t, f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;  // cvt.rn.bf16.f32 gives the canonical NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
static __forceinline__ float emu_bf16_bits_to_f32(unsigned short b) {
    return __builtin_bit_cast(float, (uint32_t)b << 16);
}
static __forceinline__ unsigned short emu_f32_to_f16_bits(float f) {
    const uint32_t x = __builtin_bit_cast(uint32_t, f);
    const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fffu;                      // canonical NaN
    if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // rounds to infinity
    if (ax < 0x38800000u) {                                     // subnormal (or zero) half
        const float scaled = __builtin_bit_cast(float, ax) * 16777216.0f;  // exact: a power of 2
        return (unsigned short)(sign | (uint32_t)nearbyintf(scaled));     // nearest even
    }
    uint32_t h = (((ax >> 23) - 112u) << 10) | ((ax & 0x7fffffu) >> 13);
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return (unsigned short)(sign | h);
}
static __forceinline__ float emu_f16_bits_to_f32(unsigned short h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        const float v = (float)m / 16777216.0f;  // m * 2^-24
        return sign ? -v : v;
    }
    if (e == 31) return __builtin_bit_cast(float, sign | 0x7f800000u | (m << 13));
    return __builtin_bit_cast(float, sign | ((e + 112u) << 23) | (m << 13));
}

struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(emu_f32_to_bf16_bits(f)) {}
    operator float() const { return emu_bf16_bits_to_f32(__x); }
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

struct __half {
    unsigned short __x;
    __half() = default;
    __half(float f) : __x(emu_f32_to_f16_bits(f)) {}
    operator float() const { return emu_f16_bits_to_f32(__x); }
};
struct __half2 {
    __half x, y;
};
typedef __half half;

struct __attribute__((aligned(8))) float2 {
    float x, y;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8))) int2 {
    int x, y;
};
struct __attribute__((aligned(16))) int4 {
    int x, y, z, w;
};
struct __attribute__((aligned(8))) uint2 {
    unsigned x, y;
};
struct __attribute__((aligned(16))) uint4 {
    unsigned x, y, z, w;
};
static __forceinline__ float2 make_float2(float x, float y) { return {x, y}; }
static __forceinline__ float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

static __forceinline__ __nv_bfloat16 emu_bf16_from_bits(unsigned short b) {
    __nv_bfloat16 r;
    r.__x = b;
    return r;
}
static __forceinline__ float __bfloat162float(__nv_bfloat16 b) { return emu_bf16_bits_to_f32(b.__x); }
static __forceinline__ __nv_bfloat16 __float2bfloat16(float f) { return emu_bf16_from_bits(emu_f32_to_bf16_bits(f)); }
static __forceinline__ __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
static __forceinline__ unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
static __forceinline__ __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return emu_bf16_from_bits(u); }
static __forceinline__ __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16(a), __float2bfloat16(b)}; }
static __forceinline__ __nv_bfloat162 __float2bfloat162_rn(float a) { return {__float2bfloat16(a), __float2bfloat16(a)}; }
static __forceinline__ float2 __bfloat1622float2(__nv_bfloat162 v) { return {__bfloat162float(v.x), __bfloat162float(v.y)}; }
static __forceinline__ __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) { return __float2bfloat16((float)a + (float)b); }
static __forceinline__ __nv_bfloat16 __hsub(__nv_bfloat16 a, __nv_bfloat16 b) { return __float2bfloat16((float)a - (float)b); }
static __forceinline__ __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) { return __float2bfloat16((float)a * (float)b); }
static __forceinline__ __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
    return __float2bfloat16(fmaf((float)a, (float)b, (float)c));
}

static __forceinline__ float __half2float(__half h) { return emu_f16_bits_to_f32(h.__x); }
static __forceinline__ __half __float2half(float f) {
    __half r;
    r.__x = emu_f32_to_f16_bits(f);
    return r;
}
static __forceinline__ __half __float2half_rn(float f) { return __float2half(f); }
static __forceinline__ unsigned short __half_as_ushort(__half h) { return h.__x; }
