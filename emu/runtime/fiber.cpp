// Fibers: one per GPU thread of a block, each on its own stack, switched by hand (about 8 ns; the
// C library's swapcontext makes a signal-mask syscall each time and costs 20x that).
//
// Stack layout (EMU_STACK_BYTES, aligned to its size):
// A thread takes a stack when it first runs and frees it when it exits (Worker::free_slots).
//   [0, 4 KiB)        EmuThreadInfo at one of 32 slots (emu_info_of_stack), read by the built-ins
//                     through the stack pointer
//   [4 KiB, 8 KiB)    guard page: a stack overflow faults instead of overwriting the info
//   [8 KiB, top)      the stack, growing down; tops are staggered by 3 cache lines over 128
//                     threads (24 KiB), so the stacks' hot frames don't share cache sets
#include "runtime.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

// emu_context_switch(save, to): pushes the callee-saved registers, stores the stack pointer in
// *save, loads `to`, pops and returns there. emu_fiber_entry starts a new fiber: r12 holds its
// Fiber*, r13 the function to call with it.
asm(R"(
    .text
    .globl emu_context_switch
    .hidden emu_context_switch
    .type emu_context_switch, @function
emu_context_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_context_switch, .-emu_context_switch

    .globl emu_fiber_entry
    .hidden emu_fiber_entry
    .type emu_fiber_entry, @function
emu_fiber_entry:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size emu_fiber_entry, .-emu_fiber_entry
)");

extern "C" void emu_context_switch(void** save, void* to);
extern "C" void emu_fiber_entry();

namespace emu {

static constexpr size_t kPage = 4096;

extern "C" [[noreturn]] void emu_fiber_main(Fiber* f);

void ensure_stacks(Worker& w, uint32_t count) {
    if (w.stack_slots >= count) return;
    // Map every stack this worker may need (1024 threads) once, reserving address space only.
    if (!w.stacks) {
        const size_t bytes = (size_t)1024 * EMU_STACK_BYTES + EMU_STACK_BYTES;
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "prefer software GPU: cannot map fiber stacks\n");
            abort();
        }
        w.stacks = (uint8_t*)(((uintptr_t)p + EMU_STACK_BYTES - 1) & ~(uintptr_t)(EMU_STACK_BYTES - 1));
    }
    for (uint32_t i = w.stack_slots; i < count; ++i) mprotect(stack_base(w, i) + kPage, kPage, PROT_NONE);
    w.stack_slots = count;
}

uint8_t* stack_base(const Worker& w, uint32_t slot) { return w.stacks + (size_t)slot * EMU_STACK_BYTES; }

// Takes the most recently freed stack and lays out a first frame that emu_context_switch
// "returns" into emu_fiber_entry from.
void start_fiber(Worker& w, Fiber& f) {
    const uint32_t slot = w.free_slots.back();
    w.free_slots.pop_back();
    uint8_t* base = stack_base(w, slot);
    f.slot = slot;
    f.info = emu_info_of_stack((uintptr_t)base);
    f.stack_top = base + EMU_STACK_BYTES - (slot % 128) * 192;
    f.info->fiber = &f;
    uintptr_t top = (uintptr_t)f.stack_top & ~(uintptr_t)15;
    uint64_t* sp = (uint64_t*)(top - 7 * 8);  // six registers and a return address
    sp[0] = 0;                                // r15
    sp[1] = 0;                                // r14
    sp[2] = (uint64_t)(void*)&emu_fiber_main;  // r13
    sp[3] = (uint64_t)&f;                     // r12
    sp[4] = 0;                                // rbx
    sp[5] = 0;                                // rbp
    sp[6] = (uint64_t)(void*)&emu_fiber_entry;
    f.sp = sp;
}

void run_ready_fibers(Worker& w, Fiber& f) {
    w.running = &f;
    emu_context_switch(&w.sched_sp, f.sp);
}

void switch_to_scheduler(Fiber& f) {
    emu_context_switch(&f.sp, f.worker->sched_sp);
    __builtin_unreachable();
}

// A fiber suspends itself and resumes here when it is drawn again. `running` names the fiber on
// the CPU at every moment, for the fault handler.
void yield_fiber(Fiber& f) {
    Worker& w = *f.worker;
    Fiber* next = next_ready(w);
    if (!next) {
        emu_context_switch(&f.sp, w.sched_sp);
        return;
    }
    w.running = next;
    emu_context_switch(&f.sp, next->sp);
}

extern "C" [[noreturn]] void emu_fiber_main(Fiber* f) {
    Launch* l = f->worker->launch;
    l->kernel->invoke(l->params);
    f->state = FiberState::Done;
    // Through the scheduler, which frees this stack once nothing runs on it any more.
    switch_to_scheduler(*f);
}

}  // namespace emu
