// The SwiGLU gate, a = silu(gate) * up, elementwise over (N, F) bf16.
// The CPU oracle is src/ops/cpu/swiglu.rs; the launchers are src/ops/cuda/swiglu.rs.
#include "common.cuh"

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

extern "C" __global__ void swiglu_forward(__nv_bfloat16* out, const __nv_bfloat16* gate,
                                          const __nv_bfloat16* up, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = __bfloat162float(gate[i]);
    out[i] = __float2bfloat16(g * sigmoidf(g) * __bfloat162float(up[i]));
}

// dgate = dout * up * s(1 + g(1 - s)), dup = dout * silu(g); both written (not accumulated).
extern "C" __global__ void swiglu_backward(__nv_bfloat16* dgate, __nv_bfloat16* dup, const __nv_bfloat16* dout,
                                           const __nv_bfloat16* gate, const __nv_bfloat16* up, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = __bfloat162float(gate[i]), u = __bfloat162float(up[i]), d = __bfloat162float(dout[i]);
    const float s = sigmoidf(g);
    dgate[i] = __float2bfloat16(d * u * s * (1.0f + g * (1.0f - s)));
    dup[i] = __float2bfloat16(d * g * s);
}
