//! Copies of many short byte spans (strings of tens of bytes: URLs, names,
//! padding) as whole 32-byte chunks, shared by the Nexmark generator and
//! the TopN's kept rows. A `memcpy` call of each span's own length costs
//! more than the copy at these sizes; a constant number of chunks per
//! span, read and written past its end, is a few plain vector moves (the
//! bytes written past a span's end are written again by the next span).

use crate::probing::prefetch_ref;

/// Bytes of one chunk.
pub const CHUNK: usize = 32;

/// How many spans ahead of the copy a span's first byte is prefetched:
/// the spans are scattered over the source.
const AHEAD: usize = 8;

/// The bytes of `spans` of `bytes` (each a start and an end), back to
/// back, `total` of them in all, each copied as `CHUNKS` chunks; a span
/// whose chunks would read past the end of `bytes` is copied alone. The
/// count is a constant so that the chunks stay moves (a count known only at
/// run time made the loop a `memcpy` call again). Panics when a span is
/// longer than the chunks or out of `bytes`, or when the spans do not add
/// up to `total`.
pub fn copy_spans<const CHUNKS: usize>(
    bytes: &[u8],
    spans: &[(usize, usize)],
    total: usize,
) -> Vec<u8> {
    let width = CHUNKS * CHUNK;
    let mut values: Vec<u8> = Vec::with_capacity(total + width);
    let target = values.as_mut_ptr();
    let mut at = 0;
    for (k, &(start, end)) in spans.iter().enumerate() {
        if let Some(b) = spans.get(k + AHEAD).and_then(|&(a, _)| bytes.get(a)) {
            prefetch_ref(b);
        }
        // Checked (a branch always taken the same way), so that a wrong
        // span is a panic, not a write out of bounds (a span with its end
        // before its start wraps to a length over `width`); the reads are
        // checked by the branch below and the slicing in it.
        let len = end.wrapping_sub(start);
        assert!(
            len <= width && at + len <= total,
            "span {start}..{end} does not fit {CHUNKS} chunks or {total} bytes"
        );
        if start + width <= bytes.len() {
            for c in 0..CHUNKS {
                // SAFETY: `start + width` is within `bytes` (checked just
                // above), and `at + width <= total + width`, the capacity.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr().add(start + c * CHUNK),
                        target.add(at + c * CHUNK),
                        CHUNK,
                    );
                }
            }
        } else {
            // SAFETY: the span's `len` bytes (sliced, so within `bytes`)
            // go to `at + len <= total`, within the capacity (checked above).
            unsafe { copy_alone(&bytes[start..end], target.add(at)) };
        }
        at += len;
    }
    assert_eq!(at, total, "the spans add up to {at} bytes, not {total}");
    // SAFETY: every byte below `total` is written: each span's copy covers
    // its own bytes at `at`, and what a chunk wrote past a span's end is
    // written again by the spans after it, or lies past `total`.
    unsafe { values.set_len(total) };
    values
}

/// Copies `span` to `target`: the rare span near the end of its source,
/// out of the chunk loop.
///
/// # Safety
///
/// `target` must be valid for `span.len()` bytes of writes.
#[cold]
#[inline(never)]
unsafe fn copy_alone(span: &[u8], target: *mut u8) {
    // SAFETY: the caller's promise.
    unsafe { std::ptr::copy_nonoverlapping(span.as_ptr(), target, span.len()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spans of every length up to the chunks, in any order, the last ones
    /// at the very end of the source (copied alone), come out back to back
    /// as a plain copy gives them.
    #[test]
    fn spans_come_out_back_to_back() {
        let bytes: Vec<u8> = (0..300u32).map(|i| (i * 7 % 251) as u8).collect();
        let spans: Vec<(usize, usize)> = (0..=96)
            .map(|len| {
                let start = (len * 37) % (300 - len);
                (start, start + len)
            })
            .chain([(300 - 96, 300), (299, 300), (300, 300), (250, 290)])
            .collect();
        let want: Vec<u8> = spans
            .iter()
            .flat_map(|&(s, e)| bytes[s..e].to_vec())
            .collect();
        let got = copy_spans::<3>(&bytes, &spans, want.len());
        assert_eq!(got, want);
        let empty = copy_spans::<1>(&bytes, &[], 0);
        assert!(empty.is_empty());
    }

    /// A span longer than the chunks, or spans adding up to other than the
    /// total, panic rather than write out of bounds.
    #[test]
    fn spans_that_do_not_fit_panic() {
        let bytes = vec![1u8; 100];
        let long = std::panic::catch_unwind(|| copy_spans::<1>(&bytes, &[(0, 33)], 33));
        assert!(long.is_err());
        let backwards = std::panic::catch_unwind(|| copy_spans::<1>(&bytes, &[(10, 5)], 0));
        assert!(backwards.is_err());
        let outside = std::panic::catch_unwind(|| copy_spans::<1>(&bytes, &[(95, 101)], 6));
        assert!(outside.is_err());
        let over = std::panic::catch_unwind(|| copy_spans::<1>(&bytes, &[(0, 10), (0, 10)], 15));
        assert!(over.is_err());
        let under = std::panic::catch_unwind(|| copy_spans::<1>(&bytes, &[(0, 10)], 15));
        assert!(under.is_err());
    }
}
