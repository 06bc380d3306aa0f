//! Flink's `TIMESTAMPDIFF(unit, t1, t2)` and `TIMESTAMPADD(unit, n, t)`,
//! with units `SECOND`, `MINUTE`, `HOUR`, `DAY`, `WEEK`, `MONTH`, `QUARTER`
//! and `YEAR`. The unit is a keyword, which DataFusion would take for a
//! column: before planning it is rewritten into text (`'SECOND'`), which
//! the two functions read.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Builder, PrimitiveBuilder};
use arrow::datatypes::{DataType, TimeUnit, TimestampNanosecondType};
use chrono::{DateTime, Months, NaiveDateTime};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Statement, Value, visit_expressions_mut,
};

/// How long a unit is: a fixed number of nanoseconds, or months.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Nanos(i64),
    Months(i64),
}

const SECOND: i64 = 1_000_000_000;

fn unit(name: &str) -> Option<Unit> {
    Some(match name.to_uppercase().as_str() {
        "SECOND" => Unit::Nanos(SECOND),
        "MINUTE" => Unit::Nanos(60 * SECOND),
        "HOUR" => Unit::Nanos(3_600 * SECOND),
        "DAY" => Unit::Nanos(86_400 * SECOND),
        "WEEK" => Unit::Nanos(7 * 86_400 * SECOND),
        "MONTH" => Unit::Months(1),
        "QUARTER" => Unit::Months(3),
        "YEAR" => Unit::Months(12),
        _ => return None,
    })
}

const UNITS: &str = "SECOND, MINUTE, HOUR, DAY, WEEK, MONTH, QUARTER or YEAR";

/// Rewrites the unit keyword of every `TIMESTAMPDIFF` and `TIMESTAMPADD`
/// call of `statement` into text.
pub(crate) fn quote_units(statement: &mut Statement) {
    let quote = |e: &mut Expr| {
        if let Expr::Function(f) = e
            && ["timestampdiff", "timestampadd"]
                .iter()
                .any(|n| f.name.to_string().eq_ignore_ascii_case(n))
            && let FunctionArguments::List(list) = &mut f.args
            && let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(first))) = list.args.first_mut()
            && let Expr::Identifier(word) = first
            && word.quote_style.is_none()
        {
            *first = Expr::value(Value::SingleQuotedString(word.value.to_uppercase()));
        }
        ControlFlow::<()>::Continue(())
    };
    let _ = visit_expressions_mut(statement, quote);
}

/// The constant unit of a call, with its name, or an error naming the
/// valid ones.
fn unit_of<'a>(function: &str, arg: &'a ColumnarValue) -> Result<(Unit, &'a str)> {
    match arg {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(u))) => match unit(u) {
            Some(unit) => Ok((unit, u.as_str())),
            None => exec_err!("{function}'s unit must be {UNITS}, not {u}"),
        },
        _ => exec_err!("{function}'s unit must be a constant: {UNITS}"),
    }
}

/// A timestamp argument's values in nanoseconds.
fn nanos(arg: &ColumnarValue, rows: usize) -> Result<Arc<dyn Array>> {
    let array = arg.to_array(rows)?;
    Ok(arrow::compute::cast(
        &array,
        &DataType::Timestamp(TimeUnit::Nanosecond, None),
    )?)
}

fn datetime(ns: i64) -> NaiveDateTime {
    DateTime::from_timestamp_nanos(ns).naive_utc()
}

/// Whole months from `a` to `b` (negative when `b` is earlier), as
/// Calcite counts them for Flink: the most months that, added to `a`'s
/// date with the day clamped to the month's last, do not pass `b`'s date
/// (so January 31 to February 28 is a month), one fewer when they land on
/// `b`'s date but `b`'s time of day is earlier than `a`'s.
fn months_between(a: i64, b: i64) -> i64 {
    if b < a {
        return -months_between(b, a);
    }
    let (a, b) = (datetime(a), datetime(b));
    let (start, end) = (a.date(), b.date());
    let add = |m: u32| start.checked_add_months(Months::new(m));
    // No month is longer than 31 days, so this starts at or below the count.
    let mut m = ((end - start).num_days() / 31) as u32;
    while add(m).is_some_and(|d| d < end) && add(m + 1).is_some_and(|d| d <= end) {
        m += 1;
    }
    let earlier_in_the_day = add(m) == Some(end) && b.time() < a.time();
    i64::from(m) - i64::from(earlier_in_the_day)
}

