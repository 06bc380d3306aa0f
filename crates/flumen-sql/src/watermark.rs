//! Watermarks from `WATERMARK FOR col AS expr`. The expression may use only
//! the event-time column and must not decrease as it grows (`col - INTERVAL
//! …`), so a batch's watermark is the expression of the batch's largest event
//! time: one vectorised `max` per batch, and the expression evaluated on one
//! row only when that maximum advanced.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::compute::{cast, max};
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit, TimestampNanosecondType};
use datafusion::physical_expr::PhysicalExpr;
use flumen_runtime::{WatermarkGenerator, WatermarkStrategy};
use flumen_types::{FlumenError, Result, Watermark};

/// Watermarks computed from the largest event time of each batch.
pub(crate) struct ExprWatermarks {
    /// The event time of the source's batches: a column, or a computed
    /// column's expression over them.
    time: Arc<dyn PhysicalExpr>,
    /// The one-column schema `expr` is compiled against.
    schema: SchemaRef,
    expr: Arc<dyn PhysicalExpr>,
    text: String,
}

impl ExprWatermarks {
    pub(crate) fn new(
        time: Arc<dyn PhysicalExpr>,
        schema: SchemaRef,
        expr: Arc<dyn PhysicalExpr>,
        text: String,
    ) -> Self {
        ExprWatermarks {
            time,
            schema,
            expr,
            text,
        }
    }
}

impl WatermarkStrategy for ExprWatermarks {
    fn describe(&self) -> String {
        self.text.clone()
    }

    fn create(&self) -> Box<dyn WatermarkGenerator> {
        Box::new(ExprWatermarkGenerator {
            time: self.time.clone(),
            schema: self.schema.clone(),
            expr: self.expr.clone(),
            latest: i64::MIN,
        })
    }
}

struct ExprWatermarkGenerator {
    time: Arc<dyn PhysicalExpr>,
    schema: SchemaRef,
    expr: Arc<dyn PhysicalExpr>,
    /// The largest raw event time seen so far, in the column's unit.
    latest: i64,
}

impl WatermarkGenerator for ExprWatermarkGenerator {
    fn on_batch(&mut self, batch: &RecordBatch) -> Result<Option<Watermark>> {
        let times = self
            .time
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|e| FlumenError::execution(format!("computing the event time: {e}")))?;
        let times = &times;
        let raw = cast(times, &DataType::Int64)?;
        let Some(batch_max) = max(raw.as_primitive::<Int64Type>()) else {
            return Ok(None);
        };
        if batch_max <= self.latest {
            return Ok(None);
        }
        self.latest = batch_max;
        let one: ArrayRef = cast(&Int64Array::from(vec![batch_max]), times.data_type())?;
        let row = RecordBatch::try_new(self.schema.clone(), vec![one])?;
        let value = self
            .expr
            .evaluate(&row)
            .and_then(|v| v.into_array(1))
            .map_err(|e| FlumenError::execution(format!("computing the watermark: {e}")))?;
        let nanos = cast(&value, &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
        Ok(max(nanos.as_primitive::<TimestampNanosecondType>()).map(Watermark))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMillisecondArray;
    use arrow::datatypes::{Field, Schema};
    use datafusion::common::DFSchema;

    fn generator() -> (SchemaRef, Box<dyn WatermarkGenerator>) {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        let schema = Arc::new(Schema::new(vec![Field::new("ts", ts, false)]));
        let state = crate::planner::session().state();
        let df = DFSchema::try_from_qualified_schema("t", &schema).unwrap();
        let logical = state
            .create_logical_expr("ts - INTERVAL '4' SECOND", &df)
            .unwrap();
        let expr = state.create_physical_expr(logical, &df).unwrap();
        let time = Arc::new(datafusion::physical_expr::expressions::Column::new("ts", 0));
        let strategy = ExprWatermarks::new(time, schema.clone(), expr, "ts - 4 s".into());
        (schema, strategy.create())
    }

    fn batch(schema: &SchemaRef, ms: Vec<i64>) -> RecordBatch {
        let col: ArrayRef = Arc::new(TimestampMillisecondArray::from(ms));
        RecordBatch::try_new(schema.clone(), vec![col]).unwrap()
    }

    #[test]
    fn watermark_is_the_expression_of_the_largest_event_time_so_far() {
        let (schema, mut g) = generator();
        let wm = g.on_batch(&batch(&schema, vec![1000, 5000, 3000])).unwrap();
        assert_eq!(wm, Some(Watermark(1_000_000_000)));
        assert_eq!(g.on_batch(&batch(&schema, vec![4000])).unwrap(), None);
        assert_eq!(g.on_batch(&batch(&schema, vec![])).unwrap(), None);
        let wm = g.on_batch(&batch(&schema, vec![9000, 100])).unwrap();
        assert_eq!(wm, Some(Watermark(5_000_000_000)));
    }
}
