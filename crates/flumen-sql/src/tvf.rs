//! Window table functions, in flumen's short spelling:
//!
//! - `tumble(bid, descriptor(date_time), INTERVAL '10' SECOND)`
//! - `hop(bid, descriptor(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND)` (slide, size)
//! - `cumulate(bid, descriptor(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND)` (step, size)
//! - `session(bid, descriptor(date_time), INTERVAL '10' SECOND, descriptor(bidder))` (gap, keys)
//!
//! and in Flink's, `TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), …))`,
//! positional or with named arguments (`DATA =>`, `TIMECOL =>`, `SIZE =>`,
//! …), a session's keys as `TABLE bid PARTITION BY bidder`: the planner
//! first blanks the `TABLE` keyword DataFusion's parser does not take
//! there (`script::strip_table_arguments`).
//!
//! Each is expanded, in the parsed statement, into a subquery over the table
//! that adds `window_start` and `window_end`: `date_bin` for tumble, UNNEST
//! of the `hop` or `cumulate` list functions, and for sessions window
//! functions over the rows of each key (a new session where a row comes
//! `gap` or more after the one before). The batch engine runs that subquery
//! as it is; the streaming planner recognises the windows in it.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    self, FunctionArg, FunctionArgExpr, FunctionArguments, Statement, TableFactor, VisitMut,
    VisitorMut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::sql_ast::{positional, resolved_name};

/// The alias the planner gives a session subquery; the streaming planner
/// reads the session's table, time column and gap back from it.
pub(crate) const SESSION_ALIAS_PREFIX: &str = "__flumen_session";

/// What a session subquery alias says: `__flumen_session:<gap ns>:<time column>`.
pub(crate) fn session_alias(gap_ns: i64, time: &str) -> String {
    format!("{SESSION_ALIAS_PREFIX}:{gap_ns}:{time}")
}

/// The gap and time column of a session subquery alias.
pub(crate) fn parse_session_alias(alias: &str) -> Option<(i64, String)> {
    let rest = alias
        .strip_prefix(SESSION_ALIAS_PREFIX)?
        .strip_prefix(':')?;
    let (gap, time) = rest.split_once(':')?;
    Some((gap.parse().ok()?, time.to_string()))
}

fn usage(function: &str) -> &'static str {
    match function {
        "tumble" => "tumble(<table>, descriptor(<time column>), INTERVAL '<size>')",
        "hop" => "hop(<table>, descriptor(<time column>), INTERVAL '<slide>', INTERVAL '<size>')",
        "cumulate" => {
            "cumulate(<table>, descriptor(<time column>), INTERVAL '<step>', INTERVAL '<size>')"
        }
        _ => {
            "session(<table>, descriptor(<time column>), INTERVAL '<gap>'[, descriptor(<key>, …)])"
        }
    }
}

