// The fused LM head: next-token log-probs and entropies without the (N, V) logits. The vocabulary
// is streamed in chunks: cuBLASLt writes one chunk's logits (N, Vc) f32, these kernels fold it
// into a running (max, sum exp, sum exp*z) per token, an online logsumexp. The backward
// recomputes each chunk's logits, turns them into d(logits) here, and two more GEMMs write
// d(hidden) and d(W) (src/ops/cuda/logprob.rs). The CPU oracle is src/ops/cpu/logprob.rs.
#include "common.cuh"
#include <math.h>

// One block per token: fold logits (N, vc) of vocabulary [c0, c0 + vc) into the running state
// run_max, run_sum = sum exp(z - run_max), run_sumz = sum exp(z - run_max) * z, and pick up the
// target's logit when it falls in this chunk. The first chunk (c0 == 0) starts the state rather
// than folding into it, so no reset pass (or host copy) is needed between calls.
extern "C" __global__ void logprob_chunk_forward(float* run_max, float* run_sum, float* run_sumz,
                                                 float* target_logit, const float* logits,
                                                 const uint32_t* targets, int n, int vc, int c0) {
    __shared__ float scratch[WARP_SIZE];
    const int row = blockIdx.x;
    if (row >= n) return;
    const float* z = logits + (size_t)row * vc;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < vc; j += blockDim.x) m = fmaxf(m, z[j]);
    m = block_max(m, scratch);
    float s = 0.0f, sz = 0.0f;
    for (int j = threadIdx.x; j < vc; j += blockDim.x) {
        const float e = expf(z[j] - m);
        s += e;
        sz += e * z[j];
    }
    s = block_sum(s, scratch);
    sz = block_sum(sz, scratch);
    if (threadIdx.x == 0) {
        const bool first = c0 == 0;
        const float m_old = first ? -INFINITY : run_max[row];
        const float m_new = fmaxf(m_old, m);
        const float a = m_old == -INFINITY ? 0.0f : expf(m_old - m_new), b = expf(m - m_new);
        run_sum[row] = (first ? 0.0f : run_sum[row] * a) + s * b;
        run_sumz[row] = (first ? 0.0f : run_sumz[row] * a) + sz * b;
        run_max[row] = m_new;
        const int t = (int)targets[row] - c0;
        if (t >= 0 && t < vc) target_logit[row] = z[t];
    }
}

// lse = max + log(sum), logp = z_target - lse, entropy = lse - sumz / sum. One thread per token.
extern "C" __global__ void logprob_finish(float* logp, float* entropy, float* lse, const float* run_max,
                                          const float* run_sum, const float* run_sumz, const float* target_logit,
                                          int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float l = run_max[i] + logf(run_sum[i]);
    lse[i] = l;
    logp[i] = target_logit[i] - l;
    entropy[i] = l - run_sumz[i] / run_sum[i];
}

// d(logits) (N, vc) bf16 of one chunk: dz_v = dlogp (1[v = target] - p_v) - dent p_v (log p_v + H),
// with p = exp(z - lse). dentropy may be null (no entropy term).
extern "C" __global__ void logprob_chunk_backward(__nv_bfloat16* dlogits, const float* logits, const float* lse,
                                                  const float* entropy, const float* dlogp, const float* dentropy,
                                                  const uint32_t* targets, int n, int vc, int c0, float scale) {
    const int row = blockIdx.x;
    if (row >= n) return;
    const float gl = dlogp[row], ge = dentropy ? dentropy[row] : 0.0f, l = lse[row], h = entropy[row];
    const int t = (int)targets[row] - c0;
    for (int j = threadIdx.x; j < vc; j += blockDim.x) {
        const size_t k = (size_t)row * vc + j;
        const float log_p = logits[k] - l;
        const float p = expf(log_p);
        float dz = -gl * p - ge * p * (log_p + h);
        if (j == t) dz += gl;
        // The logits were scale·(h·Wᵀ) (1/temperature): d(h·Wᵀ) = scale·dz.
        dlogits[k] = __float2bfloat16(dz * scale);
    }
}
