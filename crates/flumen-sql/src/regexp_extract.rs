//! `regexp_extract(text, pattern [, group])`: what one group of the first
//! match of a regular expression captured, as Flink's `REGEXP_EXTRACT`
//! (group 0, the default, is the whole match). Null when the text is null,
//! nothing matches or the group took no part in the match. DataFusion's
//! `regexp_match(text, pattern)[group]` gives the same value but builds a
//! list of every group per row and then copies one out of it; this writes
//! the one group straight into the result.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder, new_null_array};
use arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use regex::Regex;

/// The UDF, with the last pattern it compiled.
#[derive(Debug)]
pub(crate) struct RegexpExtract {
    signature: Signature,
    /// Batches bring the same constant pattern: it is compiled once.
    compiled: Mutex<Option<(String, Regex)>>,
}

impl RegexpExtract {
    pub(crate) fn new() -> Self {
        use DataType::{Int64, Utf8};
        RegexpExtract {
            signature: Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![Utf8, Utf8]),
                    TypeSignature::Exact(vec![Utf8, Utf8, Int64]),
                ],
                Volatility::Immutable,
            ),
            compiled: Mutex::new(None),
        }
    }

    /// `pattern` compiled, or the one compiled last when it is the same.
    fn regex(&self, pattern: &str) -> Result<Regex> {
        // A poisoned lock only means another batch panicked while holding
        // it; the cached regex is still whole.
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((p, regex)) = compiled.as_ref()
            && p == pattern
        {
            return Ok(regex.clone());
        }
        let regex = Regex::new(pattern).map_err(|e| {
            DataFusionError::Execution(format!("regexp_extract: pattern '{pattern}': {e}"))
        })?;
        *compiled = Some((pattern.to_string(), regex.clone()));
        Ok(regex)
    }
}

impl PartialEq for RegexpExtract {
    fn eq(&self, other: &Self) -> bool {
        self.signature == other.signature
    }
}

impl Eq for RegexpExtract {}

impl Hash for RegexpExtract {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.signature.hash(state);
    }
}

impl ScalarUDFImpl for RegexpExtract {
    fn name(&self) -> &str {
        "regexp_extract"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let (text, pattern, group) = match args.args.as_slice() {
            [text, pattern] => (text, pattern, None),
            [text, pattern, group] => (text, pattern, Some(group)),
            _ => return exec_err!("regexp_extract takes two or three arguments"),
        };
        let nulls = || Ok(ColumnarValue::Array(new_null_array(&DataType::Utf8, rows)));
        let pattern = match pattern {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(p))) => p,
            ColumnarValue::Scalar(ScalarValue::Utf8(None)) => return nulls(),
            _ => return exec_err!("regexp_extract's pattern must be a constant string"),
        };
        let group = match group {
            None => 0,
            Some(ColumnarValue::Scalar(ScalarValue::Int64(Some(g)))) => *g,
            Some(ColumnarValue::Scalar(ScalarValue::Int64(None))) => return nulls(),
            Some(_) => return exec_err!("regexp_extract's group must be a constant integer"),
        };
        let regex = self.regex(pattern)?;
        let groups = regex.captures_len() - 1;
        let Some(group) = usize::try_from(group).ok().filter(|g| *g <= groups) else {
            return exec_err!(
                "regexp_extract: group {group} of pattern '{pattern}', which has {groups} groups"
            );
        };
        let text = text.to_array(rows)?;
        let text = text.as_string_opt::<i32>().ok_or_else(|| {
            DataFusionError::Execution("regexp_extract takes VARCHAR text".into())
        })?;
        let mut out = StringBuilder::with_capacity(text.len(), 0);
        let mut slots = regex.capture_locations();
        for value in text.iter() {
            let found = value.and_then(|s| {
                let span = if group == 0 {
                    regex.find(s).map(|m| (m.start(), m.end()))
                } else {
                    regex.captures_read(&mut slots, s)?;
                    slots.get(group)
                };
                span.map(|(start, end)| &s[start..end])
            });
            out.append_option(found);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::datatypes::Field;
    use datafusion::common::config::ConfigOptions;

    fn extract(texts: &[Option<&str>], pattern: &str, group: Option<i64>) -> Result<StringArray> {
        let mut args = vec![
            ColumnarValue::Array(Arc::new(StringArray::from(texts.to_vec()))),
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(pattern.into()))),
        ];
        args.extend(group.map(|g| ColumnarValue::Scalar(ScalarValue::Int64(Some(g)))));
        let args = ScalarFunctionArgs {
            args,
            arg_fields: vec![],
            number_rows: texts.len(),
            return_field: Arc::new(Field::new("r", DataType::Utf8, true)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        let ColumnarValue::Array(a) = RegexpExtract::new().invoke_with_args(args)? else {
            panic!("an array")
        };
        Ok(a.as_string::<i32>().clone())
    }

    /// Each group of the first match, the whole match for group 0 and by
    /// default, and null for a null text, no match or a group that took no
    /// part in the match (as Flink's REGEXP_EXTRACT).
    #[test]
    fn extracts_a_group_of_the_first_match() {
        let texts = [
            Some("https://x/item?query=1&channel_id=42&y=7"),
            Some("channel_id=9&channel_id=10"),
            Some("https://x/item?query=1"),
            None,
            Some("&channel_id="),
        ];
        let pattern = "(&|^)channel_id=([^&]*)";
        let want = |v: [Option<&str>; 5]| StringArray::from(v.to_vec());
        assert_eq!(
            extract(&texts, pattern, Some(2)).unwrap(),
            want([Some("42"), Some("9"), None, None, Some("")])
        );
        assert_eq!(
            extract(&texts, pattern, Some(1)).unwrap(),
            want([Some("&"), Some(""), None, None, Some("&")])
        );
        let whole = want([
            Some("&channel_id=42"),
            Some("channel_id=9"),
            None,
            None,
            Some("&channel_id="),
        ]);
        assert_eq!(extract(&texts, pattern, Some(0)).unwrap(), whole);
        assert_eq!(extract(&texts, pattern, None).unwrap(), whole);
        let optional = extract(&[Some("ab"), Some("b")], "(a)?b", Some(1)).unwrap();
        assert_eq!(optional, StringArray::from(vec![Some("a"), None]));
    }

    #[test]
    fn a_group_past_the_patterns_or_a_bad_pattern_is_an_error() {
        let err = extract(&[Some("a")], "(a)", Some(2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("group 2") && err.contains("1 groups"), "{err}");
        let err = extract(&[Some("a")], "(a", Some(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pattern '(a'"), "{err}");
        assert!(extract(&[Some("a")], "(a)", Some(-1)).is_err());
    }
}
