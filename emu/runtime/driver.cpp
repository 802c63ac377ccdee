// The slice of the CUDA driver API that cudarc and the engine call, on the CPU. Device pointers are
// host pointers, stream work goes to streams.cpp's queues (which also hold events), and memory info
// reports the host's memory. cudarc resolves each symbol by name when it is first called, so a
// function missing here fails loudly, by name, in cudarc ("Missing symbol").
#include "runtime.h"

#include <map>

#include <sys/sysinfo.h>

#include <chrono>
#include <cstdarg>
#include <cstring>
#include <unordered_map>

namespace emu {

// ---- errors -----------------------------------------------------------------------------------
namespace {
std::mutex error_lock;
int last_code = 0;
std::string last_message;
char message_slots[8][2048];
std::atomic<unsigned> next_slot{0};
}  // namespace

std::string format(const char* fmt, ...) {
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

void set_error(int code, const std::string& message) {
    std::lock_guard<std::mutex> g(error_lock);
    last_code = code;
    last_message = "prefer software GPU: " + message;
}

std::string last_error_message() {
    std::lock_guard<std::mutex> g(error_lock);
    const std::string prefix = "prefer software GPU: ";
    return last_message.compare(0, prefix.size(), prefix) == 0 ? last_message.substr(prefix.size()) : last_message;
}

static const char* generic_error(int code) {
    switch (code) {
        case 0: return "no error";
        case kInvalidValue: return "invalid argument";
        case kOutOfMemory: return "out of memory";
        case kNotInitialized: return "initialization error";
        case kInvalidHandle: return "invalid resource handle";
        case kNotFound: return "named symbol not found";
        case kIllegalAddress: return "an illegal memory access was encountered";
        case kLaunchFailed: return "unspecified launch failure";
        case kNotSupported: return "operation not supported";
        case 900: return "operation not permitted when stream is capturing";
        case 901: return "operation failed due to a previous error during capture";
        default: return "unknown error";
    }
}

// ---- counters, for tests that assert what a step does -----------------------------------------
namespace {
std::atomic<uint64_t> n_launches{0}, n_allocs{0}, n_frees{0}, n_htod{0}, n_dtoh{0}, n_syncs{0};
}

}  // namespace emu

using namespace emu;

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
struct EmuContext {
    int device;
};
struct EmuModule {
    int unused;
};
struct EmuFunction {
    const Kernel* kernel;
    int max_dynamic_shared;
};
typedef EmuContext* CUcontext;
typedef EmuModule* CUmodule;
typedef EmuFunction* CUfunction;
typedef void* CUstream;
typedef StreamEvent* CUevent;

static EmuContext primary_context{0};
static std::atomic<EmuContext*> current_context{nullptr};
static bool initialised = false;

static CUresult fail(int code, const std::string& message) {
    set_error(code, message);
    return code;
}


extern "C" {

// ---- the stand-in's own entry points ----------------------------------------------------------
// One line describing the stand-in, for `prefer info`.
int prefer_emu_describe(char* buf, size_t len) {
    size_t count = 0;
    emu_kernel_table(&count);
    snprintf(buf, len, "prefer software GPU: %zu kernels, %zu worker threads, schedule seed %llu, race check %s",
             count, worker_count(), (unsigned long long)current_seed(), race_check_enabled ? "on" : "off");
    return 0;
}

// Driver calls so far: launches, allocations, frees, host-to-device and device-to-host copies,
// and host synchronisations (stream, event and context).
void prefer_emu_counters(uint64_t out[6]) {
    out[0] = n_launches;
    out[1] = n_allocs;
    out[2] = n_frees;
    out[3] = n_htod;
    out[4] = n_dtoh;
    out[5] = n_syncs;
}

// ---- errors -----------------------------------------------------------------------------------
CUresult cuGetErrorString(CUresult error, const char** out) {
    std::lock_guard<std::mutex> g(error_lock);
    if (error == last_code && !last_message.empty()) {
        char* slot = message_slots[next_slot++ % 8];
        snprintf(slot, sizeof message_slots[0], "%s", last_message.c_str());
        *out = slot;
    } else {
        *out = generic_error(error);
    }
    return 0;
}

CUresult cuGetErrorName(CUresult error, const char** out) {
    *out = generic_error(error);
    return 0;
}

// ---- initialisation, devices, contexts --------------------------------------------------------
CUresult cuInit(unsigned int) {
    initialised = true;
    return 0;
}

CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return 0;
}

CUresult cuDeviceGetCount(int* count) {
    if (!initialised) return fail(kNotInitialized, "cuDeviceGetCount before cuInit");
    *count = 1;
    return 0;
}

CUresult cuDeviceGet(CUdevice* dev, int ordinal) {
    if (ordinal != 0) return fail(kInvalidValue, format("the software GPU is device 0; asked for %d", ordinal));
    *dev = 0;
    return 0;
}

CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, (size_t)len, "prefer software GPU (CPU)");
    return 0;
}

