//! A `GROUP BY` without a window: one running result per group, emitted as
//! an updating stream — `+I` when a group appears, `-U`/`+U` when its result
//! changes, `-D` when every row of it was taken back.
//!
//! Each batch is sorted by group once; every group it touches gets one
//! `update_batch` (and one `retract_batch` for an updating input) over a
//! zero-copy slice, and its old and new results are emitted once per batch.
//! Groups hold DataFusion row `Accumulator`s rather than a
//! `GroupsAccumulator`, because an updating result must read a group's value
//! without consuming it and take rows back, which `GroupsAccumulator` cannot.
//! Over an appending input, integer `COUNT`, `SUM`, `MIN` and `MAX` are
//! vectors indexed by group instead (`int_aggregates`).

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int8Array, Int64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Int8Type, Int64Type, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;
use flumen_runtime::{JobMetrics, Operator, OperatorFactory, StateGauge, TaskContext};
use flumen_state::{KeyGroupRange, KeyedTable, StateSnapshot, state_column};
use flumen_types::{FlumenError, Result, RowOp, Watermark};

use crate::columns::{merge_state, row_state_fields, scalar_column, subtract_state, take_states};
use crate::int_aggregates::IntAggregates;
use crate::window_aggregate::{AggregateCall, names, sorted_arguments};

/// Makes [`UpdatingAggregate`] operators.
pub struct UpdatingAggregateFactory {
    /// Input columns holding the group keys.
    pub key_columns: Vec<usize>,
    /// The aggregates, in output order.
    pub aggregates: Vec<AggregateCall>,
    /// The input's op column when the input is itself updating.
    pub op_column: Option<usize>,
    /// A group not updated for this long (event time, by watermark) is
    /// dropped; without it groups live forever.
    pub state_ttl_ns: Option<i64>,
    /// The keys, one column per aggregate, then the op column.
    pub output: SchemaRef,
    /// The input holds a local aggregate's partial rows (keys, states, row
    /// count, op column when updating), merged rather than aggregated.
    pub merge_states: bool,
    /// When the rows come routed by the hash of some key columns only
    /// (positions in `key_columns`: a join's key, grouped by with more
    /// columns, chained to the join): those, whose hash then gives each
    /// group its key group. `None`: routed by all key columns.
    pub routed_by: Option<Vec<usize>>,
}

/// Names of the aggregates that can take back a row exactly (their
/// DataFusion sliding accumulators retract in any order).
pub const RETRACTABLE: &[&str] = &["count", "sum", "avg"];

impl OperatorFactory for UpdatingAggregateFactory {
    fn describe(&self) -> String {
        let state = match self.state_ttl_ns {
            Some(ttl) => format!(", state_ttl {} ms", ttl / 1_000_000),
            None => " [UNBOUNDED STATE: one row per group; set state_ttl to bound it]".to_string(),
        };
        let routed = match &self.routed_by {
            Some(columns) => {
                let by: Vec<usize> = columns.iter().map(|&c| self.key_columns[c]).collect();
                format!(", rows routed by {by:?}")
            }
            None => String::new(),
        };
        format!(
            "UpdatingAggregate: keys {:?}{routed}, [{}]{}{}{state}",
            self.key_columns,
            names(&self.aggregates),
            if self.merge_states {
                ", merging partial states"
            } else {
                ""
            },
            if self.op_column.is_some() {
                ", retracting"
            } else {
                ""
            }
        )
    }

    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        let key_fields: Vec<_> = self.output.fields()[..self.key_columns.len()]
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let updating = self.op_column.is_some();
        let (state_fields, state_starts) = row_state_fields(self.aggregates.len(), |a| {
            new_accumulator(&self.aggregates, updating, a)
        })?;
        let results: Vec<&Field> = self.output.fields()[self.key_columns.len()..]
            .iter()
            .map(|f| f.as_ref())
            .collect();
        let ints = if updating {
            None
        } else {
            IntAggregates::for_aggregates(&self.aggregates, &results, &state_fields, &state_starts)
        };
        Ok(Box::new(UpdatingAggregate {
            merge_states: self.merge_states,
            state_starts,
            key_columns: self.key_columns.clone(),
            aggregates: self.aggregates.clone(),
            op_column: self.op_column,
            state_ttl_ns: self.state_ttl_ns,
            output: self.output.clone(),
            keys: KeyedTable::new(key_fields, ctx.key_groups)?.routed_by(self.routed_by.clone()),
            owned: ctx.key_groups.range,
            accumulators: Vec::new(),
            ints,
            counts: Vec::new(),
            touched_at: Vec::new(),
            watermark: i64::MIN,
            last_sweep: i64::MIN,
            watermarks_seen: 0,
            metrics: ctx.metrics.clone(),
            gauge: StateGauge::default(),
        }))
    }
}

