//! Error messages that point at the SQL: `file:line:column: message`.

use std::ops::ControlFlow;

use datafusion::common::DataFusionError;
use datafusion::sql::sqlparser::ast::{Expr, Ident, Statement, visit_expressions};
use datafusion::sql::sqlparser::parser::ParserError;
use datafusion::sql::sqlparser::tokenizer::Location;
use flumen_types::FlumenError;

/// Where a statement starts, used when an error carries no span of its own.
#[derive(Debug, Clone)]
pub(crate) struct SourcePos {
    pub file: String,
    pub line: u64,
    pub column: u64,
}

/// `file:line:column`, as errors name a place in the SQL.
impl std::fmt::Display for SourcePos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

impl SourcePos {
    pub(crate) fn at(file: &str, loc: Location) -> Self {
        SourcePos {
            file: file.to_string(),
            line: loc.line.max(1),
            column: loc.column.max(1),
        }
    }

    /// A plan error at this position.
    pub(crate) fn error(&self, msg: impl std::fmt::Display) -> FlumenError {
        FlumenError::plan(format!("{self}: {msg}"))
    }

    /// A DataFusion planning error, at its own span when it has one.
    pub(crate) fn datafusion(&self, e: DataFusionError) -> FlumenError {
        let pos = e
            .diagnostic()
            .and_then(|d| d.span)
            .filter(|s| s.start.line > 0)
            .map(|s| SourcePos {
                file: self.file.clone(),
                line: s.start.line,
                column: s.start.column.max(1),
            })
            .unwrap_or_else(|| self.clone());
        pos.error(clean(&e))
    }

    /// A DataFusion error from planning `statement`: at the error's own
    /// span, else, for a column DataFusion names without one (an unknown
    /// column in `GROUP BY`, say), where `statement` first writes it, else
    /// at the statement's start.
    pub(crate) fn datafusion_in(&self, e: DataFusionError, statement: &Statement) -> FlumenError {
        let message = clean(&e);
        let has_span = e.diagnostic().and_then(|d| d.span).is_some();
        let written = unknown_column(&message)
            .filter(|_| !has_span)
            .and_then(|name| first_use(statement, name));
        match written {
            Some(at) => SourcePos::at(&self.file, at).error(message),
            None => self.datafusion(e),
        }
    }

    /// Re-anchors a connector error at this position.
    pub(crate) fn wrap(&self, e: FlumenError) -> FlumenError {
        match e {
            FlumenError::Config(m) | FlumenError::Plan(m) | FlumenError::Io(m) => self.error(m),
            other => other,
        }
    }
}

/// The column of DataFusion's "No field named …" message, without its
/// qualifier and quotes.
fn unknown_column(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("No field named ")?;
    let field = match rest.find(". ") {
        Some(end) => &rest[..end],
        None => rest.trim_end_matches('.'),
    };
    let column = field.rsplit('.').next()?.trim_matches('"');
    (!column.is_empty()).then_some(column)
}

/// Where `statement` first writes the column `name` (its last part, when
/// qualified), by the spans the parser kept.
fn first_use(statement: &Statement, name: &str) -> Option<Location> {
    let mut found = None;
    let _ = visit_expressions(statement, |expr| {
        let last: Option<&Ident> = match expr {
            Expr::Identifier(ident) => Some(ident),
            Expr::CompoundIdentifier(parts) => parts.last(),
            _ => None,
        };
        match last.filter(|i| i.value.eq_ignore_ascii_case(name) && i.span.start.line > 0) {
            Some(ident) => {
                found = Some(ident.span.start);
                ControlFlow::Break(())
            }
            None => ControlFlow::Continue(()),
        }
    });
    found
}

/// DataFusion's message without the wrapper prefixes a user does not need.
pub(crate) fn clean(e: &DataFusionError) -> String {
    let msg = match e {
        DataFusionError::Diagnostic(_, inner) => inner.to_string(),
        other => other.to_string(),
    };
    msg.replace("Error during planning: ", "")
        .replace("Schema error: ", "")
        .replace("This feature is not implemented: ", "not supported: ")
}

/// A syntax error as `file:line:column: message`.
pub(crate) fn syntax_error(file: &str, e: ParserError) -> FlumenError {
    let msg = e.to_string();
    let msg = msg.strip_prefix("sql parser error: ").unwrap_or(&msg);
    // sqlparser ends its messages with " at Line: L, Column: C".
    if let Some(at) = msg.rfind(" at Line: ") {
        let (text, pos) = msg.split_at(at);
        let mut nums = pos
            .trim_start_matches(" at Line: ")
            .split(", Column: ")
            .map(|n| n.trim().parse::<u64>().ok());
        if let (Some(Some(line)), Some(Some(column))) = (nums.next(), nums.next()) {
            return FlumenError::plan(format!(
                "{file}:{line}:{column}: syntax error: {text}{}",
                hint(text)
            ));
        }
    }
    FlumenError::plan(format!("{file}: syntax error: {msg}"))
}

/// What a user most likely meant by a syntax error sqlparser words in its
/// own terms: a `WITH` option name with dots left unquoted (`a.b = 'x'`)
/// stops at the first dot, where sqlparser wanted `=`.
fn hint(text: &str) -> &'static str {
    if text.ends_with("Expected: =, found: .") {
        "; an option name with dots goes in quotes, as in 'properties.bootstrap.servers' = '…'"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    /// The column is read out of DataFusion's messages as they are written,
    /// qualified or not, quoted or not, with or without a hint after it.
    #[test]
    fn the_unknown_column_is_read_from_the_message() {
        let cases = [
            (
                "No field named pricex. Did you mean 'b.price'?",
                Some("pricex"),
            ),
            (
                "No field named b.pricex. Valid fields are b.price.",
                Some("pricex"),
            ),
            ("No field named \"Price\".", Some("Price")),
            ("No field named x", Some("x")),
            ("table 'nosuch' not found", None),
        ];
        for (message, want) in cases {
            assert_eq!(unknown_column(message), want, "{message}");
        }
    }

    /// The first place the statement writes the column, in any clause, by
    /// its last part and in any case.
    #[test]
    fn the_first_use_of_a_column_is_found() {
        let sql = "SELECT a, count(*)\nFROM t\nWHERE b > 1\nGROUP BY a, t.Pricex, pricex";
        let statement = Parser::new(&GenericDialect {})
            .try_with_sql(sql)
            .unwrap()
            .parse_statement()
            .unwrap();
        let at = first_use(&statement, "pricex").unwrap();
        assert_eq!((at.line, at.column), (4, 15));
        let at = first_use(&statement, "b").unwrap();
        assert_eq!((at.line, at.column), (3, 7));
        assert!(first_use(&statement, "c").is_none());
    }
}