static void host_memory(size_t* free_bytes, size_t* total_bytes) {
    struct sysinfo si {};
    sysinfo(&si);
    *total_bytes = (size_t)si.totalram * si.mem_unit;
    *free_bytes = ((size_t)si.freeram + si.bufferram) * si.mem_unit + cached_device_bytes();
}

CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    size_t free_bytes;
    host_memory(&free_bytes, bytes);
    return 0;
}

CUresult cuDeviceGetAttribute(int* v, int attribute, CUdevice) {
    switch (attribute) {
        case 1: *v = 1024; break;                     // max threads per block
        case 2: case 3: *v = 1024; break;             // max block dims x, y
        case 4: *v = 64; break;                       // max block dim z
        case 5: *v = 2147483647; break;               // max grid dim x
        case 6: case 7: *v = 65535; break;            // max grid dims y, z
        case 8: *v = (int)kDefaultDynamicShared; break;  // shared memory per block
        case 10: *v = 32; break;                      // warp size
        case 12: *v = 65536; break;                   // registers per block
        case 16: *v = (int)worker_count(); break;     // multiprocessors: the worker threads
        case 39: *v = 2048; break;                    // max threads per multiprocessor
        case 75: *v = 9; break;                       // compute capability 9.0, as the H100
        case 76: *v = 0; break;
        case 81: *v = 233472; break;                  // shared memory per multiprocessor
        case 97: *v = (int)kMaxDynamicShared; break;  // shared memory per block, opt-in
        case 115: *v = 0; break;                      // memory pools: none, so cudarc uses cuMemAlloc
        default:
            return fail(kNotSupported, format("cuDeviceGetAttribute: attribute %d is not modelled", attribute));
    }
    return 0;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice) {
    *ctx = &primary_context;
    return 0;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return 0; }
CUresult cuCtxGetCurrent(CUcontext* ctx) {
    *ctx = current_context.load();
    return 0;
}
CUresult cuCtxSetCurrent(CUcontext ctx) {
    current_context.store(ctx);
    return 0;
}
CUresult cuCtxGetDevice(CUdevice* dev) {
    *dev = 0;
    return 0;
}
CUresult cuCtxSynchronize() {
    if (CUresult r = refuse_in_capture("cuCtxSynchronize")) return r;
    ++n_syncs;
    return synchronize_all(true);
}

// ---- memory -----------------------------------------------------------------------------------
int emu_mem_alloc(uintptr_t* out, size_t size);
int emu_mem_free(uintptr_t ptr);
int prefer_emu_check_range(uintptr_t ptr, size_t bytes, char* why, size_t why_len);

CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes) {
    host_memory(free_bytes, total_bytes);
    return 0;
}

