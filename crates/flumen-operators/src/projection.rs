//! Computes the output columns of a batch from expressions over its input.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;
use flumen_runtime::{Operator, OperatorFactory, TaskContext};
use flumen_types::{FlumenError, Result};

/// Makes [`Projection`] operators for expressions compiled once at plan time.
pub struct ProjectionFactory {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
}

impl ProjectionFactory {
    /// A projection producing `schema` from `exprs`, one per output column.
    pub fn new(exprs: Vec<Arc<dyn PhysicalExpr>>, schema: SchemaRef) -> Self {
        ProjectionFactory { exprs, schema }
    }
}

impl OperatorFactory for ProjectionFactory {
    fn describe(&self) -> String {
        let exprs: Vec<String> = self
            .exprs
            .iter()
            .zip(self.schema.fields())
            .map(|(e, f)| format!("{e} AS {}", f.name()))
            .collect();
        format!("Projection: {}", exprs.join(", "))
    }

    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Projection {
            exprs: self.exprs.clone(),
            schema: self.schema.clone(),
        }))
    }
}

struct Projection {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
}

impl Operator for Projection {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        let rows = batch.num_rows();
        let columns = self
            .exprs
            .iter()
            .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(rows)))
            .collect::<Result<Vec<ArrayRef>, _>>()
            .map_err(|e| FlumenError::execution(format!("evaluating projection: {e}")))?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        out.push(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?);
        Ok(())
    }
}
