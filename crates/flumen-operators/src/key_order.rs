//! Comparing two `arrow-row` keys. A TopN compares a row's order key with
//! its partition's kept rows several times a row (is it rejected, where
//! does it go) and its partition key once a lookup; comparing byte slices
//! calls `memcmp` each time, which for the 9 bytes of a `BIGINT` key costs
//! more than the comparison. Keys of equal length from 8 to 32 bytes (a few
//! fixed-width columns) are compared as big-endian words.

use std::cmp::Ordering;

/// The longest key compared a word at a time (a partition key of two
/// `BIGINT`s is 18 bytes); longer ones go to `memcmp`.
const WORDS_UP_TO: usize = 32;

/// The big-endian word of `key`'s 8 bytes from `at`.
#[inline]
fn word(key: &[u8], at: usize) -> u64 {
    key.get(at..)
        .and_then(|rest| rest.first_chunk::<8>())
        .map_or(0, |w| u64::from_be_bytes(*w))
}

/// For keys of one length from 8 to [`WORDS_UP_TO`] bytes: their order,
/// 8 bytes at a time, the last word overlapping the one before it (bytes
/// it shares with words found equal are equal). `None` for other keys.
#[inline]
fn by_words(a: &[u8], b: &[u8]) -> Option<Ordering> {
    let n = a.len();
    if n != b.len() || !(8..=WORDS_UP_TO).contains(&n) {
        return None;
    }
    let mut at = 0;
    loop {
        let start = at.min(n - 8);
        let (x, y) = (word(a, start), word(b, start));
        if x != y {
            return Some(x.cmp(&y));
        }
        if start == n - 8 {
            return Some(Ordering::Equal);
        }
        at += 8;
    }
}

/// `a.cmp(b)`, byte by byte as `memcmp` orders them.
#[inline]
pub(crate) fn compare(a: &[u8], b: &[u8]) -> Ordering {
    by_words(a, b).unwrap_or_else(|| a.cmp(b))
}

/// `a == b`.
#[inline]
pub(crate) fn equal(a: &[u8], b: &[u8]) -> bool {
    by_words(a, b).map_or_else(|| a == b, Ordering::is_eq)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the slices' own order and equality, for keys of every
    /// length around the fast path's, differing in every byte position.
    #[test]
    fn keys_compare_as_their_bytes_do() {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for len in [0, 1, 7, 8, 9, 12, 15, 16, 17, 18, 24, 25, 32, 33, 40] {
            let base: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            keys.push(base.clone());
            for at in 0..len {
                for delta in [1u8, 0x80, 0xff] {
                    let mut k = base.clone();
                    k[at] = k[at].wrapping_add(delta);
                    keys.push(k);
                }
            }
        }
        for a in &keys {
            for b in &keys {
                assert_eq!(compare(a, b), a.cmp(b), "{a:?} against {b:?}");
                assert_eq!(equal(a, b), a == b, "{a:?} against {b:?}");
            }
        }
    }
}
