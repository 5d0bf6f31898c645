//! Shared by the bench binaries: a counting global allocator, so memory
//! figures are exact live heap bytes rather than OS samples. It counts on
//! top of jemalloc, the allocator both binaries run on (on glibc's malloc
//! a quarter of the translation bench's time went to its free lists).
// GlobalAlloc is an unsafe trait: this is the one place that needs `unsafe`.
#![allow(unsafe_code, dead_code)]

use std::alloc::{GlobalAlloc, Layout};

use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use tikv_jemallocator::Jemalloc as Underlying;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { Underlying.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { Underlying.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { Underlying.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

pub fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Allocations made so far.
pub fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}
