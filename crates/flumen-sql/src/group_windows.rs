//! Flink's group window functions, which Flink keeps beside its window
//! table functions and many pipelines still use:
//!
//! ```sql
//! SELECT bidder, count(*), TUMBLE_START(date_time, INTERVAL '10' SECOND)
//! FROM bid
//! GROUP BY bidder, TUMBLE(date_time, INTERVAL '10' SECOND)
//! ```
//!
//! with `HOP(ts, slide, size)` and `SESSION(ts, gap)` likewise, and
//! `*_START`, `*_END` and `*_ROWTIME` (the end less a millisecond) in the
//! SELECT list and HAVING. Before planning, such a query is rewritten, in
//! the parsed statement, into the window table function over its one table
//! (`FROM tumble(bid, descriptor(date_time), INTERVAL '10' SECOND) AS bid
//! … GROUP BY bidder, window_start, window_end`; a session's other keys,
//! if any, become its partition), which `tvf` then expands.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, GroupByExpr, Ident, Query, Select, SetExpr, Statement, TableFactor, VisitMut, VisitorMut,
    visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::sql_ast::call;

/// The group window functions, each with the window table function it
/// becomes and its number of arguments.
const WINDOWS: [(&str, usize); 3] = [("tumble", 2), ("hop", 3), ("session", 2)];

/// Rewrites every SELECT of `statement` that groups by a group window
/// function into the window table function; the error says why one cannot
/// be.
pub(crate) fn rewrite_group_windows(statement: &mut Statement) -> Result<(), String> {
    struct Selects;
    impl VisitorMut for Selects {
        type Break = String;
        fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<String> {
            match rewrite_body(&mut query.body) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => ControlFlow::Break(e),
            }
        }
    }
    match statement.visit(&mut Selects) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

fn rewrite_body(body: &mut SetExpr) -> Result<(), String> {
    match body {
        SetExpr::Select(select) => rewrite_select(select),
        SetExpr::SetOperation { left, right, .. } => {
            rewrite_body(left)?;
            rewrite_body(right)
        }
        _ => Ok(()),
    }
}

/// The window function and its arguments a GROUP BY item calls, if any.
fn group_window(e: &Expr) -> Option<(&'static str, Vec<&Expr>)> {
    let (name, args) = call(e)?;
    WINDOWS
        .iter()
        .find(|(w, _)| *w == name)
        .map(|(w, _)| (*w, args))
}

/// The column a plain or qualified column reference names.
fn column(e: &Expr) -> Option<&Ident> {
    match e {
        Expr::Identifier(i) => Some(i),
        Expr::CompoundIdentifier(parts) => parts.last(),
        _ => None,
    }
}

