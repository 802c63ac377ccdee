// Causal grouped-query attention on tensor cores, FlashAttention-2 style: bf16 mma.sync m16n8k16
// with fp32 accumulation, operands from shared memory by ldmatrix, tiles brought in by cp.async
// (the next K/V tile loads while this one is used). The T x T scores never reach global memory.
//   q, out, dout (B,T,H,hd) bf16; k, v (B,T,Hkv,hd) bf16; key_mask (B,T) u8; lse, D (B,H,T) f32.
// Query i sees key j when j <= i and key_mask[b,j]; a query that sees no key gets out = 0 and
// lse = -inf and passes no gradient. Same contract as kernels/attention.cu (the reference kernels,
// for head dims these do not cover) and the CPU oracle src/ops/cpu/attention.rs.
//
// GQA: the query rows of a block are "packed rows" R = t·group + (h mod group) of one KV head, so
// the `group` query heads sharing a KV head sit in one tile and each K/V tile is read once for
// all of them. Causality compares tokens: packed row R is token R / group.
//
// Each warp owns 16 rows of a tile; the backward is two kernels (dq by query tile, dk/dv by key
// tile), each sum with one owner: no atomics, and the same result on every run.
#include "common.cuh"
#include "mma.cuh"

#define FA_WARPS 4
#define FA_THREADS (FA_WARPS * WARP_SIZE)
#define FA_PAD 8  // bf16 of padding per shared row: 8 rows of one ldmatrix fall in distinct banks

typedef __nv_bfloat16 bf16;

// Every kernel's tiles, laid out by each kernel. Plain bytes, declared at file scope: on the software
// GPU this is a thread_local, and g++ 12 drops the guard of a thread_local's (absent) initialiser
// when the declaration sits inside a template.
extern __shared__ __align__(16) unsigned char fa_smem[];

struct FaDims {
    int T, H, Hkv, group;
    float scale;
};

// Packed row R of KV head `kvh` in sequence b: its (b, t, h) row of a (B,T,H,hd) tensor.
template <int HD>
__device__ __forceinline__ size_t fa_q_row(int b, int R, int kvh, const FaDims& s) {
    const int t = R / s.group, h = kvh * s.group + R % s.group;
    return (((size_t)b * s.T + t) * s.H + h) * HD;
}
template <int HD>
__device__ __forceinline__ size_t fa_kv_row(int b, int t, int kvh, const FaDims& s) {
    return (((size_t)b * s.T + t) * s.Hkv + kvh) * HD;
}
// Index of packed row R in a (B,H,T) tensor (lse, D).
__device__ __forceinline__ size_t fa_stat(int b, int R, int kvh, const FaDims& s) {
    const int t = R / s.group, h = kvh * s.group + R % s.group;
    return ((size_t)b * s.H + h) * s.T + t;
}

// `n` rows of HD bf16 into shared rows HD + FA_PAD apart, 16 bytes per cp.async; row r comes from
// `base + offset(r)` when `live(r)`, else zeros. The caller commits.
template <int HD, typename Offset, typename Live>
__device__ __forceinline__ void fa_load_rows(bf16* dst, int n, const bf16* base, Offset offset, Live live) {
    constexpr int CHUNKS = HD / 8, LD = HD + FA_PAD;
    for (int x = threadIdx.x; x < n * CHUNKS; x += blockDim.x) {
        const int r = x / CHUNKS, ch = x % CHUNKS;
        const bool in = live(r);
        cp_async_16(dst + r * LD + ch * 8, in ? base + offset(r) + ch * 8 : base, in);
    }
}

