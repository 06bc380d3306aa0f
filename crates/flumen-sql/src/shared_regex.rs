//! A regular expression both a filter and the projection above it run
//! (`WHERE regexp_extract(url, p, 2) IS NOT NULL … SELECT … regexp_extract(url,
//! p, 2)`, Nexmark q21) is computed once, below the filter, as a column
//! that both then read. DataFusion shares common expressions within one
//! plan node, not between a filter and a projection over it.

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::{Expr, Filter, LogicalPlan, Projection};
use std::sync::Arc;

/// The column the shared expression is computed into.
const SHARED: &str = "__flumen_shared_regex";

/// `plan` with each regular expression shared by a filter and a
/// projection over it (through projections passing its columns on)
/// computed once.
pub(crate) fn share_regexes(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up(|node| {
        Ok(match shared_below(&node)? {
            Some(rewritten) => Transformed::yes(rewritten),
            None => Transformed::no(node),
        })
    })
    .data()
}

/// The regular expression calls in `e`.
fn regex_calls(e: &Expr) -> Vec<Expr> {
    let mut calls = Vec::new();
    // Visiting cannot fail: the closure returns no error.
    let _ = e.apply(|node| {
        if let Expr::ScalarFunction(f) = node
            && f.func.name() == "regexp_extract"
        {
            calls.push(node.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    calls
}

fn contains(e: &Expr, wanted: &Expr) -> bool {
    let mut found = false;
    // Visiting cannot fail: the closure returns no error.
    let _ = e.apply(|node| {
        found |= node == wanted;
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

fn replaced(e: Expr, wanted: &Expr) -> Result<Expr> {
    let name = e.schema_name().to_string();
    let new = e
        .transform(|node| {
            Ok(if &node == wanted {
                Transformed::yes(Expr::Column(Column::from_name(SHARED)))
            } else {
                Transformed::no(node)
            })
        })
        .data()?;
    // The projection's columns keep their names.
    new.alias_if_changed(name)
}

/// For a projection over projections passing columns on over a filter:
/// the plan with the first regular expression both the filter and the top
/// projection run computed once below the filter.
fn shared_below(node: &LogicalPlan) -> Result<Option<LogicalPlan>> {
    let LogicalPlan::Projection(top) = node else {
        return Ok(None);
    };
    let mut between: Vec<&Projection> = Vec::new();
    let mut input = top.input.as_ref();
    let filter = loop {
        match input {
            LogicalPlan::Projection(p) => {
                between.push(p);
                input = p.input.as_ref();
            }
            LogicalPlan::Filter(f) => break f,
            _ => return Ok(None),
        }
    };
    if filter
        .input
        .schema()
        .has_column_with_unqualified_name(SHARED)
    {
        return Ok(None);
    }
    let Some(shared) = regex_calls(&filter.predicate)
        .into_iter()
        .find(|call| top.expr.iter().any(|e| contains(e, call)))
    else {
        return Ok(None);
    };
    // Every projection between must pass the expression's columns on as
    // they are (DataFusion merges most projections before this runs; a
    // column redefined under its name in one it left would read other
    // values above).
    let columns = shared.column_refs();
    for p in &between {
        let passes = |c: &Column| {
            p.expr
                .iter()
                .any(|e| matches!(e, Expr::Column(col) if col == c))
        };
        if !columns.iter().all(|c| passes(c)) {
            return Ok(None);
        }
    }
    let mut below: Vec<Expr> = filter
        .input
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    below.push(shared.clone().alias(SHARED));
    let computed = Projection::try_new(below, filter.input.clone())?;
    let predicate = replaced(filter.predicate.clone(), &shared)?;
    let mut plan = LogicalPlan::Filter(Filter::try_new(
        predicate,
        Arc::new(LogicalPlan::Projection(computed)),
    )?);
    for p in between.iter().rev() {
        let mut exprs = p.expr.clone();
        exprs.push(Expr::Column(Column::from_name(SHARED)));
        plan = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(plan))?);
    }
    let exprs = top
        .expr
        .iter()
        .map(|e| replaced(e.clone(), &shared))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(LogicalPlan::Projection(Projection::try_new(
        exprs,
        Arc::new(plan),
    )?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;

    const Q21: &str = "SELECT channel, CASE WHEN lower(channel) = 'apple' THEN '0' \
        ELSE regexp_extract(url, '(&|^)channel_id=([^&]*)', 2) END AS channel_id FROM bid \
        WHERE regexp_extract(url, '(&|^)channel_id=([^&]*)', 2) IS NOT NULL OR lower(channel) IN ('apple')";

    async fn context() -> datafusion::prelude::SessionContext {
        let ctx = crate::session();
        let schema = Arc::new(Schema::new(vec![
            Field::new("channel", DataType::Utf8, true),
            Field::new("url", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("Apple"),
                    Some("x"),
                    Some("y"),
                    None,
                    Some("apple"),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("a?q=1"),
                    Some("a?q=1&channel_id=7"),
                    Some("a?q=1"),
                    Some("channel_id=9&b=2"),
                    None,
                ])),
            ],
        )
        .unwrap();
        let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        ctx.register_table("bid", Arc::new(table)).unwrap();
        ctx
    }

    async fn plans(
        sql: &str,
    ) -> (
        datafusion::prelude::SessionContext,
        LogicalPlan,
        LogicalPlan,
    ) {
        let ctx = context().await;
        let plan = ctx.sql(sql).await.unwrap().into_optimized_plan().unwrap();
        let shared = share_regexes(plan.clone()).unwrap();
        (ctx, plan, shared)
    }

    async fn run(ctx: &datafusion::prelude::SessionContext, plan: LogicalPlan) -> Vec<RecordBatch> {
        ctx.execute_logical_plan(plan)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
    }

    fn text(batches: &[RecordBatch]) -> String {
        arrow::util::pretty::pretty_format_batches(batches)
            .unwrap()
            .to_string()
    }

    /// q21's shape, and the regex as a column of its own: it runs once,
    /// below the filter, and the rows and column names are DataFusion's.
    #[tokio::test]
    async fn a_regex_of_the_filter_and_the_projection_runs_once() {
        let own = "SELECT regexp_extract(url, 'channel_id=([^&]*)', 1) FROM bid \
            WHERE regexp_extract(url, 'channel_id=([^&]*)', 1) IS NOT NULL";
        for (sql, rows) in [(Q21, 4), (own, 2)] {
            let (ctx, plan, shared) = plans(sql).await;
            let shown = shared.display_indent().to_string();
            // Calls print a space after each comma; a column named after one, none.
            assert_eq!(
                shown.matches("regexp_extract(bid.url, ").count(),
                1,
                "{shown}"
            );
            assert!(
                shown.contains(&format!("Filter: {SHARED} IS NOT NULL")),
                "{shown}"
            );
            let (want, got) = (run(&ctx, plan).await, run(&ctx, shared).await);
            assert_eq!(want[0].schema(), got[0].schema(), "{sql}");
            assert_eq!(text(&want), text(&got), "{sql}");
            assert_eq!(got.iter().map(RecordBatch::num_rows).sum::<usize>(), rows);
        }
    }

    /// A subquery that redefines the regex's column under the same name:
    /// the regex above reads the new values (DataFusion merges the
    /// projections first, so the two calls differ).
    #[tokio::test]
    async fn a_column_redefined_in_a_subquery_keeps_its_values() {
        let sql = "SELECT regexp_extract(url, 'CHANNEL_ID=([^&]*)', 1) AS c FROM \
            (SELECT upper(url) AS url FROM bid WHERE regexp_extract(url, 'CHANNEL_ID=([^&]*)', 1) IS NULL) AS bid";
        let (ctx, plan, shared) = plans(sql).await;
        let (want, got) = (run(&ctx, plan).await, run(&ctx, shared).await);
        assert_eq!(text(&want), text(&got));
        assert!(text(&got).contains("| 7 "), "{}", text(&got));
    }

    /// A regex only the filter runs, or only the projection, stays where
    /// it is.
    #[tokio::test]
    async fn a_regex_of_one_node_only_stays() {
        for sql in [
            "SELECT channel FROM bid WHERE regexp_extract(url, 'channel_id=([^&]*)', 1) IS NOT NULL",
            "SELECT regexp_extract(url, 'channel_id=([^&]*)', 1) FROM bid WHERE channel = 'x'",
        ] {
            let (_, plan, shared) = plans(sql).await;
            assert_eq!(plan, shared, "{sql}");
        }
    }
}
