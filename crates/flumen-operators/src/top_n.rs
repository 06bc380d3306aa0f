//! TopN: the first N rows of each partition by an order, numbered by
//! `ROW_NUMBER`, `RANK` or `DENSE_RANK`. A partition that includes an
//! event-time window is emitted once, append-only, when the watermark passes
//! the window's end. A partition without one never closes: each batch that
//! changes its first N emits the difference as an updating stream (`+I`,
//! `-U`/`+U` where a rank's row changed, `-D`).
//!
//! Order keys are encoded with `arrow-row`, so comparing two rows is one
//! `memcmp`; a row worse than a full partition's last kept row is rejected
//! with that one comparison, which is what most rows do once a partition
//! has filled up. Rows that get in are copied out of their batch together.

use std::collections::BTreeMap;

use datafusion::common::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Int8Array, Int64Array, RecordBatch, UInt32Array,
    UInt64Array,
};
use arrow::compute::{SortOptions, cast, interleave, take};
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use arrow::row::{OwnedRow, RowConverter, SortField};
use flumen_runtime::{JobMetrics, Operator, OperatorFactory, StateGauge, TaskContext};
use flumen_state::{KeyGroup, KeyGroups, StateSnapshot, state_column};
use flumen_types::{DEFAULT_BATCH_SIZE, FlumenError, Result, RowOp, Watermark};

use crate::retract_top_n::{RetractTopN, RetractTopNSpec};

/// How rows are numbered within a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankFunction {
    /// 1, 2, 3, … with ties in arrival order.
    RowNumber,
    /// Ties share a rank; the next rank skips (1, 1, 3).
    Rank,
    /// Ties share a rank; the next rank follows (1, 1, 2).
    DenseRank,
}

/// The partition column that is an event-time window start, and the window length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopNWindow {
    /// Input column holding the window start (a timestamp).
    pub column: usize,
    /// Window length in nanoseconds.
    pub size_ns: i64,
}

/// Makes [`TopN`] operators.
pub struct TopNFactory {
    /// The input's schema.
    pub input: SchemaRef,
    /// Leading input columns that go to the output.
    pub width: usize,
    /// Input columns of the partition key.
    pub partition_columns: Vec<usize>,
    /// Input columns of the order, each with its direction.
    pub order_columns: Vec<(usize, SortOptions)>,
    /// How rows are numbered.
    pub function: RankFunction,
    /// Rows with a number up to this are kept.
    pub limit: usize,
    /// Set when the partition is an event-time window: emit it when it closes.
    pub window: Option<TopNWindow>,
    /// A partition not changed for this long (event time, by watermark) is
    /// dropped; without a window and without it, partitions live forever.
    pub state_ttl_ns: Option<i64>,
    /// The `width` columns, the number (UInt64), and the op column when the
    /// result is updating (no window).
    pub output: SchemaRef,
    /// The input's op column when the input is itself updating (a running
    /// aggregate): a taken-back row leaves its partition and the next row
    /// moves up, so every row is kept (no window allowed).
    pub op_column: Option<usize>,
}