CUresult cuMemAlloc_v2(CUdeviceptr* out, size_t bytes) {
    if (CUresult r = refuse_in_capture("a memory allocation")) return r;
    ++n_allocs;
    uintptr_t p = 0;
    const int r = emu_mem_alloc(&p, bytes);
    *out = p;
    return r;
}
CUresult cuMemAllocAsync(CUdeviceptr* out, size_t bytes, CUstream) { return cuMemAlloc_v2(out, bytes); }
// Every queue runs dry first, so no queued work outlives its buffer (CUDA's cuMemFree waits too).
CUresult cuMemFree_v2(CUdeviceptr p) {
    if (CUresult r = refuse_in_capture("freeing memory")) return r;
    ++n_frees;
    const CUresult earlier = synchronize_all(false);
    forget_accesses(p);
    const CUresult r = emu_mem_free(p);
    return earlier ? earlier : r;
}
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream) { return cuMemFree_v2(p); }

static CUresult check_range(const char* op, CUdeviceptr p, size_t bytes) {
    char why[512];
    if (bytes && prefer_emu_check_range(p, bytes, why, sizeof why)) return fail(kInvalidValue, format("%s: %s", op, why));
    return 0;
}

// The bodies of memsets and copies, run when their stream gets to them (or by a graph's replay);
// each tells the stream work what device bytes it touched.
static int fill8(CUdeviceptr dst, unsigned char v, size_t n) {
    memset((void*)dst, v, n);
    note_access(dst, dst + n, true);
    return 0;
}
static int fill32(CUdeviceptr dst, unsigned int v, size_t n) {
    uint32_t* p = (uint32_t*)dst;
    for (size_t i = 0; i < n; ++i) p[i] = v;
    note_access(dst, dst + n * 4, true);
    return 0;
}
static int copy_dtod(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
    memmove((void*)dst, (const void*)src, bytes);
    note_access(src, src + bytes, false);
    note_access(dst, dst + bytes, true);
    return 0;
}

// A memset or device copy: a graph node inside a capture, else work on `stream`.
static CUresult device_work(CUstream stream, const char* label, std::function<int()> body) {
    if (capturing()) {
        capture_node(std::move(body));
        return 0;
    }
    return submit_work(stream, label, {}, std::move(body), false);
}

CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    if (CUresult r = check_range("cuMemsetD8", dst, n)) return r;
    return device_work(nullptr, "cuMemsetD8", [=] { return fill8(dst, v, n); });
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream s) {
    if (CUresult r = check_range("cuMemsetD8Async", dst, n)) return r;
    return device_work(s, "cuMemsetD8Async", [=] { return fill8(dst, v, n); });
}
CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned int v, size_t n) {
    if (CUresult r = check_range("cuMemsetD32", dst, n * 4)) return r;
    return device_work(nullptr, "cuMemsetD32", [=] { return fill32(dst, v, n); });
}
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned int v, size_t n, CUstream s) {
    if (CUresult r = check_range("cuMemsetD32Async", dst, n * 4)) return r;
    return device_work(s, "cuMemsetD32Async", [=] { return fill32(dst, v, n); });
}

