// Tensor-core and asynchronous-copy instructions, each behind one wrapper. On the GPU a wrapper is
// one inline-PTX instruction; on the software GPU (__CUDACC__EMU) it is an emulated twin with the
// instruction's exact data movement, so a kernel built on these runs and is checked on the CPU.
//
// Fragment layouts are the PTX ISA's for mma.m16n8k16 with bf16 inputs. With g = lane / 4 and
// c = lane % 4, and two bf16 per 32-bit register (the lower column in the low half):
//   A (16x16, row-major)  a[0] = A[g][2c..2c+1]   a[1] = A[g+8][2c..]   a[2] = A[g][2c+8..]   a[3] = A[g+8][2c+8..]
//   B (16x8, col-major)   b[0] = B[2c..2c+1][g]   b[1] = B[2c+8..2c+9][g]
//   C, D (16x8, f32)      d[0], d[1] = D[g][2c], D[g][2c+1]     d[2], d[3] = D[g+8][2c], D[g+8][2c+1]
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16(lo)) |
           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16(hi)) << 16);
}


// d (16x8 f32) += a (16x16 bf16) · b (16x8 bf16), warp-wide.
__device__ __forceinline__ void mma_bf16_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#ifdef __CUDACC__EMU
    // The operands are read and d written here, in checked code, as the instruction's registers.
    // The whole warp's D is computed once, by the last lane to arrive (emu/runtime/launch.cpp).
    const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    float acc[4] = {d[0], d[1], d[2], d[3]};
    emu_mma_bf16_16816(0xffffffffu, mine, acc);
    for (int i = 0; i < 4; ++i) d[i] = acc[i];
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Four 8x8 bf16 matrices from shared memory, warp-wide: lanes 8i..8i+7 give the addresses of
// matrix i's rows (16 bytes each, 16-byte aligned). r[i] = matrix i's [lane/4][2(lane%4)..+1];
// with `trans`, its [2(lane%4)][lane/4] and [2(lane%4)+1][lane/4] (the transpose's fragment).
template <bool trans>
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const __nv_bfloat16* row) {
#ifdef __CUDACC__EMU
    const uint64_t p = (uint64_t)(uintptr_t)row;
    const uint32_t mine[2] = {(uint32_t)p, (uint32_t)(p >> 32)};
    uint32_t all[32 * 2];
    emu_warp_gather(0xffffffffu, mine, 2, all);
    const int lane = (int)emu_lane();
    auto row_of = [&](int l) {
        return (const __nv_bfloat16*)(uintptr_t)((uint64_t)all[2 * l] | ((uint64_t)all[2 * l + 1] << 32));
    };
    for (int i = 0; i < 4; ++i) {
        if (!trans) {
            r[i] = *(const uint32_t*)(row_of(8 * i + lane / 4) + 2 * (lane % 4));
        } else {
            const unsigned short lo = __bfloat16_as_ushort(row_of(8 * i + 2 * (lane % 4))[lane / 4]);
            const unsigned short hi = __bfloat16_as_ushort(row_of(8 * i + 2 * (lane % 4) + 1)[lane / 4]);
            r[i] = (uint32_t)lo | ((uint32_t)hi << 16);
        }
    }
#else
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(row);
    if (trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
#endif
}

// 16 bytes from global to shared memory without passing through registers; zero-filled when
// `valid` is false (then `src` is not read, but must still be a global address). The data is
// there after cp_async_wait and visible to other threads after the barrier that follows it.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
#ifdef __CUDACC__EMU
    emu_cp_async(dst, src, valid);  // in flight until this thread's cp_async_wait covers it
#else
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(src), "r"(valid ? 16 : 0));
#endif
}

// Closes the group of cp.async issued so far by this thread.
__device__ __forceinline__ void cp_async_commit() {
#ifdef __CUDACC__EMU
    emu_cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most `pending` of this thread's committed groups are still in flight.
template <int pending>
__device__ __forceinline__ void cp_async_wait() {
#ifdef __CUDACC__EMU
    emu_cp_async_wait(pending);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(pending));
#endif
}
