//! Flink's `DATE_FORMAT(timestamp, 'yyyy-MM-dd HH:mm')`: the Java pattern
//! is turned into a strftime format once per call and the timestamps are
//! formatted by `to_char` (with its fast path), so Flink's Nexmark q10 and
//! q15–q17 run as they are written.

use arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::to_char::ToChar;

/// `date_format(timestamp, pattern) -> VARCHAR`, with Java's pattern
/// letters (`yyyy MM dd HH mm ss SSS`, month and weekday names, quoted
/// text).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct DateFormat {
    to_char: ToChar,
    signature: Signature,
}

impl DateFormat {
    pub(crate) fn new() -> Self {
        DateFormat {
            to_char: ToChar::new(),
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for DateFormat {
    fn name(&self) -> &str {
        "date_format"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let format = match &args.args[1] {
            ColumnarValue::Scalar(
                ScalarValue::Utf8(Some(p))
                | ScalarValue::LargeUtf8(Some(p))
                | ScalarValue::Utf8View(Some(p)),
            ) => match strftime(p) {
                Ok(format) => format,
                Err(e) => return exec_err!("date_format pattern '{p}': {e}"),
            },
            _ => {
                return exec_err!(
                    "date_format's pattern must be a constant text such as 'yyyy-MM-dd HH:mm'"
                );
            }
        };
        args.args[1] = ColumnarValue::Scalar(ScalarValue::Utf8(Some(format)));
        self.to_char.invoke_with_args(args)
    }
}

/// The strftime format of a Java `DateTimeFormatter` pattern.
fn strftime(pattern: &str) -> std::result::Result<String, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // Quoted text, in which (as outside) '' is a quote.
            if chars.get(i + 1) == Some(&'\'') {
                out.push('\'');
                i += 2;
                continue;
            }
            let mut j = i + 1;
            loop {
                match chars.get(j) {
                    None => return Err("a quote is not closed".to_string()),
                    Some('\'') if chars.get(j + 1) == Some(&'\'') => {
                        out.push('\'');
                        j += 2;
                    }
                    Some('\'') => break,
                    Some(&x) => {
                        push_literal(&mut out, x);
                        j += 1;
                    }
                }
            }
            i = j + 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            push_literal(&mut out, c);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&x| x == c).count();
        let field = match (c, run) {
            ('y' | 'u', 2) => "%y",
            ('y' | 'u', _) => "%Y",
            ('M' | 'L', 1) => "%-m",
            ('M' | 'L', 2) => "%m",
            ('M' | 'L', 3) => "%b",
            ('M' | 'L', _) => "%B",
            ('d', 1) => "%-d",
            ('d', 2) => "%d",
            ('D', _) => "%j",
            ('H', 1) => "%-H",
            ('H', 2) => "%H",
            ('h', 1) => "%-I",
            ('h', 2) => "%I",
            ('m', 1) => "%-M",
            ('m', 2) => "%M",
            ('s', 1) => "%-S",
            ('s', 2) => "%S",
            ('S', 3) => "%3f",
            ('S', 6) => "%6f",
            ('S', 9) => "%9f",
            ('a', 1) => "%p",
            ('E', 1..=3) => "%a",
            ('E', _) => "%A",
            _ => {
                return Err(format!(
                    "'{}' is not a pattern flumen knows (it knows y, M, d, D, H, h, m, s, S as SSS, SSSSSS or SSSSSSSSS, a, E and quoted text)",
                    c.to_string().repeat(run)
                ));
            }
        };
        out.push_str(field);
        i += run;
    }
    Ok(out)
}

fn push_literal(out: &mut String, c: char) {
    match c {
        '%' => out.push_str("%%"),
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_patterns_become_strftime_formats() {
        for (java, format) in [
            ("yyyy-MM-dd", "%Y-%m-%d"),
            ("HH:mm", "%H:%M"),
            ("yyyy-MM-dd HH:mm:ss.SSS", "%Y-%m-%d %H:%M:%S.%3f"),
            ("d MMM yy, h:m:s a", "%-d %b %y, %-I:%-M:%-S %p"),
            ("EEEE d MMMM", "%A %-d %B"),
            ("yyyy'T'HH 'o''clock' 100%", "%YT%H o'clock 100%%"),
            ("''", "'"),
        ] {
            assert_eq!(strftime(java).as_deref(), Ok(format), "{java}");
        }
        assert!(strftime("yyyy 'T").unwrap_err().contains("not closed"));
        let err = strftime("yyyy-ww").unwrap_err();
        assert!(err.contains("'ww' is not a pattern flumen knows"), "{err}");
    }

    /// Flink's patterns give what the same strftime format gives
    /// `to_char`, through the planner's session.
    #[tokio::test]
    async fn date_format_formats_as_to_char_does() {
        let ctx = crate::session();
        let sql = "SELECT date_format(t, 'yyyy-MM-dd HH:mm:ss.SSS') = to_char(t, '%Y-%m-%d %H:%M:%S.%3f') AND \
                   date_format(t, 'yyyy-MM-dd') = to_char(t, '%Y-%m-%d') AS same, date_format(t, 'HH:mm') AS hm \
                   FROM (VALUES (TIMESTAMP '2026-03-02 09:30:00.125'), (TIMESTAMP '1999-12-31 23:59:59.999'), \
                   (CAST(NULL AS TIMESTAMP))) AS v(t)";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        for expected in ["| true | 09:30 |", "| true | 23:59 |", "|      |       |"] {
            assert!(text.contains(expected), "{text}");
        }
        let err = ctx
            .sql("SELECT date_format(TIMESTAMP '2026-01-01 00:00:00', 'yyyy-QQ')")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("'QQ' is not a pattern flumen knows"),
            "{err}"
        );
    }
}
