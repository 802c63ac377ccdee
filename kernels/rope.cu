// Rotary embeddings in the HF Llama layout: element i pairs with i + hd/2, rotated by
// pos * inv_freq[i]. In place on x (N, heads, hd) bf16. sign = +1 forward, -1 backward (the
// transpose of a rotation is the rotation by the opposite angle).
// The CPU oracle is src/ops/cpu/rope.rs; the launchers are src/ops/cuda/rope.rs.
#include "common.cuh"

// One thread per (token, head, pair). Angles in fp32 with the accurate sincosf: positions reach
// 131072, where the fast intrinsics lose every digit.
extern "C" __global__ void rope_rotate(__nv_bfloat16* x, const uint32_t* pos, const float* inv_freq,
                                       int n, int heads, int hd, float sign) {
    const int half = hd / 2;
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t total = (size_t)n * heads * half;
    if (idx >= total) return;
    const int i = idx % half;
    const size_t token_head = idx / half;
    const int token = token_head / heads;
    float s, c;
    sincosf((float)pos[token] * inv_freq[i], &s, &c);
    s *= sign;
    __nv_bfloat16* h = x + token_head * hd;
    const float a = __bfloat162float(h[i]), b = __bfloat162float(h[i + half]);
    h[i] = __float2bfloat16(a * c - b * s);
    h[i + half] = __float2bfloat16(b * c + a * s);
}