impl OperatorFactory for TopNFactory {
    fn describe(&self) -> String {
        let mut text = format!(
            "TopN: {:?} <= {} per partition {:?}, ordered by {:?}",
            self.function,
            self.limit,
            self.partition_columns,
            self.order_columns
                .iter()
                .map(|(c, o)| format!("{c} {}", if o.descending { "DESC" } else { "ASC" }))
                .collect::<Vec<_>>()
        );
        match self.window {
            Some(w) => text.push_str(&format!(
                ", emitted when the window of {} ms closes",
                w.size_ns / 1_000_000
            )),
            None => text.push_str(", updating"),
        }
        if self.op_column.is_some() {
            text.push_str(", over an updating input (keeps every row)");
        }
        if let Some(ttl) = self.state_ttl_ns {
            text.push_str(&format!(", state_ttl {} ms", ttl / 1_000_000));
        } else if self.window.is_none()
            && (!self.partition_columns.is_empty() || self.op_column.is_some())
        {
            // Without PARTITION BY an append-only input keeps N rows.
            text.push_str(" [UNBOUNDED STATE: one partition per key; set state_ttl to bound it]");
        }
        text
    }

    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        let sort_fields = |columns: Vec<(usize, SortOptions)>| -> Result<RowConverter> {
            let fields = columns
                .iter()
                .map(|&(c, o)| {
                    SortField::new_with_options(self.input.field(c).data_type().clone(), o)
                })
                .collect();
            Ok(RowConverter::new(fields)?)
        };
        let partition = sort_fields(
            self.partition_columns
                .iter()
                .map(|&c| (c, SortOptions::default()))
                .collect(),
        )?;
        let order = sort_fields(self.order_columns.clone())?;
        if let Some(op_column) = self.op_column {
            if self.window.is_some() {
                return Err(FlumenError::plan(
                    "a TopN per event-time window over an updating input is not supported",
                ));
            }
            let row_converter = RowConverter::new(
                self.output.fields()[..self.width]
                    .iter()
                    .map(|f| SortField::new(f.data_type().clone()))
                    .collect(),
            )?;
            let spec = RetractTopNSpec {
                width: self.width,
                partition_columns: self.partition_columns.clone(),
                order_columns: self.order_columns.iter().map(|o| o.0).collect(),
                op_column,
                function: self.function,
                limit: self.limit,
                state_ttl_ns: self.state_ttl_ns,
                output: self.output.clone(),
                partition_converter: partition,
                order_converter: order,
                row_converter,
            };
            return Ok(Box::new(RetractTopN::new(
                spec,
                ctx.key_groups,
                ctx.metrics.clone(),
            )));
        }
        Ok(Box::new(TopN {
            width: self.width,
            partition_columns: self.partition_columns.clone(),
            order_columns: self.order_columns.iter().map(|o| o.0).collect(),
            function: self.function,
            limit: self.limit,
            window: self.window,
            state_ttl_ns: self.state_ttl_ns,
            output: self.output.clone(),
            partition_converter: partition,
            order_converter: order,
            partitions: HashMap::new(),
            closing: BTreeMap::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            next_id: 0,
            watermark: i64::MIN,
            last_sweep: i64::MIN,
            retained_rows: 0,
            live_entries: 0,
            retained_bytes: 0,
            partition_key_bytes: 0,
            key_groups: ctx.key_groups,
            metrics: ctx.metrics.clone(),
            gauge: StateGauge::default(),
        }))
    }
}

/// The number of the `index`-th row of a partition (best first) under
/// `function`; `tie` when its order key equals the row before's, whose
/// number was `previous`; `dense` counts distinct keys so far.
pub(crate) fn next_rank(
    function: RankFunction,
    index: usize,
    tie: bool,
    previous: Option<u64>,
    dense: &mut u64,
) -> u64 {
    if !tie {
        *dense += 1;
    }
    match (function, previous) {
        (RankFunction::RowNumber, _) => index as u64 + 1,
        (RankFunction::Rank, Some(p)) if tie => p,
        (RankFunction::Rank, _) => index as u64 + 1,
        (RankFunction::DenseRank, _) => *dense,
    }
}

/// The key group of each partition key (`arrow-row` bytes of the
/// partition columns, none without PARTITION BY), by the exchange's hash
/// of the columns they decode to.
pub(crate) fn partition_key_groups(
    converter: &RowConverter,
    partitioned: bool,
    keys: &[&[u8]],
    key_groups: &KeyGroups,
) -> Result<Vec<KeyGroup>> {
    let columns = if partitioned {
        let parser = converter.parser();
        converter.convert_rows(keys.iter().map(|k| parser.parse(k)))?
    } else {
        Vec::new()
    };
    let (mut hashes, mut groups) = (Vec::new(), Vec::new());
    key_groups.assign(&columns, keys.len(), &mut hashes, &mut groups)?;
    Ok(groups)
}

/// Bytes a partition costs besides its key: its map entry and `Vec`.
const PARTITION_OVERHEAD: usize = 64;

/// A kept row: its order key, where its values are, and an identity.
struct Entry {
    key: OwnedRow,
    slot: u32,
    row: u32,
    id: u64,
}

