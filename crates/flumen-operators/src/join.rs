//! A symmetric hash join of two streams on equal keys. Each side keeps the
//! batches it has seen; a new batch is probed against the other side's state
//! and then stored. State is freed by watermarks (interval and window joins
//! know when a row can no longer match), by `state_ttl`, and entirely once the
//! other input has ended. A left outer join emits a left row padded with
//! nulls at once and retracts it when its first match arrives.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int8Array, Int64Array, RecordBatch, RecordBatchOptions,
    UInt32Array, new_null_array,
};
use arrow::compute::kernels::aggregate::max;
use arrow::compute::{cast, interleave, take, take_record_batch};
use arrow::datatypes::{DataType, Int8Type, Int64Type, SchemaRef, TimeUnit};
use arrow::row::{Row, RowConverter, Rows, SortField};
use datafusion::common::HashMap;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::physical_expr::PhysicalExpr;
use flumen_runtime::{Admission, JobMetrics, Operator, OperatorFactory, StateGauge, TaskContext};
use flumen_state::{KeyGroupRange, KeyGroups, StateSnapshot, gather_parts, state_column};
use flumen_types::{FlumenError, Result, RowOp, Watermark};

use crate::hash_heads::{HashHeads, NIL};

/// Which rows a join keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// Only pairs that match.
    Inner,
    /// Every left row: matched pairs, or the row padded with nulls while it
    /// has no match (an updating result).
    Left,
    /// Each left row once, when its first match arrives (`EXISTS`, `IN`, or
    /// a join with a side the optimizer made distinct).
    LeftSemi,
    /// Every row of both sides: matched pairs, or a row padded with nulls
    /// on the other side while it has no match (an updating result).
    Full,
    /// Each left row while it has no match (`NOT EXISTS`): emitted when it
    /// arrives unmatched, taken back at its first match, emitted again
    /// when its last match is taken back (an updating result).
    LeftAnti,
}

/// When a stored row of one side can no longer match: once the watermark
/// passes the time in `column` plus `offset_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// A timestamp column of this side's input.
    pub column: usize,
    /// Added to the column's time (a window's length, for window joins).
    pub offset_ns: i64,
}

/// One input of a join.
#[derive(Debug, Clone)]
pub struct JoinSide {
    /// Columns holding the join keys, compared pairwise with the other side's.
    pub keys: Vec<usize>,
    /// The leading columns of the input that go to the output (key columns
    /// computed only for the join follow them).
    pub width: usize,
    /// When this side's rows expire, if the query bounds them.
    pub expiry: Option<Expiry>,
    /// The side's op column when it is updating (inner joins only): a row
    /// taken back leaves the side's state and takes back the joined rows it
    /// made; joined rows carry the op of the row that made them.
    pub op_column: Option<usize>,
    /// The other side holds at most one row per key of this side, and
    /// never takes it back (an append-only side unique by some of its join
    /// keys: an auction's id, for its bids), in an inner join: a row of
    /// this side that matched when it came can match nothing more, so it
    /// is not stored.
    pub settled_by_match: bool,
}

impl JoinSide {
    /// The key columns of a batch of this side.
    fn key_columns(&self, batch: &RecordBatch) -> Vec<ArrayRef> {
        self.keys.iter().map(|&c| batch.column(c).clone()).collect()
    }
}

/// Makes [`HashJoin`] operators; input 0 is the left side, input 1 the right.
pub struct HashJoinFactory {
    /// Inner or left outer.
    pub kind: JoinKind,
    /// The left input.
    pub left: JoinSide,
    /// The right input.
    pub right: JoinSide,
    /// A condition on a joined row (left columns, then right columns)
    /// beyond equal keys (interval bounds, …).
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// The columns the filter sees: the left side's output columns, then
    /// the right side's.
    pub joined: SchemaRef,
    /// Rows are dropped from state this long (event time, by watermark)
    /// after they arrive, whatever else holds them.
    pub state_ttl_ns: Option<i64>,
    /// One input is bounded: once it ends the other side's rows are freed.
    pub bounded_input: bool,
    /// The side (0 left, 1 right) every subtask receives whole (a small
    /// bounded table broadcast to them), the other side's rows being
    /// spread over the subtasks in any way; `None`: both sides hashed by
    /// key. Subtask 0 alone snapshots the broadcast side, and every
    /// subtask restores all of it.
    pub broadcast: Option<usize>,
    /// Left columns, right columns, and the op column for a left join; only
    /// the left columns for a semi join.
    pub output: SchemaRef,
}

impl HashJoinFactory {
    /// Whether state can grow without bound: a side that never expires,
    /// with no TTL and no bounded input to end it.
    pub fn unbounded_state(&self) -> bool {
        self.state_ttl_ns.is_none()
            && !self.bounded_input
            && (self.left.expiry.is_none() || self.right.expiry.is_none())
    }
}

impl OperatorFactory for HashJoinFactory {
    fn describe(&self) -> String {
        let kind = match self.kind {
            JoinKind::Inner => "inner",
            JoinKind::Left => "left",
            JoinKind::Full => "full",
            JoinKind::LeftSemi => "left semi",
            JoinKind::LeftAnti => "left anti",
        };
        let expiry = |s: &JoinSide| match s.expiry {
            Some(e) => format!("until column {} + {} ms", e.column, e.offset_ns / 1_000_000),
            None => "forever".to_string(),
        };
        let mut text = format!(
            "HashJoin ({kind}): keys {:?} = {:?}, left rows kept {}, right rows kept {}",
            self.left.keys,
            self.right.keys,
            expiry(&self.left),
            expiry(&self.right)
        );
        if let Some(f) = &self.filter {
            text.push_str(&format!(", filter {f}"));
        }
        if let Some(side) = self.broadcast {
            text.push_str(&format!(", {} side broadcast", ["left", "right"][side]));
        }
        for (name, side) in [("left", &self.left), ("right", &self.right)] {
            if side.op_column.is_some() {
                text.push_str(&format!(", {name} input updating"));
            }
        }
        if let Some(ttl) = self.state_ttl_ns {
            text.push_str(&format!(", state_ttl {} ms", ttl / 1_000_000));
        }
        if self.unbounded_state() {
            text.push_str(" [UNBOUNDED STATE: set state_ttl to bound it]");
        }
        text
    }

    /// An inner join stores a shared batch of an appending side with its
    /// positions.
    fn reads_shared_rows(&self, input: usize) -> bool {
        let side = if input == 0 { &self.left } else { &self.right };
        self.kind == JoinKind::Inner && side.op_column.is_none()
    }

    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        let state = |side: &JoinSide| SideState {
            spec: side.clone(),
            slots: Vec::new(),
            live: 0,
            bytes: 0,
            heads: HashHeads::default(),
            entries: Vec::new(),
            dead_entries: 0,
            closed: false,
            row_converter: None,
        };
        Ok(Box::new(HashJoin {
            kind: self.kind,
            sides: [state(&self.left), state(&self.right)],
            filter: self
                .filter
                .as_ref()
                .map(|f| PairFilter::new(f, &self.joined))
                .transpose()?,
            state_ttl_ns: self.state_ttl_ns,
            joined: self.joined.clone(),
            output: self.output.clone(),
            watermark: i64::MIN,
            converter: None,
            key_groups: ctx.key_groups,
            broadcast: self.broadcast,
            subtask: ctx.subtask,
            metrics: ctx.metrics.clone(),
            gauge: StateGauge::default(),
        }))
    }
}

