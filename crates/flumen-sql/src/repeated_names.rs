//! A column named twice in a SELECT list. Flink takes `SELECT a, a` and
//! names the second `a0`; DataFusion refuses it ("Projections require
//! unique expression names"), so `INSERT INTO t SELECT a, a FROM s` failed
//! though an INSERT maps columns by position. Before planning, each repeat
//! of a column reference is aliased as Flink names it.

use std::collections::HashSet;
use std::ops::ControlFlow;

use crate::sql_ast::resolved_name;
use datafusion::sql::sqlparser::ast::{
    Expr, Ident, Query, Select, SelectItem, SetExpr, Statement, VisitMut, VisitorMut,
};

/// Aliases every repeated column reference of every SELECT list in
/// `statement`: the second `a` becomes `a AS a0`, the third `a1`, skipping
/// names the list already has. References with two different qualifiers
/// (`s.a, t.a`) are distinct to DataFusion and keep their names.
pub(crate) fn alias_repeats(statement: &mut Statement) {
    struct Queries;
    impl VisitorMut for Queries {
        type Break = ();
        fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
            alias_in(&mut query.body);
            ControlFlow::Continue(())
        }
    }
    let _ = statement.visit(&mut Queries);
}

fn alias_in(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) => alias_select(select),
        SetExpr::SetOperation { left, right, .. } => {
            alias_in(left);
            alias_in(right);
        }
        _ => {}
    }
}

/// The name an item's column gets and, for a column reference, its
/// qualifier (`None` when unqualified).
fn name_of(item: &SelectItem) -> Option<(String, Option<String>)> {
    match item {
        SelectItem::UnnamedExpr(Expr::Identifier(i)) => Some((resolved_name(i), None)),
        SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
            let (last, qualifier) = parts.split_last()?;
            let qualifier = qualifier
                .iter()
                .map(resolved_name)
                .collect::<Vec<_>>()
                .join(".");
            Some((resolved_name(last), Some(qualifier)))
        }
        SelectItem::ExprWithAlias { alias, .. } => Some((resolved_name(alias), None)),
        _ => None,
    }
}

fn alias_select(select: &mut Select) {
    let names: Vec<_> = select.projection.iter().map(name_of).collect();
    let mut taken: HashSet<String> = names.iter().flatten().map(|(n, _)| n.clone()).collect();
    for (i, named) in names.iter().enumerate() {
        let Some((name, qualifier)) = named else {
            continue;
        };
        let repeats = names[..i].iter().flatten().any(|(earlier, q)| {
            earlier == name && (q.is_none() || qualifier.is_none() || q == qualifier)
        });
        if !repeats {
            continue;
        }
        let SelectItem::UnnamedExpr(expr) = &select.projection[i] else {
            continue;
        };
        let alias = (0..)
            .map(|k| format!("{name}{k}"))
            .find(|a| !taken.contains(a))
            .expect("some numbered name is free: the list is finite");
        taken.insert(alias.clone());
        select.projection[i] = SelectItem::ExprWithAlias {
            expr: expr.clone(),
            alias: Ident::with_quote('"', alias),
        };
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    fn aliased(sql: &str) -> String {
        let mut statement = Parser::parse_sql(&GenericDialect {}, sql)
            .unwrap()
            .remove(0);
        alias_repeats(&mut statement);
        statement.to_string()
    }

    #[test]
    fn repeats_are_numbered_as_flink_names_them() {
        assert_eq!(
            aliased("SELECT a, b, A, t.a, a0, a FROM t"),
            "SELECT a, b, A AS \"a1\", t.a AS \"a2\", a0, a AS \"a3\" FROM t"
        );
        assert_eq!(
            aliased(
                "INSERT INTO o SELECT x FROM (SELECT s.a, t.a, s.a FROM s JOIN t ON true) UNION ALL SELECT \"A\", \"A\" FROM u"
            ),
            "INSERT INTO o SELECT x FROM (SELECT s.a, t.a, s.a AS \"a0\" FROM s JOIN t ON true) UNION ALL SELECT \"A\", \"A\" AS \"A0\" FROM u"
        );
        assert_eq!(
            aliased("SELECT a AS b, b, count(*), count(*) FROM t"),
            "SELECT a AS b, b AS \"b0\", count(*), count(*) FROM t"
        );
    }
}
