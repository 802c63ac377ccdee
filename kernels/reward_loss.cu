// The Bradley-Terry loss on the device: each pair reads its two rewards where the scalar head
// wrote them, and writes their gradient back in place, so a reward-model micro-step never brings
// the [2P·T] values to the host. The CPU oracle is src/ops/cpu/reward_loss.rs (src/loss's
// reward_model_loss).
#include "common.cuh"

// One thread per pair i: rewards value[token[i]] (chosen) and value[token[P + i]] (rejected);
// z = r_c − r_r − margin[i] (margin may be null); ℓ = −log σ(z). dvalue is written at the two
// reward tokens only (the caller zeroes it); pair_out [P, 3]: loss, r_c, r_r.
extern "C" __global__ void bradley_terry_loss(float* dvalue, float* pair_out, const float* value,
                                              const uint32_t* token, const float* margin, int pairs,
                                              float grad_scale) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= pairs) return;
    const float c = value[token[i]], r = value[token[pairs + i]];
    const float z = c - r - (margin ? margin[i] : 0.0f);
    const float d = -sigmoid(-z), inv_n = 1.0f / (float)pairs;
    dvalue[token[i]] = grad_scale * (d * inv_n);
    dvalue[token[pairs + i]] = grad_scale * (-d * inv_n);
    pair_out[i * 3 + 0] = -log_sigmoid(z);
    pair_out[i * 3 + 1] = c;
    pair_out[i * 3 + 2] = r;
}
