//! Parses a SQL script into statements, and reads `CREATE TABLE` into a
//! table spec (columns and `WITH` options).

use datafusion::sql::sqlparser::ast::{
    ColumnOption, CreateTable, CreateTableOptions, Expr, Spanned, SqlOption, Statement,
    TableConstraint, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Location, Token};
pub use flumen_types::duration_nanos;
use flumen_types::{FlumenError, Result};

use crate::errors::syntax_error;

/// Every statement of `sql` with where its errors point (its span's
/// start: for `CREATE TABLE`, the table's name), or a syntax error naming
/// `file`, line and column. A statement sqlparser keeps no span for (`SET`,
/// `DROP`, `EXPLAIN`) points at its first token, not at the file's start.
pub(crate) fn parse(file: &str, sql: &str) -> Result<Vec<(Statement, Location)>> {
    let syntax = |e| syntax_error(file, e);
    let mut parser = Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .map_err(syntax)?;
    let mut statements = Vec::new();
    // As sqlparser's `parse_statements`: statements end with a semicolon,
    // the last one's optional.
    let mut ended = true;
    loop {
        while parser.consume_token(&Token::SemiColon) {
            ended = true;
        }
        let next = parser.peek_token();
        if next.token == Token::EOF {
            break;
        }
        if !ended {
            return parser.expected("end of statement", next).map_err(syntax);
        }
        let statement = parser.parse_statement().map_err(syntax)?;
        let spanned = statement.span().start;
        let start = if spanned.line > 0 {
            spanned
        } else {
            next.span.start
        };
        statements.push((statement, start));
        ended = false;
    }
    Ok(statements)
}

/// The `WITH (key = value, …)` options of a `CREATE TABLE`, as strings.
pub(crate) fn table_options(ct: &CreateTable) -> Result<Vec<(String, String)>> {
    let opts = match &ct.table_options {
        CreateTableOptions::None => return Ok(Vec::new()),
        CreateTableOptions::With(o) | CreateTableOptions::Options(o) => o,
        other => {
            return Err(FlumenError::plan(format!(
                "table options must be given as WITH (key = 'value', …), not {other}"
            )));
        }
    };
    opts.iter()
        .map(|o| match o {
            SqlOption::KeyValue { key, value } => Ok((key.value.clone(), option_value(value)?)),
            other => Err(FlumenError::plan(format!(
                "table option {other} must be written key = 'value'"
            ))),
        })
        .collect()
}

/// The `PRIMARY KEY` columns of a table, as a table constraint
/// (`PRIMARY KEY (a, b) NOT ENFORCED`, as in Flink) or on one column, in
/// lower case as DataFusion names columns.
pub(crate) fn primary_key(ct: &CreateTable) -> Vec<String> {
    let name = |e: &Expr| match e {
        Expr::Identifier(i) => i.value.to_lowercase(),
        other => other.to_string().to_lowercase(),
    };
    for c in &ct.constraints {
        if let TableConstraint::PrimaryKey(pk) = c {
            return pk.columns.iter().map(|c| name(&c.column.expr)).collect();
        }
    }
    ct.columns
        .iter()
        .filter(|c| {
            c.options
                .iter()
                .any(|o| matches!(o.option, ColumnOption::PrimaryKey(_)))
        })
        .map(|c| c.name.value.to_lowercase())
        .collect()
}

/// Removes key constraints, which flumen reads itself ([`primary_key`]) and
/// DataFusion's table declaration need not see (it rejects `NOT ENFORCED`).
pub(crate) fn drop_constraints(ct: &mut CreateTable) {
    ct.constraints.retain(|c| {
        !matches!(
            c,
            TableConstraint::PrimaryKey(_) | TableConstraint::Unique(_)
        )
    });
    for c in &mut ct.columns {
        c.options.retain(|o| {
            !matches!(
                o.option,
                ColumnOption::PrimaryKey(_) | ColumnOption::Unique(_)
            )
        });
    }
}

fn option_value(e: &Expr) -> Result<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Ok(s.clone()),
            Value::Number(n, _) => Ok(n.to_string()),
            Value::Boolean(b) => Ok(b.to_string()),
            other => Err(FlumenError::plan(format!(
                "option value {other} must be a string"
            ))),
        },
        Expr::Identifier(i) => Ok(i.value.clone()),
        other => Err(FlumenError::plan(format!(
            "option value {other} must be a string"
        ))),
    }
}

/// A `WATERMARK FOR column AS expression` clause taken out of a
/// `CREATE TABLE` column list (sqlparser does not know it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WatermarkClause {
    /// 1-based line and column where the clause starts.
    pub line: u64,
    pub column: u64,
    /// The event-time column.
    pub column_name: String,
    /// The watermark expression, as SQL.
    pub expr: String,
}

