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
