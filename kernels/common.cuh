// Shared helpers for every kernel file: bf16 conversion and warp/block reductions.
#pragma once
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#define WARP_SIZE 32

// A butterfly of xor-shuffles: for each offset from `first` to `last` (halving, or doubling), v
// becomes op(v, v of lane ^ offset). With first = 16, last = 1 every lane ends with the whole
// warp's sum or max. On the software GPU the whole butterfly is one warp collective with the same
// operations in the same order (emu/runtime/launch.cpp), so the lanes meet once instead of at
// every step; the arguments are the kernel's own either way.
enum ButterflyOp { BUTTERFLY_ADD, BUTTERFLY_MAX };

__device__ __forceinline__ float xor_butterfly(float v, int first, int last, ButterflyOp op) {
#ifdef __CUDACC__EMU
    const int emu_op = op == BUTTERFLY_ADD ? EMU_BUTTERFLY_ADD_F32 : EMU_BUTTERFLY_MAX_F32;
    return __uint_as_float((uint32_t)emu_xor_butterfly(0xffffffffu, emu_op, __float_as_uint(v), first, last));
#else
    for (int o = first;; o = first > last ? o / 2 : o * 2) {
        const float other = __shfl_xor_sync(0xffffffff, v, o);
        v = op == BUTTERFLY_ADD ? v + other : fmaxf(v, other);
        if (o == last) return v;
    }
#endif
}

__device__ __forceinline__ double xor_butterfly_sum_f64(double v, int first, int last) {
#ifdef __CUDACC__EMU
    const uint64_t bits = emu_xor_butterfly(0xffffffffu, EMU_BUTTERFLY_ADD_F64, __builtin_bit_cast(uint64_t, v),
                                            first, last);
    return __builtin_bit_cast(double, bits);
#else
    for (int o = first;; o = first > last ? o / 2 : o * 2) {
        v += __shfl_xor_sync(0xffffffff, v, o);
        if (o == last) return v;
    }
#endif
}

__device__ __forceinline__ float warp_sum(float v) { return xor_butterfly(v, WARP_SIZE / 2, 1, BUTTERFLY_ADD); }
__device__ __forceinline__ float warp_max(float v) { return xor_butterfly(v, WARP_SIZE / 2, 1, BUTTERFLY_MAX); }

// On the software GPU a block reduction is one barrier of the whole block whose last arrival
// computes, for every thread, what the CUDA code below computes (the same butterflies in the same
// order: the same bits), instead of a fiber switch per thread at each of its two barriers and two
// butterflies. The CUDA code itself runs there too, and must keep passing `prefer check`, in the
// planted-bug test's builds (tests/emu_mutants.rs: PREFER_EMU_FAITHFUL_BLOCK_REDUCE).
#if defined(__CUDACC__EMU) && !defined(PREFER_EMU_FAITHFUL_BLOCK_REDUCE)
#define EMU_BLOCK_REDUCE(op, bits) emu_block_reduce(op, bits)
#endif

// Sum over a block of up to 1024 threads; every thread gets the result.
// `scratch` holds one float per warp.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
#ifdef EMU_BLOCK_REDUCE
    (void)scratch;
    return __uint_as_float((uint32_t)EMU_BLOCK_REDUCE(EMU_BLOCK_SUM_F32, __float_as_uint(v)));
#endif
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int warps = (blockDim.x + WARP_SIZE - 1) / WARP_SIZE;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

// Max over a block, as block_sum.
__device__ __forceinline__ float block_max(float v, float* scratch) {
#ifdef EMU_BLOCK_REDUCE
    (void)scratch;
    return __uint_as_float((uint32_t)EMU_BLOCK_REDUCE(EMU_BLOCK_MAX_F32, __float_as_uint(v)));
#endif
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int warps = (blockDim.x + WARP_SIZE - 1) / WARP_SIZE;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

// f64 sum over a block of up to 1024 threads (every thread gets the result), for sums of many
// squares where f32 would drop the small terms. `scratch` holds one double per warp.
__device__ __forceinline__ double block_sum_f64(double v, double* scratch) {
#ifdef EMU_BLOCK_REDUCE
    (void)scratch;
    return __builtin_bit_cast(double, EMU_BLOCK_REDUCE(EMU_BLOCK_SUM_F64, __builtin_bit_cast(uint64_t, v)));
#endif
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int warps = (blockDim.x + WARP_SIZE - 1) / WARP_SIZE;
    v = xor_butterfly_sum_f64(v, WARP_SIZE / 2, 1);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0;
    return xor_butterfly_sum_f64(v, WARP_SIZE / 2, 1);
}

// log σ(x) and σ(x) in the sign-split stable forms of src/loss/numerics.rs (exp never overflows).
__device__ __forceinline__ float log_sigmoid(float x) { return x >= 0.0f ? -log1pf(expf(-x)) : x - log1pf(expf(x)); }
__device__ __forceinline__ float sigmoid(float x) {
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    const float e = expf(x);
    return e / (1.0f + e);
}
