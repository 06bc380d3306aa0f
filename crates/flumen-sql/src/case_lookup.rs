//! `CASE WHEN e = 'a' THEN x WHEN e = 'b' THEN y … ELSE z END`, every branch
//! comparing one same expression to a constant with a constant result, in
//! one pass: `e` evaluated once, each comparison over the whole column, the
//! `ELSE` over only the rows no branch took (and only the columns it
//! reads). DataFusion's CASE copies the rows still open for every branch
//! that takes some (Nexmark q21's four hot channels copied each bid's URL
//! nearly three times over).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Datum, RecordBatch, Scalar};
use arrow::buffer::BooleanBuffer;
use arrow::compute::kernels::cmp::eq;
use arrow::compute::{filter_record_batch, interleave};
use arrow::datatypes::{DataType, Schema};
use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, CaseExpr, Literal};

/// The one-pass CASE.
#[derive(Debug)]
struct CaseLookup {
    /// The expression every branch compares.
    subject: Arc<dyn PhysicalExpr>,
    /// Each branch's constant to compare with and its result, in order,
    /// as one-row arrays made once for every batch.
    branches: Vec<(Scalar<ArrayRef>, Scalar<ArrayRef>)>,
    /// The `ELSE`, over a batch of only the `used` columns.
    otherwise: Option<Arc<dyn PhysicalExpr>>,
    used: Vec<usize>,
    /// The original CASE, for its type, nullability and text.
    case: Arc<dyn PhysicalExpr>,
}

impl PartialEq for CaseLookup {
    fn eq(&self, other: &Self) -> bool {
        self.case.eq(&other.case)
    }
}

impl Eq for CaseLookup {}

impl Hash for CaseLookup {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.case.hash(state);
    }
}

impl fmt::Display for CaseLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.case)
    }
}

impl CaseLookup {
    /// `case` as a one-pass CASE, when it has that shape.
    fn of(case: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Option<Self>> {
        let Some(c) = case.downcast_ref::<CaseExpr>() else {
            return Ok(None);
        };
        if c.expr().is_some() || c.when_then_expr().is_empty() {
            return Ok(None);
        }
        let result_type = case.data_type(schema)?;
        let mut subject: Option<&Arc<dyn PhysicalExpr>> = None;
        let mut branches = Vec::new();
        for (when, then) in c.when_then_expr() {
            let Some(b) = when.downcast_ref::<BinaryExpr>() else {
                return Ok(None);
            };
            let (Some(value), Some(result)) = (
                b.right().downcast_ref::<Literal>(),
                then.downcast_ref::<Literal>(),
            ) else {
                return Ok(None);
            };
            let same = subject.is_none_or(|s| s.eq(b.left()));
            if *b.op() != Operator::Eq
                || !same
                || result.value().data_type() != result_type
                || value.value().data_type() != b.left().data_type(schema)?
            {
                return Ok(None);
            }
            subject = Some(b.left());
            branches.push((
                Scalar::new(value.value().to_array()?),
                Scalar::new(result.value().to_array()?),
            ));
        }
        let Some(subject) = subject else {
            return Ok(None);
        };
        let (otherwise, used) = match c.else_expr() {
            Some(e) if e.data_type(schema)? != result_type => return Ok(None),
            Some(e) => {
                let (e, used) = flumen_operators::on_used_columns(e)?;
                (Some(e), used)
            }
            None => (None, Vec::new()),
        };
        Ok(Some(CaseLookup {
            subject: subject.clone(),
            branches,
            otherwise,
            used,
            case: case.clone(),
        }))
    }

    fn result_type(&self, batch: &RecordBatch) -> Result<DataType> {
        self.case.data_type(batch.schema_ref())
    }

    fn evaluate_array(&self, batch: &RecordBatch) -> Result<ArrayRef> {
        let rows = batch.num_rows();
        let subject = self.subject.evaluate(batch)?.into_array(rows)?;
        // The rows no earlier branch took, and each branch's rows.
        let mut open = BooleanBuffer::new_set(rows);
        let mut taken = Vec::with_capacity(self.branches.len());
        for (value, _) in &self.branches {
            let equal = eq(&subject, value)?;
            // A null comparison takes no row.
            let hit = match equal.nulls() {
                Some(n) => equal.values() & n.inner(),
                None => equal.values().clone(),
            };
            let hit = &hit & &open;
            open = &open & &!&hit;
            taken.push(hit);
        }
        let count = open.count_set_bits();
        let otherwise = self.otherwise(batch, &open, count)?;
        if count == rows {
            return Ok(otherwise);
        }
        // Each row's source: (array, row) of the branches' results, then
        // the ELSE's values at the open rows in order; each result is
        // copied once.
        let sources: Vec<&dyn Array> = self
            .branches
            .iter()
            .map(|(_, then)| then.get().0)
            .chain(std::iter::once(otherwise.as_ref()))
            .collect();
        let open_source = self.branches.len();
        let mut from = vec![(open_source, 0); rows];
        for (b, hit) in taken.iter().enumerate() {
            for row in hit.set_indices() {
                from[row] = (b, 0);
            }
        }
        for (next, row) in open.set_indices().enumerate() {
            from[row].1 = next;
        }
        Ok(interleave(&sources, &from)?)
    }

    /// The `ELSE` at the `open` rows (`count` of them), evaluated over
    /// those rows only, in their order; nulls without an `ELSE`.
    fn otherwise(
        &self,
        batch: &RecordBatch,
        open: &BooleanBuffer,
        count: usize,
    ) -> Result<ArrayRef> {
        let Some(otherwise) = self.otherwise.as_ref().filter(|_| count > 0) else {
            return Ok(arrow::array::new_null_array(
                &self.result_type(batch)?,
                count,
            ));
        };
        let columns = batch.project(&self.used)?;
        if count == batch.num_rows() {
            return otherwise.evaluate(&columns)?.into_array(count);
        }
        let picked = filter_record_batch(&columns, &BooleanArray::new(open.clone(), None))?;
        otherwise.evaluate(&picked)?.into_array(count)
    }
}

impl PhysicalExpr for CaseLookup {
    fn data_type(&self, input_schema: &Schema) -> Result<DataType> {
        self.case.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.case.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Array(self.evaluate_array(batch)?))
    }