/// Blanks out every `WATERMARK FOR … AS …` clause (and the comma before it)
/// so the rest parses as ordinary SQL with unchanged positions, and returns
/// the clauses.
pub(crate) fn strip_watermarks(sql: &str) -> Result<(String, Vec<WatermarkClause>)> {
    let bytes = sql.as_bytes();
    let mut out = bytes.to_vec();
    let mut clauses = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => i = skip_quoted(bytes, i),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            _ if starts_keyword(bytes, i, "watermark") => {
                let start = i;
                let end = clause_end(bytes, start);
                let text = &sql[start..end];
                let (line, column) = line_col(sql, start);
                let clause = parse_clause(text).ok_or_else(|| {
                    FlumenError::plan(format!(
                        "{line}:{column}: expected WATERMARK FOR <column> AS <expression>, found '{}'",
                        text.trim()
                    ))
                })?;
                clauses.push(WatermarkClause {
                    line,
                    column,
                    ..clause
                });
                blank(&mut out, start, end);
                if let Some(comma) = sql[..start].trim_end().len().checked_sub(1)
                    && bytes[comma] == b','
                {
                    out[comma] = b' ';
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    let stripped = String::from_utf8(out).expect("only ASCII bytes were replaced by spaces");
    Ok((stripped, clauses))
}

/// A `FOR SYSTEM_TIME AS OF expression` clause taken out of a join
/// (Flink's lookup join; the dialect flumen parses with does not take it):
/// the table before it is read by key when each row arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SystemTimeClause {
    /// 1-based line and column where the clause starts.
    pub line: u64,
    pub column: u64,
    /// The table it follows, in lower case as DataFusion names tables.
    pub table: String,
}

/// Blanks out every `FOR SYSTEM_TIME AS OF <column or call>` so the rest
/// parses as ordinary SQL with unchanged positions, and returns the clauses.
pub(crate) fn strip_system_time(sql: &str) -> Result<(String, Vec<SystemTimeClause>)> {
    let bytes = sql.as_bytes();
    let mut out = bytes.to_vec();
    let mut clauses = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if let Some(next) = past_text_or_comment(bytes, i) {
            i = next;
            continue;
        }
        match bytes[i] {
            _ if starts_keyword(bytes, i, "for") => {
                let Some(expr_start) = after_words(bytes, i, &["for", "system_time", "as", "of"])
                else {
                    i += 3;
                    continue;
                };
                let (line, column) = line_col(sql, i);
                let end = time_expr_end(bytes, expr_start);
                let keyword = [
                    "on", "as", "where", "join", "left", "inner", "using", "group",
                ]
                .iter()
                .any(|k| sql[expr_start..end].eq_ignore_ascii_case(k));
                if end == expr_start || keyword {
                    return Err(FlumenError::plan(format!(
                        "{line}:{column}: expected a column after FOR SYSTEM_TIME AS OF (the stream's time, e.g. o.proc_time)"
                    )));
                }
                let table = sql[..i]
                    .trim_end()
                    .rsplit(|c: char| c.is_whitespace() || c == ',' || c == '(')
                    .next()
                    .unwrap_or_default()
                    .replace('"', "")
                    .to_lowercase();
                clauses.push(SystemTimeClause {
                    line,
                    column,
                    table,
                });
                blank(&mut out, i, end);
                i = end;
            }
            _ => i += 1,
        }
    }
    let stripped = String::from_utf8(out).expect("only ASCII bytes were replaced by spaces");
    Ok((stripped, clauses))
}

/// Where the first hint comment (`/*+ … */`, Flink's `OPTIONS(…)` for one
/// query's table) starts, if there is one: sqlparser takes it for a
/// comment, so its options would be dropped without a word.
pub(crate) fn first_hint(sql: &str) -> Option<(u64, u64)> {
    let bytes = sql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if let Some(next) = past_text_or_comment(bytes, i) {
            i = next;
            continue;
        }
        if bytes[i..].starts_with(b"/*+") {
            return Some(line_col(sql, i));
        }
        i += 1;
    }
    None
}

