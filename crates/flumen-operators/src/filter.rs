//! Keeps the rows of a batch for which a predicate is true. A predicate
//! `cheap OR costly` (or `AND`), where only `costly` calls a regular
//! expression or LIKE, evaluates `cheap` first and `costly` only on the
//! rows `cheap` leaves undecided (DataFusion does this only when at most a
//! fifth of the rows are undecided); SQL leaves the order of evaluation
//! open, and both sides are free of side effects.

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::buffer::BooleanBuffer;
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::Operator as BinaryOp;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, LikeExpr};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use flumen_runtime::{Operator, OperatorFactory, TaskContext};
use flumen_types::{FlumenError, Result};

/// Makes [`Filter`] operators for a predicate compiled once at plan time.
pub struct FilterFactory {
    predicate: Arc<dyn PhysicalExpr>,
    ordered: Option<Ordered>,
}

/// A predicate of one cheap side and one costly side, joined by `OR` (`or`)
/// or `AND`.
#[derive(Clone)]
struct Ordered {
    cheap: Arc<dyn PhysicalExpr>,
    /// The costly side over a batch of only the `used` columns, so that
    /// picking out the open rows copies no other column.
    costly: Arc<dyn PhysicalExpr>,
    used: Vec<usize>,
    or: bool,
}

impl Ordered {
    fn new(
        cheap: &Arc<dyn PhysicalExpr>,
        costly: &Arc<dyn PhysicalExpr>,
        or: bool,
    ) -> Option<Self> {
        let (costly, used) = on_used_columns(costly).ok()?;
        Some(Ordered {
            cheap: cheap.clone(),
            costly,
            used,
            or,
        })
    }

    /// The rows to keep: `cheap` over the batch, then `costly` over the
    /// rows still undecided (for `OR` those where `cheap` is not true, for
    /// `AND` those where it is), its result put back in their places.
    fn rows(&self, batch: &RecordBatch) -> Result<BooleanBuffer> {
        let (cheap, costly, or) = (&self.cheap, &self.costly, self.or);
        let first = true_rows(cheap, batch)?;
        let open = if or { !&first } else { first.clone() };
        if open.count_set_bits() == 0 {
            return Ok(first);
        }
        let rest = filter_record_batch(
            &batch.project(&self.used)?,
            &BooleanArray::new(open.clone(), None),
        )?;
        let second = true_rows(costly, &rest)?;
        let mut keep = arrow::array::BooleanBufferBuilder::new(batch.num_rows());
        if or {
            keep.append_buffer(&first);
        } else {
            keep.append_n(batch.num_rows(), false);
        }
        for (j, row) in open.set_indices().enumerate() {
            if second.value(j) {
                keep.set_bit(row, true);
            }
        }
        Ok(keep.finish())
    }
}

impl FilterFactory {
    /// A filter keeping rows where `predicate` evaluates to true (not null).
    pub fn new(predicate: Arc<dyn PhysicalExpr>) -> Self {
        let ordered = predicate
            .downcast_ref::<BinaryExpr>()
            .filter(|b| matches!(b.op(), BinaryOp::Or | BinaryOp::And))
            .and_then(|b| {
                let or = *b.op() == BinaryOp::Or;
                match (costly(b.left()), costly(b.right())) {
                    (true, false) => Ordered::new(b.right(), b.left(), or),
                    (false, true) => Ordered::new(b.left(), b.right(), or),
                    _ => None,
                }
            });
        FilterFactory { predicate, ordered }
    }
}

/// Whether `expr` calls a regular-expression function or LIKE: far dearer
/// per row than comparisons and arithmetic.
fn costly(expr: &Arc<dyn PhysicalExpr>) -> bool {
    expr.downcast_ref::<LikeExpr>().is_some()
        || expr
            .downcast_ref::<ScalarFunctionExpr>()
            .is_some_and(|f| f.name().starts_with("regexp_"))
        || expr.children().into_iter().any(costly)
}

impl OperatorFactory for FilterFactory {
    fn describe(&self) -> String {
        match &self.ordered {
            Some(o) => format!(
                "Filter: {} (first {}, the rest on rows it leaves open)",
                self.predicate, o.cheap
            ),
            None => format!("Filter: {}", self.predicate),
        }
    }

    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Filter {
            predicate: self.predicate.clone(),
            ordered: self.ordered.clone(),
        }))
    }
}

struct Filter {
    predicate: Arc<dyn PhysicalExpr>,
    ordered: Option<Ordered>,
}

/// The rows of `batch` where `expr` is true (not false, not null).
fn true_rows(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<BooleanBuffer> {
    let value = expr
        .evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .map_err(|e| FlumenError::execution(format!("evaluating filter: {e}")))?;
    let Some(mask) = value.as_boolean_opt() else {
        return Err(FlumenError::execution(format!(
            "filter predicate {expr} is {}, not boolean",
            value.data_type()
        )));
    };
    Ok(true_bits(mask))
}

/// The rows where `mask` is true: its values where it is not null.
pub(crate) fn true_bits(mask: &BooleanArray) -> BooleanBuffer {
    match mask.nulls() {
        Some(valid) => valid.inner() & mask.values(),
        None => mask.values().clone(),
    }
}

impl Operator for Filter {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        let keep = match &self.ordered {
            Some(ordered) => ordered.rows(&batch)?,
            None => true_rows(&self.predicate, &batch)?,
        };
        let kept = filter_record_batch(&batch, &BooleanArray::new(keep, None))?;
        if kept.num_rows() > 0 {
            out.push(kept);
        }
        Ok(())
    }
}

