//! Scalar functions flumen adds to DataFusion's: `count_char(text, ch)`
//! counts the occurrences of one character (Nexmark q14's user function, and
//! the example of how to register a Rust UDF).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// Every UDF flumen registers, for the streaming planner and the batch oracle alike.
pub fn udfs() -> Vec<ScalarUDF> {
    vec![ScalarUDF::new_from_impl(CountChar::new())]
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
