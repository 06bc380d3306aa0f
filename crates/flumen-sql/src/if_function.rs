//! Flink's `IF(condition, then, else)`, which DataFusion does not have: each
//! call is rewritten, in the parsed statement, into `CASE WHEN condition
//! THEN then ELSE else END`, which evaluates only the branch a row takes
//! (as Flink's IF does: `IF(x = 0, 0, 1 / x)` never divides by zero).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken;
use datafusion::sql::sqlparser::ast::{CaseWhen, Expr, Statement, visit_expressions_mut};

use crate::sql_ast::call;

/// Rewrites every `IF(c, a, b)` of `statement` as a CASE; an IF of another
/// arity is an error saying how it is called.
pub(crate) fn rewrite_if(statement: &mut Statement) -> Result<(), String> {
    let rewrite = |e: &mut Expr| {
        let Expr::Function(f) = e else {
            return ControlFlow::Continue(());
        };
        if !f.name.to_string().eq_ignore_ascii_case("if") {
            return ControlFlow::Continue(());
        }
        // Named arguments, like a wrong count, get the error below.
        let args: Vec<Expr> = call(e)
            .map(|(_, args)| args.into_iter().cloned().collect())
            .unwrap_or_default();
        let Ok([condition, then, otherwise]) = <[Expr; 3]>::try_from(args) else {
            return ControlFlow::Break(format!(
                "IF takes three arguments, IF(condition, value if true, value otherwise), not {e}"
            ));
        };
        *e = Expr::Case {
            case_token: AttachedToken::empty(),
            end_token: AttachedToken::empty(),
            operand: None,
            conditions: vec![CaseWhen {
                condition,
                result: then,
            }],
            else_result: Some(Box::new(otherwise)),
        };
        ControlFlow::Continue(())
    };
    match visit_expressions_mut(statement, rewrite) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    fn rewritten(sql: &str) -> Result<String, String> {
        let mut s = Parser::parse_sql(&GenericDialect {}, sql)
            .unwrap()
            .remove(0);
        rewrite_if(&mut s).map(|()| s.to_string())
    }

    #[test]
    fn if_becomes_a_case_and_nests() {
        assert_eq!(
            rewritten("SELECT IF(x = 0, 0, 1 / x), if(a, if(b, 1, 2), 3) FROM t WHERE IF(c, d, e)"),
            Ok("SELECT CASE WHEN x = 0 THEN 0 ELSE 1 / x END, CASE WHEN a THEN CASE WHEN b THEN 1 ELSE 2 END ELSE 3 END FROM t WHERE CASE WHEN c THEN d ELSE e END".to_string())
        );
        let err = rewritten("SELECT IF(a, b) FROM t").unwrap_err();
        assert!(err.contains("IF takes three arguments"), "{err}");
    }

    /// Only the branch a row takes is evaluated, in DataFusion's batch
    /// engine as in flumen's projections.
    #[tokio::test]
    async fn the_branch_not_taken_is_not_evaluated() {
        let ctx = crate::session();
        let mut s = Parser::parse_sql(
            &GenericDialect {},
            "SELECT IF(x = 0, -1, 10 / x) AS r FROM (VALUES (0), (5)) AS v(x)",
        )
        .unwrap()
        .remove(0);
        rewrite_if(&mut s).unwrap();
        let batches = ctx
            .sql(&s.to_string())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(text.contains("| -1 |") && text.contains("| 2  |"), "{text}");
    }
}
