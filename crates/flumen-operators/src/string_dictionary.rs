//! The distinct strings of one kept column, so that each kept row stores a
//! 4-byte id instead of its string. Kept rows often repeat a few values
//! (Nexmark's bids carry one of 10,004 channel URLs, 66 bytes on average):
//! storing each once shrinks TopN state, and in a VM where every fresh page
//! costs microseconds to fault in, smaller state is faster state.
//!
//! A string longer than 16 bytes is hashed by its length and three of its
//! 8-byte words (the first and the last two), not by all of its bytes: a
//! URL then costs two multiplications instead of five. Strings that differ
//! only elsewhere share a hash and so compare against one another; once a
//! lookup meets more such strings than [`COLLISIONS_ALLOWED`] lets pass, the
//! dictionary rehashes every string in full and stays so.

use std::cell::Cell;
use std::hash::BuildHasher;
use std::sync::Arc;

use arrow::array::{Array, StringArray, UInt32Array};
use arrow::buffer::{NullBuffer, OffsetBuffer};

use crate::growing_buffer::GrowingBuffer;
use crate::open_table::{Hashed, OpenTable};

/// How many rows ahead an intern prefetches a row's table slot. (Its
/// dictionary string, found from that slot 8 rows ahead, was prefetched
/// too; reading the slot and the offsets for it cost more than the string,
/// in L2 for 10,004 URLs, saved: q19 0.97×, q16 0.98× user time without.)
const SLOT_AHEAD: usize = 16;

/// How many rows ahead the hashing pass prefetches a row's string in the
/// batch: the rows a TopN keeps are picked across the batch in partition
/// order, and the batch was written on another core, so each string's
/// first read would miss.
const SOURCE_AHEAD: usize = 16;

/// How many comparisons of a row's string with a different string of the
/// same hash one intern allows before the dictionary hashes in full: the
/// first number, plus one per the second number of rows. A 32-bit hash of
/// all bytes makes such a comparison about once in millions of rows; a
/// sampled hash of strings that differ only in their middle makes one per
/// such string for every row.
const COLLISIONS_ALLOWED: (usize, usize) = (64, 8);

/// An id and the hash of its string.
#[derive(Clone, Copy)]
struct Entry {
    hash: u32,
    id: u32,
}

impl Hashed for Entry {
    fn hash32(&self) -> u32 {
        self.hash
    }
}

/// Distinct strings by id, and ids by string.
pub(crate) struct StringDictionary {
    /// The strings back to back.
    bytes: GrowingBuffer<u8>,
    /// Where string `i` starts; one more than the strings.
    offsets: GrowingBuffer<i32>,
    table: OpenTable<Entry>,
    hasher: foldhash::fast::FixedState,
    /// Whether strings are hashed by all of their bytes (after a sampled
    /// hash met too many strings that share it).
    full_hash: bool,
    /// The strings as one array, as of the last call to [`Self::intern`]:
    /// a view of `bytes` and `offsets`, not a copy.
    values: Arc<StringArray>,
}

impl StringDictionary {
    /// An empty dictionary.
    pub(crate) fn new() -> Self {
        let mut offsets = GrowingBuffer::new();
        offsets.push(0);
        StringDictionary {
            bytes: GrowingBuffer::new(),
            offsets,
            table: OpenTable::new(),
            hasher: foldhash::fast::FixedState::with_seed(0x243f_6a88_85a3_08d3),
            full_hash: false,
            values: Arc::new(StringArray::new_null(0)),
        }
    }

    /// The ids of the strings at `rows` of `strings` (null where a string
    /// is null), adding the strings not seen before. `None`, with nothing
    /// added, when they would bring the dictionary past `limit` bytes of
    /// strings.
    pub(crate) fn intern(
        &mut self,
        strings: &StringArray,
        rows: &UInt32Array,
        limit: usize,
    ) -> Option<UInt32Array> {
        let before = (self.len(), self.bytes.len());
        self.intern_since(strings, rows, limit, before)
    }