/// `expr` over a batch of only the columns it reads, and those columns'
/// indices (sorted): evaluating it on a few rows then copies no other
/// column (`RecordBatch::project` with them, then filter).
pub fn on_used_columns(
    expr: &Arc<dyn PhysicalExpr>,
) -> datafusion::common::Result<(Arc<dyn PhysicalExpr>, Vec<usize>)> {
    let mut used: Vec<usize> = collect_columns(expr).iter().map(Column::index).collect();
    used.sort_unstable();
    let renumbered = expr
        .clone()
        .transform_down(|e| {
            let Some(c) = e.downcast_ref::<Column>() else {
                return Ok(Transformed::no(e));
            };
            let at = used
                .binary_search(&c.index())
                .map_err(|_| DataFusionError::Internal(format!("column {c} not collected")))?;
            Ok(Transformed::yes(Arc::new(Column::new(c.name(), at)) as _))
        })?
        .data;
    Ok((renumbered, used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::expressions::{col, lit};
    use flumen_runtime::JobMetrics;

    fn ctx() -> TaskContext {
        TaskContext::new(0, 1, 128, Arc::new(JobMetrics::default()))
    }

    /// `a > 2 OR s LIKE 'x%'` and the same with AND, in both orders, with
    /// nulls on both sides: the LIKE side is evaluated last, on the rows
    /// the comparison leaves open, and the rows kept are the ones
    /// DataFusion's own evaluation of the whole predicate keeps.
    #[test]
    fn a_costly_side_is_evaluated_last_and_keeps_the_same_rows() {
        use arrow::array::StringArray;
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]);
        let rows = 200;
        let a: ArrayRef = Arc::new(Int64Array::from_iter(
            (0..rows).map(|i: i64| (i % 7 != 0).then_some(i % 5)),
        ));
        let s: ArrayRef =
            Arc::new(StringArray::from_iter((0..rows).map(|i| {
                (i % 11 != 0).then_some(if i % 3 == 0 { "xa" } else { "ya" })
            })));
        let batch = RecordBatch::try_new(Arc::new(schema.clone()), vec![a, s]).unwrap();
        let cheap: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
            col("a", &schema).unwrap(),
            BinaryOp::Gt,
            lit(2i64),
        ));
        let like: Arc<dyn PhysicalExpr> = Arc::new(LikeExpr::new(
            false,
            false,
            col("s", &schema).unwrap(),
            lit("x%"),
        ));
        for op in [BinaryOp::Or, BinaryOp::And] {
            for (left, right) in [(&cheap, &like), (&like, &cheap)] {
                let predicate: Arc<dyn PhysicalExpr> =
                    Arc::new(BinaryExpr::new(left.clone(), op, right.clone()));
                let factory = FilterFactory::new(predicate.clone());
                assert!(
                    factory.describe().contains("(first a@0 > 2"),
                    "{}",
                    factory.describe()
                );
                let mut out = Vec::new();
                factory
                    .create(&ctx())
                    .unwrap()
                    .process_batch(batch.clone(), &mut out)
                    .unwrap();
                let mask = predicate
                    .evaluate(&batch)
                    .and_then(|v| v.into_array(batch.num_rows()))
                    .unwrap();
                let expected = filter_record_batch(&batch, mask.as_boolean()).unwrap();
                assert!(expected.num_rows() > 0);
                assert_eq!(out, vec![expected], "{predicate}");
            }
        }
    }

    #[test]
    fn keeps_rows_where_predicate_is_true_and_drops_nulls() {
        let schema = Schema::new(vec![Field::new("a", DataType::Int64, true)]);
        let a: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(5), Some(7)]));
        let batch = RecordBatch::try_new(Arc::new(schema.clone()), vec![a]).unwrap();
        let predicate = Arc::new(BinaryExpr::new(
            col("a", &schema).unwrap(),
            BinaryOp::Gt,
            lit(2i64),
        ));
        let mut op = FilterFactory::new(predicate).create(&ctx()).unwrap();
        let mut out = Vec::new();
        op.process_batch(batch.clone(), &mut out).unwrap();
        let kept = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(kept.values(), &[5, 7]);

        let none = Arc::new(BinaryExpr::new(
            col("a", &schema).unwrap(),
            BinaryOp::Gt,
            lit(100i64),
        ));
        let mut op = FilterFactory::new(none).create(&ctx()).unwrap();
        let mut out = Vec::new();
        op.process_batch(batch, &mut out).unwrap();
        assert!(out.is_empty(), "an empty result sends no batch");
    }
}
