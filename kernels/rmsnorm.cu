// RMSNorm, y = x / sqrt(mean(x^2) + eps) * w, over rows of a (N, D) bf16 matrix; statistics in fp32.
// The CPU oracle is src/ops/cpu/rmsnorm.rs; the launchers are src/ops/cuda/rmsnorm.rs.
#include "common.cuh"

// One block per row. out (N,D) bf16, rstd (N) f32, x (N,D) bf16, w (D) bf16.
extern "C" __global__ void rmsnorm_forward(__nv_bfloat16* out, float* rstd, const __nv_bfloat16* x,
                                           const __nv_bfloat16* w, int n, int d, float eps) {
    __shared__ float scratch[WARP_SIZE];
    const int row = blockIdx.x;
    if (row >= n) return;
    const __nv_bfloat16* xr = x + (size_t)row * d;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = __bfloat162float(xr[i]);
        ss += v * v;
    }
    const float r = rsqrtf(block_sum(ss, scratch) / d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        out[(size_t)row * d + i] = __float2bfloat16(__bfloat162float(xr[i]) * r * __bfloat162float(w[i]));
    if (threadIdx.x == 0) rstd[row] = r;
}

// With xhat = x*rstd and g = dout*w:  dx += rstd * (g - xhat * mean(g*xhat)),
// and dw_partial[row] = dout * xhat, reduced over rows by the caller (deterministic, no atomics).
// dout (N,D) f32 (the sum of the matmul gradients that read the normed input), dx (N,D) f32
// accumulated, dw_partial (N,D) f32 overwritten.
extern "C" __global__ void rmsnorm_backward(float* dx, float* dw_partial, const float* dout,
                                            const __nv_bfloat16* x, const __nv_bfloat16* w,
                                            const float* rstd, int n, int d) {
    __shared__ float scratch[WARP_SIZE];
    const int row = blockIdx.x;
    if (row >= n) return;
    const size_t base = (size_t)row * d;
    const float r = rstd[row];
    float dot = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        dot += dout[base + i] * __bfloat162float(w[i]) * __bfloat162float(x[base + i]) * r;
    const float mean = block_sum(dot, scratch) / d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float go = dout[base + i];
        const float xhat = __bfloat162float(x[base + i]) * r;
        dx[base + i] += r * (go * __bfloat162float(w[i]) - xhat * mean);
        dw_partial[base + i] = go * xhat;
    }
}

// dw (D) += the column sums of x (N,D), in two passes with a fixed order, so every run adds the
// same way (no atomics). One pass over all N rows per column would give the whole grid
// ceil(D/256) blocks: 8 blocks on 132 SMs at D = 2048.
// Pass 1, grid (ceil(D/256), chunks): chunk_sums (chunks, D) = the sums of rows
// [c*rows_per_chunk, (c+1)*rows_per_chunk), one thread per column, rows in order (coalesced).
extern "C" __global__ void column_sum_chunks(float* chunk_sums, const float* x, int n, int d, int rows_per_chunk) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= d) return;
    const int first = blockIdx.y * rows_per_chunk, last = min(first + rows_per_chunk, n);
    float s = 0.0f;
    for (int row = first; row < last; ++row) s += x[(size_t)row * d + col];
    chunk_sums[(size_t)blockIdx.y * d + col] = s;
}

// Pass 2: dw (D) += the chunk sums of each column, chunks in order.
extern "C" __global__ void column_sum_finish(float* dw, const float* chunk_sums, int chunks, int d) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= d) return;
    float s = 0.0f;
    for (int c = 0; c < chunks; ++c) s += chunk_sums[(size_t)c * d + col];
    dw[col] += s;
}
