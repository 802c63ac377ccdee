// Token embedding lookup and its deterministic backward.
// The CPU oracle is src/ops/cpu/embedding.rs; the launchers are src/ops/cuda/embedding.rs.
#include "common.cuh"

// out (N,D) bf16 = table[ids[n], :]; one block per token.
extern "C" __global__ void embedding_forward(__nv_bfloat16* out, const uint32_t* ids,
                                             const __nv_bfloat16* table, int n, int d) {
    const int row = blockIdx.x;
    if (row >= n) return;
    const __nv_bfloat16* src = table + (size_t)ids[row] * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) out[(size_t)row * d + i] = src[i];
}

// dtable (V,D) f32 += sum of dout rows per token, without float atomics: the host groups the
// positions of each distinct token (CSR: tokens[u], starts[u]..starts[u+1] into positions), and
// one block sums one token's rows in position order, so every run adds in the same order.
extern "C" __global__ void embedding_backward(float* dtable, const float* dout, const uint32_t* tokens,
                                              const uint32_t* starts, const uint32_t* positions,
                                              int unique, int d) {
    const int u = blockIdx.x;
    if (u >= unique) return;
    float* dst = dtable + (size_t)tokens[u] * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float s = 0.0f;
        for (uint32_t k = starts[u]; k < starts[u + 1]; ++k) s += dout[(size_t)positions[k] * d + i];
        dst[i] += s;
    }
}