    /// [`Self::intern`], forgetting on refusal every string added since the
    /// dictionary held `before` (strings and bytes): a lookup that gives up
    /// on the sampled hash starts over, keeping what it added.
    fn intern_since(
        &mut self,
        strings: &StringArray,
        rows: &UInt32Array,
        limit: usize,
        before: (usize, usize),
    ) -> Option<UInt32Array> {
        let (len_before, bytes_before) = before;
        self.table.reserve(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        // Hashes and home slots first, so that each lookup can start
        // loading the table slot of a row a few ahead.
        let picked = rows.values();
        let hashes: Vec<u32> = picked
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                if let Some(&ahead) = picked.get(k + SOURCE_AHEAD) {
                    let s = strings.value(ahead as usize).as_bytes();
                    if let (Some(first), Some(last)) = (s.first(), s.last()) {
                        flumen_state::probing::prefetch_ref(first);
                        flumen_state::probing::prefetch_ref(last);
                    }
                }
                self.hash(strings.value(i as usize).as_bytes())
            })
            .collect();
        let collisions = Cell::new(0);
        let (allowed, per_row) = COLLISIONS_ALLOWED;
        let allowed = if self.full_hash {
            usize::MAX
        } else {
            allowed + rows.len() / per_row
        };
        let homes: Vec<usize> = hashes.iter().map(|&h| self.table.home(h)).collect();
        for (k, &i) in picked.iter().enumerate() {
            if let Some(&home) = homes.get(k + SLOT_AHEAD) {
                self.table.prefetch(home);
            }
            let i = i as usize;
            if strings.is_null(i) {
                ids.push(0);
                continue;
            }
            let s = strings.value(i).as_bytes();
            let (hash, home) = (hashes[k], homes[k]);
            let found = self
                .table
                .find(home, hash, |e| {
                    let equal = self.string(e.id) == s;
                    collisions.set(collisions.get() + usize::from(!equal));
                    equal
                })
                .and_then(|at| self.table.get(at))
                .map(|e| e.id);
            if collisions.get() > allowed {
                self.hash_in_full();
                return self.intern_since(strings, rows, limit, before);
            }
            let id = match found {
                Some(id) => id,
                None => {
                    if self.bytes.len() + s.len() > limit {
                        self.truncate(len_before, bytes_before);
                        return None;
                    }
                    let id = self.len() as u32;
                    self.bytes.extend_from_slice(s);
                    self.offsets.push(self.bytes.len() as i32);
                    self.table.insert(home, Entry { hash, id });
                    id
                }
            };
            ids.push(id);
        }
        if self.len() > len_before {
            // SAFETY: the offsets start at 0 and never decrease (each is the
            // length of `bytes` after a string was appended), and `bytes` is
            // whole `&str`s back to back, so valid UTF-8 between any two.
            self.values = Arc::new(unsafe {
                StringArray::new_unchecked(
                    OffsetBuffer::new_unchecked(self.offsets.to_scalar_buffer()),
                    self.bytes.to_scalar_buffer().into_inner(),
                    None,
                )
            });
        }
        let nulls = (strings.null_count() > 0).then(|| {
            NullBuffer::from_iter(rows.values().iter().map(|&i| strings.is_valid(i as usize)))
        });
        Some(UInt32Array::new(ids.into(), nulls))
    }

    /// The 32-bit hash of `s`: of all of its bytes when it is short or the
    /// dictionary hashes in full, else of its length and its first and last
    /// two 8-byte words (every byte up to 24 bytes).
    fn hash(&self, s: &[u8]) -> u32 {
        let n = s.len();
        if n <= 16 || self.full_hash {
            return self.hasher.hash_one(s) as u32;
        }
        let word = |at: usize| {
            let mut w = [0; 8];
            w.copy_from_slice(&s[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let fold = |a: u64, b: u64| {
            let m = u128::from(a) * u128::from(b);
            (m as u64) ^ ((m >> 64) as u64)
        };
        // Odd constants (digits of pi), so that no word multiplies by zero.
        let x = fold(
            word(0) ^ 0x1319_8a2e_0370_7344,
            word(n - 8) ^ 0xa409_3822_299f_31d0,
        );
        let y = fold(
            word(n - 16) ^ 0x082e_fa98_ec4e_6c89,
            n as u64 ^ 0x4528_21e6_38d0_1377,
        );
        fold(x ^ 0xbe54_66cf_34e9_0c6c, y ^ 0xc0ac_29b7_c97c_50dd) as u32
    }

    /// Rehashes every string by all of its bytes, from now on.
    fn hash_in_full(&mut self) {
        self.full_hash = true;
        let mut table = OpenTable::new();
        table.reserve(self.len());
        for id in 0..self.len() as u32 {
            let hash = self.hash(self.string(id));
            table.insert(table.home(hash), Entry { hash, id });
        }
        self.table = table;
    }

    /// Forgets the strings from id `len` on, added by a failed intern.
    fn truncate(&mut self, len: usize, bytes: usize) {
        self.table.retain(|e| (e.id as usize) < len);
        self.offsets.truncate(len + 1);
        self.bytes.truncate(bytes);
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// The string of `id`.
    fn string(&self, id: u32) -> &[u8] {
        let (id, offsets) = (id as usize, self.offsets.as_slice());
        &self.bytes.as_slice()[offsets[id] as usize..offsets[id + 1] as usize]
    }

    /// The byte length of the string of `id`.
    pub(crate) fn string_len(&self, id: u32) -> usize {
        let (id, offsets) = (id as usize, self.offsets.as_slice());
        (offsets[id + 1] - offsets[id]) as usize
    }

    /// Every string, at its id.
    pub(crate) fn values(&self) -> &StringArray {
        &self.values
    }

    /// Bytes held: the strings and their offsets (which the values array
    /// views) and the table.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.allocation_size() + self.offsets.allocation_size() + self.table.allocation_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::compute::take;

    #[test]
    fn strings_become_ids_of_their_distinct_values_and_back() {
        let mut dictionary = StringDictionary::new();
        let first = StringArray::from(vec![Some("b"), Some("a"), None, Some("b"), Some("")]);
        let ids = dictionary.intern(&first, &every(5), 1 << 20).unwrap();
        assert_eq!(ids.null_count(), 1);
        assert_eq!(ids.value(0), ids.value(3), "one id per distinct string");
        let before = dictionary.values().clone();
        let second = StringArray::from(vec![Some("c"), Some("a"), Some("b")]);
        let more = dictionary.intern(&second, &every(3), 1 << 20).unwrap();
        assert_eq!(
            before,
            StringArray::from(vec!["b", "a", ""]),
            "values lent before are unchanged"
        );
        assert_eq!(more.value(1), ids.value(1), "ids are stable");
        assert_eq!(dictionary.values().len(), 4);
        for (strings, ids) in [(&first, &ids), (&second, &more)] {
            let back = take(dictionary.values(), ids, None).unwrap();
            assert_eq!(back.as_ref(), strings as &dyn Array);
        }
        assert_eq!(dictionary.string_len(more.value(0)), 1);
        // Rows picked from a batch, in any order.
        let picked = dictionary
            .intern(&first, &UInt32Array::from(vec![3, 2, 1]), 1 << 20)
            .unwrap();
        let back = take(dictionary.values(), &picked, None).unwrap();
        let want = StringArray::from(vec![Some("b"), None, Some("a")]);
        assert_eq!(back.as_ref(), &want as &dyn Array);
    }

    /// Distinct strings of 40 bytes that differ only in bytes 8 to 23, which
    /// the sampled hash does not read: all of them share one hash.
    fn alike(from: usize, to: usize) -> StringArray {
        StringArray::from_iter_values(
            (from..to).map(|i| format!("samehead{i:016}same-tail-16-byt")),
        )
    }

    #[test]
    fn strings_alike_but_in_their_middle_are_rehashed_in_full() {
        let mut dictionary = StringDictionary::new();
        let first = alike(0, 300);
        let ids = dictionary.intern(&first, &every(300), 1 << 20).unwrap();
        assert!(dictionary.full_hash, "300 strings of one hash: rehashed");
        let second = alike(200, 500);
        let more = dictionary.intern(&second, &every(300), 1 << 20).unwrap();
        assert_eq!(dictionary.values().len(), 500);
        assert_eq!(&ids.values()[200..], &more.values()[..100], "ids kept");
        for (strings, ids) in [(&first, &ids), (&second, &more)] {
            let back = take(dictionary.values(), ids, None).unwrap();
            assert_eq!(back.as_ref(), strings as &dyn Array);
        }
        // A refusal after the rehash forgets what came before it too.
        let third = alike(1000, 1300);
        let mut small = StringDictionary::new();
        assert!(small.intern(&third, &every(300), 40 * 299).is_none());
        assert!(small.full_hash);
        let fresh = small.intern(&alike(2000, 2002), &every(2), 80).unwrap();
        assert_eq!(
            fresh.values().to_vec(),
            vec![0, 1],
            "nothing of the refused kept"
        );
    }

    #[test]
    fn urls_that_differ_at_their_end_keep_the_sampled_hash() {
        let urls = StringArray::from_iter_values((0..10_000).map(|i| {
            let word = |k: usize| ["abc", "defgh", "ij", "klmnopq"][(i / k) % 4];
            format!(
                "https://www.nexmark.com/{}/{}/{}/item.htm?query=1&channel_id={i}",
                word(1),
                word(4),
                word(16)
            )
        }));
        let mut dictionary = StringDictionary::new();
        let ids = dictionary.intern(&urls, &every(10_000), 1 << 20).unwrap();
        assert!(!dictionary.full_hash);
        let back = take(dictionary.values(), &ids, None).unwrap();
        assert_eq!(back.as_ref(), &urls as &dyn Array);
    }

    fn every(n: u32) -> UInt32Array {
        UInt32Array::from_iter_values(0..n)
    }

    #[test]
    fn strings_past_the_limit_are_refused_and_nothing_is_added() {
        let mut dictionary = StringDictionary::new();
        dictionary
            .intern(&StringArray::from(vec!["abc", "de"]), &every(2), 8)
            .unwrap();
        let refused = StringArray::from(vec!["abc", "fgh", "ijk"]);
        assert!(dictionary.intern(&refused, &every(3), 8).is_none());
        assert_eq!(dictionary.values().len(), 2);
        // What was refused is not half there: "fgh" is new again.
        let ids = dictionary
            .intern(&StringArray::from(vec!["fgh", "de"]), &every(2), 8)
            .unwrap();
        assert_eq!(ids.values().to_vec(), vec![2, 1]);
    }
}
