//! Session windows: per key, rows closer than a gap to one another form one
//! session `[first time, last time + gap)`. Each row arrives as a session of
//! its own (`[t, t + gap)`, computed upstream); a batch's rows are sorted by
//! key and start, runs of overlapping rows are folded into one update, and a
//! run that overlaps sessions already open merges them (their accumulator
//! states are merged). A session is emitted once, when the watermark passes
//! its end, and freed.
//!
//! Sessions hold DataFusion row `Accumulator`s: merging two sessions of a key
//! combines two states, which `GroupsAccumulator` has no call for.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;
use flumen_runtime::{JobMetrics, Operator, OperatorFactory, StateGauge, TaskContext};
use flumen_state::{KeyGroupRange, KeyedTable, StateSnapshot, state_column};
use flumen_types::{FlumenError, Result, Watermark};

use crate::columns::{merge_state, row_state_fields, scalar_column, take_states};
use crate::window_aggregate::{AggregateCall, names, sorted_arguments};

/// What one group-by column of the output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionColumn {
    /// The i-th key column.
    Key(usize),
    /// The session's start.
    Start,
    /// The session's end.
    End,
}

/// Makes [`SessionAggregate`] operators.
pub struct SessionAggregateFactory {
    /// Input columns of the key sessions are kept apart by.
    pub key_columns: Vec<usize>,
    /// Input column with each row's own session start (its time).
    pub start_column: usize,
    /// Input column with each row's own session end (its time plus the gap).
    pub end_column: usize,
    /// The group-by columns of the output, in order.
    pub layout: Vec<SessionColumn>,
    /// The aggregates, in output order after the group-by columns.
    pub aggregates: Vec<AggregateCall>,
    /// The input's schema.
    pub input: SchemaRef,
    /// The group-by columns, then one column per aggregate.
    pub output: SchemaRef,
}

impl OperatorFactory for SessionAggregateFactory {
    fn describe(&self) -> String {
        format!(
            "SessionAggregate: keys {:?}, sessions from columns {} to {}, [{}]",
            self.key_columns,
            self.start_column,
            self.end_column,
            names(&self.aggregates)
        )
    }

    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        Ok(Box::new(SessionAggregate::from_factory(self, ctx)?))
    }
}

impl SessionAggregate {
    /// A subtask of `factory`.
    fn from_factory(factory: &SessionAggregateFactory, ctx: &TaskContext) -> Result<Self> {
        let key_fields: Vec<_> = factory
            .key_columns
            .iter()
            .map(|&c| factory.input.field(c).clone())
            .collect();
        Ok(SessionAggregate {
            key_columns: factory.key_columns.clone(),
            start_column: factory.start_column,
            end_column: factory.end_column,
            layout: factory.layout.clone(),
            aggregates: factory.aggregates.clone(),
            output: factory.output.clone(),
            keys: KeyedTable::new(key_fields, ctx.key_groups)?,
            owned: ctx.key_groups.range,
            sessions: Vec::new(),
            closing: BTreeMap::new(),
            watermark: i64::MIN,
            open_sessions: 0,
            live_keys: 0,
            metrics: ctx.metrics.clone(),
            gauge: StateGauge::default(),
        })
    }
}

fn err(e: impl std::fmt::Display) -> FlumenError {
    FlumenError::execution(format!("session window: {e}"))
}

/// Keys without an open session kept beyond as many as there are keys with
/// one: forgetting a key costs re-interning every live key.
const IDLE_KEYS_KEPT: usize = 4096;

/// An open session of one key.
struct Session {
    end: i64,
    accumulators: Vec<Box<dyn Accumulator>>,
}

/// The open sessions of one subtask.
pub struct SessionAggregate {
    key_columns: Vec<usize>,
    start_column: usize,
    end_column: usize,
    layout: Vec<SessionColumn>,
    aggregates: Vec<AggregateCall>,
    output: SchemaRef,
    /// The keys, by key id.
    keys: KeyedTable,
    /// The key groups this subtask owns.
    owned: KeyGroupRange,
    /// Per key id: open sessions by start (ns); disjoint.
    sessions: Vec<BTreeMap<i64, Session>>,
    /// Session ends (ns) to the (key, start) of sessions that may end then;
    /// an entry whose session has since grown is skipped.
    closing: BTreeMap<i64, Vec<(usize, i64)>>,
    watermark: i64,
    /// Sessions open over all keys.
    open_sessions: usize,
    /// Keys with at least one open session; the others are dropped from
    /// `keys` once they outnumber these (see [`IDLE_KEYS_KEPT`]).
    live_keys: usize,
    metrics: Arc<JobMetrics>,
    gauge: StateGauge,
}