fn err(e: impl std::fmt::Display) -> FlumenError {
    FlumenError::execution(format!("aggregate: {e}"))
}

/// The running groups of one subtask.
pub struct UpdatingAggregate {
    merge_states: bool,
    /// Where each aggregate's fields start in an accumulator state row
    /// (and one past the last).
    state_starts: Vec<usize>,
    key_columns: Vec<usize>,
    aggregates: Vec<AggregateCall>,
    op_column: Option<usize>,
    state_ttl_ns: Option<i64>,
    output: SchemaRef,
    /// The groups' keys, by group id.
    keys: KeyedTable,
    /// The key groups this subtask owns.
    owned: KeyGroupRange,
    /// `accumulators[group * aggregates.len() + a]`; empty when `ints`
    /// holds the aggregates.
    accumulators: Vec<Box<dyn Accumulator>>,
    /// The aggregates as vectors by group, when they are all integer
    /// `COUNT`, `SUM`, `MIN` or `MAX` over an appending input.
    ints: Option<IntAggregates>,
    /// Rows currently counted in each group.
    counts: Vec<i64>,
    /// The watermark when each group was last updated (for `state_ttl`).
    touched_at: Vec<i64>,
    watermark: i64,
    /// The watermark of the last `state_ttl` sweep.
    last_sweep: i64,
    /// Watermarks processed; the state size is measured every 1024th (it
    /// sums over every group).
    watermarks_seen: u64,
    metrics: Arc<JobMetrics>,
    gauge: StateGauge,
}

/// The retraction bit and the row bits of a row's sort key.
const RETRACT_BIT: u64 = 1 << 31;
const ROW_MASK: u64 = RETRACT_BIT - 1;

/// The rows of a batch by group, additions before retractions within a
/// group: one `u64` per row, (group, retraction bit, row), sorts as fast as
/// integers. `ids` are the rows' groups and `ops` their op codes when the
/// input is updating. Also the rows' indices in that order.
pub(crate) fn group_order(ids: &[usize], ops: Option<&[i8]>) -> (Vec<u64>, UInt32Array) {
    let mut order: Vec<u64> = ids
        .iter()
        .enumerate()
        .map(|(row, &g)| {
            let retract =
                ops.is_some_and(|ops| !RowOp::from_code(ops[row]).is_some_and(RowOp::is_addition));
            ((g as u64) << 32) | (u64::from(retract) << 31) | row as u64
        })
        .collect();
    sort_keys(&mut order);
    let indices = UInt32Array::from_iter_values(order.iter().map(|&o| (o & ROW_MASK) as u32));
    (order, indices)
}

/// Bits of a radix digit in [`sort_keys`]: two passes cover two million
/// groups.
const DIGIT_BITS: u32 = 11;

/// Sorts `keys` of [`group_order`], whose row bits ascend, as
/// `sort_unstable` would: a stable radix sort of the bits above the row,
/// one pass per 11-bit digit in which the keys differ. A comparison sort's
/// branches are coin flips on random groups (`quicksort` was 5 % of q4's
/// CPU); small batches still take it.
fn sort_keys(keys: &mut Vec<u64>) {
    if keys.len() < 256 {
        keys.sort_unstable();
        return;
    }
    let top = keys.iter().fold(0, |m, &k| m | k);
    let mut spare = vec![0u64; keys.len()];
    let mut starts = vec![0usize; (1 << DIGIT_BITS) + 1];
    let mut shift = 31;
    while shift < 64 && top >> shift != 0 {
        let digit = |k: u64| ((k >> shift) & ((1 << DIGIT_BITS) - 1)) as usize;
        starts.fill(0);
        for &k in keys.iter() {
            starts[digit(k) + 1] += 1;
        }
        // A digit every key shares orders nothing.
        if !starts.contains(&keys.len()) {
            for d in 0..1 << DIGIT_BITS {
                starts[d + 1] += starts[d];
            }
            for &k in keys.iter() {
                let at = &mut starts[digit(k)];
                spare[*at] = k;
                *at += 1;
            }
            std::mem::swap(keys, &mut spare);
        }
        shift += DIGIT_BITS;
    }
}