/// Flink's statement sets, `EXECUTE STATEMENT SET BEGIN INSERT …; INSERT
/// …; END;` and the SQL client's `BEGIN STATEMENT SET; … END;`, group
/// INSERTs into one job, as every INSERT of a flumen script already is:
/// their keywords are blanked, keeping positions. The `END` is the first
/// that starts a statement after the `BEGIN`.
pub(crate) fn strip_statement_sets(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    let mut open = false;
    // Whether `i` is where a statement may start: only spaces and comments
    // since the last semicolon.
    let mut statement_start = true;
    while i < bytes.len() {
        if let Some(next) = past_text_or_comment(bytes, i) {
            statement_start &= bytes[i] == b'-';
            i = next;
            continue;
        }
        let begin = ["execute", "begin"]
            .into_iter()
            .filter(|_| statement_start && !open)
            .find_map(|first| match first {
                "execute" => after_words(bytes, i, &["execute", "statement", "set", "begin"]),
                _ => after_words(bytes, i, &["begin", "statement", "set"]),
            });
        if let Some(end) = begin {
            blank(&mut out, i, end);
            open = true;
            i = end;
            continue;
        }
        if open && statement_start && starts_keyword(bytes, i, "end") {
            blank(&mut out, i, i + 3);
            open = false;
            i += 3;
            continue;
        }
        match bytes[i] {
            b';' => statement_start = true,
            b if b.is_ascii_whitespace() => {}
            _ => statement_start = false,
        }
        i += 1;
    }
    String::from_utf8(out).expect("only ASCII bytes were replaced")
}