fn nanos(column: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let ns = cast(
        &cast(column, &DataType::Timestamp(TimeUnit::Nanosecond, None))?,
        &DataType::Int64,
    )?;
    Ok(ns.as_primitive::<Int64Type>().iter().collect())
}

fn new_accumulator(aggregates: &[AggregateCall], a: usize) -> Result<Box<dyn Accumulator>> {
    aggregates[a].function.create_accumulator().map_err(err)
}

impl SessionAggregate {
    fn new_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        (0..self.aggregates.len())
            .map(|a| new_accumulator(&self.aggregates, a))
            .collect()
    }

    /// Opens session `[start, end)` of key `key`.
    fn open(&mut self, key: usize, start: i64, end: i64, accumulators: Vec<Box<dyn Accumulator>>) {
        self.open_sessions += 1;
        if self.sessions[key].is_empty() {
            self.live_keys += 1;
        }
        self.sessions[key].insert(start, Session { end, accumulators });
        self.closing.entry(end).or_default().push((key, start));
    }

    /// Folds `from`'s state into `into`.
    fn merge(into: &mut [Box<dyn Accumulator>], from: Vec<Box<dyn Accumulator>>) -> Result<()> {
        for (acc, mut other) in into.iter_mut().zip(from) {
            let state: Vec<ArrayRef> = other
                .state()
                .map_err(err)?
                .iter()
                .map(|v| v.to_array())
                .collect::<datafusion::common::Result<_>>()
                .map_err(err)?;
            acc.merge_batch(&state).map_err(err)?;
        }
        Ok(())
    }

    /// Adds the rows `range` (of the sorted arguments) as one session
    /// `[start, end)` of key `key`, merging the open sessions it overlaps.
    fn add_run(
        &mut self,
        key: usize,
        start: i64,
        end: i64,
        arguments: &[Vec<ArrayRef>],
        range: std::ops::Range<usize>,
    ) -> Result<()> {
        let sessions = &mut self.sessions[key];
        let was_live = !sessions.is_empty();
        let overlapping: Vec<i64> = sessions
            .range(..end)
            .rev()
            .take_while(|(_, s)| s.end > start)
            .map(|(&s, _)| s)
            .collect();
        let (mut new_start, mut new_end) = (start, end);
        let mut merged: Option<Vec<Box<dyn Accumulator>>> = None;
        for s in overlapping {
            let session = sessions.remove(&s).expect("listed above");
            self.open_sessions -= 1;
            new_start = new_start.min(s);
            new_end = new_end.max(session.end);
            match &mut merged {
                None => merged = Some(session.accumulators),
                Some(into) => Self::merge(into, session.accumulators)?,
            }
        }
        if was_live && sessions.is_empty() {
            self.live_keys -= 1;
        }
        let mut accumulators = match merged {
            Some(a) => a,
            None => self.new_accumulators()?,
        };
        for (acc, args) in accumulators.iter_mut().zip(arguments) {
            let part: Vec<ArrayRef> = args
                .iter()
                .map(|v| v.slice(range.start, range.len()))
                .collect();
            acc.update_batch(&part).map_err(err)?;
        }
        self.open(key, new_start, new_end, accumulators);
        Ok(())
    }

    /// Emits and frees every session ending at or before `upto`.
    fn close(&mut self, upto: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        let mut closed: Vec<(usize, i64, i64, Vec<ScalarValue>)> = Vec::new();
        while let Some(entry) = self.closing.first_entry() {
            if *entry.key() > upto {
                break;
            }
            let end = *entry.key();
            for (key, start) in entry.remove() {
                let still = self.sessions[key].get(&start).is_some_and(|s| s.end == end);
                if !still {
                    continue;
                }
                let mut session = self.sessions[key].remove(&start).expect("checked above");
                self.open_sessions -= 1;
                if self.sessions[key].is_empty() {
                    self.live_keys -= 1;
                }
                let values = session
                    .accumulators
                    .iter_mut()
                    .map(|a| a.evaluate().map_err(err))
                    .collect::<Result<Vec<_>>>()?;
                closed.push((key, start, end, values));
            }
        }
        if !closed.is_empty() {
            out.push(self.emit(&closed)?);
        }
        Ok(())
    }

    /// Forgets the keys without an open session once they outnumber the
    /// others (plus [`IDLE_KEYS_KEPT`]): the keys that stay are interned
    /// again, in order, and the session and closing lists follow their new
    /// ids. Amortised O(1) per key, and state stays bounded by open sessions.
    fn drop_idle_keys(&mut self) -> Result<()> {
        if self.keys.len() <= 2 * self.live_keys + IDLE_KEYS_KEPT {
            return Ok(());
        }
        let keep: Vec<usize> = (0..self.keys.len())
            .filter(|&k| !self.sessions[k].is_empty())
            .collect();
        let mut new_id = vec![usize::MAX; self.keys.len()];
        for (n, &k) in keep.iter().enumerate() {
            new_id[k] = n;
        }
        self.keys.retain(&keep)?;
        self.sessions.retain(|s| !s.is_empty());
        for entries in self.closing.values_mut() {
            entries.retain_mut(|(key, _)| {
                *key = new_id[*key];
                *key != usize::MAX
            });
        }
        Ok(())
    }

    fn emit(&self, closed: &[(usize, i64, i64, Vec<ScalarValue>)]) -> Result<RecordBatch> {
        let keys = self.keys.emit(closed.iter().map(|c| c.0))?;
        let time = |values: Vec<i64>, field: usize| -> Result<ArrayRef> {
            let ns = cast(
                &Int64Array::from(values),
                &DataType::Timestamp(TimeUnit::Nanosecond, None),
            )?;
            Ok(cast(&ns, self.output.field(field).data_type())?)
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.output.fields().len());
        for (i, part) in self.layout.iter().enumerate() {
            columns.push(match part {
                SessionColumn::Key(k) => keys[*k].clone(),
                SessionColumn::Start => time(closed.iter().map(|c| c.1).collect(), i)?,
                SessionColumn::End => time(closed.iter().map(|c| c.2).collect(), i)?,
            });
        }
        for a in 0..self.aggregates.len() {
            let field = self.output.field(columns.len());
            columns.push(scalar_column(closed.iter().map(|c| c.3[a].clone()), field)?);
        }
        Ok(RecordBatch::try_new(self.output.clone(), columns)?)
    }
}