// Keys j0..j0+BN-1 of KV head `kvh` into buffer `buf` of the K and V tiles ([2][BN][LD] each) and
// their masks ([2][BN] u16: 2 bytes a key, the software GPU race check's granule). The caller commits.
template <int HD, int BN>
__device__ __forceinline__ void fa_load_kv(bf16* ks, bf16* vs, uint16_t* kmask, int buf, int j0, int b, int kvh,
                                           const bf16* k, const bf16* v, const uint8_t* key_mask, const FaDims& s) {
    constexpr int LD = HD + FA_PAD;
    auto off = [&](int r) { return fa_kv_row<HD>(b, j0 + r, kvh, s); };
    auto live = [&](int r) { return j0 + r < s.T; };
    fa_load_rows<HD>(ks + buf * BN * LD, BN, k, off, live);
    fa_load_rows<HD>(vs + buf * BN * LD, BN, v, off, live);
    for (int r = threadIdx.x; r < BN; r += blockDim.x)
        kmask[buf * BN + r] = j0 + r < s.T && key_mask[(size_t)b * s.T + j0 + r];
}

// A warp's C fragments acc[NO][4] as bf16 rows: this thread's row g (times scale_a) to dst + off_a
// when live_a, row g + 8 (times scale_b) to dst + off_b when live_b; columns 2c, 2c+1 of each n-tile.
template <int NO>
__device__ __forceinline__ void fa_store_rows(bf16* dst, bool live_a, size_t off_a, float scale_a, bool live_b,
                                              size_t off_b, float scale_b, const float (*acc)[4]) {
    const int c = threadIdx.x % 4;
    #pragma unroll
    for (int nt = 0; nt < NO; ++nt) {
        const int e = nt * 8 + 2 * c;
        if (live_a) *(uint32_t*)(dst + off_a + e) = pack_bf16x2(scale_a * acc[nt][0], scale_a * acc[nt][1]);
        if (live_b) *(uint32_t*)(dst + off_b + e) = pack_bf16x2(scale_b * acc[nt][2], scale_b * acc[nt][3]);
    }
}

// acc[NT][4] (16 x 8·NT) += the warp's 16 rows of `a` (row-major, 16 x 16·KT) times the
// transpose of `b`'s 8·NT rows (row-major, 8·NT x 16·KT): S = Q Kᵀ and its kin. Both in shared
// memory, rows LD apart.
template <int KT, int NT, int LD>
__device__ __forceinline__ void fa_mma_abt(float (*acc)[4], const bf16* a, const bf16* b) {
    const int lane = threadIdx.x % WARP_SIZE;
    #pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
        uint32_t af[4];
        ldmatrix_x4<false>(af, a + (lane % 16) * LD + kk * 16 + (lane / 16) * 8);
        #pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            uint32_t bf[4];  // n-tiles 2np and 2np+1, k halves 0 and 1
            ldmatrix_x4<false>(bf, b + (np * 16 + (lane / 16) * 8 + lane % 8) * LD + kk * 16 + ((lane / 8) % 2) * 8);
            mma_bf16_16816(acc[2 * np], af, bf);
            mma_bf16_16816(acc[2 * np + 1], af, bf + 2);
        }
    }
}

// acc[NT][4] (16 x 8·NT) += p (16 x 16·KT, in registers as C fragments of 2·KT n-tiles) times
// `b` (row-major in shared memory, 16·KT x 8·NT, rows LD apart): O += P V and its kin.
template <int KT, int NT, int LD>
__device__ __forceinline__ void fa_mma_pb(float (*acc)[4], const float (*p)[4], const bf16* b) {
    const int lane = threadIdx.x % WARP_SIZE;
    #pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
        // Two adjacent C fragments of P are one A fragment.
        const uint32_t af[4] = {pack_bf16x2(p[2 * kk][0], p[2 * kk][1]), pack_bf16x2(p[2 * kk][2], p[2 * kk][3]),
                                pack_bf16x2(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                                pack_bf16x2(p[2 * kk + 1][2], p[2 * kk + 1][3])};
        #pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            uint32_t bf[4];  // k halves 0 and 1 of n-tile 2np, then of 2np+1
            ldmatrix_x4<true>(bf, b + (kk * 16 + ((lane / 8) % 2) * 8 + lane % 8) * LD + np * 16 + (lane / 16) * 8);
            mma_bf16_16816(acc[2 * np], af, bf);
            mma_bf16_16816(acc[2 * np + 1], af, bf + 2);
        }
    }
}

