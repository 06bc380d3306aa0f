//! TopN: the first N rows of each partition by an order, numbered by
//! `ROW_NUMBER`, `RANK` or `DENSE_RANK`. A partition that includes an
//! event-time window is emitted once, append-only, when the watermark passes
//! the window's end. A partition without one never closes: each batch that
//! changes its first N emits the difference as an updating stream (`+I`,
//! `-U`/`+U` where a rank's row changed, `-D`): the changes of rows kept
//! before the batch first, then the rows the batch added, as the slot they
//! were stored in.
//!
//! Order keys are encoded with `arrow-row`, so comparing two rows is one
//! `memcmp`; a row worse than a full partition's last kept row is rejected
//! with that one comparison, which is what most rows do once a partition
//! has filled up. Rows still kept at the end of a batch are copied out of it
//! together, into [`KeptRows`].

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use arrow::array::{
    ArrayRef, AsArray, BinaryArray, BooleanArray, Int8Array, Int64Array, RecordBatch, UInt32Array,
    UInt64Array,
};
use arrow::compute::{SortOptions, cast, take};
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::HashMap;
use flumen_runtime::{
    Admission, JobMetrics, KeptGauge, KeptRowsReport, Operator, OperatorFactory, StateGauge,
    TaskContext,
};
use flumen_state::{KeyGroup, KeyGroups, StateSnapshot, state_column};
use flumen_types::{DEFAULT_BATCH_SIZE, FlumenError, Result, RowOp, Watermark};
use thin_vec::ThinVec;

use crate::join::Expiry;
use crate::kept_rows::{FrozenRows, KeptRows, Keys, RowRef, kept_schema};
use crate::key_columns::KeyColumns;
use crate::key_order;
use crate::open_table::{Hashed, OpenTable};
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
    /// Set when a partition's rows stop coming once the watermark passes a
    /// time they carry (this column plus offset): the expiry of the one
    /// join row, unique by a declared primary key, they all come from. The
    /// partition is dropped then, and a row whose time the watermark has
    /// already passed is late and dropped.
    pub closes: Option<Expiry>,
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
        } else if let Some(c) = self.closes {
            text.push_str(&format!(
                ", a partition closed when the watermark passes column {} + {} ms",
                c.column,
                c.offset_ns / 1_000_000
            ));
        } else if self.window.is_none()
            && (!self.partition_columns.is_empty() || self.op_column.is_some())
        {
            // Without PARTITION BY an append-only input keeps N rows.
            text.push_str(" [UNBOUNDED STATE: one partition per key; set state_ttl to bound it]");
        }
        text
    }

    /// A TopN over an appending input copies out only the rows it keeps.
    fn reads_shared_rows(&self, _input: usize) -> bool {
        self.op_column.is_none()
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
        // Only a TopN that expires idle or closed partitions keeps a time
        // per partition: 8 bytes more each.
        Ok(match (self.state_ttl_ns, self.closes) {
            (None, None) => Box::new(self.top_n::<()>(ctx, partition, order)?),
            _ => Box::new(self.top_n::<i64>(ctx, partition, order)?),
        })
    }
}

impl TopNFactory {
    /// A TopN over an append-only input.
    fn top_n<T: Touched>(
        &self,
        ctx: &TaskContext,
        partition: RowConverter,
        order: RowConverter,
    ) -> Result<TopN<T>> {
        debug_assert!(T::KEPT || (self.state_ttl_ns.is_none() && self.closes.is_none()));
        let partition_columns: Vec<(usize, SortOptions)> = self
            .partition_columns
            .iter()
            .map(|&c| (c, SortOptions::default()))
            .collect();
        let keyed = KeyColumns::new(
            &self.input,
            self.width,
            &partition_columns,
            &self.order_columns,
        )?;
        let closes = self.closes.filter(|_| self.state_ttl_ns.is_none());
        let order_columns: Vec<usize> = self.order_columns.iter().map(|o| o.0).collect();
        Ok(TopN {
            width: self.width,
            admission_columns: self
                .partition_columns
                .iter()
                .chain(&order_columns)
                .copied()
                .chain(closes.map(|c| c.column))
                .collect(),
            partition_columns: self.partition_columns.clone(),
            order_columns,
            ranking: Ranking {
                function: self.function,
                limit: self.limit,
            },
            window: self.window,
            state_ttl_ns: self.state_ttl_ns,
            // `state_ttl` takes over when both are set.
            closes,
            next_close: i64::MAX,
            opened: 0,
            swept: 0,
            output: self.output.clone(),
            kept: KeptRows::new(kept_schema(&self.output, self.width), keyed),
            partition_converter: partition,
            partition_fields: self
                .partition_columns
                .iter()
                .map(|&c| SortField::new(self.input.field(c).data_type().clone()))
                .collect(),
            order_converter: order,
            partitions: OpenTable::new(),
            hasher: foldhash::fast::FixedState::with_seed(0x243f_6a88_85a3_08d3),
            closing: BTreeMap::new(),
            closing_bytes: 0,
            watermark: i64::MIN,
            last_sweep: i64::MIN,
            key_groups: ctx.key_groups,
            spare_rows: Arc::default(),
            ended: false,
            metrics: ctx.metrics.clone(),
            gauge: StateGauge::default(),
            kept_gauge: KeptGauge::default(),
        })
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

/// Each time of `column` (a timestamp) in nanoseconds plus `offset`.
fn shifted_times(column: &ArrayRef, offset: i64) -> Result<Vec<Option<i64>>> {
    let times = cast(
        &cast(column, &DataType::Timestamp(TimeUnit::Nanosecond, None))?,
        &DataType::Int64,
    )?;
    Ok(times
        .as_primitive::<Int64Type>()
        .iter()
        .map(|t| t.map(|t| t.saturating_add(offset)))
        .collect())
}

/// Each row's close time from its time in `column` plus `offset`; a null
/// one never closes.
fn close_times(column: &ArrayRef, offset: i64) -> Result<Vec<i64>> {
    Ok(shifted_times(column, offset)?
        .into_iter()
        .map(|t| t.unwrap_or(i64::MAX))
        .collect())
}

/// The state bytes of a key waiting in `closing`: its bytes and its box.
fn closing_bytes(key: &[u8]) -> usize {
    key.len() + std::mem::size_of::<Box<[u8]>>()
}

/// Marks an entry whose row is still in the batch being processed.
const PENDING: u32 = u32::MAX;

/// When a partition last took a row: the watermark (`i64`) for a TopN that
/// expires idle partitions (`state_ttl`), nothing (`()`) for the others,
/// whose partitions are then 16 bytes instead of 24.
pub(crate) trait Touched: Copy + Send + 'static {
    /// Whether the time is kept.
    const KEPT: bool;
    /// The time `watermark`.
    fn at(watermark: i64) -> Self;
    /// The time kept, or `otherwise` when none is.
    fn or(self, otherwise: i64) -> i64;
}

impl Touched for i64 {
    const KEPT: bool = true;
    fn at(watermark: i64) -> Self {
        watermark
    }
    fn or(self, _otherwise: i64) -> i64 {
        self
    }
}

impl Touched for () {
    const KEPT: bool = false;
    fn at(_watermark: i64) -> Self {}
    fn or(self, otherwise: i64) -> i64 {
        otherwise
    }
}

/// One partition: its kept rows, best first, ties in arrival order. Its key
/// is read from its first row.
struct Partition<T> {
    /// The watermark when a row last got in (`state_ttl`, no window), or
    /// the latest time its rows close at (`closes`).
    touched_at: T,
    entries: Entries,
}

/// A partition's kept rows and 32 bits of its key's hash: one row inline
/// (TopN 1, deduplication), more in a `ThinVec` (one pointer to its
/// length, capacity and rows together), so that a lookup reaches the rows
/// in one load where a boxed `Vec` took two. The hash sits beside the
/// variant's tag, in bytes the row's alignment would leave empty: the
/// enum is 16 bytes, and so a partition without a time.
enum Entries {
    One { hash: u32, row: RowRef },
    Many { hash: u32, rows: ThinVec<RowRef> },
}

impl std::ops::Deref for Entries {
    type Target = [RowRef];

    fn deref(&self) -> &[RowRef] {
        match self {
            Entries::One { row, .. } => std::slice::from_ref(row),
            Entries::Many { rows, .. } => rows,
        }
    }
}

impl std::ops::DerefMut for Entries {
    fn deref_mut(&mut self) -> &mut [RowRef] {
        match self {
            Entries::One { row, .. } => std::slice::from_mut(row),
            Entries::Many { rows, .. } => rows,
        }
    }
}

impl Entries {
    /// 32 bits of the partition key's hash.
    fn hash(&self) -> u32 {
        match self {
            Entries::One { hash, .. } | Entries::Many { hash, .. } => *hash,
        }
    }

    /// Inserts `r` at `place`. `most` is the most rows the partition can
    /// hold (0 when unbounded): full rows grow to it rather than past it (a
    /// TopN 10 holds at most 11 rows, in 88 bytes, not 16 in 128).
    fn insert(&mut self, place: usize, r: RowRef, most: usize) {
        match self {
            Entries::One { hash, row } => {
                let mut rows = ThinVec::with_capacity(2);
                rows.push(*row);
                rows.insert(place, r);
                *self = Entries::Many { hash: *hash, rows };
            }
            Entries::Many { rows, .. } => {
                let len = rows.len();
                if len == rows.capacity() && len < most && len * 2 > most {
                    rows.reserve_exact(most - len);
                }
                rows.insert(place, r);
            }
        }
    }

    /// Starts loading the heap list of rows, if any, at its header (its
    /// length and capacity, just before the rows), which freeing it reads
    /// first, without reading anything yet.
    fn prefetch(&self) {
        if let Entries::Many { rows, .. } = self {
            let header = rows.as_ptr().cast::<u8>();
            flumen_state::probing::prefetch_ptr(header.wrapping_sub(2 * size_of::<usize>()));
        }
    }

