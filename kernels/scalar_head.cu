// The scalar head of reward and value models: value (N) f32 = h (N,D) bf16 . w (D) bf16.
// The CPU oracle is src/ops/cpu/scalar_head.rs; the launchers are src/ops/cuda/scalar_head.rs.
#include "common.cuh"

// One block per token.
extern "C" __global__ void scalar_head_forward(float* value, const __nv_bfloat16* h, const __nv_bfloat16* w,
                                               int n, int d) {
    __shared__ float scratch[WARP_SIZE];
    const int row = blockIdx.x;
    if (row >= n) return;
    float s = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        s += __bfloat162float(h[(size_t)row * d + i]) * __bfloat162float(w[i]);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) value[row] = s;
}

// dh (N,D) f32 += dvalue * w; dw_partial (N,D) f32 = dvalue * h, reduced over rows by
// column_sum_accumulate (kernels/rmsnorm.cu) for a deterministic dw.
extern "C" __global__ void scalar_head_backward(float* dh, float* dw_partial, const float* dvalue,
                                                const __nv_bfloat16* h, const __nv_bfloat16* w, int n, int d) {
    const int row = blockIdx.x;
    if (row >= n) return;
    const float dv = dvalue[row];
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const size_t k = (size_t)row * d + i;
        dh[k] += dv * __bfloat162float(w[i]);
        dw_partial[k] = dv * __bfloat162float(h[k]);
    }
}
