// The software GPU's cuBLASLt: the slice src/ops/cuda/matmul.rs calls, with cuBLASLt's documented
// semantics. Matrices are column-major: element (r, c) of a layout with leading dimension ld sits
// at r + c*ld; a batch of them sits at multiples of the strided-batch offset.
//
//   D = alpha * op(A) * op(B) + beta * C,   op(A) m x k, op(B) k x n, C and D m x n
//
// A and B are bf16 or f32, C and D bf16 or f32 (the same), compute and scale types 32-bit float.
// Products are accumulated in f32 and D is rounded once, as the GPU does. Every attribute the
// engine may set is either implemented or refused with a message; none is ignored.
//
// The inner product runs through an sgemm the host process may register (prefer registers
// matrixmultiply's) and otherwise through the plain loop below.
#include "../include/emu_cuda.h"

#include <algorithm>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

typedef int cublasStatus_t;
enum : int {
    kSuccess = 0,
    kNotInitialized = 1,
    kInvalidValue = 7,
    kExecutionFailed = 13,
    kNotSupported = 15,
};
enum : int { kR32F = 0, kR16F = 2, kR16BF = 14 };  // cudaDataType
constexpr int kCompute32F = 68;                     // CUBLAS_COMPUTE_32F

struct Handle {
    int magic;
};
struct MatmulDesc {
    int compute_type, scale_type;
    int transa = 0, transb = 0;
};
struct Layout {
    int type;
    uint64_t rows, cols;
    int64_t ld;
    int batch = 1;
    int64_t batch_stride = 0;
};
struct Preference {
    uint64_t max_workspace = 0;
};
struct Algo {
    uint64_t data[8];
};
struct HeuristicResult {
    Algo algo;
    size_t workspace_size;
    cublasStatus_t state;
    float waves_count;
    int reserved[4];
};

// f32 gemm with explicit strides: C[i,j] = alpha * sum_p A[i,p] * B[p,j] + beta * C[i,j], where
// beta == 0 never reads C.
typedef void (*Sgemm)(size_t m, size_t k, size_t n, float alpha, const float* a, ptrdiff_t rsa, ptrdiff_t csa,
                      const float* b, ptrdiff_t rsb, ptrdiff_t csb, float beta, float* c, ptrdiff_t rsc,
                      ptrdiff_t csc);
static Sgemm registered_sgemm = nullptr;

// From the stand-in driver, when it is loaded (it always is under `--device emu`).
extern "C" int prefer_emu_check_range(uintptr_t ptr, size_t bytes, char* why, size_t why_len) __attribute__((weak));

static cublasStatus_t refuse(cublasStatus_t status, const std::string& why) {
    fprintf(stderr, "prefer software GPU (cuBLASLt): %s\n", why.c_str());
    return status;
}

