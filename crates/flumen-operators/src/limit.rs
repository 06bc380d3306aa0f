//! `LIMIT n` without an order: the first n rows that arrive, then none.
//! Runs as one subtask, so the count is over the whole stream.

use arrow::record_batch::RecordBatch;
use flumen_runtime::{Operator, OperatorFactory, TaskContext};
use flumen_types::Result;

/// Makes [`Limit`] operators.
pub struct LimitFactory {
    /// Rows to let through.
    pub limit: usize,
}

impl OperatorFactory for LimitFactory {
    fn describe(&self) -> String {
        format!("Limit: first {} rows", self.limit)
    }

    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Limit { left: self.limit }))
    }
}

/// Passes rows until the limit is reached.
struct Limit {
    /// Rows still to let through.
    left: usize,
}

impl Operator for Limit {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        let take = batch.num_rows().min(self.left);
        if take > 0 {
            self.left -= take;
            out.push(batch.slice(0, take));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use flumen_runtime::JobMetrics;

    use super::*;

    #[test]
    fn the_first_rows_pass_across_batches_and_then_none() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch = |n: i64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from_iter_values(0..n))],
            )
            .unwrap()
        };
        let ctx = TaskContext::new(0, 1, 128, Arc::new(JobMetrics::default()));
        let mut limit = LimitFactory { limit: 5 }.create(&ctx).unwrap();
        let mut out = Vec::new();
        for n in [3, 4, 2] {
            limit.process_batch(batch(n), &mut out).unwrap();
        }
        let rows: Vec<usize> = out.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(rows, [3, 2]);
    }
}
