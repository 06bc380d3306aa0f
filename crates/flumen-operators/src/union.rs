//! `UNION ALL`: the rows of every input, as they come, under one schema.
//! When some input is updating, so is the union: rows of the append-only
//! inputs get an op column saying they are inserts.

use std::sync::Arc;

use arrow::array::{Int8Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use flumen_runtime::{Operator, OperatorFactory, TaskContext};
use flumen_types::{Result, RowOp};

/// Makes [`Union`] operators; the node has one input edge per branch.
pub struct UnionFactory {
    /// The union's schema (the branches' columns have the same types).
    pub output: SchemaRef,
    /// Number of branches.
    pub inputs: usize,
    /// The branches whose rows need an op column (`+I`) appended: the
    /// append-only ones of a union with an updating branch.
    pub insert_op: Vec<bool>,
}

impl OperatorFactory for UnionFactory {
    fn describe(&self) -> String {
        let updating = if self.insert_op.iter().any(|&i| i) {
            ", updating"
        } else {
            ""
        };
        format!("Union of {} inputs{updating}", self.inputs)
    }

    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Union {
            output: self.output.clone(),
            insert_op: self.insert_op.clone(),
        }))
    }
}

/// Passes every batch on, relabelled with the union's column names.
pub struct Union {
    output: SchemaRef,
    insert_op: Vec<bool>,
}

impl Operator for Union {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        out.push(RecordBatch::try_new(
            self.output.clone(),
            batch.columns().to_vec(),
        )?);
        Ok(())
    }

    fn process_input(
        &mut self,
        input: usize,
        batch: RecordBatch,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        if !self.insert_op.get(input).copied().unwrap_or(false) {
            return self.process_batch(batch, out);
        }
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(Int8Array::from(vec![
            RowOp::Insert as i8;
            batch.num_rows()
        ])));
        out.push(RecordBatch::try_new(self.output.clone(), columns)?);
        Ok(())
    }
}