struct Partition {
    /// Best first; ties in arrival order.
    entries: Vec<Entry>,
    /// The watermark when a row last got in (for `state_ttl`).
    touched_at: i64,
}

/// Copied-out candidate rows and how many entries still point into them.
struct Slot {
    batch: RecordBatch,
    refs: usize,
}

/// The running TopN of one subtask.
pub struct TopN {
    width: usize,
    partition_columns: Vec<usize>,
    order_columns: Vec<usize>,
    function: RankFunction,
    limit: usize,
    window: Option<TopNWindow>,
    state_ttl_ns: Option<i64>,
    output: SchemaRef,
    partition_converter: RowConverter,
    order_converter: RowConverter,
    partitions: HashMap<Box<[u8]>, Partition>,
    /// Windowed partitions by window end, to close them in order.
    closing: BTreeMap<i64, Vec<Box<[u8]>>>,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<u32>,
    next_id: u64,
    watermark: i64,
    /// The watermark of the last `state_ttl` sweep.
    last_sweep: i64,
    /// Rows held by all slots, live or not.
    retained_rows: usize,
    /// Entries of all partitions.
    live_entries: usize,
    /// Bytes of all slots.
    retained_bytes: usize,
    /// Bytes of the partition keys and their map entries.
    partition_key_bytes: usize,
    /// How partition keys map to key groups, and which this subtask owns.
    key_groups: KeyGroups,
    metrics: Arc<JobMetrics>,
    gauge: StateGauge,
}

/// A kept row with its number, as a partition held it before a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Numbered {
    rank: u64,
    slot: u32,
    row: u32,
    id: u64,
}

/// One output row: a kept row, its number, and the change.
struct OutRow {
    slot: u32,
    row: u32,
    rank: u64,
    op: RowOp,
}

impl TopN {
    /// The numbers of `entries` (best first) under `function`.
    fn ranks(function: RankFunction, entries: &[Entry]) -> Vec<u64> {
        let mut ranks: Vec<u64> = Vec::with_capacity(entries.len());
        let mut dense = 0;
        for (i, e) in entries.iter().enumerate() {
            let tie = i > 0 && entries[i - 1].key == e.key;
            ranks.push(next_rank(
                function,
                i,
                tie,
                ranks.last().copied(),
                &mut dense,
            ));
        }
        ranks
    }

    /// Drops entries numbered beyond the limit; returns them.
    fn trim(&self, entries: &mut Vec<Entry>) -> Vec<Entry> {
        let ranks = Self::ranks(self.function, entries);
        let keep = ranks
            .iter()
            .take_while(|&&r| r <= self.limit as u64)
            .count();
        entries.split_off(keep)
    }

    /// Whether a row with `key` cannot get into a partition holding `entries`.
    fn rejects(&self, entries: &[Entry], key: &[u8]) -> bool {
        if entries.len() < self.limit {
            return false;
        }
        let last = entries.last().expect("a full partition has entries");
        match self.function {
            // A tie with the last kept row comes after it in arrival order.
            RankFunction::RowNumber => key >= last.key.row().as_ref(),
            // More rows than the limit are kept only as ties, so a row
            // worse than the last is ranked past the limit.
            RankFunction::Rank => key > last.key.row().as_ref(),
            // Ties do not use up dense ranks: a worse row gets in while
            // fewer distinct values than the limit are kept.
            RankFunction::DenseRank => {
                let distinct = 1 + entries.windows(2).filter(|w| w[0].key != w[1].key).count();
                distinct >= self.limit && key > last.key.row().as_ref()
            }
        }
    }

