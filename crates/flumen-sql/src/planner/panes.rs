//! When sliding windows can share panes: a `GROUP BY` over the UNNEST of
//! `hop(slide, size, ts)` whose rows reach it through projections, filters
//! and aliases only, grouped by the window start, keys that are the start
//! plus a constant (the window end) and keys that do not depend on the
//! window at all, with aggregates that do not read the window either. The
//! UNNEST then gives each row only its last window (its pane) and the window
//! aggregate builds every window from its panes.

use datafusion::common::Column as LogicalColumn;
use datafusion::logical_expr::logical_plan::{Aggregate, Unnest};
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator};
use flumen_operators::Panes;
use flumen_types::Result;

use super::Planner;
use crate::errors::SourcePos;

/// Where a group key comes from, when it is a hop window's start (plus an
/// offset).
struct HopKey<'a> {
    unnest: &'a Unnest,
    slide_ns: i64,
    size_ns: i64,
    /// The event-time column the hop is over, and the plan it is of.
    ts: LogicalColumn,
    ts_plan: &'a LogicalPlan,
    offset_ns: i64,
}

/// What the planner does for an aggregate that shares panes.
pub(super) struct PanePlan {
    /// The UNNEST to give each row its last window only (by address).
    pub unnest: usize,
    /// Which group key is the window start, and the operator's panes.
    pub window_key: usize,
    pub panes: Panes,
}

impl Planner {
    /// The panes `a` can share, if any; an error for a hop whose slide does
    /// not divide its size.
    pub(super) fn pane_plan(&self, a: &Aggregate, pos: &SourcePos) -> Result<Option<PanePlan>> {
        let mut hop_keys = Vec::new();
        let mut others = Vec::new();
        for (i, key) in a.group_expr.iter().enumerate() {
            match key.clone().unalias_nested().data {
                Expr::Column(c) => match hop_key(&a.input, &c) {
                    Some(h) => hop_keys.push((i, h)),
                    None => others.push(i),
                },
                _ => return Ok(None),
            }
        }
        let Some((_, first)) = hop_keys.first() else {
            return Ok(None);
        };
        if first.size_ns % first.slide_ns != 0 {
            return Err(pos.error(format!(
                "a hop window's size ({} ms) must be a whole number of its slide ({} ms)",
                first.size_ns / 1_000_000,
                first.slide_ns / 1_000_000
            )));
        }
        let unnest = first.unnest;
        let same = |h: &HopKey| std::ptr::eq(h.unnest, unnest);
        let Some(&(window_key, _)) = hop_keys.iter().find(|(_, h)| same(h) && h.offset_ns == 0)
        else {
            return Ok(None);
        };
        let window_independent = |e: &Expr| !depends_on(e, &a.input, unnest);
        let eligible = hop_keys.iter().all(|(_, h)| same(h))
            && !others.is_empty()
            && others.iter().all(|&i| window_independent(&a.group_expr[i]))
            && a.aggr_expr.iter().all(window_independent)
            && !self.is_processing_time(first.ts_plan, &first.ts)
            && self.is_event_time(first.ts_plan, &first.ts)
            && !self.has_allowed_lateness(first.ts_plan, &first.ts);
        if !eligible {
            return Ok(None);
        }
        Ok(Some(PanePlan {
            unnest: unnest as *const Unnest as usize,
            window_key,
            panes: Panes {
                slide_ns: first.slide_ns,
                shifted: hop_keys
                    .iter()
                    .map(|(i, _)| *i)
                    .filter(|&i| i != window_key)
                    .collect(),
            },
        }))
    }

    /// Whether the table of event-time column `ts` keeps windows open for
    /// late rows (or says so in a way the aggregate will refuse).
    fn has_allowed_lateness(&self, plan: &LogicalPlan, ts: &LogicalColumn) -> bool {
        self.allowed_lateness(plan, ts)
            .is_some_and(|(_, text)| crate::script::duration_nanos(text).is_none_or(|ns| ns > 0))
    }