/// Column names given as `descriptor(a, b)` or as a bare identifier.
fn descriptor(e: &ast::Expr) -> Option<Vec<String>> {
    match e {
        ast::Expr::Identifier(i) => Some(vec![resolved_name(i)]),
        ast::Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("descriptor") => {
            let FunctionArguments::List(list) = &f.args else {
                return None;
            };
            positional(&list.args)?
                .into_iter()
                .map(|a| match a {
                    ast::Expr::Identifier(i) => Some(resolved_name(i)),
                    _ => None,
                })
                .collect()
        }
        _ => None,
    }
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The length in nanoseconds of an interval written `INTERVAL 'n' UNIT` or
/// `INTERVAL 'n unit'`.
fn interval_nanos(e: &ast::Expr) -> Option<i64> {
    let text = e.to_string();
    let rest = text.strip_prefix("INTERVAL '")?;
    let (quoted, unit) = rest.split_once('\'')?;
    let text = format!("{quoted} {}", unit.trim()).to_lowercase();
    crate::script::duration_nanos(text.trim())
}

/// What the planner knows of a table a window function names: `None` for
/// a name that is not a source table (a view, a CTE), else its event-time
/// column if it has one.
pub(crate) type EventTimeOf<'a> = &'a dyn Fn(&str) -> Option<Option<String>>;

/// The length of interval argument `e` (the function's `what`), which must
/// be a positive constant.
fn positive_interval(function: &str, what: &str, e: &ast::Expr) -> Result<i64, String> {
    match interval_nanos(e) {
        Some(ns) if ns > 0 => Ok(ns),
        _ => Err(format!(
            "{function}'s {what} must be a positive constant INTERVAL of days, hours, minutes or seconds such as INTERVAL '10' SECOND, not {e}"
        )),
    }
}

/// The arguments of a window function call in the order [`expansion`]
/// reads them: table, time column, size (slide, step or gap), then hop's
/// and cumulate's size or a session's keys. They come positional in that
/// order, by Flink's names (`DATA => bid, TIMECOL => DESCRIPTOR(t),
/// SIZE => …`), or, for a session, with its keys right after its table
/// (`session(bid, descriptor(k), descriptor(t), gap)`, as
/// `script::strip_table_arguments` writes Flink's `TABLE bid PARTITION BY
/// k`).
fn window_args<'a>(function: &str, args: &'a [FunctionArg]) -> Result<Vec<&'a ast::Expr>, String> {
    let names: &[&str] = match function {
        "tumble" => &["data", "timecol", "size"],
        "hop" => &["data", "timecol", "slide", "size"],
        "cumulate" => &["data", "timecol", "step", "size"],
        _ => &["data", "timecol", "gap"],
    };
    let bad = || format!("{function} takes {}", usage(function));
    let mut named: Vec<Option<&ast::Expr>> = vec![None; names.len()];
    let mut unnamed = Vec::new();
    for arg in args {
        match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => unnamed.push(e),
            FunctionArg::Named {
                name,
                arg: FunctionArgExpr::Expr(e),
                ..
            } => {
                let name = name.value.to_lowercase();
                if name == "offset" {
                    return Err(format!(
                        "{function}'s OFFSET is not supported: its windows are aligned to the epoch"
                    ));
                }
                let Some(slot) = names.iter().position(|n| *n == name) else {
                    return Err(format!(
                        "{function} has no argument '{name}'; its arguments are {}",
                        names.join(", ").to_uppercase()
                    ));
                };
                if named[slot].replace(e).is_some() {
                    return Err(format!(
                        "{function}'s {} is given twice",
                        name.to_uppercase()
                    ));
                }
            }
            _ => return Err(bad()),
        }
    }
    let is_descriptor =
        |e: &ast::Expr| matches!(e, ast::Expr::Function(_)) && descriptor(e).is_some();
    if named.iter().any(Option::is_some) {
        let mut exprs = named
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        match unnamed[..] {
            [] => {}
            [keys] if function == "session" && is_descriptor(keys) => exprs.push(keys),
            _ => return Err(bad()),
        }
        return Ok(exprs);
    }
    match unnamed[..] {
        [table, keys, time, gap]
            if function == "session" && is_descriptor(keys) && is_descriptor(time) =>
        {
            Ok(vec![table, time, gap, keys])
        }
        _ if unnamed.len() == if function == "tumble" { 3 } else { 4 } => Ok(unnamed),
        // A session without keys: one session stream for all rows.
        [_, _, _] if function == "session" => Ok(unnamed),
        _ => Err(bad()),
    }
}

