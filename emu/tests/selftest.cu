// The software GPU's own test kernels (tests/emu.rs launches them). They are compiled for the
// software GPU only; each either exercises one built-in, with a result tests/emu.rs computes
// independently, or plants one fault that a named check must catch.
#include <cuda_bf16.h>
#include <stdint.h>

// out[t] = the value thread (t+1) % n wrote to shared memory, across a barrier.
extern "C" __global__ void emu_test_barrier(int* out) {
    __shared__ int s[1024];
    const int t = threadIdx.x, n = blockDim.x;
    s[t] = t * 7 + (int)blockIdx.x;
    __syncthreads();
    out[blockIdx.x * n + t] = s[(t + 1) % n];
}

// The same without the barrier: the race check must name s.
extern "C" __global__ void emu_test_missing_barrier(int* out) {
    __shared__ int s[1024];
    const int t = threadIdx.x, n = blockDim.x;
    s[t] = t * 7 + (int)blockIdx.x;
    out[blockIdx.x * n + t] = s[(t + 1) % n];
}

// One warp-synchronous assumption: lane 0 writes, the others read, with no __syncwarp.
extern "C" __global__ void emu_test_missing_syncwarp(int* out) {
    __shared__ int s[32];
    const int lane = threadIdx.x % 32;
    if (lane == 0) s[threadIdx.x / 32] = 42;
    out[threadIdx.x] = s[threadIdx.x / 32];
}

// The same with __syncwarp: legal, and no race.
extern "C" __global__ void emu_test_syncwarp(int* out) {
    __shared__ int s[32];
    const int lane = threadIdx.x % 32;
    if (lane == 0) s[threadIdx.x / 32] = 42;
    __syncwarp();
    out[threadIdx.x] = s[threadIdx.x / 32];
}

// Every shuffle flavour at one width; out is (5, blockDim.x):
//   shfl(src = 3*lane + 1), shfl_up(delta 3), shfl_down(delta 5), shfl_xor(mask 6), shfl of a double.
extern "C" __global__ void emu_test_shuffles(int* out, int width) {
    const int t = threadIdx.x, n = blockDim.x, lane = t % 32;
    const int v = 1000 + t;
    out[0 * n + t] = __shfl_sync(0xffffffffu, v, 3 * lane + 1, width);
    out[1 * n + t] = __shfl_up_sync(0xffffffffu, v, 3, width);
    out[2 * n + t] = __shfl_down_sync(0xffffffffu, v, 5, width);
    out[3 * n + t] = __shfl_xor_sync(0xffffffffu, v, 6, width);
    const double d = 0.5 + t;
    out[4 * n + t] = (int)(2.0 * __shfl_xor_sync(0xffffffffu, d, 1, width));
}

// Votes and reductions over p = value of the lane; out is (8, warps).
extern "C" __global__ void emu_test_votes(unsigned* out, const unsigned* values) {
    const int t = threadIdx.x, w = t / 32, warps = blockDim.x / 32;
    const unsigned v = values[t];
    const unsigned b = __ballot_sync(0xffffffffu, v % 3 == 0);
    const int any = __any_sync(0xffffffffu, v > 1000);
    const int all = __all_sync(0xffffffffu, v < 100000);
    const unsigned add = __reduce_add_sync(0xffffffffu, v);
    const unsigned mn = __reduce_min_sync(0xffffffffu, v);
    const unsigned mx = __reduce_max_sync(0xffffffffu, v);
    const unsigned x = __reduce_xor_sync(0xffffffffu, v);
    const int count = __syncthreads_count(v % 2 == 0);
    if (t % 32 == 0) {
        out[0 * warps + w] = b;
        out[1 * warps + w] = any;
        out[2 * warps + w] = all;
        out[3 * warps + w] = add;
        out[4 * warps + w] = mn;
        out[5 * warps + w] = mx;
        out[6 * warps + w] = x;
        out[7 * warps + w] = count;
    }
}

