//! The rows a TopN keeps: their values in Arrow batches ("slots"), and
//! beside them each row's partition and order keys (`arrow-row` bytes, the
//! two side by side so one cache line usually holds both). A row that falls
//! out is marked dead; once dead rows pass a quarter of the live ones, the
//! emptiest slots are copied together, a few at a time, so memory stays near
//! the live rows' own size without ever copying every kept row at once.
//! String columns are kept as ids into a dictionary of their distinct
//! values while those stay few (`string_dictionary`); columns a fixed-width
//! key holds are not kept again but read from the keys (`key_columns`);
//! integer columns (ids among them) are kept as narrow offsets from their
//! least value where a slot's values allow (`stored_column`).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, StringArray, UInt32Array};
use arrow::buffer::NullBuffer;
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, SchemaRef, UInt32Type};
use flumen_state::string_take::take_array;
use flumen_types::{DEFAULT_BATCH_SIZE, FlumenError, Result};

use crate::key_columns::{Key, KeyColumns};
use crate::stored_column::{StoredColumn, interleave_stored};
use crate::string_dictionary::StringDictionary;

/// The most bytes of distinct strings a column's dictionary holds. A column
/// with more (mostly distinct values, such as random padding) is kept as
/// plain strings from then on; below it, rebuilding the dictionary's array
/// when a batch brings new strings stays cheap.
const DICTIONARY_LIMIT: usize = 4 << 20;

/// Where a kept row is: its slot and its index in the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RowRef {
    /// The slot.
    pub slot: u32,
    /// The row within the slot.
    pub row: u32,
}

/// Each row's partition key and order key, packed into one buffer, the two
/// of a row next to each other; no offsets when every row's keys have the
/// same lengths (fixed-width key columns).
#[derive(Default)]
pub(crate) struct Keys {
    data: Vec<u8>,
    /// `2n + 1` offsets (row `i`: partition key from `2i` to `2i + 1`,
    /// order key from `2i + 1` to `2i + 2`), or empty when fixed.
    offsets: Vec<u32>,
    /// The partition and order key lengths when fixed.
    widths: (usize, usize),
}

impl Keys {
    /// Packs `(partition key, order key)` pairs.
    pub(crate) fn from_pairs<'a>(keys: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Keys {
        let lengths = keys.clone().map(|(p, o)| (p.len(), o.len()));
        let widths = lengths.clone().next().unwrap_or((0, 0));
        let (mut fixed, mut rows, mut bytes) = (true, 0, 0);
        for l in lengths {
            fixed &= l == widths;
            rows += 1;
            bytes += l.0 + l.1;
        }
        // Sized once: growing by doubling and then shrinking to fit copied
        // the keys several times over.
        let mut packed = Keys {
            data: Vec::with_capacity(bytes),
            offsets: Vec::with_capacity(if fixed { 0 } else { 2 * rows + 1 }),
            widths,
        };
        if !fixed {
            packed.offsets.push(0);
        }
        for (partition, order) in keys {
            push_key(&mut packed.data, partition);
            if !fixed {
                packed.offsets.push(packed.data.len() as u32);
            }
            push_key(&mut packed.data, order);
            if !fixed {
                packed.offsets.push(packed.data.len() as u32);
            }
        }
        packed
    }

    /// The partition key of row `i`.
    pub(crate) fn partition(&self, i: usize) -> &[u8] {
        if self.offsets.is_empty() {
            let start = i * (self.widths.0 + self.widths.1);
            &self.data[start..start + self.widths.0]
        } else {
            &self.data[self.offsets[2 * i] as usize..self.offsets[2 * i + 1] as usize]
        }
    }

    /// The order key of row `i`.
    pub(crate) fn order(&self, i: usize) -> &[u8] {
        if self.offsets.is_empty() {
            let start = i * (self.widths.0 + self.widths.1) + self.widths.0;
            &self.data[start..start + self.widths.1]
        } else {
            &self.data[self.offsets[2 * i + 1] as usize..self.offsets[2 * i + 2] as usize]
        }
    }

    fn bytes(&self) -> usize {
        self.data.capacity() + self.offsets.capacity() * 4
    }
}

/// Appends `key` to `data`. A key of 8 to 16 bytes (an `arrow-row` integer
/// is 5 or 9) that fits the capacity is copied as two overlapping 8-byte
/// words: `extend_from_slice` made that a `memcpy` call per key.
#[inline]
fn push_key(data: &mut Vec<u8>, key: &[u8]) {
    let (n, at) = (key.len(), data.len());
    if !(8..=16).contains(&n) || data.capacity() - at < n {
        data.extend_from_slice(key);
        return;
    }
    let word = |from: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&key[from..from + 8]);
        w
    };
    let (head, tail) = (word(0), word(n - 8));
    // SAFETY: `at + n` is within the capacity (checked above), and both
    // words lie in `at..at + n`, which `n >= 8` allows; the bytes up to
    // `at + n` are all written before the length covers them.
    unsafe {
        let target = data.as_mut_ptr().add(at);
        std::ptr::copy_nonoverlapping(head.as_ptr(), target, 8);
        std::ptr::copy_nonoverlapping(tail.as_ptr(), target.add(n - 8), 8);
        data.set_len(at + n);
    }
}

/// Rows a compaction copied: each row's old and new place. The old slots
/// stay readable until [`KeptRows::retire`] frees them.
pub(crate) struct Compaction {
    /// `(from, to)` of every live row of the retired slots.
    pub moves: Vec<(RowRef, RowRef)>,
    retired: Vec<u32>,
}

/// One batch of kept rows.
struct Slot {
    /// The stored columns (those no key holds); a column with a dictionary
    /// holds its ids, and integer columns may be narrowed (`stored_column`).
    columns: Vec<StoredColumn>,
    rows: usize,
    /// Shared with snapshots being written.
    keys: Arc<Keys>,
    /// A bit per row: still kept.
    live: Vec<u64>,
    live_rows: usize,
    /// The live rows' own Arrow size.
    live_arrow_bytes: usize,
    bytes: usize,
}

impl Slot {
    fn is_live(&self, row: usize) -> bool {
        self.live[row / 64] & (1 << (row % 64)) != 0
    }
}