    /// Keeps the first `keep` rows (at least one) and hands the rest to `out`.
    fn truncate_into(&mut self, keep: usize, out: &mut Vec<RowRef>) {
        if let Entries::Many { hash, rows } = self {
            out.extend(rows.drain(keep.max(1)..));
            if rows.len() == 1 {
                *self = Entries::One {
                    hash: *hash,
                    row: rows[0],
                };
            }
        }
    }
}

/// A kept row with its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Numbered {
    rank: u64,
    at: RowRef,
}

/// One output row: a kept row, its number, and the change.
struct OutRow {
    at: RowRef,
    rank: u64,
    op: RowOp,
}

/// Where keys are read: kept rows from the store, `PENDING` rows from the
/// batch being processed.
struct KeySource<'a> {
    kept: &'a KeptRows,
    /// The batch's order keys and partition keys, by row: slices taken
    /// once per batch, as `Rows::row` is a call per use.
    order: Option<&'a [&'a [u8]]>,
    partition: Option<&'a [&'a [u8]]>,
}

/// Each row's bytes of `rows`, to index without a call per use.
fn row_slices(rows: &Rows) -> Vec<&[u8]> {
    rows.iter().map(|r| r.data()).collect()
}

impl<'a> KeySource<'a> {
    fn order(&self, r: RowRef) -> &'a [u8] {
        match self.order {
            Some(batch) if r.slot == PENDING => batch[r.row as usize],
            _ => self.kept.order_key(r),
        }
    }

    fn partition(&self, r: RowRef) -> &'a [u8] {
        if r.slot == PENDING {
            self.batch_partition(r.row as usize)
        } else {
            self.kept.partition_key(r)
        }
    }

    /// The partition key of a row of the batch (no bytes without PARTITION BY).
    fn batch_partition(&self, row: usize) -> &'a [u8] {
        self.partition.map_or(&[], |keys| keys[row])
    }
}

/// The numbering rule: which rows a partition keeps and their numbers.
#[derive(Clone, Copy)]
struct Ranking {
    function: RankFunction,
    limit: usize,
}

impl Ranking {
    /// Whether entry `i` ties with the one before (only ranks care).
    fn tie(&self, entries: &[RowRef], i: usize, keys: &KeySource) -> bool {
        self.function != RankFunction::RowNumber
            && i > 0
            && key_order::equal(keys.order(entries[i - 1]), keys.order(entries[i]))
    }

    /// `entries` with their numbers, appended to `out`.
    fn number_into(&self, entries: &[RowRef], keys: &KeySource, out: &mut Vec<Numbered>) {
        let mut dense = 0;
        let mut previous = None;
        for (i, &at) in entries.iter().enumerate() {
            let rank = next_rank(
                self.function,
                i,
                self.tie(entries, i, keys),
                previous,
                &mut dense,
            );
            previous = Some(rank);
            out.push(Numbered { rank, at });
        }
    }

    /// How many of `entries` are numbered within the limit.
    fn keep(&self, entries: &[RowRef], keys: &KeySource) -> usize {
        if self.function == RankFunction::RowNumber {
            return entries.len().min(self.limit);
        }
        let mut dense = 0;
        let mut previous = None;
        for i in 0..entries.len() {
            let rank = next_rank(
                self.function,
                i,
                self.tie(entries, i, keys),
                previous,
                &mut dense,
            );
            if rank > self.limit as u64 {
                return i;
            }
            previous = Some(rank);
        }
        entries.len()
    }

    /// The most rows a partition holds at once (0: no bound): a row
    /// number's limit, and one more while a row goes in before the last is
    /// pushed out; ranks keep ties past the limit.
    fn most_rows(&self) -> usize {
        match self.function {
            RankFunction::RowNumber => self.limit + 1,
            RankFunction::Rank | RankFunction::DenseRank => 0,
        }
    }

    /// Whether a row with `key` cannot get into a partition holding `entries`.
    fn rejects(&self, entries: &[RowRef], key: &[u8], keys: &KeySource) -> bool {
        if entries.len() < self.limit {
            return false;
        }
        let Some(&last) = entries.last() else {
            return false;
        };
        let last = keys.order(last);
        match self.function {
            // A tie with the last kept row comes after it in arrival order.
            RankFunction::RowNumber => key_order::compare(key, last).is_ge(),
            // More rows than the limit are kept only as ties, so a row
            // worse than the last is ranked past the limit.
            RankFunction::Rank => key_order::compare(key, last).is_gt(),
            // Ties do not use up dense ranks: a worse row gets in while
            // fewer distinct values than the limit are kept.
            RankFunction::DenseRank => {
                let distinct = 1
                    + (1..entries.len())
                        .filter(|&i| keys.order(entries[i - 1]) != keys.order(entries[i]))
                        .count();
                distinct >= self.limit && key_order::compare(key, last).is_gt()
            }
        }
    }
}