// Over the four lanes of a quad (lane ^ 1, then lane ^ 2): the lanes holding one fragment row.
__device__ __forceinline__ float fa_quad_max(float v) { return xor_butterfly(v, 1, 2, BUTTERFLY_MAX); }
__device__ __forceinline__ float fa_quad_sum(float v) { return xor_butterfly(v, 1, 2, BUTTERFLY_ADD); }

// ---- forward ----------------------------------------------------------------------------------
// Grid (ceil(T·group / 64), Hkv, B), FA_THREADS threads. Shared: the Q tile [64][LD], K and V
// tiles [2][64][LD] each (double-buffered), the key tiles' masks [2][64] u16.
template <int HD>
__device__ __forceinline__ void flash_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                                              const uint8_t* key_mask, FaDims s) {
    constexpr int BM = 16 * FA_WARPS, BN = 64, LD = HD + FA_PAD, KT = HD / 16, NO = HD / 8;
    bf16* qs = (bf16*)fa_smem;
    bf16* ks = qs + BM * LD;
    bf16* vs = ks + 2 * BN * LD;
    uint16_t* kmask = (uint16_t*)(vs + 2 * BN * LD);  // 2 bytes a key: the race check's granule
    const int b = blockIdx.z, kvh = blockIdx.y, rows = s.T * s.group;
    const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE, g = lane / 4, c = lane % 4;
    const int R0 = blockIdx.x * BM;
    const int tiles = (min(R0 + BM, rows) - 1) / s.group / BN + 1;  // keys up to the block's last token

    auto load_kv = [&](int tile, int buf) {
        fa_load_kv<HD, BN>(ks, vs, kmask, buf, tile * BN, b, kvh, k, v, key_mask, s);
    };
    fa_load_rows<HD>(qs, BM, q, [&](int r) { return fa_q_row<HD>(b, R0 + r, kvh, s); },
                     [&](int r) { return R0 + r < rows; });
    load_kv(0, 0);
    cp_async_commit();

    // This thread's rows: A = warp·16 + g and B = A + 8 of the tile, as tokens (-1: past the end).
    const int rA = R0 + warp * 16 + g, rB = rA + 8;
    const int tA = rA < rows ? rA / s.group : -1, tB = rB < rows ? rB / s.group : -1;
    const int warp_last = min(R0 + warp * 16 + 15, rows - 1) / s.group;
    float o[NO][4] = {};
    float mA = -INFINITY, mB = -INFINITY, lA = 0.0f, lB = 0.0f;  // l: this thread's partial sums

    // The loop runs at least once and commits a group only when it loads one, so no copy is in
    // flight after it (nor after the backward kernels' loops, built the same way).
    for (int tile = 0; tile < tiles; ++tile) {
        const int buf = tile % 2;
        cp_async_wait<0>();
        __syncthreads();  // tile `tile` is here, and every warp is done with the other buffer
        if (tile + 1 < tiles) {
            load_kv(tile + 1, 1 - buf);
            cp_async_commit();
        }
        if (R0 + warp * 16 >= rows || tile * BN > warp_last) continue;  // warp-uniform: nothing visible

        float sc[BN / 8][4] = {};
        fa_mma_abt<KT, BN / 8, LD>(sc, qs + warp * 16 * LD, ks + buf * BN * LD);
        float mxA = -INFINITY, mxB = -INFINITY;
        #pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
            #pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int jj = nt * 8 + 2 * c + (i % 2), j = tile * BN + jj, t = i < 2 ? tA : tB;
                const bool valid = j <= t && kmask[buf * BN + jj];
                sc[nt][i] = valid ? sc[nt][i] * s.scale : -INFINITY;
            }
            mxA = fmaxf(mxA, fmaxf(sc[nt][0], sc[nt][1]));
            mxB = fmaxf(mxB, fmaxf(sc[nt][2], sc[nt][3]));
        }
        const float newA = fmaxf(mA, fa_quad_max(mxA)), newB = fmaxf(mB, fa_quad_max(mxB));
        const float corrA = newA == -INFINITY ? 1.0f : expf(mA - newA);
        const float corrB = newB == -INFINITY ? 1.0f : expf(mB - newB);
        mA = newA;
        mB = newB;
        lA *= corrA;
        lB *= corrB;
        #pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
            #pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float m = i < 2 ? mA : mB;
                sc[nt][i] = sc[nt][i] == -INFINITY ? 0.0f : expf(sc[nt][i] - m);
            }
            lA += sc[nt][0] + sc[nt][1];
            lB += sc[nt][2] + sc[nt][3];
        }
        #pragma unroll
        for (int nt = 0; nt < NO; ++nt) {
            o[nt][0] *= corrA;
            o[nt][1] *= corrA;
            o[nt][2] *= corrB;
            o[nt][3] *= corrB;
        }
        fa_mma_pb<BN / 16, NO, LD>(o, sc, vs + buf * BN * LD);
    }

    lA = fa_quad_sum(lA);
    lB = fa_quad_sum(lB);
    const float invA = lA > 0.0f ? 1.0f / lA : 0.0f, invB = lB > 0.0f ? 1.0f / lB : 0.0f;
    fa_store_rows<NO>(out, tA >= 0, fa_q_row<HD>(b, rA, kvh, s), invA, tB >= 0, fa_q_row<HD>(b, rB, kvh, s), invB, o);
    if (c == 0) {
        if (tA >= 0) lse[fa_stat(b, rA, kvh, s)] = lA > 0.0f ? mA + logf(lA) : -INFINITY;
        if (tB >= 0) lse[fa_stat(b, rB, kvh, s)] = lB > 0.0f ? mB + logf(lB) : -INFINITY;
    }
}

