// The shared-memory race check. The kernels are compiled with -fsanitize=thread, but against these
// hooks instead of the thread sanitizer's own runtime: every load and store of kernel code calls
// __tsan_readN / __tsan_writeN here. An address inside this OS thread's shared memory (the
// module's TLS block, where the __shared__ thread_locals live) updates a shadow cell per 2 bytes.
//
// Two accesses to one cell race when they come from different threads, at least one writes, and
// nothing orders them: no __syncthreads between them (the same epoch), and no warp collective
// between them when both threads are in one warp.
#include "runtime.h"

#include <dlfcn.h>
#include <link.h>

#include <cstring>

namespace emu {

// ---- this thread's shared memory --------------------------------------------------------------
namespace {
struct TlsSearch {
    uintptr_t module_base;
    void* data;
    size_t size;
};
}  // namespace

static int find_tls(struct dl_phdr_info* info, size_t, void* arg) {
    TlsSearch* s = (TlsSearch*)arg;
    if (info->dlpi_addr != s->module_base) return 0;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        if (info->dlpi_phdr[i].p_type == PT_TLS) {
            s->data = info->dlpi_tls_data;
            s->size = info->dlpi_phdr[i].p_memsz;
        }
    }
    return 1;
}

void init_shared_range(Worker& w) {
    void* bases[16];
    const size_t n = emu_dynamic_shared(bases, 16);  // also allocates this thread's TLS block
    for (size_t i = 0; i < n && i < 16; ++i) w.dynamic_shared.push_back({(uint8_t*)bases[i], kMaxDynamicShared});
    std::sort(w.dynamic_shared.begin(), w.dynamic_shared.end());  // in address order, for the fill
    Dl_info self{};
    dladdr((void*)&emu_kernel_table, &self);
    TlsSearch s{(uintptr_t)self.dli_fbase, nullptr, 0};
    dl_iterate_phdr(find_tls, &s);
    if (!s.data) {
        fprintf(stderr, "prefer software GPU: cannot find this thread's shared memory (the module's TLS block)\n");
        abort();
    }
    w.shared_lo = (uintptr_t)s.data;
    w.shared_size = s.size;
    w.shadow.assign(s.size / 2 + 16, ShadowCell{});  // slack for a wide access at the end
}

// A new block: a new epoch, and shared memory full of garbage (NaN as f32, bf16 and f16), as
// undefined as the GPU's. Only the dynamic bytes the launch asked for are filled.
void race_begin_block(Worker& w) {
    ++w.epoch;
    cp_async_begin_block(w);
    uint8_t* lo = (uint8_t*)w.shared_lo;
    uint8_t* hi = lo + w.shared_size;
    uint8_t* at = lo;
    for (auto& [base, size] : w.dynamic_shared) {
        if (base > at) memset(at, 0xff, base - at);
        memset(base, 0xff, w.launch->dynamic_shared < size ? w.launch->dynamic_shared : size);
        at = base + size;
    }
    if (hi > at) memset(at, 0xff, hi - at);
}

void race_barrier(Worker& w) { ++w.epoch; }

// ---- naming a shared-memory address -----------------------------------------------------------
std::string describe_shared(uintptr_t offset) {
    // The symbol table names static __shared__ arrays (as thread_locals, mangled with their kernel).
    Dl_info self{};
    dladdr((void*)&emu_kernel_table, &self);
    std::string name = format("shared memory byte %zu", (size_t)offset);
    FILE* file = fopen(self.dli_fname, "rb");
    if (!file) return name;
    fseek(file, 0, SEEK_END);
    std::vector<uint8_t> elf((size_t)ftell(file));
    fseek(file, 0, SEEK_SET);
    const bool ok = fread(elf.data(), 1, elf.size(), file) == elf.size();
    fclose(file);
    if (!ok || elf.size() < sizeof(Elf64_Ehdr)) return name;
    const Elf64_Ehdr* eh = (const Elf64_Ehdr*)elf.data();
    const Elf64_Shdr* sh = (const Elf64_Shdr*)(elf.data() + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum; ++i) {
        if (sh[i].sh_type != SHT_SYMTAB) continue;
        const Elf64_Sym* syms = (const Elf64_Sym*)(elf.data() + sh[i].sh_offset);
        const char* strtab = (const char*)elf.data() + sh[sh[i].sh_link].sh_offset;
        for (size_t k = 0; k < sh[i].sh_size / sizeof(Elf64_Sym); ++k) {
            const Elf64_Sym& s = syms[k];
            if (ELF64_ST_TYPE(s.st_info) != STT_TLS) continue;
            if (offset >= s.st_value && offset < s.st_value + (s.st_size ? s.st_size : 1)) {
                const char* mangled = strtab + s.st_name;
                // _ZZ<len><kernel>E<len><var>: kernel::var, without a demangler.
                std::string pretty = mangled;
                if (strncmp(mangled, "_ZZ", 3) == 0) {
                    const char* p = mangled + 3;
                    const int klen = atoi(p);
                    while (*p >= '0' && *p <= '9') ++p;
                    std::string kernel(p, klen);
                    p += klen;
                    if (*p == 'E') ++p;
                    const int vlen = atoi(p);
                    while (*p >= '0' && *p <= '9') ++p;
                    pretty = kernel + "::" + std::string(p, vlen);
                }
                return format("__shared__ %s, byte %zu", pretty.c_str(), (size_t)(offset - s.st_value));
            }
        }
    }
    return name;
}