/// The SQL of the subquery a window table function stands for, or an error
/// saying how to call it.
fn expansion(
    function: &str,
    args: &[FunctionArg],
    event_time_of: EventTimeOf,
) -> Result<String, String> {
    let bad = || format!("{function} takes {}", usage(function));
    let exprs = window_args(function, args)?;
    let table_name = exprs[0].to_string();
    let table = match exprs[0] {
        ast::Expr::Identifier(i) => quoted(&resolved_name(i)),
        ast::Expr::CompoundIdentifier(parts) => parts
            .iter()
            .map(|p| quoted(&resolved_name(p)))
            .collect::<Vec<_>>()
            .join("."),
        _ => return Err(bad()),
    };
    let time = match descriptor(exprs[1]).as_deref() {
        Some([one]) => one.clone(),
        _ => return Err(bad()),
    };
    match event_time_of(&table_name) {
        Some(None) => {
            return Err(format!(
                "table '{table_name}' has no event time, so {function} cannot window it: declare WATERMARK FOR <column> AS … in its CREATE TABLE"
            ));
        }
        Some(Some(column)) if !column.eq_ignore_ascii_case(&time) => {
            return Err(format!(
                "{function} is over column '{time}', but the event-time column of '{table_name}' is '{column}'; window by descriptor({column})"
            ));
        }
        _ => {}
    }
    let ts = quoted(&time);
    let a = exprs[2].to_string();
    let first = match function {
        "tumble" => "size",
        "hop" => "slide",
        "cumulate" => "step",
        _ => "gap",
    };
    let step = positive_interval(function, first, exprs[2])?;
    if function == "hop" || function == "cumulate" {
        let size = positive_interval(function, "size", exprs[3])?;
        if size % step != 0 {
            return Err(format!(
                "{function}'s size ({}) must be a whole number of its {} ({a})",
                exprs[3],
                if function == "hop" { "slide" } else { "step" }
            ));
        }
    }
    Ok(match function {
        "tumble" => format!(
            "SELECT *, date_bin({a}, {ts}) AS window_start, date_bin({a}, {ts}) + {a} AS window_end FROM {table}"
        ),
        "hop" => {
            let b = exprs[3].to_string();
            format!(
                "SELECT *, window_start + {b} AS window_end \
                 FROM (SELECT *, unnest(hop({a}, {b}, {ts})) AS window_start FROM {table})"
            )
        }
        "cumulate" => {
            let b = exprs[3].to_string();
            format!(
                "SELECT *, date_bin({b}, {ts}) AS window_start, unnest(cumulate({a}, {b}, {ts})) AS window_end FROM {table}"
            )
        }
        _ => {
            let keys: Vec<String> = match exprs.get(3) {
                Some(keys) => descriptor(keys)
                    .ok_or_else(bad)?
                    .iter()
                    .map(|k| quoted(k))
                    .collect(),
                None => Vec::new(),
            };
            let gap_ns = step;
            let by_key = match keys.is_empty() {
                true => String::new(),
                false => format!("PARTITION BY {}", keys.join(", ")),
            };
            let session = format!(
                "PARTITION BY {}",
                keys.iter()
                    .map(String::as_str)
                    .chain(["__flumen_session_id"])
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            format!(
                "SELECT * EXCLUDE (__flumen_session_new, __flumen_session_id) FROM (\
                 SELECT *, min({ts}) OVER ({session}) AS window_start, max({ts}) OVER ({session}) + {a} AS window_end \
                 FROM (SELECT *, sum(__flumen_session_new) OVER ({by_key} ORDER BY {ts} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS __flumen_session_id \
                       FROM (SELECT *, CASE WHEN lag({ts}) OVER ({by_key} ORDER BY {ts}) + {a} > {ts} THEN 0 ELSE 1 END AS __flumen_session_new \
                             FROM {table}))) AS \"{}\"",
                session_alias(gap_ns, &time)
            )
        }
    })
}

/// Replaces every window table function in `statement` by the subquery it
/// stands for. The error says how the function is called.
pub(crate) fn expand_window_tvfs(
    statement: &mut Statement,
    event_time_of: EventTimeOf,
) -> Result<(), String> {
    struct Expander<'a>(EventTimeOf<'a>);
    impl VisitorMut for Expander<'_> {
        type Break = String;
        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<String> {
            let (name, args, alias) = match factor {
                TableFactor::Table {
                    name,
                    alias,
                    args: Some(args),
                    ..
                } => (name.to_string(), &args.args, alias),
                // Flink's spelling: FROM TABLE(TUMBLE(…)).
                TableFactor::TableFunction {
                    expr: ast::Expr::Function(f),
                    alias,
                } => match &f.args {
                    FunctionArguments::List(list) => (f.name.to_string(), &list.args, alias),
                    _ => return ControlFlow::Continue(()),
                },
                _ => return ControlFlow::Continue(()),
            };
            let function = name.to_lowercase();
            if !matches!(function.as_str(), "tumble" | "hop" | "cumulate" | "session") {
                return ControlFlow::Continue(());
            }
            let sql = match expansion(&function, args, self.0) {
                Ok(sql) => sql,
                Err(e) => return ControlFlow::Break(e),
            };
            let query = match Parser::parse_sql(&GenericDialect {}, &sql).map(|mut s| s.pop()) {
                Ok(Some(Statement::Query(q))) => q,
                other => {
                    return ControlFlow::Break(format!("{function}: could not expand ({other:?})"));
                }
            };
            *factor = TableFactor::Derived {
                lateral: false,
                subquery: query,
                alias: alias.take(),
                sample: None,
            };
            ControlFlow::Continue(())
        }
    }
    match statement.visit(&mut Expander(event_time_of)) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// `sql` (one statement) with its window table functions (and Flink's group