/// How many rows ahead a batch prefetches its rows' index slots.
const PREFETCH_AHEAD: usize = 16;
const HASH_STATE: RandomState = RandomState::with_seed(0x10_1e_d5);

/// One stored batch of a side.
struct Slot {
    batch: RecordBatch,
    /// The rows of `batch` this subtask holds, when a hash exchange shared
    /// the batch between subtasks instead of copying each its rows; the
    /// other fields' rows are positions in it. `None`: every row.
    own: Option<UInt32Array>,
    keys: Rows,
    hashes: Vec<u64>,
    /// Per row: how many right rows it matched (left joins only). Shared
    /// with snapshots taken since it last changed (copied on write).
    matched: Arc<Vec<u32>>,
    /// The slot can be freed once the watermark passes this (ns).
    expires_at: i64,
    /// For an updating side: what it takes to take rows back.
    retractable: Option<Retractable>,
}

/// The rows of an updating side's slot as `arrow-row` rows of the side's
/// columns (a row taken back is found by its values), and which rows are
/// gone.
struct Retractable {
    rows: Rows,
    /// Shared with snapshots taken since a row was last taken back.
    gone: Arc<Vec<bool>>,
    /// Rows not gone.
    alive: usize,
}

impl Slot {
    /// Its share of the batch's bytes (a shared batch counted once over
    /// the subtasks that hold its rows), and what it keeps beside.
    fn bytes(&self) -> usize {
        let batch = self.batch.get_array_memory_size();
        let batch = match &self.own {
            Some(own) => batch * own.len() / self.batch.num_rows().max(1) + own.len() * 4,
            None => batch,
        };
        batch
            + self.keys.size()
            + self.hashes.capacity() * 8
            + self.matched.capacity() * 4
            + self
                .retractable
                .as_ref()
                .map_or(0, |r| r.rows.size() + r.gone.len())
    }

    /// How many rows it holds.
    fn rows(&self) -> usize {
        self.own
            .as_ref()
            .map_or(self.batch.num_rows(), |own| own.len())
    }

    /// The row of `batch` that is row `row` of the slot.
    fn batch_row(&self, row: usize) -> usize {
        self.own.as_ref().map_or(row, |own| own.value(row) as usize)
    }

    /// Whether row `row` was taken back.
    fn gone(&self, row: usize) -> bool {
        self.retractable.as_ref().is_some_and(|r| r.gone[row])
    }
}

/// A stored row, chained to the previous row with the same key hash.
struct Entry {
    slot: u32,
    row: u32,
    next: u32,
}

struct SideState {
    spec: JoinSide,
    slots: Vec<Option<Slot>>,
    live: usize,
    /// Bytes of the live slots.
    bytes: usize,
    /// Key hash to the newest entry with that hash.
    heads: HashHeads,
    entries: Vec<Entry>,
    /// Entries whose slot was freed; the index is rebuilt when they dominate.
    dead_entries: usize,
    /// The other input has ended: this side's rows can never match again.
    closed: bool,
    /// Encodes an updating side's rows to find the ones taken back.
    row_converter: Option<RowConverter>,
}

impl SideState {
    fn store(&mut self, slot: Slot) {
        self.bytes += slot.bytes();
        let id = self.slots.len() as u32;
        self.heads.reserve(slot.hashes.len());
        let homes: Vec<usize> = slot.hashes.iter().map(|&h| self.heads.home(h)).collect();
        for (row, &h) in slot.hashes.iter().enumerate() {
            if let Some(&ahead) = homes.get(row + PREFETCH_AHEAD) {
                self.heads.prefetch(ahead);
            }
            if h == NULL_KEY || slot.gone(row) {
                continue;
            }
            let head = self.heads.entry(homes[row], h);
            self.entries.push(Entry {
                slot: id,
                row: row as u32,
                next: *head,
            });
            *head = (self.entries.len() - 1) as u32;
        }
        self.slots.push(Some(slot));
        self.live += 1;
    }

    /// Frees every slot that expired by `watermark`.
    fn expire(&mut self, watermark: i64) {
        let mut freed = 0;
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|s| s.expires_at < watermark) {
                let s = slot.take().expect("checked above");
                freed += s.hashes.len();
                self.bytes -= s.bytes();
                self.live -= 1;
            }
        }
        if freed > 0 {
            self.dead_entries += freed;
            self.compact();
        }
    }

    fn clear(&mut self) {
        self.slots.clear();
        self.live = 0;
        self.bytes = 0;
        self.heads.clear();
        self.entries.clear();
        self.dead_entries = 0;
    }

    /// The side's columns of `batch` as `arrow-row` rows (updating sides).
    fn rows_of(&mut self, batch: &RecordBatch) -> Result<Rows> {
        encode(&mut self.row_converter, &batch.columns()[..self.spec.width])
    }

    /// Takes back one stored row with key `key` (hash `hash`) and values
    /// `row`; false when no such row is held. A slot left with no row is
    /// freed.
    fn take_back(&mut self, hash: u64, key: Row<'_>, row: Row<'_>) -> bool {
        let Some(head) = self.heads.get(self.heads.home(hash), hash) else {
            return false;
        };
        let mut e = head;
        while e != NIL {
            let entry = &self.entries[e as usize];
            let (slot_id, at) = (entry.slot as usize, entry.row as usize);
            e = entry.next;
            let Some(slot) = &mut self.slots[slot_id] else {
                continue;
            };
            let Some(r) = &mut slot.retractable else {
                continue;
            };
            if r.gone[at] || slot.keys.row(at) != key || r.rows.row(at) != row {
                continue;
            }
            Arc::make_mut(&mut r.gone)[at] = true;
            r.alive -= 1;
            self.dead_entries += 1;
            if r.alive == 0 {
                let freed = self.slots[slot_id].take().expect("checked above");
                self.bytes -= freed.bytes();
                self.live -= 1;
            }
            return true;
        }
        false
    }

    /// Rebuilds the index without freed slots once they are most of it.
    fn compact(&mut self) {
        if self.dead_entries * 2 < self.entries.len() {
            return;
        }
        let slots: Vec<Slot> = self.slots.drain(..).flatten().collect();
        self.clear();
        for slot in slots {
            self.store(slot);
        }
    }
}

/// `columns` as `arrow-row` rows, with `converter` made from the first
/// columns it sees (every batch of a side has the same types).
fn encode(converter: &mut Option<RowConverter>, columns: &[ArrayRef]) -> Result<Rows> {
    if converter.is_none() {
        let fields = columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect();
        *converter = Some(RowConverter::new(fields)?);
    }
    let converter = converter.as_ref().expect("created above");
    Ok(converter.convert_columns(columns)?)
}

