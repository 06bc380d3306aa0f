//! `regexp_extract(text, pattern [, group])`: what one group of the first
//! match of a regular expression captured, as Flink's `REGEXP_EXTRACT`
//! (group 0, the default, is the whole match). Null when the text is null,
//! nothing matches or the group took no part in the match. DataFusion's
//! `regexp_match(text, pattern)[group]` gives the same value but builds a
//! list of every group per row and then copies one out of it; this writes
//! the one group straight into the result.
//!
//! `regexp_extract(…) IS NOT NULL`, the usual test of whether a text has
//! the pattern (Nexmark q21's filter), becomes `regexp_extract_matched(text,
//! pattern)` when the group takes part in every match: a yes-or-no search
//! that stops at the first match instead of locating it and its groups.
//!
//! Matches are remembered per distinct text ([`TextMemo`]): q21's 10,004
//! channel URLs are searched once each, not once a bid.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, StringBuilder, new_null_array};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use regex::Regex;

use crate::text_memo::TextMemo;

/// State a function keeps between calls to save work (a compiled pattern,
/// remembered matches): not part of the function's identity, so every two
/// compare equal and it hashes to nothing.
#[derive(Default)]
struct Cache<T>(Mutex<T>);

impl<T> Cache<T> {
    /// The state, locked. A poisoned lock only means a call panicked while
    /// holding it; the state is whole.
    fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T> std::fmt::Debug for Cache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cache")
    }
}

impl<T> PartialEq for Cache<T> {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl<T> Eq for Cache<T> {}

impl<T> Hash for Cache<T> {
    fn hash<H: Hasher>(&self, _state: &mut H) {}
}

/// The last pattern a function compiled: batches bring the same constant
/// pattern, so it is compiled once.
#[derive(Debug, Default, PartialEq, Eq, Hash)]
struct Compiled(Cache<Option<(String, Regex)>>);

impl Compiled {
    /// `pattern` compiled, or the one compiled last when it is the same.
    fn regex(&self, pattern: &str) -> Result<Regex> {
        let mut compiled = self.0.lock();
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

/// Where a group matched in a text, if it did.
type Span = Option<(usize, usize)>;

/// Memos kept at most by one function.
const MEMOS: usize = 8;

/// Memos of the spans a pattern's group matched, each taken by one call
/// at a time (subtasks may share the function), kept with the pattern and
/// group they are for.
#[derive(Debug, Default, PartialEq, Eq, Hash)]
struct Memos(Cache<Vec<(String, usize, TextMemo<Span>)>>);

impl Memos {
    /// A memo for `pattern`'s `group`: one kept for them, or a new one.
    fn take(&self, pattern: &str, group: usize) -> TextMemo<Span> {
        let mut memos = self.0.lock();
        match memos
            .iter()
            .position(|(p, g, _)| p == pattern && *g == group)
        {
            Some(i) => memos.swap_remove(i).2,
            None => TextMemo::new(),
        }
    }

    /// Keeps `memo` for the next call with `pattern` and `group`, and at
    /// most [`MEMOS`] memos in all (the function may serve several call
    /// sites and subtasks), dropping the one given back longest ago.
    fn give_back(&self, pattern: &str, group: usize, memo: TextMemo<Span>) {
        let mut memos = self.0.lock();
        if memos.len() == MEMOS {
            memos.remove(0);
        }
        memos.push((pattern.to_string(), group, memo));
    }
}

/// The UDF, with the last pattern it compiled and memos of its matches.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct RegexpExtract {
    signature: Signature,
    compiled: Compiled,
    memos: Memos,
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
            compiled: Compiled::default(),
            memos: Memos::default(),
        }
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
        let regex = self.compiled.regex(pattern)?;
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
        let mut search = |s: &str| -> Span {
            if group == 0 {
                regex.find(s).map(|m| (m.start(), m.end()))
            } else {
                regex.captures_read(&mut slots, s)?;
                slots.get(group)
            }
        };
        let mut memo = self.memos.take(pattern, group);
        for value in text.iter() {
            let found = value.and_then(|s| {
                let (start, end) = memo.get(s, &mut search)?;
                Some(&s[start..end])
            });
            out.append_option(found);
        }
        self.memos.give_back(pattern, group, memo);
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}

/// `regexp_extract_matched(text, pattern)`: whether `pattern` matches
/// `text`, false for a null text; what `regexp_extract(text, pattern,
/// group) IS NOT NULL` is when the group takes part in every match.
/// Planned only by [`match_tests`], never named in SQL.
#[derive(Debug, PartialEq, Eq, Hash)]
struct RegexpExtractMatched {
    signature: Signature,
    compiled: Compiled,
}

impl ScalarUDFImpl for RegexpExtractMatched {
    fn name(&self) -> &str {
        "regexp_extract_matched"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let [
            text,
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(pattern))),
        ] = args.args.as_slice()
        else {
            return exec_err!("regexp_extract_matched takes a text and a constant pattern");
        };
        let regex = self.compiled.regex(pattern)?;
        let text = text.to_array(rows)?;
        let text = text.as_string_opt::<i32>().ok_or_else(|| {
            DataFusionError::Execution("regexp_extract takes VARCHAR text".into())
        })?;
        let matched = BooleanBuffer::collect_bool(text.len(), |i| {
            text.is_valid(i) && regex.is_match(text.value(i))
        });
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
            matched, None,
        ))))
    }
}