// ---- backward: dq -----------------------------------------------------------------------------
// dq = scale · Σ_j ds_ij k_j with p_ij = exp(s_ij − lse_i), ds_ij = p_ij (dout_i · v_j − D_i).
// Grid and rows as the forward. Shared: Q and dO tiles [64][LD], K and V [2][64][LD], masks [2][64] u16.
template <int HD>
__device__ __forceinline__ void flash_backward_dq(bf16* dq, const bf16* dout, const bf16* q, const bf16* k,
                                                  const bf16* v, const float* lse, const float* D,
                                                  const uint8_t* key_mask, FaDims s) {
    constexpr int BM = 16 * FA_WARPS, BN = 64, LD = HD + FA_PAD, KT = HD / 16, NO = HD / 8;
    bf16* qs = (bf16*)fa_smem;
    bf16* dos = qs + BM * LD;
    bf16* ks = dos + BM * LD;
    bf16* vs = ks + 2 * BN * LD;
    uint16_t* kmask = (uint16_t*)(vs + 2 * BN * LD);  // 2 bytes a key: the race check's granule
    const int b = blockIdx.z, kvh = blockIdx.y, rows = s.T * s.group;
    const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE, g = lane / 4, c = lane % 4;
    const int R0 = blockIdx.x * BM;
    const int tiles = (min(R0 + BM, rows) - 1) / s.group / BN + 1;

    auto load_kv = [&](int tile, int buf) {
        fa_load_kv<HD, BN>(ks, vs, kmask, buf, tile * BN, b, kvh, k, v, key_mask, s);
    };
    auto q_off = [&](int r) { return fa_q_row<HD>(b, R0 + r, kvh, s); };
    auto q_live = [&](int r) { return R0 + r < rows; };
    fa_load_rows<HD>(qs, BM, q, q_off, q_live);
    fa_load_rows<HD>(dos, BM, dout, q_off, q_live);
    load_kv(0, 0);
    cp_async_commit();

    const int rA = R0 + warp * 16 + g, rB = rA + 8;
    const int tA = rA < rows ? rA / s.group : -1, tB = rB < rows ? rB / s.group : -1;
    const float lseA = tA >= 0 ? lse[fa_stat(b, rA, kvh, s)] : -INFINITY;
    const float lseB = tB >= 0 ? lse[fa_stat(b, rB, kvh, s)] : -INFINITY;
    const float DA = tA >= 0 ? D[fa_stat(b, rA, kvh, s)] : 0.0f, DB = tB >= 0 ? D[fa_stat(b, rB, kvh, s)] : 0.0f;
    const int warp_last = min(R0 + warp * 16 + 15, rows - 1) / s.group;
    float acc[NO][4] = {};

    for (int tile = 0; tile < tiles; ++tile) {
        const int buf = tile % 2;
        cp_async_wait<0>();
        __syncthreads();
        if (tile + 1 < tiles) {
            load_kv(tile + 1, 1 - buf);
            cp_async_commit();
        }
        if (R0 + warp * 16 >= rows || tile * BN > warp_last) continue;

        float sc[BN / 8][4] = {}, dp[BN / 8][4] = {};
        fa_mma_abt<KT, BN / 8, LD>(sc, qs + warp * 16 * LD, ks + buf * BN * LD);
        fa_mma_abt<KT, BN / 8, LD>(dp, dos + warp * 16 * LD, vs + buf * BN * LD);
        #pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
            #pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int jj = nt * 8 + 2 * c + (i % 2), j = tile * BN + jj;
                const int t = i < 2 ? tA : tB;
                const float l = i < 2 ? lseA : lseB, d = i < 2 ? DA : DB;
                const bool valid = j <= t && kmask[buf * BN + jj] && l != -INFINITY;
                const float p = valid ? expf(sc[nt][i] * s.scale - l) : 0.0f;
                sc[nt][i] = p * (dp[nt][i] - d);  // ds
            }
        }
        fa_mma_pb<BN / 16, NO, LD>(acc, sc, ks + buf * BN * LD);
    }
    fa_store_rows<NO>(dq, tA >= 0, fa_q_row<HD>(b, rA, kvh, s), s.scale, tB >= 0, fa_q_row<HD>(b, rB, kvh, s), s.scale,
                      acc);
}