    fn store_slot(&mut self, batch: RecordBatch) -> u32 {
        self.retained_rows += batch.num_rows();
        self.retained_bytes += batch.get_array_memory_size();
        let slot = Slot { batch, refs: 0 };
        match self.free_slots.pop() {
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

    fn release(&mut self, entries: Vec<Entry>) {
        self.live_entries -= entries.len();
        for e in entries {
            let slot = self.slots[e.slot as usize]
                .as_mut()
                .expect("entries point to live slots");
            slot.refs -= 1;
            if slot.refs == 0 {
                self.free_slot(e.slot);
            }
        }
    }

    fn free_slot(&mut self, slot: u32) {
        if let Some(s) = self.slots[slot as usize].take() {
            self.retained_rows -= s.batch.num_rows();
            self.retained_bytes -= s.batch.get_array_memory_size();
            self.free_slots.push(slot);
        }
    }

    /// Copies the kept rows into fresh slots once dead rows dominate: a kept
    /// row otherwise holds on to every row copied out of its batch with it.
    fn compact(&mut self) -> Result<()> {
        if self.retained_rows <= self.live_entries + self.live_entries / 2 + DEFAULT_BATCH_SIZE {
            return Ok(());
        }
        let mut picks: Vec<(u32, u32)> = Vec::with_capacity(self.live_entries);
        for p in self.partitions.values() {
            picks.extend(p.entries.iter().map(|e| (e.slot, e.row)));
        }
        let schema = Arc::new(arrow::datatypes::Schema::new(
            self.output.fields()[..self.width].to_vec(),
        ));
        let mut fresh: Vec<RecordBatch> = Vec::new();
        for chunk in picks.chunks(DEFAULT_BATCH_SIZE) {
            let mut local: HashMap<u32, usize> = HashMap::new();
            let mut used: Vec<u32> = Vec::new();
            let rows: Vec<(usize, usize)> = chunk
                .iter()
                .map(|&(slot, row)| {
                    let n = *local.entry(slot).or_insert_with(|| {
                        used.push(slot);
                        used.len() - 1
                    });
                    (n, row as usize)
                })
                .collect();
            let columns = (0..self.width)
                .map(|c| {
                    let arrays: Vec<&dyn Array> = used
                        .iter()
                        .map(|&s| {
                            self.slots[s as usize]
                                .as_ref()
                                .expect("kept rows are in live slots")
                                .batch
                                .column(c)
                                .as_ref()
                        })
                        .collect();
                    interleave(&arrays, &rows)
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            fresh.push(RecordBatch::try_new(schema.clone(), columns)?);
        }
        self.slots.clear();
        self.free_slots.clear();
        self.retained_rows = 0;
        self.retained_bytes = 0;
        let ids: Vec<u32> = fresh.into_iter().map(|b| self.store_slot(b)).collect();
        let mut n = 0;
        for p in self.partitions.values_mut() {
            for e in &mut p.entries {
                e.slot = ids[n / DEFAULT_BATCH_SIZE];
                e.row = (n % DEFAULT_BATCH_SIZE) as u32;
                n += 1;
            }
        }
        for (i, &id) in ids.iter().enumerate() {
            let rows = if i + 1 == ids.len() {
                n - i * DEFAULT_BATCH_SIZE
            } else {
                DEFAULT_BATCH_SIZE
            };
            self.slots[id as usize].as_mut().expect("stored above").refs = rows;
        }
        Ok(())
    }

    /// Drops partitions no row got into for `state_ttl`.
    fn expire_idle(&mut self) {
        let Some(ttl) = self.state_ttl_ns else { return };
        if self.watermark < self.last_sweep.saturating_add(ttl / 2) {
            return;
        }
        self.last_sweep = self.watermark;
        let cutoff = self.watermark.saturating_sub(ttl);
        let idle: Vec<Box<[u8]>> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.touched_at < cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        for key in idle {
            if let Some(p) = self.partitions.remove(&key) {
                self.partition_key_bytes -= key.len() + PARTITION_OVERHEAD;
                self.release(p.entries);
            }
        }
    }

    fn emit(&self, rows: &[OutRow]) -> Result<RecordBatch> {
        let mut local: HashMap<u32, usize> = HashMap::new();
        let mut used: Vec<u32> = Vec::new();
        let picks: Vec<(usize, usize)> = rows
            .iter()
            .map(|r| {
                let n = *local.entry(r.slot).or_insert_with(|| {
                    used.push(r.slot);
                    used.len() - 1
                });
                (n, r.row as usize)
            })
            .collect();
        let mut columns: Vec<ArrayRef> = (0..self.width)
            .map(|c| {
                let arrays: Vec<&dyn Array> = used
                    .iter()
                    .map(|&s| {
                        self.slots[s as usize]
                            .as_ref()
                            .expect("emitted rows are live")
                            .batch
                            .column(c)
                            .as_ref()
                    })
                    .collect();
                interleave(&arrays, &picks)
            })
            .collect::<std::result::Result<_, _>>()?;
        columns.push(Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.rank),
        )));
        if self.window.is_none() {
            columns.push(Arc::new(Int8Array::from_iter_values(
                rows.iter().map(|r| r.op as i8),
            )));
        }
        Ok(RecordBatch::try_new(self.output.clone(), columns)?)
    }

    /// `entries` with their numbers, appended to `out` (no allocation once
    /// `out` has grown).
    fn numbered_into(&self, entries: &[Entry], out: &mut Vec<Numbered>) {
        let first = out.len();
        let mut dense = 0;
        for (i, e) in entries.iter().enumerate() {
            let tie = i > 0 && entries[i - 1].key == e.key;
            let previous = (out.len() > first).then(|| out[out.len() - 1].rank);
            out.push(Numbered {
                rank: next_rank(self.function, i, tie, previous, &mut dense),
                slot: e.slot,
                row: e.row,
                id: e.id,
            });
        }
    }

    /// The changes between a partition's numbered rows before and after.
    fn diff(
        &self,
        before: &[Numbered],
        after: &[Entry],
        scratch: &mut Vec<Numbered>,
        out: &mut Vec<OutRow>,
    ) {
        scratch.clear();
        self.numbered_into(after, scratch);
        let after = &scratch[..];
        let row = |n: &Numbered, op| OutRow {
            slot: n.slot,
            row: n.row,
            rank: n.rank,
            op,
        };
        for i in 0..before.len().max(after.len()) {
            match (before.get(i), after.get(i)) {
                (Some(o), Some(n)) if o.rank == n.rank && o.id == n.id => {}
                (Some(o), Some(n)) => {
                    out.push(row(o, RowOp::UpdateBefore));
                    out.push(row(n, RowOp::UpdateAfter));
                }
                (Some(o), None) => out.push(row(o, RowOp::Delete)),
                (None, Some(n)) => out.push(row(n, RowOp::Insert)),
                (None, None) => {}
            }
        }
    }

    /// Adds an empty partition `pkey`, closing at `end` when windowed.
    fn open_partition(&mut self, pkey: &[u8], end: i64) {
        let boxed: Box<[u8]> = pkey.into();
        self.partition_key_bytes += boxed.len() + PARTITION_OVERHEAD;
        if self.window.is_some() {
            self.closing.entry(end).or_default().push(boxed.clone());
        }
        self.partitions.insert(
            boxed,
            Partition {
                entries: Vec::new(),
                touched_at: self.watermark,
            },
        );
    }

    fn close_windows(&mut self, upto: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        while let Some(entry) = self.closing.first_entry() {
            if *entry.key() > upto {
                break;
            }
            let keys = entry.remove();
            let mut rows = Vec::new();
            let mut released = Vec::new();
            for key in keys {
                let Some(p) = self.partitions.remove(&key) else {
                    continue;
                };
                self.partition_key_bytes -= key.len() + PARTITION_OVERHEAD;
                let ranks = Self::ranks(self.function, &p.entries);
                for (e, rank) in p.entries.iter().zip(ranks) {
                    rows.push(OutRow {
                        slot: e.slot,
                        row: e.row,
                        rank,
                        op: RowOp::Insert,
                    });
                }
                released.extend(p.entries);
            }
            if !rows.is_empty() {
                out.push(self.emit(&rows)?);
            }
            self.release(released);
        }
        Ok(())
    }
}

impl TopN {
    /// The kept rows of every partition as snapshot columns: the row's
    /// values, its partition and order keys (`arrow-row` bytes), its
    /// arrival id, its partition's last update and window end.
    fn kept_rows(&self) -> Result<(Vec<ArrayRef>, Vec<KeyGroup>)> {
        let mut ends: HashMap<&[u8], i64> = HashMap::new();
        for (&end, keys) in &self.closing {
            for key in keys {
                ends.insert(key, end);
            }
        }
        let mut rows = Vec::with_capacity(self.live_entries);
        let (mut partition, mut order, mut ids, mut touched, mut end) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (pkey, p) in &self.partitions {
            for e in &p.entries {
                rows.push(OutRow {
                    slot: e.slot,
                    row: e.row,
                    rank: 0,
                    op: RowOp::Insert,
                });
                partition.push(pkey.as_ref());
                order.push(e.key.row().data().to_vec());
                ids.push(e.id);
                touched.push(p.touched_at);
                end.push(ends.get(pkey.as_ref()).copied().unwrap_or(i64::MAX));
            }
        }
        let values = self.emit(&rows)?;
        let mut columns = values.columns()[..self.width].to_vec();
        let key_groups = partition_key_groups(
            &self.partition_converter,
            !self.partition_columns.is_empty(),
            &partition,
            &self.key_groups,
        )?;
        columns.push(Arc::new(BinaryArray::from_iter_values(partition)));
        columns.push(Arc::new(BinaryArray::from_iter_values(order)));
        columns.push(Arc::new(UInt64Array::from(ids)));
        columns.push(Arc::new(Int64Array::from(touched)));
        columns.push(Arc::new(Int64Array::from(end)));
        Ok((columns, key_groups))
    }
}

impl Operator for TopN {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let partition_cols: Vec<ArrayRef> = self
            .partition_columns
            .iter()
            .map(|&c| batch.column(c).clone())
            .collect();
        let order_cols: Vec<ArrayRef> = self
            .order_columns
            .iter()
            .map(|&c| batch.column(c).clone())
            .collect();
        // Without PARTITION BY every row is in the one partition, keyed by
        // no bytes (arrow-row encodes no columns as no rows).
        let partition_keys = (!partition_cols.is_empty())
            .then(|| self.partition_converter.convert_columns(&partition_cols))
            .transpose()?;
        let pkey_of = |row: usize| -> &[u8] {
            partition_keys
                .as_ref()
                .map_or(&[], |keys| keys.row(row).data())
        };
        let order_keys = self.order_converter.convert_columns(&order_cols)?;
        let window_ends: Option<Vec<Option<i64>>> = match self.window {
            Some(w) => {
                let starts = cast(
                    &cast(
                        batch.column(w.column),
                        &DataType::Timestamp(TimeUnit::Nanosecond, None),
                    )?,
                    &DataType::Int64,
                )?;
                Some(
                    starts
                        .as_primitive::<Int64Type>()
                        .iter()
                        .map(|s| s.map(|s| s.saturating_add(w.size_ns)))
                        .collect(),
                )
            }
            None => None,
        };
        // Pass 1: which rows could get in, judged against the state before
        // this batch (a cheap, conservative filter); the exact decision is
        // made when they are inserted below.
        let mut candidates: Vec<u32> = Vec::new();
        let mut late = 0;
        for row in 0..n {
            if let Some(ends) = &window_ends {
                match ends[row] {
                    Some(end) if end > self.watermark => {}
                    _ => {
                        late += 1;
                        continue;
                    }
                }
            }
            let pkey = pkey_of(row);
            let rejected = self
                .partitions
                .get(pkey)
                .is_some_and(|p| self.rejects(&p.entries, order_keys.row(row).as_ref()));
            if !rejected {
                candidates.push(row as u32);
            }
        }
        self.metrics.add_late_rows_dropped(late);
        if candidates.is_empty() {
            return Ok(());
        }
        let indices = UInt32Array::from(candidates.clone());
        let copied: Vec<ArrayRef> = batch.columns()[..self.width]
            .iter()
            .map(|c| take(c, &indices, None))
            .collect::<std::result::Result<_, _>>()?;
        let schema = Arc::new(arrow::datatypes::Schema::new(
            self.output.fields()[..self.width].to_vec(),
        ));
        let slot = self.store_slot(RecordBatch::try_new(schema, copied)?);
        // Pass 2: insert, remembering each touched partition's rows before.
        // Keys borrowed from this batch's rows; numbered rows in one buffer.
        let mut before: HashMap<&[u8], (usize, usize)> = HashMap::new();
        let mut before_rows: Vec<Numbered> = Vec::new();
        let mut touched: Vec<&[u8]> = Vec::new();
        let mut evicted = Vec::new();
        let mut refs = 0;
        for (i, &row) in candidates.iter().enumerate() {
            let pkey = pkey_of(row as usize);
            let key = order_keys.row(row as usize);
            if !self.partitions.contains_key(pkey) {
                let end = window_ends
                    .as_ref()
                    .and_then(|e| e[row as usize])
                    .unwrap_or(i64::MAX);
                self.open_partition(pkey, end);
            }
            let partition = self.partitions.get(pkey).expect("inserted above");
            if self.rejects(&partition.entries, key.as_ref()) {
                continue;
            }
            if self.window.is_none() && !before.contains_key(pkey) {
                let start = before_rows.len();
                self.numbered_into(&partition.entries, &mut before_rows);
                before.insert(pkey, (start, before_rows.len()));
                touched.push(pkey);
            }
            let id = self.next_id;
            self.next_id += 1;
            let mut entries = std::mem::take(
                &mut self
                    .partitions
                    .get_mut(pkey)
                    .expect("inserted above")
                    .entries,
            );
            let at = entries.partition_point(|e| e.key.row() <= key);
            entries.insert(
                at,
                Entry {
                    key: key.owned(),
                    slot,
                    row: i as u32,
                    id,
                },
            );
            refs += 1;
            self.live_entries += 1;
            evicted.extend(self.trim(&mut entries));
            let partition = self.partitions.get_mut(pkey).expect("inserted above");
            partition.entries = entries;
            partition.touched_at = self.watermark;
        }
        self.slots[slot as usize]
            .as_mut()
            .expect("stored above")
            .refs += refs;
        if self.window.is_none() {
            let mut rows = Vec::new();
            let mut scratch = Vec::new();
            for pkey in &touched {
                let after = &self.partitions[*pkey].entries;
                let (start, end) = before[pkey];
                self.diff(&before_rows[start..end], after, &mut scratch, &mut rows);
            }
            if !rows.is_empty() {
                out.push(self.emit(&rows)?);
            }
        }
        // Rows evicted this batch may have been emitted above as `-U`/`-D`:
        // release them only now.
        self.release(evicted);
        if self.slots[slot as usize]
            .as_ref()
            .is_some_and(|s| s.refs == 0)
        {
            self.free_slot(slot);
        }
        self.compact()
    }

