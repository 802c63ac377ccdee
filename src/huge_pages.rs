//! The process's allocator: the system one, except that a block of 4 MiB or more is marked for
//! transparent huge pages (`madvise(MADV_HUGEPAGE)`, where the kernel's THP setting is
//! "madvise", as on Debian and most distributions). A model's tensors, gradients and logits
//! chunks are such blocks; mapped 2 MiB at a time, their first touch takes one page fault where
//! 4 KiB pages take 512 (on the 2-core CI machine those faults were a fifth of `prefer check`'s
//! CPU oracle time). Memory grows at most by the untouched rest of each 2 MiB page a block
//! touches.

use std::alloc::{GlobalAlloc, Layout, System};

const HUGE: usize = 2 << 20;
const FROM: usize = 4 << 20;

pub struct HugePageAlloc;

/// Asks for huge pages over the 2 MiB-aligned part of [ptr, ptr + size).
fn advise(ptr: *mut u8, size: usize) {
    if ptr.is_null() || size < FROM {
        return;
    }
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + size) / HUGE * HUGE;
    if end > start {
        // SAFETY: the range lies inside a block the system allocator just handed out; madvise
        // only changes how its pages are backed, never their contents. A refusal (THP off,
        // an old kernel) leaves ordinary pages, which is fine.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

// SAFETY: every call forwards to `System` with the same arguments; `advise` only adds a hint.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        advise(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        advise(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        advise(p, new_size);
        p
    }
}