/// The kept rows of one TopN subtask.
pub(crate) struct KeptRows {
    /// The kept columns.
    schema: SchemaRef,
    /// The kept columns read from keys, shared with frozen copies.
    keyed: Arc<KeyColumns>,
    /// The kept columns stored in slots (the others are read from keys),
    /// in order: a slot's `i`-th column is kept column `stored[i]`.
    stored: Vec<usize>,
    /// Per stored column: the dictionary its strings are kept in, if any.
    dictionaries: Vec<Option<StringDictionary>>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// Rows held by all slots, live or dead.
    rows: usize,
    live: usize,
    /// The live rows' own Arrow size.
    live_arrow_bytes: usize,
    bytes: usize,
    /// Per stored column: the strings of the last dictionary-encoded column
    /// added (a restored snapshot's) and their ids here, so that the slots
    /// of one state file map their ids without looking up a string again.
    remaps: Vec<Option<(ArrayRef, Vec<u32>)>>,
}

impl KeptRows {
    /// An empty store of rows with `schema`, of which `keyed` reads some
    /// columns from the rows' keys.
    pub(crate) fn new(schema: SchemaRef, keyed: KeyColumns) -> Self {
        let stored: Vec<usize> = (0..schema.fields().len())
            .filter(|&c| !keyed.is_keyed(c))
            .collect();
        let dictionaries = stored
            .iter()
            .map(|&c| (schema.field(c).data_type() == &DataType::Utf8).then(StringDictionary::new))
            .collect();
        KeptRows {
            remaps: vec![None; stored.len()],
            schema,
            keyed: Arc::new(keyed),
            stored,
            dictionaries,
            slots: Vec::new(),
            free: Vec::new(),
            rows: 0,
            live: 0,
            live_arrow_bytes: 0,
            bytes: 0,
        }
    }

    /// Stores rows `rows` of the kept `columns` (every row live), with
    /// their keys; returns their slot. Columns read from keys are not
    /// copied (the keys hold their values). Strings kept in a dictionary are
    /// looked up where they are, not copied first; a string column may
    /// come dictionary-encoded (`Dictionary(UInt32, Utf8)`, as snapshots
    /// write it), whose strings are then looked up once, not once a row.
    pub(crate) fn add(
        &mut self,
        columns: &[ArrayRef],
        rows: &UInt32Array,
        keys: Keys,
    ) -> Result<u32> {
        let mut kept = Vec::with_capacity(self.stored.len());
        for i in 0..self.stored.len() {
            let c = self.stored[i];
            let column = columns.get(c).ok_or_else(|| {
                FlumenError::state(format!("kept column {c} of {} missing", columns.len()))
            })?;
            let encoded = column.as_dictionary_opt::<UInt32Type>();
            let ids = match (&mut self.dictionaries[i], encoded) {
                (Some(dictionary), Some(encoded)) => {
                    remapped_ids(dictionary, &mut self.remaps[i], encoded, rows)?
                }
                (Some(dictionary), None) => {
                    // Plain strings again: a restore's strings are done with.
                    self.remaps[i] = None;
                    let strings = column.as_string_opt::<i32>().ok_or_else(|| {
                        FlumenError::state(format!(
                            "kept column {c} holds {}, not text",
                            column.data_type()
                        ))
                    })?;
                    dictionary.intern(strings, rows, DICTIONARY_LIMIT)
                }
                (None, _) => None,
            };
            kept.push(match ids {
                Some(ids) => Arc::new(ids) as ArrayRef,
                None => {
                    self.keep_plainly(i)?;
                    let picked = take_array(column.as_ref(), rows)?;
                    // A restored column may come encoded: kept as declared.
                    let declared = self.schema.field(c).data_type();
                    if picked.data_type() == declared {
                        picked
                    } else {
                        cast(&picked, declared)?
                    }
                }
            });
        }
        let arrow_bytes = self.arrow_bytes_of(&kept, rows.len());
        Ok(self.insert(kept, rows.len(), keys, arrow_bytes))
    }

    /// The Arrow size of `rows` rows whose stored columns are `columns`,
    /// with their columns read from keys.
    fn arrow_bytes_of(&self, columns: &[ArrayRef], rows: usize) -> usize {
        columns
            .iter()
            .enumerate()
            .map(|(i, array)| self.plain_arrow_bytes(i, array, None))
            .sum::<usize>()
            + self.keyed.row_width() * rows
    }

    /// Turns stored column `c` of every slot from dictionary ids back into
    /// strings, and keeps it so from now on.
    fn keep_plainly(&mut self, c: usize) -> Result<()> {
        let Some(dictionary) = self.dictionaries[c].take() else {
            return Ok(());
        };
        for slot in self.slots.iter_mut().flatten() {
            let ids = slot.columns[c].slice(0, slot.columns[c].len());
            let strings = take(dictionary.values(), ids.as_primitive::<UInt32Type>(), None)?;
            let grown = strings.get_array_memory_size() - slot.columns[c].memory_size();
            slot.columns[c] = StoredColumn::Plain(strings);
            slot.bytes += grown;
            self.bytes += grown;
        }
        Ok(())
    }

    /// The slot the next [`KeptRows::add`] stores its rows in, so that a
    /// caller can point at them before copying them.
    pub(crate) fn next_slot(&self) -> u32 {
        match self.free.last() {
            Some(&i) => i,
            None => self.slots.len() as u32,
        }
    }

    /// Stores a slot of `columns` as kept (every row live), narrowed where
    /// they can be.
    fn insert(&mut self, columns: Vec<ArrayRef>, n: usize, keys: Keys, arrow_bytes: usize) -> u32 {
        let columns: Vec<StoredColumn> = columns.into_iter().map(StoredColumn::new).collect();
        let mut live = vec![u64::MAX; n.div_ceil(64)];
        if !n.is_multiple_of(64) {
            live[n / 64] = (1 << (n % 64)) - 1;
        }
        let bytes = columns.iter().map(StoredColumn::memory_size).sum::<usize>()
            + keys.bytes()
            + live.capacity() * 8;
        self.rows += n;
        self.live += n;
        self.live_arrow_bytes += arrow_bytes;
        self.bytes += bytes;
        let slot = Slot {
            columns,
            rows: n,
            keys: Arc::new(keys),
            live,
            live_rows: n,
            live_arrow_bytes: arrow_bytes,
            bytes,
        };
        // The slot `next_slot` names, so that the two never disagree.
        let i = self.next_slot();
        if i as usize == self.slots.len() {
            self.slots.push(Some(slot));
        } else {
            self.free.pop();
            self.slots[i as usize] = Some(slot);
        }
        i
    }

