// Causal grouped-query attention over padded batches, flash-style: the T x T scores never reach
// global memory; the forward keeps the row logsumexp, the backward recomputes probabilities.
//   q, out, dout (B,T,H,hd) bf16; k, v (B,T,Hkv,hd) bf16; key_mask (B,T) u8; lse, D (B,H,T) f32.
// Query i sees key j when j <= i and key_mask[b,j]; a query that sees no key gets out = 0 and
// lse = -inf, and passes no gradient.
// Plain fp32 FMA in shared-memory tiles (one warp per row, one lane per key of a 32-key tile),
// written to be obviously right. The engine runs kernels/flash_attention.cu (tensor cores) for head
// dims 16, 32, 64 and 128, and these for any other; `prefer check` holds both to the CPU oracle,
// src/ops/cpu/attention.rs. attention_backward_rowdot serves both.
#include "common.cuh"
#include <math.h>

#define ATT_ROWS 4   // warps per block = rows (queries or keys) per block
#define ATT_TILE 32  // keys (or queries) per shared-memory tile: one per lane
#define ATT_MAX_HD 128

// Rows of a (B,T,heads,hd) tensor: the hd values of token t, head h.
__device__ __forceinline__ size_t row_of(int b, int t, int h, int T, int heads, int hd) {
    return (((size_t)b * T + t) * heads + h) * hd;
}

// Grid (ceil(T/ATT_ROWS), H, B), block ATT_ROWS warps. Shared: q rows, then K and V tiles with
// a padded stride (hd + 1) so lanes reading different keys hit different banks.
extern "C" __global__ void attention_reference_forward(__nv_bfloat16* out, float* lse, const __nv_bfloat16* q,
                                             const __nv_bfloat16* k, const __nv_bfloat16* v,
                                             const uint8_t* key_mask, int B, int T, int H, int Hkv, int hd,
                                             float scale) {
    extern __shared__ float smem[];
    const int stride = hd + 1;
    float* qs = smem;                            // [ATT_ROWS][stride]
    float* ks = qs + ATT_ROWS * stride;          // [ATT_TILE][stride]
    float* vs = ks + ATT_TILE * stride;          // [ATT_TILE][stride]
    const int b = blockIdx.z, h = blockIdx.y, kvh = h / (H / Hkv);
    const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    const int first = blockIdx.x * ATT_ROWS, i = first + warp;
    const int last = min(first + ATT_ROWS, T) - 1;  // the block's last query decides the key range

    for (int x = threadIdx.x; x < ATT_ROWS * hd; x += blockDim.x) {
        const int r = x / hd, e = x % hd;
        qs[r * stride + e] = first + r < T ? __bfloat162float(q[row_of(b, first + r, h, T, H, hd) + e]) : 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    float acc[ATT_MAX_HD / WARP_SIZE] = {0.0f};  // this lane's elements e = lane + 32c
    for (int t0 = 0; t0 <= last; t0 += ATT_TILE) {
        __syncthreads();
        for (int x = threadIdx.x; x < ATT_TILE * hd; x += blockDim.x) {
            const int r = x / hd, e = x % hd, j = t0 + r;
            const bool in = j < T;
            ks[r * stride + e] = in ? __bfloat162float(k[row_of(b, j, kvh, T, Hkv, hd) + e]) : 0.0f;
            vs[r * stride + e] = in ? __bfloat162float(v[row_of(b, j, kvh, T, Hkv, hd) + e]) : 0.0f;
        }
        __syncthreads();
        if (i >= T) continue;
        const int j = t0 + lane;
        const bool valid = j <= i && j < T && key_mask[(size_t)b * T + j];
        float s = -INFINITY;
        if (valid) {
            float dot = 0.0f;
            for (int e = 0; e < hd; ++e) dot += qs[warp * stride + e] * ks[lane * stride + e];
            s = scale * dot;
        }
        const float tile_max = warp_max(s);
        if (tile_max == -INFINITY) continue;  // warp-uniform: no key of this tile is visible
        const float m_new = fmaxf(m, tile_max);
        const float p = valid ? expf(s - m_new) : 0.0f;
        const float corr = m == -INFINITY ? 0.0f : expf(m - m_new);
        l = l * corr + warp_sum(p);
        // A constant trip count keeps the per-lane accumulators in registers.
        #pragma unroll
        for (int c = 0; c < ATT_MAX_HD / WARP_SIZE; ++c) {
            if (c * WARP_SIZE >= hd) continue;  // uniform across the warp
            const int e = c * WARP_SIZE + lane;
            float pv = 0.0f;
            for (int r = 0; r < ATT_TILE; ++r) {
                const float pr = __shfl_sync(0xffffffff, p, r);
                if (e < hd) pv += pr * vs[r * stride + e];
            }
            acc[c] = acc[c] * corr + pv;
        }
        m = m_new;
    }
    if (i >= T) return;
    // A constant trip count keeps the per-lane accumulators in registers.
    #pragma unroll
    for (int c = 0; c < ATT_MAX_HD / WARP_SIZE; ++c) {
        if (c * WARP_SIZE >= hd) continue;  // uniform across the warp
        const int e = c * WARP_SIZE + lane;
        if (e < hd) out[row_of(b, i, h, T, H, hd) + e] = __float2bfloat16(l > 0.0f ? acc[c] / l : 0.0f);
    }
    if (lane == 0) lse[((size_t)b * H + h) * T + i] = l > 0.0f ? m + logf(l) : -INFINITY;
}

// D (B,H,T) = rowwise dout . out, the softmax backward's correction term. One warp per row.
extern "C" __global__ void attention_backward_rowdot(float* D, const __nv_bfloat16* dout,
                                                     const __nv_bfloat16* out, int B, int T, int H, int hd) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    if (warp >= B * T * H) return;
    const int h = warp % H, t = (warp / H) % T, b = warp / (H * T);
    const size_t base = (size_t)warp * hd;  // (b,t,h) rows are contiguous in this order
    float s = 0.0f;
    for (int e = lane; e < hd; e += WARP_SIZE) s += __bfloat162float(dout[base + e]) * __bfloat162float(out[base + e]);
    s = warp_sum(s);
    if (lane == 0) D[((size_t)b * H + h) * T + t] = s;
}