    /// The UNNESTs (by address) the aggregates being planned want to give
    /// each row its last window only. A poisoned lock only means a panic
    /// elsewhere; the list is whole.
    pub(super) fn pane_unnests(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.pane_unnests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the UNNEST at `address` off that list; whether it was on it.
    /// An address is on it only while its aggregate's input is planned, so
    /// a later plan's node at the same address is never mistaken for it.
    pub(super) fn take_pane_unnest(&self, address: usize) -> bool {
        let mut unnests = self.pane_unnests();
        match unnests.iter().position(|&a| a == address) {
            Some(i) => {
                unnests.swap_remove(i);
                true
            }
            None => false,
        }
    }
}

/// Column `c` of `plan` as a hop window's start plus a constant, through
/// projections, filters that do not read the window, and aliases.
fn hop_key<'a>(plan: &'a LogicalPlan, c: &LogicalColumn) -> Option<HopKey<'a>> {
    let index = plan.schema().index_of_column(c).ok()?;
    let input_column =
        |input: &LogicalPlan, i: usize| LogicalColumn::from(input.schema().qualified_field(i));
    match plan {
        LogicalPlan::Projection(p) => match p.expr[index].clone().unalias_nested().data {
            Expr::Column(inner) => hop_key(&p.input, &inner),
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (Expr::Column(inner), Expr::Literal(v, _)) = (left.as_ref(), right.as_ref())
                else {
                    return None;
                };
                let shift = crate::udf::interval_nanos(v)?;
                let mut h = hop_key(&p.input, inner)?;
                match op {
                    Operator::Plus => h.offset_ns += shift,
                    Operator::Minus => h.offset_ns -= shift,
                    _ => return None,
                }
                Some(h)
            }
            _ => None,
        },
        LogicalPlan::SubqueryAlias(s) => hop_key(&s.input, &input_column(&s.input, index)),
        LogicalPlan::Filter(f) => {
            let h = hop_key(&f.input, c)?;
            (!depends_on(&f.predicate, &f.input, h.unnest)).then_some(h)
        }
        LogicalPlan::Unnest(u) => {
            let source = *u.dependency_indices.get(index)?;
            if !u.list_type_columns.iter().any(|(i, _)| *i == source) {
                return None;
            }
            let LogicalPlan::Projection(p) = u.input.as_ref() else {
                return None;
            };
            let Expr::ScalarFunction(f) = p.expr.get(source)?.clone().unalias_nested().data else {
                return None;
            };
            let [slide, size, Expr::Column(ts)] = f.args.as_slice() else {
                return None;
            };
            if f.func.name() != "hop" {
                return None;
            }
            let nanos = |e: &Expr| match e {
                Expr::Literal(v, _) => crate::udf::interval_nanos(v),
                _ => None,
            };
            Some(HopKey {
                unnest: u,
                slide_ns: nanos(slide)?,
                size_ns: nanos(size)?,
                ts: ts.clone(),
                ts_plan: &p.input,
                offset_ns: 0,
            })
        }
        _ => None,
    }
}

/// Whether `e`, over `plan`'s output, reads the list `unnest` unnests (a
/// window start of its hop); `true` where it cannot tell.
fn depends_on(e: &Expr, plan: &LogicalPlan, unnest: &Unnest) -> bool {
    e.column_refs()
        .into_iter()
        .any(|c| column_depends_on(plan, c, unnest))
}

fn column_depends_on(plan: &LogicalPlan, c: &LogicalColumn, unnest: &Unnest) -> bool {
    let Ok(index) = plan.schema().index_of_column(c) else {
        return true;
    };
    let input_column =
        |input: &LogicalPlan, i: usize| LogicalColumn::from(input.schema().qualified_field(i));
    match plan {
        LogicalPlan::Projection(p) => depends_on(&p.expr[index], &p.input, unnest),
        LogicalPlan::SubqueryAlias(s) => {
            column_depends_on(&s.input, &input_column(&s.input, index), unnest)
        }
        LogicalPlan::Filter(f) => column_depends_on(&f.input, c, unnest),
        LogicalPlan::Unnest(u) => {
            let Some(&source) = u.dependency_indices.get(index) else {
                return true;
            };
            if std::ptr::eq(u, unnest) {
                u.list_type_columns.iter().any(|(i, _)| *i == source)
            } else {
                column_depends_on(&u.input, &input_column(&u.input, source), unnest)
            }
        }
        // Below the UNNEST (or beside it) nothing reads its output.
        LogicalPlan::TableScan(_) => false,
        _ => true,
    }
}