/// The group of the run of `order` that starts at `start`, and where the
/// run ends.
fn run_at(order: &[u64], start: usize) -> (usize, usize) {
    let group_of = |o: u64| (o >> 32) as usize;
    let group = group_of(order[start]);
    let mut end = start;
    while end < order.len() && group_of(order[end]) == group {
        end += 1;
    }
    (group, end)
}

/// Input rows in sorted rows `from..to`: one each, or a partial row's count.
fn rows_in(partial_rows: Option<&Int64Array>, from: usize, to: usize) -> i64 {
    match partial_rows {
        Some(r) => r.values()[from..to].iter().sum::<i64>(),
        None => (to - from) as i64,
    }
}

/// One output row: a group's old or new result.
struct Change {
    group: usize,
    op: RowOp,
    values: Vec<ScalarValue>,
}

/// A fresh accumulator of aggregate `a`; a retracting one over an updating
/// input.
fn new_accumulator(
    aggregates: &[AggregateCall],
    updating_input: bool,
    a: usize,
) -> Result<Box<dyn Accumulator>> {
    let f = &aggregates[a].function;
    let acc = if updating_input {
        f.create_sliding_accumulator()
    } else {
        f.create_accumulator()
    };
    acc.map_err(err)
}

impl UpdatingAggregate {
    fn new_accumulator(&self, a: usize) -> Result<Box<dyn Accumulator>> {
        new_accumulator(&self.aggregates, self.op_column.is_some(), a)
    }