// Staging buffers for copies from the host, kept for reuse (up to 1 GiB of them, each serving a
// copy of down to half its size): a fresh buffer per copy would be mapped, page-faulted and zeroed
// by the kernel page by page each time, and a model's upload stages gigabytes.
namespace {
struct StagingPool {
    std::mutex lock;
    std::multimap<size_t, uint8_t*> idle;  // by capacity
    size_t idle_bytes = 0;
};
StagingPool& staging_pool() {
    static StagingPool& pool = *new StagingPool();  // never destroyed: copies may be queued at exit
    return pool;
}
constexpr size_t kStagingKept = size_t(1) << 30;

// A copy of `bytes` host bytes at `src`, null when there is no memory for it.
std::shared_ptr<uint8_t> stage(const void* src, size_t bytes) {
    StagingPool& pool = staging_pool();
    size_t capacity = bytes ? bytes : 1;
    uint8_t* buf = nullptr;
    {
        std::lock_guard<std::mutex> g(pool.lock);
        auto it = pool.idle.lower_bound(capacity);
        if (it != pool.idle.end() && it->first / 2 <= capacity) {
            buf = it->second;
            capacity = it->first;
            pool.idle_bytes -= capacity;
            pool.idle.erase(it);
        }
    }
    if (!buf) buf = (uint8_t*)malloc(capacity);
    if (!buf) return nullptr;
    memcpy(buf, src, bytes);
    return std::shared_ptr<uint8_t>(buf, [capacity](uint8_t* b) {
        StagingPool& pool = staging_pool();
        std::lock_guard<std::mutex> g(pool.lock);
        if (capacity > kStagingKept) return free(b);
        while (pool.idle_bytes + capacity > kStagingKept) {  // the largest idle ones go first
            auto largest = std::prev(pool.idle.end());
            pool.idle_bytes -= largest->first;
            free(largest->second);
            pool.idle.erase(largest);
        }
        pool.idle.emplace(capacity, b);
        pool.idle_bytes += capacity;
    });
}
}  // namespace

// From pageable host memory CUDA stages the bytes before the call returns: the copy takes them now.
static CUresult copy_from_host(const char* op, CUstream stream, CUdeviceptr dst, const void* src, size_t bytes) {
    if (CUresult r = refuse_in_capture("a copy from host memory")) return r;
    ++n_htod;
    if (CUresult r = check_range(op, dst, bytes)) return r;
    // The legacy stream runs its work before the call returns: no staging needed there.
    if ((uintptr_t)stream <= 2)
        return submit_work(stream, op, {}, [dst, src, bytes] {
            memcpy((void*)dst, src, bytes);
            note_access(dst, dst + bytes, true);
            return 0;
        }, false);
    std::shared_ptr<uint8_t> staged = stage(src, bytes);
    if (!staged) {
        return fail(kOutOfMemory, format("%s: no host memory to stage %zu bytes", op, bytes));
    }
    return submit_work(stream, op, {}, [dst, staged, bytes] {
        memcpy((void*)dst, staged.get(), bytes);
        note_access(dst, dst + bytes, true);
        return 0;
    }, false);
}
// Into pageable host memory CUDA returns once the copy is done, asynchronous or not.
static CUresult copy_to_host(const char* op, CUstream stream, void* dst, CUdeviceptr src, size_t bytes) {
    if (CUresult r = refuse_in_capture("a copy to host memory")) return r;
    ++n_dtoh;
    if (CUresult r = check_range(op, src, bytes)) return r;
    return submit_work(stream, op, {}, [dst, src, bytes] {
        memcpy(dst, (const void*)src, bytes);
        note_access(src, src + bytes, false);
        return 0;
    }, true);
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t bytes) {
    return copy_from_host("cuMemcpyHtoD", nullptr, dst, src, bytes);
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t bytes, CUstream s) {
    return copy_from_host("cuMemcpyHtoDAsync", s, dst, src, bytes);
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t bytes) {
    return copy_to_host("cuMemcpyDtoH", nullptr, dst, src, bytes);
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t bytes, CUstream s) {
    return copy_to_host("cuMemcpyDtoHAsync", s, dst, src, bytes);
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
    if (CUresult r = check_range("cuMemcpyDtoD (source)", src, bytes)) return r;
    if (CUresult r = check_range("cuMemcpyDtoD (destination)", dst, bytes)) return r;
    return device_work(nullptr, "cuMemcpyDtoD", [=] { return copy_dtod(dst, src, bytes); });
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream s) {
    if (CUresult r = check_range("cuMemcpyDtoDAsync (source)", src, bytes)) return r;
    if (CUresult r = check_range("cuMemcpyDtoDAsync (destination)", dst, bytes)) return r;
    return device_work(s, "cuMemcpyDtoDAsync", [=] { return copy_dtod(dst, src, bytes); });
}

