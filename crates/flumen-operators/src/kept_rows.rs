//! The rows a TopN keeps: their values in Arrow batches ("slots"), each
//! row's order and partition keys as `arrow-row` bytes beside them, and the
//! partition that owns it. A row that falls out is marked dead; once dead
//! rows pass a quarter of the live ones, the emptiest slots are copied
//! together, a few at a time, so memory stays near the live rows' own size
//! without ever copying every kept row at once.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::interleave;
use arrow::datatypes::SchemaRef;
use flumen_types::{DEFAULT_BATCH_SIZE, Result};

/// Where a kept row is: its slot and its index in the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowRef {
    /// The slot.
    pub slot: u32,
    /// The row within the slot.
    pub row: u32,
}

/// Variable-length byte strings, one per row, packed into one buffer; no
/// offsets when every string has the same length (fixed-width keys).
#[derive(Default)]
pub(crate) struct Keys {
    data: Vec<u8>,
    /// `n + 1` offsets, or empty when every key is `width` bytes long.
    offsets: Vec<u32>,
    width: usize,
}

impl Keys {
    /// Packs `keys`.
    pub(crate) fn from_keys<'a>(keys: impl Iterator<Item = &'a [u8]> + Clone) -> Keys {
        let mut lengths = keys.clone().map(<[u8]>::len);
        let width = lengths.next().unwrap_or(0);
        let fixed = lengths.all(|l| l == width);
        let mut packed = Keys {
            width,
            ..Keys::default()
        };
        if !fixed {
            packed.offsets.push(0);
        }
        for key in keys {
            packed.data.extend_from_slice(key);
            if !fixed {
                packed.offsets.push(packed.data.len() as u32);
            }
        }
        packed.data.shrink_to_fit();
        packed.offsets.shrink_to_fit();
        packed
    }

    /// The key of row `i`.
    pub(crate) fn get(&self, i: usize) -> &[u8] {
        if self.offsets.is_empty() {
            &self.data[i * self.width..(i + 1) * self.width]
        } else {
            &self.data[self.offsets[i] as usize..self.offsets[i + 1] as usize]
        }
    }

    fn bytes(&self) -> usize {
        self.data.capacity() + self.offsets.capacity() * 4
    }
}

/// One batch of kept rows.
struct Slot {
    batch: RecordBatch,
    order: Keys,
    partition: Keys,
    /// The partition (an index of the caller's) that owns each row.
    owner: Vec<u32>,
    /// A bit per row: still kept.
    live: Vec<u64>,
    live_rows: usize,
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
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// Rows held by all slots, live or dead.
    rows: usize,
    live: usize,
    bytes: usize,
}

impl KeptRows {
    /// An empty store of rows with `schema`.
    pub(crate) fn new(schema: SchemaRef) -> Self {
        KeptRows {
            schema,
            slots: Vec::new(),
            free: Vec::new(),
            rows: 0,
            live: 0,
            bytes: 0,
        }
    }