static std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
static std::string fmt(const char* f, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

static size_t type_bytes(int t) { return t == kR32F ? 4 : 2; }

// Bytes a layout reaches from its base, over all batches.
static size_t reach_bytes(const Layout& l) {
    if (l.rows == 0 || l.cols == 0) return 0;
    const size_t one = ((l.cols - 1) * (size_t)l.ld + l.rows) * type_bytes(l.type);
    return one + (size_t)(l.batch - 1) * (size_t)l.batch_stride * type_bytes(l.type);
}

static cublasStatus_t check_buffer(const char* which, const void* p, const Layout& l) {
    if (!prefer_emu_check_range || !p) return kSuccess;
    char why[512];
    if (prefer_emu_check_range((uintptr_t)p, reach_bytes(l), why, sizeof why))
        return refuse(kInvalidValue, fmt("cublasLtMatmul: matrix %s (%llu x %llu, ld %lld, %d batches): %s", which,
                                         (unsigned long long)l.rows, (unsigned long long)l.cols, (long long)l.ld,
                                         l.batch, why));
    return kSuccess;
}

extern "C" {

void prefer_emu_set_sgemm(Sgemm f) { registered_sgemm = f; }

cublasStatus_t cublasLtCreate(Handle** h) {
    *h = new Handle{0x6c74};
    return kSuccess;
}
cublasStatus_t cublasLtDestroy(Handle* h) {
    delete h;
    return kSuccess;
}
size_t cublasLtGetVersion() { return 130000; }

cublasStatus_t cublasLtMatmulDescCreate(MatmulDesc** d, int compute_type, int scale_type) {
    if (compute_type != kCompute32F || scale_type != kR32F)
        return refuse(kNotSupported, fmt("matmul descriptor with compute type %d and scale type %d: only "
                                         "CUBLAS_COMPUTE_32F with CUDA_R_32F scales are modelled",
                                         compute_type, scale_type));
    *d = new MatmulDesc{compute_type, scale_type};
    return kSuccess;
}
cublasStatus_t cublasLtMatmulDescDestroy(MatmulDesc* d) {
    delete d;
    return kSuccess;
}

static cublasStatus_t read_i32(const void* buf, size_t size, int* out, const char* what) {
    if (size != sizeof(int32_t)) return refuse(kInvalidValue, fmt("%s: %zu bytes given, 4 expected", what, size));
    memcpy(out, buf, 4);
    return kSuccess;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(MatmulDesc* d, int attr, const void* buf, size_t size) {
    int v = 0;
    switch (attr) {
        case 3:  // TRANSA
        case 4:  // TRANSB
            if (cublasStatus_t s = read_i32(buf, size, &v, attr == 3 ? "TRANSA" : "TRANSB")) return s;
            if (v != 0 && v != 1)
                return refuse(kNotSupported, fmt("operation %d: only CUBLAS_OP_N and CUBLAS_OP_T are modelled", v));
            (attr == 3 ? d->transa : d->transb) = v;
            return kSuccess;
        case 2:  // POINTER_MODE
            if (cublasStatus_t s = read_i32(buf, size, &v, "POINTER_MODE")) return s;
            if (v != 0) return refuse(kNotSupported, "pointer modes other than host scalars are not modelled");
            return kSuccess;
        case 7:  // EPILOGUE
            if (cublasStatus_t s = read_i32(buf, size, &v, "EPILOGUE")) return s;
            if (v != 1) return refuse(kNotSupported, fmt("epilogue %d: only CUBLASLT_EPILOGUE_DEFAULT is modelled", v));
            return kSuccess;
        default:
            return refuse(kNotSupported, fmt("matmul descriptor attribute %d is not modelled", attr));
    }
}

cublasStatus_t cublasLtMatrixLayoutCreate(Layout** l, int type, uint64_t rows, uint64_t cols, int64_t ld) {
    if (type != kR32F && type != kR16BF && type != kR16F)
        return refuse(kNotSupported, fmt("matrix type %d: only f32, bf16 and f16 are modelled", type));
    if (ld < (int64_t)(rows ? rows : 1))
        return refuse(kInvalidValue, fmt("a column-major %llu x %llu layout needs ld >= %llu, not %lld",
                                         (unsigned long long)rows, (unsigned long long)cols,
                                         (unsigned long long)rows, (long long)ld));
    *l = new Layout{type, rows, cols, ld};
    return kSuccess;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(Layout* l) {
    delete l;
    return kSuccess;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(Layout* l, int attr, const void* buf, size_t size) {
    switch (attr) {
        case 1: {  // ORDER
            int v = 0;
            if (cublasStatus_t s = read_i32(buf, size, &v, "ORDER")) return s;
            if (v != 0) return refuse(kNotSupported, "only CUBLASLT_ORDER_COL layouts are modelled");
            return kSuccess;
        }
        case 5: {  // BATCH_COUNT
            int v = 0;
            if (cublasStatus_t s = read_i32(buf, size, &v, "BATCH_COUNT")) return s;
            if (v < 1) return refuse(kInvalidValue, fmt("batch count %d", v));
            l->batch = v;
            return kSuccess;
        }
        case 6:  // STRIDED_BATCH_OFFSET
            if (size != 8) return refuse(kInvalidValue, "STRIDED_BATCH_OFFSET takes an int64");
            memcpy(&l->batch_stride, buf, 8);
            return kSuccess;
        default: return refuse(kNotSupported, fmt("matrix layout attribute %d is not modelled", attr));
    }
}

cublasStatus_t cublasLtMatmulPreferenceCreate(Preference** p) {
    *p = new Preference{};
    return kSuccess;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(Preference* p) {
    delete p;
    return kSuccess;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(Preference* p, int attr, const void* buf, size_t size) {
    switch (attr) {
        case 1:  // MAX_WORKSPACE_BYTES
            if (size != 8) return refuse(kInvalidValue, "MAX_WORKSPACE_BYTES takes a uint64");
            memcpy(&p->max_workspace, buf, 8);
            return kSuccess;
        case 5: case 6: case 7: case 8: {  // MIN_ALIGNMENT_{A,B,C,D}_BYTES: any algorithm here accepts any
            uint32_t v = 0;
            if (size != 4) return refuse(kInvalidValue, "MIN_ALIGNMENT_*_BYTES takes a uint32");
            memcpy(&v, buf, 4);
            if (v == 0 || (v & (v - 1))) return refuse(kInvalidValue, fmt("alignment %u is not a power of two", v));
            return kSuccess;
        }
        default: return refuse(kNotSupported, fmt("matmul preference attribute %d is not modelled", attr));
    }
}

// The shapes op(A) m x k, op(B) k x n, C and D m x n, as cuBLASLt checks them.
static cublasStatus_t shapes(const MatmulDesc* d, const Layout* a, const Layout* b, const Layout* c, const Layout* dd,
                             uint64_t* m, uint64_t* n, uint64_t* k) {
    const uint64_t am = d->transa ? a->cols : a->rows, ak = d->transa ? a->rows : a->cols;
    const uint64_t bk = d->transb ? b->cols : b->rows, bn = d->transb ? b->rows : b->cols;
    if (ak != bk || c->rows != am || c->cols != bn || dd->rows != am || dd->cols != bn)
        return refuse(kInvalidValue,
                      fmt("op(A) is %llu x %llu, op(B) %llu x %llu, C %llu x %llu, D %llu x %llu: they do not chain",
                          (unsigned long long)am, (unsigned long long)ak, (unsigned long long)bk,
                          (unsigned long long)bn, (unsigned long long)c->rows, (unsigned long long)c->cols,
                          (unsigned long long)dd->rows, (unsigned long long)dd->cols));
    if (a->type != b->type || c->type != dd->type)
        return refuse(kNotSupported, "A and B must share a type, and C and D another");
    if (a->batch != b->batch || a->batch != c->batch || a->batch != dd->batch)
        return refuse(kInvalidValue, "A, B, C and D have different batch counts");
    *m = am;
    *n = bn;
    *k = ak;
    return kSuccess;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(Handle*, MatmulDesc* d, Layout* a, Layout* b, Layout* c, Layout* dd,
                                              Preference*, int requested, HeuristicResult* results, int* returned) {
    uint64_t m, n, k;
    if (cublasStatus_t s = shapes(d, a, b, c, dd, &m, &n, &k)) return s;
    if (requested < 1) return refuse(kInvalidValue, "cublasLtMatmulAlgoGetHeuristic: requested no algorithm");
    memset(&results[0], 0, sizeof(HeuristicResult));
    results[0].waves_count = 1.0f;
    *returned = 1;
    return kSuccess;
}

// Scratch that grows to the largest matmul seen and is then reused: a fresh vector per call would
// map (and page-fault) a gigabyte for an LM head's weight each time.
struct Scratch {
    float* data = nullptr;
    size_t capacity = 0;
    float* get(size_t n) {
        if (n == 0) n = 1;  // an empty matrix still gets a pointer (k = 0 is a valid product)
        if (n > capacity) {
            free(data);
            data = (float*)malloc(n * sizeof(float));
            capacity = data ? n : 0;
        }
        return data;
    }
};

// A matrix in f32, compact: element (r, c) at r + c*rows.
extern "C++" template <typename T, float (*convert)(T)>
void widen(const T* src, const Layout& l, float* out) {
    for (uint64_t c = 0; c < l.cols; ++c) {
        const T* col = src + c * l.ld;
        float* dst = out + c * l.rows;
        for (uint64_t r = 0; r < l.rows; ++r) dst[r] = convert(col[r]);
    }
}
static void to_f32_cols(const uint8_t* base, const Layout& l, float* out) {
    if (l.type == kR16BF)
        widen<uint16_t, emu_bf16_bits_to_f32>((const uint16_t*)base, l, out);
    else
        widen<uint16_t, emu_f16_bits_to_f32>((const uint16_t*)base, l, out);
}
// A 16-bit matrix widened to f32; a big one (an LM head's weight) in two halves of its columns at
// once, one on a helper thread.
static void to_f32(const uint8_t* base, const Layout& l, float* out) {
    if (l.rows * l.cols < (8u << 20) || l.cols < 2) return to_f32_cols(base, l, out);
    Layout half = l;
    half.cols = l.cols / 2;
    Layout rest = l;
    rest.cols = l.cols - half.cols;
    std::thread helper(to_f32_cols, base, std::cref(half), out);
    to_f32_cols(base + half.cols * (size_t)l.ld * 2, rest, out + half.cols * l.rows);
    helper.join();
}

static void plain_sgemm(size_t m, size_t k, size_t n, float alpha, const float* a, ptrdiff_t rsa, ptrdiff_t csa,
                        const float* b, ptrdiff_t rsb, ptrdiff_t csb, float beta, float* c, ptrdiff_t rsc,
                        ptrdiff_t csc) {
    for (size_t i = 0; i < m; ++i)
        for (size_t j = 0; j < n; ++j) {
            float s = 0.0f;
            for (size_t p = 0; p < k; ++p) s += a[i * rsa + p * csa] * b[p * rsb + j * csb];
            float& out = c[i * rsc + j * csc];
            out = beta == 0.0f ? alpha * s : alpha * s + beta * out;
        }
}

/// One matmul with everything it reads copied, so that it can run now or later (a graph node).
struct MatmulJob {
    uint64_t m, n, k;
    int transa, transb;
    Layout la, lb, lc, ld;
    const void *A, *B, *C;
    void* D;
    float alpha, beta;
};

static void drop_job(void* p) { delete (MatmulJob*)p; }

// D = alpha * acc + beta * C for a 16-bit D, from the f32 products `acc` (compact, m x n); beta == 0
// never reads C.
extern "C++" template <float (*widen1)(unsigned short), unsigned short (*narrow)(float)>
void finish_16(const float* acc, uint64_t m, uint64_t n, float alpha, float beta, const uint16_t* c, int64_t ldc,
               uint16_t* d, int64_t ldd) {
    for (uint64_t jj = 0; jj < n; ++jj) {
        const float* a = acc + jj * m;
        uint16_t* out = d + jj * ldd;
        if (beta == 0.0f) {
            for (uint64_t i = 0; i < m; ++i) out[i] = narrow(alpha * a[i]);
        } else {
            const uint16_t* in = c + jj * ldc;
            for (uint64_t i = 0; i < m; ++i) out[i] = narrow(alpha * a[i] + beta * widen1(in[i]));
        }
    }
}

static int run_job(void* p) {
    const MatmulJob& j = *(const MatmulJob*)p;
    const uint64_t m = j.m, n = j.n, k = j.k;
    const Layout *la = &j.la, *lb = &j.lb, *lc = &j.lc, *ld = &j.ld;
    const float alpha = j.alpha, beta = j.beta;
    // f32 operands are read in place; 16-bit ones are widened to f32 (compact, leading dimension =
    // rows) into scratch each thread keeps. An f32 D takes alpha and beta in the sgemm itself; a
    // 16-bit D is rounded once from the f32 products, as the GPU rounds it.
    static thread_local Scratch a_scratch, b_scratch, c_scratch;
    const bool wide_a = la->type == kR32F, wide_d = ld->type == kR32F;
    float* a32 = wide_a ? nullptr : a_scratch.get(la->rows * la->cols);
    float* b32 = wide_a ? nullptr : b_scratch.get(lb->rows * lb->cols);
    float* c32 = wide_d ? nullptr : c_scratch.get(m * n);
    if ((!wide_a && (!a32 || !b32)) || (!wide_d && !c32)) {
        refuse(kExecutionFailed, fmt("cublasLtMatmul: no host memory for a %llu x %llu x %llu product",
                                     (unsigned long long)m, (unsigned long long)n, (unsigned long long)k));
        return kExecutionFailed;
    }
    const Sgemm sgemm = registered_sgemm ? registered_sgemm : plain_sgemm;
    const size_t ea = type_bytes(la->type), ec = type_bytes(lc->type);
    const ptrdiff_t lda = wide_a ? la->ld : la->rows, ldb = wide_a ? lb->ld : lb->rows;
    for (int batch = 0; batch < la->batch; ++batch) {
        const uint8_t* a = (const uint8_t*)j.A + (size_t)batch * la->batch_stride * ea;
        const uint8_t* b = (const uint8_t*)j.B + (size_t)batch * lb->batch_stride * ea;
        const uint8_t* c = (const uint8_t*)j.C + (size_t)batch * lc->batch_stride * ec;
        uint8_t* dst = (uint8_t*)j.D + (size_t)batch * ld->batch_stride * ec;
        const float* fa = (const float*)a;
        const float* fb = (const float*)b;
        if (!wide_a) {
            to_f32(a, *la, a32);
            to_f32(b, *lb, b32);
            fa = a32;
            fb = b32;
        }
        // Where the product lands, and with which alpha and beta.
        float* out = c32;
        ptrdiff_t ldo = (ptrdiff_t)m;
        float out_alpha = 1.0f, out_beta = 0.0f;
        if (wide_d) {
            out = (float*)dst;
            ldo = ld->ld;
            out_alpha = alpha;
            out_beta = beta;
            if (beta != 0.0f && c != dst)
                for (uint64_t jj = 0; jj < n; ++jj)
                    memcpy(out + jj * ldo, (const float*)c + jj * lc->ld, m * sizeof(float));
        }
        if (k > 0) {
            sgemm(m, k, n, out_alpha, fa, j.transa ? lda : 1, j.transa ? 1 : lda, fb, j.transb ? ldb : 1,
                  j.transb ? 1 : ldb, out_beta, out, 1, ldo);
        } else {
            for (uint64_t jj = 0; jj < n; ++jj)
                for (uint64_t i = 0; i < m; ++i) out[i + jj * ldo] = out_beta == 0.0f ? 0.0f : out_beta * out[i + jj * ldo];
        }
        if (wide_d) continue;
        if (ld->type == kR16BF)
            finish_16<emu_bf16_bits_to_f32, emu_f32_to_bf16_bits>(c32, m, n, alpha, beta, (const uint16_t*)c, lc->ld,
                                                                  (uint16_t*)dst, ld->ld);
        else
            finish_16<emu_f16_bits_to_f32, emu_f32_to_f16_bits>(c32, m, n, alpha, beta, (const uint16_t*)c, lc->ld,
                                                                (uint16_t*)dst, ld->ld);
    }
    return kSuccess;
}

cublasStatus_t cublasLtMatmul(Handle* h, MatmulDesc* d, const void* alpha_p, const void* A, Layout* la,
                              const void* B, Layout* lb, const void* beta_p, const void* C, Layout* lc, void* D,
                              Layout* ld, const Algo*, void*, size_t, void* stream) {
    if (!h) return refuse(kNotInitialized, "cublasLtMatmul without a handle");
    uint64_t m, n, k;
    if (cublasStatus_t s = shapes(d, la, lb, lc, ld, &m, &n, &k)) return s;
    if (C != D && (lc->ld != ld->ld || lc->batch_stride != ld->batch_stride))
        return refuse(kNotSupported, "C and D in different buffers must share a layout");
    for (auto [name, p, l] : {std::tuple{"A", A, la}, {"B", B, lb}, {"C", C, lc}, {"D", (const void*)D, ld}})
        if (cublasStatus_t s = check_buffer(name, p, *l)) return s;
    auto* job = new MatmulJob{m, n, k, d->transa, d->transb, *la, *lb, *lc, *ld, A, B, C, D, 0.0f, 0.0f};
    memcpy(&job->alpha, alpha_p, 4);
    memcpy(&job->beta, beta_p, 4);
    // The product is work on the stream (libcuda's stand-in queues it, or records it as a graph node
    // inside a capture), with the scalars and layouts as they are now, as a cuBLASLt kernel takes
    // them; it reads A, B (and C when beta is not 0) and writes D.
    using SubmitHost = int (*)(void*, const char*, int (*)(void*), void*, void (*)(void*), const uint64_t*, size_t);
    static const SubmitHost submit = (SubmitHost)dlsym(RTLD_DEFAULT, "prefer_emu_submit_host");
    if (submit) {
        const uint64_t ranges[] = {(uint64_t)A, reach_bytes(*la), 0, (uint64_t)B, reach_bytes(*lb), 0,
                                   (uint64_t)C, job->beta != 0.0f ? reach_bytes(*lc) : 0, 0,
                                   (uint64_t)D, reach_bytes(*ld), 1};
        if (int r = submit(stream, "cuBLASLt matmul", run_job, job, drop_job, ranges, 4)) {
            // The driver's message says why (a race, a fault, an earlier failure on the stream).
            using ErrorString = int (*)(int, const char**);
            static const ErrorString describe = (ErrorString)dlsym(RTLD_DEFAULT, "cuGetErrorString");
            const char* text = nullptr;
            if (describe) describe(r, &text);
            return refuse(kExecutionFailed, fmt("matmul m=%llu n=%llu k=%llu: %s", (unsigned long long)m,
                                                (unsigned long long)n, (unsigned long long)k,
                                                text ? text : "the stand-in driver refused it"));
        }
        return kSuccess;
    }
    const int status = run_job(job);
    drop_job(job);
    return status;
}

}  // extern "C"
