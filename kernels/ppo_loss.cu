// PPO's losses on the device, fused: each token's loss, its gradient and the metrics' sums in one
// pass, so the trainer never brings log-probs or values to the host. The CPU oracle (the
// src/loss functions the trainer checks against) is src/ops/cpu/ppo_loss.rs.
//
// Tokens are split into contiguous per-block ranges; each thread sums its tokens in order in
// f64, and each block reduces its threads in a fixed tree and writes one row of `partials`, which
// the host adds in block order: the result does not depend on timing.
#include "common.cuh"

#define LOSS_THREADS 256

// Reduces `v[0..k]` of every thread into thread 0's, through `s` [LOSS_THREADS][k].
template <int K>
__device__ __forceinline__ void block_sums(double (&v)[K], double (*s)[K]) {
    for (int j = 0; j < K; j++) s[threadIdx.x][j] = v[j];
    __syncthreads();
    for (int stride = LOSS_THREADS / 2; stride > 0; stride >>= 1) {
        if ((int)threadIdx.x < stride)
            for (int j = 0; j < K; j++) s[threadIdx.x][j] += s[threadIdx.x + stride][j];
        __syncthreads();
    }
    for (int j = 0; j < K; j++) v[j] = s[0][j];
}

// grad (n) = grad_scale · (w·∂ℓ/∂logp + kl_coef·w·∂k3/∂logp); partials [blocks, 5]: Σ w·ℓ,
// valid tokens, clipped tokens, Σ ½(logp − old)², Σ ratio. w = weights (0 at masked tokens).
// ref_logp may be null (no KL term); kl_clamp < 0 means no clamp.
extern "C" __global__ void ppo_policy_loss(float* grad, double* partials, const float* logp, const float* old_logp,
                                           const float* adv, const float* weights, const float* ref_logp, int n,
                                           int per_block, float clip, float kl_coef, float kl_clamp,
                                           float grad_scale) {
    __shared__ double s[LOSS_THREADS][5];
    double acc[5] = {0, 0, 0, 0, 0};
    const int lo = blockIdx.x * per_block, hi = min(n, lo + per_block);
    for (int i = lo + threadIdx.x; i < hi; i += LOSS_THREADS) {
        const float w = weights[i];
        if (w == 0.0f) {
            grad[i] = 0.0f;
            continue;
        }
        const float a = adv[i], log_ratio = logp[i] - old_logp[i], ratio = expf(log_ratio);
        const float unclipped = -a * ratio, clipped = -a * fminf(fmaxf(ratio, 1.0f - clip), 1.0f + clip);
        float tok, d;
        if (unclipped >= clipped) {
            tok = unclipped;
            d = -a * ratio;
        } else {
            tok = clipped;
            d = 0.0f;
        }
        float g = w * d;
        if (ref_logp && kl_coef > 0.0f) {
            const float lr = ref_logp[i] - logp[i];
            // ∂k3/∂logp = 1 − π_ref/π, zero where the clamp holds the log-ratio.
            if (!(kl_clamp >= 0.0f && fabsf(lr) > kl_clamp)) g += kl_coef * w * (-expm1f(lr));
        }
        grad[i] = g * grad_scale;
        acc[0] += (double)w * (double)tok;
        acc[1] += 1.0;
        acc[2] += clipped > unclipped ? 1.0 : 0.0;
        acc[3] += 0.5 * (double)log_ratio * (double)log_ratio;
        acc[4] += (double)ratio;
    }
    block_sums<5>(acc, s);
    if (threadIdx.x == 0)
        for (int j = 0; j < 5; j++) partials[blockIdx.x * 5 + j] = acc[j];
}

// grad (n) = grad_scale · ∂/∂v of the token-mean clipped value loss (w = 1/count at valid tokens);
// partials [blocks, 7]: Σ ½·(chosen error)², valid tokens, clipped tokens, Σ R, Σ R², Σ (R − v),
// Σ (R − v)². clip < 0: no clipping.
extern "C" __global__ void ppo_value_loss(float* grad, double* partials, const float* values, const float* old_values,
                                          const float* returns, const float* weights, int n, int per_block, float clip,
                                          float grad_scale) {
    __shared__ double s[LOSS_THREADS][7];
    double acc[7] = {0, 0, 0, 0, 0, 0, 0};
    const int lo = blockIdx.x * per_block, hi = min(n, lo + per_block);
    for (int i = lo + threadIdx.x; i < hi; i += LOSS_THREADS) {
        const float w = weights[i];
        if (w == 0.0f) {
            grad[i] = 0.0f;
            continue;
        }
        const float v = values[i], r = returns[i], err = v - r;
        const float cerr = clip >= 0.0f ? fminf(fmaxf(v, old_values[i] - clip), old_values[i] + clip) - r : err;
        if (err * err >= cerr * cerr) {
            acc[0] += 0.5 * (double)(err * err);
            grad[i] = err * w * grad_scale;
        } else {
            acc[0] += 0.5 * (double)(cerr * cerr);
            acc[2] += 1.0;
            grad[i] = 0.0f;
        }
        acc[1] += 1.0;
        acc[3] += (double)r;
        acc[4] += (double)r * (double)r;
        acc[5] += (double)(r - v);
        acc[6] += (double)(r - v) * (double)(r - v);
    }
    block_sums<7>(acc, s);
    if (threadIdx.x == 0)
        for (int j = 0; j < 7; j++) partials[blockIdx.x * 7 + j] = acc[j];
}
