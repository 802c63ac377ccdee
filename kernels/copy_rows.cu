// Row copies by index pairs: K/V rows into the paged cache, and a prefill's last-token rows.
// The CPU oracle is src/ops/cpu/copy_rows.rs.
#include "common.cuh"

// dst[pairs[m].1] = src[pairs[m].0], rows of `width` bf16. One block per pair.
extern "C" __global__ void copy_rows(__nv_bfloat16* dst, const __nv_bfloat16* src, const uint32_t* pairs,
                                     int m, int width) {
    const int r = blockIdx.x;
    if (r >= m) return;
    const __nv_bfloat16* from = src + (size_t)pairs[2 * r] * width;
    __nv_bfloat16* to = dst + (size_t)pairs[2 * r + 1] * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) to[i] = from[i];
}
