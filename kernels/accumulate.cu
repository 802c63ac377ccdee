// A gradient shard's accumulation: under --shard full each micro-batch's reduce-scatter lands in a
// scratch piece, which is added to the rank's gradient shard. The CPU oracle is
// src/ops/cpu/accumulate.rs.
#include "common.cuh"

// dst (n) f32 += src (n) f32.
extern "C" __global__ void accumulate_f32(float* dst, const float* src, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] += src[i];
}
