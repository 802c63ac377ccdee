// Device memory on the host. Every allocation is its own mapping:
//
//   [guard page][0xff fill ... data (256-aligned) ... 0xff fill up to a 256-byte end][guard page]
//
// Fresh memory is 0xff bytes (NaN as f32, bf16 and f16), so reading what was never written shows.
// An access that leaves the mapping hits a guard page and faults (fault.cpp names the buffer); a
// write into the fill around the data is found by check_guards after every launch.
//
// A freed mapping is kept for the next allocation of its size, or of down to half its size (at the
// mapping's end, its unused front pages a wider guard), with its data pages made inaccessible
// meanwhile, so a kernel that reads freed memory still faults; reusing it costs one 0xff fill
// instead of mapping and faulting in every page again (a training step frees and allocates the
// same activations each time). Mappings of 2 MiB and more ask for huge pages.
#include "runtime.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <vector>

namespace emu {

namespace {
constexpr size_t kPage = 4096, kAlign = 256;
constexpr uint8_t kFill = 0xff;

struct Allocation {
    uint8_t* map;
    size_t map_bytes;
    uint8_t* pages;  // its first data page: the last data pages before the back guard page
    uint8_t* data;
    size_t size;
    size_t padded;  // size rounded up to 256
};

std::mutex lock;
std::map<uintptr_t, Allocation> live;  // by data address
size_t live_bytes = 0, peak_bytes = 0;  // bytes asked for, now and at the most

// Freed mappings by size, oldest first within a size; their data pages are PROT_NONE.
std::multimap<size_t, uint8_t*> cached;
std::vector<std::pair<uint8_t*, size_t>> cache_order;  // (map, map_bytes), oldest first
size_t cached_bytes = 0;

// At most a quarter of the machine's memory waits in the cache.
size_t cache_limit() {
    static const size_t limit = (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE) / 4;
    return limit;
}

void uncache(uint8_t* map, size_t map_bytes) {
    for (auto it = cached.lower_bound(map_bytes); it != cached.end() && it->first == map_bytes; ++it)
        if (it->second == map) {
            cached.erase(it);
            break;
        }
    for (auto it = cache_order.begin(); it != cache_order.end(); ++it)
        if (it->first == map) {
            cache_order.erase(it);
            break;
        }
    cached_bytes -= map_bytes;
}

// Unmaps cached mappings, oldest first, until `keep` bytes or fewer remain cached.
void trim_cache(size_t keep) {
    while (cached_bytes > keep && !cache_order.empty()) {
        const auto [map, map_bytes] = cache_order.front();
        uncache(map, map_bytes);
        munmap(map, map_bytes);
    }
}

// A mapping of at least `need` bytes with its guard pages in place, whose last `need - 2 pages`
// before the back guard page are readable and writable; its size goes to *map_bytes. A cached one
// of that size, or of up to twice it, when one waits (its pages are already in memory: a fresh
// mapping costs a page fault and the kernel's zeroing per page, most of a big buffer's
// allocation); its pages before those stay inaccessible, a wider front guard. Else a new one.
uint8_t* take_mapping(size_t need, size_t* map_bytes) {
    const size_t data_pages = need - 2 * kPage;
    auto it = cached.lower_bound(need);
    if (it != cached.end() && it->first / 2 <= need) {
        uint8_t* map = it->second;
        const size_t bytes = it->first;
        uncache(map, bytes);
        mprotect(map + bytes - kPage - data_pages, data_pages, PROT_READ | PROT_WRITE);
        *map_bytes = bytes;
        return map;
    }
    void* p = mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED && cached_bytes) {
        trim_cache(0);
        p = mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    if (p == MAP_FAILED) return nullptr;
    uint8_t* map = (uint8_t*)p;
    mprotect(map, kPage, PROT_NONE);
    mprotect(map + kPage + data_pages, kPage, PROT_NONE);
    if (data_pages >= (2u << 20)) madvise(map + kPage, data_pages, MADV_HUGEPAGE);
    *map_bytes = need;
    return map;
}

// Keeps a freed mapping for reuse (its data inaccessible), or unmaps it when it would not fit.
void give_back_mapping(uint8_t* map, size_t map_bytes) {
    if (map_bytes > cache_limit()) {
        munmap(map, map_bytes);
        return;
    }
    trim_cache(cache_limit() - map_bytes);
    mprotect(map + kPage, map_bytes - 2 * kPage, PROT_NONE);
    cached.emplace(map_bytes, map);
    cache_order.emplace_back(map, map_bytes);
    cached_bytes += map_bytes;
}

size_t round_up(size_t x, size_t to) { return (x + to - 1) / to * to; }

const Allocation* containing(uintptr_t addr) {
    auto it = live.upper_bound(addr);
    if (it == live.begin()) return nullptr;
    --it;
    const Allocation& a = it->second;
    return addr < (uintptr_t)a.map + a.map_bytes ? &a : nullptr;
}

// The first byte of [from, to) that is not the fill, or `to`.
const uint8_t* first_written(const uint8_t* from, const uint8_t* to) {
    const uint8_t* p = from;
    for (; p < to && ((uintptr_t)p & 7); ++p)
        if (*p != kFill) return p;
    for (; p + 8 <= to; p += 8) {  // eight bytes at a time until one differs
        uint64_t word;
        memcpy(&word, p, 8);
        if (word != ~0ull) break;
    }
    for (; p < to; ++p)
        if (*p != kFill) return p;
    return to;
}
}  // namespace

extern "C" int emu_mem_alloc(uintptr_t* out, size_t size) {
    const size_t padded = round_up(size ? size : 1, kAlign);
    const size_t data_pages = round_up(padded, kPage);
    std::lock_guard<std::mutex> g(lock);
    size_t map_bytes = 0;
    uint8_t* map = take_mapping(data_pages + 2 * kPage, &map_bytes);
    if (!map) {
        set_error(kOutOfMemory, format("out of memory: the software GPU could not map %zu bytes", size));
        return kOutOfMemory;
    }
    uint8_t* pages = map + map_bytes - kPage - data_pages;
    memset(pages, kFill, data_pages);
    Allocation a{map, map_bytes, pages, pages + data_pages - padded, size, padded};
    live[(uintptr_t)a.data] = a;
    live_bytes += size;
    peak_bytes = live_bytes > peak_bytes ? live_bytes : peak_bytes;
    *out = (uintptr_t)a.data;
    return 0;
}

// Host bytes that freed device memory holds in the cache: free as far as the device goes.
size_t cached_device_bytes() {
    std::lock_guard<std::mutex> g(lock);
    return cached_bytes;
}

// Device bytes allocated now and at the most since the last reset, for tests that hold a memory
// plan to what a step really allocates.
extern "C" void prefer_emu_memory(uint64_t out[2], int reset_peak) {
    std::lock_guard<std::mutex> g(lock);
    if (reset_peak) peak_bytes = live_bytes;
    out[0] = live_bytes;
    out[1] = peak_bytes;
}

extern "C" int emu_mem_free(uintptr_t ptr) {
    std::lock_guard<std::mutex> g(lock);
    auto it = live.find(ptr);
    if (it == live.end()) {
        set_error(kInvalidValue, format("freeing 0x%zx, which is not the start of a live device allocation", (size_t)ptr));
        return kInvalidValue;
    }
    give_back_mapping(it->second.map, it->second.map_bytes);
    live_bytes -= it->second.size;
    live.erase(it);
    return 0;
}

// Whether [ptr, ptr + bytes) lies inside one live allocation; if not, why (empty when it does).
extern "C" int prefer_emu_check_range(uintptr_t ptr, size_t bytes, char* why, size_t why_len) {
    std::lock_guard<std::mutex> g(lock);
    const Allocation* a = containing(ptr);
    std::string msg;
    if (!a || ptr < (uintptr_t)a->data) {
        msg = format("0x%zx is not inside any device allocation", (size_t)ptr);
    } else if (ptr + bytes > (uintptr_t)a->data + a->size) {
        msg = format("%zu bytes at offset %zu overrun a %zu-byte device allocation by %zu bytes", bytes,
                     (size_t)(ptr - (uintptr_t)a->data), a->size, (size_t)(ptr + bytes - (uintptr_t)a->data - a->size));
    }
    if (msg.empty()) return 0;
    if (why && why_len) snprintf(why, why_len, "%s", msg.c_str());
    return 1;
}

std::string describe_address(uintptr_t addr) {
    std::lock_guard<std::mutex> g(lock);
    const Allocation* a = containing(addr);
    if (!a) {
        // Past every guard: name the nearest buffer below, when there is one within 1 MiB.
        auto it = live.upper_bound(addr);
        if (it == live.begin()) return "not near any device allocation";
        const Allocation& below = std::prev(it)->second;
        const uintptr_t end = (uintptr_t)below.data + below.size;
        if (addr - end > (1u << 20)) return "not near any device allocation";
        return format("%zu bytes past the end of a %zu-byte buffer (the nearest below it)", (size_t)(addr - end),
                      below.size);
    }
    const uintptr_t lo = (uintptr_t)a->data, hi = lo + a->size;
    if (addr < lo) return format("%zu bytes before the start of a %zu-byte buffer", (size_t)(lo - addr), a->size);
    if (addr >= hi) return format("%zu bytes past the end of a %zu-byte buffer", (size_t)(addr - hi), a->size);
    return format("inside a %zu-byte buffer, at byte %zu", a->size, (size_t)(addr - lo));
}

bool find_allocation(uintptr_t addr, uintptr_t* base, size_t* size) {
    std::lock_guard<std::mutex> g(lock);
    const Allocation* a = containing(addr);
    if (!a || addr < (uintptr_t)a->data || addr >= (uintptr_t)a->data + a->size) return false;
    *base = (uintptr_t)a->data;
    *size = a->size;
    return true;
}

std::string check_guards() {
    std::lock_guard<std::mutex> g(lock);
    std::string found;
    for (auto& [_, a] : live) {
        const uint8_t* front = a.pages;
        const uint8_t* end = a.data + a.size;
        const uint8_t* fw = first_written(front, a.data);
        const uint8_t* bw = first_written(end, a.data + a.padded);
        if (fw == a.data && bw == a.data + a.padded) continue;
        if (found.empty()) {
            found = fw != a.data ? format("%zu bytes before the start of a %zu-byte buffer", (size_t)(a.data - fw), a.size)
                                 : format("%zu bytes past the end of a %zu-byte buffer", (size_t)(bw - end), a.size);
        }
        memset((void*)front, kFill, a.data - front);  // report once
        memset((void*)end, kFill, a.data + a.padded - end);
    }
    return found;
}

}  // namespace emu
