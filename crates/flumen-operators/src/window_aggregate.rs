//! Aggregates rows per group and event-time window (tumbling or sliding: a
//! window is its start and a fixed length), and emits each window's groups
//! once, when the watermark passes the window's end. Group
//! keys are interned by DataFusion's `GroupValues` and aggregates are
//! DataFusion `GroupsAccumulator`s, updated once per batch and window.
//!
//! Sliding windows of size S every L can share panes ([`Panes`]): each row
//! then arrives once, in the last window that holds it (its start is the
//! row's L-long pane), is aggregated into that pane, and a window is built
//! when it closes by merging the accumulator states of its S/L panes, as
//! Flink's slice sharing does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, Int8Array, Int64Array, RecordBatch,
    UInt32Array, new_empty_array, new_null_array,
};
use arrow::buffer::BooleanBuffer;
use arrow::compute::{cast, concat, take_record_batch};
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::EmitTo;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::aggregates::group_values::GroupValues;
use flumen_runtime::{JobMetrics, Operator, OperatorFactory, StateGauge, TaskContext};
use flumen_state::{KeyGroup, KeyGroups, StateSnapshot, gather_parts, state_column};
use flumen_types::{FlumenError, Result, RowOp, Watermark};

use crate::accumulator_layers::{Accumulators, Layers, SharedLayers, new_accumulators};
use crate::columns::state_fields;

/// One aggregate of the query, with its `FILTER (WHERE …)` if any.
#[derive(Clone)]
pub struct AggregateCall {
    /// The aggregate function and its arguments.
    pub function: Arc<AggregateFunctionExpr>,
    /// Rows it counts, when the query filters them.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

impl AggregateCall {
    /// What its accumulator takes, per row: the arguments, then the ORDER
    /// BY expressions of an order-sensitive aggregate (`first_value(x ORDER
    /// BY t)` compares them itself), as DataFusion's own aggregation passes
    /// them.
    pub(crate) fn inputs(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        let mut inputs = self.function.expressions();
        inputs.extend(self.function.order_bys().iter().map(|o| o.expr.clone()));
        inputs
    }