// ---- the shadow -------------------------------------------------------------------------------
// `before`: what the other thread did ("wrote", "read"); `now`: what this one does.
static void report(Worker& w, Fiber& f, uintptr_t offset, const char* before, uint32_t other, bool write) {
    if (w.race_reported) return;
    w.race_reported = true;
    const uint3 t = f.info->thread_idx;
    const std::string who = other == kManyReaders ? std::string("several threads") : format("thread %u", other);
    fail_block(w, format("kernel %s, block (%u,%u,%u): shared-memory race on %s: %s %s it, then thread %u "
                         "(%u,%u,%u) %s it, with no __syncthreads (or, within a warp, __syncwarp) between",
                         w.launch->kernel->name, w.block_idx.x, w.block_idx.y, w.block_idx.z,
                         describe_shared(offset).c_str(), who.c_str(), before, f.tid, t.x, t.y, t.z,
                         write ? "wrote" : "read"));
}

static inline bool ordered(uint32_t prev_epoch, uint16_t prev_tid, uint32_t prev_wsync, uint32_t epoch, uint32_t tid,
                           uint32_t wsync) {
    return prev_epoch != epoch || prev_tid == tid || (prev_tid / 32 == tid / 32 && prev_wsync < wsync);
}

// A global-memory access: widens the launch's touched range of the buffer it falls in (one of the
// buffers its parameters point into; anything else, such as the fiber's own stack, is passed by).
static inline void touch_global(Worker& w, uintptr_t addr, size_t size, bool write) {
    const Launch& l = *w.launch;
    if (addr - l.buffers_lo >= l.buffers_span) return;
    size_t i = w.touch_hint;
    if (i >= l.buffers.size() || addr - l.buffers[i].lo >= l.buffers[i].hi - l.buffers[i].lo) {
        for (i = 0; i < l.buffers.size(); ++i)
            if (addr - l.buffers[i].lo < l.buffers[i].hi - l.buffers[i].lo) break;
        if (i == l.buffers.size()) return;
        w.touch_hint = i;
    }
    Touch& t = w.touch[i];
    if (write) {
        t.write_lo = addr < t.write_lo ? addr : t.write_lo;
        t.write_hi = addr + size > t.write_hi ? addr + size : t.write_hi;
    } else {
        t.read_lo = addr < t.read_lo ? addr : t.read_lo;
        t.read_hi = addr + size > t.read_hi ? addr + size : t.read_hi;
    }
}

void note_atomic(const void* addr, size_t size) {
    Fiber* f = (Fiber*)emu_info()->fiber;
    Worker& w = *f->worker;
    if ((uintptr_t)addr - w.shared_lo < w.shared_size || w.launch->buffers.empty()) return;
    touch_global(w, (uintptr_t)addr, size, true);
}