// ---- modules and kernels ----------------------------------------------------------------------
// Any image loads: the software GPU cannot run SASS, so a module is the table of kernels compiled
// for the CPU from the same kernels/*.cu.
static EmuModule the_module{0};
static std::mutex function_lock;
static std::unordered_map<std::string, EmuFunction*> functions;

CUresult cuModuleLoadData(CUmodule* module, const void* image) {
    if (!image) return fail(kInvalidValue, "cuModuleLoadData: null image");
    *module = &the_module;
    return 0;
}
CUresult cuModuleUnload(CUmodule) { return 0; }

CUresult cuModuleGetFunction(CUfunction* out, CUmodule, const char* name) {
    std::lock_guard<std::mutex> g(function_lock);
    auto it = functions.find(name);
    if (it != functions.end()) {
        *out = it->second;
        return 0;
    }
    size_t count = 0;
    const Kernel* table = emu_kernel_table(&count);
    for (size_t i = 0; i < count; ++i) {
        if (strcmp(table[i].name, name) == 0) {
            EmuFunction* f = new EmuFunction{&table[i], (int)kDefaultDynamicShared};
            functions[name] = f;
            *out = f;
            return 0;
        }
    }
    return fail(kNotFound, format("no kernel named %s among the %zu compiled for the software GPU", name, count));
}

CUresult cuFuncSetAttribute(CUfunction f, int attribute, int value) {
    if (attribute == 8) {  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        if (value < 0 || (size_t)value > kMaxDynamicShared)
            return fail(kInvalidValue, format("kernel %s: %d bytes of dynamic shared memory (the limit is %zu)",
                                              f->kernel->name, value, kMaxDynamicShared));
        f->max_dynamic_shared = value;
        return 0;
    }
    return fail(kNotSupported, format("cuFuncSetAttribute: attribute %d is not modelled", attribute));
}

CUresult cuFuncGetAttribute(int* v, int attribute, CUfunction f) {
    switch (attribute) {
        case 0: *v = 1024; return 0;  // max threads per block
        case 8: *v = f->max_dynamic_shared; return 0;
        default: return fail(kNotSupported, format("cuFuncGetAttribute: attribute %d is not modelled", attribute));
    }
}
CUresult cuFuncSetCacheConfig(CUfunction, int) { return 0; }

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, CUstream stream, void** params, void** extra) {
    const char* name = f->kernel->name;
    if (extra) return fail(kNotSupported, format("kernel %s: launch parameters through `extra` are not modelled", name));
    const uint64_t threads = (uint64_t)bx * by * bz;
    if (bx == 0 || by == 0 || bz == 0 || threads > 1024 || bx > 1024 || by > 1024 || bz > 64)
        return fail(kInvalidValue, format("kernel %s: a block of (%u,%u,%u) = %llu threads (at most 1024, and "
                                          "(1024,1024,64) per dimension)",
                                          name, bx, by, bz, (unsigned long long)threads));
    if (gx == 0 || gy == 0 || gz == 0 || gx > 2147483647u || gy > 65535 || gz > 65535)
        return fail(kInvalidValue, format("kernel %s: a grid of (%u,%u,%u) blocks (each at least 1; at most "
                                          "(2^31-1, 65535, 65535))",
                                          name, gx, gy, gz));
    if (shared > (unsigned)f->max_dynamic_shared)
        return fail(kInvalidValue,
                    format("kernel %s: %u bytes of dynamic shared memory, over its limit of %d (48 KB unless raised "
                           "with cuFuncSetAttribute, at most %zu)",
                           name, shared, f->max_dynamic_shared, kMaxDynamicShared));
    if (!params) return fail(kInvalidValue, format("kernel %s: no kernel parameters", name));
    // The parameter values as they are now, each in its own 8-byte-aligned slot: a graph bakes
    // them in, and queued work runs after the caller's arguments are gone.
    const Kernel* k = f->kernel;
    std::vector<size_t> offsets;
    size_t total = 0;
    for (size_t i = 0; i < k->arg_count; ++i) {
        offsets.push_back(total);
        total += (k->arg_sizes[i] + 7) / 8 * 8;
    }
    auto values = std::make_shared<std::vector<uint64_t>>(total / 8 + 1);
    for (size_t i = 0; i < k->arg_count; ++i)
        memcpy((uint8_t*)values->data() + offsets[i], params[i], k->arg_sizes[i]);
    const dim3 grid{gx, gy, gz}, block{bx, by, bz};
    auto run = [k, grid, block, shared, values, offsets]() {
        std::vector<void*> ptrs;
        for (size_t off : offsets) ptrs.push_back((uint8_t*)values->data() + off);
        return launch_kernel(k, grid, block, shared, ptrs.data());
    };
    if (capturing()) {
        capture_node([run]() {
            ++n_launches;
            return run();
        });
        return 0;
    }
    ++n_launches;
    return submit_work(stream, format("kernel %s", name), {}, run, false);
}

