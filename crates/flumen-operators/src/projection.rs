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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::Operator as BinaryOp;
    use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, col, lit};
    use flumen_runtime::JobMetrics;

    #[test]
    fn computes_each_output_column_from_the_input() {
        let input = Schema::new(vec![Field::new("price", DataType::Int64, false)]);
        let price: ArrayRef = Arc::new(Int64Array::from(vec![100, 250]));
        let batch = RecordBatch::try_new(Arc::new(input.clone()), vec![price]).unwrap();
        let as_f64 = Arc::new(CastExpr::new(
            col("price", &input).unwrap(),
            DataType::Float64,
            None,
        ));
        let euros = Arc::new(BinaryExpr::new(lit(0.5f64), BinaryOp::Multiply, as_f64));
        let output = Arc::new(Schema::new(vec![
            Field::new("euros", DataType::Float64, false),
            Field::new("price", DataType::Int64, false),
        ]));
        let factory =
            ProjectionFactory::new(vec![euros, col("price", &input).unwrap()], output.clone());
        assert!(factory.describe().contains("AS euros"));
        let ctx = TaskContext::new(0, 1, 128, Arc::new(JobMetrics::default()));
        let mut op = factory.create(&ctx).unwrap();
        let mut out = Vec::new();
        op.process_batch(batch, &mut out).unwrap();
        assert_eq!(out[0].schema(), output);
        let euros = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(euros.values(), &[50.0, 125.0]);
    }
}