    /// The layout of a snapshot row: keys, accumulator states, row count,
    /// last update.
    fn snapshot_schema(&self, state: &[Field]) -> SchemaRef {
        let keys = &self.output.fields()[..self.key_columns.len()];
        let fields: Vec<Field> = keys
            .iter()
            .map(|f| f.as_ref().clone())
            .chain(state.iter().cloned())
            .chain([
                Field::new("_count", DataType::Int64, false),
                Field::new("_touched_at", DataType::Int64, false),
            ])
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// A group for every new id up to `groups`.
    fn add_groups(&mut self, groups: usize, touched_at: i64) -> Result<()> {
        if let Some(ints) = &mut self.ints {
            ints.add_groups(groups);
            self.counts.resize(groups, 0);
            self.touched_at.resize(groups, touched_at);
            return Ok(());
        }
        while self.counts.len() < groups {
            for a in 0..self.aggregates.len() {
                let acc = self.new_accumulator(a)?;
                self.accumulators.push(acc);
            }
            self.counts.push(0);
            self.touched_at.push(touched_at);
        }
        Ok(())
    }

    /// Each aggregate's state columns of a batch of partial rows, and their
    /// row counts, in the order `indices`.
    fn sorted_states(
        &self,
        batch: &RecordBatch,
        indices: &UInt32Array,
    ) -> Result<(Vec<Vec<ArrayRef>>, Int64Array)> {
        let k = self.key_columns.len();
        let starts = &self.state_starts;
        let take = |c: &ArrayRef| arrow::compute::take(c, indices, None);
        let states = (0..self.aggregates.len())
            .map(|a| {
                batch.columns()[k + starts[a]..k + starts[a + 1]]
                    .iter()
                    .map(|c| Ok(take(c)?))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        let rows = take(batch.column(k + starts[self.aggregates.len()]))?;
        Ok((states, rows.as_primitive::<Int64Type>().clone()))
    }

    fn values(&mut self, group: usize) -> Result<Vec<ScalarValue>> {
        let n = self.aggregates.len();
        self.accumulators[group * n..(group + 1) * n]
            .iter_mut()
            .map(|acc| acc.evaluate().map_err(err))
            .collect()
    }

    /// Drops groups not updated for `state_ttl`: the groups that stay are
    /// interned again, in order, with their accumulators.
    fn expire_idle(&mut self) -> Result<()> {
        let Some(ttl) = self.state_ttl_ns else {
            return Ok(());
        };
        if self.watermark < self.last_sweep.saturating_add(ttl / 2) {
            return Ok(());
        }
        self.last_sweep = self.watermark;
        let cutoff = self.watermark.saturating_sub(ttl);
        let keep: Vec<usize> = (0..self.counts.len())
            .filter(|&g| self.touched_at[g] >= cutoff)
            .collect();
        if keep.len() == self.counts.len() {
            return Ok(());
        }
        self.keys.retain(&keep)?;
        self.counts = keep.iter().map(|&g| self.counts[g]).collect();
        self.touched_at = keep.iter().map(|&g| self.touched_at[g]).collect();
        if let Some(ints) = &mut self.ints {
            ints.retain(&keep);
            return Ok(());
        }
        let n = self.aggregates.len();
        let mut old: Vec<Option<Box<dyn Accumulator>>> = std::mem::take(&mut self.accumulators)
            .into_iter()
            .map(Some)
            .collect();
        self.accumulators = keep
            .iter()
            .flat_map(|&g| g * n..(g + 1) * n)
            .map(|i| old[i].take().expect("each accumulator moves once"))
            .collect();
        Ok(())
    }

    /// [`Operator::process_batch`] for aggregates held in `ints` (an
    /// appending input, so no row is taken back): each group's run of
    /// sorted rows updates its values in place, and its old and new values
    /// go straight into the output columns.
    fn update_ints(
        &mut self,
        ints: &mut IntAggregates,
        order: &[u64],
        arguments: &[Vec<ArrayRef>],
        partial_rows: Option<&Int64Array>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let n = self.aggregates.len();
        let mut groups = Vec::new();
        let mut ops = Vec::new();
        let mut results: Vec<Vec<Option<i64>>> = vec![Vec::new(); n];
        let mut old = vec![None; n];
        let mut start = 0;
        while start < order.len() {
            let (group, end) = run_at(order, start);
            for (a, v) in old.iter_mut().enumerate() {
                *v = ints.value(a, group);
            }
            for (a, args) in arguments.iter().enumerate() {
                ints.update(a, group, &args[0], start, end, self.merge_states)?;
            }
            let was = self.counts[group];
            let now = was + rows_in(partial_rows, start, end);
            self.counts[group] = now;
            self.touched_at[group] = self.watermark;
            let mut push = |op: RowOp, values: &mut dyn Iterator<Item = Option<i64>>| {
                groups.push(group);
                ops.push(op as i8);
                for (column, v) in results.iter_mut().zip(values) {
                    column.push(v);
                }
            };
            match (was > 0, now > 0) {
                (false, true) => push(RowOp::Insert, &mut (0..n).map(|a| ints.value(a, group))),
                (true, true) if !ints.equals(group, &old) => {
                    push(RowOp::UpdateBefore, &mut old.iter().copied());
                    push(
                        RowOp::UpdateAfter,
                        &mut (0..n).map(|a| ints.value(a, group)),
                    );
                }
                (true, false) => {
                    push(RowOp::Delete, &mut old.iter().copied());
                    ints.reset(group);
                }
                _ => {}
            }
            start = end;
        }
        if groups.is_empty() {
            return Ok(());
        }
        let mut columns = self.keys.emit(groups.into_iter())?;
        columns.extend(
            results
                .into_iter()
                .map(|values| Arc::new(Int64Array::from(values)) as ArrayRef),
        );
        columns.push(Arc::new(Int8Array::from(ops)));
        out.push(RecordBatch::try_new(self.output.clone(), columns)?);
        Ok(())
    }

    /// The changes as output rows; their values are moved out.
    fn emit(&self, changes: &mut [Change]) -> Result<RecordBatch> {
        let mut columns = self.keys.emit(changes.iter().map(|c| c.group))?;
        for a in 0..self.aggregates.len() {
            let field = self.output.field(columns.len());
            columns.push(scalar_column(
                changes
                    .iter_mut()
                    .map(|c| std::mem::replace(&mut c.values[a], ScalarValue::Null)),
                field,
            )?);
        }
        columns.push(Arc::new(Int8Array::from_iter_values(
            changes.iter().map(|c| c.op as i8),
        )));
        Ok(RecordBatch::try_new(self.output.clone(), columns)?)
    }
}

impl Operator for UpdatingAggregate {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let key_arrays: Vec<ArrayRef> = self
            .key_columns
            .iter()
            .map(|&c| batch.column(c).clone())
            .collect();
        let mut ids = Vec::with_capacity(rows);
        self.keys.intern(&key_arrays, rows, &mut ids)?;
        self.add_groups(self.keys.len(), self.watermark)?;
        let ops = self
            .op_column
            .map(|c| batch.column(c).as_primitive::<Int8Type>().values().as_ref());
        let (order, indices) = group_order(&ids, ops);
        let (arguments, partial_rows) = if self.merge_states {
            let (states, rows) = self.sorted_states(&batch, &indices)?;
            (states, Some(rows))
        } else {
            (sorted_arguments(&self.aggregates, &batch, &indices)?, None)
        };
        if let Some(mut ints) = self.ints.take() {
            // Lent out for the batch and put back whatever it returns.
            let done = self.update_ints(&mut ints, &order, &arguments, partial_rows.as_ref(), out);
            self.ints = Some(ints);
            return done;
        }
        let rows_in = |from: usize, to: usize| rows_in(partial_rows.as_ref(), from, to);
        let n = self.aggregates.len();
        let updating = self.op_column.is_some();
        let mut changes = Vec::new();
        // One group's argument slices, reused from group to group.
        let mut part: Vec<ArrayRef> = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let (group, end) = run_at(&order, start);
            let split = start
                + order[start..end]
                    .iter()
                    .take_while(|&&o| o & RETRACT_BIT == 0)
                    .count();
            let was = self.counts[group];
            let old = if was > 0 {
                Some(self.values(group)?)
            } else {
                None
            };
            for (a, args) in arguments.iter().enumerate() {
                let acc = &mut self.accumulators[group * n + a];
                if split > start {
                    part.clear();
                    part.extend(args.iter().map(|v| v.slice(start, split - start)));
                    if self.merge_states {
                        acc.merge_batch(&part).map_err(err)?;
                    } else {
                        acc.update_batch(&part).map_err(err)?;
                    }
                }
                if self.merge_states {
                    for row in split..end {
                        subtract_state(acc, args, row, || {
                            new_accumulator(&self.aggregates, updating, a)
                        })?;
                    }
                } else if end > split {
                    part.clear();
                    part.extend(args.iter().map(|v| v.slice(split, end - split)));
                    acc.retract_batch(&part).map_err(err)?;
                }
            }
            let now = was + rows_in(start, split) - rows_in(split, end);
            self.counts[group] = now;
            self.touched_at[group] = self.watermark;
            match (old, now > 0) {
                (None, true) => {
                    let values = self.values(group)?;
                    changes.push(Change {
                        group,
                        op: RowOp::Insert,
                        values,
                    });
                }
                (Some(old), true) => {
                    let values = self.values(group)?;
                    if values != old {
                        changes.push(Change {
                            group,
                            op: RowOp::UpdateBefore,
                            values: old,
                        });
                        changes.push(Change {
                            group,
                            op: RowOp::UpdateAfter,
                            values,
                        });
                    }
                }
                (Some(old), false) => {
                    changes.push(Change {
                        group,
                        op: RowOp::Delete,
                        values: old,
                    });
                    for a in 0..n {
                        self.accumulators[group * n + a] = self.new_accumulator(a)?;
                    }
                }
                (None, false) => {}
            }
            start = end;
        }
        if !changes.is_empty() {
            out.push(self.emit(&mut changes)?);
        }
        Ok(())
    }

    fn process_watermark(
        &mut self,
        watermark: Watermark,
        _out: &mut Vec<RecordBatch>,
    ) -> Result<Option<Watermark>> {
        self.watermark = self.watermark.max(watermark.0);
        self.expire_idle()?;
        self.watermarks_seen += 1;
        if self.watermarks_seen % 1024 == 1 {
            let bytes = self.keys.size()
                + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
                + self.ints.as_ref().map_or(0, IntAggregates::size)
                + self.counts.len() * 16;
            self.metrics.report_state(&mut self.gauge, bytes);
        }
        Ok(Some(watermark))
    }

    fn snapshot_state(&mut self) -> Result<StateSnapshot> {
        let mut snapshot = StateSnapshot::default();
        let groups = self.counts.len();
        if groups == 0 {
            return Ok(snapshot);
        }
        let layout = row_state_fields(self.aggregates.len(), |a| self.new_accumulator(a))?;
        let schema = self.snapshot_schema(&layout.0);
        let mut columns = self.keys.emit(0..groups)?;
        if let Some(ints) = &self.ints {
            columns.extend(ints.states());
        } else {
            let n = self.aggregates.len().max(1);
            let (aggregates, updating) = (&self.aggregates, self.op_column.is_some());
            columns.extend(take_states(
                self.accumulators.chunks_mut(n),
                &layout,
                |a| new_accumulator(aggregates, updating, a),
            )?);
        }
        columns.push(Arc::new(Int64Array::from(self.counts.clone())));
        columns.push(Arc::new(Int64Array::from(self.touched_at.clone())));
        let batch = RecordBatch::try_new(schema, columns)?;
        snapshot.add(0, &batch, self.keys.key_groups())?;
        Ok(snapshot)
    }

    /// Merges the stored groups a part at a time, as stored (no copy of
    /// the whole table first).
    fn restore_state(&mut self, snapshot: &StateSnapshot) -> Result<()> {
        let k = self.key_columns.len();
        let (_, starts) = row_state_fields(self.aggregates.len(), |a| self.new_accumulator(a))?;
        let width = k + starts[self.aggregates.len()] + 2;
        let n = self.aggregates.len();
        let mut ids = Vec::new();
        for batch in snapshot.batches(0, self.owned)? {
            let count = state_column::<Int64Array>(&batch, 0, width - 2)?;
            let touched = state_column::<Int64Array>(&batch, 0, width - 1)?;
            ids.clear();
            self.keys
                .intern(&batch.columns()[..k], batch.num_rows(), &mut ids)?;
            self.add_groups(self.keys.len(), i64::MIN)?;
            for (row, &group) in ids.iter().enumerate() {
                for a in 0..n {
                    let columns = &batch.columns()[k + starts[a]..k + starts[a + 1]];
                    match &mut self.ints {
                        Some(ints) => ints.update(a, group, &columns[0], row, row + 1, true)?,
                        None => {
                            merge_state(self.accumulators[group * n + a].as_mut(), columns, row)?
                        }
                    }
                }
                self.counts[group] += count.value(row);
                self.touched_at[group] = self.touched_at[group].max(touched.value(row));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The radix sort orders as a full sort of the keys does: groups up,
    /// additions before retractions, rows up within each, for groups
    /// needing one to three digits, hot groups and batches below the
    /// cut-over.
    #[test]
    fn group_order_sorts_as_a_full_sort() {
        let mut x: u64 = 7;
        let mut next = |bound: u64| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % bound
        };
        for (rows, groups) in [(100, 50), (8192, 1000), (8192, 3_000_000), (5000, 1 << 30)] {
            let ids: Vec<usize> = (0..rows)
                .map(|_| match next(4) {
                    0 => 17,
                    _ => next(groups) as usize,
                })
                .collect();
            let ops: Vec<i8> = (0..rows).map(|_| next(4) as i8).collect();
            for ops in [None, Some(ops.as_slice())] {
                let (order, indices) = group_order(&ids, ops);
                let mut expected = order.clone();
                expected.sort_unstable();
                assert_eq!(order, expected, "{rows} rows of {groups} groups");
                assert_eq!(indices.len(), rows);
                let mut seen: Vec<u32> = indices.values().to_vec();
                seen.sort_unstable();
                assert_eq!(seen, (0..rows as u32).collect::<Vec<_>>());
            }
        }
    }
}
