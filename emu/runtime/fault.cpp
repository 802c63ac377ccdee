// Faults inside a kernel: an access to a guard page (out of bounds), a stack overflow, an integer
// division by zero. The signal handler turns the faulting fiber into one that returns to its
// scheduler, so the launch fails with the kernel's name and the buffer instead of killing the
// process. A fault anywhere else goes to whatever handler was installed before ours.
#include "runtime.h"

#include <pthread.h>
#include <signal.h>
#include <sys/ucontext.h>

#include <cstring>

namespace emu {

namespace {
constexpr int kMaxWorkers = 64;
std::atomic<int> registered{0};
pthread_t worker_threads[kMaxWorkers];
Worker* worker_records[kMaxWorkers];
struct sigaction previous[NSIG];
constexpr int kSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
}  // namespace

// Workers start together: each takes its own slot (a load-then-store here once let two workers
// share a slot, and a fault on the one overwritten went to the default handler and killed the
// process). A slot is written before its thread can run a kernel, so a fault finds it.
void register_worker(Worker* w) {
    const int i = registered.fetch_add(1);
    if (i >= kMaxWorkers) return;  // worker_count() caps the pool at 64
    worker_threads[i] = pthread_self();
    worker_records[i] = w;
}

void prepare_worker_signals(Worker& w) {
    const size_t bytes = 64 * 1024;
    w.alt_stack = new uint8_t[bytes];
    stack_t ss{};
    ss.ss_sp = w.alt_stack;
    ss.ss_size = bytes;
    sigaltstack(&ss, nullptr);
}

extern "C" [[noreturn]] void emu_fiber_faulted(Fiber* f) {
    f->state = FiberState::Faulted;
    switch_to_scheduler(*f);
}

static void on_fault(int sig, siginfo_t* info, void* context) {
    const pthread_t self = pthread_self();
    Worker* w = nullptr;
    const int n = registered.load() < kMaxWorkers ? registered.load() : kMaxWorkers;
    for (int i = 0; i < n; ++i)
        if (pthread_equal(worker_threads[i], self)) w = worker_records[i];
    if (w && w->running) {
        ucontext_t* uc = (ucontext_t*)context;
        Fiber* f = w->running;
        w->fault_addr = (uintptr_t)info->si_addr;
        w->fault_signal = sig;
        w->fault_write = (uc->uc_mcontext.gregs[REG_ERR] & 2) != 0;
        // Resume in emu_fiber_faulted on a fresh frame at the top of the fiber's stack, as if
        // called: rsp + 8 aligned to 16.
        const uintptr_t top = ((uintptr_t)f->stack_top & ~(uintptr_t)15) - 8;
        uc->uc_mcontext.gregs[REG_RSP] = (greg_t)top;
        uc->uc_mcontext.gregs[REG_RIP] = (greg_t)(void*)&emu_fiber_faulted;
        uc->uc_mcontext.gregs[REG_RDI] = (greg_t)f;
        return;
    }
    const struct sigaction& old = previous[sig];
    if ((old.sa_flags & SA_SIGINFO) && old.sa_sigaction) {
        old.sa_sigaction(sig, info, context);
    } else if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN) {
        old.sa_handler(sig);
    } else {
        signal(sig, SIG_DFL);  // returning re-runs the faulting instruction, which now kills us
    }
}

void install_fault_handler() {
    static bool installed = false;
    if (installed) return;
    installed = true;
    struct sigaction sa {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    for (int sig : kSignals) sigaction(sig, &sa, &previous[sig]);
}

std::string describe_fault(Worker& w) {
    const uintptr_t a = w.fault_addr;
    switch (w.fault_signal) {
        case SIGFPE: return "arithmetic fault (integer division by zero?)";
        case SIGILL: return "illegal instruction";
        default: break;
    }
    if (w.running == nullptr) {
        for (uint32_t slot = 0; slot < w.stack_slots; ++slot) {
            const uintptr_t base = (uintptr_t)stack_base(w, slot);
            if (a >= base && a < base + 2 * 4096)
                return format("stack overflow (the software GPU gives each thread %u KiB)", EMU_STACK_BYTES / 1024);
        }
    }
    return format("out-of-bounds %s at 0x%zx: %s", w.fault_write ? "write" : "read", (size_t)a,
                  describe_address(a).c_str());
}

}  // namespace emu