    /// Updates `acc` with `rows` (row `i` in group `group_indices[i]`, of
    /// `total` groups): its inputs evaluated on them, its filter applied.
    pub(crate) fn update(
        &self,
        acc: &mut dyn datafusion::logical_expr::GroupsAccumulator,
        rows: &RecordBatch,
        group_indices: &[usize],
        total: usize,
    ) -> Result<()> {
        let n = rows.num_rows();
        let values = self
            .inputs()
            .iter()
            .map(|e| e.evaluate(rows).and_then(|v| v.into_array(n)))
            .collect::<datafusion::common::Result<Vec<_>>>()
            .map_err(df)?;
        let filter = match &self.filter {
            Some(f) => Some(f.evaluate(rows).and_then(|v| v.into_array(n)).map_err(df)?),
            None => None,
        };
        let filter = filter.as_ref().map(|f| f.as_boolean());
        acc.update_batch(&values, group_indices, filter, total)
            .map_err(df)
    }
}

/// The aggregates' function names, for `describe`.
pub(crate) fn names(aggregates: &[AggregateCall]) -> String {
    aggregates
        .iter()
        .map(|a| a.function.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each aggregate's argument arrays for the rows `order` of `batch`, in that
/// order, with rows outside its `FILTER` turned to nulls (which COUNT, SUM,
/// MIN, MAX and AVG skip): the input of row accumulators, which take no
/// filter of their own, fed one slice per group.
pub(crate) fn sorted_arguments(
    aggregates: &[AggregateCall],
    batch: &RecordBatch,
    order: &UInt32Array,
) -> Result<Vec<Vec<ArrayRef>>> {
    let rows = batch.num_rows();
    aggregates
        .iter()
        .map(|agg| {
            let mut values = agg
                .inputs()
                .iter()
                .map(|e| e.evaluate(batch).and_then(|v| v.into_array(rows)))
                .collect::<datafusion::common::Result<Vec<_>>>()
                .map_err(df)?;
            if let Some(f) = &agg.filter {
                let keep = f
                    .evaluate(batch)
                    .and_then(|v| v.into_array(rows))
                    .map_err(df)?;
                let drop = arrow::compute::kernels::boolean::not(keep.as_boolean())?;
                for v in &mut values {
                    *v = arrow::compute::nullif(v, &drop)?;
                }
            }
            values
                .iter()
                .map(|v| Ok(arrow::compute::take(v, order, None)?))
                .collect()
        })
        .collect()
}

/// Makes [`WindowAggregate`] operators.
pub struct WindowAggregateFactory {
    /// Input columns holding the group keys, the window start among them.
    pub key_columns: Vec<usize>,
    /// Which of the keys is the window start (a timestamp).
    pub window_key: usize,
    /// How long after the window key the window ends, in nanoseconds: its
    /// length when the key is its start, 0 when the key is its end.
    pub size_ns: i64,
    /// The aggregates, in output order.
    pub aggregates: Vec<AggregateCall>,
    /// Schema of the key columns.
    pub key_schema: SchemaRef,
    /// Output schema: the keys, then one column per aggregate.
    pub output: SchemaRef,
    /// Windows of processing time (`proctime()`): they close by the wall
    /// clock, [`PROCESSING_TIME_DELAY_NS`] after their end, not by watermarks.
    pub processing_time: bool,
    /// How long (event time) a window stays open after it fired, taking
    /// late rows and emitting corrections (`-U`/`+U`); 0 for none. When set,
    /// `output` ends with the op column.
    pub allowed_lateness_ns: i64,
    /// Sliding windows built from panes; `None`: every window is
    /// aggregated on its own (rows arrive once per window).
    pub panes: Option<Panes>,
    /// Input rows are partial states from a [`crate::LocalAggregateFactory`]
    /// (two-phase aggregation): the keys, then each aggregate's state
    /// fields, merged into the groups instead of aggregated.
    pub merge_states: bool,
}

/// How sliding windows share panes: rows arrive once, keyed by the start
/// of the last window holding them (a multiple of the slide, their pane),
/// and the window starting at `s` is the panes `s, s + slide, …` up to its
/// end. Needs no allowed lateness, event time, and keys besides the window's.
#[derive(Debug, Clone)]
pub struct Panes {
    /// The slide: each pane's length; it divides the window size.
    pub slide_ns: i64,
    /// Keys (positions among the keys) other than the window key that are
    /// the window start plus a constant (a window end): they move with it.
    pub shifted: Vec<usize>,
}

/// How long after its end, by the wall clock, a processing-time window
/// closes: rows stamped just before the end may still be on their way.
pub const PROCESSING_TIME_DELAY_NS: i64 = 1_000_000_000;

fn wall_clock_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

impl OperatorFactory for WindowAggregateFactory {
    fn describe(&self) -> String {
        format!(
            "WindowAggregate{}: windows end {} ms after key {}{}, keys {:?}, [{}]{}",
            if self.processing_time {
                " (processing time)"
            } else {
                ""
            },
            self.size_ns / 1_000_000,
            self.window_key,
            match &self.panes {
                Some(p) => format!(
                    ", built from panes of {} ms (keys {:?} move with the window)",
                    p.slide_ns / 1_000_000,
                    p.shifted
                ),
                None => String::new(),
            },
            self.key_columns,
            names(&self.aggregates),
            if self.merge_states {
                ", merging partial states"
            } else {
                ""
            }
        )
    }

    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        // The window key (and with panes the keys moving with it) is the
        // same for all of a window's rows, so a window's table interns only
        // the other keys (unless there are none).
        let window_in_groups = self.key_columns.len() == 1;
        let mut constant_keys = Vec::new();
        if !window_in_groups {
            constant_keys.push(self.window_key);
            if let Some(p) = &self.panes {
                constant_keys.extend(p.shifted.iter().copied());
            }
            constant_keys.sort_unstable();
        }
        if self.panes.is_some() && constant_keys.len() >= self.key_columns.len() {
            return Err(FlumenError::internal(
                "window aggregate: panes need a key besides the window's",
            ));
        }
        let group_keys: Vec<usize> = (0..self.key_columns.len())
            .filter(|k| !constant_keys.contains(k))
            .collect();
        let group_schema = Arc::new(self.key_schema.project(&group_keys)?);
        Ok(Box::new(WindowAggregate {
            group_columns: group_keys.iter().map(|&k| self.key_columns[k]).collect(),
            group_keys,
            group_schema,
            constant_keys,
            panes: self.panes.clone(),
            merged_states: if self.merge_states {
                Some(state_fields(&self.aggregates)?.1)
            } else {
                None
            },
            key_columns: self.key_columns.clone(),
            window_key: self.window_key,
            size_ns: self.size_ns,
            aggregates: self.aggregates.clone().into(),
            output: self.output.clone(),
            processing_time: self.processing_time,
            allowed_lateness_ns: self.allowed_lateness_ns,
            windows: BTreeMap::new(),
            key_groups: ctx.key_groups,
            watermark: i64::MIN,
            metrics: ctx.metrics.clone(),
            gauge: StateGauge::default(),
        }))
    }
}

struct Window {
    /// The values of the keys constant within the window (the window key,
    /// and with panes the keys moving with it), by position among them.
    constants: Vec<ScalarValue>,
    /// The groups' keys (without the window key, when there are others).
    groups: Box<dyn GroupValues>,
    /// The groups' keys in group order, as chunks of key columns: a copy
    /// that `GroupValues` (which gives its keys up when read) cannot give,
    /// so a snapshot reads the keys without taking the window apart.
    /// Small chunks (a batch brings few new groups) are joined into one
    /// once [`KEY_CHUNKS`] have gathered, so chunks stay few and large.
    keys: Vec<Vec<ArrayRef>>,
    /// How many of the last chunks of `keys` are small ones not yet joined.
    small_chunks: usize,
    /// Bytes of the key copy.
    key_bytes: usize,
    /// Aggregate state since the last barrier; what came before is frozen
    /// in `layers`.
    accumulators: Accumulators,
    layers: Layers,
    /// With allowed lateness: what the window last emitted (keys and
    /// aggregates, group by group), and whether late rows changed it since.
    emitted: Option<RecordBatch>,
    dirty: bool,
}

impl Window {
    /// Interns `keys`, giving each row its group id in `ids`, and copies the
    /// keys of the groups seen for the first time into the window's copy.
    /// New groups need not get their ids in row order (DataFusion's
    /// vectorised interning resolves hash collisions last), so each new id's
    /// key is taken from the first row that has it.
    fn intern(&mut self, keys: &[ArrayRef], ids: &mut Vec<usize>) -> Result<()> {
        let before = self.groups.len();
        self.groups.intern(keys, ids).map_err(df)?;
        let added = self.groups.len() - before;
        if added == 0 {
            return Ok(());
        }
        let mut first = vec![u32::MAX; added];
        for (row, &id) in ids.iter().enumerate() {
            if id >= before && first[id - before] == u32::MAX {
                first[id - before] = row as u32;
            }
        }
        let first = UInt32Array::from(first);
        let chunk = keys
            .iter()
            .map(|k| Ok(arrow::compute::take(k, &first, None)?))
            .collect::<Result<Vec<_>>>()?;
        self.key_bytes += chunk_bytes(&chunk);
        self.keys.push(chunk);
        self.small_chunks += 1;
        if self.small_chunks == KEY_CHUNKS {
            let small = self.keys.split_off(self.keys.len() - KEY_CHUNKS);
            self.key_bytes -= small.iter().map(|c| chunk_bytes(c)).sum::<usize>();
            let joined = join_chunks(&small)?;
            self.key_bytes += chunk_bytes(&joined);
            self.keys.push(joined);
            self.small_chunks = 0;
        }
        Ok(())
    }

    /// The whole key copy as one chunk, which it keeps.
    fn joined_keys(&mut self) -> Result<Vec<ArrayRef>> {
        if self.keys.len() != 1 {
            let joined = join_chunks(&self.keys)?;
            self.key_bytes = chunk_bytes(&joined);
            self.keys = vec![joined];
            self.small_chunks = 0;
        }
        Ok(self.keys[0].clone())
    }

    /// Bytes the window holds: interned keys, their copy and aggregate
    /// state.
    fn size(&self) -> usize {
        self.groups.size()
            + self.key_bytes
            + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
            + self.layers.bytes()
    }

    /// Accumulators holding the window's whole aggregate state: the live
    /// ones when no barrier froze any, else every layer merged with them.
    fn whole(&mut self, aggregates: &[AggregateCall]) -> Result<Accumulators> {
        if self.layers.is_empty() {
            return Ok(std::mem::take(&mut self.accumulators));
        }
        self.layers.freeze(&mut self.accumulators, aggregates)?;
        self.layers.merged(aggregates)
    }
}

/// How many small chunks of a window's key copy are joined into one.
const KEY_CHUNKS: usize = 64;

fn chunk_bytes(chunk: &[ArrayRef]) -> usize {
    chunk.iter().map(|k| k.get_array_memory_size()).sum()
}

/// Chunks of key columns joined column by column; at least one chunk.
fn join_chunks(chunks: &[Vec<ArrayRef>]) -> Result<Vec<ArrayRef>> {
    (0..chunks[0].len())
        .map(|c| {
            let columns: Vec<&dyn arrow::array::Array> =
                chunks.iter().map(|chunk| chunk[c].as_ref()).collect();
            Ok(concat(&columns)?)
        })
        .collect()
}

/// Per-window aggregation state, freed when the window fires.
pub struct WindowAggregate {
    /// Input columns interned per window: the keys but the window key
    /// (which is constant within a window), or just it when alone.
    group_columns: Vec<usize>,
    /// Which keys those are, by position among the keys.
    group_keys: Vec<usize>,
    group_schema: SchemaRef,
    /// The keys constant within a window, in order: not interned.
    constant_keys: Vec<usize>,
    panes: Option<Panes>,
    /// With partial states as input: where each aggregate's state columns
    /// start after the keys (and one past the last).
    merged_states: Option<Vec<usize>>,
    key_columns: Vec<usize>,
    window_key: usize,
    size_ns: i64,
    aggregates: Arc<[AggregateCall]>,
    output: SchemaRef,
    processing_time: bool,
    allowed_lateness_ns: i64,
    /// Open windows by start (nanoseconds).
    windows: BTreeMap<i64, Window>,
    /// How keys map to key groups, and which this subtask owns.
    key_groups: KeyGroups,
    watermark: i64,
    metrics: Arc<JobMetrics>,
    gauge: StateGauge,
}

/// A DataFusion error of the window aggregate, as a job error naming it.
pub(crate) fn df(e: impl std::fmt::Display) -> FlumenError {
    FlumenError::execution(format!("window aggregate: {e}"))
}

impl WindowAggregate {
    /// A window without groups, whose constant keys are `constants`.
    fn new_window(&self, constants: Vec<ScalarValue>) -> Result<Window> {
        let groups = crate::string_groups::group_values(&self.group_schema).map_err(df)?;
        Ok(Window {
            constants,
            groups,
            keys: Vec::new(),
            small_chunks: 0,
            key_bytes: 0,
            accumulators: new_accumulators(&self.aggregates)?,
            layers: Layers::default(),
            emitted: None,
            dirty: false,
        })
    }

    fn update(&mut self, start: i64, rows: &RecordBatch) -> Result<()> {
        if !self.windows.contains_key(&start) {
            let constants = self
                .constant_keys
                .iter()
                .map(|&k| ScalarValue::try_from_array(rows.column(self.key_columns[k]), 0))
                .collect::<datafusion::common::Result<Vec<_>>>()
                .map_err(df)?;
            let window = self.new_window(constants)?;
            self.windows.insert(start, window);
        }
        let window = self.windows.get_mut(&start).expect("inserted above");
        let keys: Vec<ArrayRef> = self
            .group_columns
            .iter()
            .map(|&c| rows.column(c).clone())
            .collect();
        let mut group_indices = Vec::with_capacity(rows.num_rows());
        window.intern(&keys, &mut group_indices)?;
        let total = window.groups.len();
        if let Some(starts) = &self.merged_states {
            let k = self.key_columns.len();
            for (a, acc) in window.accumulators.iter_mut().enumerate() {
                let state = &rows.columns()[k + starts[a]..k + starts[a + 1]];
                acc.merge_batch(state, &group_indices, total).map_err(df)?;
            }
            window.dirty = true;
            return Ok(());
        }
        for (agg, acc) in self.aggregates.iter().zip(&mut window.accumulators) {
            agg.update(acc.as_mut(), rows, &group_indices, total)?;
        }
        window.dirty = true;
        Ok(())
    }

    /// The window's keys (all of them), in group order, read from its copy
    /// of the keys.
    fn read_keys(&self, window: &mut Window) -> Result<Vec<ArrayRef>> {
        let keys = if window.keys.is_empty() {
            self.group_schema
                .fields()
                .iter()
                .map(|f| new_empty_array(f.data_type()))
                .collect()
        } else {
            window.joined_keys()?
        };
        self.all_keys(window, keys)
    }

    /// All key columns from the interned ones: the constant keys' columns
    /// put back in their places.
    fn all_keys(&self, window: &Window, keys: Vec<ArrayRef>) -> Result<Vec<ArrayRef>> {
        insert_constants(keys, &self.constant_keys, &window.constants)
    }

    /// The window's current result (keys and aggregates), leaving its state
    /// as it was: its state is frozen into one layer, which a fresh set of
    /// accumulators merges and evaluates.
    fn result(&self, window: &mut Window) -> Result<RecordBatch> {
        let mut columns = self.read_keys(window)?;
        window
            .layers
            .freeze(&mut window.accumulators, &self.aggregates)?;
        window.layers.compact(&self.aggregates)?;
        for mut eval in window.layers.merged(&self.aggregates)? {
            columns.push(eval.evaluate(EmitTo::All).map_err(df)?);
        }
        let fields = self.output.fields()[..columns.len()].to_vec();
        Ok(RecordBatch::try_new(
            Arc::new(arrow::datatypes::Schema::new(fields)),
            columns,
        )?)
    }

    /// The corrections from `old` to `new` (group `i` is row `i` of both):
    /// `-U`/`+U` for changed groups, `+I` for new ones.
    fn corrections(&self, old: Option<&RecordBatch>, new: &RecordBatch) -> Result<RecordBatch> {
        let n_old = old.map_or(0, RecordBatch::num_rows);
        let mut changed: Vec<u32> = Vec::new();
        if let Some(old) = old {
            let prefix = new.slice(0, n_old);
            let mut differs = vec![false; n_old];
            for (a, b) in old.columns().iter().zip(prefix.columns()) {
                let d = arrow::compute::kernels::cmp::distinct(a, b)?;
                for (i, x) in d.iter().enumerate() {
                    differs[i] |= x.unwrap_or(false);
                }
            }
            changed = (0..n_old as u32).filter(|&i| differs[i as usize]).collect();
        }
        let indices = UInt32Array::from(changed.clone());
        let mut parts = Vec::new();
        let tagged = |batch: &RecordBatch, op: RowOp| -> Result<RecordBatch> {
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(Int8Array::from(vec![op as i8; batch.num_rows()])));
            Ok(RecordBatch::try_new(self.output.clone(), columns)?)
        };
        if let Some(old) = old {
            parts.push(tagged(
                &take_record_batch(old, &indices)?,
                RowOp::UpdateBefore,
            )?);
            parts.push(tagged(
                &take_record_batch(new, &indices)?,
                RowOp::UpdateAfter,
            )?);
        }
        parts.push(tagged(
            &new.slice(n_old, new.num_rows() - n_old),
            RowOp::Insert,
        )?);
        Ok(arrow::compute::concat_batches(&self.output, &parts)?)
    }

    /// With allowed lateness: emits every closed window not yet emitted or
    /// changed since, then frees the windows past their lateness.
    fn fire_with_lateness(&mut self, upto: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        let closed: Vec<i64> = self
            .windows
            .range(..=upto.saturating_sub(self.size_ns))
            .filter(|(_, w)| w.dirty)
            .map(|(&s, _)| s)
            .collect();
        for start in closed {
            let mut window = self.windows.remove(&start).expect("listed above");
            let result = self.result(&mut window)?;
            let changes = self.corrections(window.emitted.as_ref(), &result)?;
            if changes.num_rows() > 0 {
                out.push(changes);
            }
            window.emitted = Some(result);
            window.dirty = false;
            self.windows.insert(start, window);
        }
        let horizon = upto
            .saturating_sub(self.size_ns)
            .saturating_sub(self.allowed_lateness_ns);
        while let Some(entry) = self.windows.first_entry() {
            if *entry.key() > horizon {
                break;
            }
            entry.remove();
        }
        Ok(())
    }

    /// Adds the snapshot rows `rows` of one window (its emitted groups
    /// first) to the window starting at `start`.
    fn restore_window(&mut self, start: i64, rows: &RecordBatch, emitted: usize) -> Result<()> {
        let (_, states) = state_fields(&self.aggregates)?;
        let k = self.key_columns.len();
        let keys = &rows.columns()[1..1 + k];
        let mut window = match self.windows.remove(&start) {
            Some(w) => w,
            None => {
                let constants = self
                    .constant_keys
                    .iter()
                    .map(|&k| ScalarValue::try_from_array(&keys[k], 0))
                    .collect::<datafusion::common::Result<Vec<_>>>()
                    .map_err(df)?;
                self.new_window(constants)?
            }
        };
        let interned: Vec<ArrayRef> = self.group_keys.iter().map(|&g| keys[g].clone()).collect();
        let mut ids = Vec::with_capacity(rows.num_rows());
        window.intern(&interned, &mut ids)?;
        let total = window.groups.len();
        for (a, acc) in window.accumulators.iter_mut().enumerate() {
            let state = &rows.columns()[1 + k + states[a]..1 + k + states[a + 1]];
            acc.merge_batch(state, &ids, total).map_err(df)?;
        }
        let after = 1 + k + states[self.aggregates.len()];
        window.dirty |= rows.column(after).as_boolean().true_count() > 0;
        if emitted > 0 {
            let columns: Vec<ArrayRef> = keys
                .iter()
                .chain(&rows.columns()[after + 2..])
                .map(|c| c.slice(0, emitted))
                .collect();
            let fields = self.output.fields()[..columns.len()].to_vec();
            window.emitted = Some(RecordBatch::try_new(
                Arc::new(arrow::datatypes::Schema::new(fields)),
                columns,
            )?);
        }
        self.windows.insert(start, window);
        Ok(())
    }

    /// With panes: builds and emits every sliding window that ends after
    /// `from` and at or before `upto` (a window closes once the watermark
    /// reaches its end), in order, and frees each pane once the last window
    /// holding it, the one it starts, has fired. Windows without a pane are
    /// skipped, so a watermark jump costs nothing.
    fn fire_panes(
        &mut self,
        slide: i64,
        from: i64,
        upto: i64,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let size = self.size_ns;
        // The first window not yet fired: the least start, a multiple of
        // the slide, whose window ends after `from`.
        let mut start = if from == i64::MIN {
            i64::MIN
        } else {
            from.saturating_sub(size).div_euclid(slide) * slide + slide
        };
        while let Some(&pane) = self.windows.range(start..).next().map(|(p, _)| p) {
            if pane >= start.saturating_add(size) {
                // The windows before this pane's first one are empty.
                start = pane - size + slide;
            }
            if start.saturating_add(size) > upto {
                break;
            }
            if let Some(batch) = self.build_window(start)? {
                out.push(batch);
            }
            while let Some(entry) = self.windows.first_entry() {
                if *entry.key() > start {
                    break;
                }
                entry.remove();
            }
            start += slide;
        }
        Ok(())
    }

    /// The sliding window starting at `start`: its panes' groups and
    /// accumulator states merged (the panes keep theirs for the next
    /// windows), its keys moved from each pane's to its own; `None` when no
    /// pane holds a group.
    fn build_window(&mut self, start: i64) -> Result<Option<RecordBatch>> {
        let end = start.saturating_add(self.size_ns);
        let mut groups = crate::string_groups::group_values(&self.group_schema).map_err(df)?;
        let mut accumulators = new_accumulators(&self.aggregates)?;
        let mut constants = None;
        let mut ids = Vec::new();
        for (&pane_start, pane) in self.windows.range_mut(start..end) {
            if pane.groups.is_empty() {
                continue;
            }
            if constants.is_none() {
                constants = Some(
                    pane.constants
                        .iter()
                        .map(|v| shift_timestamp(v, start - pane_start))
                        .collect::<Result<Vec<_>>>()?,
                );
            }
            let keys = pane.joined_keys()?;
            groups.intern(&keys, &mut ids).map_err(df)?;
            let total = groups.len();
            if let Some(layer) = pane
                .layers
                .whole_layer(&mut pane.accumulators, &self.aggregates)?
            {
                for (acc, state) in accumulators.iter_mut().zip(&layer.states) {
                    acc.merge_batch(state, &ids[..layer.groups], total)
                        .map_err(df)?;
                }
            }
        }
        let Some(constants) = constants else {
            return Ok(None);
        };
        let keys = groups.emit(EmitTo::All).map_err(df)?;
        let mut columns = insert_constants(keys, &self.constant_keys, &constants)?;
        for mut acc in accumulators {
            columns.push(acc.evaluate(EmitTo::All).map_err(df)?);
        }
        Ok(Some(RecordBatch::try_new(self.output.clone(), columns)?))
    }

    fn emit(&self, mut window: Window) -> Result<RecordBatch> {
        let keys = window.groups.emit(EmitTo::All).map_err(df)?;
        let mut columns = self.all_keys(&window, keys)?;
        for mut acc in window.whole(&self.aggregates)? {
            columns.push(acc.evaluate(EmitTo::All).map_err(df)?);
        }
        Ok(RecordBatch::try_new(self.output.clone(), columns)?)
    }
}

impl Operator for WindowAggregate {
    fn process_batch(&mut self, batch: RecordBatch, _out: &mut Vec<RecordBatch>) -> Result<()> {
        if self.processing_time {
            self.watermark = self
                .watermark
                .max(wall_clock_ns() - PROCESSING_TIME_DELAY_NS);
        }
        let column = batch.column(self.key_columns[self.window_key]);
        let starts = cast(
            &cast(column, &DataType::Timestamp(TimeUnit::Nanosecond, None))?,
            &DataType::Int64,
        )?;
        let starts = starts.as_primitive::<Int64Type>();
        // Rows of each window in this batch. A batch touches few windows
        // (event time is mostly in order; a sliding window's rows come in
        // runs of its windows), so they are found by a scan of the few seen
        // so far, and by a hash map only once there are many.
        let mut windows: Vec<(i64, Vec<u32>)> = Vec::new();
        let mut slot_of: HashMap<i64, usize> = HashMap::new();
        let mut last: Option<(i64, usize)> = None;
        const SCANNED: usize = 16;
        let mut late = 0;
        for (row, start) in starts.iter().enumerate() {
            let Some(s) = start.filter(|s| {
                s.saturating_add(self.size_ns)
                    .saturating_add(self.allowed_lateness_ns)
                    > self.watermark
            }) else {
                late += 1;
                continue;
            };
            let slot = match last {
                Some((prev, slot)) if prev == s => slot,
                _ if windows.len() <= SCANNED => match windows.iter().position(|(w, _)| *w == s) {
                    Some(slot) => slot,
                    None => {
                        windows.push((s, Vec::new()));
                        if windows.len() > SCANNED {
                            slot_of.extend(windows.iter().enumerate().map(|(i, w)| (w.0, i)));
                        }
                        windows.len() - 1
                    }
                },
                _ => *slot_of.entry(s).or_insert_with(|| {
                    windows.push((s, Vec::new()));
                    windows.len() - 1
                }),
            };
            last = Some((s, slot));
            windows[slot].1.push(row as u32);
        }
        self.metrics.add_late_rows_dropped(late);
        for (start, rows) in windows {
            let part = if rows.len() == batch.num_rows() {
                batch.clone()
            } else {
                take_record_batch(&batch, &UInt32Array::from(rows))?
            };
            self.update(start, &part)?;
        }
        Ok(())
    }

