//! Flink's split-distinct optimisation (`SET
//! 'table.optimizer.distinct-agg.split.enabled' = 'true'`): a non-windowed
//! `GROUP BY k` with `COUNT(DISTINCT x)` is planned as two aggregates. The
//! first groups by `k` and a bucket of `x` (`hash(x) % buckets`), so a hot
//! `k` spreads over every subtask, each holding the distinct values of its
//! buckets; the second sums the buckets' counts per `k` over the first's
//! updates. Buckets split the distinct values, so the sums are exact.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array};
use arrow::datatypes::DataType;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::common::{ExprSchema, Result, ScalarValue, exec_err};
use datafusion::functions_aggregate::expr_fn::sum;
use datafusion::logical_expr::expr::{Cast, ScalarFunction};
use datafusion::logical_expr::{
    Aggregate, ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility, lit,
};

/// `Aggregate` `a` as the two aggregates of the split, when it qualifies:
/// every DISTINCT aggregate is a `COUNT` or `SUM` of one same column, and
/// the others are `COUNT` or `SUM` (which the second aggregate sums), none
/// ordered. The caller keeps windows and sessions out.
pub(super) fn split(a: &Aggregate, buckets: u32) -> Result<Option<LogicalPlan>> {
    // The split's own first aggregate (grouped by a bucket) is not split again.
    let bucketed = |g: &Expr| matches!(g, Expr::ScalarFunction(f) if f.func.name() == BUCKET);
    if a.group_expr
        .iter()
        .any(|g| matches!(g, Expr::GroupingSet(_)) || bucketed(g))
    {
        return Ok(None);
    }
    let mut distinct: Option<&Expr> = None;
    for e in &a.aggr_expr {
        let Expr::AggregateFunction(f) = e else {
            return Ok(None);
        };
        let params = &f.params;
        if !matches!(f.func.name(), "count" | "sum")
            || !params.order_by.is_empty()
            || params.null_treatment.is_some()
        {
            return Ok(None);
        }
        if params.distinct {
            let [arg] = params.args.as_slice() else {
                return Ok(None);
            };
            match distinct {
                Some(d) if d != arg => return Ok(None),
                _ => distinct = Some(arg),
            }
        }
    }
    let Some(value) = distinct else {
        return Ok(None);
    };
    let bucket = Expr::ScalarFunction(ScalarFunction::new_udf(
        Arc::new(ScalarUDF::new_from_impl(Bucket::new())),
        vec![value.clone(), lit(i64::from(buckets.max(1)))],
    ));
    let mut groups = a.group_expr.clone();
    groups.push(bucket);
    let first = LogicalPlanBuilder::from(a.input.as_ref().clone())
        .aggregate(groups, a.aggr_expr.clone())?
        .build()?;
    let keys = a.group_expr.len();
    let columns = first.schema().columns();
    let second = LogicalPlanBuilder::from(first)
        .aggregate(
            columns[..keys].iter().cloned().map(Expr::Column),
            columns[keys + 1..]
                .iter()
                .map(|c| sum(Expr::Column(c.clone()))),
        )?
        .build()?;
    // The original's names and types, for the plan above it.
    let named = second
        .schema()
        .columns()
        .into_iter()
        .zip(a.schema.iter())
        .map(|(column, (qualifier, field))| {
            let mut e = Expr::Column(column.clone());
            if second.schema().field_from_column(&column)?.data_type() != field.data_type() {
                e = Expr::Cast(Cast::new(Box::new(e), field.data_type().clone()));
            }
            Ok(e.alias_qualified(qualifier.cloned(), field.name()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(
        LogicalPlanBuilder::from(second).project(named)?.build()?,
    ))
}

/// The bucket function's name.
const BUCKET: &str = "flumen_bucket";

/// `flumen_bucket(value, buckets)`: which of `buckets` buckets a value
/// falls in, by a hash fixed across runs and subtasks.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bucket {
    signature: Signature,
}

impl Bucket {
    fn new() -> Self {
        Bucket {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Bucket {
    fn name(&self) -> &str {
        BUCKET
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [
            value,
            ColumnarValue::Scalar(ScalarValue::Int64(Some(buckets))),
        ] = args.args.as_slice()
        else {
            return exec_err!("flumen_bucket takes a value and a constant bucket count");
        };
        let values = value.to_array(args.number_rows)?;
        let mut hashes = vec![0; values.len()];
        let state = RandomState::with_seed(0x5eed_b0c4_e7d1_5717);
        create_hashes(&[values], &state, &mut hashes)?;
        let buckets = buckets.unsigned_abs().max(1);
        let out = Int64Array::from_iter_values(hashes.iter().map(|h| (h % buckets) as i64));
        Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
    }
}