// ---- backward: dk, dv -------------------------------------------------------------------------
// For key j, over the packed query rows R (all query heads of its group) whose token sees it:
// dv_j = Σ p_Rj dout_R, dk_j = scale · Σ ds_Rj q_R. Grid (ceil(T / 64), Hkv, B); warp w owns keys
// 16w..16w+15 of the block and computes Sᵀ = K Qᵀ, so every sum stays in its registers. Shared: K and
// V [64][LD], Q and dO tiles [2][32][LD], lse and D of the tile's rows [2][32] each.
template <int HD>
__device__ __forceinline__ void flash_backward_dkv(bf16* dk, bf16* dv, const bf16* dout, const bf16* q,
                                                   const bf16* k, const bf16* v, const float* lse, const float* D,
                                                   const uint8_t* key_mask, FaDims s) {
    constexpr int BN = 16 * FA_WARPS, BQ = 32, LD = HD + FA_PAD, KT = HD / 16, NO = HD / 8;
    bf16* ks = (bf16*)fa_smem;
    bf16* vs = ks + BN * LD;
    bf16* qs = vs + BN * LD;
    bf16* dos = qs + 2 * BQ * LD;
    float* lses = (float*)(dos + 2 * BQ * LD);
    float* Ds = lses + 2 * BQ;
    const int b = blockIdx.z, kvh = blockIdx.y, rows = s.T * s.group;
    const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE, g = lane / 4, c = lane % 4;
    const int j0 = blockIdx.x * BN;
    const int first = j0 * s.group / BQ, tiles = (rows - 1) / BQ + 1;  // query tiles from the first that sees j0

    auto load_q = [&](int tile, int buf) {
        const int r0 = tile * BQ;
        auto off = [&](int r) { return fa_q_row<HD>(b, r0 + r, kvh, s); };
        auto live = [&](int r) { return r0 + r < rows; };
        fa_load_rows<HD>(qs + buf * BQ * LD, BQ, q, off, live);
        fa_load_rows<HD>(dos + buf * BQ * LD, BQ, dout, off, live);
        for (int r = threadIdx.x; r < BQ; r += blockDim.x) {
            const bool in = r0 + r < rows;
            lses[buf * BQ + r] = in ? lse[fa_stat(b, r0 + r, kvh, s)] : -INFINITY;
            Ds[buf * BQ + r] = in ? D[fa_stat(b, r0 + r, kvh, s)] : 0.0f;
        }
    };
    auto kv_off = [&](int r) { return fa_kv_row<HD>(b, j0 + r, kvh, s); };
    auto kv_live = [&](int r) { return j0 + r < s.T; };
    fa_load_rows<HD>(ks, BN, k, kv_off, kv_live);
    fa_load_rows<HD>(vs, BN, v, kv_off, kv_live);
    load_q(first, 0);
    cp_async_commit();

    // This thread's keys: A = j0 + warp·16 + g and B = A + 8 (rows of Sᵀ), dead if masked or past T.
    const int jA = j0 + warp * 16 + g, jB = jA + 8;
    const bool liveA = jA < s.T && key_mask[(size_t)b * s.T + jA];
    const bool liveB = jB < s.T && key_mask[(size_t)b * s.T + jB];
    const int warp_first = j0 + warp * 16;  // the warp's first key token
    float dk_acc[NO][4] = {}, dv_acc[NO][4] = {};

    for (int tile = first; tile < tiles; ++tile) {
        const int buf = (tile - first) % 2;
        cp_async_wait<0>();
        __syncthreads();
        if (tile + 1 < tiles) {
            load_q(tile + 1, 1 - buf);
            cp_async_commit();
        }
        // warp-uniform: the tile's last token is before every key of this warp, or no key is real
        if (warp_first >= s.T || (min(tile * BQ + BQ, rows) - 1) / s.group < warp_first) continue;

        float st[BQ / 8][4] = {}, dpt[BQ / 8][4] = {};
        fa_mma_abt<KT, BQ / 8, LD>(st, ks + warp * 16 * LD, qs + buf * BQ * LD);
        fa_mma_abt<KT, BQ / 8, LD>(dpt, vs + warp * 16 * LD, dos + buf * BQ * LD);
        #pragma unroll
        for (int nt = 0; nt < BQ / 8; ++nt) {
            #pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int rr = nt * 8 + 2 * c + (i % 2), R = tile * BQ + rr;
                const int j = i < 2 ? jA : jB;
                const float l = lses[buf * BQ + rr];
                const bool valid = (i < 2 ? liveA : liveB) && R < rows && j <= R / s.group && l != -INFINITY;
                const float p = valid ? expf(st[nt][i] * s.scale - l) : 0.0f;
                st[nt][i] = p;
                dpt[nt][i] = p * (dpt[nt][i] - Ds[buf * BQ + rr]);  // dsᵀ
            }
        }
        fa_mma_pb<BQ / 16, NO, LD>(dv_acc, st, dos + buf * BQ * LD);
        fa_mma_pb<BQ / 16, NO, LD>(dk_acc, dpt, qs + buf * BQ * LD);
    }
    const size_t rowA = jA < s.T ? fa_kv_row<HD>(b, jA, kvh, s) : 0, rowB = jB < s.T ? fa_kv_row<HD>(b, jB, kvh, s) : 0;
    fa_store_rows<NO>(dk, jA < s.T, rowA, s.scale, jB < s.T, rowB, s.scale, dk_acc);
    fa_store_rows<NO>(dv, jA < s.T, rowA, 1.0f, jB < s.T, rowB, 1.0f, dv_acc);
}