/// The changes between a partition's numbered rows before and after.
fn diff(before: &[Numbered], after: &[Numbered], out: &mut Vec<OutRow>) {
    let row = |n: &Numbered, op| OutRow {
        at: n.at,
        rank: n.rank,
        op,
    };
    for i in 0..before.len().max(after.len()) {
        match (before.get(i), after.get(i)) {
            (Some(o), Some(n)) if o == n => {}
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

/// Partitions of at most this many rows place a new row by counting, not
/// by a binary search.
const COUNTED_PLACE: usize = 16;

/// Where a new row goes among a partition's `entries` (best first): after
/// each entry that `not_worse` (than the new row) holds for. A few entries
/// (a TopN 10 holds at most 11) are counted in one pass, whose reads of
/// their keys (each likely a cache miss) do not wait on one another; a
/// binary search waits for each miss before it knows the next to read.
fn place(entries: &[RowRef], not_worse: impl Fn(RowRef) -> bool) -> usize {
    if entries.len() <= COUNTED_PLACE {
        entries.iter().map(|&e| usize::from(not_worse(e))).sum()
    } else {
        entries.partition_point(|&e| not_worse(e))
    }
}

/// How many rows ahead a batch prefetches its rows' partition slots. (The
/// keys of a partition's first kept row, or its rows, found from the slot 8
/// rows ahead, were prefetched too: that second probe cost more than it
/// saved, q18 0.90–0.92× and q19 0.93× user time without it.)
const PREFETCH_AHEAD: usize = 16;

impl<T> Hashed for Partition<T> {
    fn hash32(&self) -> u32 {
        self.entries.hash()
    }
}

/// The running TopN of one subtask. Partitions live in an open-addressing
/// table by their key's hash; their keys are read from their kept rows, so
/// a partition costs its 16 bytes in the table besides its rows (24 with
/// `state_ttl`).
pub struct TopN<T: Touched> {
    width: usize,
    partition_columns: Vec<usize>,
    order_columns: Vec<usize>,
    /// What [`Admission::admits`] reads: the partition columns, the order
    /// columns and the close time's column, if any.
    admission_columns: Vec<usize>,
    ranking: Ranking,
    window: Option<TopNWindow>,
    state_ttl_ns: Option<i64>,
    closes: Option<Expiry>,
    /// The earliest close time of the partitions (`closes`), found at each
    /// sweep: none can be dropped before the watermark passes it.
    next_close: i64,
    /// Partitions opened since the last sweep of closed ones, and those
    /// that sweep left: a sweep waits for half as many new ones, so that
    /// its pass over the table is paid for by the rows that made them.
    opened: usize,
    swept: usize,
    output: SchemaRef,
    partition_converter: RowConverter,
    /// The partition converter's fields, to make another for snapshots.
    partition_fields: Vec<SortField>,
    order_converter: RowConverter,
    kept: KeptRows,
    partitions: OpenTable<Partition<T>>,
    hasher: foldhash::fast::FixedState,
    /// Windowed partitions' keys by window end, to close them in order.
    closing: BTreeMap<i64, Vec<Box<[u8]>>>,
    /// Bytes of the keys in `closing`, each with its box.
    closing_bytes: usize,
    watermark: i64,
    /// The watermark of the last `state_ttl` sweep.
    last_sweep: i64,
    /// How partition keys map to key groups, and which this subtask owns.
    key_groups: KeyGroups,
    /// The snapshot rows' buffer of the last checkpoint, handed back when
    /// its upload is done, so that the next barrier fills pages already
    /// touched (fresh pages cost more than the pass that fills them).
    spare_rows: Arc<Mutex<Vec<SnapshotRow>>>,
    /// The input ended: no barrier follows the last snapshot, so its
    /// buffer is not kept for one.
    ended: bool,
    metrics: Arc<JobMetrics>,
    gauge: StateGauge,
    kept_gauge: KeptGauge,
}

impl<T: Touched> Drop for TopN<T> {
    /// Frees the partitions' row lists in table order, each prefetched
    /// `PREFETCH_AHEAD` partitions earlier: freed in that order without it,
    /// every list's first load (its length, for its size) was a cache miss,
    /// 1.8 % of q19's CPU at 100 M events.
    fn drop(&mut self) {
        self.partitions
            .clear_prefetching(PREFETCH_AHEAD, |p| p.entries.prefetch());
    }
}

/// The slot of the partition keyed `key` (hash `h`), if any.
fn find_partition<T>(
    table: &OpenTable<Partition<T>>,
    h: u32,
    key: &[u8],
    keys: &KeySource,
) -> Option<usize> {
    find_partition_from(table, table.home(h), h, key, keys)
}

/// [`find_partition`] with the probe's start, `table.home(h)`, known.
fn find_partition_from<T>(
    table: &OpenTable<Partition<T>>,
    home: usize,
    h: u32,
    key: &[u8],
    keys: &KeySource,
) -> Option<usize> {
    table.find(home, h, |p| {
        key_order::equal(keys.partition(p.entries[0]), key)
    })
}

/// The partition in `slot`, found this batch: slots stay put because each
/// batch reserves room for all its rows before inserting any, and nothing
/// is removed during a batch.
fn bucket<T>(table: &mut OpenTable<Partition<T>>, slot: usize) -> &mut Partition<T> {
    table
        .get_mut(slot)
        .expect("a slot found this batch holds its partition")
}

impl<T: Touched> TopN<T> {
    /// Ranks rows `own` of `batch` (all its rows when `None`) into their
    /// partitions, emits the changes, and copies the rows that stay.
    fn process(
        &mut self,
        batch: &RecordBatch,
        own: Option<&UInt32Array>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let n = own.map_or(batch.num_rows(), |own| own.len());
        if n == 0 || self.ranking.limit == 0 {
            return Ok(());
        }
        // The columns the ranking reads, of this subtask's rows only.
        let column = |c: usize| -> Result<ArrayRef> {
            Ok(match own {
                Some(own) => take(batch.column(c), own, None)?,
                None => batch.column(c).clone(),
            })
        };
        let partition_cols: Vec<ArrayRef> = self
            .partition_columns
            .iter()
            .map(|&c| column(c))
            .collect::<Result<_>>()?;
        let order_cols: Vec<ArrayRef> = self
            .order_columns
            .iter()
            .map(|&c| column(c))
            .collect::<Result<_>>()?;
        let (partition_keys, order_keys) = self.batch_keys(&partition_cols, &order_cols)?;
        let window_ends = match self.window {
            Some(w) => Some(shifted_times(&column(w.column)?, w.size_ns)?),
            None => None,
        };
        let close_times = match self.closes {
            Some(c) => Some(close_times(&column(c.column)?, c.offset_ns)?),
            None => None,
        };
        let ranking = self.ranking;
        // Room for every row, so that no insert moves a bucket found earlier
        // in this batch.
        self.partitions.reserve(n);
        // Each row goes in as a `PENDING` entry pointing into the batch; the
        // rows still kept at the end are copied out together.
        let order_rows = row_slices(&order_keys);
        let partition_rows = partition_keys.as_ref().map(row_slices);
        let keys = KeySource {
            kept: &self.kept,
            order: Some(&order_rows),
            partition: partition_rows.as_deref(),
        };
        // Every row's partition hash and probe start, so that each lookup
        // can prefetch the slot of the row `PREFETCH_AHEAD` later.
        let hashes: Vec<u32> = (0..n)
            .map(|row| self.hash(keys.batch_partition(row)))
            .collect();
        let homes: Vec<usize> = hashes.iter().map(|&h| self.partitions.home(h)).collect();
        let mut before: Vec<Numbered> = Vec::new();
        // Each changed partition's bucket and its rows before (in `before`).
        let mut touched: Vec<(usize, usize, usize)> = Vec::new();
        let mut evicted: Vec<RowRef> = Vec::new();
        let mut late = 0;
        for row in 0..n {
            let end = match &window_ends {
                Some(ends) => match ends[row] {
                    Some(end) if end > self.watermark => end,
                    _ => {
                        late += 1;
                        continue;
                    }
                },
                None => i64::MAX,
            };
            // A row of a closed partition (its join row freed already).
            let close = match &close_times {
                Some(times) if times[row] < self.watermark => {
                    late += 1;
                    continue;
                }
                Some(times) => times[row],
                None => self.watermark,
            };
            self.prefetch_ahead(&homes, row);
            let pkey = keys.batch_partition(row);
            let key = order_rows[row];
            let at = RowRef {
                slot: PENDING,
                row: row as u32,
            };
            let h = hashes[row];
            let Some(b) = find_partition_from(&self.partitions, homes[row], h, pkey, &keys) else {
                let partition = Partition {
                    touched_at: T::at(close),
                    entries: Entries::One { hash: h, row: at },
                };
                let b = self.partitions.insert(homes[row], partition);
                if self.window.is_some() {
                    self.closing.entry(end).or_default().push(pkey.into());
                    self.closing_bytes += closing_bytes(pkey);
                }
                self.next_close = self.next_close.min(close);
                self.opened += 1;
                touched.push((b, before.len(), before.len()));
                continue;
            };
            let p = bucket(&mut self.partitions, b);
            if ranking.rejects(&p.entries, key, &keys) {
                continue;
            }
            // A partition this batch changed holds a row of the batch (a row
            // that gets in is kept until a better row of the batch pushes
            // it out): its rows before the batch are noted already.
            if !p.entries.iter().any(|e| e.slot == PENDING) {
                let start = before.len();
                if self.window.is_none() {
                    ranking.number_into(&p.entries, &keys, &mut before);
                }
                touched.push((b, start, before.len()));
            }
            if ranking.function == RankFunction::RowNumber && ranking.limit == 1 {
                // Not rejected: strictly better than the one row kept.
                let old = std::mem::replace(&mut p.entries, Entries::One { hash: h, row: at });
                evicted.extend(old.iter().filter(|e| e.slot != PENDING));
            } else {
                let place = place(&p.entries, |e| {
                    key_order::compare(keys.order(e), key).is_le()
                });
                p.entries.insert(place, at, ranking.most_rows());
                let keep = ranking.keep(&p.entries, &keys);
                let start = evicted.len();
                p.entries.truncate_into(keep, &mut evicted);
                // Rows of this batch pushed out again were never stored.
                let mut i = start;
                while i < evicted.len() {
                    if evicted[i].slot == PENDING {
                        evicted.swap_remove(i);
                    } else {
                        i += 1;
                    }
                }
            }
            if close_times.is_none() {
                p.touched_at = T::at(self.watermark);
            }
        }
        self.metrics.add_late_rows_dropped(late);
        // One pass over the partitions this batch touched (by now each a
        // likely cache and TLB miss, so read once, not three times): number
        // its rows for the changes to emit (its rows of this batch still
        // pending, their keys read from the batch), then point those rows
        // at the slot they are copied into below, in touched order.
        let slot = self.kept.next_slot();
        let emits = self.window.is_none();
        let mut take_rows: Vec<u32> = Vec::new();
        let mut rows: Vec<OutRow> = Vec::new();
        let mut after: Vec<Numbered> = Vec::new();
        for &(b, start, end) in &touched {
            let p = bucket(&mut self.partitions, b);
            if emits {
                after.clear();
                ranking.number_into(&p.entries, &keys, &mut after);
                diff(&before[start..end], &after, &mut rows);
            }
            for e in p.entries.iter_mut() {
                if e.slot == PENDING {
                    let to = take_rows.len() as u32;
                    take_rows.push(e.row);
                    *e = RowRef { slot, row: to };
                }
            }
        }
        // Each row of the batch that stays is emitted once, as an addition
        // (`+I`, or `+U` where it takes a rank another row held), and in
        // the order it is placed in the new slot: those go out after every
        // other change, as that slot sliced, not gathered row by row. A
        // (partition, rank)'s `-U` still comes before its `+U`, and the
        // other changes keep their order.
        let (mut added, changed): (Vec<OutRow>, Vec<OutRow>) =
            rows.into_iter().partition(|r| r.at.slot == PENDING);
        for (r, row) in added.iter_mut().zip(0..) {
            r.at = RowRef { slot, row };
        }
        debug_assert!(!emits || added.len() == take_rows.len());
        if !take_rows.is_empty() {
            let packed = Keys::from_pairs(
                take_rows
                    .iter()
                    .map(|&r| (keys.batch_partition(r as usize), order_rows[r as usize])),
            );
            // Positions in this subtask's rows, as rows of the batch.
            let indices = match own {
                Some(own) => take_rows.iter().map(|&r| own.value(r as usize)).collect(),
                None => UInt32Array::from(take_rows),
            };
            let stored = self
                .kept
                .add(&batch.columns()[..self.width], &indices, packed)?;
            debug_assert_eq!(stored, slot, "rows go to the slot next_slot names");
        }
        for rows in [changed, added] {
            if !rows.is_empty() {
                out.push(self.emit(&rows)?);
            }
        }
        // Rows evicted this batch may have been emitted above as `-U`/`-D`:
        // release them only now.
        for r in evicted {
            self.kept.release(r);
        }
        self.compact()
    }

    /// Starts loading the partition slot of the row `PREFETCH_AHEAD` after
    /// `row`, which its lookup reads first.
    #[inline]
    fn prefetch_ahead(&self, homes: &[usize], row: usize) {
        if let Some(&ahead) = homes.get(row + PREFETCH_AHEAD) {
            self.partitions.prefetch(ahead);
        }
    }

    /// The partition keys and the order keys of rows whose partition and
    /// order columns these are; no partition keys without PARTITION BY
    /// (every row is in the one partition, keyed by no bytes).
    fn batch_keys(
        &self,
        partition_cols: &[ArrayRef],
        order_cols: &[ArrayRef],
    ) -> Result<(Option<Rows>, Rows)> {
        let partition_keys = (!partition_cols.is_empty())
            .then(|| self.partition_converter.convert_columns(partition_cols))
            .transpose()?;
        Ok((
            partition_keys,
            self.order_converter.convert_columns(order_cols)?,
        ))
    }

    fn hash(&self, key: &[u8]) -> u32 {
        // Half the hash is kept; the table spreads it itself.
        self.hasher.hash_one(key) as u32
    }

    /// Drops the partition keyed `key` and its rows.
    fn remove_partition(&mut self, key: &[u8]) {
        let h = self.hash(key);
        let keys = KeySource {
            kept: &self.kept,
            order: None,
            partition: None,
        };
        let Some(slot) = find_partition(&self.partitions, h, key, &keys) else {
            return;
        };
        let p = self.partitions.remove(slot).expect("found above");
        for &r in p.entries.iter() {
            self.kept.release(r);
        }
    }

    /// Copies the emptiest slots' live rows together, repointing entries.
    fn compact(&mut self) -> Result<()> {
        let Some(compaction) = self.kept.compact()? else {
            return Ok(());
        };
        let keys = KeySource {
            kept: &self.kept,
            order: None,
            partition: None,
        };
        for &(from, to) in &compaction.moves {
            // Both places hold the row until the compaction is retired.
            let key = keys.partition(to);
            let h = self.hasher.hash_one(key) as u32;
            let found = find_partition(&self.partitions, h, key, &keys);
            let found = found.and_then(|slot| self.partitions.get_mut(slot));
            if let Some(e) = found.and_then(|p| p.entries.iter_mut().find(|e| **e == from)) {
                *e = to;
            }
        }
        self.kept.retire(compaction);
        Ok(())
    }

    /// Drops partitions no row got into for `state_ttl` (windowed partitions
    /// go when their window closes).
    fn expire_idle(&mut self) {
        let Some(ttl) = self.state_ttl_ns else { return };
        if self.window.is_some() || self.watermark < self.last_sweep.saturating_add(ttl / 2) {
            return;
        }
        self.last_sweep = self.watermark;
        let cutoff = self.watermark.saturating_sub(ttl);
        let kept = &mut self.kept;
        self.partitions.retain(|p| {
            if p.touched_at.or(i64::MAX) >= cutoff {
                return true;
            }
            for &r in p.entries.iter() {
                kept.release(r);
            }
            false
        });
    }

    /// Drops the partitions whose close time is before the watermark
    /// (`closes`): their rows were final when they were emitted. In one
    /// pass over the table, once enough partitions opened since the last.
    fn drop_closed(&mut self) {
        if self.closes.is_none()
            || self.watermark <= self.next_close
            || self.opened * 2 < self.swept
        {
            return;
        }
        let watermark = self.watermark;
        let mut next_close = i64::MAX;
        let mut released = Vec::new();
        self.partitions.remove_where(
            |p| {
                let at = p.touched_at.or(i64::MAX);
                next_close = next_close.min(at.max(watermark));
                at < watermark
            },
            |p| released.extend(p.entries.iter().copied()),
        );
        // Released slot by slot, row by row: a release reads the row's
        // values (their Arrow size), which are then near each other, and a
        // slot whose rows all closed is freed whole.
        released.sort_unstable_by_key(|r| (r.slot, r.row));
        self.kept.release_sorted(&released);
        self.next_close = next_close;
        self.opened = 0;
        self.swept = self.partitions.len();
    }

    fn emit(&self, rows: &[OutRow]) -> Result<RecordBatch> {
        let at: Vec<RowRef> = rows.iter().map(|r| r.at).collect();
        let mut columns = self.kept.gather(&at)?;
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

    fn close_windows(&mut self, upto: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        while let Some(entry) = self.closing.first_entry() {
            if *entry.key() > upto {
                break;
            }
            let closed = entry.remove();
            self.closing_bytes -= closed.iter().map(|k| closing_bytes(k)).sum::<usize>();
            let keys = KeySource {
                kept: &self.kept,
                order: None,
                partition: None,
            };
            let mut numbered = Vec::new();
            for key in &closed {
                let h = self.hash(key);
                if let Some(b) = find_partition(&self.partitions, h, key, &keys) {
                    let p = self.partitions.get(b).expect("found above");
                    self.ranking.number_into(&p.entries, &keys, &mut numbered);
                }
            }
            if !numbered.is_empty() {
                let rows: Vec<OutRow> = numbered
                    .iter()
                    .map(|n| OutRow {
                        at: n.at,
                        rank: n.rank,
                        op: RowOp::Insert,
                    })
                    .collect();
                out.push(self.emit(&rows)?);
            }
            for key in closed {
                self.remove_partition(&key);
            }
        }
        Ok(())
    }

    /// Bytes of the state: kept rows, the partitions' table, the window
    /// ends' keys.
    fn state_bytes(&self) -> usize {
        let spilled = if self.ranking.limit > 2 {
            self.kept.live_rows() * std::mem::size_of::<RowRef>()
        } else {
            0
        };
        self.kept.bytes() + self.partitions.allocation_size() + spilled + self.closing_bytes
    }

    /// The kept rows of every partition as snapshot column sets, built
    /// later from the rows as they are now: the row's values, its partition
    /// and order keys (`arrow-row` bytes), its place in its partition, its
    /// partition's last update and window end; with their key groups.
    fn deferred_rows(&self) -> DeferredRows {
        let mut ends: HashMap<&[u8], i64> = HashMap::new();
        for (&end, closing) in &self.closing {
            for key in closing {
                ends.insert(key, end);
            }
        }
        let live = self.kept.live_rows();
        let mut buffer = std::mem::take(&mut *lock(&self.spare_rows));
        buffer.clear();
        if buffer.capacity() < live {
            // A fresh buffer rather than a grown one (growing copies the
            // whole old buffer); the last snapshot's, still being written,
            // or one the state outgrew.
            buffer = Vec::new();
            buffer.reserve_exact(live);
        }
        // Without a window or a `state_ttl` nothing reads a partition's
        // last update or window end: no entry per partition is kept.
        let timed = self.window.is_some() || self.state_ttl_ns.is_some() || self.closes.is_some();
        let mut rows = DeferredRows {
            kept: self.kept.frozen(),
            rows: buffer,
            partitions: Vec::new(),
            watermark: self.watermark,
            partition_fields: self.partition_fields.clone(),
            key_groups: self.key_groups,
            spare: (!self.ended).then(|| self.spare_rows.clone()),
        };
        for p in self.partitions.iter() {
            // Fewer than 2^32 partitions, and rows in one: each takes
            // tens of bytes of memory.
            let partition = rows.partitions.len() as u32;
            if timed {
                let key = self.kept.partition_key(p.entries[0]);
                rows.partitions.push(PartitionTimes {
                    touched: p.touched_at.or(self.watermark),
                    end: ends.get(key).copied().unwrap_or(i64::MAX),
                });
            }
            for (place, &r) in p.entries.iter().enumerate() {
                rows.rows.push(SnapshotRow {
                    at: r,
                    place: place as u32,
                    partition,
                });
            }
        }
        rows
    }
}

/// A kept row in a snapshot: where it is, its place in its partition, and
/// its partition's index among the snapshot's [`PartitionTimes`] (16
/// bytes: a barrier writes one per kept row into fresh or reused memory).
#[derive(Clone, Copy)]
struct SnapshotRow {
    at: RowRef,
    place: u32,
    partition: u32,
}

impl SnapshotRow {
    /// What a spare buffer is filled with to map its pages.
    const UNSET: SnapshotRow = SnapshotRow {
        at: RowRef { slot: 0, row: 0 },
        place: 0,
        partition: 0,
    };
}

/// A partition's last update and window end, in a snapshot of a TopN with
/// a window or a `state_ttl`.
#[derive(Clone, Copy)]
struct PartitionTimes {
    touched: i64,
    end: i64,
}

/// The spare buffer, even if a thread panicked holding it (it holds no
/// invariant: it is cleared before use).
fn lock(spare: &Mutex<Vec<SnapshotRow>>) -> std::sync::MutexGuard<'_, Vec<SnapshotRow>> {
    spare
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Orders `rows` slot by slot, in place (one pass of an American flag sort
/// on the slot number; the order of a snapshot's rows does not matter to a
/// restore), so that a snapshot set gathers from a few slots' arrays in
/// turn instead of reading each row from anywhere in the store.
fn sort_by_slot(rows: &mut [SnapshotRow]) {
    let slots = rows
        .iter()
        .map(|r| r.at.slot as usize + 1)
        .max()
        .unwrap_or(0);
    let mut ends = vec![0usize; slots];
    for r in rows.iter() {
        ends[r.at.slot as usize] += 1;
    }
    let mut total = 0;
    for end in &mut ends {
        total += *end;
        *end = total;
    }
    // `next[s]`: the first place of slot `s`'s range not yet holding one of
    // its rows. Once the ranges before `s` are full, every row still out of
    // place belongs to `s` or a later slot.
    let mut next: Vec<usize> = (0..slots)
        .map(|s| if s == 0 { 0 } else { ends[s - 1] })
        .collect();
    for s in 0..slots {
        while next[s] < ends[s] {
            let home = rows[next[s]].at.slot as usize;
            if home == s {
                next[s] += 1;
            } else {
                rows.swap(next[s], next[home]);
                next[home] += 1;
            }
        }
    }
}

/// A TopN's kept rows at a barrier, with what a snapshot stores beside
/// them, built into snapshot columns off the task's path.
struct DeferredRows {
    kept: FrozenRows,
    rows: Vec<SnapshotRow>,
    /// Each partition's times, by [`SnapshotRow::partition`]; empty when
    /// the TopN reads neither.
    partitions: Vec<PartitionTimes>,
    /// The watermark at the barrier: every partition's last update when
    /// `partitions` is empty.
    watermark: i64,
    /// The partition key's columns, to decode keys and hash them as the
    /// exchange does.
    partition_fields: Vec<SortField>,
    key_groups: KeyGroups,
    /// Where `rows`' buffer goes back when the snapshot is written; none
    /// after the input ended.
    spare: Option<Arc<Mutex<Vec<SnapshotRow>>>>,
}

/// A barrier whose TopN holds `live` rows leaves the next one a buffer for
/// this many: room for the state to double until then.
fn spare_rows_for(live: usize) -> usize {
    live.saturating_mul(2)
}

impl Drop for DeferredRows {
    /// Hands the rows' buffer back for the next barrier, grown here (on the
    /// upload's thread, when the snapshot is written) if the state may
    /// outgrow it, and its pages written once: the first write to a page
    /// this process never used costs up to ~50 µs on a VM, and filling a
    /// fresh 500 MB buffer at a barrier paused q19 for 6 s.
    fn drop(&mut self) {
        let Some(spare) = &self.spare else { return };
        let mut rows = std::mem::take(&mut self.rows);
        let wanted = spare_rows_for(rows.len());
        if rows.capacity() < wanted {
            rows = Vec::new();
            rows.resize(wanted, SnapshotRow::UNSET);
        }
        rows.clear();
        let mut spare = lock(spare);
        if rows.capacity() > spare.capacity() {
            *spare = rows;
        }
    }
}

/// Rows per column set of a deferred snapshot: the kept rows are gathered,
/// and their key groups hashed, this many at a time.
const SNAPSHOT_ROWS: usize = 65_536;

impl DeferredRows {
    /// The snapshot's column sets with their rows' key groups, each built
    /// when the iterator is advanced to it.
    fn sets(self) -> impl Iterator<Item = Result<(Vec<ArrayRef>, Vec<KeyGroup>)>> + Send {
        std::iter::once_with(move || {
            let mut rows = self;
            sort_by_slot(&mut rows.rows);
            rows
        })
        .flat_map(|rows| {
            (0..rows.rows.len())
                .step_by(SNAPSHOT_ROWS)
                .map(move |start| rows.set(start))
        })
    }

    /// The column set of the rows from `start` on, at most [`SNAPSHOT_ROWS`].
    fn set(&self, start: usize) -> Result<(Vec<ArrayRef>, Vec<KeyGroup>)> {
        let converter = RowConverter::new(self.partition_fields.clone())?;
        let partitioned = !self.partition_fields.is_empty();
        let end = (start + SNAPSHOT_ROWS).min(self.rows.len());
        let rows = &self.rows[start..end];
        let at: Vec<RowRef> = rows.iter().map(|r| r.at).collect();
        let partition: Vec<&[u8]> = at.iter().map(|&r| self.kept.partition_key(r)).collect();
        let order = BinaryArray::from_iter_values(at.iter().map(|&r| self.kept.order_key(r)));
        let key_groups =
            partition_key_groups(&converter, partitioned, &partition, &self.key_groups)?;
        let mut columns = self.kept.gather_encoded(&at)?;
        columns.push(Arc::new(BinaryArray::from_iter_values(partition)));
        columns.push(Arc::new(order));
        let untimed = PartitionTimes {
            touched: self.watermark,
            end: i64::MAX,
        };
        let times = |r: &SnapshotRow| {
            self.partitions
                .get(r.partition as usize)
                .copied()
                .unwrap_or(untimed)
        };
        columns.push(Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| u64::from(r.place)),
        )));
        columns.push(Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| times(r).touched),
        )));
        columns.push(Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| times(r).end),
        )));
        Ok((columns, key_groups))
    }
}

