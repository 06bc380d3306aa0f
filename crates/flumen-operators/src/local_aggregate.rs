//! Local aggregation, the first phase of two-phase (local-global)
//! aggregation: in the task before the hash exchange, each batch's rows are
//! aggregated per group into one row of partial accumulator states, which
//! the window aggregate after the exchange merges. A hot key then crosses
//! the exchange once per batch instead of once per row, so one subtask does
//! not take most of the work (Flink's local-global aggregation). Nothing is
//! kept between batches: the operator has no state to checkpoint.
//!
//! Before a non-windowed aggregate each partial row also says how many
//! rows it holds; over an updating input a group's additions and its
//! retractions become two partial rows (the second marked as a retraction),
//! built with the retracting accumulators the aggregate after the exchange
//! keeps, so it can merge the one and take the other back.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int8Array, Int64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Int8Type, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Accumulator, EmitTo};
use datafusion::physical_plan::aggregates::group_values::GroupValues;
use flumen_runtime::{Operator, OperatorFactory, TaskContext};
use flumen_types::{FlumenError, Result, RowOp, op_field};

use crate::accumulator_layers::new_accumulators;
use crate::columns::{row_state_fields, scalar_column, state_fields};
use crate::updating_aggregate::group_order;
use crate::window_aggregate::{AggregateCall, names, sorted_arguments};

fn df(e: datafusion::error::DataFusionError) -> FlumenError {
    FlumenError::execution(format!("local aggregate: {e}"))
}

/// Makes [`LocalAggregate`] operators.
pub struct LocalAggregateFactory {
    /// Input columns holding the group keys, the window start among them.
    pub key_columns: Vec<usize>,
    /// The aggregates, with their filters: none of them DISTINCT (a
    /// partial set of distinct values is no smaller than the rows).
    pub aggregates: Vec<AggregateCall>,
    /// Schema of the key columns.
    pub key_schema: SchemaRef,
    /// What the partial rows say of the rows they hold.
    pub rows: PartialRows,
}

/// What a local aggregate's partial rows carry besides keys and states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartialRows {
    /// Nothing: a window aggregate needs no row count.
    Uncounted,
    /// A `_rows` column: how many rows each partial row aggregates.
    Counted,
    /// The input is updating, its op column at this index: a `_rows`
    /// column and an op column, `+I` for a group's additions and `-D` for
    /// its retractions.
    Retracting(usize),
}

/// The name of the row-count column of partial rows.
const PARTIAL_ROWS: &str = "_rows";

impl LocalAggregateFactory {
    /// The output: the keys, then each aggregate's state fields in order
    /// (what [`crate::WindowAggregateFactory`] and
    /// [`crate::UpdatingAggregateFactory`] merge when their `merge_states`
    /// is set), then the row count and op column when `rows` asks.
    pub fn output(&self) -> Result<SchemaRef> {
        let states = match self.rows {
            PartialRows::Retracting(_) => {
                row_state_fields(self.aggregates.len(), |a| sliding(&self.aggregates, a))?.0
            }
            _ => state_fields(&self.aggregates)?.0,
        };
        let mut fields: Vec<_> = self
            .key_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(states);
        if self.rows != PartialRows::Uncounted {
            fields.push(Field::new(PARTIAL_ROWS, DataType::Int64, false));
        }
        if let PartialRows::Retracting(_) = self.rows {
            fields.push(op_field());
        }
        Ok(Arc::new(Schema::new(fields)))
    }
}

impl OperatorFactory for LocalAggregateFactory {
    fn describe(&self) -> String {
        format!(
            "LocalAggregate: partial states per batch, keys {:?}, [{}]{}",
            self.key_columns,
            names(&self.aggregates),
            match self.rows {
                PartialRows::Retracting(_) => ", additions and retractions apart",
                _ => "",
            }
        )
    }

    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        Ok(Box::new(LocalAggregate {
            key_columns: self.key_columns.clone(),
            aggregates: self.aggregates.clone(),
            groups: crate::string_groups::group_values(&self.key_schema).map_err(df)?,
            rows: self.rows,
            output: self.output()?,
        }))
    }
}