    fn process_watermark(
        &mut self,
        watermark: Watermark,
        out: &mut Vec<RecordBatch>,
    ) -> Result<Option<Watermark>> {
        let now = if self.processing_time && watermark != Watermark::MAX {
            wall_clock_ns() - PROCESSING_TIME_DELAY_NS
        } else {
            watermark.0
        };
        let before = self.watermark;
        self.watermark = self.watermark.max(now);
        if let Some(slide) = self.panes.as_ref().map(|p| p.slide_ns) {
            self.fire_panes(slide, before, self.watermark, out)?;
        } else if self.allowed_lateness_ns > 0 {
            self.fire_with_lateness(self.watermark, out)?;
        } else {
            while let Some(entry) = self.windows.first_entry() {
                if entry.key().saturating_add(self.size_ns) > self.watermark {
                    break;
                }
                let window = entry.remove();
                out.push(self.emit(window)?);
            }
        }
        let bytes = self.windows.values().map(Window::size).sum();
        self.metrics.report_state(&mut self.gauge, bytes);
        Ok(Some(watermark))
    }

    fn timer_interval(&self) -> Option<std::time::Duration> {
        self.processing_time
            .then_some(std::time::Duration::from_millis(100))
    }

    /// Processing-time windows close by the wall clock even when no row or
    /// watermark arrives.
    fn on_timer(&mut self, out: &mut Vec<RecordBatch>) -> Result<()> {
        self.watermark = self
            .watermark
            .max(wall_clock_ns() - PROCESSING_TIME_DELAY_NS);
        while let Some(entry) = self.windows.first_entry() {
            if entry.key().saturating_add(self.size_ns) > self.watermark {
                break;
            }
            let window = entry.remove();
            out.push(self.emit(window)?);
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<RecordBatch>) -> Result<()> {
        if let Some(slide) = self.panes.as_ref().map(|p| p.slide_ns) {
            self.fire_panes(slide, self.watermark, i64::MAX, out)?;
        }
        if self.allowed_lateness_ns > 0 {
            self.fire_with_lateness(i64::MAX, out)?;
        }
        while let Some((_, window)) = self.windows.pop_first() {
            out.push(self.emit(window)?);
        }
        self.metrics.report_state(&mut self.gauge, 0);
        Ok(())
    }

    /// Freezes each window's aggregate state (no copy) and leaves building
    /// its snapshot rows to the snapshot's writer.
    fn snapshot_state(&mut self) -> Result<StateSnapshot> {
        let mut snapshot = StateSnapshot::default();
        // Rows go to the key groups the exchange sends their keys to: with
        // panes, by the keys but the window's.
        let keys: Vec<usize> = if self.panes.is_some() {
            self.group_keys.iter().map(|g| 1 + g).collect()
        } else {
            (1..=self.key_columns.len()).collect()
        };
        for (&start, window) in &mut self.windows {
            window
                .layers
                .freeze(&mut window.accumulators, &self.aggregates)?;
            let rows = WindowRows {
                start,
                groups: window.groups.len(),
                keys: window.keys.clone(),
                constants: window.constants.clone(),
                constant_keys: self.constant_keys.clone(),
                key_count: self.key_columns.len(),
                layers: window.layers.share(),
                dirty: window.dirty,
                emitted: window.emitted.clone(),
                aggregates: self.aggregates.clone(),
                output: self.output.clone(),
            };
            snapshot.add_deferred(
                WINDOW_TABLE,
                rows.groups,
                &keys,
                self.key_groups.max_parallelism,
                move || rows.build(),
            );
        }
        // The watermark, so that a restored subtask knows which windows
        // have fired (with panes, a pane outlives its first windows) and
        // which rows are late: a row in every key group it owns.
        if self.watermark > i64::MIN {
            let range = self.key_groups.range;
            let key_groups: Vec<KeyGroup> = (range.start..range.end).collect();
            let values = Int64Array::from_value(self.watermark, key_groups.len());
            snapshot.add_columns(WATERMARK_TABLE, vec![Arc::new(values)], &key_groups)?;
        }
        Ok(snapshot)
    }

    /// Gathers each window's groups from the stored parts (one copy; no
    /// concatenated copy of the whole table first).
    fn restore_state(&mut self, snapshot: &StateSnapshot) -> Result<()> {
        // Every subtask had the same watermark at the barrier; the least
        // fires nothing twice that a greater one would have kept.
        let mut least: Option<i64> = None;
        for batch in snapshot.batches(WATERMARK_TABLE, self.key_groups.range)? {
            let marks = state_column::<Int64Array>(&batch, WATERMARK_TABLE, 0)?;
            least = least
                .into_iter()
                .chain(marks.values().iter().copied())
                .min();
        }
        if let Some(least) = least {
            self.watermark = self.watermark.max(least);
        }
        let parts = snapshot.batches(WINDOW_TABLE, self.key_groups.range)?;
        let k = self.key_columns.len();
        let (_, states) = state_fields(&self.aggregates)?;
        // Rows (part, row) of each window: emitted groups, then the others.
        type Picked = Vec<(usize, usize)>;
        let mut rows: BTreeMap<i64, (Picked, Picked)> = BTreeMap::new();
        for (p, batch) in parts.iter().enumerate() {
            let emitted = state_column::<BooleanArray>(
                batch,
                WINDOW_TABLE,
                2 + k + states[self.aggregates.len()],
            )?;
            let starts = state_column::<Int64Array>(batch, WINDOW_TABLE, 0)?;
            for (row, start) in starts.values().iter().enumerate() {
                let (sent, unsent) = rows.entry(*start).or_default();
                if emitted.value(row) { sent } else { unsent }.push((p, row));
            }
        }
        for (start, (sent, unsent)) in rows {
            let emitted = sent.len();
            let picked: Vec<(usize, usize)> = sent.into_iter().chain(unsent).collect();
            let window = gather_parts(WINDOW_TABLE, &parts, &picked)?;
            self.restore_window(start, &window, emitted)?;
        }
        Ok(())
    }
}

/// The snapshot table of open windows' groups.
const WINDOW_TABLE: usize = 0;
/// The snapshot table of the subtask's watermark, one row per key group.
const WATERMARK_TABLE: usize = 1;

/// What a snapshot keeps of one window, to build its rows from later.
struct WindowRows {
    start: i64,
    groups: usize,
    /// The window's copy of its keys, as chunks in group order.
    keys: Vec<Vec<ArrayRef>>,
    /// The values of the keys not interned, and their positions.
    constants: Vec<ScalarValue>,
    constant_keys: Vec<usize>,
    /// How many keys the output has, the window key among them.
    key_count: usize,
    layers: SharedLayers,
    dirty: bool,
    emitted: Option<RecordBatch>,
    aggregates: Arc<[AggregateCall]>,
    output: SchemaRef,
}

impl WindowRows {
    /// One row per group: `start`, the keys, the accumulator states,
    /// whether the window changed since it last fired, and (with allowed
    /// lateness) whether the group was emitted and its emitted aggregates;
    /// as one part per chunk of the key copy, so no key is copied.
    fn build(self) -> Result<Vec<Vec<ArrayRef>>> {
        let n = self.groups;
        let states = self.layers.states(&self.aggregates, n)?;
        let dirty: ArrayRef = Arc::new(BooleanArray::new(
            if self.dirty {
                BooleanBuffer::new_set(n)
            } else {
                BooleanBuffer::new_unset(n)
            },
            None,
        ));
        let emitted = self.emitted.as_ref().map_or(0, RecordBatch::num_rows);
        let mut sent = BooleanBufferBuilder::new(n);
        sent.append_n(emitted, true);
        sent.append_n(n - emitted, false);
        let sent: ArrayRef = Arc::new(BooleanArray::new(sent.finish(), None));
        let k = self.key_count;
        let mut tail = vec![dirty, sent];
        for a in 0..self.aggregates.len() {
            let field = self.output.field(k + a);
            let unsent = new_null_array(field.data_type(), n - emitted);
            tail.push(match &self.emitted {
                Some(old) => concat(&[old.column(k + a).as_ref(), unsent.as_ref()])?,
                None => unsent,
            });
        }
        let starts: ArrayRef = Arc::new(Int64Array::from_value(self.start, n));
        let constant_columns = self
            .constants
            .iter()
            .map(|v| v.to_array_of_size(n))
            .collect::<datafusion::common::Result<Vec<_>>>()
            .map_err(df)?;
        let mut parts = Vec::with_capacity(self.keys.len());
        let mut at = 0;
        for chunk in self.keys {
            let len = chunk.first().map_or(0, |c| c.len());
            let mut columns: Vec<ArrayRef> = vec![starts.slice(at, len)];
            let mut keys = chunk;
            for (&k, c) in self.constant_keys.iter().zip(&constant_columns) {
                keys.insert(k, c.slice(at, len));
            }
            columns.extend(keys);
            columns.extend(states.iter().chain(&tail).map(|c| c.slice(at, len)));
            parts.push(columns);
            at += len;
        }
        Ok(parts)
    }
}

/// `keys` with the constant keys' columns, `values` at positions
/// `positions` (ascending), put back in their places.
fn insert_constants(
    mut keys: Vec<ArrayRef>,
    positions: &[usize],
    values: &[ScalarValue],
) -> Result<Vec<ArrayRef>> {
    let n = keys.first().map_or(0, |k| k.len());
    for (&k, v) in positions.iter().zip(values) {
        keys.insert(k, v.to_array_of_size(n).map_err(df)?);
    }
    Ok(keys)
}

/// A timestamp key `delta_ns` later (earlier when negative): a pane's
/// window keys moved to another window holding it.
fn shift_timestamp(value: &ScalarValue, delta_ns: i64) -> Result<ScalarValue> {
    let shifted = |v: &Option<i64>, per: i64| -> Result<Option<i64>> {
        if delta_ns % per != 0 {
            return Err(FlumenError::internal(format!(
                "window aggregate: a slide of {delta_ns} ns does not fit the key's unit"
            )));
        }
        Ok(v.map(|v| v + delta_ns / per))
    };
    Ok(match value {
        ScalarValue::TimestampSecond(v, tz) => {
            ScalarValue::TimestampSecond(shifted(v, 1_000_000_000)?, tz.clone())
        }
        ScalarValue::TimestampMillisecond(v, tz) => {
            ScalarValue::TimestampMillisecond(shifted(v, 1_000_000)?, tz.clone())
        }
        ScalarValue::TimestampMicrosecond(v, tz) => {
            ScalarValue::TimestampMicrosecond(shifted(v, 1_000)?, tz.clone())
        }
        ScalarValue::TimestampNanosecond(v, tz) => {
            ScalarValue::TimestampNanosecond(shifted(v, 1)?, tz.clone())
        }
        other => {
            return Err(FlumenError::internal(format!(
                "window aggregate: a pane's window key {other:?} is not a timestamp"
            )));
        }
    })
}