    fn slot(&self, slot: u32) -> &Slot {
        self.slots[slot as usize]
            .as_ref()
            .expect("a kept row's slot is live")
    }

    /// The order key of a kept row.
    pub(crate) fn order_key(&self, r: RowRef) -> &[u8] {
        self.slot(r.slot).keys.order(r.row as usize)
    }

    /// The partition key of a kept row.
    pub(crate) fn partition_key(&self, r: RowRef) -> &[u8] {
        self.slot(r.slot).keys.partition(r.row as usize)
    }

    /// The Arrow size of row `row` of stored column `c` as a slot stores
    /// it: of the declared type where it is narrowed, as plain strings where
    /// it holds ids.
    fn stored_arrow_bytes(&self, c: usize, column: &StoredColumn, row: usize) -> usize {
        if let Some(dictionary) = &self.dictionaries[c] {
            return 4 + if column.is_null(row) {
                0
            } else {
                dictionary.string_len(column.id(row))
            };
        }
        match column {
            StoredColumn::Plain(array) => arrow_bytes(array, Some(row)),
            StoredColumn::Narrow { data_type, .. } => data_type.primitive_width().unwrap_or(8),
        }
    }

    /// The Arrow size of row `row` (`Some`) or all rows of stored column
    /// `c` as stored in `array`: as plain strings where it holds ids.
    fn plain_arrow_bytes(&self, c: usize, array: &ArrayRef, row: Option<usize>) -> usize {
        let Some(dictionary) = &self.dictionaries[c] else {
            return arrow_bytes(array, row);
        };
        let ids = array.as_primitive::<UInt32Type>();
        let len = |i: usize| {
            if ids.is_null(i) {
                0
            } else {
                dictionary.string_len(ids.value(i))
            }
        };
        match row {
            Some(i) => 4 + len(i),
            None => (0..ids.len()).map(|i| 4 + len(i)).sum(),
        }
    }

    /// Marks a row dead; frees its slot when it was the slot's last.
    pub(crate) fn release(&mut self, r: RowRef) {
        let row = r.row as usize;
        let row_bytes: usize = self
            .slot(r.slot)
            .columns
            .iter()
            .enumerate()
            .map(|(c, column)| self.stored_arrow_bytes(c, column, row))
            .sum::<usize>()
            + self.keyed.row_width();
        let slot = self.slots[r.slot as usize]
            .as_mut()
            .expect("a kept row's slot is live");
        debug_assert!(slot.is_live(row), "a row is released once");
        slot.live[row / 64] &= !(1 << (row % 64));
        slot.live_rows -= 1;
        self.live -= 1;
        slot.live_arrow_bytes -= row_bytes;
        self.live_arrow_bytes -= row_bytes;
        if slot.live_rows == 0 {
            self.free_slot(r.slot);
        }
    }

    /// Marks `rows` dead, sorted by slot: a slot all of whose live rows
    /// are among them is freed whole, without reading each row's size
    /// (a TopN's closed partitions: rows kept about the same time close
    /// about the same time).
    pub(crate) fn release_sorted(&mut self, rows: &[RowRef]) {
        for group in rows.chunk_by(|a, b| a.slot == b.slot) {
            let slot = group[0].slot;
            let whole = self.slots[slot as usize]
                .as_ref()
                .is_some_and(|s| s.live_rows == group.len());
            if whole {
                self.free_slot(slot);
            } else {
                for &r in group {
                    self.release(r);
                }
            }
        }
    }

    fn free_slot(&mut self, slot: u32) {
        if let Some(s) = self.slots[slot as usize].take() {
            self.rows -= s.rows;
            self.live -= s.live_rows;
            self.live_arrow_bytes -= s.live_arrow_bytes;
            self.bytes -= s.bytes;
            self.free.push(slot);
        }
    }

    /// Live rows.
    pub(crate) fn live_rows(&self) -> usize {
        self.live
    }

    /// The live rows' own Arrow size: what they would take packed in one
    /// batch (values, offsets), without this store's keys and slack.
    pub(crate) fn live_arrow_bytes(&self) -> usize {
        self.live_arrow_bytes
    }

    /// Rows held, live or dead.
    #[cfg(test)]
    pub(crate) fn held_rows(&self) -> usize {
        self.rows
    }