// Atomics from every thread of every block (blocks run on several OS threads at once).
extern "C" __global__ void emu_test_atomics(float* fsum, int* isum, unsigned* umax, unsigned* cas_winner) {
    const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(fsum, 0.5f);
    atomicAdd(isum, (int)g);
    atomicMax(umax, g * 3u);
    atomicCAS(cas_winner, 0xffffffffu, g);
}

// Dynamic shared memory: out[t] = what thread n-1-t stored, across a barrier.
extern "C" __global__ void emu_test_dynamic_shared(float* out) {
    extern __shared__ float emu_test_dyn[];
    const int t = threadIdx.x, n = blockDim.x;
    emu_test_dyn[t] = 0.25f * t;
    emu_test_dyn[n + t] = -1.0f * t;
    __syncthreads();
    out[t] = emu_test_dyn[n - 1 - t] + emu_test_dyn[n + (n - 1 - t)];
}

// Reads one float past the dynamic shared memory the launch asked for (n floats).
extern "C" __global__ void emu_test_dynamic_overrun(float* out, int n) {
    extern __shared__ float emu_test_dyn[];
    emu_test_dyn[threadIdx.x] = 1.0f;
    __syncthreads();
    if (threadIdx.x == 0) out[0] = emu_test_dyn[n];
}

// bf16 and f16 conversions: rounded[i] = bits of __float2bfloat16(in[i]), widened[i] = the f32
// bits of the bf16 with bits i, half_bits[i] = bits of __float2half(in[i]).
extern "C" __global__ void emu_test_conversions(uint16_t* rounded, uint32_t* widened, uint16_t* half_bits,
                                                const float* in, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    rounded[i] = __bfloat16_as_ushort(__float2bfloat16(in[i]));
    half_bits[i] = __half_as_ushort(__float2half(in[i]));
    if (i < 65536) widened[i] = __float_as_uint(__bfloat162float(__ushort_as_bfloat16((unsigned short)i)));
}

// Writes one element past the end of buf (n elements): the guard fill must catch it.
extern "C" __global__ void emu_test_write_past_end(float* buf, int n) {
    if (threadIdx.x == 0 && blockIdx.x == 0) buf[n] = 1.0f;
}

// Writes far past the end of buf: the guard page must catch it, and the process live on.
extern "C" __global__ void emu_test_write_far(float* buf, int n) {
    if (threadIdx.x == 3) buf[n + 256] = 1.0f;  // 1 KiB past the end: in the guard page
}

// Lane 5 leaves before a full-mask shuffle: the lanes that wait for it must be reported.
extern "C" __global__ void emu_test_exited_lane(int* out) {
    if (threadIdx.x % 32 == 5) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}

// A result that depends on the schedule when nothing orders the threads: the last writer wins.
extern "C" __global__ void emu_test_last_writer(int* out) {
    __shared__ int winner;
    winner = threadIdx.x;
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = winner;
}

// y[i] += v, for the graph tests: a parameter value that capture must copy.
extern "C" __global__ void emu_test_add(float* y, float v, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += v;
}

// The two-stream pair: one stream writes buf, another reads it into out (tests/emu.rs orders them
// with an event, a host synchronisation, or nothing, which the cross-stream race check must find).
extern "C" __global__ void emu_test_produce(float* buf, int n, float value) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) buf[i] = value + (float)i;
}

extern "C" __global__ void emu_test_consume(const float* buf, float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = 2.0f * buf[i];
}

