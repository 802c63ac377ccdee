// The DPO family on the device: each pair's sequence log-probs (a weighted sum of its response
// tokens' log-probs), the loss, and the gradient back to every token, in one kernel, so a DPO
// micro-step never brings log-probs to the host. The CPU oracle is src/ops/cpu/dpo_loss.rs (the
// src/loss functions: sequence_logprobs, dpo_loss, sequence_logprobs_backward).
#include "common.cuh"

// Loss kinds: DpoLoss::kernel_code in src/loss/dpo.rs (a test in src/ops/cuda/dpo_loss.rs checks
// that these agree).
#define DPO_SIGMOID 0
#define DPO_IPO 1
#define DPO_HINGE 2
#define DPO_SIMPO 3
#define DPO_REF_FREE 4

// One block per pair i: row i is its chosen response, row pairs + i its rejected one, of
// logp and w [2·pairs, T] (w: 1 at response tokens for a sum, 1/n for a mean, else 0).
// reference [2·pairs] (chosen then rejected) is passed to the losses that read it (the launcher
// checks DpoLoss::uses_reference), null to the others.
// pair_out [pairs, 5]: loss, chosen reward, rejected reward, sequence log-prob chosen, rejected.
extern "C" __global__ void dpo_loss(float* dlogp, float* pair_out, const float* logp, const float* w,
                                    const float* reference, int pairs, int t, int kind, float beta, float eps,
                                    float gamma, float grad_scale) {
    __shared__ double scratch[WARP_SIZE];
    const int i = blockIdx.x;
    if (i >= pairs) return;
    const size_t c = (size_t)i * t, r = (size_t)(pairs + i) * t;
    double sc = 0.0, sr = 0.0;
    for (int j = threadIdx.x; j < t; j += blockDim.x) {
        sc += (double)w[c + j] * (double)logp[c + j];
        sr += (double)w[r + j] * (double)logp[r + j];
    }
    const float pc = (float)block_sum_f64(sc, scratch), pr = (float)block_sum_f64(sr, scratch);
    const bool uses_ref = reference != nullptr;
    const float rc = uses_ref ? reference[i] : 0.0f, rr = uses_ref ? reference[pairs + i] : 0.0f;
    const float h = (pc - pr) - (rc - rr);
    float loss, dl;
    if (kind == DPO_SIGMOID || kind == DPO_REF_FREE || kind == DPO_SIMPO) {
        const float z = kind == DPO_SIMPO ? beta * h - gamma : beta * h;
        loss = -(1.0f - eps) * log_sigmoid(z) - eps * log_sigmoid(-z);
        dl = (-(1.0f - eps) * sigmoid(-z) + eps * sigmoid(z)) * beta;
    } else if (kind == DPO_IPO) {
        const float residual = h - 1.0f / (2.0f * beta);
        loss = residual * residual;
        dl = 2.0f * residual;
    } else {
        const float slack = 1.0f - beta * h;
        loss = slack > 0.0f ? slack : 0.0f;
        dl = slack > 0.0f ? -beta : 0.0f;
    }
    const float inv_n = 1.0f / (float)pairs;
    const float gc = dl * inv_n * grad_scale, gr = -dl * inv_n * grad_scale;
    for (int j = threadIdx.x; j < t; j += blockDim.x) {
        dlogp[c + j] = w[c + j] * gc;
        dlogp[r + j] = w[r + j] * gr;
    }
    if (threadIdx.x == 0) {
        float* o = pair_out + (size_t)i * 5;
        o[0] = loss;
        o[1] = beta * (pc - rc);
        o[2] = beta * (pr - rr);
        o[3] = pc;
        o[4] = pr;
    }
}
