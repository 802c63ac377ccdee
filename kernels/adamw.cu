// AdamW over the flat fp32 master weights, writing the bf16 copy the forward reads, with the
// global gradient-norm clip folded in as a scale on the gradient.
// The CPU oracle is src/ops/cpu/adamw.rs; the launchers are src/ops/cuda/adamw.rs.
#include "common.cuh"

// Pass 1 of the global norm: partial[b] = sum of g^2 over block b's grid-stride share, in f64
// (each thread sums tens of thousands of squares at 8B parameters, where f32 loses the small
// ones). A fixed grid and a fixed order make the norm identical from run to run.
extern "C" __global__ void grad_norm_partial(double* partial, const float* grads, size_t n) {
    __shared__ double scratch[WARP_SIZE];
    double s = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += (double)grads[i] * (double)grads[i];
    s = block_sum_f64(s, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Pass 2: one block sums the partials; out[0] = the norm.
extern "C" __global__ void grad_norm_finish(float* out, const double* partial, int blocks) {
    __shared__ double scratch[WARP_SIZE];
    double s = 0.0;
    for (int i = threadIdx.x; i < blocks; i += blockDim.x) s += partial[i];
    s = block_sum_f64(s, scratch);
    if (threadIdx.x == 0) out[0] = (float)sqrt(s);
}

// Whether weight decay applies at i: not inside any of the `count` sorted, disjoint ranges
// [no_decay[2k], no_decay[2k+1]) (norm gains and biases, as transformers' Trainer exempts them).
// A binary search over a few dozen ranges that every thread reads, so they stay in cache.
__device__ __forceinline__ bool decays_at(size_t i, const unsigned long long* no_decay, int count) {
    int lo = 0, hi = count;  // the first range that ends after i
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (no_decay[2 * mid + 1] <= i) lo = mid + 1;
        else hi = mid;
    }
    return !(lo < count && no_decay[2 * lo] <= i);
}

// g = grads * clip_scale, where clip_scale = min(1, max_norm / (norm + 1e-6)) is computed on the
// device from norm[0], so the step needs no host round trip. max_norm <= 0 turns clipping off.
// bias1 = 1 - beta1^t, bias2 = 1 - beta2^t. no_decay [2·no_decay_count] (may be null when the
// count is 0): the ranges weight decay skips.
extern "C" __global__ void adamw_step(float* master, __nv_bfloat16* params_bf16, const float* grads, float* m,
                                      float* v, const float* norm, float max_norm, float lr, float beta1,
                                      float beta2, float eps, float weight_decay, float bias1, float bias2,
                                      const unsigned long long* no_decay, int no_decay_count, size_t n) {
    const float scale = (max_norm > 0.0f && norm[0] > max_norm) ? max_norm / (norm[0] + 1e-6f) : 1.0f;
    // Grid-stride: a fixed grid covers any parameter count (7B+ exceeds a u32 grid of threads).
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float g = grads[i] * scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        const float p = master[i];
        const float wd = decays_at(i, no_decay, no_decay_count) ? weight_decay : 0.0f;
        const float updated = p - lr * ((mi / bias1) / (sqrtf(vi / bias2) + eps) + wd * p);
        master[i] = updated;
        params_bf16[i] = __float2bfloat16(updated);
    }
}