/// Marks a row whose key has a null: it matches nothing.
const NULL_KEY: u64 = 0x6e75_6c6c_6b65_7921;

/// The running join of one subtask.
pub struct HashJoin {
    kind: JoinKind,
    sides: [SideState; 2],
    filter: Option<PairFilter>,
    state_ttl_ns: Option<i64>,
    joined: SchemaRef,
    output: SchemaRef,
    watermark: i64,
    converter: Option<RowConverter>,
    /// How keys map to key groups, and which this subtask owns.
    key_groups: KeyGroups,
    /// The side every subtask holds whole ([`HashJoinFactory::broadcast`]).
    broadcast: Option<usize>,
    /// This subtask's index: subtask 0 snapshots the broadcast side.
    subtask: usize,
    metrics: Arc<JobMetrics>,
    gauge: StateGauge,
}

fn err(e: impl std::fmt::Display) -> FlumenError {
    FlumenError::execution(format!("join: {e}"))
}

/// The residual filter over only the joined columns it reads.
struct PairFilter {
    /// The filter, its columns renumbered into `columns`.
    expr: Arc<dyn PhysicalExpr>,
    /// The joined columns it reads, ascending.
    columns: Vec<usize>,
    /// Their schema.
    schema: SchemaRef,
}

impl PairFilter {
    fn new(filter: &Arc<dyn PhysicalExpr>, joined: &SchemaRef) -> Result<Self> {
        let (expr, columns) = crate::filter::on_used_columns(filter).map_err(err)?;
        let schema = Arc::new(joined.project(&columns)?);
        Ok(PairFilter {
            expr,
            columns,
            schema,
        })
    }
}

/// Where the rows of some matched pairs are read from, worked out once for
/// all the columns gathered: the probe rows, and the stored rows as
/// (index into `slots`, row) for `interleave`.
struct PairRows {
    probe: UInt32Array,
    /// The stored slots the pairs use, each once.
    slots: Vec<usize>,
    stored: Vec<(usize, usize)>,
}

impl PairRows {
    /// The rows of the matches `m`, whose stored rows are in `stored`.
    fn of(m: &Matches, stored: &SideState) -> Self {
        let mut local: HashMap<usize, usize> = HashMap::new();
        let mut slots = Vec::new();
        // Pairs come in runs of one stored slot (rows stored together
        // match together): the map is read once per run.
        let mut last = (usize::MAX, 0, None);
        let stored = m
            .stored
            .iter()
            .map(|&(slot, row)| {
                if slot != last.0 {
                    let n = *local.entry(slot).or_insert_with(|| {
                        slots.push(slot);
                        slots.len() - 1
                    });
                    let own = stored.slots[slot].as_ref().and_then(|s| s.own.as_ref());
                    last = (slot, n, own);
                }
                (last.1, last.2.map_or(row, |own| own.value(row) as usize))
            })
            .collect();
        PairRows {
            probe: UInt32Array::from(m.probe.clone()),
            slots,
            stored,
        }
    }
}

/// Pairs of (probe row, stored slot, stored row) that matched.
#[derive(Default)]
struct Matches {
    probe: Vec<u32>,
    stored: Vec<(usize, usize)>,
}

/// A batch to store, the rows of it the slot holds (`None`: all), and
/// their keys and hashes.
type Unsettled = (RecordBatch, Option<UInt32Array>, Rows, Vec<u64>);

/// What a side settled by a match stores of a batch (of rows `own` of it):
/// when the rows that no row of `matched` (rows of the batch) is are at
/// most half of its rows here, those rows copied out with their keys and hashes,
/// so that the batch is not kept for a few rows; otherwise all of it.
/// `None` when every row matched.
fn unsettled(
    converter: &RowConverter,
    batch: RecordBatch,
    own: Option<UInt32Array>,
    keys: Rows,
    hashes: Vec<u64>,
    matched: &[u32],
) -> Result<Option<Unsettled>> {
    if matched.is_empty() {
        return Ok(Some((batch, own, keys, hashes)));
    }
    let mut settled = vec![false; batch.num_rows()];
    for &r in matched {
        settled[r as usize] = true;
    }
    let in_batch = |i: usize| own.as_ref().map_or(i as u32, |own| own.value(i));
    let keep: Vec<usize> = (0..hashes.len())
        .filter(|&i| !settled[in_batch(i) as usize])
        .collect();
    if keep.is_empty() {
        return Ok(None);
    }
    // Stored as they are, the settled rows are never matched again. Kept
    // for more than half of this subtask's rows, the batch stays anyway (a
    // shared batch, for the other subtasks' rows too); copying them would
    // cost more than it frees.
    if keep.len() * 2 > hashes.len() {
        return Ok(Some((batch, own, keys, hashes)));
    }
    let bytes = keep.iter().map(|&i| keys.row(i).as_ref().len()).sum();
    let mut kept_keys = converter.empty_rows(keep.len(), bytes);
    for &i in &keep {
        kept_keys.push(keys.row(i));
    }
    let rows = UInt32Array::from_iter_values(keep.iter().map(|&i| in_batch(i)));
    let copied = take_record_batch(&batch, &rows)?;
    let kept_hashes = keep.iter().map(|&i| hashes[i]).collect();
    Ok(Some((copied, None, kept_keys, kept_hashes)))
}

impl Matches {
    /// The pairs `mask` holds true for.
    fn kept(&self, mask: &BooleanArray) -> Matches {
        let mut kept = Matches::default();
        for i in 0..self.probe.len() {
            if mask.is_valid(i) && mask.value(i) {
                kept.probe.push(self.probe[i]);
                kept.stored.push(self.stored[i]);
            }
        }
        kept
    }
}

impl HashJoin {
    fn report_state(&mut self) {
        let bytes = self
            .sides
            .iter()
            .map(|s| {
                s.bytes
                    + s.entries.capacity() * std::mem::size_of::<Entry>()
                    + s.heads.capacity() * 16
            })
            .sum();
        self.metrics.report_state(&mut self.gauge, bytes);
    }

    fn key_rows(&mut self, keys: &[ArrayRef]) -> Result<Rows> {
        encode(&mut self.converter, keys)
    }

    fn hashes(keys: &[ArrayRef], rows: usize) -> Result<Vec<u64>> {
        let mut hashes = vec![0; rows];
        create_hashes(keys, &HASH_STATE, &mut hashes).map_err(err)?;
        for k in keys {
            if let Some(nulls) = k.logical_nulls() {
                for (h, valid) in hashes.iter_mut().zip(nulls.iter()) {
                    if !valid {
                        *h = NULL_KEY;
                    }
                }
            }
        }
        Ok(hashes)
    }