// kernels/common.cuh's xor_butterfly: the runtime's one-collective twin against the same
// butterfly written with shuffles, for each shape the kernels use. out[k * n + t] for
// k = 0..3 (shuffles) and 4..7 (twin): f32 sum 16→1, f32 max 16→1, f32 sum 1→2; f64 sum 16→1 in
// out64[t] (shuffles) and out64[n + t] (twin).
extern "C" __global__ void emu_test_butterfly(float* out, double* out64, const float* in) {
    const int t = threadIdx.x, n = blockDim.x;
    const float v = in[t];
    float s = v, m = v, q = v;
    double d = (double)v * 1e-3;
    for (int o = 16; o >= 1; o /= 2) {
        s += __shfl_xor_sync(0xffffffffu, s, o);
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        d += __shfl_xor_sync(0xffffffffu, d, o);
    }
    for (int o = 1; o <= 2; o *= 2) q += __shfl_xor_sync(0xffffffffu, q, o);
    out[0 * n + t] = s;
    out[1 * n + t] = m;
    out[2 * n + t] = q;
    out64[t] = d;
    const auto twin = [](int op, float x, int first, int last) {
        return __uint_as_float((uint32_t)emu_xor_butterfly(0xffffffffu, op, __float_as_uint(x), first, last));
    };
    out[4 * n + t] = twin(EMU_BUTTERFLY_ADD_F32, v, 16, 1);
    out[5 * n + t] = twin(EMU_BUTTERFLY_MAX_F32, v, 16, 1);
    out[6 * n + t] = twin(EMU_BUTTERFLY_ADD_F32, v, 1, 2);
    const double dv = (double)v * 1e-3;
    out64[n + t] = __builtin_bit_cast(double, emu_xor_butterfly(0xffffffffu, EMU_BUTTERFLY_ADD_F64,
                                                                __builtin_bit_cast(uint64_t, dv), 16, 1));
}

// kernels/common.cuh's block reductions: the runtime's one-barrier twin (emu_block_reduce) against
// the CUDA code written out (warp butterflies of shuffles, a __shared__ slot per warp, two
// barriers). out[k * n + t]: k = 0, 1 the CUDA sum and max, k = 2, 3 the twin's; out64[t] the CUDA
// f64 sum, out64[n + t] the twin's. One block of n threads, whole warps.
extern "C" __global__ void emu_test_block_reduce(float* out, double* out64, const float* in) {
    __shared__ float scratch[32];
    __shared__ double scratch64[32];
    const int t = threadIdx.x, n = blockDim.x, lane = t % 32, warp = t / 32, warps = (n + 31) / 32;
    const float v = in[t];
    const double dv = (double)v * 1e-3;
    float s = v, m = v;
    double d = dv;
    for (int o = 16; o >= 1; o /= 2) {
        s += __shfl_xor_sync(0xffffffffu, s, o);
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        d += __shfl_xor_sync(0xffffffffu, d, o);
    }
    __syncthreads();
    if (lane == 0) scratch[warp] = s;
    if (lane == 0) scratch64[warp] = d;
    __syncthreads();
    s = lane < warps ? scratch[lane] : 0.0f;
    d = lane < warps ? scratch64[lane] : 0.0;
    __syncthreads();
    if (lane == 0) scratch[warp] = m;
    __syncthreads();
    m = lane < warps ? scratch[lane] : -INFINITY;
    for (int o = 16; o >= 1; o /= 2) {
        s += __shfl_xor_sync(0xffffffffu, s, o);
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        d += __shfl_xor_sync(0xffffffffu, d, o);
    }
    out[0 * n + t] = s;
    out[1 * n + t] = m;
    out64[t] = d;
    out[2 * n + t] = __uint_as_float((uint32_t)emu_block_reduce(EMU_BLOCK_SUM_F32, __float_as_uint(v)));
    out[3 * n + t] = __uint_as_float((uint32_t)emu_block_reduce(EMU_BLOCK_MAX_F32, __float_as_uint(v)));
    out64[n + t] = __builtin_bit_cast(double, emu_block_reduce(EMU_BLOCK_SUM_F64, __builtin_bit_cast(uint64_t, dv)));
}

// A block reduction that thread 0 skips (it exits first): a CUDA warp butterfly would wait for it.
extern "C" __global__ void emu_test_block_reduce_exited(float* out) {
    if (threadIdx.x == 0) return;
    out[threadIdx.x] = __uint_as_float((uint32_t)emu_block_reduce(EMU_BLOCK_SUM_F32, __float_as_uint(1.0f)));
}