/// The best row of a batch in one partition, while a TopN 1 looks for it.
struct BatchBest {
    hash: u32,
    row: u32,
}

impl Hashed for BatchBest {
    fn hash32(&self) -> u32 {
        self.hash
    }
}

/// A TopN refuses the rows its partitions reject as they stand: rows
/// processed since can only have made a partition's last kept row better
/// (rows leave only at watermarks), so a row rejected now is rejected then.
/// A TopN 1 also refuses rows another row of their batch beats. Late rows
/// are admitted, to be counted where they are dropped.
impl<T: Touched> Admission for TopN<T> {
    fn admission_columns(&self) -> &[usize] {
        &self.admission_columns
    }

    fn admits(&self, columns: &[ArrayRef]) -> Result<Option<BooleanArray>> {
        if columns.len() != self.admission_columns.len() {
            return Err(FlumenError::internal(format!(
                "a TopN's admission reads {} columns, offered {}",
                self.admission_columns.len(),
                columns.len()
            )));
        }
        let (partition_cols, rest) = columns.split_at(self.partition_columns.len());
        let (order_cols, rest) = rest.split_at(self.order_columns.len());
        let Some(n) = columns.first().map(|c| c.len()) else {
            return Ok(None);
        };
        let (partition_keys, order_keys) = self.batch_keys(partition_cols, order_cols)?;
        let order_rows = row_slices(&order_keys);
        let partition_rows = partition_keys.as_ref().map(row_slices);
        let keys = KeySource {
            kept: &self.kept,
            order: Some(&order_rows),
            partition: partition_rows.as_deref(),
        };
        // Late rows are admitted; the others are candidates.
        let mut admit = vec![true; n];
        let mut candidates: Vec<u32> = match (self.closes, rest.first()) {
            (Some(c), Some(column)) => close_times(column, c.offset_ns)?
                .iter()
                .enumerate()
                .filter(|&(_, &t)| t >= self.watermark)
                .map(|(row, _)| row as u32)
                .collect(),
            _ => (0..n as u32).collect(),
        };
        let mut hashes: Vec<u32> = candidates
            .iter()
            .map(|&row| self.hash(keys.batch_partition(row as usize)))
            .collect();
        if self.ranking.function == RankFunction::RowNumber && self.ranking.limit == 1 {
            // A row of a TopN 1 beaten by another of the batch never shows:
            // a batch's changes are emitted once, after all its rows. Ties
            // go to the earlier row.
            let mut best: OpenTable<BatchBest> = OpenTable::new();
            best.reserve(candidates.len());
            for (&row, &h) in candidates.iter().zip(&hashes) {
                let (home, pkey) = (best.home(h), keys.batch_partition(row as usize));
                let found = best.find(home, h, |b| {
                    key_order::equal(keys.batch_partition(b.row as usize), pkey)
                });
                match found.and_then(|b| best.get_mut(b)) {
                    Some(b) => {
                        let key = order_rows[row as usize];
                        if key_order::compare(key, order_rows[b.row as usize]).is_lt() {
                            b.row = row;
                        }
                    }
                    None => {
                        best.insert(home, BatchBest { hash: h, row });
                    }
                }
            }
            for &row in &candidates {
                admit[row as usize] = false;
            }
            for b in best.iter() {
                admit[b.row as usize] = true;
            }
            (candidates, hashes) = candidates
                .iter()
                .zip(&hashes)
                .filter(|&(&row, _)| admit[row as usize])
                .unzip();
        }
        if self.partitions.len() > 0 {
            let homes: Vec<usize> = hashes.iter().map(|&h| self.partitions.home(h)).collect();
            for (i, &row) in candidates.iter().enumerate() {
                self.prefetch_ahead(&homes, i);
                let pkey = keys.batch_partition(row as usize);
                admit[row as usize] =
                    find_partition_from(&self.partitions, homes[i], hashes[i], pkey, &keys)
                        .and_then(|b| self.partitions.get(b))
                        .is_none_or(|p| {
                            !self
                                .ranking
                                .rejects(&p.entries, order_rows[row as usize], &keys)
                        });
            }
        }
        Ok(admit.contains(&false).then(|| BooleanArray::from(admit)))
    }
}

