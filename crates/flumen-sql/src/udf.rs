//! Scalar functions flumen adds to DataFusion's: `count_char(text, ch)`
//! counts the occurrences of one character (Nexmark q14's user function, and
//! the example of how to register a Rust UDF); `to_timestamp_ltz(n, p)`
//! reads epoch seconds or milliseconds as a timestamp and
//! `split_index(text, delimiter, i)` takes the `i`-th part of a text
//! (Flink's functions of those names); `regexp_extract` and the faster `to_char` are in modules of
//! their own.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// Every UDF flumen registers, for the streaming planner and the batch oracle alike.
pub fn udfs() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::new_from_impl(CountChar::new()),
        ScalarUDF::new_from_impl(Hop::new()),
        ScalarUDF::new_from_impl(Cumulate::new()),
        ScalarUDF::new_from_impl(ProcTime::new()),
        ScalarUDF::new_from_impl(ToTimestampLtz::new()),
        ScalarUDF::new_from_impl(SplitIndex::new()),
        ScalarUDF::new_from_impl(crate::timestamp_units::TimestampDiff::new()),
        ScalarUDF::new_from_impl(crate::timestamp_units::TimestampAdd::new()),
        ScalarUDF::new_from_impl(crate::regexp_extract::RegexpExtract::new()),
        ScalarUDF::new_from_impl(crate::to_char::ToChar::new()),
        ScalarUDF::new_from_impl(crate::date_format::DateFormat::new()),
    ]
}

/// `proctime() -> TIMESTAMP(3)`: the wall-clock time a row is processed,
/// for processing-time windows (Flink's `PROCTIME()`). Evaluated once per
/// batch; windows over it close by the wall clock.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct ProcTime {
    signature: Signature,
}

impl ProcTime {
    fn new() -> Self {
        ProcTime {
            signature: Signature::nullary(Volatility::Volatile),
        }
    }
}

impl ScalarUDFImpl for ProcTime {
    fn name(&self) -> &str {
        "proctime"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Timestamp(
            arrow::datatypes::TimeUnit::Millisecond,
            None,
        ))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| DataFusionError::Execution(e.to_string()))?;
        Ok(ColumnarValue::Scalar(ScalarValue::TimestampMillisecond(
            Some(now.as_millis() as i64),
            None,
        )))
    }
}

/// `to_timestamp_ltz(n BIGINT, precision) -> TIMESTAMP(3)`: epoch seconds
/// (precision 0) or milliseconds (precision 3) as a timestamp, as Flink's
/// `TO_TIMESTAMP_LTZ` reads them, for event time carried as a number.
/// flumen's time zone is UTC, so the result is a `TIMESTAMP(3)` in UTC.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct ToTimestampLtz {
    signature: Signature,
}

