//! The slot array of `word_set` (q16's large, long-lived distinct sets),
//! taken from the system allocator instead of the global one. flumen's global allocator (mimalloc) keeps freed memory for 10 s so
//! that batches reuse it; a table that grew would keep its old slots
//! resident that long, a third more memory than the table itself. The
//! system allocator maps a table of more than 32 MiB on its own and returns
//! it to the kernel when it is freed, and a zeroed one is faulted in only
//! as slots are written.

use std::alloc::{GlobalAlloc, Layout, System, handle_alloc_error};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A fixed number of `u64` slots.
pub(crate) struct Slots {
    ptr: NonNull<u64>,
    len: usize,
}

// SAFETY: `Slots` owns its slots as a `Vec<u64>` would.
unsafe impl Send for Slots {}
// SAFETY: shared access only reads, as through `&[u64]`.
unsafe impl Sync for Slots {}

impl Slots {
    /// No slots.
    pub(crate) fn empty() -> Self {
        Slots {
            ptr: NonNull::dangling(),
            len: 0,
        }
    }

    /// The layout of `len` slots: a table larger than the address space
    /// is a bug, not an input.
    fn layout(len: usize) -> Layout {
        Layout::array::<u64>(len).expect("a table of slots fits in memory")
    }

    /// `len` slots of 0.
    pub(crate) fn zeroed(len: usize) -> Self {
        let layout = Self::layout(len);
        if layout.size() == 0 {
            return Self::empty();
        }
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { System.alloc_zeroed(layout) };
        let ptr = NonNull::new(raw.cast::<u64>()).unwrap_or_else(|| handle_alloc_error(layout));
        Slots { ptr, len }
    }
}

impl Deref for Slots {
    type Target = [u64];

    fn deref(&self) -> &[u64] {
        // SAFETY: `len` initialised slots (or none, at a dangling pointer).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for Slots {
    fn deref_mut(&mut self) -> &mut [u64] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        let layout = Self::layout(self.len);
        if layout.size() > 0 {
            // SAFETY: allocated by `System` with this layout in `zeroed`.
            unsafe { System.dealloc(self.ptr.as_ptr().cast(), layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_start_as_asked_and_keep_what_is_written() {
        let mut words = Slots::zeroed(100_000);
        assert!(words.iter().all(|&w| w == 0));
        words[99_999] = 7;
        assert_eq!(words[99_999], 7);
        // Memory freed dirty and handed out again still comes zeroed.
        for _ in 0..3 {
            let mut small = Slots::zeroed(1_000);
            assert!(small.iter().all(|&w| w == 0));
            small.iter_mut().for_each(|w| *w = u64::MAX);
        }
        assert!(Slots::empty().is_empty());
        assert!(Slots::zeroed(0).is_empty());
    }
}
