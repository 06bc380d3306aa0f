//! Lookup joins: a stream joined with a table of a lookup connector
//! (PostgreSQL, Redis) written `JOIN t FOR SYSTEM_TIME AS OF s.time`. The
//! table is not read as a stream; each stream row reads the rows with its
//! key when it arrives, in the stream's own subtask (no exchange).

use std::sync::Arc;

use arrow::datatypes::{Field, Schema};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Column as LogicalColumn, DFSchema};
use datafusion::logical_expr::logical_plan::TableScan;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, ExprSchemable, JoinType, LogicalPlan};
use datafusion::physical_expr::expressions::Column;
use flumen_operators::{JoinKind, LookupJoinFactory, ProjectionFactory};
use flumen_runtime::{JobGraph, NodeKind, Partitioning};
use flumen_types::{Result, op_field};

use super::Planner;
use super::streaming::{KeyFacts, Stream, stream_schema};
use crate::errors::SourcePos;

/// The table side of a lookup join: the scan, which table column each of
/// its output columns is, and conditions on its rows written above the scan
/// (each over table columns, named as the lookup's rows name them).
pub(super) struct LookupSide<'a> {
    scan: &'a TableScan,
    columns: Vec<usize>,
    filters: Vec<Expr>,
}

/// The qualifier of the lookup's rows in the join's conditions.
const LOOKUP: &str = "__flumen_lookup";

impl LookupSide<'_> {
    /// The lookup table's name.
    pub(super) fn table(&self) -> &str {
        self.scan.table_name.table()
    }
}

/// `e` with each column of `schema` replaced by the table column `columns`
/// says it is, qualified as a lookup row's column; other columns stay.
fn to_lookup_columns(
    e: &Expr,
    schema: &DFSchema,
    columns: &[usize],
    table: &arrow::datatypes::Schema,
) -> datafusion::common::Result<Expr> {
    e.clone()
        .transform(|e| match e {
            Expr::Column(c) => match schema.index_of_column(&c) {
                Ok(index) => Ok(Transformed::yes(Expr::Column(LogicalColumn::new(
                    Some(LOOKUP),
                    table.field(columns[index]).name(),
                )))),
                Err(_) => Ok(Transformed::no(Expr::Column(c))),
            },
            other => Ok(Transformed::no(other)),
        })
        .data()
}

impl Planner {
    /// Whether a table is read by key in lookup joins rather than as a stream.
    pub(super) fn is_lookup_table(&self, table: &str) -> bool {
        self.tables.get(table).is_some_and(|spec| {
            flumen_connectors::connector(spec.connector())
                .is_some_and(|c| c.looks_up() && !c.reads())
        })
    }

