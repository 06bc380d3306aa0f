//! Parses a SQL script into statements, and reads `CREATE TABLE` into a
//! table spec (columns and `WITH` options).

use datafusion::sql::sqlparser::ast::{
    CreateTable, CreateTableOptions, Expr, SqlOption, Statement, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use flumen_types::{FlumenError, Result};

use crate::errors::syntax_error;

/// Every statement of `sql`, or a syntax error naming `file`, line and column.
pub(crate) fn parse(file: &str, sql: &str) -> Result<Vec<Statement>> {
    Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| syntax_error(file, e))
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
