//! `to_char(timestamp, format)` for a column of timestamps and a constant
//! format that prints nothing finer than seconds (Nexmark q10's
//! `'%Y-%m-%d'` and `'%H'`): the format is parsed once, not for every row,
//! and a row in the same second, minute, hour or day as the row before (as
//! the rows of a stream mostly are) reuses its text. Everything else goes
//! to DataFusion's `to_char`, whose results this gives unchanged.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use arrow::datatypes::{
    ArrowTimestampType, DataType, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use chrono::format::{Fixed, Item, Numeric, StrftimeItems};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature};

/// DataFusion's `to_char`, with the fast path in front. DataFusion's alias
/// `date_format` is not taken: that name is Flink's function, with Java's
/// patterns (`date_format.rs`).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct ToChar {
    inner: datafusion::functions::datetime::to_char::ToCharFunc,
}

impl ToChar {
    pub(crate) fn new() -> Self {
        ToChar {
            inner: datafusion::functions::datetime::to_char::ToCharFunc::new(),
        }
    }
}

/// Seconds in the coarsest unit a format's printed fields all stay the
/// same within, or `None` when the format prints something this path does
/// not handle (fractions of a second, epoch seconds, time zones).
fn granule_seconds(items: &[Item<'_>]) -> Option<i64> {
    let mut granule = 86_400;
    for item in items {
        let seconds = match item {
            Item::Literal(_) | Item::OwnedLiteral(_) | Item::Space(_) | Item::OwnedSpace(_) => {
                86_400
            }
            Item::Numeric(n, _) => match n {
                Numeric::Year
                | Numeric::YearDiv100
                | Numeric::YearMod100
                | Numeric::IsoYear
                | Numeric::IsoYearDiv100
                | Numeric::IsoYearMod100
                | Numeric::Quarter
                | Numeric::Month
                | Numeric::Day
                | Numeric::WeekFromSun
                | Numeric::WeekFromMon
                | Numeric::IsoWeek
                | Numeric::NumDaysFromSun
                | Numeric::WeekdayFromMon
                | Numeric::Ordinal => 86_400,
                Numeric::Hour | Numeric::Hour12 => 3_600,
                Numeric::Minute => 60,
                Numeric::Second => 1,
                _ => return None,
            },
            Item::Fixed(f) => match f {
                Fixed::ShortMonthName
                | Fixed::LongMonthName
                | Fixed::ShortWeekdayName
                | Fixed::LongWeekdayName => 86_400,
                Fixed::LowerAmPm | Fixed::UpperAmPm => 3_600,
                _ => return None,
            },
            _ => return None,
        };
        granule = granule.min(seconds);
    }
    Some(granule)
}

/// The formatted timestamps of `values` (of type `T`), or `None` when one
/// is out of chrono's range (DataFusion's path then says so).
fn format_all<T: ArrowTimestampType>(
    values: &dyn Array,
    items: &[Item<'_>],
    granule: i64,
) -> Option<ArrayRef> {
    let values = values.as_primitive::<T>();
    let per_second = match T::UNIT {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    };
    let per_granule = per_second * granule;
    let mut out = StringBuilder::with_capacity(values.len(), values.len() * 16);
    let mut text = String::new();
    let mut last = None;
    for value in values.iter() {
        let Some(v) = value else {
            out.append_null();
            continue;
        };
        let key = v.div_euclid(per_granule);
        if last != Some(key) {
            let time = arrow::array::temporal_conversions::as_datetime::<T>(v)?;
            text.clear();
            // Writing into a String cannot fail; a field the time lacks
            // would, and the granule check allows none such.
            write!(text, "{}", time.format_with_items(items.iter())).ok()?;
            last = Some(key);
        }
        out.append_value(&text);
    }
    Some(Arc::new(out.finish()))
}

impl ScalarUDFImpl for ToChar {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        self.inner.return_type(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let [
            ColumnarValue::Array(values),
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(f))),
        ] = args.args.as_slice()
            && let Ok(items) = StrftimeItems::new(f).parse()
            && let Some(granule) = granule_seconds(&items)
        {
            let formatted = match values.data_type() {
                DataType::Timestamp(TimeUnit::Second, None) => {
                    format_all::<TimestampSecondType>(values, &items, granule)
                }
                DataType::Timestamp(TimeUnit::Millisecond, None) => {
                    format_all::<TimestampMillisecondType>(values, &items, granule)
                }
                DataType::Timestamp(TimeUnit::Microsecond, None) => {
                    format_all::<TimestampMicrosecondType>(values, &items, granule)
                }
                DataType::Timestamp(TimeUnit::Nanosecond, None) => {
                    format_all::<TimestampNanosecondType>(values, &items, granule)
                }
                _ => None,
            };
            if let Some(formatted) = formatted {
                return Ok(ColumnarValue::Array(formatted));
            }
        }
        self.inner.invoke_with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, TimestampMillisecondArray, TimestampSecondArray};
    use arrow::datatypes::Field;
    use datafusion::common::config::ConfigOptions;

    fn call(udf: &dyn ScalarUDFImpl, values: &ArrayRef, format: &str) -> Result<StringArray> {
        let args = ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Array(values.clone()),
                ColumnarValue::Scalar(ScalarValue::Utf8(Some(format.into()))),
            ],
            arg_fields: vec![],
            number_rows: values.len(),
            return_field: Arc::new(Field::new("r", DataType::Utf8, true)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        let ColumnarValue::Array(a) = udf.invoke_with_args(args)? else {
            panic!("an array")
        };
        Ok(a.as_string::<i32>().clone())
    }

    /// Runs of rows in one second, minute, hour and day, before and after
    /// 1970, and nulls: every format gives what DataFusion's to_char gives.
    #[test]
    fn formats_as_datafusions_to_char_does() {
        let mut millis = Vec::new();
        let mut t: i64 = -90_061_001;
        for i in 0..4_000i64 {
            t += [0, 1, 999, 59_000, 3_599_000, 86_399_999][(i * 7 % 6) as usize];
            millis.push((i % 17 != 0).then_some(t));
        }
        let ms: ArrayRef = Arc::new(TimestampMillisecondArray::from(millis.clone()));
        let seconds: Vec<Option<i64>> = millis.iter().map(|m| m.map(|m| m / 1000)).collect();
        let s: ArrayRef = Arc::new(TimestampSecondArray::from(seconds));
        let ours = ToChar::new();
        let theirs = datafusion::functions::datetime::to_char::ToCharFunc::new();
        for format in [
            "%Y-%m-%d",
            "%H",
            "%Y-%m-%d %H:%M:%S",
            "%b %a %p %I:%M",
            "%j %U %W %u %w %G-%V %q",
            "day %e of %B, %A",
            "%H:%M:%S%.3f",
            "%s",
        ] {
            for values in [&ms, &s] {
                assert_eq!(
                    call(&ours, values, format).unwrap(),
                    call(&theirs, values, format).unwrap(),
                    "{format} over {}",
                    values.data_type()
                );
            }
        }
    }

    #[test]
    fn only_formats_of_whole_seconds_take_the_fast_path() {
        let granule = |f: &str| granule_seconds(&StrftimeItems::new(f).parse().unwrap());
        assert_eq!(granule("%Y-%m-%d"), Some(86_400));
        assert_eq!(granule("%H"), Some(3_600));
        assert_eq!(granule("%p"), Some(3_600));
        assert_eq!(granule("%Y %M"), Some(60));
        assert_eq!(granule("%T"), Some(1));
        assert_eq!(granule("%.3f"), None);
        assert_eq!(granule("%s"), None);
        assert_eq!(granule("%z"), None);
    }
}