// dq (B,T,H,hd) bf16 = scale * sum_j ds_ij k_j, with p_ij = exp(s_ij - lse_i),
// ds_ij = p_ij (dout_i . v_j - D_i). Same grid and tiling as the forward.
extern "C" __global__ void attention_reference_backward_dq(__nv_bfloat16* dq, const __nv_bfloat16* dout,
                                                 const __nv_bfloat16* q, const __nv_bfloat16* k,
                                                 const __nv_bfloat16* v, const float* lse, const float* D,
                                                 const uint8_t* key_mask, int B, int T, int H, int Hkv, int hd,
                                                 float scale) {
    extern __shared__ float smem[];
    const int stride = hd + 1;
    float* qs = smem;                    // [ATT_ROWS][stride]
    float* dos = qs + ATT_ROWS * stride; // [ATT_ROWS][stride]
    float* ks = dos + ATT_ROWS * stride; // [ATT_TILE][stride]
    float* vs = ks + ATT_TILE * stride;  // [ATT_TILE][stride]
    const int b = blockIdx.z, h = blockIdx.y, kvh = h / (H / Hkv);
    const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    const int first = blockIdx.x * ATT_ROWS, i = first + warp;
    const int last = min(first + ATT_ROWS, T) - 1;
    for (int x = threadIdx.x; x < ATT_ROWS * hd; x += blockDim.x) {
        const int r = x / hd, e = x % hd;
        const bool in = first + r < T;
        qs[r * stride + e] = in ? __bfloat162float(q[row_of(b, first + r, h, T, H, hd) + e]) : 0.0f;
        dos[r * stride + e] = in ? __bfloat162float(dout[row_of(b, first + r, h, T, H, hd) + e]) : 0.0f;
    }
    const float li = i < T ? lse[((size_t)b * H + h) * T + i] : -INFINITY;
    const float Di = i < T ? D[((size_t)b * H + h) * T + i] : 0.0f;
    float acc[ATT_MAX_HD / WARP_SIZE] = {0.0f};
    for (int t0 = 0; t0 <= last; t0 += ATT_TILE) {
        __syncthreads();
        for (int x = threadIdx.x; x < ATT_TILE * hd; x += blockDim.x) {
            const int r = x / hd, e = x % hd, j = t0 + r;
            const bool in = j < T;
            ks[r * stride + e] = in ? __bfloat162float(k[row_of(b, j, kvh, T, Hkv, hd) + e]) : 0.0f;
            vs[r * stride + e] = in ? __bfloat162float(v[row_of(b, j, kvh, T, Hkv, hd) + e]) : 0.0f;
        }
        __syncthreads();
        if (i >= T || li == -INFINITY) continue;
        const int j = t0 + lane;
        const bool valid = j <= i && j < T && key_mask[(size_t)b * T + j];
        float ds = 0.0f;
        if (valid) {
            float s = 0.0f, dp = 0.0f;
            for (int e = 0; e < hd; ++e) {
                s += qs[warp * stride + e] * ks[lane * stride + e];
                dp += dos[warp * stride + e] * vs[lane * stride + e];
            }
            ds = expf(scale * s - li) * (dp - Di);
        }
        // A constant trip count keeps the per-lane accumulators in registers.
        #pragma unroll
        for (int c = 0; c < ATT_MAX_HD / WARP_SIZE; ++c) {
            if (c * WARP_SIZE >= hd) continue;  // uniform across the warp
            const int e = c * WARP_SIZE + lane;
            float sum = 0.0f;
            for (int r = 0; r < ATT_TILE; ++r) {
                const float dsr = __shfl_sync(0xffffffff, ds, r);
                if (e < hd) sum += dsr * ks[r * stride + e];
            }
            acc[c] += sum;
        }
    }
    if (i >= T) return;
    // A constant trip count keeps the per-lane accumulators in registers.
    #pragma unroll
    for (int c = 0; c < ATT_MAX_HD / WARP_SIZE; ++c) {
        if (c * WARP_SIZE >= hd) continue;  // uniform across the warp
        const int e = c * WARP_SIZE + lane;
        if (e < hd) dq[row_of(b, i, h, T, H, hd) + e] = __float2bfloat16(scale * acc[c]);
    }
}