    /// When a slot of `batch` (of rows `own` of it, when given) on `side`
    /// can be freed.
    fn expires_at(
        &self,
        side: usize,
        batch: &RecordBatch,
        own: Option<&UInt32Array>,
    ) -> Result<i64> {
        let by_ttl = self
            .state_ttl_ns
            .map_or(i64::MAX, |ttl| self.watermark.max(0).saturating_add(ttl));
        let by_column = match self.sides[side].spec.expiry {
            Some(e) => {
                let column = match own {
                    Some(own) => take(batch.column(e.column), own, None)?,
                    None => batch.column(e.column).clone(),
                };
                let times = cast(
                    &cast(&column, &DataType::Timestamp(TimeUnit::Nanosecond, None))?,
                    &DataType::Int64,
                )?;
                max(times.as_primitive::<Int64Type>())
                    .map_or(i64::MIN, |t| t.saturating_add(e.offset_ns))
            }
            None => i64::MAX,
        };
        Ok(by_ttl.min(by_column))
    }

    /// Finds the stored rows of `other` whose key equals each probe row's.
    fn probe(other: &SideState, keys: &Rows, hashes: &[u64]) -> Matches {
        let mut m = Matches::default();
        if other.live == 0 {
            return m;
        }
        let homes: Vec<usize> = hashes.iter().map(|&h| other.heads.home(h)).collect();
        for (row, &h) in hashes.iter().enumerate() {
            if let Some(&ahead) = homes.get(row + PREFETCH_AHEAD) {
                other.heads.prefetch(ahead);
            }
            if h == NULL_KEY {
                continue;
            }
            let Some(head) = other.heads.get(homes[row], h) else {
                continue;
            };
            let mut e = head;
            while e != NIL {
                let entry = &other.entries[e as usize];
                if let Some(slot) = &other.slots[entry.slot as usize]
                    && !slot.gone(entry.row as usize)
                    && slot.keys.row(entry.row as usize) == keys.row(row)
                {
                    m.probe.push(row as u32);
                    m.stored.push((entry.slot as usize, entry.row as usize));
                }
                e = entry.next;
            }
        }
        m
    }

    /// The joined rows of the matches (left columns, then right columns),
    /// after the residual filter and those `next` admits (an inner join's
    /// appended rows only: the others' pairs are counted); returns the
    /// rows and the surviving matches. Left joins tag the rows as inserts;
    /// semi joins build no rows here.
    fn joined(
        &self,
        side: usize,
        batch: &RecordBatch,
        m: Matches,
        next: Option<&dyn Admission>,
    ) -> Result<(Option<RecordBatch>, Matches)> {
        let build = !matches!(self.kind, JoinKind::LeftSemi | JoinKind::LeftAnti);
        let (joined, m) = self.matched_pairs(side, batch, m, build, next)?;
        let Some(joined) = joined else {
            return Ok((None, m));
        };
        Ok(match self.kind {
            JoinKind::LeftSemi | JoinKind::LeftAnti => (None, m),
            JoinKind::Inner if self.output.fields().len() == self.joined.fields().len() => {
                (Some(joined), m)
            }
            // An updating result: each joined row has the op of the row
            // that made it.
            _ => {
                let ops: ArrayRef = match self.sides[side].spec.op_column {
                    Some(c) => take(batch.column(c), &UInt32Array::from(m.probe.clone()), None)?,
                    None => Arc::new(Int8Array::from(vec![
                        RowOp::Insert as i8;
                        joined.num_rows()
                    ])),
                };
                let mut columns = joined.columns().to_vec();
                columns.push(ops);
                (Some(RecordBatch::try_new(self.output.clone(), columns)?), m)
            }
        })
    }

    /// The pairs of `m` that pass the residual filter, and their joined
    /// rows (left columns, then right columns) when `build`. The filter is
    /// evaluated on the columns it reads first, and then `next`, the
    /// operator the rows go to, is asked which it admits, so the other
    /// columns (an auction's strings) are copied only for the pairs kept.
    fn matched_pairs(
        &self,
        side: usize,
        batch: &RecordBatch,
        m: Matches,
        build: bool,
        next: Option<&dyn Admission>,
    ) -> Result<(Option<RecordBatch>, Matches)> {
        if m.probe.is_empty() {
            return Ok((None, m));
        }
        // Where the pairs' rows are read from, kept for the joined rows when
        // the filter drops no pair.
        let mut rows = None;
        let m = match &self.filter {
            Some(filter) => {
                let n = m.probe.len();
                let all_pairs = PairRows::of(&m, &self.sides[1 - side]);
                let columns = self.pair_columns(side, batch, &all_pairs, &filter.columns)?;
                let options = RecordBatchOptions::new().with_row_count(Some(n));
                let narrow =
                    RecordBatch::try_new_with_options(filter.schema.clone(), columns, &options)?;
                let mask = filter
                    .expr
                    .evaluate(&narrow)
                    .and_then(|v| v.into_array(n))
                    .map_err(err)?;
                let mask: &BooleanArray = mask.as_boolean();
                if mask.null_count() == 0 && mask.true_count() == n {
                    rows = Some(all_pairs);
                    m
                } else {
                    m.kept(mask)
                }
            }
            None => m,
        };
        if m.probe.is_empty() || !build {
            return Ok((None, m));
        }
        // The operator the joined rows go to refuses some: only the rows it
        // admits are built.
        let m = match next {
            Some(next) => {
                let pairs = rows
                    .take()
                    .unwrap_or_else(|| PairRows::of(&m, &self.sides[1 - side]));
                let columns = self.pair_columns(side, batch, &pairs, next.admission_columns())?;
                match next.admits(&columns)? {
                    Some(mask) => m.kept(&mask),
                    None => {
                        rows = Some(pairs);
                        m
                    }
                }
            }
            None => m,
        };
        if m.probe.is_empty() {
            return Ok((None, m));
        }
        let rows = rows.unwrap_or_else(|| PairRows::of(&m, &self.sides[1 - side]));
        let all: Vec<usize> = (0..self.joined.fields().len()).collect();
        let columns = self.pair_columns(side, batch, &rows, &all)?;
        Ok((Some(RecordBatch::try_new(self.joined.clone(), columns)?), m))
    }

    /// The joined columns `columns` (indices into the left columns, then
    /// the right columns) of the pairs `rows` reads: probe rows of `batch`,
    /// on `side`, and stored rows of the other side.
    fn pair_columns(
        &self,
        side: usize,
        batch: &RecordBatch,
        rows: &PairRows,
        columns: &[usize],
    ) -> Result<Vec<ArrayRef>> {
        let other = &self.sides[1 - side];
        let left_width = self.sides[0].spec.width;
        columns
            .iter()
            .map(|&c| {
                let (from, c) = if c < left_width {
                    (0, c)
                } else {
                    (1, c - left_width)
                };
                if from == side {
                    return Ok(take(batch.column(c), &rows.probe, None)?);
                }
                let arrays: Vec<&dyn Array> = rows
                    .slots
                    .iter()
                    .map(|&s| {
                        other.slots[s]
                            .as_ref()
                            .expect("matched slots are live")
                            .batch
                            .column(c)
                            .as_ref()
                    })
                    .collect();
                Ok(interleave(&arrays, &rows.stored)?)
            })
            .collect()
    }