    fn process_watermark(
        &mut self,
        watermark: Watermark,
        out: &mut Vec<RecordBatch>,
    ) -> Result<Option<Watermark>> {
        self.watermark = self.watermark.max(watermark.0);
        if self.window.is_some() {
            self.close_windows(self.watermark, out)?;
        }
        self.expire_idle();
        let bytes = self.retained_bytes
            + self.partition_key_bytes
            + self.live_entries * (std::mem::size_of::<Entry>() + 16);
        self.metrics.report_state(&mut self.gauge, bytes);
        Ok(Some(watermark))
    }

    fn finish(&mut self, out: &mut Vec<RecordBatch>) -> Result<()> {
        if self.window.is_some() {
            self.close_windows(i64::MAX, out)?;
        }
        self.metrics.report_state(&mut self.gauge, 0);
        Ok(())
    }

    fn snapshot_state(&mut self) -> Result<StateSnapshot> {
        let mut snapshot = StateSnapshot::default();
        if self.live_entries > 0 {
            let (columns, key_groups) = self.kept_rows()?;
            snapshot.add_columns(0, columns, &key_groups)?;
        }
        Ok(snapshot)
    }

    fn restore_state(&mut self, snapshot: &StateSnapshot) -> Result<()> {
        let Some(rows) = snapshot.rows(0, self.key_groups.range)? else {
            return Ok(());
        };
        let w = self.width;
        let schema = Arc::new(arrow::datatypes::Schema::new(
            self.output.fields()[..w].to_vec(),
        ));
        let partition = state_column::<BinaryArray>(&rows, 0, w)?;
        let order = state_column::<BinaryArray>(&rows, 0, w + 1)?;
        let ids = state_column::<UInt64Array>(&rows, 0, w + 2)?;
        let touched = state_column::<Int64Array>(&rows, 0, w + 3)?;
        let ends = state_column::<Int64Array>(&rows, 0, w + 4)?;
        let values = RecordBatch::try_new(schema, rows.columns()[..w].to_vec())?;
        let slot = self.store_slot(values);
        let parser = self.order_converter.parser();
        for row in 0..rows.num_rows() {
            let pkey = partition.value(row);
            if !self.partitions.contains_key(pkey) {
                self.open_partition(pkey, ends.value(row));
            }
            let id = ids.value(row);
            self.next_id = self.next_id.max(id + 1);
            let p = self.partitions.get_mut(pkey).expect("opened above");
            p.entries.push(Entry {
                key: parser.parse(order.value(row)).owned(),
                slot,
                row: row as u32,
                id,
            });
            p.touched_at = touched.value(row);
        }
        for p in self.partitions.values_mut() {
            p.entries
                .sort_by(|a, b| (a.key.row(), a.id).cmp(&(b.key.row(), b.id)));
        }
        self.live_entries += rows.num_rows();
        self.slots[slot as usize]
            .as_mut()
            .expect("stored above")
            .refs = rows.num_rows();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &[u8], id: u64) -> Entry {
        let converter = RowConverter::new(vec![SortField::new(DataType::Binary)]).unwrap();
        let array: ArrayRef = Arc::new(arrow::array::BinaryArray::from(vec![key]));
        let rows = converter.convert_columns(&[array]).unwrap();
        Entry {
            key: rows.row(0).owned(),
            slot: 0,
            row: 0,
            id,
        }
    }

