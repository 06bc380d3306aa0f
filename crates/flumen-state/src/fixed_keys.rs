//! Group ids of keys made of one or two integer-like columns (integers,
//! dates, timestamps), for the running `GROUP BY`. Each key is packed into
//! three words (the values and their null bits) and held in the table slot itself beside its id, so a lookup
//! reads one slot and compares words, and a batch computes its rows' homes
//! first and prefetches the slot of the row a few ahead: Nexmark q4's
//! groups (an auction and its category) are millions, spread over a table
//! far larger than the cache. DataFusion's `GroupValuesColumn` spent 18 %
//! of q4's CPU there, waiting on one miss after another.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimeUnit,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use flumen_types::{FlumenError, Result};

use crate::probing::{grown_capacity, prefetch};

/// How many rows ahead a batch prefetches a row's home slot.
const AHEAD: usize = 16;

/// The table grows when it would be fuller than this many eighths.
const MAX_LOAD_EIGHTHS: usize = 7;

/// An id no key has: the mark of an empty slot.
const EMPTY: u32 = u32::MAX;

/// A key's words and its id.
#[derive(Clone, Copy)]
struct Slot {
    words: [u64; 3],
    hash: u32,
    id: u32,
}

const EMPTY_SLOT: Slot = Slot {
    words: [0; 3],
    hash: 0,
    id: EMPTY,
};

/// Dense ids of packed keys.
pub(crate) struct FixedKeys {
    /// A power-of-two number of slots, or none.
    slots: Vec<Slot>,
    len: usize,
}

/// Whether a column of `data_type` packs into one word.
fn fits_a_word(data_type: &DataType) -> bool {
    use DataType::*;
    matches!(
        data_type,
        Int8 | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Date32
            | Date64
            | Timestamp(_, _)
    )
}