    /// Rows `rows` of a left batch, alone (a semi join's output), tagged
    /// `op` when the result is updating.
    fn left_rows(&self, left: &RecordBatch, rows: &[u32], op: RowOp) -> Result<RecordBatch> {
        let indices = UInt32Array::from(rows.to_vec());
        let width = self.sides[0].spec.width;
        let mut columns: Vec<ArrayRef> = left.columns()[..width]
            .iter()
            .map(|c| take(c, &indices, None))
            .collect::<std::result::Result<_, _>>()?;
        if self.output.fields().len() > width {
            columns.push(Arc::new(Int8Array::from(vec![op as i8; rows.len()])));
        }
        Ok(RecordBatch::try_new(self.output.clone(), columns)?)
    }

    /// Rows of `side` padded with nulls for the other side's columns,
    /// tagged `op`.
    fn padded(
        &self,
        side: usize,
        batch: &RecordBatch,
        rows: &[u32],
        op: RowOp,
    ) -> Result<RecordBatch> {
        let indices = UInt32Array::from(rows.to_vec());
        let left_width = self.sides[0].spec.width;
        let fields = self.output.fields();
        let (own, nulls) = if side == 0 {
            (0..left_width, left_width..fields.len() - 1)
        } else {
            (left_width..fields.len() - 1, 0..left_width)
        };
        let mut columns: Vec<ArrayRef> = vec![new_null_array(&DataType::Null, 0); fields.len() - 1];
        for (i, c) in own.zip(batch.columns()) {
            columns[i] = take(c, &indices, None)?;
        }
        for i in nulls {
            columns[i] = new_null_array(fields[i].data_type(), rows.len());
        }
        columns.push(Arc::new(Int8Array::from(vec![op as i8; rows.len()])));
        Ok(RecordBatch::try_new(self.output.clone(), columns)?)
    }

    /// Whether `side` keeps a match count per stored row: the left side of
    /// LEFT, semi and anti joins, both sides of a FULL join.
    fn counts(&self, side: usize) -> bool {
        match self.kind {
            JoinKind::Inner => false,
            JoinKind::Full => true,
            _ => side == 0,
        }
    }

    /// What a row of `side` getting its first match (`first`) or losing its
    /// last one emits: its padded row taken back or added again (LEFT and
    /// FULL joins), or the row itself added or taken back (semi and anti).
    fn match_change(
        &self,
        side: usize,
        batch: &RecordBatch,
        rows: &[u32],
        first: bool,
    ) -> Result<RecordBatch> {
        let (padded_op, semi_op, anti_op) = if first {
            (RowOp::Delete, RowOp::Insert, RowOp::Delete)
        } else {
            (RowOp::Insert, RowOp::Delete, RowOp::Insert)
        };
        match self.kind {
            JoinKind::LeftSemi => self.left_rows(batch, rows, semi_op),
            JoinKind::LeftAnti => self.left_rows(batch, rows, anti_op),
            _ => self.padded(side, batch, rows, padded_op),
        }
    }

    /// Joins a batch of one side. An updating side's rows taken back go
    /// first (leaving its state, taking back their joined rows), then its
    /// additions; a row taken back that was added in the same batch is
    /// found once the additions are stored.
    fn process(
        &mut self,
        side: usize,
        batch: RecordBatch,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let Some(op_column) = self.sides[side].spec.op_column else {
            return self.add_rows(side, batch, None, None, out);
        };
        let ops = batch.column(op_column).as_primitive::<Int8Type>();
        let (mut additions, mut retractions) = (Vec::new(), Vec::new());
        for (row, &op) in ops.values().iter().enumerate() {
            if RowOp::from_code(op).is_some_and(RowOp::is_addition) {
                additions.push(row as u32);
            } else {
                retractions.push(row as u32);
            }
        }
        if retractions.is_empty() {
            return self.add_rows(side, batch, None, None, out);
        }
        let taken = take_record_batch(&batch, &UInt32Array::from(retractions))?;
        let missing = self.take_back(side, taken, false, out)?;
        if !additions.is_empty() {
            let added = take_record_batch(&batch, &UInt32Array::from(additions))?;
            self.add_rows(side, added, None, None, out)?;
        }
        if let Some(missing) = missing {
            // Rows not held (or dropped by state_ttl) still take back what
            // they joined, as in Flink.
            self.take_back(side, missing, true, out)?;
        }
        Ok(())
    }

    /// Takes the rows of `batch` back from `side`'s state and emits the
    /// joined rows they made, with their ops. Rows not held are returned
    /// for later, unless `always` (or the side's state was dropped because
    /// the other input ended): then their joined rows are taken back too.
    fn take_back(
        &mut self,
        side: usize,
        batch: RecordBatch,
        always: bool,
        out: &mut Vec<RecordBatch>,
    ) -> Result<Option<RecordBatch>> {
        let always = always || self.sides[side].closed;
        let keys = self.sides[side].spec.key_columns(&batch);
        let key_rows = self.key_rows(&keys)?;
        let hashes = Self::hashes(&keys, batch.num_rows())?;
        let values = self.sides[side].rows_of(&batch)?;
        let (mut found, mut missing) = (Vec::new(), Vec::new());
        for (row, &hash) in hashes.iter().enumerate() {
            let held = hash != NULL_KEY
                && self.sides[side].take_back(hash, key_rows.row(row), values.row(row));
            if held || always {
                &mut found
            } else {
                &mut missing
            }
            .push(row as u32);
        }
        if !found.is_empty() {
            let gone = take_record_batch(&batch, &UInt32Array::from(found))?;
            let keys = self.sides[side].spec.key_columns(&gone);
            let key_rows = self.key_rows(&keys)?;
            let hashes = Self::hashes(&keys, gone.num_rows())?;
            let matches = Self::probe(&self.sides[1 - side], &key_rows, &hashes);
            let (joined, matches) = self.joined(side, &gone, matches, None)?;
            if let Some(joined) = joined {
                out.push(joined);
            }
            if self.kind != JoinKind::Inner {
                self.after_take_back(side, &gone, &matches, out)?;
            }
        }
        Ok((!missing.is_empty())
            .then(|| take_record_batch(&batch, &UInt32Array::from(missing)))
            .transpose()?)
    }

    /// What rows taken back change besides their joined rows. A row of a
    /// counting side (see [`Self::counts`]) without a match takes back its
    /// padded row (LEFT, FULL) or its output (anti); one with a match takes
    /// back its output (semi). Rows of the other side that lose their last
    /// match to it emit what [`Self::match_change`] says.
    fn after_take_back(
        &mut self,
        side: usize,
        gone: &RecordBatch,
        matches: &Matches,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        if self.counts(side) {
            let mut matched = vec![false; gone.num_rows()];
            for &r in &matches.probe {
                matched[r as usize] = true;
            }
            let wanted = self.kind == JoinKind::LeftSemi;
            let affected: Vec<u32> = (0..gone.num_rows() as u32)
                .filter(|&r| matched[r as usize] == wanted)
                .collect();
            if !affected.is_empty() {
                if matches!(self.kind, JoinKind::LeftSemi | JoinKind::LeftAnti) {
                    out.push(self.left_rows(gone, &affected, RowOp::Delete)?);
                } else {
                    let ops = gone
                        .column(self.sides[side].spec.op_column.expect("an updating side"))
                        .as_primitive::<Int8Type>();
                    for op in [RowOp::UpdateBefore, RowOp::Delete] {
                        let rows: Vec<u32> = affected
                            .iter()
                            .copied()
                            .filter(|&r| ops.value(r as usize) == op as i8)
                            .collect();
                        if !rows.is_empty() {
                            out.push(self.padded(side, gone, &rows, op)?);
                        }
                    }
                }
            }
        }
        if self.counts(1 - side) {
            self.count_matches(1 - side, &matches.stored, false, out)?;
        }
        Ok(())
    }