impl ToTimestampLtz {
    fn new() -> Self {
        ToTimestampLtz {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for ToTimestampLtz {
    fn name(&self) -> &str {
        "to_timestamp_ltz"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        match args {
            [n, p] if n.is_integer() && p.is_integer() => Ok(vec![DataType::Int64; 2]),
            _ => exec_err!("to_timestamp_ltz(n, precision) takes an integer and 0 or 3"),
        }
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Timestamp(
            arrow::datatypes::TimeUnit::Millisecond,
            None,
        ))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let per_unit = match &args.args[1] {
            ColumnarValue::Scalar(ScalarValue::Int64(Some(0))) => 1_000,
            ColumnarValue::Scalar(ScalarValue::Int64(Some(3))) => 1,
            other => {
                return exec_err!(
                    "to_timestamp_ltz's precision must be the constant 0 (seconds) or 3 (milliseconds), not {other}"
                );
            }
        };
        // Planned without type coercion (a computed column's expression),
        // a smaller integer arrives as it is.
        let n = args.args[0].cast_to(&DataType::Int64, None)?;
        let out_of_range = |n: i64| {
            DataFusionError::Execution(format!(
                "to_timestamp_ltz: {n} seconds is past the last timestamp of milliseconds"
            ))
        };
        let millis = match &n {
            ColumnarValue::Scalar(ScalarValue::Int64(n)) => {
                let millis = n
                    .map(|n| n.checked_mul(per_unit).ok_or_else(|| out_of_range(n)))
                    .transpose()?;
                return Ok(ColumnarValue::Scalar(ScalarValue::TimestampMillisecond(
                    millis, None,
                )));
            }
            ColumnarValue::Array(a) => a.as_primitive::<arrow::datatypes::Int64Type>(),
            ColumnarValue::Scalar(other) => {
                return exec_err!("to_timestamp_ltz takes an integer, not {other}");
            }
        };
        let millis: arrow::array::TimestampMillisecondArray = if per_unit == 1 {
            millis.reinterpret_cast()
        } else {
            millis.try_unary(|n| {
                n.checked_mul(per_unit).ok_or_else(|| {
                    arrow::error::ArrowError::ComputeError(out_of_range(n).to_string())
                })
            })?
        };
        Ok(ColumnarValue::Array(Arc::new(millis)))
    }
}

/// `split_index(text, delimiter, i) -> VARCHAR`: the `i`-th (from 0) of
/// the parts `delimiter` splits `text` into, empty parts kept; null when
/// `i` is negative or past the last part, the delimiter is empty or an
/// argument is null, as Flink's `SPLIT_INDEX`. (DataFusion's `split_part`
/// counts from 1 and gives '' past the end.)
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct SplitIndex {
    signature: Signature,
}

impl SplitIndex {
    fn new() -> Self {
        SplitIndex {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for SplitIndex {
    fn name(&self) -> &str {
        "split_index"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        let text = |t: &DataType| {
            t.is_null() || matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        };
        match args {
            [t, d, i] if text(t) && text(d) && (i.is_integer() || i.is_null()) => {
                Ok(vec![DataType::Utf8, DataType::Utf8, DataType::Int64])
            }
            _ => exec_err!("split_index(text, delimiter, index) takes two texts and an integer"),
        }
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [text, delimiter, index] = arrays.as_slice() else {
            return exec_err!("split_index takes three arguments");
        };
        let text = arrow::compute::cast(text, &DataType::Utf8)?;
        let delimiter = arrow::compute::cast(delimiter, &DataType::Utf8)?;
        let index = arrow::compute::cast(index, &DataType::Int64)?;
        let (text, delimiter) = (text.as_string::<i32>(), delimiter.as_string::<i32>());
        let index = index.as_primitive::<arrow::datatypes::Int64Type>();
        let mut out = arrow::array::StringBuilder::with_capacity(rows, rows * 8);
        for row in 0..rows {
            let part = (!text.is_null(row) && !delimiter.is_null(row) && !index.is_null(row))
                .then(|| (text.value(row), delimiter.value(row), index.value(row)))
                .filter(|&(_, d, i)| !d.is_empty() && i >= 0)
                .and_then(|(t, d, i)| t.split(d).nth(i as usize));
            out.append_option(part);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `hop(slide INTERVAL, size INTERVAL, ts TIMESTAMP) -> TIMESTAMP[]`: the
/// starts of the sliding windows of length `size`, every `slide`, aligned to
/// the epoch, that contain `ts` (half-open `[start, start + size)`). UNNEST it
/// to get one row per window.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Hop {
    signature: Signature,
}

impl Hop {
    fn new() -> Self {
        Hop {
            signature: Signature::any(3, Volatility::Immutable),
        }
    }
}

/// The length of a constant interval in nanoseconds, if it has no months.
pub(crate) fn interval_nanos(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Some(i64::from(v.days) * 86_400_000_000_000 + v.nanoseconds)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Some(i64::from(v.days) * 86_400_000_000_000 + i64::from(v.milliseconds) * 1_000_000)
        }
        _ => None,
    }
    .filter(|n| *n > 0)
}

impl ScalarUDFImpl for Hop {
    fn name(&self) -> &str {
        "hop"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [_, _, ts @ DataType::Timestamp(..)] => Ok(DataType::new_list(ts.clone(), true)),
            _ => exec_err!("hop(slide, size, ts) takes two intervals and a timestamp"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        window_list("hop", args, |slide, size, t, out| {
            let last = t.div_euclid(slide) * slide;
            for k in (0..size / slide).rev() {
                out.push(last - k * slide);
            }
        })
    }
}

/// `cumulate(step INTERVAL, size INTERVAL, ts TIMESTAMP) -> TIMESTAMP[]`:
/// the ends of the cumulating windows that contain `ts`: windows that all
/// start where the `size` window holding `ts` starts and end `step`, `2 step`,
/// … `size` later. UNNEST it to get one row per window.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Cumulate {
    signature: Signature,
}

impl Cumulate {
    fn new() -> Self {
        Cumulate {
            signature: Signature::any(3, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Cumulate {
    fn name(&self) -> &str {
        "cumulate"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [_, _, ts @ DataType::Timestamp(..)] => Ok(DataType::new_list(ts.clone(), true)),
            _ => exec_err!("cumulate(step, size, ts) takes two intervals and a timestamp"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        window_list("cumulate", args, |step, size, t, out| {
            let start = t.div_euclid(size) * size;
            let mut end = start + step;
            while end <= start + size {
                if end > t {
                    out.push(end);
                }
                end += step;
            }
        })
    }
}

/// A list per row of window bounds computed by `per_row(step, size, t, out)`
/// from the constant intervals `step` and `size` (in the timestamp's unit)
/// and the row's time `t`: the body of `hop` and `cumulate`.
fn window_list(
    name: &str,
    args: ScalarFunctionArgs,
    per_row: impl Fn(i64, i64, i64, &mut Vec<i64>),
) -> Result<ColumnarValue> {
    let [step, size, ts] = args.args.as_slice() else {
        return exec_err!("{name} takes three arguments");
    };
    let (ColumnarValue::Scalar(step), ColumnarValue::Scalar(size)) = (step, size) else {
        return exec_err!("{name}'s intervals must be constants");
    };
    let (Some(step), Some(size)) = (interval_nanos(step), interval_nanos(size)) else {
        return exec_err!("{name}'s intervals must be of days or less");
    };
    if size % step != 0 {
        return exec_err!("{name}'s size must be a whole number of its step");
    }
    let ts = ts.to_array(args.number_rows)?;
    let DataType::Timestamp(unit, _) = ts.data_type().clone() else {
        return exec_err!("{name}'s third argument must be a timestamp");
    };
    let per_unit = match unit {
        arrow::datatypes::TimeUnit::Second => 1_000_000_000,
        arrow::datatypes::TimeUnit::Millisecond => 1_000_000,
        arrow::datatypes::TimeUnit::Microsecond => 1_000,
        arrow::datatypes::TimeUnit::Nanosecond => 1,
    };
    if step % per_unit != 0 {
        return exec_err!("{name}'s step is finer than the timestamp's unit");
    }
    let (step, size) = (step / per_unit, size / per_unit);
    let raw = arrow::compute::cast(&ts, &DataType::Int64)?;
    let raw = raw.as_primitive::<arrow::datatypes::Int64Type>();
    let mut values = Vec::with_capacity(raw.len() * (size / step) as usize);
    let mut offsets = Vec::with_capacity(raw.len() + 1);
    offsets.push(0i32);
    for t in raw.iter() {
        if let Some(t) = t {
            per_row(step, size, t, &mut values);
        }
        offsets.push(values.len() as i32);
    }
    let values = arrow::compute::cast(&Int64Array::from(values), ts.data_type())?;
    let field = Arc::new(arrow::datatypes::Field::new_list_field(
        ts.data_type().clone(),
        true,
    ));
    let list = arrow::array::ListArray::try_new(
        field,
        arrow::buffer::OffsetBuffer::new(offsets.into()),
        values,
        raw.nulls().cloned(),
    )?;
    Ok(ColumnarValue::Array(Arc::new(list)))
}

/// `count_char(text VARCHAR, ch VARCHAR) -> BIGINT`: how often the first
/// character of `ch` occurs in `text`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CountChar {
    signature: Signature,
}

impl CountChar {
    fn new() -> Self {
        CountChar {
            signature: Signature::exact(
                vec![DataType::Utf8, DataType::Utf8],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for CountChar {
    fn name(&self) -> &str {
        "count_char"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [text, ch] = args.args.as_slice() else {
            return exec_err!("count_char takes two arguments");
        };
        let needle = match ch {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))) if s.chars().count() == 1 => {
                s.chars().next().expect("counted one char above")
            }
            _ => return exec_err!("count_char's second argument must be a one-character literal"),
        };
        let text = text.to_array(args.number_rows)?;
        let text = text
            .as_string_opt::<i32>()
            .ok_or_else(|| DataFusionError::Execution("count_char takes VARCHAR text".into()))?;
        let counts: Int64Array = if needle.is_ascii() {
            let b = needle as u8;
            text.iter()
                .map(|s| s.map(|s| s.bytes().filter(|c| *c == b).count() as i64))
                .collect()
        } else {
            text.iter()
                .map(|s| s.map(|s| s.chars().filter(|c| *c == needle).count() as i64))
                .collect()
        };
        debug_assert_eq!(counts.len(), text.len());
        Ok(ColumnarValue::Array(Arc::new(counts) as ArrayRef))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::datatypes::Field;
    use datafusion::common::config::ConfigOptions;

    /// Epoch seconds and milliseconds read as Flink reads them, nulls kept;
    /// a precision other than a constant 0 or 3 is an error saying so.
    #[tokio::test]
    async fn to_timestamp_ltz_reads_epoch_seconds_and_milliseconds() {
        let ctx = crate::session();
        let rows = |sql: &'static str| {
            let ctx = ctx.clone();
            async move {
                let batches = ctx.sql(sql).await?.collect().await?;
                Ok::<_, DataFusionError>(
                    arrow::util::pretty::pretty_format_batches(&batches)
                        .unwrap()
                        .to_string(),
                )
            }
        };
        let text = rows(
            "SELECT to_timestamp_ltz(n, 3) AS ms, to_timestamp_ltz(n / 1000, 0) AS s, \
             to_timestamp_ltz(CAST(7 AS INT), 0) AS small \
             FROM (VALUES (1733400000123), (CAST(NULL AS BIGINT)), (-1500)) AS t(n)",
        )
        .await
        .unwrap();
        for expected in [
            "| 2024-12-05T12:00:00.123 | 2024-12-05T12:00:00 | 1970-01-01T00:00:07 |",
            "|                         |                     | 1970-01-01T00:00:07 |",
            "| 1969-12-31T23:59:58.500 | 1969-12-31T23:59:59 | 1970-01-01T00:00:07 |",
        ] {
            assert!(text.contains(expected), "{text}");
        }
        let err = rows("SELECT to_timestamp_ltz(5, 6)").await.unwrap_err();
        assert!(
            err.to_string()
                .contains("precision must be the constant 0 (seconds) or 3 (milliseconds)"),
            "{err}"
        );
        for sql in [
            "SELECT to_timestamp_ltz(9223372036854775807, 0)",
            "SELECT to_timestamp_ltz(n, 0) FROM (VALUES (1), (9223372036854776)) AS v(n)",
        ] {
            let err = rows(sql).await.unwrap_err();
            assert!(
                err.to_string().contains("past the last timestamp"),
                "{sql}: {err}"
            );
        }
        let err = rows("SELECT to_timestamp_ltz('5', 3)").await.unwrap_err();
        assert!(
            err.to_string().contains("takes an integer and 0 or 3"),
            "{err}"
        );
    }

    /// Flink's SPLIT_INDEX: parts from 0, empty parts kept, null past the
    /// end, for a negative index, an empty delimiter or a null argument.
    #[tokio::test]
    async fn split_index_takes_the_part_flink_takes() {
        let ctx = crate::session();
        let sql = "SELECT split_index(t, d, i) AS p FROM (VALUES \
                   ('a,b,,c', ',', 0, 1), ('a,b,,c', ',', 2, 2), ('a,b,,c', ',', 3, 3), \
                   ('a,b,,c', ',', 4, 4), ('a,b', ',', -1, 5), ('a<>b', '<>', 1, 6), \
                   ('ab', '', 0, 7), (CAST(NULL AS VARCHAR), ',', 0, 8), ('x', ',', 0, 9)) \
                   AS v(t, d, i, n) ORDER BY n";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let parts: Vec<Option<String>> = batches
            .iter()
            .flat_map(|b| {
                let column = b.column(0).as_string::<i32>().clone();
                (0..column.len())
                    .map(move |i| column.is_valid(i).then(|| column.value(i).to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let expected = [
            Some("a"),
            Some(""),
            Some("c"),
            None,
            None,
            Some("b"),
            None,
            None,
            Some("x"),
        ];
        assert_eq!(parts, expected.map(|p| p.map(String::from)).to_vec());
        let sql = "SELECT split_index('a,b', ',', 1)";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        assert_eq!(batches[0].column(0).as_string::<i32>().value(0), "b");
    }

    #[test]
    fn hop_lists_the_starts_of_every_window_holding_the_time() {
        use arrow::array::{ListArray, TimestampMillisecondArray};
        use arrow::datatypes::{IntervalMonthDayNano, TimeUnit};
        let ts_type = DataType::Timestamp(TimeUnit::Millisecond, None);
        let ts = TimestampMillisecondArray::from(vec![Some(12_500), None, Some(-1)]);
        let seconds = |n: i64| {
            ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(
                0,
                0,
                n * 1_000_000_000,
            )))
        };
        let args = ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Scalar(seconds(2)),
                ColumnarValue::Scalar(seconds(6)),
                ColumnarValue::Array(Arc::new(ts)),
            ],
            arg_fields: vec![],
            number_rows: 3,
            return_field: Arc::new(Field::new(
                "r",
                DataType::new_list(ts_type.clone(), true),
                true,
            )),
            config_options: Arc::new(ConfigOptions::default()),
        };
        let ColumnarValue::Array(a) = Hop::new().invoke_with_args(args).unwrap() else {
            panic!("an array")
        };
        let lists = a.as_any().downcast_ref::<ListArray>().unwrap();
        let starts = |row: usize| {
            let v = lists.value(row);
            let v = v
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .unwrap();
            v.values().to_vec()
        };
        // 12.5 s lies in [8, 14), [10, 16) and [12, 18).
        assert_eq!(starts(0), vec![8_000, 10_000, 12_000]);
        assert!(lists.is_null(1));
        // -1 ms lies in [-6, 0), [-4, 2) and [-2, 4) seconds.
        assert_eq!(starts(2), vec![-6_000, -4_000, -2_000]);
    }

    #[test]
    fn counts_one_character_per_row() {
        let udf = CountChar::new();
        let text = StringArray::from(vec![Some("cat"), Some("ccc"), None, Some(""), Some("écé")]);
        let call = |needle: &str| {
            let args = ScalarFunctionArgs {
                args: vec![
                    ColumnarValue::Array(Arc::new(text.clone())),
                    ColumnarValue::Scalar(ScalarValue::Utf8(Some(needle.into()))),
                ],
                arg_fields: vec![
                    Arc::new(Field::new("t", DataType::Utf8, true)),
                    Arc::new(Field::new("c", DataType::Utf8, false)),
                ],
                number_rows: text.len(),
                return_field: Arc::new(Field::new("r", DataType::Int64, true)),
                config_options: Arc::new(ConfigOptions::default()),
            };
            let ColumnarValue::Array(a) = udf.invoke_with_args(args).unwrap() else {
                panic!("an array")
            };
            a.as_any().downcast_ref::<Int64Array>().unwrap().clone()
        };
        let ascii = call("c");
        assert_eq!(
            ascii.iter().collect::<Vec<_>>(),
            vec![Some(1), Some(3), None, Some(0), Some(1)]
        );
        let unicode = call("é");
        assert_eq!(
            unicode.iter().collect::<Vec<_>>(),
            vec![Some(0), Some(0), None, Some(0), Some(2)]
        );
    }
}