/// `timestampdiff('UNIT', t1, t2) -> BIGINT`: whole units from `t1` to
/// `t2`, truncated toward zero (negative when `t2` is earlier).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct TimestampDiff {
    signature: Signature,
}

impl TimestampDiff {
    pub(crate) fn new() -> Self {
        TimestampDiff {
            signature: Signature::any(3, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for TimestampDiff {
    fn name(&self) -> &str {
        "timestampdiff"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [_, DataType::Timestamp(..), DataType::Timestamp(..)] => Ok(DataType::Int64),
            _ => exec_err!("TIMESTAMPDIFF(unit, t1, t2) takes a unit and two timestamps"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (unit, _) = unit_of("TIMESTAMPDIFF", &args.args[0])?;
        let rows = args.number_rows;
        let (a, b) = (nanos(&args.args[1], rows)?, nanos(&args.args[2], rows)?);
        let (a, b) = (
            a.as_primitive::<TimestampNanosecondType>(),
            b.as_primitive::<TimestampNanosecondType>(),
        );
        let mut out = Int64Builder::with_capacity(rows);
        for row in 0..rows {
            if a.is_null(row) || b.is_null(row) {
                out.append_null();
                continue;
            }
            let (a, b) = (a.value(row), b.value(row));
            out.append_value(match unit {
                Unit::Nanos(n) => (b - a) / n,
                Unit::Months(k) => months_between(a, b) / k,
            });
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `timestampadd('UNIT', n, t)`: `t` moved by `n` units (a month later
/// than January 31 is the last day of February), of `t`'s type.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct TimestampAdd {
    signature: Signature,
}

impl TimestampAdd {
    pub(crate) fn new() -> Self {
        TimestampAdd {
            signature: Signature::any(3, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for TimestampAdd {
    fn name(&self) -> &str {
        "timestampadd"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [_, n, t @ DataType::Timestamp(..)] if n.is_integer() => Ok(t.clone()),
            _ => exec_err!("TIMESTAMPADD(unit, n, t) takes a unit, an integer and a timestamp"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (unit, name) = unit_of("TIMESTAMPADD", &args.args[0])?;
        let rows = args.number_rows;
        let n = arrow::compute::cast(&args.args[1].to_array(rows)?, &DataType::Int64)?;
        let n = n.as_primitive::<arrow::datatypes::Int64Type>();
        let t = args.args[2].to_array(rows)?;
        let ts = nanos(&args.args[2], rows)?;
        let ts = ts.as_primitive::<TimestampNanosecondType>();
        let mut out = PrimitiveBuilder::<TimestampNanosecondType>::with_capacity(rows);
        for row in 0..rows {
            if n.is_null(row) || ts.is_null(row) {
                out.append_null();
                continue;
            }
            let (n, t) = (n.value(row), ts.value(row));
            let moved = match unit {
                Unit::Nanos(u) => n.checked_mul(u).and_then(|d| t.checked_add(d)),
                Unit::Months(k) => {
                    let months = n
                        .checked_mul(k)
                        .and_then(|m| u32::try_from(m.unsigned_abs()).ok());
                    let at = datetime(t);
                    months
                        .and_then(|m| {
                            if n >= 0 {
                                at.checked_add_months(Months::new(m))
                            } else {
                                at.checked_sub_months(Months::new(m))
                            }
                        })
                        .and_then(|d| d.and_utc().timestamp_nanos_opt())
                }
            };
            match moved {
                Some(v) => out.append_value(v),
                None => {
                    return exec_err!(
                        "TIMESTAMPADD: {n} {name} from {} is out of range",
                        datetime(t)
                    );
                }
            }
        }
        let moved = arrow::compute::cast(&out.finish(), t.data_type())?;
        Ok(ColumnarValue::Array(moved))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    #[test]
    fn unit_keywords_become_text() {
        let mut s = Parser::parse_sql(
            &GenericDialect {},
            "SELECT TIMESTAMPDIFF(second, a, b), timestampadd(MONTH, 1, a), f(SECOND) FROM t",
        )
        .unwrap()
        .remove(0);
        quote_units(&mut s);
        assert_eq!(
            s.to_string(),
            "SELECT TIMESTAMPDIFF('SECOND', a, b), timestampadd('MONTH', 1, a), f(SECOND) FROM t"
        );
    }

    /// Whole units, truncated toward zero, calendar months by day and time
    /// of day; additions clamp to a month's last day; as Flink computes them.
    #[tokio::test]
    async fn differences_and_additions_are_flinks() {
        let ctx = crate::session();
        let run = |sql: String| {
            let ctx = ctx.clone();
            async move {
                let mut s = Parser::parse_sql(&GenericDialect {}, &sql)
                    .unwrap()
                    .remove(0);
                quote_units(&mut s);
                let batches = ctx.sql(&s.to_string()).await?.collect().await?;
                Ok::<_, datafusion::common::DataFusionError>(
                    arrow::util::pretty::pretty_format_batches(&batches)
                        .unwrap()
                        .to_string(),
                )
            }
        };
        let diff = |unit: &str, a: &str, b: &str| {
            run(format!(
                "SELECT TIMESTAMPDIFF({unit}, TIMESTAMP '{a}', CAST(TIMESTAMP '{b}' AS TIMESTAMP(3))) AS d"
            ))
        };
        for (unit, a, b, expected) in [
            ("SECOND", "2026-01-01 00:00:00", "2026-01-01 00:01:30.9", 90),
            ("MINUTE", "2026-01-01 00:01:30", "2026-01-01 00:00:00", -1),
            ("HOUR", "2026-01-01 00:00:00", "2026-01-03 05:00:00", 53),
            ("DAY", "2026-01-01 12:00:00", "2026-01-03 11:59:59", 1),
            ("WEEK", "2026-01-01 00:00:00", "2026-01-15 00:00:00", 2),
            ("MONTH", "2026-01-31 00:00:00", "2026-02-28 00:00:00", 1),
            ("MONTH", "2026-01-31 00:00:00", "2026-02-27 23:59:59", 0),
            ("MONTH", "2026-01-15 10:00:01", "2026-02-15 10:00:00", 0),
            ("MONTH", "2026-01-15 10:00:00", "2026-03-15 10:00:00", 2),
            ("MONTH", "2026-03-15 10:00:00", "2026-01-15 10:00:01", -1),
            ("QUARTER", "2026-01-01 00:00:00", "2026-12-31 00:00:00", 3),
            ("YEAR", "2020-02-29 00:00:00", "2026-02-28 00:00:00", 6),
            ("YEAR", "2020-03-01 00:00:00", "2026-02-28 00:00:00", 5),
        ] {
            let text = diff(unit, a, b).await.unwrap();
            assert!(
                text.contains(&format!("| {expected} ")),
                "{unit} {a} {b}: {text}"
            );
        }
        let add = |unit: &str, n: i64, t: &str| {
            run(format!(
                "SELECT TIMESTAMPADD({unit}, {n}, TIMESTAMP '{t}') AS t"
            ))
        };
        for (unit, n, t, expected) in [
            ("MONTH", 1, "2026-01-31 08:00:00", "2026-02-28T08:00:00"),
            ("YEAR", -1, "2024-02-29 00:00:00", "2023-02-28T00:00:00"),
            ("HOUR", -25, "2026-01-02 00:30:00", "2025-12-31T23:30:00"),
            ("QUARTER", 2, "2026-01-15 00:00:00", "2026-07-15T00:00:00"),
        ] {
            let text = add(unit, n, t).await.unwrap();
            assert!(text.contains(expected), "{unit} {n} {t}: {text}");
        }
        let err = add("YEAR", 400_000, "2026-01-01 00:00:00")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("TIMESTAMPADD: 400000 YEAR from 2026-01-01 00:00:00 is out of range"),
            "{err}"
        );
        let err = diff("FORTNIGHT", "2026-01-01 00:00:00", "2026-01-02 00:00:00")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("unit must be SECOND, MINUTE"),
            "{err}"
        );
    }
}