    /// Counts one more (`added`) or one fewer match for each stored row of
    /// `side` in `stored`, and emits what [`Self::match_change`] says for
    /// the rows that got their first match or lost their last.
    fn count_matches(
        &mut self,
        side: usize,
        stored: &[(usize, usize)],
        added: bool,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let state = &mut self.sides[side];
        let mut changed: HashMap<usize, Vec<u32>> = HashMap::new();
        for &(slot, row) in stored {
            let s = state.slots[slot].as_mut().expect("matched slots are live");
            let counts = Arc::make_mut(&mut s.matched);
            let before = counts[row];
            counts[row] = if added {
                before + 1
            } else {
                before.saturating_sub(1)
            };
            if (before == 0) != (counts[row] == 0) {
                changed.entry(slot).or_default().push(row as u32);
            }
        }
        let mut slots: Vec<_> = changed.into_iter().collect();
        slots.sort_unstable_by_key(|(s, _)| *s);
        for (slot, rows) in slots {
            let slot = self.sides[side].slots[slot]
                .as_ref()
                .expect("matched slots are live");
            let rows: Vec<u32> = rows
                .iter()
                .map(|&r| slot.batch_row(r as usize) as u32)
                .collect();
            out.push(self.match_change(side, &slot.batch, &rows, added)?);
        }
        Ok(())
    }

    /// Joins rows that add to `side` (rows `own` of `batch`, a batch shared
    /// with other subtasks, when given: inner joins only) and stores them.
    fn add_rows(
        &mut self,
        side: usize,
        batch: RecordBatch,
        own: Option<UInt32Array>,
        next: Option<&dyn Admission>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        debug_assert!(own.is_none() || self.kind == JoinKind::Inner);
        let n = own.as_ref().map_or(batch.num_rows(), |own| own.len());
        if n == 0 {
            return Ok(());
        }
        let mut keys = self.sides[side].spec.key_columns(&batch);
        if let Some(own) = &own {
            for k in &mut keys {
                *k = take(k, own, None)?;
            }
        }
        let rows = self.key_rows(&keys)?;
        let hashes = Self::hashes(&keys, n)?;
        let mut matches = Self::probe(&self.sides[1 - side], &rows, &hashes);
        if let Some(own) = &own {
            // Probe rows as rows of the batch, which the joined rows read.
            for r in &mut matches.probe {
                *r = own.value(*r as usize);
            }
        }
        let (joined, matches) = self.joined(side, &batch, matches, next)?;
        // The converter exists once `key_rows` encoded a batch's keys.
        let (batch, own, rows, hashes) = if self.sides[side].spec.settled_by_match
            && let Some(converter) = &self.converter
        {
            match unsettled(converter, batch, own, rows, hashes, &matches.probe)? {
                Some(unsettled) => unsettled,
                None => {
                    out.extend(joined);
                    return Ok(());
                }
            }
        } else {
            (batch, own, rows, hashes)
        };
        let mut matched = Vec::new();
        if self.counts(side) {
            matched = vec![0u32; batch.num_rows()];
            for &r in &matches.probe {
                matched[r as usize] += 1;
            }
            let wanted = if self.kind == JoinKind::LeftSemi {
                1
            } else {
                0
            };
            let rows: Vec<u32> = (0..batch.num_rows() as u32)
                .filter(|&r| matched[r as usize].min(1) == wanted)
                .collect();
            if !rows.is_empty() {
                out.push(match self.kind {
                    JoinKind::Left | JoinKind::Full => {
                        self.padded(side, &batch, &rows, RowOp::Insert)?
                    }
                    _ => self.left_rows(&batch, &rows, RowOp::Insert)?,
                });
            }
        }
        if self.counts(1 - side) {
            // A stored row's first match retracts its null-padded row (LEFT,
            // FULL), emits it (semi) or takes it back (anti).
            self.count_matches(1 - side, &matches.stored, true, out)?;
        }
        if let Some(j) = joined {
            out.push(j);
        }
        if !self.sides[side].closed {
            let expires_at = self.expires_at(side, &batch, own.as_ref())?;
            if expires_at >= self.watermark {
                let retractable = self.retractable(side, &batch)?;
                self.sides[side].store(Slot {
                    batch,
                    own,
                    keys: rows,
                    hashes,
                    matched: Arc::new(matched),
                    expires_at,
                    retractable,
                });
            }
        }
        Ok(())
    }

    /// What an updating side keeps of a stored batch to take rows back.
    fn retractable(&mut self, side: usize, batch: &RecordBatch) -> Result<Option<Retractable>> {
        if self.sides[side].spec.op_column.is_none() {
            return Ok(None);
        }
        Ok(Some(Retractable {
            rows: self.sides[side].rows_of(batch)?,
            gone: Arc::new(vec![false; batch.num_rows()]),
            alive: batch.num_rows(),
        }))
    }
}

/// A stored slot as a snapshot holds it until its rows are built.
struct SlotRows {
    batch: RecordBatch,
    own: Option<UInt32Array>,
    matched: Arc<Vec<u32>>,
    gone: Option<Arc<Vec<bool>>>,
    expires_at: i64,
}

impl SlotRows {
    /// The rows not taken back, with their match counts and expiry.
    fn columns(&self) -> Result<Vec<ArrayRef>> {
        // The slot's own rows of a shared batch, to which the rest refers.
        let all = match &self.own {
            Some(own) => take_record_batch(&self.batch, own)?,
            None => self.batch.clone(),
        };
        let kept: Option<Vec<u32>> = self
            .gone
            .as_ref()
            .filter(|g| g.contains(&true))
            .map(|g| (0..g.len() as u32).filter(|&r| !g[r as usize]).collect());
        let batch = match &kept {
            None => all,
            Some(kept) => take_record_batch(&all, &UInt32Array::from(kept.clone()))?,
        };
        let rows = batch.num_rows();
        let matched = match &kept {
            _ if self.matched.is_empty() => UInt32Array::from(vec![0; rows]),
            None => UInt32Array::from(self.matched.as_ref().clone()),
            Some(kept) => kept.iter().map(|&r| self.matched[r as usize]).collect(),
        };
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(matched));
        columns.push(Arc::new(Int64Array::from(vec![self.expires_at; rows])));
        Ok(columns)
    }
}