/// window functions) replaced by the subqueries they stand for: how DataFusion's batch engine computes the
/// same windows (the tests' oracle).
pub fn expand_window_functions(sql: &str) -> Result<String, String> {
    let sql = crate::script::strip_table_arguments(sql);
    let mut statements = Parser::parse_sql(&GenericDialect {}, &sql).map_err(|e| e.to_string())?;
    for s in &mut statements {
        crate::group_windows::rewrite_group_windows(s)?;
        crate::if_function::rewrite_if(s)?;
        crate::timestamp_units::quote_units(s);
        expand_window_tvfs(s, &|_| None)?;
    }
    Ok(statements
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(";\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_alias_round_trips() {
        let alias = session_alias(10_000_000_000, "date_time");
        assert_eq!(
            parse_session_alias(&alias),
            Some((10_000_000_000, "date_time".to_string()))
        );
        assert_eq!(parse_session_alias("bid"), None);
    }

    #[test]
    fn window_functions_expand_to_subqueries_and_bad_calls_say_how() {
        let mut s = Parser::parse_sql(
            &GenericDialect {},
            "SELECT * FROM tumble(bid, descriptor(date_time), INTERVAL '10' SECOND) AS t",
        )
        .unwrap()
        .pop()
        .unwrap();
        expand_window_tvfs(&mut s, &|_| None).unwrap();
        let text = s.to_string();
        assert!(
            text.contains("date_bin(INTERVAL '10' SECOND, \"date_time\") AS window_start"),
            "{text}"
        );
        assert!(text.contains(") AS t"), "{text}");
        let mut s = Parser::parse_sql(&GenericDialect {}, "SELECT * FROM hop(bid, date_time)")
            .unwrap()
            .pop()
            .unwrap();
        let err = expand_window_tvfs(&mut s, &|_| None).unwrap_err();
        assert!(err.contains("hop takes hop(<table>"), "{err}");
        let expand = |sql: &str| {
            let mut s = Parser::parse_sql(&GenericDialect {}, sql)
                .unwrap()
                .pop()
                .unwrap();
            let event_time = |t: &str| match t {
                "bid" => Some(Some("date_time".to_string())),
                "plain" => Some(None),
                _ => None,
            };
            expand_window_tvfs(&mut s, &event_time).map(|()| s.to_string())
        };
        for (sql, error) in [
            (
                "SELECT * FROM hop(bid, descriptor(date_time), INTERVAL '0' SECOND, INTERVAL '10' SECOND)",
                "hop's slide must be a positive constant INTERVAL",
            ),
            (
                "SELECT * FROM tumble(bid, descriptor(date_time), INTERVAL '-5' SECOND)",
                "tumble's size must be a positive constant INTERVAL",
            ),
            (
                "SELECT * FROM cumulate(bid, descriptor(date_time), INTERVAL '2' SECOND, 'x')",
                "cumulate's size must be a positive constant INTERVAL",
            ),
            (
                "SELECT * FROM tumble(bid, descriptor(price), INTERVAL '10' SECOND)",
                "the event-time column of 'bid' is 'date_time'; window by descriptor(date_time)",
            ),
            (
                "SELECT * FROM tumble(plain, descriptor(ts), INTERVAL '10' SECOND)",
                "table 'plain' has no event time",
            ),
        ] {
            let err = expand(sql).unwrap_err();
            assert!(err.contains(error), "{sql}: {err}");
        }
        assert!(expand("SELECT * FROM tumble(a_view, descriptor(p), INTERVAL '1' SECOND)").is_ok());
    }

    /// Flink's spelling of each window function, positional or with named
    /// arguments in any order, expands to the same subquery as flumen's.
    #[test]
    fn flinks_spelling_expands_as_flumens() {
        let same = |flink: &str, flumen: &str| {
            let select = |from: &str| format!("SELECT * FROM {from} AS w");
            assert_eq!(
                expand_window_functions(&select(flink)),
                expand_window_functions(&select(flumen)),
                "{flink}"
            );
        };
        same(
            "TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))",
            "tumble(bid, descriptor(date_time), INTERVAL '10' SECOND)",
        );
        same(
            "TABLE(HOP(TABLE Bid, DESCRIPTOR(Date_Time), INTERVAL '2' SECOND, INTERVAL '10' SECONDS))",
            "hop(bid, descriptor(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECONDS)",
        );
        same(
            "TABLE(HOP(SIZE => INTERVAL '10' SECOND, DATA => TABLE bid, SLIDE => INTERVAL '2' SECOND, TIMECOL => DESCRIPTOR(date_time)))",
            "hop(bid, descriptor(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND)",
        );
        same(
            "TABLE(CUMULATE(DATA => TABLE bid, TIMECOL => DESCRIPTOR(date_time), STEP => INTERVAL '2' SECOND, SIZE => INTERVAL '10' SECOND))",
            "cumulate(bid, descriptor(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND)",
        );
        same(
            "TABLE(SESSION(TABLE bid PARTITION BY bidder, auction, DESCRIPTOR(date_time), INTERVAL '3' SECOND))",
            "session(bid, descriptor(date_time), INTERVAL '3' SECOND, descriptor(bidder, auction))",
        );
        same(
            "TABLE(SESSION(DATA => TABLE bid PARTITION BY auction, TIMECOL => DESCRIPTOR(date_time), GAP => INTERVAL '3' SECOND))",
            "session(bid, descriptor(date_time), INTERVAL '3' SECOND, descriptor(auction))",
        );
        same(
            "TABLE(SESSION(TABLE bid, DESCRIPTOR(date_time), INTERVAL '3' SECOND))",
            "session(bid, descriptor(date_time), INTERVAL '3' SECOND)",
        );
        let err = |sql: &str| expand_window_functions(&format!("SELECT * FROM {sql}")).unwrap_err();
        for (sql, error) in [
            (
                "TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), SIZE => INTERVAL '1' SECOND, OFFSET => INTERVAL '1' SECOND))",
                "tumble's OFFSET is not supported",
            ),
            (
                "TABLE(TUMBLE(DATA => TABLE bid, TIMECOL => DESCRIPTOR(date_time), WIDTH => INTERVAL '1' SECOND))",
                "tumble has no argument 'width'; its arguments are DATA, TIMECOL, SIZE",
            ),
            (
                "TABLE(TUMBLE(DATA => TABLE bid, TIMECOL => DESCRIPTOR(date_time)))",
                "tumble takes tumble(<table>",
            ),
        ] {
            let e = err(sql);
            assert!(e.contains(error), "{sql}: {e}");
        }
    }

    #[test]
    fn interval_literals_give_nanoseconds() {
        let e = |sql: &str| {
            Parser::new(&GenericDialect {})
                .try_with_sql(sql)
                .unwrap()
                .parse_expr()
                .unwrap()
        };
        assert_eq!(
            interval_nanos(&e("INTERVAL '10' SECOND")),
            Some(10_000_000_000)
        );
        assert_eq!(
            interval_nanos(&e("INTERVAL '2' MINUTE")),
            Some(120_000_000_000)
        );
        assert_eq!(
            interval_nanos(&e("INTERVAL '10 seconds'")),
            Some(10_000_000_000)
        );
    }
}
