//! Software prefetch for the hash tables that probe a batch's rows
//! (`word_set`, `hash_heads`, `open_table`): a batch computes its rows'
//! home slots first and asks for the slot of the row a few ahead, so the
//! cache misses into a large table overlap instead of queueing.

/// Asks the CPU to start loading the cache line of `slots[at]` (nothing
/// when `at` is past the end).
#[inline]
pub(crate) fn prefetch<T>(slots: &[T], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(slot) = slots.get(at) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let address = std::ptr::from_ref(slot).cast();
        // SAFETY: SSE is part of every x86_64 target, and a prefetch is a
        // hint that reads nothing and never faults; the address is a live
        // element anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(address) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (slots, at);
}