impl HashJoin {
    /// One side's stored rows as snapshot columns: the input's columns, how
    /// many matches each row has had, and when its slot expires. Only the
    /// slots are shared here (no copy); the columns are built when the
    /// snapshot is resolved, beside processing.
    fn side_state(&self, side: usize, snapshot: &mut StateSnapshot) {
        let state = &self.sides[side];
        let slots: Vec<SlotRows> = state
            .slots
            .iter()
            .flatten()
            .map(|slot| SlotRows {
                batch: slot.batch.clone(),
                own: slot.own.clone(),
                matched: slot.matched.clone(),
                gone: slot.retractable.as_ref().map(|r| r.gone.clone()),
                expires_at: slot.expires_at,
            })
            .collect();
        let rows = state
            .slots
            .iter()
            .flatten()
            .map(|s| s.retractable.as_ref().map_or(s.rows(), |r| r.alive))
            .sum();
        snapshot.add_deferred(
            side,
            rows,
            &state.spec.keys,
            self.key_groups.max_parallelism,
            move || slots.iter().map(SlotRows::columns).collect(),
        );
    }

    /// Stores the snapshot rows of one side again, one slot per expiry
    /// time, gathered from the stored parts (never one copy of them all).
    fn restore_side(&mut self, side: usize, parts: &[RecordBatch]) -> Result<()> {
        let Some(first) = parts.first() else {
            return Ok(());
        };
        let width = first.num_columns().checked_sub(2).ok_or_else(|| {
            flumen_types::FlumenError::state(format!(
                "state table {side} has {} columns, fewer than a join side stores",
                first.num_columns()
            ))
        })?;
        let mut by_expiry: std::collections::BTreeMap<i64, Vec<(usize, usize)>> =
            Default::default();
        for (p, rows) in parts.iter().enumerate() {
            let expiry = state_column::<Int64Array>(rows, side, width + 1)?;
            // The match counts: checked here, read per slot below.
            state_column::<UInt32Array>(rows, side, width)?;
            for (row, &at) in expiry.values().iter().enumerate() {
                by_expiry.entry(at).or_default().push((p, row));
            }
        }
        for (expires_at, picked) in by_expiry {
            let part = gather_parts(side, parts, &picked)?;
            let batch = part.project(&(0..width).collect::<Vec<_>>())?;
            let keys = self.sides[side].spec.key_columns(&batch);
            let key_rows = self.key_rows(&keys)?;
            let hashes = Self::hashes(&keys, batch.num_rows())?;
            let matched = Arc::new(if !self.counts(side) {
                Vec::new()
            } else {
                state_column::<UInt32Array>(&part, side, width)?
                    .values()
                    .to_vec()
            });
            let retractable = self.retractable(side, &batch)?;
            self.sides[side].store(Slot {
                batch,
                own: None,
                keys: key_rows,
                hashes,
                matched,
                expires_at,
                retractable,
            });
        }
        Ok(())
    }
}

