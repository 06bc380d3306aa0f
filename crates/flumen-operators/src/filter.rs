//! Keeps the rows of a batch for which a predicate is true.

use std::sync::Arc;

use arrow::array::AsArray;
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;
use flumen_runtime::{Operator, OperatorFactory, TaskContext};
use flumen_types::{FlumenError, Result};

/// Makes [`Filter`] operators for a predicate compiled once at plan time.
pub struct FilterFactory {
    predicate: Arc<dyn PhysicalExpr>,
}

impl FilterFactory {
    /// A filter keeping rows where `predicate` evaluates to true (not null).
    pub fn new(predicate: Arc<dyn PhysicalExpr>) -> Self {
        FilterFactory { predicate }
    }
}

impl OperatorFactory for FilterFactory {
    fn describe(&self) -> String {
        format!("Filter: {}", self.predicate)
    }

    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Filter {
            predicate: self.predicate.clone(),
        }))
    }
}

struct Filter {
    predicate: Arc<dyn PhysicalExpr>,
}

impl Operator for Filter {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        let mask = self
            .predicate
            .evaluate(&batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|e| FlumenError::execution(format!("evaluating filter: {e}")))?;
        let Some(mask) = mask.as_boolean_opt() else {
            return Err(FlumenError::execution(format!(
                "filter predicate {} is {}, not boolean",
                self.predicate,
                mask.data_type()
            )));
        };
        let kept = filter_record_batch(&batch, mask)?;
        if kept.num_rows() > 0 {
            out.push(kept);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::Operator as BinaryOp;
    use datafusion::physical_expr::expressions::{BinaryExpr, col, lit};
    use flumen_runtime::JobMetrics;

    fn ctx() -> TaskContext {
        TaskContext::new(0, 1, 128, Arc::new(JobMetrics::default()))
    }

    #[test]
    fn keeps_rows_where_predicate_is_true_and_drops_nulls() {
        let schema = Schema::new(vec![Field::new("a", DataType::Int64, true)]);
        let a: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(5), Some(7)]));
        let batch = RecordBatch::try_new(Arc::new(schema.clone()), vec![a]).unwrap();
        let predicate = Arc::new(BinaryExpr::new(
            col("a", &schema).unwrap(),
            BinaryOp::Gt,
            lit(2i64),
        ));
        let mut op = FilterFactory::new(predicate).create(&ctx()).unwrap();
        let mut out = Vec::new();
        op.process_batch(batch.clone(), &mut out).unwrap();
        let kept = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(kept.values(), &[5, 7]);

        let none = Arc::new(BinaryExpr::new(
            col("a", &schema).unwrap(),
            BinaryOp::Gt,
            lit(100i64),
        ));
        let mut op = FilterFactory::new(none).create(&ctx()).unwrap();
        let mut out = Vec::new();
        op.process_batch(batch, &mut out).unwrap();
        assert!(out.is_empty(), "an empty result sends no batch");
    }
}