/// Flink's `TIMESTAMP_LTZ(p)`, an instant shown in the session's time
/// zone, becomes `TIMESTAMP    (p)` (its `_LTZ` blanked, keeping positions):
/// flumen's time zone is UTC, where the two read and compute alike.
pub(crate) fn timestamp_ltz_as_timestamp(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i < bytes.len() {
        if let Some(next) = past_text_or_comment(bytes, i) {
            i = next;
            continue;
        }
        if starts_keyword(bytes, i, "timestamp_ltz") {
            blank(&mut out, i + 9, i + 13);
            i += 13;
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).expect("only ASCII bytes were replaced")
}

/// The window table functions whose table argument Flink writes `TABLE t`.
const WINDOW_FUNCTIONS: [&str; 4] = ["tumble", "hop", "cumulate", "session"];

/// Flink writes a window table function's table as `TABLE bid` (in
/// `TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))`,
/// also after `DATA =>`), which sqlparser does not take as an argument.
/// Blanks that `TABLE` keyword, keeping positions, and rewrites a session's
/// `TABLE bid PARTITION BY k1, k2` as `bid ,descriptor(k1, k2)` (the keys
/// move one column left), the argument order `tvf` reads. Public for
/// callers that parse flumen's SQL with sqlparser themselves (a batch
/// oracle).
pub fn strip_table_arguments(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i < bytes.len() {
        if let Some(next) = past_text_or_comment(bytes, i) {
            i = next;
            continue;
        }
        match WINDOW_FUNCTIONS
            .iter()
            .find(|w| starts_keyword(bytes, i, w))
        {
            Some(function) => {
                i += function.len();
                let open = skip_space(bytes, i);
                if bytes.get(open) != Some(&b'(') {
                    continue;
                }
                let args = arguments(bytes, open);
                for (k, &(arg, _)) in args.iter().enumerate() {
                    let mut table = skip_space(bytes, arg);
                    if starts_keyword(bytes, table, "data") {
                        let arrow = skip_space(bytes, table + 4);
                        if bytes[arrow..].starts_with(b"=>") {
                            table = skip_space(bytes, arrow + 2);
                        }
                    }
                    let name = skip_space(bytes, table + 5);
                    if !starts_keyword(bytes, table, "table") || name == table + 5 {
                        continue;
                    }
                    blank(&mut out, table, table + 5);
                    if *function == "session" {
                        // The keys run to the argument that names the
                        // time column.
                        let keys_end = args[k + 1..]
                            .iter()
                            .map(|&(start, _)| start)
                            .find(|&start| {
                                let next = skip_space(bytes, start);
                                starts_keyword(bytes, next, "descriptor")
                                    || starts_keyword(bytes, next, "timecol")
                            })
                            .map_or(args[args.len() - 1].1, |start| start - 1);
                        let after = skip_space(bytes, name_end(bytes, name));
                        partition_as_descriptor(bytes, &mut out, after, keys_end);
                    }
                }
                i = open + 1;
            }
            None => i += 1,
        }
    }
    String::from_utf8(out).expect("only ASCII bytes were replaced, and the keys moved whole")
}

/// Rewrites `PARTITION BY keys` at `at`, if it is there, as
/// `,descriptor(keys)` padded with spaces to its length, which is never
/// shorter: `PARTITION BY ` takes 13 bytes at least, as `,descriptor(` and
/// `)` do. The keys end at `end` (trailing whitespace left out).
fn partition_as_descriptor(bytes: &[u8], out: &mut [u8], at: usize, mut end: usize) {
    let Some(keys) = after_words(bytes, at, &["partition", "by"]) else {
        return;
    };
    while end > keys && bytes[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    let mut rewritten = b",descriptor(".to_vec();
    rewritten.extend_from_slice(&bytes[keys..end]);
    rewritten.push(b')');
    debug_assert!(rewritten.len() <= end - at);
    // Line breaks between PARTITION, BY and the keys go in the padding, so
    // the lines after keep their numbers (all but when every gap is a
    // single line break, which leaves no room).
    let breaks = bytes[at..keys].iter().filter(|&&b| b == b'\n').count();
    let room = end - at - rewritten.len();
    rewritten.resize(end - at - breaks.min(room), b' ');
    rewritten.resize(end - at, b'\n');
    out[at..end].copy_from_slice(&rewritten);
}

/// The arguments of the call whose `(` is at `open`, as (start, end)
/// ranges: split at commas outside nested parentheses and quotes, the last
/// ending at the call's `)`.
fn arguments(bytes: &[u8], open: usize) -> Vec<(usize, usize)> {
    let mut args = Vec::new();
    let mut start = open + 1;
    let mut depth = 0usize;
    let mut i = open + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                i = skip_quoted_by(bytes, i, bytes[i]);
                continue;
            }
            b'(' => depth += 1,
            b')' if depth == 0 => break,
            b')' => depth -= 1,
            b',' if depth == 0 => {
                args.push((start, i));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    args.push((start, i.min(bytes.len())));
    args
}

/// The first byte at or after `i` that is not whitespace.
fn skip_space(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// The end of the (possibly qualified, possibly quoted) name at `i`.
fn name_end(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'`' => i = skip_quoted_by(bytes, i, bytes[i]),
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' => i += 1,
            _ => break,
        }
    }
    i
}

/// Where the text after `words` (separated by whitespace) starts, if
/// `bytes` holds them from `i`.
fn after_words(bytes: &[u8], mut i: usize, words: &[&str]) -> Option<usize> {
    for word in words {
        while bytes.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        if !starts_keyword(bytes, i, word) {
            return None;
        }
        i += word.len();
    }
    while bytes.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    Some(i)
}

/// The end of a time attribute: a dotted name, possibly quoted, possibly a
/// call with its parenthesised arguments (`o.proc_time`, `PROCTIME()`).
fn time_expr_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start;
    loop {
        match bytes.get(i) {
            Some(b'"') => i = skip_quoted_by(bytes, i, b'"'),
            Some(b) if b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.' => i += 1,
            Some(b'(') if i > start => {
                let mut depth = 0usize;
                while let Some(b) = bytes.get(i) {
                    i += 1;
                    match b {
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                return i;
            }
            _ => return i,
        }
    }
}

/// A computed column of a `CREATE TABLE` (Flink's `name AS expression`):
/// not read from the connector but computed from the row's other columns
/// as the row is read, e.g. `ts AS to_timestamp_ltz(epoch_ms, 3)` or
/// `proc_time AS PROCTIME()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ComputedClause {
    /// 1-based line and column where the column's name starts.
    pub line: u64,
    pub column: u64,
    /// The column's name, as SQL resolves it.
    pub name: String,
    /// The expression, as SQL.
    pub expr: String,
    /// How many of the list's other columns come before it.
    pub after: usize,
}

/// Blanks out every computed column (`name AS expression`, and a comma
/// beside it) of the column lists of `CREATE TABLE` statements, keeping
/// positions, and returns them.
pub(crate) fn strip_computed(sql: &str) -> Result<(String, Vec<ComputedClause>)> {
    let bytes = sql.as_bytes();
    let mut out = bytes.to_vec();
    let mut clauses = Vec::new();
    for (open, _) in column_lists(bytes) {
        let definitions = arguments(bytes, open);
        let mut columns = 0;
        for (k, &(start, end)) in definitions.iter().enumerate() {
            let name = skip_space(bytes, start);
            if name >= end || is_constraint(bytes, name) {
                continue;
            }
            let name_end = name_end(bytes, name);
            let keyword = skip_space(bytes, name_end);
            if !starts_keyword(bytes, keyword, "as") || keyword == name_end {
                columns += 1;
                continue;
            }
            let (line, column) = line_col(sql, name);
            let expr = sql[keyword + 2..end].trim();
            if expr.is_empty() {
                return Err(FlumenError::plan(format!(
                    "{line}:{column}: expected an expression after AS in computed column '{}'",
                    &sql[name..name_end]
                )));
            }
            clauses.push(ComputedClause {
                line,
                column,
                name: identifier(&sql[name..name_end]),
                expr: expr.to_string(),
                after: columns,
            });
            // Its comma goes too: the one before it, or for the list's
            // first definition the one after.
            let comma = if k > 0 { start - 1 } else { end };
            blank(&mut out, start, end.min(bytes.len()));
            if comma < bytes.len() && bytes[comma] == b',' {
                out[comma] = b' ';
            }
        }
    }
    let stripped = String::from_utf8(out).expect("only ASCII bytes were replaced by spaces");
    Ok((stripped, clauses))
}

/// Whether the definition at `at` of a column list is a table constraint
/// (`PRIMARY KEY (…)`, `CONSTRAINT name …`, `UNIQUE (…)`, `FOREIGN KEY
/// (…)`, `CHECK (…)`), not a column: by the words constraints start with,
/// so that a column called `key` or `unique_id` still counts as a column.
fn is_constraint(bytes: &[u8], at: usize) -> bool {
    let opens = |word: &str| {
        starts_keyword(bytes, at, word)
            && bytes.get(skip_space(bytes, at + word.len())) == Some(&b'(')
    };
    after_words(bytes, at, &["primary", "key"]).is_some()
        || after_words(bytes, at, &["foreign", "key"]).is_some()
        || starts_keyword(bytes, at, "constraint")
        || opens("unique")
        || opens("check")
}

/// A name as SQL resolves it: a quoted one as written, others in lower case.
fn identifier(text: &str) -> String {
    for quote in ['"', '`'] {
        if let Some(quoted) = text.strip_prefix(quote).and_then(|t| t.strip_suffix(quote)) {
            return quoted.replace(&format!("{quote}{quote}"), &quote.to_string());
        }
    }
    text.to_lowercase()
}

/// A `METADATA [FROM 'key'] [VIRTUAL]` column clause taken out of a
/// `CREATE TABLE` column list (Flink's syntax; sqlparser does not know it):
/// the column is filled from the message's metadata (a Kafka record's
/// offset, partition, …) instead of from its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetadataClause {
    /// 1-based line and column where the clause starts.
    pub line: u64,
    pub column: u64,
    /// The column it belongs to, in lower case.
    pub column_name: String,
    /// The metadata key: the `FROM` string, else the column's name.
    pub key: String,
}

