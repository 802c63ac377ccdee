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

// dtable (V,D) f32 += the sum of dout rows per token, without float atomics and in a fixed order.
// The host groups each distinct token's positions (CSR: tokens[u], positions starts[u]..starts[u+1]).
// A short group is summed by its own block; a long one (a pad token repeated thousands of times)
// is first cut into chunks of EMB_CHUNK positions summed in parallel (embedding_backward_chunks),
// then its chunk sums are added in chunk order: chunks first[u]..first[u+1] (empty if short).
#define EMB_CHUNK 64

// partial (chunks, D) f32: chunk c sums positions chunks[2c]..chunks[2c+1].
// Grid (chunks, ceil(D / 256)).
extern "C" __global__ void embedding_backward_chunks(float* partial, const float* dout, const uint32_t* chunks,
                                                     const uint32_t* positions, int n_chunks, int d) {
    const int c = blockIdx.x, i = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= n_chunks || i >= d) return;
    float s = 0.0f;
    for (uint32_t k = chunks[2 * c]; k < chunks[2 * c + 1]; ++k) s += dout[(size_t)positions[k] * d + i];
    partial[(size_t)c * d + i] = s;
}

// Grid (unique, ceil(D / 256)).
extern "C" __global__ void embedding_backward(float* dtable, const float* dout, const float* partial,
                                              const uint32_t* tokens, const uint32_t* starts,
                                              const uint32_t* first, const uint32_t* positions, int unique, int d) {
    const int u = blockIdx.x, i = blockIdx.y * blockDim.x + threadIdx.x;
    if (u >= unique || i >= d) return;
    float s = 0.0f;
    if (first[u] == first[u + 1]) {
        for (uint32_t k = starts[u]; k < starts[u + 1]; ++k) s += dout[(size_t)positions[k] * d + i];
    } else {
        for (uint32_t c = first[u]; c < first[u + 1]; ++c) s += partial[(size_t)c * d + i];
    }
    dtable[(size_t)tokens[u] * d + i] += s;
}
