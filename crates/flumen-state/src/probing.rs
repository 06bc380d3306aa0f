//! What the open-addressing tables (`fixed_keys` here; `word_set`, `hash_heads`
//! and `open_table` of the operators)
//! share: when to grow and to what size, and the software prefetch with
//! which a batch that computed its rows' home slots first asks for the slot
//! of the row a few ahead, so the cache misses into a large table overlap
//! instead of queueing.

/// The slot count a table of `slots` slots holding `len` entries needs for
/// `more` more, if it must grow: the smallest power of two (at least 16)
/// that keeps it at most `max_load_eighths` eighths full.
pub fn grown_capacity(
    len: usize,
    more: usize,
    slots: usize,
    max_load_eighths: usize,
) -> Option<usize> {
    let needed = len + more;
    (needed * 8 > slots * max_load_eighths).then(|| {
        (needed * 8 / max_load_eighths + 1)
            .next_power_of_two()
            .max(16)
    })
}

/// Asks the CPU to start loading the cache line of `slots[at]` (nothing
/// when `at` is past the end).
#[inline]
pub fn prefetch<T>(slots: &[T], at: usize) {
    if let Some(slot) = slots.get(at) {
        prefetch_ref(slot);
    }
}

/// Asks the CPU to start loading the cache line holding the start of `value`.
#[inline]
pub fn prefetch_ref<T: ?Sized>(value: &T) {
    prefetch_ptr(std::ptr::from_ref(value).cast::<u8>());
}

/// Asks the CPU to start loading the cache line at `address`, which need
/// not point at anything live (a dangling pointer of an empty list).
#[inline]
pub fn prefetch_ptr<T>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: SSE is part of every x86_64 target, and a prefetch is a
        // hint that reads nothing and never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(address.cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}