/// Blanks out every `METADATA [FROM 'key'] [VIRTUAL]` clause of the column
/// lists of `CREATE TABLE` statements, keeping positions, and returns them.
pub(crate) fn strip_metadata(sql: &str) -> Result<(String, Vec<MetadataClause>)> {
    let bytes = sql.as_bytes();
    let mut out = bytes.to_vec();
    let mut clauses = Vec::new();
    for (open, close) in column_lists(bytes) {
        let mut depth = 0usize;
        let mut def_start = open + 1;
        let mut i = open + 1;
        while i < close {
            match bytes[i] {
                b'\'' | b'"' => {
                    i = skip_quoted_by(bytes, i, bytes[i]);
                    continue;
                }
                b'-' if bytes.get(i + 1) == Some(&b'-') => {
                    while i < close && bytes[i] != b'\n' {
                        i += 1;
                    }
                    continue;
                }
                b'(' => depth += 1,
                b')' => depth = depth.saturating_sub(1),
                b',' if depth == 0 => def_start = i + 1,
                _ if depth == 0
                    && starts_keyword(bytes, i, "metadata")
                    && !sql[def_start..i].trim().is_empty() =>
                {
                    let (line, column) = line_col(sql, i);
                    let end = clause_end(bytes, i).min(close);
                    let text = &sql[i..end];
                    let column_name = sql[def_start..i]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .trim_matches('"')
                        .to_lowercase();
                    let key = parse_metadata(text, &column_name).ok_or_else(|| {
                        FlumenError::plan(format!(
                            "{line}:{column}: expected METADATA [FROM 'key'] [VIRTUAL], found '{}'",
                            text.trim()
                        ))
                    })?;
                    clauses.push(MetadataClause {
                        line,
                        column,
                        column_name,
                        key,
                    });
                    blank(&mut out, i, end);
                    i = end;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
    let stripped = String::from_utf8(out).expect("only ASCII bytes were replaced by spaces");
    Ok((stripped, clauses))
}

/// `METADATA [FROM 'key'] [VIRTUAL]` → the key (`default` without FROM).
fn parse_metadata(text: &str, default: &str) -> Option<String> {
    let rest = text.trim();
    let rest = rest
        .get(..8)?
        .eq_ignore_ascii_case("metadata")
        .then(|| rest[8..].trim())?;
    let (key, rest) = match rest.get(..4) {
        Some(from) if from.eq_ignore_ascii_case("from") => {
            let quoted = rest[4..].trim_start();
            let body = quoted.strip_prefix('\'')?;
            let close = body.find('\'')?;
            (body[..close].to_string(), body[close + 1..].trim())
        }
        _ => (default.to_string(), rest),
    };
    (rest.is_empty() || rest.eq_ignore_ascii_case("virtual")).then_some(key)
}

/// The byte ranges `(open, close)` of the parentheses around each
/// `CREATE TABLE name (…)` column list.
fn column_lists(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut lists = Vec::new();
    let mut i = 0;
    let mut after_create = false;
    let mut in_table = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                i = skip_quoted_by(bytes, i, bytes[i]);
                continue;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b';' => (after_create, in_table) = (false, false),
            b'(' if in_table => {
                let mut depth = 0usize;
                let mut j = i;
                while j < bytes.len() {
                    match bytes[j] {
                        b'\'' | b'"' => {
                            j = skip_quoted_by(bytes, j, bytes[j]);
                            continue;
                        }
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                lists.push((i, j.min(bytes.len())));
                (after_create, in_table) = (false, false);
                i = j;
                continue;
            }
            _ if starts_keyword(bytes, i, "create") => after_create = true,
            _ if after_create && starts_keyword(bytes, i, "table") => in_table = true,
            _ => {}
        }
        i += 1;
    }
    lists
}

/// Past the quoted text or `--` comment that starts at `i`, if one does.
fn past_text_or_comment(bytes: &[u8], i: usize) -> Option<usize> {
    match bytes[i] {
        b'\'' | b'"' => Some(skip_quoted_by(bytes, i, bytes[i])),
        b'-' if bytes.get(i + 1) == Some(&b'-') => Some(
            bytes[i..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |n| i + n),
        ),
        _ => None,
    }
}

fn skip_quoted_by(bytes: &[u8], open: usize, quote: u8) -> usize {
    let mut i = open + 1;
    while i < bytes.len() {
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    i
}

fn skip_quoted(bytes: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            if bytes.get(i + 1) == Some(&b'\'') {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    i
}

fn starts_keyword(bytes: &[u8], i: usize, word: &str) -> bool {
    let end = i + word.len();
    let boundary = |b: Option<&u8>| b.is_none_or(|b| !(b.is_ascii_alphanumeric() || *b == b'_'));
    end <= bytes.len()
        && bytes[i..end].eq_ignore_ascii_case(word.as_bytes())
        && (i == 0 || boundary(bytes.get(i - 1)))
        && boundary(bytes.get(end))
}

/// The end of a clause: the first `,` or `)` outside parentheses and quotes.
fn clause_end(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => {
                i = skip_quoted(bytes, i);
                continue;
            }
            b'(' => depth += 1,
            b')' if depth == 0 => return i,
            b')' => depth -= 1,
            b',' if depth == 0 => return i,
            _ => {}
        }
        i += 1;
    }
    i
}

fn line_col(sql: &str, offset: usize) -> (u64, u64) {
    let before = &sql[..offset];
    let line = before.matches('\n').count() as u64 + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1;
    (line, column)
}

fn blank(out: &mut [u8], start: usize, end: usize) {
    for b in &mut out[start..end] {
        if *b != b'\n' {
            *b = b' ';
        }
    }
}

/// `WATERMARK FOR col AS expr` → (col, expr).
fn parse_clause(text: &str) -> Option<WatermarkClause> {
    let mut words = text.split_whitespace();
    let (w, f, column, as_) = (words.next()?, words.next()?, words.next()?, words.next()?);
    if !w.eq_ignore_ascii_case("watermark")
        || !f.eq_ignore_ascii_case("for")
        || !as_.eq_ignore_ascii_case("as")
    {
        return None;
    }
    // The expression is what follows the fourth word (WATERMARK FOR col AS),
    // whatever whitespace separates the words.
    let mut rest = text;
    for _ in 0..4 {
        rest = rest.trim_start();
        rest = &rest[rest.find(char::is_whitespace)?..];
    }
    let expr = rest.trim();
    (!expr.is_empty()).then(|| WatermarkClause {
        line: 0,
        column: 0,
        column_name: column.trim_matches('"').to_lowercase(),
        expr: expr.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_found_outside_text_and_line_comments() {
        assert_eq!(
            first_hint(
                "SELECT '/*+ x */' -- /*+ y */\nFROM t /* plain */ JOIN u\n  /*+ OPTIONS('a' = 'b') */"
            ),
            Some((3, 3))
        );
        assert_eq!(first_hint("SELECT 1 /* plain */"), None);
    }

    #[test]
    fn statement_sets_leave_their_inserts() {
        let sql = "-- job\nEXECUTE STATEMENT SET\nBEGIN\n  INSERT INTO a SELECT CASE WHEN x THEN 1 END FROM t;\n  INSERT INTO b SELECT 'END' FROM t;\nEND;\nSELECT 1;";
        assert_eq!(
            strip_statement_sets(sql),
            "-- job\n                     \n     \n  INSERT INTO a SELECT CASE WHEN x THEN 1 END FROM t;\n  INSERT INTO b SELECT 'END' FROM t;\n   ;\nSELECT 1;"
        );
        let sql = "begin statement set;\nINSERT INTO a SELECT 1;\nend;";
        assert_eq!(
            strip_statement_sets(sql),
            "                   ;\nINSERT INTO a SELECT 1;\n   ;"
        );
        let plain = "SELECT a AS begin_x FROM t; SELECT end FROM t";
        assert_eq!(strip_statement_sets(plain), plain);
    }

    #[test]
    fn timestamp_ltz_is_read_as_timestamp_in_types_only() {
        assert_eq!(
            timestamp_ltz_as_timestamp(
                "CREATE TABLE t (ts TIMESTAMP_LTZ(3), u timestamp_ltz, v to_timestamp_ltz(x, 3), w 'TIMESTAMP_LTZ') -- TIMESTAMP_LTZ"
            ),
            "CREATE TABLE t (ts TIMESTAMP    (3), u timestamp    , v to_timestamp_ltz(x, 3), w 'TIMESTAMP_LTZ') -- TIMESTAMP_LTZ"
        );
    }

    /// Computed columns are taken out with a comma beside them, counted
    /// among the list's other columns; constraints are not columns, and
    /// an `AS` inside a string is not a computed column.
    #[test]
    fn computed_columns_are_taken_out_keeping_positions() {
        let sql = "CREATE TABLE t (\n  ts AS to_timestamp_ltz(ms, 3),\n  ms BIGINT,\n  \"P\" AS proctime(),\n  d VARCHAR DEFAULT 'a AS b',\n  PRIMARY KEY (ms) NOT ENFORCED\n) WITH (k = 'x AS y');\nSELECT a AS b FROM t";
        let (stripped, clauses) = strip_computed(sql).unwrap();
        assert_eq!(
            stripped,
            "CREATE TABLE t (\n                                \n  ms BIGINT \n                   ,\n  d VARCHAR DEFAULT 'a AS b',\n  PRIMARY KEY (ms) NOT ENFORCED\n) WITH (k = 'x AS y');\nSELECT a AS b FROM t"
        );
        assert_eq!(stripped.len(), sql.len());
        assert_eq!(
            clauses,
            vec![
                ComputedClause {
                    line: 2,
                    column: 3,
                    name: "ts".into(),
                    expr: "to_timestamp_ltz(ms, 3)".into(),
                    after: 0,
                },
                ComputedClause {
                    line: 4,
                    column: 3,
                    name: "P".into(),
                    expr: "proctime()".into(),
                    after: 1,
                },
            ]
        );
        // A column called `key` is a column, not a constraint.
        let (_, clauses) =
            strip_computed("CREATE TABLE t (key VARCHAR, unique_id BIGINT, k AS upper(key), CONSTRAINT c UNIQUE (key))")
                .unwrap();
        assert_eq!(clauses[0].after, 2);
        // Backticks quote as double quotes do (Flink writes them).
        let (_, clauses) =
            strip_computed("CREATE TABLE t (a BIGINT, `Proc` AS PROCTIME())").unwrap();
        assert_eq!(clauses[0].name, "Proc");
        let err = strip_computed("CREATE TABLE t (a BIGINT, b AS )").unwrap_err();
        assert!(
            err.to_string()
                .contains("1:27: expected an expression after AS in computed column 'b'"),
            "{err}"
        );
    }

    /// The `TABLE` of a window function's table argument is blanked and a
    /// session's `PARTITION BY` becomes a descriptor; everything else keeps
    /// its place, and `TABLE` elsewhere (a quoted one, one after another
    /// function) is left alone.
    #[test]
    fn flinks_table_arguments_are_blanked_in_place() {
        let sql = "SELECT 'TUMBLE(TABLE x' FROM TABLE(\n  TUMBLE( TABLE bid, DESCRIPTOR(t), INTERVAL '1' SECOND))\nJOIN TABLE(f(TABLE y))";
        let out = strip_table_arguments(sql);
        assert_eq!(
            out,
            "SELECT 'TUMBLE(TABLE x' FROM TABLE(\n  TUMBLE(       bid, DESCRIPTOR(t), INTERVAL '1' SECOND))\nJOIN TABLE(f(TABLE y))"
        );
        let sql = "TABLE(SESSION(DATA =>\tTABLE bid  PARTITION  BY a, b , TIMECOL => DESCRIPTOR(t), GAP => x))";
        assert_eq!(
            strip_table_arguments(sql),
            "TABLE(SESSION(DATA =>\t      bid  ,descriptor(a, b)  , TIMECOL => DESCRIPTOR(t), GAP => x))"
        );
        assert_eq!(strip_table_arguments(sql).len(), sql.len());
        let sql = "session(TABLE bid PARTITION BY\n  k, DESCRIPTOR(t), g)";
        assert_eq!(
            strip_table_arguments(sql),
            "session(      bid ,descriptor(k) \n, DESCRIPTOR(t), g)"
        );
        let sql = "session(TABLE bid PARTITION BY k, DESCRIPTOR(t), g)";
        assert_eq!(
            strip_table_arguments(sql),
            "session(      bid ,descriptor(k), DESCRIPTOR(t), g)"
        );
    }

    #[test]
    fn system_time_clauses_are_taken_out_of_joins() {
        let sql = "SELECT * FROM bids AS b\nJOIN Customers FOR SYSTEM_TIME AS OF b.proc_time AS c ON b.bidder = c.id\nLEFT JOIN \"S\".rates for  system_time as\n of PROCTIME() r ON true\n-- FOR SYSTEM_TIME AS OF x\nWHERE b.note <> 'FOR SYSTEM_TIME AS OF y'";
        let (stripped, clauses) = strip_system_time(sql).unwrap();
        assert_eq!(stripped.len(), sql.len());
        let got: Vec<(&str, u64, u64)> = clauses
            .iter()
            .map(|c| (c.table.as_str(), c.line, c.column))
            .collect();
        assert_eq!(got, [("customers", 2, 16), ("s.rates", 3, 21)]);
        assert!(stripped.contains("JOIN Customers"));
        assert!(stripped.contains(" AS c ON b.bidder"));
        assert!(stripped.contains(" r ON true"));
        assert!(!stripped.contains("proc_time") && !stripped.contains("PROCTIME"));
        assert!(stripped.contains("'FOR SYSTEM_TIME AS OF y'") && stripped.contains("-- FOR"));
        let err =
            strip_system_time("SELECT * FROM a JOIN t FOR SYSTEM_TIME AS OF ON x").unwrap_err();
        assert!(err.to_string().contains("1:24: expected a column"), "{err}");
        let (same, none) = strip_system_time("SELECT 1 FOR x").unwrap();
        assert_eq!((same.as_str(), none.len()), ("SELECT 1 FOR x", 0));
    }

    #[test]
    fn metadata_clauses_are_taken_out_of_column_lists_only() {
        let sql = "CREATE TABLE t (\n  a BIGINT,\n  off BIGINT METADATA FROM 'offset' VIRTUAL,\n  \"partition\" INT METADATA,\n  metadata VARCHAR,\n  d DECIMAL(10, 2) METADATA FROM 'x'\n) WITH (k = 'metadata');\nSELECT metadata FROM t;";
        let (stripped, clauses) = strip_metadata(sql).unwrap();
        assert_eq!(stripped.len(), sql.len());
        let got: Vec<(String, String)> = clauses
            .iter()
            .map(|c| (c.column_name.clone(), c.key.clone()))
            .collect();
        assert_eq!(
            got,
            [("off", "offset"), ("partition", "partition"), ("d", "x")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert_eq!((clauses[0].line, clauses[0].column), (3, 14));
        assert!(stripped.contains("metadata VARCHAR") && stripped.contains("SELECT metadata"));
        assert!(!stripped.contains("VIRTUAL") && !stripped.contains("'offset'"));
        let err = strip_metadata("CREATE TABLE t (a INT METADATA FROM offset)").unwrap_err();
        assert!(err.to_string().contains("1:23: expected METADATA"), "{err}");
    }

    #[test]
    fn watermark_clause_is_taken_out_keeping_positions() {
        let sql = "CREATE TABLE t (\n  a BIGINT,\n  ts TIMESTAMP(3),\n  WATERMARK FOR ts\n\tAS ts - INTERVAL '5' SECOND\n) WITH (x = 'watermark for');";
        let (stripped, clauses) = strip_watermarks(sql).unwrap();
        assert_eq!(stripped.len(), sql.len());
        assert!(!stripped.to_lowercase().contains("watermark for ts"));
        assert!(
            stripped.contains("'watermark for'"),
            "string literals are left alone"
        );
        assert!(
            stripped.contains("ts TIMESTAMP(3) \n"),
            "the comma before the clause goes: {stripped}"
        );
        assert_eq!(
            clauses,
            vec![WatermarkClause {
                line: 4,
                column: 3,
                column_name: "ts".into(),
                expr: "ts - INTERVAL '5' SECOND".into(),
            }]
        );
        assert!(parse("f", &stripped).is_ok());
    }

    #[test]
    fn malformed_clause_is_an_error_with_its_position() {
        let err = strip_watermarks("CREATE TABLE t (ts TIMESTAMP, WATERMARK ts)").unwrap_err();
        assert!(err.to_string().starts_with("1:31:"), "{err}");
    }
}