// dk, dv (B,T,Hkv,hd) bf16 for each key j, summed over the query heads of its group and the
// queries i >= j that see it: dv_j = sum p_ij dout_i, dk_j = scale * sum ds_ij q_i. One warp per
// key row, one lane per query of a 32-query tile: every sum has one owner, so no atomics.
// Grid (ceil(T/ATT_ROWS), Hkv, B).
extern "C" __global__ void attention_reference_backward_dkv(__nv_bfloat16* dk, __nv_bfloat16* dv, const __nv_bfloat16* dout,
                                                  const __nv_bfloat16* q, const __nv_bfloat16* k,
                                                  const __nv_bfloat16* v, const float* lse, const float* D,
                                                  const uint8_t* key_mask, int B, int T, int H, int Hkv, int hd,
                                                  float scale) {
    extern __shared__ float smem[];
    const int stride = hd + 1;
    float* kr = smem;                     // [ATT_ROWS][stride] this block's key rows
    float* vr = kr + ATT_ROWS * stride;   // [ATT_ROWS][stride]
    float* qs = vr + ATT_ROWS * stride;   // [ATT_TILE][stride] query tile
    float* dos = qs + ATT_TILE * stride;  // [ATT_TILE][stride]
    const int b = blockIdx.z, kvh = blockIdx.y, group = H / Hkv;
    const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    const int first = blockIdx.x * ATT_ROWS, j = first + warp;
    for (int x = threadIdx.x; x < ATT_ROWS * hd; x += blockDim.x) {
        const int r = x / hd, e = x % hd;
        const bool in = first + r < T;
        kr[r * stride + e] = in ? __bfloat162float(k[row_of(b, first + r, kvh, T, Hkv, hd) + e]) : 0.0f;
        vr[r * stride + e] = in ? __bfloat162float(v[row_of(b, first + r, kvh, T, Hkv, hd) + e]) : 0.0f;
    }
    const bool key_live = j < T && key_mask[(size_t)b * T + j];
    float dk_acc[ATT_MAX_HD / WARP_SIZE] = {0.0f}, dv_acc[ATT_MAX_HD / WARP_SIZE] = {0.0f};
    for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
        for (int t0 = first - first % ATT_TILE; t0 < T; t0 += ATT_TILE) {
            __syncthreads();
            for (int x = threadIdx.x; x < ATT_TILE * hd; x += blockDim.x) {
                const int r = x / hd, e = x % hd, i = t0 + r;
                const bool in = i < T;
                qs[r * stride + e] = in ? __bfloat162float(q[row_of(b, i, h, T, H, hd) + e]) : 0.0f;
                dos[r * stride + e] = in ? __bfloat162float(dout[row_of(b, i, h, T, H, hd) + e]) : 0.0f;
            }
            __syncthreads();
            if (!key_live) continue;
            const int i = t0 + lane;
            const float li = i < T ? lse[((size_t)b * H + h) * T + i] : -INFINITY;
            const bool valid = i >= j && i < T && li != -INFINITY;
            float p = 0.0f, ds = 0.0f;
            if (valid) {
                float s = 0.0f, dp = 0.0f;
                for (int e = 0; e < hd; ++e) {
                    s += qs[lane * stride + e] * kr[warp * stride + e];
                    dp += dos[lane * stride + e] * vr[warp * stride + e];
                }
                p = expf(scale * s - li);
                ds = p * (dp - D[((size_t)b * H + h) * T + i]);
            }
            // A constant trip count keeps the per-lane accumulators in registers.
            #pragma unroll
            for (int c = 0; c < ATT_MAX_HD / WARP_SIZE; ++c) {
                if (c * WARP_SIZE >= hd) continue;  // uniform across the warp
                const int e = c * WARP_SIZE + lane;
                float sv = 0.0f, sk = 0.0f;
                for (int r = 0; r < ATT_TILE; ++r) {
                    const float pr = __shfl_sync(0xffffffff, p, r), dsr = __shfl_sync(0xffffffff, ds, r);
                    if (e < hd) {
                        sv += pr * dos[r * stride + e];
                        sk += dsr * qs[r * stride + e];
                    }
                }
                dv_acc[c] += sv;
                dk_acc[c] += sk;
            }
        }
    }
    if (j >= T) return;
    // A constant trip count keeps the per-lane accumulators in registers.
    #pragma unroll
    for (int c = 0; c < ATT_MAX_HD / WARP_SIZE; ++c) {
        if (c * WARP_SIZE >= hd) continue;  // uniform across the warp
        const int e = c * WARP_SIZE + lane;
        if (e < hd) {
            dk[row_of(b, j, kvh, T, Hkv, hd) + e] = __float2bfloat16(scale * dk_acc[c]);
            dv[row_of(b, j, kvh, T, Hkv, hd) + e] = __float2bfloat16(dv_acc[c]);
        }
    }
}