    /// Bytes of every slot (values, keys and live bits) and dictionary.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
            + self
                .dictionaries
                .iter()
                .flatten()
                .map(StringDictionary::bytes)
                .sum::<usize>()
    }

    /// The kept columns of `rows`, in that order.
    pub(crate) fn gather(&self, rows: &[RowRef]) -> Result<Vec<ArrayRef>> {
        let columns = match one_run(rows) {
            // Rows in their slot's order (the rows a batch added, as a TopN
            // that only inserts emits them): the slot's arrays sliced, not
            // copied row by row.
            Some((slot, start)) => self
                .slot(slot)
                .columns
                .iter()
                .map(|column| column.slice(start, rows.len()))
                .collect(),
            None => self.gather_stored(rows)?,
        };
        let values: Vec<Option<&StringArray>> = self
            .dictionaries
            .iter()
            .map(|d| d.as_ref().map(StringDictionary::values))
            .collect();
        self.keyed.assemble(resolve_ids(columns, &values)?, |key| {
            rows.iter().map(move |&r| match key {
                Key::Partition => self.partition_key(r),
                Key::Order => self.order_key(r),
            })
        })
    }

    /// The stored columns of `rows` as stored: ids where a column has a
    /// dictionary.
    fn gather_stored(&self, rows: &[RowRef]) -> Result<Vec<ArrayRef>> {
        gather_columns(
            self.stored.len(),
            self.slots.len(),
            |s, c| &self.slot(s).columns[c],
            rows,
        )
    }

    /// The kept rows as they are now, to be read while this store goes on
    /// changing: the slots' arrays and keys and the dictionaries' strings
    /// are shared, not copied.
    pub(crate) fn frozen(&self) -> FrozenRows {
        FrozenRows {
            keyed: self.keyed.clone(),
            width: self.stored.len(),
            slots: self
                .slots
                .iter()
                .map(|s| s.as_ref().map(|s| (s.columns.clone(), s.keys.clone())))
                .collect(),
            dictionaries: self
                .dictionaries
                .iter()
                .map(|d| d.as_ref().map(|d| d.values().clone()))
                .collect(),
        }
    }

    /// Copies the live rows of the emptiest slots into fresh ones once dead
    /// rows exceed a quarter of the live (and a batch): enough slots to bring
    /// them under an eighth. The caller repoints its entries by the moves,
    /// then hands the compaction back to [`KeptRows::retire`].
    pub(crate) fn compact(&mut self) -> Result<Option<Compaction>> {
        let dead = self.rows - self.live;
        if dead <= self.live / 4 + DEFAULT_BATCH_SIZE {
            return Ok(None);
        }
        let mut sparse: Vec<(f64, u32)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = s.as_ref()?;
                let n = s.rows;
                (s.live_rows < n).then(|| (s.live_rows as f64 / n as f64, i as u32))
            })
            .collect();
        sparse.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut to_remove = dead - self.live / 8;
        let mut retired = Vec::new();
        for (_, slot) in sparse {
            if to_remove == 0 {
                break;
            }
            let s = self.slot(slot);
            to_remove = to_remove.saturating_sub(s.rows - s.live_rows);
            retired.push(slot);
        }
        let mut from: Vec<RowRef> = Vec::new();
        for &slot in &retired {
            let s = self.slot(slot);
            from.extend((0..s.rows).filter(|&r| s.is_live(r)).map(|r| RowRef {
                slot,
                row: r as u32,
            }));
        }
        let mut fresh = Vec::new();
        for chunk in from.chunks(DEFAULT_BATCH_SIZE) {
            let columns = self.gather_stored(chunk)?;
            let arrow_bytes = self.arrow_bytes_of(&columns, chunk.len());
            let keys = Keys::from_pairs(
                chunk
                    .iter()
                    .map(|&r| (self.partition_key(r), self.order_key(r))),
            );
            fresh.push((columns, chunk.len(), keys, arrow_bytes));
        }
        // Fresh slots are added while the retired ones still hold their
        // rows, so none reuses a retired slot's number.
        let mut moves = Vec::with_capacity(from.len());
        let mut from = from.into_iter();
        for (columns, n, keys, arrow_bytes) in fresh {
            let slot = self.insert(columns, n, keys, arrow_bytes);
            for (row, old) in (0..n).zip(from.by_ref()) {
                moves.push((
                    old,
                    RowRef {
                        slot,
                        row: row as u32,
                    },
                ));
            }
        }
        Ok(Some(Compaction { moves, retired }))
    }

    /// Frees the slots a compaction copied out of.
    pub(crate) fn retire(&mut self, compaction: Compaction) {
        for slot in compaction.retired {
            self.free_slot(slot);
        }
    }
}

/// The Arrow size of one row of `array` (`Some(row)`), or of all of it:
/// fixed-width values, and for strings and binaries their bytes and offset.
/// Other types count their share of the array's memory.
fn arrow_bytes(array: &ArrayRef, row: Option<usize>) -> usize {
    let rows = row.map_or(array.len(), |_| 1);
    let var = |offsets: &[i32]| match row {
        Some(r) => (offsets[r + 1] - offsets[r]) as usize,
        None => (offsets[offsets.len() - 1] - offsets[0]) as usize,
    };
    match array.data_type() {
        DataType::Utf8 => var(array.as_string::<i32>().value_offsets()) + 4 * rows,
        DataType::Binary => var(array.as_binary::<i32>().value_offsets()) + 4 * rows,
        DataType::Boolean => rows.div_ceil(8),
        t => match t.primitive_width() {
            Some(width) => width * rows,
            None => array.get_array_memory_size() * rows / array.len().max(1),
        },
    }
}

/// The schema of the kept columns: the first `width` fields of `output`.
pub(crate) fn kept_schema(output: &SchemaRef, width: usize) -> SchemaRef {
    Arc::new(arrow::datatypes::Schema::new(
        output.fields()[..width].to_vec(),
    ))
}

/// The kept rows of a [`KeptRows`] at one moment (a snapshot's), readable
/// on another thread while the store goes on.
pub(crate) struct FrozenRows {
    keyed: Arc<KeyColumns>,
    /// Stored columns per slot.
    width: usize,
    slots: Vec<Option<(Vec<StoredColumn>, Arc<Keys>)>>,
    dictionaries: Vec<Option<StringArray>>,
}

impl FrozenRows {
    fn slot(&self, slot: u32) -> &(Vec<StoredColumn>, Arc<Keys>) {
        // Rows are read by the references the partitions held when these
        // slots were frozen, and a partition only refers to live slots.
        self.slots[slot as usize]
            .as_ref()
            .expect("a kept row's slot is live")
    }

    /// The partition key of a kept row.
    pub(crate) fn partition_key(&self, r: RowRef) -> &[u8] {
        self.slot(r.slot).1.partition(r.row as usize)
    }

    /// The order key of a kept row.
    pub(crate) fn order_key(&self, r: RowRef) -> &[u8] {
        self.slot(r.slot).1.order(r.row as usize)
    }