// A shared-memory access (the hooks below have passed over every other).
__attribute__((noinline)) static void shared_access(uintptr_t addr, size_t size, bool write) {
    Fiber& f = *(Fiber*)emu_info()->fiber;
    Worker& w = *f.worker;
    const uintptr_t offset = addr - w.shared_lo;
    for (auto& [base, cap] : w.dynamic_shared) {
        const uintptr_t d = addr - (uintptr_t)base;
        if (d < cap && d + size > w.launch->dynamic_shared) {
            fail_block(w, format("kernel %s, block (%u,%u,%u), thread %u: %s dynamic shared memory at byte %zu, past "
                                 "the %zu bytes the launch asked for",
                                 w.launch->kernel->name, w.block_idx.x, w.block_idx.y, w.block_idx.z, f.tid,
                                 write ? "writes" : "reads", (size_t)d, w.launch->dynamic_shared),
                       kIllegalAddress);
            return;
        }
    }
    // Bytes a cp.async has not landed yet hold nothing anyone may read or write, race check or not.
    if (w.cp_async_pending && !cp_async_check_access(w, f, offset, size, write)) return;
    if (!race_check_enabled.load(std::memory_order_relaxed)) return;
    const uint32_t epoch = w.epoch, tid = f.tid, warp = tid / 32, wsync = w.warps[warp].syncs;
    for (uintptr_t cell = offset / 2; cell <= (offset + size - 1) / 2; ++cell) {
        ShadowCell& c = w.shadow[cell];
        if (c.w_epoch == epoch && !ordered(c.w_epoch, c.w_tid, c.w_wsync, epoch, tid, wsync)) {
            report(w, f, cell * 2, "wrote", c.w_tid, write);
            return;
        }
        if (!write) {
            if (c.r_epoch != epoch) {
                c.r_epoch = epoch;
                c.r_tid = (uint16_t)tid;
                c.r_warp = (uint16_t)warp;
                c.r_wsync = wsync;
            } else if (c.r_tid != tid) {
                c.r_tid = kManyReaders;
                if (c.r_warp != warp) c.r_warp = kManyWarps;
                c.r_wsync = wsync > c.r_wsync ? wsync : c.r_wsync;
            }
            continue;
        }
        if (c.r_epoch == epoch) {
            const bool conflict = c.r_tid == kManyReaders ? !(c.r_warp == warp && c.r_wsync < wsync)
                                                          : !ordered(c.r_epoch, c.r_tid, c.r_wsync, epoch, tid, wsync);
            if (conflict) {
                report(w, f, cell * 2, "read", c.r_tid, true);
                return;
            }
        }
        c.w_epoch = epoch;
        c.w_tid = (uint16_t)tid;
        c.w_wsync = wsync;
        c.r_epoch = 0;
    }
}

// A global-memory (or stack) access of a launch whose buffers the cross-stream check follows.
__attribute__((noinline)) static void global_access(uintptr_t addr, size_t size, bool write) {
    Worker& w = *((Fiber*)emu_info()->fiber)->worker;
    touch_global(w, addr, size, write);
}

// Every load and store of kernel code comes here, most of them to global memory or the stack:
// those leave after two loads from the fiber's info page (no call, no pointer chase), unless the
// launch's global accesses are followed for the cross-stream check (streams.cpp).
static inline __attribute__((always_inline)) void access(uintptr_t addr, size_t size, bool write) {
    const EmuThreadInfo* info = emu_info();
    if (addr - info->shared_lo < info->shared_size) {
        shared_access(addr, size, write);
    } else if (info->track_global) {
        global_access(addr, size, write);
    }
}

void race_access(uintptr_t addr, size_t size, bool write) { access(addr, size, write); }

}  // namespace emu

// ---- the thread sanitizer's instrumentation hooks ---------------------------------------------
// Only kernel code is instrumented, and it only runs on fibers. Hidden, so the kernels call them
// directly rather than through the procedure linkage table.
#define EMU_HOOK __attribute__((visibility("hidden")))
#define EMU_TSAN_SIZES(X) X(1) X(2) X(4) X(8) X(16)
#define EMU_TSAN_HOOKS(n)                                                                                             \
    extern "C" EMU_HOOK void __tsan_read##n(void* a) { emu::access((uintptr_t)a, n, false); }                         \
    extern "C" EMU_HOOK void __tsan_write##n(void* a) { emu::access((uintptr_t)a, n, true); }                         \
    extern "C" EMU_HOOK void __tsan_unaligned_read##n(void* a) { emu::access((uintptr_t)a, n, false); }               \
    extern "C" EMU_HOOK void __tsan_unaligned_write##n(void* a) { emu::access((uintptr_t)a, n, true); }               \
    extern "C" EMU_HOOK void __tsan_volatile_read##n(void* a) { emu::access((uintptr_t)a, n, false); }                \
    extern "C" EMU_HOOK void __tsan_volatile_write##n(void* a) { emu::access((uintptr_t)a, n, true); }                \
    extern "C" EMU_HOOK void __tsan_unaligned_volatile_read##n(void* a) { emu::access((uintptr_t)a, n, false); }      \
    extern "C" EMU_HOOK void __tsan_unaligned_volatile_write##n(void* a) { emu::access((uintptr_t)a, n, true); }
EMU_TSAN_SIZES(EMU_TSAN_HOOKS)

extern "C" EMU_HOOK void __tsan_read_range(void* a, size_t n) {
    if (n) emu::access((uintptr_t)a, n, false);
}
extern "C" EMU_HOOK void __tsan_write_range(void* a, size_t n) {
    if (n) emu::access((uintptr_t)a, n, true);
}
extern "C" EMU_HOOK void __tsan_init() {}
extern "C" EMU_HOOK void __tsan_func_entry(void*) {}
extern "C" EMU_HOOK void __tsan_func_exit() {}
extern "C" EMU_HOOK void __tsan_vptr_update(void**, void*) {}
extern "C" EMU_HOOK void __tsan_vptr_read(void**) {}
