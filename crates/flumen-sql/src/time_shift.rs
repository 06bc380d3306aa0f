//! `timestamp ± INTERVAL '…'` with a constant interval of fixed length, as
//! integer arithmetic on the timestamps' `i64` values. Arrow adds an
//! interval to each timestamp through chrono's calendar, which took a third
//! of Nexmark q5's time in its `window_start + INTERVAL '10' SECOND`.

use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, PrimitiveArray, RecordBatch};
use arrow::datatypes::{
    ArrowTimestampType, DataType, Schema, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use arrow::error::ArrowError;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Literal};

const NANOS_PER_DAY: i64 = 86_400_000_000_000;

/// A timestamp expression moved by a fixed number of its own units.
#[derive(Debug, Eq)]
struct TimestampShift {
    input: Arc<dyn PhysicalExpr>,
    /// In the timestamp's unit.
    delta: i64,
}

// Written out because deriving them on an `Arc<dyn …>` field moves out of
// a reference (rust-lang/rust#78808), as DataFusion's own expressions note.
impl PartialEq for TimestampShift {
    fn eq(&self, other: &Self) -> bool {
        self.input.eq(&other.input) && self.delta == other.delta
    }
}

impl std::hash::Hash for TimestampShift {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        self.delta.hash(state);
    }
}

impl fmt::Display for TimestampShift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} + {} units", self.input, self.delta)
    }
}

fn shifted<T: ArrowTimestampType>(array: &ArrayRef, delta: i64) -> Result<ArrayRef> {
    let timestamps = array.as_primitive::<T>();
    let out: PrimitiveArray<T> = timestamps.try_unary(|t| {
        t.checked_add(delta)
            .ok_or_else(|| ArrowError::ComputeError("timestamp overflow".into()))
    })?;
    Ok(Arc::new(out.with_timezone_opt(timestamps.timezone())))
}

fn shift(array: &ArrayRef, delta: i64) -> Result<ArrayRef> {
    match array.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => shifted::<TimestampSecondType>(array, delta),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            shifted::<TimestampMillisecondType>(array, delta)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            shifted::<TimestampMicrosecondType>(array, delta)
        }
        _ => shifted::<TimestampNanosecondType>(array, delta),
    }
}

impl PhysicalExpr for TimestampShift {
    fn data_type(&self, input_schema: &Schema) -> Result<DataType> {
        self.input.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.input.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        Ok(match self.input.evaluate(batch)? {
            ColumnarValue::Array(array) => ColumnarValue::Array(shift(&array, self.delta)?),
            ColumnarValue::Scalar(scalar) => {
                let array = shift(&scalar.to_array()?, self.delta)?;
                ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
            }
        })
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(TimestampShift {
            input: children[0].clone(),
            delta: self.delta,
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// How many of `unit` a constant interval is, when it has a fixed length
/// there: no months, and days only without a time zone (where a day can
/// be 23 or 25 hours), in whole units.
fn fixed_length(interval: &ScalarValue, unit: &TimeUnit, zoned: bool) -> Option<i64> {
    let nanos = match interval {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 && (v.days == 0 || !zoned) => {
            i64::from(v.days)
                .checked_mul(NANOS_PER_DAY)?
                .checked_add(v.nanoseconds)?
        }
        ScalarValue::IntervalDayTime(Some(v)) if v.days == 0 || !zoned => {
            i64::from(v.days) * NANOS_PER_DAY + i64::from(v.milliseconds) * 1_000_000
        }
        _ => return None,
    };
    let per_unit = match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    };
    (nanos % per_unit == 0).then_some(nanos / per_unit)
}

/// `expr` with every `timestamp ± constant interval` of fixed length turned
/// into integer arithmetic; other expressions stay as they are.
pub(crate) fn fast_time_arithmetic(
    expr: Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Result<Arc<dyn PhysicalExpr>> {
    expr.transform_up(|e| {
        let Some(binary) = e.downcast_ref::<BinaryExpr>() else {
            return Ok(Transformed::no(e));
        };
        let sign = match binary.op() {
            Operator::Plus => 1,
            Operator::Minus => -1,
            _ => return Ok(Transformed::no(e)),
        };
        let Some(literal) = binary.right().downcast_ref::<Literal>() else {
            return Ok(Transformed::no(e));
        };
        let DataType::Timestamp(unit, tz) = binary.left().data_type(schema)? else {
            return Ok(Transformed::no(e));
        };
        match fixed_length(literal.value(), &unit, tz.is_some()) {
            Some(delta) => Ok(Transformed::yes(Arc::new(TimestampShift {
                input: binary.left().clone(),
                delta: sign * delta,
            }) as Arc<dyn PhysicalExpr>)),
            None => Ok(Transformed::no(e)),
        }
    })
    .data()
}

#[cfg(test)]
mod tests {
    use arrow::array::{TimestampMillisecondArray, TimestampNanosecondArray, TimestampSecondArray};
    use arrow::datatypes::{Field, IntervalMonthDayNano};
    use datafusion::physical_expr::expressions::col;

    use super::*;

    fn interval(months: i32, days: i32, nanoseconds: i64) -> Arc<dyn PhysicalExpr> {
        Arc::new(Literal::new(ScalarValue::IntervalMonthDayNano(Some(
            IntervalMonthDayNano::new(months, days, nanoseconds),
        ))))
    }

    /// Evaluates `ts <op> interval` both ways; returns whether the fast path
    /// was taken, after checking both agree.
    fn check(ts: ArrayRef, op: Operator, interval: Arc<dyn PhysicalExpr>) -> bool {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            ts.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema.clone(), vec![ts]).unwrap();
        let general: Arc<dyn PhysicalExpr> =
            Arc::new(BinaryExpr::new(col("ts", &schema).unwrap(), op, interval));
        let fast = fast_time_arithmetic(general.clone(), &schema).unwrap();
        let expected = general.evaluate(&batch).unwrap().into_array(3).unwrap();
        let got = fast.evaluate(&batch).unwrap().into_array(3).unwrap();
        assert_eq!(&got, &expected, "{fast}");
        fast.is::<TimestampShift>()
    }

    #[test]
    fn fixed_intervals_shift_as_integers_and_match_arrow() {
        let ms: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![
            Some(1_700_000_000_123),
            None,
            Some(-5),
        ]));
        let seconds = 10_000_000_000;
        assert!(check(ms.clone(), Operator::Plus, interval(0, 0, seconds)));
        assert!(check(ms.clone(), Operator::Minus, interval(0, 0, seconds)));
        assert!(check(ms.clone(), Operator::Plus, interval(0, 2, 3_000_000)));
        // Months have no fixed length; neither does a microsecond in ms.
        assert!(!check(ms.clone(), Operator::Plus, interval(1, 0, 0)));
        assert!(!check(ms, Operator::Plus, interval(0, 0, 1_000)));

        let zoned: ArrayRef = Arc::new(
            TimestampNanosecondArray::from(vec![Some(1), None, Some(2)])
                .with_timezone("Europe/Paris"),
        );
        assert!(check(
            zoned.clone(),
            Operator::Plus,
            interval(0, 0, seconds)
        ));
        assert!(
            !check(zoned, Operator::Plus, interval(0, 1, 0)),
            "days vary with DST"
        );

        let s: ArrayRef = Arc::new(TimestampSecondArray::from(vec![Some(7), None, Some(0)]));
        assert!(check(s, Operator::Minus, interval(0, 0, 4 * seconds)));
    }
}
