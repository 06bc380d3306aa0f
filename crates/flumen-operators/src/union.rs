//! `UNION ALL`: the rows of every input, as they come, under one schema.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use flumen_runtime::{Operator, OperatorFactory, TaskContext};
use flumen_types::Result;

/// Makes [`Union`] operators; the node has one input edge per branch.
pub struct UnionFactory {
    /// The union's schema (the branches' columns have the same types).
    pub output: SchemaRef,
    /// Number of branches.
    pub inputs: usize,
}

impl OperatorFactory for UnionFactory {
    fn describe(&self) -> String {
        format!("Union of {} inputs", self.inputs)
    }

    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Union {
            output: self.output.clone(),
        }))
    }
}

/// Passes every batch on, relabelled with the union's column names.
pub struct Union {
    output: SchemaRef,
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
        _input: usize,
        batch: RecordBatch,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        self.process_batch(batch, out)
    }
}