/// `expr` with each `regexp_extract(text, pattern [, group]) IS NOT NULL`
/// whose constant group takes part in every match of its constant pattern
/// (group 0, or a pattern whose groups all always match, as q21's
/// `(&|^)channel_id=([^&]*)`) turned into `regexp_extract_matched(text,
/// pattern)`. A bad pattern or group is left alone, to fail as it did.
pub(crate) fn match_tests(expr: Expr) -> Result<Expr> {
    expr.transform_up(|e| {
        let Expr::IsNotNull(inner) = &e else {
            return Ok(Transformed::no(e));
        };
        let Expr::ScalarFunction(f) = inner.as_ref() else {
            return Ok(Transformed::no(e));
        };
        if f.func.name() != "regexp_extract" {
            return Ok(Transformed::no(e));
        }
        let (text, pattern, group) = match f.args.as_slice() {
            [text, Expr::Literal(ScalarValue::Utf8(Some(p)), _)] => (text, p, 0),
            [
                text,
                Expr::Literal(ScalarValue::Utf8(Some(p)), _),
                Expr::Literal(ScalarValue::Int64(Some(g)), _),
            ] => (text, p, *g),
            _ => return Ok(Transformed::no(e)),
        };
        let Ok(regex) = Regex::new(pattern) else {
            return Ok(Transformed::no(e));
        };
        let groups = regex.captures_len();
        let always = group == 0
            || (usize::try_from(group).is_ok_and(|g| g < groups)
                && regex.static_captures_len() == Some(groups));
        if !always {
            return Ok(Transformed::no(e));
        }
        let matched = ScalarUDF::new_from_impl(RegexpExtractMatched {
            signature: Signature::exact(
                vec![DataType::Utf8, DataType::Utf8],
                Volatility::Immutable,
            ),
            compiled: Compiled::default(),
        });
        Ok(Transformed::yes(Expr::ScalarFunction(
            ScalarFunction::new_udf(Arc::new(matched), vec![text.clone(), f.args[1].clone()]),
        )))
    })
    .data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::datatypes::Field;
    use datafusion::common::config::ConfigOptions;

    fn extract(texts: &[Option<&str>], pattern: &str, group: Option<i64>) -> Result<StringArray> {
        extract_with(&RegexpExtract::new(), texts, pattern, group)
    }

    /// [`extract`] by `udf`, which keeps its memos from call to call.
    fn extract_with(
        udf: &RegexpExtract,
        texts: &[Option<&str>],
        pattern: &str,
        group: Option<i64>,
    ) -> Result<StringArray> {
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
        let ColumnarValue::Array(a) = udf.invoke_with_args(args)? else {
            panic!("an array")
        };
        Ok(a.as_string::<i32>().clone())
    }

    /// One function called again and again, with repeating texts and with
    /// other groups and patterns between, gives what a fresh one gives:
    /// what it remembers is kept apart by pattern and group.
    #[test]
    fn remembered_matches_are_those_of_their_pattern_and_group() {
        let udf = RegexpExtract::new();
        let urls: Vec<String> = (0..300)
            .map(|i| {
                format!(
                    "https://x.com/p{}?a={}&channel_id={}",
                    i % 7,
                    i % 11,
                    i % 50
                )
            })
            .collect();
        let texts: Vec<Option<&str>> = urls
            .iter()
            .enumerate()
            .map(|(i, u)| (i % 13 != 0).then_some(u.as_str()))
            .collect();
        let calls = [
            ("(&|^)channel_id=([^&]*)", Some(2)),
            ("(&|^)channel_id=([^&]*)", Some(1)),
            ("(&|^)channel_id=([^&]*)", None),
            ("a=([0-9]+)", Some(1)),
        ];
        for round in 0..3 {
            for (pattern, group) in calls {
                assert_eq!(
                    extract_with(&udf, &texts, pattern, group).unwrap(),
                    extract(&texts, pattern, group).unwrap(),
                    "round {round}, {pattern} group {group:?}"
                );
            }
        }
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

    /// The rewrite of `regexp_extract(text, pattern, group) IS NOT NULL`.
    fn rewritten(pattern: Expr, group: Option<i64>) -> Expr {
        let mut args = vec![datafusion::prelude::col("t"), pattern];
        args.extend(group.map(|g| Expr::Literal(ScalarValue::Int64(Some(g)), None)));
        let extract = Expr::ScalarFunction(ScalarFunction::new_udf(
            Arc::new(ScalarUDF::new_from_impl(RegexpExtract::new())),
            args,
        ));
        match_tests(extract.is_not_null()).unwrap()
    }

    fn is_matched(e: &Expr) -> bool {
        matches!(e, Expr::ScalarFunction(f) if f.func.name() == "regexp_extract_matched")
    }

    fn literal(p: &str) -> Expr {
        Expr::Literal(ScalarValue::Utf8(Some(p.into())), None)
    }

    /// Only a group that takes part in every match of a valid constant
    /// pattern is tested by a match alone.
    #[test]
    fn only_tests_of_groups_in_every_match_become_matches() {
        let q21 = "(&|^)channel_id=([^&]*)";
        assert!(is_matched(&rewritten(literal(q21), Some(2))));
        assert!(is_matched(&rewritten(literal(q21), Some(0))));
        assert!(is_matched(&rewritten(literal(q21), None)));
        assert!(is_matched(&rewritten(literal("(a)?b"), Some(0))));
        assert!(!is_matched(&rewritten(literal("(a)?b"), Some(1))));
        assert!(!is_matched(&rewritten(literal("(a)|(b)"), Some(2))));
        assert!(!is_matched(&rewritten(literal(q21), Some(3))), "no group 3");
        assert!(
            !is_matched(&rewritten(literal("(a"), Some(1))),
            "bad pattern"
        );
        let column = datafusion::prelude::col("p");
        assert!(!is_matched(&rewritten(column, Some(1))), "not a constant");
    }

    /// The match test gives what `IS NOT NULL` of the extracted group gives,
    /// false for a null text.
    #[test]
    fn a_match_test_equals_the_extracted_group_being_not_null() {
        let texts = [
            Some("https://x/item?query=1&channel_id=42&y=7"),
            Some("channel_id=9&channel_id=10"),
            Some("https://x/item?query=1"),
            None,
            Some("&channel_id="),
            Some("https://x/item?query=1&xchannel_id=3"),
        ];
        let check = |pattern: &str, group: i64, expected: Vec<bool>| {
            let args = ScalarFunctionArgs {
                args: vec![
                    ColumnarValue::Array(Arc::new(StringArray::from(texts.to_vec()))),
                    ColumnarValue::Scalar(ScalarValue::Utf8(Some(pattern.into()))),
                ],
                arg_fields: vec![],
                number_rows: texts.len(),
                return_field: Arc::new(Field::new("r", DataType::Boolean, true)),
                config_options: Arc::new(ConfigOptions::default()),
            };
            let Expr::ScalarFunction(f) = rewritten(literal(pattern), Some(group)) else {
                panic!("a function")
            };
            let ColumnarValue::Array(got) = f.func.invoke_with_args(args).unwrap() else {
                panic!("an array")
            };
            let extracted = extract(&texts, pattern, Some(group)).unwrap();
            let want: BooleanArray = (0..texts.len())
                .map(|i| Some(extracted.is_valid(i)))
                .collect();
            assert_eq!(got.as_boolean(), &want, "{pattern}");
            assert_eq!(want, BooleanArray::from(expected), "{pattern}");
        };
        check(
            "(&|^)channel_id=([^&]*)",
            2,
            vec![true, true, false, false, true, false],
        );
        // Matches every text, even an empty one: a null text is still false.
        check("(x?)", 1, vec![true, true, true, false, true, true]);
    }
}