    /// The kept columns of `rows`, in that order, a column kept in a
    /// dictionary as a `Dictionary(UInt32, Utf8)` array of its ids over all
    /// its strings: a snapshot writes each string once per state file (the
    /// frozen strings are one array, so every set of a snapshot shares
    /// them), not once per row.
    pub(crate) fn gather_encoded(&self, rows: &[RowRef]) -> Result<Vec<ArrayRef>> {
        let mut columns = gather_columns(
            self.width,
            self.slots.len(),
            |s, c| &self.slot(s).0[c],
            rows,
        )?;
        for (column, values) in columns.iter_mut().zip(&self.dictionaries) {
            if let Some(values) = values {
                let ids = column.as_primitive::<UInt32Type>().clone();
                let values: ArrayRef = Arc::new(values.clone());
                *column = Arc::new(DictionaryArray::<UInt32Type>::try_new(ids, values)?);
            }
        }
        self.keyed.assemble(columns, |key| {
            rows.iter().map(move |&r| match key {
                Key::Partition => self.partition_key(r),
                Key::Order => self.order_key(r),
            })
        })
    }
}

/// The ids in `dictionary` of rows `rows` of `encoded` (null where the
/// row is), its strings added once per distinct strings array (`remap`
/// keeps the last one's ids); `None`, with nothing added, when they would
/// bring the dictionary past its limit.
fn remapped_ids(
    dictionary: &mut StringDictionary,
    remap: &mut Option<(ArrayRef, Vec<u32>)>,
    encoded: &DictionaryArray<UInt32Type>,
    rows: &UInt32Array,
) -> Result<Option<UInt32Array>> {
    let values = encoded.values();
    let known = remap
        .as_ref()
        .is_some_and(|(seen, _)| seen.to_data().ptr_eq(&values.to_data()));
    if !known {
        let Some(strings) = values.as_string_opt::<i32>() else {
            return Ok(None);
        };
        let every = UInt32Array::from_iter_values(0..strings.len() as u32);
        let Some(ids) = dictionary.intern(strings, &every, DICTIONARY_LIMIT) else {
            *remap = None;
            return Ok(None);
        };
        *remap = Some((values.clone(), ids.values().to_vec()));
    }
    let Some((_, ids)) = remap.as_ref() else {
        return Ok(None);
    };
    let keys = encoded.keys();
    let mapped = rows
        .values()
        .iter()
        .map(|&r| {
            let r = r as usize;
            if keys.is_null(r) {
                return Ok(0);
            }
            let key = keys.value(r);
            ids.get(key as usize).copied().ok_or_else(|| {
                FlumenError::state(format!(
                    "a dictionary key {key} past its {} strings",
                    ids.len()
                ))
            })
        })
        .collect::<Result<Vec<u32>>>()?;
    let nulls = (keys.null_count() > 0)
        .then(|| NullBuffer::from_iter(rows.values().iter().map(|&r| keys.is_valid(r as usize))));
    Ok(Some(UInt32Array::new(mapped.into(), nulls)))
}

/// Columns `0..width` of `rows`, from slots numbered below `slots`.
fn gather_columns<'a>(
    width: usize,
    slots: usize,
    column: impl Fn(u32, usize) -> &'a StoredColumn,
    rows: &[RowRef],
) -> Result<Vec<ArrayRef>> {
    // The slots the rows come from, numbered in order of first use: rows
    // of an update or a snapshot come from anywhere in the store.
    let mut used: Vec<u32> = Vec::new();
    let mut number = vec![u32::MAX; slots];
    let mut picks: Vec<(usize, usize)> = Vec::with_capacity(rows.len());
    for r in rows {
        let n = &mut number[r.slot as usize];
        if *n == u32::MAX {
            *n = used.len() as u32;
            used.push(r.slot);
        }
        picks.push((*n as usize, r.row as usize));
    }
    (0..width)
        .map(|c| {
            let columns: Vec<&StoredColumn> = used.iter().map(|&s| column(s, c)).collect();
            interleave_stored(&columns, &picks)
        })
        .collect()
}

/// The slot and first row of `rows` when they are consecutive rows of one
/// slot, in order.
fn one_run(rows: &[RowRef]) -> Option<(u32, usize)> {
    let first = rows.first()?;
    rows.iter()
        .enumerate()
        .all(|(i, r)| r.slot == first.slot && r.row as usize == first.row as usize + i)
        .then_some((first.slot, first.row as usize))
}