impl FixedKeys {
    /// A table for keys of columns of these types, or `None` when they do
    /// not pack into words.
    pub(crate) fn for_columns(columns: &[DataType]) -> Option<Self> {
        let fits = matches!(columns.len(), 1 | 2) && columns.iter().all(fits_a_word);
        fits.then(|| FixedKeys {
            slots: Vec::new(),
            len: 0,
        })
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes of its slots.
    pub(crate) fn size(&self) -> usize {
        self.slots.capacity() * size_of::<Slot>()
    }

    /// The id of each row's key in `ids`; new keys get the next ids, in
    /// the order of their first rows.
    pub(crate) fn intern(&mut self, keys: &[ArrayRef], ids: &mut Vec<usize>) -> Result<()> {
        let rows = keys.first().map_or(0, |k| k.len());
        let mut words = vec![[0u64; 3]; rows];
        for (c, column) in keys.iter().enumerate() {
            pack(column, c, &mut words)?;
            if column.null_count() > 0 {
                for (row, w) in words.iter_mut().enumerate() {
                    if column.is_null(row) {
                        w[c] = 0;
                        w[2] |= 1 << c;
                    }
                }
            }
        }
        self.reserve(rows);
        let hashes: Vec<u32> = words.iter().map(hash).collect();
        let homes: Vec<usize> = hashes.iter().map(|&h| self.home(h)).collect();
        ids.clear();
        ids.reserve(rows);
        for (row, (w, &hash)) in words.iter().zip(&hashes).enumerate() {
            if let Some(&ahead) = homes.get(row + AHEAD) {
                prefetch(&self.slots, ahead);
            }
            let mask = self.slots.len() - 1;
            let mut at = homes[row];
            let id = loop {
                let slot = &mut self.slots[at];
                if slot.id == EMPTY {
                    let id = self.len as u32;
                    *slot = Slot {
                        words: *w,
                        hash,
                        id,
                    };
                    self.len += 1;
                    break id;
                }
                if slot.hash == hash && slot.words == *w {
                    break slot.id;
                }
                at = (at + 1) & mask;
            };
            ids.push(id as usize);
        }
        Ok(())
    }

    /// The slot where a probe for `hash` starts.
    fn home(&self, hash: u32) -> usize {
        let bits = self.slots.len().trailing_zeros();
        // Fibonacci hashing: the top bits of the product spread any hash.
        (u64::from(hash).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
    }

    /// Makes room for `more` new keys, so that none of them moves a slot.
    fn reserve(&mut self, more: usize) {
        let Some(capacity) = grown_capacity(self.len, more, self.slots.len(), MAX_LOAD_EIGHTHS)
        else {
            return;
        };
        let old = std::mem::replace(&mut self.slots, vec![EMPTY_SLOT; capacity]);
        let mask = capacity - 1;
        for slot in old.into_iter().filter(|s| s.id != EMPTY) {
            let mut at = self.home(slot.hash);
            while self.slots[at].id != EMPTY {
                at = (at + 1) & mask;
            }
            self.slots[at] = slot;
        }
    }
}

/// Mixes a key's words into a 32-bit hash.
fn hash(words: &[u64; 3]) -> u32 {
    let mix = |x: u64| {
        let x = (x ^ (x >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        x ^ (x >> 32)
    };
    mix(words[0].wrapping_add(mix(words[1].wrapping_add(mix(words[2]))))) as u32
}

/// Writes column `c` of every row into `words[row][c]`, as the bits of its
/// value widened to 64 (null rows hold whatever the array holds there).
fn pack(column: &ArrayRef, c: usize, words: &mut [[u64; 3]]) -> Result<()> {
    macro_rules! put {
        ($t:ty) => {
            for (w, &v) in words.iter_mut().zip(column.as_primitive::<$t>().values()) {
                w[c] = v as u64;
            }
        };
    }
    match column.data_type() {
        DataType::Int8 => put!(Int8Type),
        DataType::Int16 => put!(Int16Type),
        DataType::Int32 => put!(Int32Type),
        DataType::Int64 => put!(Int64Type),
        DataType::UInt8 => put!(UInt8Type),
        DataType::UInt16 => put!(UInt16Type),
        DataType::UInt32 => put!(UInt32Type),
        DataType::UInt64 => put!(UInt64Type),
        DataType::Date32 => put!(Date32Type),
        DataType::Date64 => put!(Date64Type),
        DataType::Timestamp(TimeUnit::Second, _) => {
            put!(arrow::datatypes::TimestampSecondType)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            put!(arrow::datatypes::TimestampMillisecondType)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            put!(arrow::datatypes::TimestampMicrosecondType)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            put!(arrow::datatypes::TimestampNanosecondType)
        }
        other => {
            return Err(FlumenError::execution(format!(
                "group keys: a {other} column does not pack into a word"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, Int64Array, TimestampMillisecondArray};

    use super::*;

    /// Ids as a map from whole keys would give them: equal keys one id,
    /// ids in order of first rows, a NULL apart from 0, across batches and
    /// through the table's growth.
    #[test]
    fn equal_keys_get_one_id_in_order_of_first_rows() {
        let mut table = FixedKeys::for_columns(&[DataType::Int64, DataType::Int32]).unwrap();
        let mut seen = std::collections::HashMap::new();
        let mut ids = Vec::new();
        for batch in 0..20i64 {
            let a: Vec<Option<i64>> = (0..500)
                .map(|r| ((r + batch) % 7 != 0).then_some((r * 31 + batch * 17) % 900))
                .collect();
            let b: Vec<i32> = (0..500).map(|r| r % 3).collect();
            let keys: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(a.clone())),
                Arc::new(Int32Array::from(b.clone())),
            ];
            table.intern(&keys, &mut ids).unwrap();
            for (row, &id) in ids.iter().enumerate() {
                let next = seen.len();
                let want = *seen.entry((a[row], b[row])).or_insert(next);
                assert_eq!(id, want, "batch {batch} row {row}");
            }
        }
        assert_eq!(table.len(), seen.len());
        assert!(seen.contains_key(&(None, 0)) && seen.contains_key(&(Some(0), 0)));
    }

    /// Two keys, alike in one column and with equal 32-bit hashes (found by
    /// search: the hash is fixed), get two ids, for each column they may
    /// differ in.
    #[test]
    fn keys_with_equal_hashes_stay_apart() {
        for differing in 0..2 {
            let key = |v: u64| {
                let mut words = [7, 7, 0];
                words[differing] = v;
                words
            };
            let mut by_hash = std::collections::HashMap::new();
            let (v1, v2) = (0..1_000_000u64)
                .find_map(|v| by_hash.insert(hash(&key(v)), v).map(|earlier| (earlier, v)))
                .expect("32-bit hashes of a million keys collide");
            let column = |values: [u64; 2]| -> ArrayRef {
                Arc::new(Int64Array::from(values.map(|v| v as i64).to_vec()))
            };
            let (k1, k2) = (key(v1), key(v2));
            let keys = [column([k1[0], k2[0]]), column([k1[1], k2[1]])];
            let mut table = FixedKeys::for_columns(&[DataType::Int64, DataType::Int64]).unwrap();
            let mut ids = Vec::new();
            table.intern(&keys, &mut ids).unwrap();
            assert_eq!(ids, [0, 1], "keys {k1:?} and {k2:?}");
        }
    }

    #[test]
    fn only_keys_of_one_or_two_integer_like_columns_pack() {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        assert!(FixedKeys::for_columns(&[DataType::Utf8]).is_none());
        assert!(FixedKeys::for_columns(&[DataType::Float64]).is_none());
        assert!(FixedKeys::for_columns(&[]).is_none());
        let three = [DataType::Int64, DataType::Int64, ts.clone()];
        assert!(FixedKeys::for_columns(&three).is_none());
        let mut table = FixedKeys::for_columns(&[DataType::Int64, ts]).unwrap();
        let keys = [
            Arc::new(Int64Array::from(vec![2, 2, 3])) as ArrayRef,
            Arc::new(TimestampMillisecondArray::from(vec![5, 6, 5])) as ArrayRef,
        ];
        let mut ids = Vec::new();
        table.intern(&keys, &mut ids).unwrap();
        assert_eq!(ids, [0, 1, 2]);
        table.intern(&keys, &mut ids).unwrap();
        assert_eq!(ids, [0, 1, 2]);
    }
}