fn rewrite_select(select: &mut Select) -> Result<(), String> {
    let GroupByExpr::Expressions(keys, _) = &mut select.group_by else {
        return Ok(());
    };
    let Some((at, (function, args))) = keys
        .iter()
        .enumerate()
        .find_map(|(i, k)| group_window(k).map(|window| (i, window)))
    else {
        return refuse_stray_helpers(select);
    };
    let arity = WINDOWS
        .iter()
        .find(|(w, _)| *w == function)
        .map_or(0, |w| w.1);
    let upper = function.to_uppercase();
    let usage = match function {
        "tumble" => "TUMBLE(<time column>, INTERVAL '<size>')",
        "hop" => "HOP(<time column>, INTERVAL '<slide>', INTERVAL '<size>')",
        _ => "SESSION(<time column>, INTERVAL '<gap>')",
    };
    if args.len() != arity {
        return Err(format!("{upper} in GROUP BY takes {usage}"));
    }
    let time = column(args[0]).ok_or_else(|| format!("{upper} in GROUP BY takes {usage}"))?;
    let intervals: Vec<String> = args[1..].iter().map(ToString::to_string).collect();
    let others: Vec<&Expr> = keys
        .iter()
        .enumerate()
        .filter(|&(i, k)| i != at && group_window(k).is_none())
        .map(|(_, k)| k)
        .collect();
    if keys.iter().filter(|k| group_window(k).is_some()).count() > 1 {
        return Err("a GROUP BY takes one group window function".to_string());
    }
    let partition = if function == "session" {
        let names = others
            .iter()
            .map(|k| column(k).map(ToString::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or(
                "SESSION in GROUP BY partitions by the other GROUP BY keys, which must be columns",
            )?;
        match names.is_empty() {
            true => String::new(),
            false => format!(", descriptor({})", names.join(", ")),
        }
    } else {
        String::new()
    };
    let [only] = select.from.as_mut_slice() else {
        return Err(one_table(&upper, function));
    };
    let TableFactor::Table {
        name,
        alias,
        args: None,
        ..
    } = &only.relation
    else {
        return Err(one_table(&upper, function));
    };
    if !only.joins.is_empty() {
        return Err(one_table(&upper, function));
    }
    let table = name.to_string();
    let alias = match alias {
        Some(a) => a.name.to_string(),
        None => name.0.last().map_or(table.clone(), ToString::to_string),
    };
    let sql = format!(
        "SELECT * FROM {function}({table}, descriptor({time}), {}{partition}) AS {alias}",
        intervals.join(", ")
    );
    only.relation = match Parser::parse_sql(&GenericDialect {}, &sql).map(|mut s| s.pop()) {
        Ok(Some(Statement::Query(q))) => match *q.body {
            SetExpr::Select(mut s) => s.from.remove(0).relation,
            _ => return Err(format!("{upper}: could not rewrite ({sql})")),
        },
        other => return Err(format!("{upper}: could not rewrite ({other:?})")),
    };
    keys.splice(
        at..=at,
        [
            Expr::Identifier(Ident::new("window_start")),
            Expr::Identifier(Ident::new("window_end")),
        ],
    );
    replace_helpers(select, function)
}

fn one_table(upper: &str, function: &str) -> String {
    format!(
        "{upper} in GROUP BY needs FROM one table or view; over a join or subquery, window with the table function: FROM {function}(<table>, descriptor(<time column>), …)"
    )
}

/// Which window a helper function (`TUMBLE_START`, …) belongs to and what
/// it gives.
fn helper(name: &str) -> Option<(&'static str, &'static str)> {
    let (window, part) = name.split_once('_')?;
    let window = WINDOWS.iter().find(|(w, _)| *w == window)?.0;
    let part = ["start", "end", "rowtime", "proctime"]
        .into_iter()
        .find(|p| *p == part)?;
    Some((window, part))
}

/// Replaces the group window's helpers in the SELECT list and HAVING by
/// the window's columns.
fn replace_helpers(select: &mut Select, function: &str) -> Result<(), String> {
    let rowtime = Parser::new(&GenericDialect {})
        .try_with_sql("window_end - INTERVAL '0.001' SECOND")
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| e.to_string())?;
    let mut replace = |e: &mut Expr| {
        let Some((name, _)) = call(e) else {
            return ControlFlow::Continue(());
        };
        let Some((window, part)) = helper(&name) else {
            return ControlFlow::Continue(());
        };
        if window != function {
            return ControlFlow::Break(format!(
                "{} belongs to a {} window, but the query groups by {}",
                name.to_uppercase(),
                window.to_uppercase(),
                function.to_uppercase()
            ));
        }
        *e = match part {
            "start" => Expr::Identifier(Ident::new("window_start")),
            "end" => Expr::Identifier(Ident::new("window_end")),
            "rowtime" => rowtime.clone(),
            _ => {
                return ControlFlow::Break(format!(
                    "{} is not supported: group by the window of PROCTIME() in the table function instead",
                    name.to_uppercase()
                ));
            }
        };
        ControlFlow::Continue(())
    };
    for item in &mut select.projection {
        if let ControlFlow::Break(e) = visit_expressions_mut(item, &mut replace) {
            return Err(e);
        }
    }
    if let Some(having) = &mut select.having
        && let ControlFlow::Break(e) = visit_expressions_mut(having, &mut replace)
    {
        return Err(e);
    }
    Ok(())
}

/// A helper (`TUMBLE_START`, …) in a SELECT that groups by no window.
fn refuse_stray_helpers(select: &mut Select) -> Result<(), String> {
    let mut find =
        |e: &mut Expr| match call(e).and_then(|(name, _)| helper(&name).map(|h| (name, h))) {
            Some((name, (window, _))) => ControlFlow::Break(format!(
                "{} needs GROUP BY {}(<time column>, …) in the same SELECT",
                name.to_uppercase(),
                window.to_uppercase()
            )),
            None => ControlFlow::Continue(()),
        };
    for item in &mut select.projection {
        if let ControlFlow::Break(e) = visit_expressions_mut(item, &mut find) {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> Result<String, String> {
        let mut s = Parser::parse_sql(&GenericDialect {}, sql)
            .unwrap()
            .remove(0);
        rewrite_group_windows(&mut s).map(|()| s.to_string())
    }

    fn parsed(sql: &str) -> String {
        Parser::parse_sql(&GenericDialect {}, sql).unwrap()[0].to_string()
    }

    #[test]
    fn group_windows_become_window_table_functions() {
        assert_eq!(
            rewritten(
                "SELECT bidder, count(*), TUMBLE_START(date_time, INTERVAL '10' SECOND) AS s, \
                 tumble_end(date_time, INTERVAL '10' SECOND) FROM bid \
                 GROUP BY bidder, TUMBLE(date_time, INTERVAL '10' SECOND) \
                 HAVING TUMBLE_ROWTIME(date_time, INTERVAL '10' SECOND) > TIMESTAMP '2020-01-01 00:00:00'"
            ),
            Ok(parsed(
                "SELECT bidder, count(*), window_start AS s, window_end FROM tumble(bid, descriptor(date_time), INTERVAL '10' SECOND) AS bid \
                 GROUP BY bidder, window_start, window_end \
                 HAVING window_end - INTERVAL '0.001' SECOND > TIMESTAMP '2020-01-01 00:00:00'"
            ))
        );
        assert_eq!(
            rewritten(
                "SELECT HOP_END(B.date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND), max(price) FROM bid AS B \
                 GROUP BY HOP(B.date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)"
            ),
            Ok(parsed(
                "SELECT window_end, max(price) FROM hop(bid, descriptor(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS B \
                 GROUP BY window_start, window_end"
            ))
        );
        assert_eq!(
            rewritten(
                "INSERT INTO o SELECT B.bidder, count(*), SESSION_START(B.date_time, INTERVAL '10' SECOND) FROM bid B \
                 GROUP BY B.bidder, SESSION(B.date_time, INTERVAL '10' SECOND)"
            ),
            Ok(parsed(
                "INSERT INTO o SELECT B.bidder, count(*), window_start FROM session(bid, descriptor(date_time), INTERVAL '10' SECOND, descriptor(bidder)) AS B \
                 GROUP BY B.bidder, window_start, window_end"
            ))
        );
        assert_eq!(
            rewritten("SELECT count(*) FROM t GROUP BY SESSION(ts, INTERVAL '1' SECOND)"),
            Ok(parsed(
                "SELECT count(*) FROM session(t, descriptor(ts), INTERVAL '1' SECOND) AS t GROUP BY window_start, window_end"
            ))
        );
        let plain = "SELECT a, count(*) FROM t GROUP BY a";
        assert_eq!(rewritten(plain), Ok(parsed(plain)));
    }

    #[test]
    fn group_windows_that_cannot_be_rewritten_say_why() {
        for (sql, error) in [
            (
                "SELECT count(*) FROM a JOIN b ON a.k = b.k GROUP BY TUMBLE(a.ts, INTERVAL '1' SECOND)",
                "TUMBLE in GROUP BY needs FROM one table or view",
            ),
            (
                "SELECT count(*) FROM t GROUP BY TUMBLE(ts)",
                "TUMBLE in GROUP BY takes TUMBLE(<time column>, INTERVAL '<size>')",
            ),
            (
                "SELECT HOP_START(ts, INTERVAL '1' SECOND, INTERVAL '2' SECOND) FROM t GROUP BY TUMBLE(ts, INTERVAL '1' SECOND)",
                "HOP_START belongs to a HOP window, but the query groups by TUMBLE",
            ),
            (
                "SELECT TUMBLE_START(ts, INTERVAL '1' SECOND) FROM t GROUP BY a",
                "TUMBLE_START needs GROUP BY TUMBLE(<time column>, …) in the same SELECT",
            ),
            (
                "SELECT TUMBLE_PROCTIME(ts, INTERVAL '1' SECOND) FROM t GROUP BY TUMBLE(ts, INTERVAL '1' SECOND)",
                "TUMBLE_PROCTIME is not supported",
            ),
        ] {
            let err = rewritten(sql).unwrap_err();
            assert!(err.contains(error), "{sql}: {err}");
        }
    }
}
