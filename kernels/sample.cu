// Sampling one token per row of f32 logits: greedy, temperature, top-k, top-p, with no sort. The
// CPU oracle, with the steps spelled out, is src/ops/cpu/sample.rs; this kernel takes the same
// steps. One block of SAMPLE_THREADS per row; thread t owns the contiguous slice
// [t·c, (t+1)·c) of the vocabulary, so "vocabulary order" is thread order, then slice order.
#include "common.cuh"

#define SAMPLE_THREADS 256

__device__ __forceinline__ uint32_t order_key(float x) {
    const uint32_t b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// ids[N], logprobs[N] from logits[N, V] and uniforms[N] in [0, 1).
extern "C" __global__ void sample_tokens(uint32_t* ids, float* logprobs, const float* logits,
                                         const float* uniforms, int n, int vocab, float temperature,
                                         int top_k, float top_p) {
    __shared__ float scratch[WARP_SIZE];
    __shared__ float slice_mass[SAMPLE_THREADS];
    const int row = blockIdx.x, t = threadIdx.x;
    if (row >= n) return;
    const float* x = logits + (size_t)row * vocab;
    const int c = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    const int lo = min(vocab, t * c), hi = min(vocab, lo + c);

    float mx = -INFINITY;
    for (int i = lo; i < hi; i++) mx = fmaxf(mx, x[i]);
    mx = block_max(mx, scratch);

    if (temperature == 0.0f) {
        // Greedy: the first index holding the max; its log-prob under the untempered model.
        float first = (float)vocab, s = 0.0f;
        for (int i = lo; i < hi; i++) {
            if (x[i] == mx && (float)i < first) first = (float)i;
            s += expf(x[i] - mx);
        }
        s = block_sum(s, scratch);
        first = -block_max(-first, scratch);
        if (t == 0) {
            const int id = (int)first;
            ids[row] = (uint32_t)id;
            logprobs[row] = x[id] - (mx + logf(s));
        }
        return;
    }

    const float inv_t = 1.0f / temperature, m = mx * inv_t;
    uint32_t floor_key = 0;
    if (top_k > 0 && top_k < vocab) {
        for (int bit = 31; bit >= 0; bit--) {
            const uint32_t cand = floor_key | (1u << bit);
            float count = 0.0f;
            for (int i = lo; i < hi; i++) count += order_key(x[i] * inv_t) >= cand ? 1.0f : 0.0f;
            if (block_sum(count, scratch) >= (float)top_k) floor_key = cand;
        }
    }
    if (top_p < 1.0f) {
        float mass = 0.0f;
        for (int i = lo; i < hi; i++)
            if (order_key(x[i] * inv_t) >= floor_key) mass += expf(x[i] * inv_t - m);
        const float target = top_p * block_sum(mass, scratch);
        uint32_t tp = 0;
        for (int bit = 31; bit >= 0; bit--) {
            const uint32_t cand = tp | (1u << bit);
            const uint32_t at = cand > floor_key ? cand : floor_key;
            float mm = 0.0f;
            for (int i = lo; i < hi; i++)
                if (order_key(x[i] * inv_t) >= at) mm += expf(x[i] * inv_t - m);
            if (block_sum(mm, scratch) >= target) tp = cand;
        }
        if (tp > floor_key) floor_key = tp;
    }

    // Inverse CDF in vocabulary order: each thread's slice mass, then thread 0 walks the slices.
    float mine = 0.0f;
    for (int i = lo; i < hi; i++)
        if (order_key(x[i] * inv_t) >= floor_key) mine += expf(x[i] * inv_t - m);
    slice_mass[t] = mine;
    __syncthreads();
    if (t == 0) {
        float z = 0.0f;
        for (int s = 0; s < SAMPLE_THREADS; s++) z += slice_mass[s];
        const float target = uniforms[row] * z;
        float cum = 0.0f;
        int id = -1;
        for (int s = 0; s < SAMPLE_THREADS; s++) {
            const int slo = min(vocab, s * c), shi = min(vocab, slo + c);
            if (id >= 0 && cum + slice_mass[s] <= target) {
                cum += slice_mass[s];
                continue;
            }
            bool done = false;
            for (int i = slo; i < shi; i++) {
                if (order_key(x[i] * inv_t) < floor_key) continue;
                cum += expf(x[i] * inv_t - m);
                id = i;
                if (cum > target) {
                    done = true;
                    break;
                }
            }
            if (done) break;
        }
        ids[row] = (uint32_t)id;
        logprobs[row] = x[id] * inv_t - m - logf(z);
    }
}