    /// Stores `batch` (every row live) with its rows' keys and owners;
    /// returns its slot.
    pub(crate) fn add(
        &mut self,
        batch: RecordBatch,
        order: Keys,
        partition: Keys,
        owner: Vec<u32>,
    ) -> u32 {
        let n = batch.num_rows();
        let mut live = vec![u64::MAX; n.div_ceil(64)];
        if !n.is_multiple_of(64) {
            live[n / 64] = (1 << (n % 64)) - 1;
        }
        let bytes = batch.get_array_memory_size()
            + order.bytes()
            + partition.bytes()
            + owner.capacity() * 4
            + live.capacity() * 8;
        self.rows += n;
        self.live += n;
        self.bytes += bytes;
        let slot = Slot {
            batch,
            order,
            partition,
            owner,
            live,
            live_rows: n,
            bytes,
        };
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn slot(&self, slot: u32) -> &Slot {
        self.slots[slot as usize]
            .as_ref()
            .expect("a kept row's slot is live")
    }

    /// The order key of a kept row.
    pub(crate) fn order_key(&self, r: RowRef) -> &[u8] {
        self.slot(r.slot).order.get(r.row as usize)
    }

    /// The partition key of a kept row.
    pub(crate) fn partition_key(&self, r: RowRef) -> &[u8] {
        self.slot(r.slot).partition.get(r.row as usize)
    }

    /// Sets the owner of a kept row.
    pub(crate) fn set_owner(&mut self, r: RowRef, owner: u32) {
        self.slots[r.slot as usize]
            .as_mut()
            .expect("a kept row's slot is live")
            .owner[r.row as usize] = owner;
    }

    /// Marks a row dead; frees its slot when it was the slot's last.
    pub(crate) fn release(&mut self, r: RowRef) {
        let slot = self.slots[r.slot as usize]
            .as_mut()
            .expect("a kept row's slot is live");
        let row = r.row as usize;
        debug_assert!(slot.is_live(row), "a row is released once");
        slot.live[row / 64] &= !(1 << (row % 64));
        slot.live_rows -= 1;
        self.live -= 1;
        if slot.live_rows == 0 {
            self.free_slot(r.slot);
        }
    }

    fn free_slot(&mut self, slot: u32) {
        if let Some(s) = self.slots[slot as usize].take() {
            self.rows -= s.batch.num_rows();
            self.live -= s.live_rows;
            self.bytes -= s.bytes;
            self.free.push(slot);
        }
    }

    /// Live rows.
    pub(crate) fn live_rows(&self) -> usize {
        self.live
    }

    /// Rows held, live or dead.
    #[cfg(test)]
    pub(crate) fn held_rows(&self) -> usize {
        self.rows
    }

    /// Bytes of every slot: values, keys, owners and live bits.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The kept columns of `rows`, in that order.
    pub(crate) fn gather(&self, rows: &[RowRef]) -> Result<Vec<ArrayRef>> {
        let mut used: Vec<u32> = Vec::new();
        let mut picks: Vec<(usize, usize)> = Vec::with_capacity(rows.len());
        for r in rows {
            // Rows come in runs from a few slots: look back before searching.
            let n = match used.iter().rposition(|&s| s == r.slot) {
                Some(n) => n,
                None => {
                    used.push(r.slot);
                    used.len() - 1
                }
            };
            picks.push((n, r.row as usize));
        }
        (0..self.schema.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn Array> = used
                    .iter()
                    .map(|&s| self.slot(s).batch.column(c).as_ref())
                    .collect();
                Ok(interleave(&arrays, &picks)?)
            })
            .collect()
    }

    /// Copies the live rows of the emptiest slots into fresh ones once dead
    /// rows exceed a quarter of the live (and a batch): enough slots to bring
    /// them under an eighth. `moved(owner, from, to)` is told each move.
    pub(crate) fn compact(&mut self, mut moved: impl FnMut(u32, RowRef, RowRef)) -> Result<()> {
        let dead = self.rows - self.live;
        if dead <= self.live / 4 + DEFAULT_BATCH_SIZE {
            return Ok(());
        }
        let mut sparse: Vec<(f64, u32)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = s.as_ref()?;
                let n = s.batch.num_rows();
                (s.live_rows < n).then(|| (s.live_rows as f64 / n as f64, i as u32))
            })
            .collect();
        sparse.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut to_remove = dead - self.live / 8;
        let mut chosen = Vec::new();
        for (_, slot) in sparse {
            if to_remove == 0 {
                break;
            }
            let s = self.slot(slot);
            to_remove = to_remove.saturating_sub(s.batch.num_rows() - s.live_rows);
            chosen.push(slot);
        }
        let mut from: Vec<RowRef> = Vec::new();
        for &slot in &chosen {
            let s = self.slot(slot);
            from.extend(
                (0..s.batch.num_rows())
                    .filter(|&r| s.is_live(r))
                    .map(|r| RowRef {
                        slot,
                        row: r as u32,
                    }),
            );
        }
        let mut fresh = Vec::new();
        for chunk in from.chunks(DEFAULT_BATCH_SIZE) {
            let columns = self.gather(chunk)?;
            let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
            let order = Keys::from_keys(chunk.iter().map(|&r| self.order_key(r)));
            let partition = Keys::from_keys(chunk.iter().map(|&r| self.partition_key(r)));
            let owner: Vec<u32> = chunk
                .iter()
                .map(|r| self.slot(r.slot).owner[r.row as usize])
                .collect();
            fresh.push((batch, order, partition, owner));
        }
        // Fresh slots first, so none reuses a chosen slot's number while
        // entries still point into it.
        let mut at = 0;
        for (batch, order, partition, owner) in fresh {
            let n = batch.num_rows();
            let slot = self.add(batch, order, partition, owner);
            for row in 0..n {
                let to = RowRef {
                    slot,
                    row: row as u32,
                };
                moved(self.slot(slot).owner[row], from[at + row], to);
            }
            at += n;
        }
        for slot in chosen {
            self.free_slot(slot);
        }
        Ok(())
    }
}

/// The schema of the kept columns: the first `width` fields of `output`.
pub(crate) fn kept_schema(output: &SchemaRef, width: usize) -> SchemaRef {
    Arc::new(arrow::datatypes::Schema::new(
        output.fields()[..width].to_vec(),
    ))
}
