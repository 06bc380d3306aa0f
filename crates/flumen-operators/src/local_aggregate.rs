//! Local aggregation, the first phase of two-phase (local-global)
//! aggregation: in the task before the hash exchange, each batch's rows are
//! aggregated per group into one row of partial accumulator states, which
//! the window aggregate after the exchange merges. A hot key then crosses
//! the exchange once per batch instead of once per row, so one subtask does
//! not take most of the work (Flink's local-global aggregation). Nothing is
//! kept between batches: the operator has no state to checkpoint.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Schema, SchemaRef};
use datafusion::logical_expr::EmitTo;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use flumen_runtime::{Operator, OperatorFactory, TaskContext};
use flumen_types::{FlumenError, Result};

use crate::accumulator_layers::new_accumulators;
use crate::columns::state_fields;
use crate::window_aggregate::{AggregateCall, names};

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
}

impl LocalAggregateFactory {
    /// The output: the keys, then each aggregate's state fields in order
    /// (what [`crate::WindowAggregateFactory`] merges when its
    /// `merge_states` is set).
    pub fn output(&self) -> Result<SchemaRef> {
        let (states, _) = state_fields(&self.aggregates)?;
        let mut fields: Vec<_> = self
            .key_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(states);
        Ok(Arc::new(Schema::new(fields)))
    }
}

impl OperatorFactory for LocalAggregateFactory {
    fn describe(&self) -> String {
        format!(
            "LocalAggregate: partial states per batch, keys {:?}, [{}]",
            self.key_columns,
            names(&self.aggregates)
        )
    }

    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        Ok(Box::new(LocalAggregate {
            key_columns: self.key_columns.clone(),
            aggregates: self.aggregates.clone(),
            groups: new_group_values(self.key_schema.clone(), &GroupOrdering::None).map_err(df)?,
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
    output: SchemaRef,
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
        for (agg, mut acc) in self
            .aggregates
            .iter()
            .zip(new_accumulators(&self.aggregates)?)
        {
            agg.update(acc.as_mut(), &batch, &group_indices, total)?;
            columns.extend(acc.state(EmitTo::All).map_err(df)?);
        }
        out.push(RecordBatch::try_new(self.output.clone(), columns)?);
        Ok(())
    }
}