    #[test]
    fn rank_functions_number_ties_as_sql_does() {
        let entries = vec![entry(b"a", 0), entry(b"a", 1), entry(b"b", 2)];
        assert_eq!(TopN::ranks(RankFunction::RowNumber, &entries), [1, 2, 3]);
        assert_eq!(TopN::ranks(RankFunction::Rank, &entries), [1, 1, 3]);
        assert_eq!(TopN::ranks(RankFunction::DenseRank, &entries), [1, 1, 2]);
    }

    #[test]
    fn unchanged_ranks_emit_nothing_and_a_shift_emits_updates() {
        let numbered = |rank, id| Numbered {
            rank,
            slot: 0,
            row: 0,
            id,
        };
        let before = vec![numbered(1, 10), numbered(2, 11)];
        let after = vec![entry(b"a", 12), entry(b"b", 10)];
        let op = TopN {
            width: 0,
            partition_columns: vec![],
            order_columns: vec![],
            function: RankFunction::RowNumber,
            limit: 2,
            window: None,
            state_ttl_ns: None,
            output: Arc::new(arrow::datatypes::Schema::empty()),
            partition_converter: RowConverter::new(vec![]).unwrap(),
            order_converter: RowConverter::new(vec![]).unwrap(),
            partitions: HashMap::new(),
            closing: BTreeMap::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            next_id: 0,
            watermark: i64::MIN,
            last_sweep: i64::MIN,
            retained_rows: 0,
            live_entries: 0,
            retained_bytes: 0,
            partition_key_bytes: 0,
            key_groups: KeyGroups::of_subtask(0, 1, 128),
            metrics: Arc::new(JobMetrics::default()),
            gauge: StateGauge::default(),
        };
        let mut out = Vec::new();
        op.diff(&before, &after, &mut Vec::new(), &mut out);
        let ops: Vec<(RowOp, u64)> = out.iter().map(|r| (r.op, r.rank)).collect();
        assert_eq!(
            ops,
            [
                (RowOp::UpdateBefore, 1),
                (RowOp::UpdateAfter, 1),
                (RowOp::UpdateBefore, 2),
                (RowOp::UpdateAfter, 2)
            ]
        );
        let mut out = Vec::new();
        op.diff(
            &before,
            &[entry(b"a", 10), entry(b"b", 11)],
            &mut Vec::new(),
            &mut out,
        );
        assert!(out.is_empty());
    }
}