// ---- streams and events (streams.cpp) ---------------------------------------------------------
CUresult cuStreamCreate(CUstream* s, unsigned flags) { return create_stream(s, flags); }
CUresult cuStreamCreateWithPriority(CUstream* s, unsigned flags, int) { return create_stream(s, flags); }
CUresult cuStreamDestroy_v2(CUstream s) { return destroy_stream(s); }
CUresult cuStreamSynchronize(CUstream s) {
    if (CUresult r = refuse_in_capture("cuStreamSynchronize")) return r;
    ++n_syncs;
    return synchronize_stream(s);
}
CUresult cuStreamQuery(CUstream s) {
    if (capturing()) return 0;
    return query_stream(s);
}
CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned) {
    if (capturing()) return 0;  // one captured stream: its nodes replay in order anyway
    return wait_event(s, e);
}

CUresult cuEventCreate(CUevent* e, unsigned) {
    *e = create_event();
    return 0;
}
CUresult cuEventRecord(CUevent e, CUstream s) {
    if (capturing()) return 0;
    return record_event(e, s);
}
CUresult cuEventSynchronize(CUevent e) {
    ++n_syncs;
    return synchronize_event(e);
}
CUresult cuEventQuery(CUevent e) { return query_event(e); }
CUresult cuEventElapsedTime(float* ms, CUevent start, CUevent end) { return elapsed_ms(ms, start, end); }
CUresult cuEventElapsedTime_v2(float* ms, CUevent start, CUevent end) { return elapsed_ms(ms, start, end); }
CUresult cuEventDestroy_v2(CUevent e) {
    destroy_event(e);
    return 0;
}

// For the cuBLASLt stand-in: `run(arg)` as work on `stream` (a graph node inside a capture), which
// reads and writes the device ranges given as (address, bytes, writes) triples. The work owns
// `arg` and frees it with `drop`. Returns a CUresult.
int prefer_emu_submit_host(void* stream, const char* label, int (*run)(void*), void* arg, void (*drop)(void*),
                           const uint64_t* ranges, size_t count) {
    std::shared_ptr<void> owned(arg, drop);
    std::vector<DeviceAccess> touched;
    for (size_t i = 0; i < count; ++i) touched.push_back(DeviceAccess{ranges[3 * i], ranges[3 * i] + ranges[3 * i + 1], ranges[3 * i + 2] != 0});
    const std::string what = label;
    auto body = [run, owned, touched, what]() {
        for (const DeviceAccess& a : touched) note_access(a.lo, a.hi, a.write);
        if (int status = run(owned.get())) {
            set_error(kLaunchFailed, format("%s failed with status %d", what.c_str(), status));
            return (int)kLaunchFailed;
        }
        return 0;
    };
    if (capturing()) {
        capture_node(body);
        return 0;
    }
    return submit_work(stream, what, {}, body, false);
}

}  // extern "C"
