// The residual stream's add, and the cast that takes an f32 gradient into a matmul's bf16 input.
// The CPU oracle is src/ops/cpu/residual.rs (the cast is the identity there).
#include "common.cuh"

// out (n) bf16 = a + b, summed in f32.
extern "C" __global__ void residual_forward(__nv_bfloat16* out, const __nv_bfloat16* a, const __nv_bfloat16* b,
                                            size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(__bfloat162float(a[i]) + __bfloat162float(b[i]));
}

// out (n) bf16 = x (n) f32, rounded to nearest.
extern "C" __global__ void cast_to_bf16(__nv_bfloat16* out, const float* x, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(x[i]);
}