impl Operator for HashJoin {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        self.process(0, batch, out)
    }

    fn process_input(
        &mut self,
        input: usize,
        batch: RecordBatch,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        self.process(input.min(1), batch, out)
    }

    /// An inner join of an appending side keeps the shared batch with the
    /// positions of its rows: no copy of them at the exchange or here.
    fn process_rows(
        &mut self,
        input: usize,
        batch: RecordBatch,
        rows: &UInt32Array,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let side = input.min(1);
        if self.kind == JoinKind::Inner && self.sides[side].spec.op_column.is_none() {
            return self.add_rows(side, batch, Some(rows.clone()), None, out);
        }
        self.process(side, take_record_batch(&batch, rows)?, out)
    }

    /// An inner join's appended rows whose joined rows `next` may refuse:
    /// only those it admits are built (a TopN chained to the join).
    fn process_offered(
        &mut self,
        input: usize,
        batch: RecordBatch,
        rows: Option<&UInt32Array>,
        next: &dyn Admission,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        // Exactly the joined columns go out only from an inner join of
        // appending inputs: updating and outer joins add an op column (and
        // count their pairs), semi and anti joins keep the left ones.
        let appended = self.output.fields().len() == self.joined.fields().len();
        match (appended, rows) {
            (true, rows) => self.add_rows(input.min(1), batch, rows.cloned(), Some(next), out),
            (false, Some(rows)) => self.process_rows(input, batch, rows, out),
            (false, None) => self.process_input(input, batch, out),
        }
    }

    fn input_ended(&mut self, input: usize, _out: &mut Vec<RecordBatch>) -> Result<()> {
        // No row of the other side can meet a future row of this input.
        let other = &mut self.sides[1 - input.min(1)];
        other.closed = true;
        other.clear();
        self.report_state();
        Ok(())
    }

    fn process_watermark(
        &mut self,
        watermark: Watermark,
        _out: &mut Vec<RecordBatch>,
    ) -> Result<Option<Watermark>> {
        self.watermark = self.watermark.max(watermark.0);
        for side in &mut self.sides {
            side.expire(self.watermark);
        }
        self.report_state();
        Ok(Some(watermark))
    }

    fn finish(&mut self, _out: &mut Vec<RecordBatch>) -> Result<()> {
        for side in &mut self.sides {
            side.clear();
        }
        self.report_state();
        Ok(())
    }

    fn snapshot_state(&mut self) -> Result<StateSnapshot> {
        let mut snapshot = StateSnapshot::default();
        for side in 0..2 {
            // Every subtask holds the same broadcast rows at a barrier (it
            // has seen the same input up to it): one copy is enough.
            if self.broadcast != Some(side) || self.subtask == 0 {
                self.side_state(side, &mut snapshot);
            }
        }
        Ok(snapshot)
    }

    fn restore_state(&mut self, snapshot: &StateSnapshot) -> Result<()> {
        for side in 0..2 {
            let range = if self.broadcast == Some(side) {
                KeyGroupRange::ALL
            } else {
                self.key_groups.range
            };
            self.restore_side(side, &snapshot.batches(side, range)?)?;
        }
        self.report_state();
        Ok(())
    }

    fn first_input(&self) -> Option<usize> {
        self.broadcast
    }

    fn broadcast_tables(&self) -> Vec<usize> {
        self.broadcast.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;
    use arrow::datatypes::{Field, Schema};
    use datafusion::common::ScalarValue;
    use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};

    use super::*;

    /// Admits the rows whose column `column` is even.
    struct Even {
        column: [usize; 1],
    }

    impl Admission for Even {
        fn admission_columns(&self) -> &[usize] {
            &self.column
        }

        fn admits(&self, columns: &[ArrayRef]) -> Result<Option<BooleanArray>> {
            let values = columns[0].as_primitive::<Int64Type>();
            Ok(Some(values.iter().map(|v| v.map(|v| v % 2 == 0)).collect()))
        }
    }

    fn pairs(schema: &SchemaRef, rows: &[(i64, i64)]) -> RecordBatch {
        let keys = Int64Array::from_iter_values(rows.iter().map(|r| r.0));
        let values = Int64Array::from_iter_values(rows.iter().map(|r| r.1));
        RecordBatch::try_new(schema.clone(), vec![Arc::new(keys), Arc::new(values)]).unwrap()
    }

    fn joined_rows(out: &[RecordBatch]) -> Vec<Vec<i64>> {
        let mut rows: Vec<Vec<i64>> = out
            .iter()
            .flat_map(|b| {
                (0..b.num_rows()).map(move |r| {
                    (0..4)
                        .map(|c| b.column(c).as_primitive::<Int64Type>().value(r))
                        .collect()
                })
            })
            .collect();
        rows.sort();
        rows
    }

    /// A right row that matched its left row (the left side unique by the
    /// key) is not stored: only the rest are, copied out of a shared batch
    /// they are few of, and those still match the left rows that come later;
    /// a shared batch most of whose rows here are unmatched is stored whole.
    #[test]
    fn rows_that_matched_a_unique_side_are_not_stored() {
        let side_schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let mut fields = side_schema.fields().to_vec();
        fields.extend(side_schema.fields().iter().cloned());
        let joined = Arc::new(Schema::new(fields));
        let side = |settled_by_match| JoinSide {
            keys: vec![0],
            width: 2,
            expiry: None,
            op_column: None,
            settled_by_match,
        };
        // An inner join whose right rows are settled by a match or not.
        let create = |settled: bool| {
            let factory = HashJoinFactory {
                kind: JoinKind::Inner,
                left: side(false),
                right: side(settled),
                filter: None,
                joined: joined.clone(),
                state_ttl_ns: None,
                bounded_input: false,
                broadcast: None,
                output: joined.clone(),
            };
            let ctx = TaskContext::new(0, 1, 128, Arc::new(JobMetrics::default()));
            factory.create(&ctx).unwrap()
        };
        let run = |settled: bool| {
            let mut join = create(settled);
            let mut out = Vec::new();
            join.process_input(0, pairs(&side_schema, &[(1, 1), (2, 2)]), &mut out)
                .unwrap();
            // Rows 3 and 5 are another subtask's.
            let right = [(1, 10), (3, 11), (2, 12), (9, 0), (4, 13), (9, 0)];
            let own = UInt32Array::from(vec![0, 1, 2, 4]);
            join.process_rows(1, pairs(&side_schema, &right), &own, &mut out)
                .unwrap();
            let stored = join.snapshot_state().unwrap().resolve().unwrap().num_rows();
            join.process_input(0, pairs(&side_schema, &[(3, 3), (4, 4)]), &mut out)
                .unwrap();
            (joined_rows(&out), stored)
        };
        let expected = vec![
            vec![1, 1, 1, 10],
            vec![2, 2, 2, 12],
            vec![3, 3, 3, 11],
            vec![4, 4, 4, 13],
        ];
        let (rows, stored) = run(true);
        assert_eq!(rows, expected);
        // The two left rows, and the right rows of keys 3 and 4.
        assert_eq!(stored, 4);
        assert_eq!(run(false), (expected, 6));

        // Three of a subtask's four rows unmatched: more than half of its
        // rows (though under half of the shared batch), so the batch is
        // stored with all four rather than copied.
        let mut join = create(true);
        let mut out = Vec::new();
        join.process_input(0, pairs(&side_schema, &[(1, 1)]), &mut out)
            .unwrap();
        let right: Vec<(i64, i64)> = (1..=8).map(|k| (k, 10 + k)).collect();
        let own = UInt32Array::from(vec![0, 1, 2, 3]);
        join.process_rows(1, pairs(&side_schema, &right), &own, &mut out)
            .unwrap();
        let stored = join.snapshot_state().unwrap().resolve().unwrap().num_rows();
        assert_eq!(stored, 1 + 4);
    }

    /// An inner join builds only the joined rows the next operator admits
    /// (after its own filter), whichever side probes; a left join, whose
    /// pairs are counted, builds them all.
    #[test]
    fn joined_rows_are_built_only_where_the_next_operator_admits_them() {
        let side_schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]));
        // The right columns nullable: a left join pads them.
        let mut fields = side_schema.fields().to_vec();
        fields.extend(
            side_schema
                .fields()
                .iter()
                .map(|f| Arc::new(f.as_ref().clone().with_nullable(true))),
        );
        let joined = Arc::new(Schema::new(fields));
        let side = JoinSide {
            keys: vec![0],
            width: 2,
            expiry: None,
            op_column: None,
            settled_by_match: false,
        };
        // Pairs whose left value is below 5.
        let filter: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
            Arc::new(Column::new("v", 1)),
            datafusion::logical_expr::Operator::Lt,
            Arc::new(Literal::new(ScalarValue::Int64(Some(5)))),
        ));
        let left = pairs(&side_schema, &[(1, 1), (1, 2), (2, 3), (3, 7)]);
        let right = pairs(&side_schema, &[(1, 10), (1, 11), (2, 12), (3, 14), (2, 15)]);
        let next = Even { column: [3] };
        let run = |kind: JoinKind, offered: bool| {
            let mut output = joined.fields().to_vec();
            if kind == JoinKind::Left {
                output.push(Arc::new(Field::new("_op", DataType::Int8, false)));
            }
            let factory = HashJoinFactory {
                kind,
                left: side.clone(),
                right: side.clone(),
                filter: Some(filter.clone()),
                joined: joined.clone(),
                state_ttl_ns: None,
                bounded_input: false,
                broadcast: None,
                output: Arc::new(Schema::new(output)),
            };
            let ctx = TaskContext::new(0, 1, 128, Arc::new(JobMetrics::default()));
            let mut join = factory.create(&ctx).unwrap();
            let mut out = Vec::new();
            // Left rows stored, then right rows probe; then left rows
            // again (shared, with positions) probe the stored right rows.
            for (input, batch, rows) in [
                (0, left.clone(), None),
                (1, right.clone(), None),
                (0, left.clone(), Some(UInt32Array::from(vec![0, 2, 3]))),
            ] {
                match (offered, &rows) {
                    (true, rows) => join
                        .process_offered(input, batch, rows.as_ref(), &next, &mut out)
                        .unwrap(),
                    (false, Some(rows)) => join.process_rows(input, batch, rows, &mut out).unwrap(),
                    (false, None) => join.process_input(input, batch, &mut out).unwrap(),
                }
            }
            out.retain(|b| b.num_rows() > 0);
            joined_rows(&out)
        };
        let all = run(JoinKind::Inner, false);
        let even: Vec<Vec<i64>> = all.iter().filter(|r| r[3] % 2 == 0).cloned().collect();
        assert_eq!(
            all,
            [
                vec![1, 1, 1, 10],
                vec![1, 1, 1, 10],
                vec![1, 1, 1, 11],
                vec![1, 1, 1, 11],
                vec![1, 2, 1, 10],
                vec![1, 2, 1, 11],
                vec![2, 3, 2, 12],
                vec![2, 3, 2, 12],
                vec![2, 3, 2, 15],
                vec![2, 3, 2, 15],
            ]
        );
        assert_eq!(run(JoinKind::Inner, true), even);
        assert_eq!(run(JoinKind::Left, true), run(JoinKind::Left, false));
    }
}