impl Operator for SessionAggregate {
    fn process_batch(&mut self, batch: RecordBatch, _out: &mut Vec<RecordBatch>) -> Result<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let starts = nanos(batch.column(self.start_column))?;
        let ends = nanos(batch.column(self.end_column))?;
        let key_arrays: Vec<ArrayRef> = self
            .key_columns
            .iter()
            .map(|&c| batch.column(c).clone())
            .collect();
        let mut ids = Vec::with_capacity(rows);
        self.keys.intern(&key_arrays, rows, &mut ids)?;
        self.sessions.resize_with(self.keys.len(), BTreeMap::new);
        // Rows by key and start; late rows (their own session already
        // closed by the watermark) are dropped and counted.
        let mut order: Vec<(usize, i64, i64, u32)> = Vec::with_capacity(rows);
        let mut late = 0;
        for row in 0..rows {
            match (starts[row], ends[row]) {
                (Some(s), Some(e)) if e > self.watermark => {
                    order.push((ids[row], s, e, row as u32))
                }
                _ => late += 1,
            }
        }
        self.metrics.add_late_rows_dropped(late);
        order.sort_unstable();
        let indices = UInt32Array::from_iter_values(order.iter().map(|o| o.3));
        let arguments = sorted_arguments(&self.aggregates, &batch, &indices)?;
        let mut i = 0;
        while i < order.len() {
            let (key, start, mut end, _) = order[i];
            let mut j = i + 1;
            while j < order.len() && order[j].0 == key && order[j].1 < end {
                end = end.max(order[j].2);
                j += 1;
            }
            self.add_run(key, start, end, &arguments, i..j)?;
            i = j;
        }
        Ok(())
    }

    fn process_watermark(
        &mut self,
        watermark: Watermark,
        out: &mut Vec<RecordBatch>,
    ) -> Result<Option<Watermark>> {
        self.watermark = self.watermark.max(watermark.0);
        self.close(self.watermark, out)?;
        self.drop_idle_keys()?;
        let per_session: usize = self.aggregates.len() * 64 + 48;
        let bytes = self.keys.size() + self.open_sessions * per_session;
        self.metrics.report_state(&mut self.gauge, bytes);
        Ok(Some(watermark))
    }

    fn finish(&mut self, out: &mut Vec<RecordBatch>) -> Result<()> {
        self.close(i64::MAX, out)?;
        self.metrics.report_state(&mut self.gauge, 0);
        Ok(())
    }

    fn snapshot_state(&mut self) -> Result<StateSnapshot> {
        let mut snapshot = StateSnapshot::default();
        if self.open_sessions == 0 {
            return Ok(snapshot);
        }
        let layout = row_state_fields(self.aggregates.len(), |a| {
            new_accumulator(&self.aggregates, a)
        })?;
        let (mut ids, mut starts, mut ends, mut key_groups) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut entries = Vec::with_capacity(self.open_sessions);
        for (key, sessions) in self.sessions.iter_mut().enumerate() {
            for (&start, session) in sessions.iter_mut() {
                ids.push(key);
                starts.push(start);
                ends.push(session.end);
                key_groups.push(self.keys.key_group(key));
                entries.push(session.accumulators.as_mut_slice());
            }
        }
        let aggregates = &self.aggregates;
        let states = take_states(entries.into_iter(), &layout, |a| {
            new_accumulator(aggregates, a)
        })?;
        let mut columns = self.keys.emit(ids.into_iter())?;
        let mut fields: Vec<Field> = self
            .key_columns
            .iter()
            .zip(&columns)
            .enumerate()
            .map(|(i, (_, c))| Field::new(format!("_key{i}"), c.data_type().clone(), true))
            .collect();
        fields.push(Field::new("_start", DataType::Int64, false));
        fields.push(Field::new("_end", DataType::Int64, false));
        fields.extend(layout.0.iter().cloned());
        columns.push(Arc::new(Int64Array::from(starts)));
        columns.push(Arc::new(Int64Array::from(ends)));
        columns.extend(states);
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        snapshot.add(0, &batch, &key_groups)?;
        Ok(snapshot)
    }

    /// Opens the stored sessions a part at a time, as stored (no copy of
    /// the whole table first).
    fn restore_state(&mut self, snapshot: &StateSnapshot) -> Result<()> {
        let k = self.key_columns.len();
        let (_, state_starts) = row_state_fields(self.aggregates.len(), |a| {
            new_accumulator(&self.aggregates, a)
        })?;
        let mut ids = Vec::new();
        for batch in snapshot.batches(0, self.owned)? {
            let starts = state_column::<Int64Array>(&batch, 0, k)?.clone();
            let ends = state_column::<Int64Array>(&batch, 0, k + 1)?.clone();
            ids.clear();
            self.keys
                .intern(&batch.columns()[..k], batch.num_rows(), &mut ids)?;
            self.sessions.resize_with(self.keys.len(), BTreeMap::new);
            let states = &batch.columns()[k + 2..];
            for (row, &key) in ids.iter().enumerate() {
                let mut accumulators = self.new_accumulators()?;
                for (a, acc) in accumulators.iter_mut().enumerate() {
                    let columns = &states[state_starts[a]..state_starts[a + 1]];
                    merge_state(acc.as_mut(), columns, row)?;
                }
                self.open(key, starts.value(row), ends.value(row), accumulators);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::Schema;
    use datafusion::functions_aggregate::count::count_udaf;
    use datafusion::physical_expr::aggregate::AggregateExprBuilder;
    use datafusion::physical_expr::expressions::col;

    use super::*;

    #[test]
    fn keys_whose_sessions_closed_are_forgotten() {
        let input = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("start", DataType::Int64, false),
            Field::new("end", DataType::Int64, false),
        ]));
        let count = AggregateExprBuilder::new(count_udaf(), vec![col("k", &input).unwrap()])
            .schema(input.clone())
            .alias("n")
            .build()
            .unwrap();
        let timestamp = DataType::Timestamp(TimeUnit::Nanosecond, None);
        let factory = SessionAggregateFactory {
            key_columns: vec![0],
            start_column: 1,
            end_column: 2,
            layout: vec![
                SessionColumn::Key(0),
                SessionColumn::Start,
                SessionColumn::End,
            ],
            aggregates: vec![AggregateCall {
                function: Arc::new(count),
                filter: None,
            }],
            input: input.clone(),
            output: Arc::new(Schema::new(vec![
                Field::new("k", DataType::Int64, false),
                Field::new("window_start", timestamp.clone(), false),
                Field::new("window_end", timestamp, false),
                Field::new("n", DataType::Int64, true),
            ])),
        };
        let ctx = TaskContext::new(0, 1, 128, Arc::new(JobMetrics::default()));
        let mut op = SessionAggregate::from_factory(&factory, &ctx).unwrap();
        // 1,000 keys per second, each seen once: a session of 1 s each.
        let mut out = Vec::new();
        for second in 0..50i64 {
            let keys = Int64Array::from_iter_values((0..1000).map(|k| second * 1000 + k));
            let start = Int64Array::from(vec![second; 1000]);
            let end = Int64Array::from(vec![second + 1; 1000]);
            let batch = RecordBatch::try_new(
                input.clone(),
                vec![Arc::new(keys), Arc::new(start), Arc::new(end)],
            )
            .unwrap();
            op.process_batch(batch, &mut out).unwrap();
            op.process_watermark(Watermark(second + 1), &mut out)
                .unwrap();
            assert!(op.keys.len() <= 2 * op.live_keys + IDLE_KEYS_KEPT + 1000);
        }
        let emitted: usize = out.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(emitted, 50_000, "every session fired once");
        assert!(op.keys.len() < 10_000, "{} keys kept", op.keys.len());
    }
}
