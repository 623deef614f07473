//! The global allocator: mimalloc, asked the way its fast path wants.
//!
//! The `mimalloc` crate hands every allocation to `mi_malloc_aligned`. In
//! mimalloc 3 that call takes its fast path only when the free list of the
//! size's page happens to hold a suitably aligned block; otherwise, and for
//! every block above 1 KiB, it goes the generic way, and for a size whose block
//! is not a power of two it over-allocates by the alignment and aligns inside
//! (6.4 times per cache hit, ~120 instructions each). Every mimalloc block is
//! aligned to a word, so an alignment of a word or less is asked of plain
//! `mi_malloc`, as std's `System` does with `malloc`; larger alignments (tokio's
//! 128-byte task cells) still go to `mi_malloc_aligned`.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// What every mimalloc block is aligned to.
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc, by the plain entry points wherever the alignment allows.
pub struct Allocator;

// SAFETY: every entry point forwards to mimalloc, which meets GlobalAlloc's
// contract for the layouts it is given: the plain calls return word-aligned
// blocks, and only alignments of a word or less are sent to them.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            unsafe { mi::mi_malloc(layout.size()).cast() }
        } else {
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            unsafe { mi::mi_zalloc(layout.size()).cast() }
        } else {
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            unsafe { mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast() }
        } else {
            unsafe { mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of every size class up to 64 KiB and every alignment up to 4 KiB
    /// come back aligned, zeroed when asked, and keep their bytes through a
    /// realloc.
    #[test]
    fn blocks_are_aligned_zeroed_and_kept_through_realloc() {
        let sizes = [1, 3, 7, 8, 12, 24, 40, 100, 1000, 1025, 2500, 5000, 70_000];
        for align in [1, 2, 4, 8, 16, 64, 128, 4096] {
            for size in sizes {
                let layout = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    let p = Allocator.alloc_zeroed(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "{size} {align}");
                    let bytes = std::slice::from_raw_parts_mut(p, size);
                    assert!(bytes.iter().all(|&b| b == 0), "{size} {align}");
                    for (i, b) in bytes.iter_mut().enumerate() {
                        *b = i as u8;
                    }
                    let q = Allocator.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "{size} {align}");
                    let kept = std::slice::from_raw_parts(q, size);
                    assert!(kept.iter().enumerate().all(|(i, &b)| b == i as u8));
                    Allocator.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());

                    let p = Allocator.alloc(layout);
                    assert_eq!(p as usize % align, 0, "{size} {align}");
                    Allocator.dealloc(p, layout);
                }
            }
        }
    }
}
