//! Watermarks from `WATERMARK FOR col AS expr`: after each batch a source
//! subtask evaluates `expr` over the batch and takes the maximum; the
//! watermark advances when that maximum does.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::{cast, max};
use arrow::datatypes::{DataType, TimeUnit, TimestampNanosecondType};
use datafusion::physical_expr::PhysicalExpr;
use flumen_runtime::{WatermarkGenerator, WatermarkStrategy};
use flumen_types::{FlumenError, Result, Watermark};

/// Watermarks computed by a compiled expression over each batch.
pub(crate) struct ExprWatermarks {
    expr: Arc<dyn PhysicalExpr>,
    text: String,
}

impl ExprWatermarks {
    pub(crate) fn new(expr: Arc<dyn PhysicalExpr>, text: String) -> Self {
        ExprWatermarks { expr, text }
    }
}

impl WatermarkStrategy for ExprWatermarks {
    fn describe(&self) -> String {
        self.text.clone()
    }

    fn create(&self) -> Box<dyn WatermarkGenerator> {
        Box::new(ExprWatermarkGenerator {
            expr: self.expr.clone(),
            current: Watermark::MIN,
        })
    }
}

struct ExprWatermarkGenerator {
    expr: Arc<dyn PhysicalExpr>,
    current: Watermark,
}

impl WatermarkGenerator for ExprWatermarkGenerator {
    fn on_batch(&mut self, batch: &RecordBatch) -> Result<Option<Watermark>> {
        let values = self
            .expr
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|e| FlumenError::execution(format!("computing the watermark: {e}")))?;
        let nanos = cast(&values, &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
        let Some(latest) = max(nanos.as_primitive::<TimestampNanosecondType>()) else {
            return Ok(None);
        };
        if Watermark(latest) > self.current {
            self.current = Watermark(latest);
            return Ok(Some(self.current));
        }
        Ok(None)
    }
}