impl<T: Touched> Operator for TopN<T> {
    fn admission(&self) -> Option<&dyn Admission> {
        // A windowed TopN's rows wait for their window's end; no limit,
        // no rows.
        (self.window.is_none() && self.ranking.limit > 0).then_some(self as &dyn Admission)
    }

    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        self.process(&batch, None, out)
    }

    /// Only the kept rows are copied out of a batch the exchange shared.
    fn process_rows(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        rows: &UInt32Array,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        self.process(&batch, Some(rows), out)
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
        self.drop_closed();
        let bytes = self.state_bytes();
        self.metrics.report_state(&mut self.gauge, bytes);
        let kept = KeptRowsReport {
            rows: self.kept.live_rows() as u64,
            arrow_bytes: self.kept.live_arrow_bytes() as u64,
            state_bytes: bytes as u64,
        };
        self.metrics.report_kept(&mut self.kept_gauge, kept);
        Ok(Some(watermark))
    }

    fn finish(&mut self, out: &mut Vec<RecordBatch>) -> Result<()> {
        if self.window.is_some() {
            self.close_windows(i64::MAX, out)?;
        }
        self.ended = true;
        self.metrics.report_state(&mut self.gauge, 0);
        Ok(())
    }

    fn snapshot_state(&mut self) -> Result<StateSnapshot> {
        let mut snapshot = StateSnapshot::default();
        let rows = self.deferred_rows();
        snapshot.add_deferred_grouped(0, rows.rows.len(), rows.sets());
        Ok(snapshot)
    }

    fn restore_state(&mut self, snapshot: &StateSnapshot) -> Result<()> {
        // A part at a time, as stored: the table is never copied whole.
        let parts = snapshot.batches(0, self.key_groups.range)?;
        let w = self.width;
        // Each slot's part and the row of it where the slot starts, for
        // the rows' places.
        let mut slot_starts: HashMap<u32, (usize, usize)> = HashMap::new();
        let mut places = Vec::with_capacity(parts.len());
        for (part, rows) in parts.iter().enumerate() {
            let n = rows.num_rows();
            let partition = state_column::<BinaryArray>(rows, 0, w)?;
            let order = state_column::<BinaryArray>(rows, 0, w + 1)?;
            places.push(state_column::<UInt64Array>(rows, 0, w + 2)?);
            let touched = state_column::<Int64Array>(rows, 0, w + 3)?;
            let ends = state_column::<Int64Array>(rows, 0, w + 4)?;
            // Slots of a batch's size, as processing makes them, so that a
            // compaction later copies a few of them and not the whole state.
            for start in (0..n).step_by(DEFAULT_BATCH_SIZE) {
                let len = DEFAULT_BATCH_SIZE.min(n - start);
                let keys = Keys::from_pairs(
                    (start..start + len).map(|r| (partition.value(r), order.value(r))),
                );
                let indices = UInt32Array::from_iter_values(start as u32..(start + len) as u32);
                let slot = self.kept.add(&rows.columns()[..w], &indices, keys)?;
                slot_starts.insert(slot, (part, start));
                for row in start..start + len {
                    let at = RowRef {
                        slot,
                        row: (row - start) as u32,
                    };
                    let pkey = partition.value(row);
                    let h = self.hash(pkey);
                    self.partitions.reserve(1);
                    let keys = KeySource {
                        kept: &self.kept,
                        order: None,
                        partition: None,
                    };
                    if let Some(b) = find_partition(&self.partitions, h, pkey, &keys) {
                        let entries = &mut bucket(&mut self.partitions, b).entries;
                        entries.insert(entries.len(), at, self.ranking.most_rows());
                        continue;
                    }
                    let partition = Partition {
                        touched_at: T::at(touched.value(row)),
                        entries: Entries::One { hash: h, row: at },
                    };
                    let home = self.partitions.home(h);
                    self.partitions.insert(home, partition);
                    if self.window.is_some() {
                        self.closing
                            .entry(ends.value(row))
                            .or_default()
                            .push(pkey.into());
                        self.closing_bytes += closing_bytes(pkey);
                    }
                    self.next_close = self.next_close.min(touched.value(row));
                    self.opened += 1;
                }
            }
        }
        // Restored into a fresh operator: every partition's rows come from
        // this snapshot, in their places within it.
        let kept = &self.kept;
        let place = |r: &RowRef| {
            // Every entry restored here points into a slot added above.
            let (part, start) = slot_starts[&r.slot];
            places[part].value(start + r.row as usize)
        };
        for p in self.partitions.iter_mut() {
            p.entries.sort_by(|a, b| {
                (kept.order_key(*a), place(a)).cmp(&(kept.order_key(*b), place(b)))
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key source over `keys`, each row a `PENDING` entry.
    fn pending(keys: &[&str]) -> (KeptRows, Rows, Vec<RowRef>) {
        let converter = RowConverter::new(vec![SortField::new(DataType::Utf8)]).unwrap();
        let array: ArrayRef = Arc::new(arrow::array::StringArray::from(keys.to_vec()));
        let rows = converter.convert_columns(&[array]).unwrap();
        let kept = KeptRows::new(
            Arc::new(arrow::datatypes::Schema::empty()),
            KeyColumns::none(0),
        );
        let at = (0..keys.len() as u32)
            .map(|row| RowRef { slot: PENDING, row })
            .collect();
        (kept, rows, at)
    }

    fn ranks(function: RankFunction, keys: &[&str]) -> Vec<u64> {
        let (kept, rows, at) = pending(keys);
        let rows = row_slices(&rows);
        let source = KeySource {
            kept: &kept,
            order: Some(&rows),
            partition: None,
        };
        let mut out = Vec::new();
        Ranking { function, limit: 2 }.number_into(&at, &source, &mut out);
        out.iter().map(|n| n.rank).collect()
    }

    #[test]
    fn snapshot_rows_sorted_by_slot_are_the_same_rows() {
        let mut seed = 11u64;
        let mut rows: Vec<SnapshotRow> = (0..5000u32)
            .map(|place| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                SnapshotRow {
                    at: RowRef {
                        slot: (seed >> 40) as u32 % 37 * 2,
                        row: (seed >> 20) as u32 % 8192,
                    },
                    place,
                    partition: place / 3,
                }
            })
            .collect();
        let key = |r: &SnapshotRow| (r.at.slot, r.at.row, r.place, r.partition);
        let mut before: Vec<_> = rows.iter().map(key).collect();
        sort_by_slot(&mut rows);
        assert!(rows.windows(2).all(|w| w[0].at.slot <= w[1].at.slot));
        let mut after: Vec<_> = rows.iter().map(key).collect();
        before.sort_unstable();
        after.sort_unstable();
        assert_eq!(before, after);
    }

    /// A new row goes after every row not worse than it (so after the rows
    /// it ties with), whether its partition's rows are counted or searched.
    #[test]
    fn a_new_row_goes_after_the_rows_not_worse_than_it() {
        for len in [
            0u32,
            1,
            2,
            5,
            COUNTED_PLACE as u32,
            COUNTED_PLACE as u32 + 1,
            40,
        ] {
            // Best first, each value twice: 0, 0, 1, 1, 2, 2, …
            let entries: Vec<RowRef> = (0..len).map(|row| RowRef { slot: 0, row }).collect();
            for new in 0..len / 2 + 2 {
                let got = place(&entries, |e| e.row / 2 <= new);
                assert_eq!(
                    got,
                    len.min(2 * (new + 1)) as usize,
                    "{len} rows, value {new}"
                );
            }
        }
    }

    /// A barrier writes 16 bytes per kept row.
    #[test]
    fn a_snapshot_row_is_16_bytes() {
        assert_eq!(std::mem::size_of::<SnapshotRow>(), 16);
    }

    /// A row number's partition grows its rows to the most it can hold,
    /// not past it; a rank's grows as a `Vec` does. The key's hash stays
    /// through every change of form.
    #[test]
    fn kept_rows_of_a_partition_grow_to_the_most_it_holds() {
        let at = |row| RowRef { slot: 0, row };
        let capacity = |e: &Entries| match e {
            Entries::Many { rows, .. } => rows.capacity(),
            Entries::One { .. } => 1,
        };
        let one = |hash| Entries::One { hash, row: at(0) };
        let (mut bounded, mut unbounded) = (one(7), one(9));
        let mut out = Vec::new();
        for row in 1..40 {
            bounded.insert(0, at(row), 11);
            let keep = bounded.len().min(10);
            bounded.truncate_into(keep, &mut out);
            unbounded.insert(0, at(row), 0);
            assert!(
                capacity(&bounded) <= 11,
                "{} at row {row}",
                capacity(&bounded)
            );
        }
        assert_eq!(bounded.len(), 10);
        assert_eq!(capacity(&bounded), 11);
        assert!(capacity(&unbounded) >= 40);
        assert_eq!((bounded.hash(), unbounded.hash()), (7, 9));
        bounded.truncate_into(1, &mut out);
        assert!(matches!(bounded, Entries::One { hash: 7, .. }));
    }

    /// A partition takes 16 bytes of its table, empty slots included, 24
    /// when it keeps the time it last took a row (`state_ttl`).
    #[test]
    fn a_partition_slot_is_16_bytes_or_24_with_its_time() {
        assert_eq!(std::mem::size_of::<Option<Partition<()>>>(), 16);
        assert_eq!(std::mem::size_of::<Option<Partition<i64>>>(), 24);
    }

    #[test]
    fn rank_functions_number_ties_as_sql_does() {
        let keys = ["a", "a", "b"];
        assert_eq!(ranks(RankFunction::RowNumber, &keys), [1, 2, 3]);
        assert_eq!(ranks(RankFunction::Rank, &keys), [1, 1, 3]);
        assert_eq!(ranks(RankFunction::DenseRank, &keys), [1, 1, 2]);
    }

    #[test]
    fn ties_past_the_limit_are_kept_only_by_ranks() {
        let (kept, rows, at) = pending(&["a", "b", "b", "c"]);
        let rows = row_slices(&rows);
        let source = KeySource {
            kept: &kept,
            order: Some(&rows),
            partition: None,
        };
        let keep = |function| Ranking { function, limit: 2 }.keep(&at, &source);
        assert_eq!(keep(RankFunction::RowNumber), 2);
        assert_eq!(keep(RankFunction::Rank), 3);
        assert_eq!(keep(RankFunction::DenseRank), 3);
    }

    /// Applies an updating TopN's output (key, value, rank, op) to `rows`.
    fn apply(rows: &mut HashMap<(i64, i64, u64), i64>, out: &[RecordBatch]) {
        for b in out {
            let key = b.column(0).as_primitive::<Int64Type>();
            let value = b.column(1).as_primitive::<Int64Type>();
            let rank = b.column(2).as_primitive::<arrow::datatypes::UInt64Type>();
            let op = b.column(3).as_primitive::<arrow::datatypes::Int8Type>();
            for r in 0..b.num_rows() {
                let sign = if RowOp::from_code(op.value(r)).unwrap().is_addition() {
                    1
                } else {
                    -1
                };
                *rows
                    .entry((key.value(r), value.value(r), rank.value(r)))
                    .or_default() += sign;
            }
        }
        rows.retain(|_, n| *n != 0);
    }

    /// A TopN of the highest `v` per `k` (and per 10 ns window of `start`
    /// when `windowed`), one row each, over rows `(k, v, start)`; no
    /// `state_ttl`.
    fn timed_top_n(windowed: bool) -> (SchemaRef, TopN<()>) {
        let (schema, factory) = timed_factory(windowed, None);
        let ctx = TaskContext::new(0, 1, 128, Arc::new(JobMetrics::default()));
        let partition = RowConverter::new(
            factory
                .partition_columns
                .iter()
                .map(|&c| SortField::new(schema.field(c).data_type().clone()))
                .collect(),
        )
        .unwrap();
        let order = RowConverter::new(vec![SortField::new_with_options(
            DataType::Int64,
            factory.order_columns[0].1,
        )])
        .unwrap();
        (schema, factory.top_n(&ctx, partition, order).unwrap())
    }

    /// The factory of [`timed_top_n`]'s TopN, and its input schema.
    fn timed_factory(windowed: bool, state_ttl_ns: Option<i64>) -> (SchemaRef, TopNFactory) {
        use arrow::datatypes::{Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
            Field::new(
                "start",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
        ]));
        let mut output = vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
            Field::new("rank", DataType::UInt64, false),
        ];
        if !windowed {
            output.push(Field::new("_op", DataType::Int8, false));
        }
        let order = SortOptions {
            descending: true,
            nulls_first: false,
        };
        let factory = TopNFactory {
            input: schema.clone(),
            width: 2,
            partition_columns: if windowed { vec![0, 2] } else { vec![0] },
            order_columns: vec![(1, order)],
            function: RankFunction::RowNumber,
            limit: 1,
            window: windowed.then_some(TopNWindow {
                column: 2,
                size_ns: 10,
            }),
            state_ttl_ns,
            closes: None,
            output: Arc::new(Schema::new(output)),
            op_column: None,
        };
        (schema, factory)
    }

    fn kvs(schema: &SchemaRef, rows: &[(i64, i64, i64)]) -> RecordBatch {
        let column = |f: fn(&(i64, i64, i64)) -> i64| -> Vec<i64> { rows.iter().map(f).collect() };
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(column(|r| r.0))),
                Arc::new(Int64Array::from(column(|r| r.1))),
                Arc::new(arrow::array::TimestampNanosecondArray::from(column(|r| {
                    r.2
                }))),
            ],
        )
        .unwrap()
    }

    /// `(k, v)` of every output row.
    fn kv_rows(out: &[RecordBatch]) -> Vec<(i64, i64)> {
        out.iter()
            .flat_map(|b| {
                let k = b.column(0).as_primitive::<Int64Type>().clone();
                let v = b.column(1).as_primitive::<Int64Type>().clone();
                (0..b.num_rows()).map(move |r| (k.value(r), v.value(r)))
            })
            .collect()
    }

    /// After the input ended, the last snapshot's buffer is freed, not
    /// grown and kept for a barrier that never comes.
    #[test]
    fn the_snapshot_after_the_end_keeps_no_spare_buffer() {
        let (schema, mut op) = timed_top_n(false);
        op.process_batch(kvs(&schema, &[(1, 10, 0), (2, 5, 0)]), &mut Vec::new())
            .unwrap();
        op.snapshot_state().unwrap().resolve().unwrap();
        assert!(lock(&op.spare_rows).capacity() >= spare_rows_for(2));
        op.finish(&mut Vec::new()).unwrap();
        let snapshot = op.snapshot_state().unwrap().resolve().unwrap();
        assert_eq!(snapshot.num_rows(), 2);
        assert_eq!(lock(&op.spare_rows).capacity(), 0);
    }

    /// Restored, a windowed partition closes when the watermark passes its
    /// own window's end, not only at the end of input.
    #[test]
    fn restored_windows_close_at_their_ends() {
        let (schema, mut op) = timed_top_n(true);
        let rows = [(1, 5, 0), (1, 7, 0), (2, 4, 100)];
        op.process_batch(kvs(&schema, &rows), &mut Vec::new())
            .unwrap();
        let snapshot = op.snapshot_state().unwrap().resolve().unwrap();
        let (_, mut op) = timed_top_n(true);
        op.restore_state(&snapshot).unwrap();
        let mut out = Vec::new();
        op.process_watermark(Watermark(50), &mut out).unwrap();
        assert_eq!(kv_rows(&out), [(1, 7)], "the window [0, 10) closed");
        let mut out = Vec::new();
        op.finish(&mut out).unwrap();
        assert_eq!(kv_rows(&out), [(2, 4)]);
    }

    /// A TopN 1 per `k` by `v` whose partitions close at their rows'
    /// `start` (the expiry of the join row they come from), as the planner
    /// makes one after a join with a unique side.
    fn closing_top_n() -> (SchemaRef, Box<dyn Operator>) {
        let (schema, mut factory) = timed_factory(false, None);
        factory.closes = Some(Expiry {
            column: 2,
            offset_ns: 0,
        });
        let ctx = TaskContext::new(0, 1, 128, Arc::new(JobMetrics::default()));
        (schema, factory.create(&ctx).unwrap())
    }

    /// A partition whose close time the watermark has passed is dropped,
    /// and a row of it arriving later is late; one closing at the
    /// watermark itself stays, and so does a row closing then.
    #[test]
    fn closed_partitions_go_and_their_late_rows_with_them() {
        let (schema, mut op) = closing_top_n();
        let mut out = Vec::new();
        op.process_batch(
            kvs(&schema, &[(1, 10, 100), (2, 5, 300), (3, 8, 250)]),
            &mut out,
        )
        .unwrap();
        assert_eq!(kv_rows(&out), [(1, 10), (2, 5), (3, 8)]);
        op.process_watermark(Watermark(250), &mut Vec::new())
            .unwrap();
        let mut out = Vec::new();
        op.process_batch(
            kvs(
                &schema,
                &[(1, 20, 100), (2, 7, 300), (3, 1, 250), (4, 2, 250)],
            ),
            &mut out,
        )
        .unwrap();
        // Key 1's row is late; key 2 takes its better row; key 3 is still
        // there and keeps its better row; key 4 opens at its close time.
        assert_eq!(kv_rows(&out), [(2, 5), (2, 7), (4, 2)]);
    }

    /// The sorted `(k, v, start, rank, op)` rows of `out`.
    fn changes(out: &[RecordBatch]) -> Vec<(i64, i64, i64, u64, i8)> {
        let mut rows: Vec<_> = out
            .iter()
            .flat_map(|b| {
                let k = b.column(0).as_primitive::<Int64Type>().clone();
                let v = b.column(1).as_primitive::<Int64Type>().clone();
                let start = b
                    .column(2)
                    .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                    .clone();
                let rank = b
                    .column(3)
                    .as_primitive::<arrow::datatypes::UInt64Type>()
                    .clone();
                let op = b
                    .column(4)
                    .as_primitive::<arrow::datatypes::Int8Type>()
                    .clone();
                (0..b.num_rows()).map(move |r| {
                    let row = (k.value(r), v.value(r), start.value(r));
                    (row.0, row.1, row.2, rank.value(r), op.value(r))
                })
            })
            .collect();
        rows.sort_unstable();
        rows
    }

    /// A TopN given only the rows it admits of each batch emits what it
    /// emits given them all, and counts the same late rows: for every rank
    /// function, limits 1 to 3, with and without closing partitions, over
    /// batches of few keys and values (many ties, told apart by their
    /// distinct `start`, which is output too) and a rising watermark.
    #[test]
    fn admitted_rows_change_what_all_rows_change() {
        use arrow::datatypes::{Field, Schema};
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |below: u64| -> i64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below) as i64
        };
        let (mut refused, mut late) = (0, 0);
        for function in [
            RankFunction::RowNumber,
            RankFunction::Rank,
            RankFunction::DenseRank,
        ] {
            for limit in 1..=3 {
                for closing in [false, true] {
                    let (schema, mut factory) = timed_factory(false, None);
                    factory.width = 3;
                    let mut output = schema.fields().to_vec();
                    output.push(Arc::new(Field::new("rank", DataType::UInt64, false)));
                    output.push(Arc::new(Field::new("_op", DataType::Int8, false)));
                    factory.output = Arc::new(Schema::new(output));
                    factory.function = function;
                    factory.limit = limit;
                    factory.closes = closing.then_some(Expiry {
                        column: 2,
                        offset_ns: 0,
                    });
                    let (all_metrics, some_metrics) = (
                        Arc::new(JobMetrics::default()),
                        Arc::new(JobMetrics::default()),
                    );
                    let mut all = factory
                        .create(&TaskContext::new(0, 1, 128, all_metrics.clone()))
                        .unwrap();
                    let mut some = factory
                        .create(&TaskContext::new(0, 1, 128, some_metrics.clone()))
                        .unwrap();
                    for round in 0..40 {
                        // Rows starting up to 20 ns before the last
                        // watermark (late where partitions close), each
                        // start its own.
                        let rows: Vec<(i64, i64, i64)> = (0..1 + next(30))
                            .map(|i| (next(6), next(8), (round * 10 + next(60) - 20) * 64 + i))
                            .collect();
                        let batch = kvs(&schema, &rows);
                        let next_op = some.admission().expect("a TopN without a window admits");
                        let columns: Vec<ArrayRef> = next_op
                            .admission_columns()
                            .iter()
                            .map(|&c| batch.column(c).clone())
                            .collect();
                        let offered = match next_op.admits(&columns).unwrap() {
                            Some(mask) => {
                                refused += mask.false_count();
                                arrow::compute::filter_record_batch(&batch, &mask).unwrap()
                            }
                            None => batch.clone(),
                        };
                        let (mut want, mut got) = (Vec::new(), Vec::new());
                        all.process_batch(batch, &mut want).unwrap();
                        some.process_batch(offered, &mut got).unwrap();
                        assert_eq!(
                            changes(&got),
                            changes(&want),
                            "{function:?} {limit} closing {closing} round {round}"
                        );
                        let watermark = Watermark(round * 10 * 64);
                        all.process_watermark(watermark, &mut Vec::new()).unwrap();
                        some.process_watermark(watermark, &mut Vec::new()).unwrap();
                    }
                    assert_eq!(
                        some_metrics.late_rows_dropped(),
                        all_metrics.late_rows_dropped()
                    );
                    late += all_metrics.late_rows_dropped();
                }
            }
        }
        // Rows were refused, by the state and within batches, and late.
        assert!(
            refused > 1000 && late > 100,
            "{refused} refused, {late} late"
        );
    }

    /// Before any row is kept, a TopN 1 refuses the rows of a batch that
    /// another of its rows beats, a tie going to the earlier row.
    #[test]
    fn a_top_1_refuses_the_rows_its_batch_beats() {
        let (schema, factory) = timed_factory(false, None);
        let ctx = TaskContext::new(0, 1, 128, Arc::new(JobMetrics::default()));
        let top_n = factory.create(&ctx).unwrap();
        let batch = kvs(&schema, &[(1, 2, 0), (1, 5, 0), (2, 1, 0), (1, 5, 0)]);
        let admission = top_n.admission().expect("a TopN without a window admits");
        let mask = admission
            .admits(&batch.columns()[..2])
            .unwrap()
            .expect("rows are refused");
        assert_eq!(
            mask.iter().collect::<Vec<_>>(),
            [Some(false), Some(true), Some(true), Some(false)]
        );
    }

    /// Columns other than the admission's are an error, not a panic.
    #[test]
    fn admission_of_other_columns_is_an_error() {
        let (schema, factory) = timed_factory(false, None);
        let ctx = TaskContext::new(0, 1, 128, Arc::new(JobMetrics::default()));
        let top_n = factory.create(&ctx).unwrap();
        let batch = kvs(&schema, &[(1, 2, 3)]);
        let admission = top_n.admission().expect("a TopN without a window admits");
        assert_eq!(admission.admission_columns(), [0, 1]);
        let err = admission.admits(&batch.columns()[..1]).unwrap_err();
        assert!(
            err.to_string().contains("reads 2 columns, offered 1"),
            "{err}"
        );
        assert!(admission.admits(&batch.columns()[..2]).is_ok());
    }

    /// Restored, partitions close at their own close times.
    #[test]
    fn restored_partitions_close_at_their_own_times() {
        let (schema, mut op) = closing_top_n();
        op.process_batch(kvs(&schema, &[(1, 10, 100), (2, 5, 300)]), &mut Vec::new())
            .unwrap();
        let snapshot = op.snapshot_state().unwrap().resolve().unwrap();
        let (_, mut op) = closing_top_n();
        op.restore_state(&snapshot).unwrap();
        op.process_watermark(Watermark(200), &mut Vec::new())
            .unwrap();
        let mut out = Vec::new();
        op.process_batch(kvs(&schema, &[(1, 3, 250), (2, 4, 300)]), &mut out)
            .unwrap();
        // Key 1 closed at 100 and went: a lower row opens it anew; key 2
        // keeps its better row.
        assert_eq!(kv_rows(&out), [(1, 3)]);
    }

    /// Restored, a partition expires by `state_ttl` from its own last
    /// update, not from the barrier's. Made as the factory makes a TopN
    /// with `state_ttl`: the one that keeps each partition's time.
    #[test]
    fn restored_partitions_expire_from_their_last_update() {
        let (schema, factory) = timed_factory(false, Some(100));
        let ctx = TaskContext::new(0, 1, 128, Arc::new(JobMetrics::default()));
        let mut op = factory.create(&ctx).unwrap();
        op.process_watermark(Watermark(0), &mut Vec::new()).unwrap();
        op.process_batch(kvs(&schema, &[(1, 10, 0)]), &mut Vec::new())
            .unwrap();
        op.process_watermark(Watermark(90), &mut Vec::new())
            .unwrap();
        op.process_batch(kvs(&schema, &[(2, 10, 0)]), &mut Vec::new())
            .unwrap();
        let snapshot = op.snapshot_state().unwrap().resolve().unwrap();
        let mut op = factory.create(&ctx).unwrap();
        op.restore_state(&snapshot).unwrap();
        op.process_watermark(Watermark(150), &mut Vec::new())
            .unwrap();
        // Key 1 (last updated at 0) is gone: a lower value gets in anew;
        // key 2 (at 90) keeps its higher value and rejects it.
        let mut out = Vec::new();
        op.process_batch(kvs(&schema, &[(1, 3, 0), (2, 3, 0)]), &mut out)
            .unwrap();
        assert_eq!(kv_rows(&out), [(1, 3)]);
    }

    #[test]
    fn compacted_and_restored_rows_keep_their_partitions() {
        // The 2 highest values per key over 40 batches: most rows get in and
        // are pushed out later, so slots fill with dead rows and are
        // compacted; a snapshot halfway, built after the operator went on,
        // is restored into a fresh operator.
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("k", DataType::Int64, false),
            arrow::datatypes::Field::new("v", DataType::Int64, false),
        ]));
        let mut output: Vec<arrow::datatypes::Field> =
            schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        output.push(arrow::datatypes::Field::new(
            "rank",
            DataType::UInt64,
            false,
        ));
        output.push(arrow::datatypes::Field::new("_op", DataType::Int8, false));
        let factory = TopNFactory {
            input: schema.clone(),
            width: 2,
            partition_columns: vec![0],
            order_columns: vec![(
                1,
                SortOptions {
                    descending: true,
                    nulls_first: false,
                },
            )],
            function: RankFunction::RowNumber,
            limit: 2,
            window: None,
            state_ttl_ns: None,
            closes: None,
            output: Arc::new(arrow::datatypes::Schema::new(output)),
            op_column: None,
        };
        let ctx = TaskContext::new(0, 1, 128, Arc::new(JobMetrics::default()));
        let create = || {
            let converter = |t| RowConverter::new(vec![SortField::new(t)]).unwrap();
            let order = RowConverter::new(vec![SortField::new_with_options(
                DataType::Int64,
                factory.order_columns[0].1,
            )])
            .unwrap();
            factory
                .top_n::<()>(&ctx, converter(DataType::Int64), order)
                .unwrap()
        };
        let (mut seed, mut next_value) = (7u64, 0i64);
        let mut best: HashMap<i64, Vec<i64>> = HashMap::new();
        let mut batches = Vec::new();
        for _ in 0..40 {
            let (mut keys, mut values) = (Vec::new(), Vec::new());
            for _ in 0..8192 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Most rows go to 1,000 hot keys; the rest to 20,000 rare
                // ones whose rows stay kept for many batches.
                let key = if seed % 10 == 0 {
                    1000 + (seed >> 33) as i64 % 20_000
                } else {
                    (seed >> 33) as i64 % 1000
                };
                // Values rise with jitter: new rows mostly push old ones out.
                next_value += 1;
                let value = next_value * 4 + (seed >> 20) as i64 % 4;
                keys.push(key);
                values.push(value);
                let kept = best.entry(key).or_default();
                kept.push(value);
                kept.sort_unstable_by(|a, b| b.cmp(a));
                kept.truncate(2);
            }
            batches.push(
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(Int64Array::from(keys)),
                        Arc::new(Int64Array::from(values)),
                    ],
                )
                .unwrap(),
            );
        }
        let mut op = create();
        let mut rows = HashMap::new();
        for (b, batch) in batches.iter().enumerate() {
            let mut out = Vec::new();
            op.process_batch(batch.clone(), &mut out).unwrap();
            apply(&mut rows, &out);
            if b == 20 {
                // The snapshot is built only after the operator has gone
                // on (evicting, compacting and reusing slots): it must
                // still hold the rows of the barrier.
                let snapshot = op.snapshot_state().unwrap();
                for later in &batches[21..26] {
                    op.process_batch(later.clone(), &mut Vec::new()).unwrap();
                }
                let snapshot = snapshot.resolve().unwrap();
                // Its rows' buffer is back, for the next barrier to fill,
                // with room for the state to grow.
                let spare = lock(&op.spare_rows).capacity();
                assert!(spare >= spare_rows_for(snapshot.num_rows()), "{spare}");
                op = create();
                op.restore_state(&snapshot).unwrap();
            }
        }
        // Compaction keeps dead rows within a quarter of the live ones.
        let (held, live) = (op.kept.held_rows(), op.kept.live_rows());
        assert!(live > 20_000, "rare keys keep rows in every slot");
        assert!(
            held - live <= live / 4 + flumen_types::DEFAULT_BATCH_SIZE,
            "{} dead rows",
            held - live
        );
        let mut expected = HashMap::new();
        for (key, kept) in best {
            for (i, value) in kept.into_iter().enumerate() {
                expected.insert((key, value, i as u64 + 1), 1);
            }
        }
        assert_eq!(rows, expected);
    }

    /// An updating TopN's changes, applied in the order they come out to a
    /// table keyed by (partition, rank) as an upsert sink applies them,
    /// always retract the row that rank holds and add to a free rank, and
    /// end with each partition's best rows: the rows a batch added go out
    /// after the other changes, but never before their rank's `-U`.
    #[test]
    fn changes_applied_in_order_retract_each_rank_before_refilling_it() {
        let (schema, mut factory) = timed_factory(false, None);
        factory.limit = 3;
        let mut op = factory
            .create(&TaskContext::new(
                0,
                1,
                128,
                Arc::new(JobMetrics::default()),
            ))
            .unwrap();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut best: HashMap<i64, Vec<i64>> = HashMap::new();
        let mut ranks: HashMap<(i64, u64), i64> = HashMap::new();
        let (mut added, mut shifted) = (0, 0);
        for batch in 0..30 {
            let rows: Vec<(i64, i64, i64)> = (0..400)
                .map(|i| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Distinct values (no ties), rising with jitter, so
                    // that most rows get in and shift the ranks below them.
                    let value = (batch * 400 + i) * 16 + (seed >> 40) as i64 % 2_000;
                    ((seed % 40) as i64, value * 1_000 + i, 0)
                })
                .collect();
            for &(k, v, _) in &rows {
                let kept = best.entry(k).or_default();
                kept.push(v);
                kept.sort_unstable_by(|a, b| b.cmp(a));
                kept.truncate(3);
            }
            let mut out = Vec::new();
            op.process_batch(kvs(&schema, &rows), &mut out).unwrap();
            for b in &out {
                let key = b.column(0).as_primitive::<Int64Type>();
                let value = b.column(1).as_primitive::<Int64Type>();
                let rank = b.column(2).as_primitive::<arrow::datatypes::UInt64Type>();
                let op = b.column(3).as_primitive::<arrow::datatypes::Int8Type>();
                for r in 0..b.num_rows() {
                    let (at, v) = ((key.value(r), rank.value(r)), value.value(r));
                    match RowOp::from_code(op.value(r)).unwrap() {
                        RowOp::Insert => {
                            added += 1;
                            assert_eq!(ranks.insert(at, v), None, "+I into a held rank");
                        }
                        RowOp::UpdateAfter => {
                            shifted += 1;
                            assert_eq!(ranks.insert(at, v), None, "+U before its -U");
                        }
                        RowOp::UpdateBefore | RowOp::Delete => {
                            assert_eq!(ranks.remove(&at), Some(v), "retracts another row");
                        }
                    }
                }
            }
        }
        assert!(
            added >= 120 && shifted > 1_000,
            "{added} inserts, {shifted} updates"
        );
        let expected: HashMap<(i64, u64), i64> = best
            .into_iter()
            .flat_map(|(k, kept)| {
                kept.into_iter()
                    .enumerate()
                    .map(move |(i, v)| ((k, i as u64 + 1), v))
            })
            .collect();
        assert_eq!(ranks, expected);
    }

    #[test]
    fn unchanged_ranks_emit_nothing_and_a_shift_emits_updates() {
        let at = |row| RowRef { slot: 0, row };
        let numbered = |rank, row| Numbered { rank, at: at(row) };
        let before = vec![numbered(1, 10), numbered(2, 11)];
        let after = vec![numbered(1, 12), numbered(2, 10)];
        let mut out = Vec::new();
        diff(&before, &after, &mut out);
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
        diff(&before, &before, &mut out);
        assert!(out.is_empty());
    }
}
