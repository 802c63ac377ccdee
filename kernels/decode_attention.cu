// Decode attention: one new query token per sequence against its paged KV cache, flash-decoding
// style. The CPU oracle is src/ops/cpu/decode_attention.rs.
//
// Cache of one layer: [blocks, block_size, Hkv, hd] for K and for V; sequence b reads the blocks
// block_table[b, 0..] in order, and its first context_lens[b] slots.
//
// decode_attention_split: grid (B, Hkv, splits), 4 warps. A block takes one KV head and one slice
// of SPLIT_TOKENS tokens, and serves the whole group of query heads that share the KV head, so
// each K and V row is read once per group (GQA). Warp w takes tokens w, w+4, ... of the slice;
// its lanes hold hd/32 (or fewer) elements of the row; an online softmax per query head lives in
// registers. The four warps merge in a fixed order, and the slice's (max, sum, acc) goes to
// `partial`. decode_attention_merge folds the slices in index order, so the result does not
// depend on timing.
#include "common.cuh"

#define DA_WARPS 4
#define DA_MAX_GROUP 8
#define DA_MAX_PER_LANE 4  // hd <= 128
#define SPLIT_TOKENS 256

// partial: [B, H, splits, hd + 2]: acc[hd] (unnormalised), max, sum.
extern "C" __global__ void decode_attention_split(float* partial, const __nv_bfloat16* q,
                                                  const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache,
                                                  const uint32_t* block_table, const uint32_t* context_lens,
                                                  int heads, int kv_heads, int hd, int block_size, int max_blocks,
                                                  int splits, float scale) {
    const int b = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int group = heads / kv_heads, kvs = kv_heads * hd;
    const int len = (int)context_lens[b];
    const int start = split * SPLIT_TOKENS, end = min(len, start + SPLIT_TOKENS);
    const uint32_t* table = block_table + (size_t)b * max_blocks;

    float qr[DA_MAX_GROUP][DA_MAX_PER_LANE];
    float acc[DA_MAX_GROUP][DA_MAX_PER_LANE];
    float m[DA_MAX_GROUP], l[DA_MAX_GROUP];
#pragma unroll
    for (int g = 0; g < DA_MAX_GROUP; g++) {
        if (g >= group) break;
        const __nv_bfloat16* qh = q + (size_t)b * heads * hd + (size_t)(kvh * group + g) * hd;
#pragma unroll
        for (int i = 0; i < DA_MAX_PER_LANE; i++) {
            const int e = lane + WARP_SIZE * i;
            qr[g][i] = e < hd ? __bfloat162float(qh[e]) * scale : 0.0f;
            acc[g][i] = 0.0f;
        }
        m[g] = -INFINITY;
        l[g] = 0.0f;
    }
    for (int j = start + warp; j < end; j += DA_WARPS) {
        const size_t slot = (size_t)table[j / block_size] * block_size + j % block_size;
        const __nv_bfloat16* kr = k_cache + slot * kvs + (size_t)kvh * hd;
        const __nv_bfloat16* vr = v_cache + slot * kvs + (size_t)kvh * hd;
        float kx[DA_MAX_PER_LANE], vx[DA_MAX_PER_LANE];
#pragma unroll
        for (int i = 0; i < DA_MAX_PER_LANE; i++) {
            const int e = lane + WARP_SIZE * i;
            kx[i] = e < hd ? __bfloat162float(kr[e]) : 0.0f;
            vx[i] = e < hd ? __bfloat162float(vr[e]) : 0.0f;
        }
#pragma unroll
        for (int g = 0; g < DA_MAX_GROUP; g++) {
            if (g >= group) break;
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < DA_MAX_PER_LANE; i++) s += qr[g][i] * kx[i];
            s = warp_sum(s);
            const float m_new = fmaxf(m[g], s);
            const float a = expf(m[g] - m_new), p = expf(s - m_new);
            l[g] = l[g] * a + p;
#pragma unroll
            for (int i = 0; i < DA_MAX_PER_LANE; i++) acc[g][i] = acc[g][i] * a + p * vx[i];
            m[g] = m_new;
        }
    }
    // Merge the warps in order 0..3 through shared memory.
    __shared__ float s_acc[DA_WARPS][DA_MAX_GROUP][DA_MAX_PER_LANE * WARP_SIZE];
    __shared__ float s_ml[DA_WARPS][DA_MAX_GROUP][2];
#pragma unroll
    for (int g = 0; g < DA_MAX_GROUP; g++) {
        if (g >= group) break;
#pragma unroll
        for (int i = 0; i < DA_MAX_PER_LANE; i++) s_acc[warp][g][lane + WARP_SIZE * i] = acc[g][i];
        if (lane == 0) {
            s_ml[warp][g][0] = m[g];
            s_ml[warp][g][1] = l[g];
        }
    }
    __syncthreads();
    // Each thread merges elements (head g, index e) of the group, strided by the block size.
    for (int idx = threadIdx.x; idx < group * hd; idx += blockDim.x) {
        const int g = idx / hd, e = idx % hd;
        float mm = -INFINITY;
        for (int w = 0; w < DA_WARPS; w++) mm = fmaxf(mm, s_ml[w][g][0]);
        float ll = 0.0f, aa = 0.0f;
        for (int w = 0; w < DA_WARPS; w++) {
            const float mw = s_ml[w][g][0];
            const float f = mw == -INFINITY ? 0.0f : expf(mw - mm);
            ll += s_ml[w][g][1] * f;
            aa += s_acc[w][g][e] * f;
        }
        const int h = kvh * group + g;
        float* out = partial + (((size_t)b * heads + h) * splits + split) * (hd + 2);
        out[e] = aa;
        if (e == 0) {
            out[hd] = mm;
            out[hd + 1] = ll;
        }
    }
}

// out[B, H, hd] bf16 from the slices, folded in index order. One block per (b, h), hd threads.
extern "C" __global__ void decode_attention_merge(__nv_bfloat16* out, const float* partial,
                                                  const uint32_t* context_lens, int heads, int hd, int splits) {
    const int b = blockIdx.x, h = blockIdx.y, e = threadIdx.x;
    if (e >= hd) return;
    const int used = ((int)context_lens[b] + SPLIT_TOKENS - 1) / SPLIT_TOKENS;
    const float* p = partial + ((size_t)b * heads + h) * splits * (hd + 2);
    float mm = -INFINITY;
    for (int s = 0; s < used; s++) mm = fmaxf(mm, p[s * (hd + 2) + hd]);
    float ll = 0.0f, aa = 0.0f;
    for (int s = 0; s < used; s++) {
        const float ms = p[s * (hd + 2) + hd];
        const float f = ms == -INFINITY ? 0.0f : expf(ms - mm);
        ll += p[s * (hd + 2) + hd + 1] * f;
        aa += p[s * (hd + 2) + e] * f;
    }
    out[((size_t)b * heads + h) * hd + e] = __float2bfloat16(ll > 0.0f ? aa / ll : 0.0f);
}