// ---- entry points, one per head dim -----------------------------------------------------------
// Their arguments are the reference kernels' (kernels/attention.cu), so one launcher serves both;
// B and hd are also carried by the grid and the template.
#define FA_DIMS FaDims{T, H, Hkv, H / Hkv, scale}

extern "C" __global__ void flash_forward_hd16(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const uint8_t* key_mask, int B, int T, int H, int Hkv, int hd, float scale) {
    flash_forward<16>(out, lse, q, k, v, key_mask, FA_DIMS);
}
extern "C" __global__ void flash_forward_hd32(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const uint8_t* key_mask, int B, int T, int H, int Hkv, int hd, float scale) {
    flash_forward<32>(out, lse, q, k, v, key_mask, FA_DIMS);
}
extern "C" __global__ void flash_forward_hd64(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const uint8_t* key_mask, int B, int T, int H, int Hkv, int hd, float scale) {
    flash_forward<64>(out, lse, q, k, v, key_mask, FA_DIMS);
}
extern "C" __global__ void flash_forward_hd128(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const uint8_t* key_mask, int B, int T, int H, int Hkv, int hd, float scale) {
    flash_forward<128>(out, lse, q, k, v, key_mask, FA_DIMS);
}

extern "C" __global__ void flash_backward_dq_hd16(bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse, const float* D, const uint8_t* key_mask, int B, int T, int H, int Hkv, int hd, float scale) {
    flash_backward_dq<16>(dq, dout, q, k, v, lse, D, key_mask, FA_DIMS);
}
extern "C" __global__ void flash_backward_dq_hd32(bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse, const float* D, const uint8_t* key_mask, int B, int T, int H, int Hkv, int hd, float scale) {
    flash_backward_dq<32>(dq, dout, q, k, v, lse, D, key_mask, FA_DIMS);
}
extern "C" __global__ void flash_backward_dq_hd64(bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse, const float* D, const uint8_t* key_mask, int B, int T, int H, int Hkv, int hd, float scale) {
    flash_backward_dq<64>(dq, dout, q, k, v, lse, D, key_mask, FA_DIMS);
}
extern "C" __global__ void flash_backward_dq_hd128(bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse, const float* D, const uint8_t* key_mask, int B, int T, int H, int Hkv, int hd, float scale) {
    flash_backward_dq<128>(dq, dout, q, k, v, lse, D, key_mask, FA_DIMS);
}

extern "C" __global__ void flash_backward_dkv_hd16(bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse, const float* D, const uint8_t* key_mask, int B, int T, int H, int Hkv, int hd, float scale) {
    flash_backward_dkv<16>(dk, dv, dout, q, k, v, lse, D, key_mask, FA_DIMS);
}
extern "C" __global__ void flash_backward_dkv_hd32(bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse, const float* D, const uint8_t* key_mask, int B, int T, int H, int Hkv, int hd, float scale) {
    flash_backward_dkv<32>(dk, dv, dout, q, k, v, lse, D, key_mask, FA_DIMS);
}
extern "C" __global__ void flash_backward_dkv_hd64(bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse, const float* D, const uint8_t* key_mask, int B, int T, int H, int Hkv, int hd, float scale) {
    flash_backward_dkv<64>(dk, dv, dout, q, k, v, lse, D, key_mask, FA_DIMS);
}
extern "C" __global__ void flash_backward_dkv_hd128(bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse, const float* D, const uint8_t* key_mask, int B, int T, int H, int Hkv, int hd, float scale) {
    flash_backward_dkv<128>(dk, dv, dout, q, k, v, lse, D, key_mask, FA_DIMS);
}
