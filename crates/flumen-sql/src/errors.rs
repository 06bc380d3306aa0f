//! Error messages that point at the SQL: `file:line:column: message`.

use datafusion::common::DataFusionError;
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
        FlumenError::plan(format!(
            "{}:{}:{}: {msg}",
            self.file, self.line, self.column
        ))
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

    /// Re-anchors a connector error at this position.
    pub(crate) fn wrap(&self, e: FlumenError) -> FlumenError {
        match e {
            FlumenError::Config(m) | FlumenError::Plan(m) | FlumenError::Io(m) => self.error(m),
            other => other,
        }
    }
}

/// DataFusion's message without the wrapper prefixes a user does not need.
fn clean(e: &DataFusionError) -> String {
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
            return FlumenError::plan(format!("{file}:{line}:{column}: syntax error: {text}"));
        }
    }
    FlumenError::plan(format!("{file}: syntax error: {msg}"))
}