/// Aggregates each batch into one row of partial states per group.
pub struct LocalAggregate {
    key_columns: Vec<usize>,
    aggregates: Vec<AggregateCall>,
    /// The groups of the batch being aggregated (emptied after each).
    groups: Box<dyn GroupValues>,
    rows: PartialRows,
    output: SchemaRef,
}

/// A fresh retracting accumulator of aggregate `a`, the kind a
/// non-windowed aggregate over an updating input keeps.
fn sliding(aggregates: &[AggregateCall], a: usize) -> Result<Box<dyn Accumulator>> {
    aggregates[a]
        .function
        .create_sliding_accumulator()
        .map_err(df)
}

impl Operator for LocalAggregate {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let keys: Vec<ArrayRef> = self
            .key_columns
            .iter()
            .map(|&c| batch.column(c).clone())
            .collect();
        let mut group_indices = Vec::with_capacity(rows);
        self.groups.intern(&keys, &mut group_indices).map_err(df)?;
        let total = self.groups.len();
        let mut columns = self.groups.emit(EmitTo::All).map_err(df)?;
        // Emitting all does not reset every kind of group table's index.
        self.groups.clear_shrink(rows);
        if let PartialRows::Retracting(op) = self.rows {
            let parts = self.retracting_parts(&batch, op, &group_indices, columns)?;
            out.push(parts);
            return Ok(());
        }
        for (agg, mut acc) in self
            .aggregates
            .iter()
            .zip(new_accumulators(&self.aggregates)?)
        {
            agg.update(acc.as_mut(), &batch, &group_indices, total)?;
            columns.extend(acc.state(EmitTo::All).map_err(df)?);
        }
        if self.rows == PartialRows::Counted {
            let mut counts = vec![0i64; total];
            for &g in &group_indices {
                counts[g] += 1;
            }
            columns.push(Arc::new(Int64Array::from(counts)));
        }
        out.push(RecordBatch::try_new(self.output.clone(), columns)?);
        Ok(())
    }
}

impl LocalAggregate {
    /// The partial rows of a batch of an updating input (op column `op`):
    /// per group, one of its additions and one of its retractions (when it
    /// has them), each the state of a fresh retracting accumulator updated
    /// with those rows. `keys` holds each group's keys, by group index.
    fn retracting_parts(
        &self,
        batch: &RecordBatch,
        op: usize,
        group_indices: &[usize],
        keys: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        let ops = batch.column(op).as_primitive::<Int8Type>().values();
        let (order, indices) = group_order(group_indices, Some(ops));
        let arguments = sorted_arguments(&self.aggregates, batch, &indices)?;
        let width = self.output.fields().len() - self.key_columns.len() - 2;
        let mut states: Vec<Vec<ScalarValue>> = vec![Vec::new(); width];
        let (mut groups, mut counts, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
        // One group's argument slices, reused from part to part.
        let mut rows: Vec<ArrayRef> = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let part = order[start] >> 31;
            let end = start
                + order[start..]
                    .iter()
                    .take_while(|&&o| o >> 31 == part)
                    .count();
            let mut field = 0;
            for (a, args) in arguments.iter().enumerate() {
                let mut acc = sliding(&self.aggregates, a)?;
                rows.clear();
                rows.extend(args.iter().map(|v| v.slice(start, end - start)));
                acc.update_batch(&rows).map_err(df)?;
                for value in acc.state().map_err(df)? {
                    states[field].push(value);
                    field += 1;
                }
            }
            groups.push((part >> 1) as u32);
            counts.push((end - start) as i64);
            kinds.push(if part & 1 == 0 {
                RowOp::Insert
            } else {
                RowOp::Delete
            } as i8);
            start = end;
        }
        let groups = UInt32Array::from(groups);
        let mut columns: Vec<ArrayRef> = keys
            .iter()
            .map(|k| arrow::compute::take(k, &groups, None))
            .collect::<std::result::Result<_, _>>()?;
        for values in states {
            let field = self.output.field(columns.len());
            columns.push(scalar_column(values.into_iter(), field)?);
        }
        columns.push(Arc::new(Int64Array::from(counts)));
        columns.push(Arc::new(Int8Array::from(kinds)));
        Ok(RecordBatch::try_new(self.output.clone(), columns)?)
    }
}