    /// The original CASE: whoever walks the tree (collecting the columns
    /// read, say) sees every column this reads.
    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.case]
    }

    /// A rewritten CASE (columns renumbered, say) is evaluated as
    /// DataFusion's: the same rows, without the one pass.
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(children[0].clone())
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.case.fmt_sql(f)
    }
}

/// `expr` with every CASE of constant comparisons of one expression
/// evaluated in one pass; other expressions stay as they are.
pub(crate) fn one_pass_cases(
    expr: Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Result<Arc<dyn PhysicalExpr>> {
    expr.transform_up(|e| match CaseLookup::of(&e, schema)? {
        Some(lookup) => Ok(Transformed::yes(Arc::new(lookup) as Arc<dyn PhysicalExpr>)),
        None => Ok(Transformed::no(e)),
    })
    .data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use datafusion::physical_expr::expressions::{binary, case, col, lit};

    fn batch() -> RecordBatch {
        let channels = [
            Some("apple"),
            None,
            Some("x"),
            Some("google"),
            Some("apple"),
            Some("y"),
            Some("baidu"),
        ];
        RecordBatch::try_from_iter([
            (
                "channel",
                Arc::new(StringArray::from(channels.to_vec())) as ArrayRef,
            ),
            (
                "url",
                Arc::new(StringArray::from(vec![
                    Some("u0"),
                    Some("u1"),
                    None,
                    Some("u3"),
                    Some("u4"),
                    Some("u5"),
                    Some("u6"),
                ])),
            ),
            (
                "n",
                Arc::new(Int64Array::from(vec![0, 1, 2, 3, 4, 5, 6])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    /// `CASE WHEN channel = 'apple' THEN '0' WHEN channel = 'google' THEN '1'
    /// WHEN channel = 'apple' THEN '9' [ELSE url] END`.
    fn channel_case(otherwise: Option<&str>, schema: &Schema) -> Arc<dyn PhysicalExpr> {
        let when = |v: &str| {
            binary(
                col("channel", schema).unwrap(),
                Operator::Eq,
                lit(v),
                schema,
            )
            .unwrap()
        };
        case(
            None,
            vec![
                (when("apple"), lit("0")),
                (when("google"), lit("1")),
                (when("apple"), lit("9")),
            ],
            otherwise.map(|c| col(c, schema).unwrap()),
        )
        .unwrap()
    }

    /// The one pass gives DataFusion's CASE row for row: the first branch
    /// taken wins, a null never equals, the ELSE reads its own column at the
    /// rows no branch took, and without an ELSE those rows are null.
    #[test]
    fn a_one_pass_case_equals_datafusions() {
        let batch = batch();
        let schema = batch.schema();
        // The whole batch, rows every branch or none took, and one row.
        let parts = [(0, 7), (0, 1), (3, 2), (1, 2), (5, 1)];
        for otherwise in [Some("url"), None] {
            let original = channel_case(otherwise, &schema);
            let lookup = CaseLookup::of(&original, &schema).unwrap().unwrap();
            for (offset, len) in parts {
                let part = batch.slice(offset, len);
                let want = original.evaluate(&part).unwrap().into_array(len).unwrap();
                let got = lookup.evaluate_array(&part).unwrap();
                assert_eq!(&got, &want, "ELSE {otherwise:?}, rows {offset}+{len}");
            }
        }
        let want = StringArray::from(vec![
            Some("0"),
            Some("u1"),
            None,
            Some("1"),
            Some("0"),
            Some("u5"),
            Some("u6"),
        ]);
        let lookup = CaseLookup::of(&channel_case(Some("url"), &schema), &schema)
            .unwrap()
            .unwrap();
        assert_eq!(
            lookup.evaluate_array(&batch).unwrap().as_ref(),
            &want as &dyn Array
        );
    }

    /// Only comparisons of one expression with constants, giving constants,
    /// take the one pass.
    #[test]
    fn other_cases_stay_as_they_are() {
        let batch = batch();
        let schema = batch.schema();
        let channel = col("channel", &schema).unwrap();
        let url = col("url", &schema).unwrap();
        let eq = |l: &Arc<dyn PhysicalExpr>, v: &str| {
            binary(l.clone(), Operator::Eq, lit(v), &schema).unwrap()
        };
        let not_constant = case(None, vec![(eq(&channel, "apple"), url.clone())], None).unwrap();
        let two_subjects = case(
            None,
            vec![
                (eq(&channel, "apple"), lit("0")),
                (eq(&url, "u1"), lit("1")),
            ],
            None,
        )
        .unwrap();
        let not_equal = case(
            None,
            vec![(
                binary(channel.clone(), Operator::NotEq, lit("apple"), &schema).unwrap(),
                lit("0"),
            )],
            None,
        )
        .unwrap();
        for e in [not_constant, two_subjects, not_equal] {
            assert!(CaseLookup::of(&e, &schema).unwrap().is_none(), "{e}");
            let rewritten = one_pass_cases(e.clone(), &schema).unwrap();
            assert!(rewritten.downcast_ref::<CaseExpr>().is_some(), "{e}");
        }
        let rewritten = one_pass_cases(channel_case(Some("url"), &schema), &schema).unwrap();
        assert!(rewritten.downcast_ref::<CaseLookup>().is_some());
    }
}
