//! The slot arrays of `word_set` (q16's large, long-lived distinct sets),
//! not from the global allocator. flumen's global allocator (mimalloc)
//! keeps freed memory for 10 s so that batches reuse it; a table that grew
//! would keep its old slots resident that long. A table of at least
//! [`MAPPED_BYTES`] is mapped on its own, so freeing it returns it to the
//! kernel at once, a new one is faulted in only as slots are written, and a
//! table being moved into a larger one can give its pages back as it goes;
//! smaller ones come from the system allocator. A move has the kernel fault
//! in the pages it is about to fill first ([`Slots::touch`]): a probe reads
//! a slot before writing it, so a fresh page would fault twice (the read
//! maps the shared zero page, the write then replaces it).

use std::alloc::{GlobalAlloc, Layout, System, handle_alloc_error};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Tables at least this large are mapped from the kernel on their own.
const MAPPED_BYTES: usize = 256 << 10;

/// The kernel's page size (4 KiB on x86-64, up to 64 KiB elsewhere).
fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a constant of the system and takes no pointer.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size).unwrap_or(4096)
    })
}

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
        let raw = if layout.size() >= MAPPED_BYTES {
            // SAFETY: a new private anonymous mapping (zero-filled by the
            // kernel) of the layout's size; it touches no existing memory.
            let mapped = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    layout.size(),
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if mapped == libc::MAP_FAILED {
                handle_alloc_error(layout);
            }
            mapped.cast::<u8>()
        } else {
            // SAFETY: the layout has a non-zero size.
            unsafe { System.alloc_zeroed(layout) }
        };
        let ptr = NonNull::new(raw.cast::<u64>()).unwrap_or_else(|| handle_alloc_error(layout));
        Slots { ptr, len }
    }

    /// Frees the memory of the slots in `range`, which the caller no
    /// longer reads: a table being moved into a larger one gives its
    /// memory back as the move goes, so the two are never both resident.
    /// The slots read as 0 afterwards. Tables too small to be mapped on
    /// their own, and pages only partly in `range`, are kept.
    pub(crate) fn discard(&mut self, range: std::ops::Range<usize>) {
        const SLOT: usize = std::mem::size_of::<u64>();
        let bytes = self.len * SLOT;
        if bytes < MAPPED_BYTES || range.start >= range.end {
            return;
        }
        let page = page_size();
        let base = self.ptr.as_ptr() as usize;
        let start = (base + range.start * SLOT).next_multiple_of(page);
        let end = (base + range.end.min(self.len) * SLOT) / page * page;
        if start < end {
            // SAFETY: whole pages inside this table's own mapping, which
            // no borrow reaches (`&mut self`); a private anonymous page
            // dropped this way reads as zero again, as `zeroed` promises.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }
}

impl Slots {
    /// Has the kernel fault in, writable, the pages of a mapped table that
    /// hold slots `range` (whole pages around it), without changing them;
    /// nothing for a table from the system allocator, or where the kernel
    /// cannot (before Linux 5.14): slower then, not wrong.
    pub(crate) fn touch(&mut self, range: std::ops::Range<usize>) {
        const SLOT: usize = std::mem::size_of::<u64>();
        let bytes = self.len * SLOT;
        if bytes < MAPPED_BYTES || range.start >= range.end.min(self.len) {
            return;
        }
        let page = page_size();
        let base = self.ptr.as_ptr() as usize;
        let start = (base + range.start * SLOT) / page * page;
        let end = (base + range.end.min(self.len) * SLOT).next_multiple_of(page);
        #[cfg(target_os = "linux")]
        // SAFETY: whole pages of this table's own mapping (it starts on a
        // page, and its length is rounded up to pages by the kernel), which
        // no borrow reaches (`&mut self`); populating changes no contents.
        unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                end - start,
                libc::MADV_POPULATE_WRITE,
            )
        };
        #[cfg(not(target_os = "linux"))]
        let _ = (start, end);
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
        if layout.size() >= MAPPED_BYTES {
            // SAFETY: mapped with this size in `zeroed`, and no slot is
            // borrowed past `self`. munmap fails only for a bad range.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), layout.size()) };
        } else if layout.size() > 0 {
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
        // 800 KB: mapped on its own (the 8 KB ones below: the system allocator).
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
        // Discarded pages read as 0; slots outside the range keep theirs.
        words.iter_mut().for_each(|w| *w = 9);
        words.discard(1_000..90_000);
        assert_eq!(words[999], 9);
        assert_eq!(words[90_000], 9);
        // The whole pages inside the range (the table starts on a page).
        let page = page_size();
        let whole = (90_000 * 8 / page * page - (1_000 * 8usize).next_multiple_of(page)) / 8;
        let zeroed = words.iter().filter(|&&w| w == 0).count();
        assert_eq!(zeroed, whole, "slots reading 0");
        assert!(whole > 80_000);
        assert!(Slots::empty().is_empty());
        assert!(Slots::zeroed(0).is_empty());
    }
}