/// Turns the id columns of `columns` (those with a dictionary's strings in
/// `values`) into their strings.
fn resolve_ids(
    mut columns: Vec<ArrayRef>,
    values: &[Option<&StringArray>],
) -> Result<Vec<ArrayRef>> {
    for (column, values) in columns.iter_mut().zip(values) {
        if let Some(values) = values {
            *column = take_array(*values, column.as_primitive::<UInt32Type>())?;
        }
    }
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::collections::HashMap;

    /// Keys of every length around the word copies' 8 to 16 bytes, of one
    /// length throughout (no offsets) or of several, read back as packed.
    #[test]
    fn keys_of_any_length_read_back_as_packed() {
        let key = |len: usize, seed: usize| -> Vec<u8> {
            (0..len).map(|i| (seed * 31 + i * 7) as u8).collect()
        };
        for (p, o) in [(9, 9), (8, 16), (16, 8), (7, 17), (0, 12), (13, 1)] {
            let fixed: Vec<(Vec<u8>, Vec<u8>)> =
                (0..5).map(|r| (key(p, r), key(o, r + 50))).collect();
            let mixed: Vec<(Vec<u8>, Vec<u8>)> = (0..5)
                .map(|r| (key(p + r, r), key(o + 2 * r, r + 50)))
                .collect();
            for pairs in [fixed, mixed] {
                let keys = Keys::from_pairs(pairs.iter().map(|(p, o)| (&p[..], &o[..])));
                for (r, (partition, order)) in pairs.iter().enumerate() {
                    assert_eq!(keys.partition(r), &partition[..], "partition of {r}");
                    assert_eq!(keys.order(r), &order[..], "order of {r}");
                }
            }
        }
    }

    /// Consecutive rows of one slot are read as a slice of it; rows with a
    /// gap, out of order or from two slots are gathered: both give the
    /// rows asked for.
    #[test]
    fn runs_of_a_slot_read_as_the_rows_they_are() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter(
                    (0..20i64).map(|i| (i % 7 != 3).then_some(i * 10)),
                )),
                Arc::new(StringArray::from_iter(
                    (0..20).map(|i| (i % 5 != 2).then(|| format!("v{i}"))),
                )),
            ],
        )
        .unwrap();
        let mut kept = KeptRows::new(schema, KeyColumns::none(2));
        let mut slots = Vec::new();
        for start in [0u32, 10] {
            let rows = UInt32Array::from_iter_values(start..start + 10);
            let keys = Keys::from_pairs((0..10).map(|_| (&b""[..], &b""[..])));
            slots.push(kept.add(batch.columns(), &rows, keys).unwrap());
        }
        let at = |i: u32| RowRef {
            slot: slots[i as usize / 10],
            row: i % 10,
        };
        for picks in [
            vec![3, 4, 5, 6, 7, 8, 9],
            vec![10, 11, 12, 13, 14],
            vec![12],
            vec![3, 5, 6],
            vec![5, 4],
            vec![8, 9, 10, 11],
            vec![3, 14, 15],
        ] {
            let rows: Vec<RowRef> = picks.iter().map(|&i| at(i)).collect();
            let indices = UInt32Array::from(picks.clone());
            let expected: Vec<ArrayRef> = batch
                .columns()
                .iter()
                .map(|c| take(c, &indices, None).unwrap())
                .collect();
            assert_eq!(kept.gather(&rows).unwrap(), expected, "rows {picks:?}");
        }
    }

    /// `next_slot` names the slot `add` then stores in: a new one, or one
    /// freed when its last row was released.
    #[test]
    fn next_slot_is_the_slot_add_stores_in() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let mut kept = KeptRows::new(schema.clone(), KeyColumns::none(schema.fields().len()));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..2))])
                .unwrap();
        let add = |kept: &mut KeptRows| {
            let next = kept.next_slot();
            let keys = Keys::from_pairs([(&b"p"[..], &b"o"[..]); 2].into_iter());
            let slot = kept
                .add(batch.columns(), &UInt32Array::from(vec![0, 1]), keys)
                .unwrap();
            assert_eq!(slot, next);
            slot
        };
        let (a, b) = (add(&mut kept), add(&mut kept));
        assert_ne!(a, b);
        for row in 0..2 {
            kept.release(RowRef { slot: a, row });
        }
        assert_eq!(add(&mut kept), a);
        assert_eq!(add(&mut kept), 2);
    }

    #[test]
    fn live_rows_count_their_own_arrow_bytes_through_release_and_compaction() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let mut kept = KeptRows::new(schema.clone(), KeyColumns::none(schema.fields().len()));
        // Three slots of 8,192 rows; row i's string is i % 7 bytes long.
        let text = |i: usize| "x".repeat(i % 7);
        let mut slots = Vec::new();
        for s in 0..3 {
            let rows: Vec<usize> = (s * 8192..(s + 1) * 8192).collect();
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|&i| i as i64))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|&i| text(i)))),
                ],
            )
            .unwrap();
            let owners: Vec<[u8; 4]> = rows.iter().map(|&i| (i as u32).to_be_bytes()).collect();
            let keys = Keys::from_pairs(owners.iter().map(|o| (&o[..], &b"k"[..])));
            let every = UInt32Array::from_iter_values(0..8192);
            slots.push(kept.add(batch.columns(), &every, keys).unwrap());
        }
        let expected = |live: &[usize]| live.iter().map(|&i| 8 + 4 + i % 7).sum::<usize>();
        let mut live: Vec<usize> = (0..3 * 8192).collect();
        assert_eq!(kept.live_arrow_bytes(), expected(&live));
        // Release 7 of every 8 rows: the slots are compacted into one.
        live.retain(|&i| {
            if i % 8 != 0 {
                kept.release(RowRef {
                    slot: slots[i / 8192],
                    row: (i % 8192) as u32,
                });
            }
            i % 8 == 0
        });
        assert_eq!(kept.live_arrow_bytes(), expected(&live));
        let compaction = kept.compact().unwrap().unwrap();
        let moves: Vec<(RowRef, RowRef)> = compaction.moves.clone();
        kept.retire(compaction);
        assert_eq!(moves.len(), live.len());
        assert_eq!(kept.held_rows(), live.len());
        assert_eq!(kept.live_arrow_bytes(), expected(&live));
        // Every moved row holds its own values and keys, and came from the
        // place it names.
        let values = kept
            .gather(&moves.iter().map(|m| m.1).collect::<Vec<_>>())
            .unwrap();
        let n = values[0].as_primitive::<arrow::datatypes::Int64Type>();
        for (i, (from, to)) in moves.iter().enumerate() {
            let row = n.value(i) as usize;
            let slot = slots.iter().position(|&s| s == from.slot).unwrap();
            assert_eq!(row, slot * 8192 + from.row as usize);
            assert_eq!(values[1].as_string::<i32>().value(i), text(row));
            assert_eq!(kept.partition_key(*to), (row as u32).to_be_bytes());
            assert_eq!(kept.order_key(*to), b"k");
        }
    }

    /// Rows released together, sorted by slot: a slot losing all its live
    /// rows is freed whole, one losing some keeps the rest, and the counts
    /// and Arrow bytes are those of releasing them one by one.
    #[test]
    fn rows_released_together_free_whole_slots_and_count_as_one_by_one() {
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, false)]));
        let fill = |kept: &mut KeptRows| -> Vec<u32> {
            (0..2)
                .map(|s| {
                    let batch = RecordBatch::try_new(
                        schema.clone(),
                        vec![Arc::new(StringArray::from_iter_values(
                            (0..10).map(|i| "x".repeat(s * 10 + i)),
                        ))],
                    )
                    .unwrap();
                    let owners: Vec<[u8; 4]> = (0..10u32).map(|i| i.to_be_bytes()).collect();
                    let keys = Keys::from_pairs(owners.iter().map(|o| (&o[..], &b"k"[..])));
                    let every = UInt32Array::from_iter_values(0..10);
                    kept.add(batch.columns(), &every, keys).unwrap()
                })
                .collect()
        };
        let none = || KeyColumns::none(1);
        let (mut together, mut one_by_one) = (
            KeptRows::new(schema.clone(), none()),
            KeptRows::new(schema.clone(), none()),
        );
        let slots = fill(&mut together);
        assert_eq!(fill(&mut one_by_one), slots);
        // Slot 0 had rows 3 and 5 released before; now its other 8 go, and
        // 4 of slot 1's.
        for kept in [&mut together, &mut one_by_one] {
            for row in [3, 5] {
                kept.release(RowRef {
                    slot: slots[0],
                    row,
                });
            }
        }
        let mut released: Vec<RowRef> = (0..10)
            .filter(|r| *r != 3 && *r != 5)
            .map(|row| RowRef {
                slot: slots[0],
                row,
            })
            .chain((2..6).map(|row| RowRef {
                slot: slots[1],
                row,
            }))
            .collect();
        released.sort_unstable_by_key(|r| (r.slot, r.row));
        together.release_sorted(&released);
        for &r in &released {
            one_by_one.release(r);
        }
        assert_eq!(together.live_rows(), 6);
        assert_eq!(together.live_rows(), one_by_one.live_rows());
        assert_eq!(together.live_arrow_bytes(), one_by_one.live_arrow_bytes());
        assert_eq!(together.bytes(), one_by_one.bytes());
        assert_eq!(together.held_rows(), 10, "slot 0 freed, slot 1 kept");
        let left: Vec<RowRef> = [0, 1, 6, 7, 8, 9]
            .map(|row| RowRef {
                slot: slots[1],
                row,
            })
            .to_vec();
        let values = together.gather(&left).unwrap();
        let strings = values[0].as_string::<i32>();
        assert_eq!(strings.value(2), "x".repeat(16));
    }

    /// Dictionary-encoded strings (a restored snapshot's) are kept as the
    /// same ids as plain ones, nulls included, whether their column has a
    /// dictionary or was turned plain; the rows read back as added.
    #[test]
    fn dictionary_encoded_strings_are_kept_as_plain_ones_are() {
        use arrow::datatypes::UInt32Type;
        let schema = Arc::new(Schema::new(vec![
            Field::new("few", DataType::Utf8, true),
            Field::new("many", DataType::Utf8, false),
        ]));
        let mut kept = KeptRows::new(schema.clone(), KeyColumns::none(schema.fields().len()));
        // Past the limit: "many" is kept plainly from the first slot on.
        let long = |i: usize| format!("{i:0200}");
        let n = DICTIONARY_LIMIT / 200 + 10;
        let plain = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| Some(format!("c{}", i % 3))),
                )),
                Arc::new(StringArray::from_iter_values((0..n).map(long))),
            ],
        )
        .unwrap();
        let owners: Vec<[u8; 4]> = (0..n).map(|i| (i as u32).to_be_bytes()).collect();
        let keys = || Keys::from_pairs(owners.iter().map(|o| (&o[..], &b"k"[..])));
        let first = kept
            .add(
                plain.columns(),
                &UInt32Array::from_iter_values(0..n as u32),
                keys(),
            )
            .unwrap();
        assert!(kept.dictionaries[1].is_none());
        let few_values: ArrayRef = Arc::new(StringArray::from(vec!["c2", "x", "c0"]));
        let few = DictionaryArray::<UInt32Type>::try_new(
            UInt32Array::from(vec![Some(0), None, Some(1), Some(2), Some(1)]),
            few_values,
        )
        .unwrap();
        let many_values: ArrayRef = Arc::new(StringArray::from(vec!["m0", "m1"]));
        let many = DictionaryArray::<UInt32Type>::try_new(
            UInt32Array::from(vec![1, 0, 0, 1, 1]),
            many_values,
        )
        .unwrap();
        let columns: Vec<ArrayRef> = vec![Arc::new(few), Arc::new(many)];
        // Two slots from the one encoded column (its strings looked up once).
        let picks = [vec![4u32, 3, 1], vec![0u32, 2]];
        let mut slots = Vec::new();
        for p in &picks {
            let k = Keys::from_pairs(p.iter().map(|_| (&b"p"[..], &b"k"[..])));
            slots.push(
                kept.add(&columns, &UInt32Array::from(p.clone()), k)
                    .unwrap(),
            );
        }
        assert_eq!(kept.dictionaries[0].as_ref().unwrap().values().len(), 4);
        let rows: Vec<RowRef> = [
            (slots[0], 0),
            (slots[0], 1),
            (slots[0], 2),
            (slots[1], 0),
            (slots[1], 1),
            (first, 7),
        ]
        .iter()
        .map(|&(slot, row)| RowRef { slot, row })
        .collect();
        let values = kept.gather(&rows).unwrap();
        let few: Vec<Option<&str>> = values[0].as_string::<i32>().iter().collect();
        assert_eq!(
            few,
            [
                Some("x"),
                Some("c0"),
                None,
                Some("c2"),
                Some("x"),
                Some("c1")
            ]
        );
        let many: Vec<&str> = values[1]
            .as_string::<i32>()
            .iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(many, ["m1", "m1", "m0", "m1", "m0", &long(7)]);
    }

    /// A column of another type where text is kept (a snapshot of another
    /// layout) is an error naming the column, not a panic; so is a
    /// dictionary key past its strings.
    #[test]
    fn a_kept_column_of_the_wrong_type_is_an_error() {
        use arrow::array::Int64Array;
        use arrow::datatypes::UInt32Type;
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, false)]));
        let mut kept = KeptRows::new(schema, KeyColumns::none(1));
        let keys = || Keys::from_pairs([(&b"p"[..], &b"k"[..])].into_iter());
        let numbers: ArrayRef = Arc::new(Int64Array::from(vec![7]));
        let err = kept
            .add(&[numbers], &UInt32Array::from(vec![0]), keys())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("kept column 0 holds Int64, not text"),
            "{err}"
        );
        let strings: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
        // SAFETY: deliberately corrupt: key 3 of one string, which the
        // restore must refuse rather than index.
        let bad = unsafe {
            DictionaryArray::<UInt32Type>::new_unchecked(UInt32Array::from(vec![3]), strings)
        };
        let err = kept
            .add(
                &[Arc::new(bad) as ArrayRef],
                &UInt32Array::from(vec![0]),
                keys(),
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("dictionary key 3 past its 1 strings"),
            "{err}"
        );
    }

    /// Few distinct strings are kept once each; a column whose distinct
    /// strings pass the dictionary's limit turns back into plain strings,
    /// in the slots already kept too, and every row reads back as added.
    #[test]
    fn string_columns_stay_in_a_dictionary_while_their_distinct_values_are_few() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("few", DataType::Utf8, true),
            Field::new("many", DataType::Utf8, false),
        ]));
        let few = |i: usize| (i % 5 != 4).then(|| format!("channel-{}", i % 5));
        let many = |i: usize| format!("{i:0200}");
        let mut kept = KeptRows::new(schema.clone(), KeyColumns::none(schema.fields().len()));
        let mut slots = Vec::new();
        // 200-byte distinct strings pass the 4 MiB limit in the third slot.
        for s in 0..4 {
            let rows: Vec<usize> = (s * 8192..(s + 1) * 8192).collect();
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter(rows.iter().map(|&i| few(i)))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|&i| many(i)))),
                ],
            )
            .unwrap();
            let owners: Vec<[u8; 4]> = rows.iter().map(|&i| (i as u32).to_be_bytes()).collect();
            let keys = Keys::from_pairs(owners.iter().map(|o| (&o[..], &b"k"[..])));
            let every = UInt32Array::from_iter_values(0..8192);
            slots.push(kept.add(batch.columns(), &every, keys).unwrap());
        }
        assert!(kept.dictionaries[0].is_some(), "five strings stay in one");
        assert!(kept.dictionaries[1].is_none(), "distinct strings do not");
        let expected: usize = (0..4 * 8192)
            .map(|i| 8 + few(i).map_or(0, |f| f.len()) + 200)
            .sum();
        assert_eq!(kept.live_arrow_bytes(), expected);
        let rows: Vec<RowRef> = (0..4 * 8192)
            .rev()
            .map(|i| RowRef {
                slot: slots[i / 8192],
                row: (i % 8192) as u32,
            })
            .collect();
        let values = kept.gather(&rows).unwrap();
        for (n, i) in (0..4 * 8192).rev().enumerate() {
            let got = values[0].as_string::<i32>();
            assert_eq!(got.is_valid(n).then(|| got.value(n).to_string()), few(i));
            assert_eq!(values[1].as_string::<i32>().value(n), many(i));
        }
    }

    /// Columns a key holds are not stored again: rows gather, compact and
    /// freeze (a snapshot's read) with the same values as when every
    /// column is stored, in less memory, with the same Arrow size.
    #[test]
    fn key_columns_read_from_keys_are_the_stored_values() {
        use arrow::compute::SortOptions;
        use arrow::row::{RowConverter, SortField};
        let schema = Arc::new(Schema::new(vec![
            Field::new("part", DataType::Int64, true),
            Field::new("s", DataType::Utf8, false),
            Field::new("order", DataType::Int32, true),
        ]));
        let desc = SortOptions {
            descending: true,
            nulls_first: false,
        };
        let asc = SortOptions::default();
        let partition = RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        let order =
            RowConverter::new(vec![SortField::new_with_options(DataType::Int32, desc)]).unwrap();
        let n = 3 * 8192;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter(
                    (0..n as i64).map(|i| (i % 11 != 0).then_some(i * 7 - 50_000)),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("{i}")),
                )),
                Arc::new(arrow::array::Int32Array::from_iter(
                    (0..n as i32).map(|i| (i % 13 != 0).then_some(i32::MAX - i * 3)),
                )),
            ],
        )
        .unwrap();
        let pk = partition.convert_columns(&batch.columns()[..1]).unwrap();
        let ok = order.convert_columns(&batch.columns()[2..]).unwrap();
        let store = |keyed: KeyColumns| {
            let mut kept = KeptRows::new(schema.clone(), keyed);
            let mut slots = Vec::new();
            for start in (0..n).step_by(8192) {
                let rows = UInt32Array::from_iter_values(start as u32..(start + 8192) as u32);
                let keys = Keys::from_pairs(
                    (start..start + 8192).map(|r| (pk.row(r).data(), ok.row(r).data())),
                );
                slots.push(kept.add(batch.columns(), &rows, keys).unwrap());
            }
            (kept, slots)
        };
        let (mut kept, slots) =
            store(KeyColumns::new(&schema, 3, &[(0, asc)], &[(2, desc)]).unwrap());
        let (mut plain, _) = store(KeyColumns::none(3));
        let at = |i: usize| RowRef {
            slot: slots[i / 8192],
            row: (i % 8192) as u32,
        };
        let every: Vec<RowRef> = (0..n).map(at).collect();
        let gathered = kept.gather(&every).unwrap();
        assert_eq!(gathered, batch.columns());
        assert_eq!(kept.live_arrow_bytes(), plain.live_arrow_bytes());
        // Without keys, both integer columns are narrowed to 2 bytes a row
        // (each batch's values span less than 2^16).
        assert!(
            kept.bytes() + (2 + 2) * n <= plain.bytes(),
            "{} against {} bytes",
            kept.bytes(),
            plain.bytes()
        );
        // Release all but every fifth row; the survivors move and read back.
        let live: Vec<usize> = (0..n).filter(|i| i % 5 == 0).collect();
        for i in (0..n).filter(|i| i % 5 != 0) {
            kept.release(at(i));
            plain.release(at(i));
        }
        assert_eq!(kept.live_arrow_bytes(), plain.live_arrow_bytes());
        let compaction = kept.compact().unwrap().unwrap();
        let moved: HashMap<RowRef, RowRef> = compaction.moves.iter().copied().collect();
        kept.retire(compaction);
        assert_eq!(kept.live_arrow_bytes(), plain.live_arrow_bytes());
        let now: Vec<RowRef> = live.iter().map(|&i| moved[&at(i)]).collect();
        let picks = UInt32Array::from_iter_values(live.iter().map(|&i| i as u32));
        let expected: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| take(c, &picks, None).unwrap())
            .collect();
        assert_eq!(kept.gather(&now).unwrap(), expected);
        let frozen = kept.frozen().gather_encoded(&now).unwrap();
        assert_eq!(&frozen[0], &expected[0]);
        assert_eq!(&frozen[2], &expected[2]);
        assert_eq!(&cast(&frozen[1], &DataType::Utf8).unwrap(), &expected[1]);
    }
}