    /// `plan` as the table side of a lookup join, if it is a lookup table
    /// (aliased, its columns picked, with conditions on its rows).
    pub(super) fn lookup_side<'a>(&self, plan: &'a LogicalPlan) -> Option<LookupSide<'a>> {
        match plan {
            LogicalPlan::SubqueryAlias(a) => self.lookup_side(&a.input),
            LogicalPlan::Filter(f) => {
                let mut side = self.lookup_side(&f.input)?;
                let table = &self.tables[side.table()].schema;
                let filter =
                    to_lookup_columns(&f.predicate, f.input.schema(), &side.columns, table).ok()?;
                side.filters.push(filter);
                Some(side)
            }
            LogicalPlan::Projection(p) => {
                let mut side = self.lookup_side(&p.input)?;
                let columns = p
                    .expr
                    .iter()
                    .map(|e| match e.clone().unalias_nested().data {
                        Expr::Column(c) => p.input.schema().index_of_column(&c).ok(),
                        _ => None,
                    })
                    .map(|index| index.map(|i| side.columns[i]))
                    .collect::<Option<Vec<usize>>>()?;
                side.columns = columns;
                Some(side)
            }
            LogicalPlan::TableScan(scan) if self.is_lookup_table(scan.table_name.table()) => {
                let all = self.tables[scan.table_name.table()].schema.fields().len();
                Some(LookupSide {
                    scan,
                    columns: scan
                        .projection
                        .clone()
                        .unwrap_or_else(|| (0..all).collect()),
                    filters: Vec::new(),
                })
            }
            _ => None,
        }
    }

    /// Joins `left` with the lookup table `side` (the join's right input).
    pub(super) async fn plan_lookup_join(
        &self,
        j: &datafusion::logical_expr::Join,
        left: Stream,
        side: LookupSide<'_>,
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<Stream> {
        let table = side.table();
        let kind = match j.join_type {
            JoinType::Inner => JoinKind::Inner,
            JoinType::Left => JoinKind::Left,
            other => {
                return Err(pos.error(format!(
                    "a lookup join (of table '{table}') must be an inner or LEFT join, not {other}"
                )));
            }
        };
        if j.on.is_empty() {
            return Err(pos.error(format!(
                "a lookup join needs an equality between the stream and a column of '{table}' (ON s.key = {table}.key)"
            )));
        }
        if !side.scan.filters.is_empty() {
            return Err(pos.error(format!(
                "conditions pushed into the scan of lookup table '{table}' are not supported"
            )));
        }
        let spec = &self.tables[table];
        if self.computed.contains_key(table) {
            return Err(pos.error(format!(
                "table '{table}' is looked up by key, which a table with computed columns cannot be yet"
            )));
        }
        let right_schema = j.right.schema();
        // Conditions on the table's rows are conditions of the join: for a
        // LEFT join a row that fails them is no match.
        let mut conditions = side.filters.clone();
        if let Some(f) = &j.filter {
            conditions.push(
                to_lookup_columns(f, right_schema, &side.columns, &spec.schema)
                    .map_err(|e| pos.datafusion(e))?,
            );
        }
        let condition = conjunction(conditions);
        // The rows read: the columns the join outputs, then those only its
        // conditions use.
        let mut fetched = side.columns.clone();
        if let Some(c) = &condition {
            for column in c.column_refs() {
                if column
                    .relation
                    .as_ref()
                    .is_some_and(|r| r.table() == LOOKUP)
                {
                    let index = spec.schema.index_of(&column.name)?;
                    if !fetched.contains(&index) {
                        fetched.push(index);
                    }
                }
            }
        }
        let rows_schema = Arc::new(spec.schema.project(&fetched)?);
        let rows_df = DFSchema::try_from_qualified_schema(LOOKUP, &rows_schema)
            .map_err(|e| pos.datafusion(e))?;
        let mut keys = Vec::new();
        let mut left_keys = Vec::new();
        for (l, r) in &j.on {
            let Expr::Column(c) = r else {
                return Err(pos.error(format!(
                    "a lookup join matches columns of '{table}' as they are; {r} is an expression (put it on the stream's side, or CAST the stream's column)"
                )));
            };
            let index = right_schema
                .index_of_column(c)
                .map_err(|e| pos.datafusion(e))?;
            let column = side.columns[index];
            keys.push(column);
            // The stream's key takes the table column's type.
            let wanted = spec.schema.field(column).data_type();
            let key = match l.get_type(j.left.schema()).map_err(|e| pos.datafusion(e))? {
                t if &t == wanted => l.clone(),
                _ => l
                    .clone()
                    .cast_to(wanted, j.left.schema())
                    .map_err(|e| pos.datafusion(e))?,
            };
            left_keys.push(
                self.ctx
                    .state()
                    .create_physical_expr(key, j.left.schema())
                    .map_err(|e| pos.datafusion(e))?,
            );
        }
        let joined = j
            .left
            .schema()
            .join(&rows_df)
            .map_err(|e| pos.datafusion(e))?;
        let filter = match condition {
            Some(f) => Some(
                self.ctx
                    .state()
                    .create_physical_expr(f, &joined)
                    .map_err(|e| pos.datafusion(e))?,
            ),
            None => None,
        };
        let lookup = flumen_connectors::lookup_factory(spec, &fetched, &keys)
            .await
            .map_err(|e| pos.wrap(e))?;
        let cache = flumen_connectors::lookup_cache(spec).map_err(|e| pos.wrap(e))?;
        let updating = left.updating.is_some();
        let width = left.width();
        let mut fields: Vec<Field> = joined
            .as_arrow()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        if updating {
            fields.push(op_field());
        }
        // The join's own columns: the stream's, then the table's it outputs.
        let schema = stream_schema(&j.schema, updating);
        let order: Vec<usize> = (0..width)
            .chain((0..side.columns.len()).map(|i| width + i))
            .chain(updating.then_some(width + fetched.len()))
            .collect();
        let reorder = order.len() != fields.len();
        let output = if reorder {
            Arc::new(Schema::new(fields))
        } else {
            schema.clone()
        };
        let factory = LookupJoinFactory {
            kind,
            keys: left_keys,
            width,
            op_column: updating.then_some(width),
            lookup,
            filter,
            cache,
            output: output.clone(),
        };
        let mut node = self.add(
            graph,
            left.node,
            NodeKind::Operator(Arc::new(factory)),
            Partitioning::Forward,
        );
        if reorder {
            let exprs = order
                .iter()
                .map(|&i| Arc::new(Column::new(output.field(i).name(), i)) as _)
                .collect();
            let kind = NodeKind::Operator(Arc::new(ProjectionFactory::new(exprs, schema.clone())));
            node = self.add(graph, node, kind, Partitioning::Forward);
        }
        Ok(Stream {
            node,
            schema,
            bounded_bytes: None,
            hash_key: None,
            keys: KeyFacts::default(),
            ..left
        })
    }
}
