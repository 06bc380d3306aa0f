//! Planning TopN: a filter `rank <= N` over `ROW_NUMBER()`, `RANK()` or
//! `DENSE_RANK()` `OVER (PARTITION BY … ORDER BY …)` becomes one TopN
//! operator behind a hash exchange on the partition key.

use std::sync::Arc;

use arrow::compute::SortOptions;
use arrow::datatypes::{Field, Schema};
use datafusion::common::{Column as LogicalColumn, ScalarValue};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Filter, LogicalPlan, Operator, Window};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use flumen_operators::{ProjectionFactory, RankFunction, TopNFactory, TopNWindow};
use flumen_runtime::{JobGraph, NodeKind, Partitioning};
use flumen_types::{Result, op_field};

use super::Planner;
use super::streaming::{KeyFacts, Stream, stream_schema};
use crate::errors::SourcePos;

/// A TopN found under a filter.
pub(super) struct TopNPattern<'a> {
    /// Projections and aliases between the filter and the window, top first.
    pub chain: Vec<&'a LogicalPlan>,
    /// The window node computing the rank.
    pub window: &'a Window,
    /// Which of its window expressions is the rank.
    pub expr: usize,
    /// Rows numbered up to this are kept.
    pub limit: usize,
}

/// `rank <= N`, `rank < N`, `rank = 1` (either side) as the rank column and N.
fn rank_bound(e: &Expr) -> Option<(&LogicalColumn, usize)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return None;
    };
    let (column, op, value) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) => (c, *op, v),
        (Expr::Literal(v, _), Expr::Column(c)) => (c, op.swap()?, v),
        _ => return None,
    };
    let n = match value {
        ScalarValue::Int64(Some(n)) => *n,
        ScalarValue::UInt64(Some(n)) => i64::try_from(*n).ok()?,
        ScalarValue::Int32(Some(n)) => i64::from(*n),
        _ => return None,
    };
    let limit = match op {
        Operator::LtEq => n,
        Operator::Lt => n - 1,
        Operator::Eq if n == 1 => 1,
        _ => return None,
    };
    (limit >= 1).then_some((column, limit as usize))
}

/// Finds a TopN: a conjunct of `f` bounding a ranking window function's
/// output, reached through projections that only pass it on.
pub(super) fn top_n_of(f: &Filter) -> Option<TopNPattern<'_>> {
    split_conjunction(&f.predicate)
        .into_iter()
        .find_map(|conjunct| {
            let (column, limit) = rank_bound(conjunct)?;
            let mut column = column.clone();
            let mut plan = f.input.as_ref();
            let mut chain = Vec::new();
            loop {
                let index = plan.schema().index_of_column(&column).ok()?;
                match plan {
                    LogicalPlan::Projection(p) => match p.expr[index].clone().unalias_nested().data
                    {
                        Expr::Column(inner) => {
                            column = inner;
                            chain.push(plan);
                            plan = &p.input;
                        }
                        _ => return None,
                    },
                    LogicalPlan::SubqueryAlias(a) => {
                        column = LogicalColumn::from(a.input.schema().qualified_field(index));
                        chain.push(plan);
                        plan = &a.input;
                    }
                    LogicalPlan::Window(w) => {
                        let expr = index.checked_sub(w.input.schema().fields().len())?;
                        return Some(TopNPattern {
                            chain,
                            window: w,
                            expr,
                            limit,
                        });
                    }
                    _ => return None,
                }
            }
        })
}

impl Planner {
    /// The TopN operator for `pattern`: its input, the partition and order
    /// columns, a hash exchange on the partition, and a windowed or updating
    /// TopN depending on whether the partition holds an event-time window.
    pub(super) async fn plan_top_n(
        &self,
        pattern: &TopNPattern<'_>,
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<Stream> {
        let w = pattern.window;
        if w.window_expr.len() != 1 {
            return Err(pos.error(
                "a TopN takes one window function in its OVER query; compute other window functions separately",
            ));
        }
        let Expr::WindowFunction(wf) = w.window_expr[pattern.expr].clone().unalias_nested().data
        else {
            return Err(pos.error("the ranked column is not a window function"));
        };
        let name = wf.fun.name().to_string();
        let function = match name.as_str() {
            "row_number" => RankFunction::RowNumber,
            "rank" => RankFunction::Rank,
            "dense_rank" => RankFunction::DenseRank,
            other => {
                return Err(pos.error(format!(
                    "window function {other}() is not supported in streaming queries; \
                     use ROW_NUMBER(), RANK() or DENSE_RANK() OVER (PARTITION BY … ORDER BY …) filtered by <= N (TopN)"
                )));
            }
        };
        if wf.params.order_by.is_empty() {
            return Err(pos.error(format!(
                "a TopN needs ORDER BY: {}() OVER (PARTITION BY … ORDER BY <column> DESC) tells which rows come first",
                name.to_uppercase()
            )));
        }
        let input = Box::pin(self.plan_stream(&w.input, graph, pos)).await?;
        let partition_by = &wf.params.partition_by;
        let mut keys: Vec<Expr> = partition_by.clone();
        keys.extend(wf.params.order_by.iter().map(|s| s.expr.clone()));
        let width = w.input.schema().fields().len();
        let bounded = input.bounded;
        let (input, columns) = self.with_keys(input, w.input.schema(), &keys, graph, pos)?;
        let (partition_columns, order) = columns.split_at(partition_by.len());
        let order_columns = order
            .iter()
            .zip(&wf.params.order_by)
            .map(|(&c, s)| {
                (
                    c,
                    SortOptions {
                        descending: !s.asc,
                        nulls_first: s.nulls_first,
                    },
                )
            })
            .collect();
        let window = partition_by
            .iter()
            .zip(partition_columns)
            .find_map(|(e, &c)| {
                self.event_time_window_size(e, &w.input)
                    .map(|size_ns| TopNWindow { column: c, size_ns })
            });
        // An updating input's op column follows its own columns.
        let op_column = input.updating.as_ref().map(|_| width);
        if let (Some(_), Some(part)) = (window, &input.updating) {
            return Err(pos.error(format!(
                "a TopN per event-time window over an updating input ({part}) is not supported; rank the append-only stream"
            )));
        }
        let mut fields: Vec<Field> = w.schema.as_arrow().fields()[..width]
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let rank = w.schema.as_arrow().field(width + pattern.expr);
        fields.push(Field::new(
            rank.name(),
            arrow::datatypes::DataType::UInt64,
            false,
        ));
        let updating = window.is_none().then(|| {
            fields.push(op_field());
            format!(
                "{}() OVER (PARTITION BY …) <= {} without an event-time window in the partition changes a key's rows as better ones arrive",
                name.to_uppercase(),
                pattern.limit
            )
        });
        let schema = Arc::new(Schema::new(fields));
        // Partitions that hold rows of one closing key close with it.
        let closes = match (&input.keys.closing, window, op_column) {
            (Some((key, expiry)), None, None)
                if key.iter().all(|k| partition_columns.contains(k)) =>
            {
                Some(*expiry)
            }
            _ => None,
        };
        let factory = TopNFactory {
            input: input.schema.clone(),
            width,
            partition_columns: partition_columns.to_vec(),
            order_columns,
            function,
            limit: pattern.limit,
            window,
            state_ttl_ns: self.state_ttl_ns,
            closes,
            output: schema.clone(),
            op_column,
        };
        // Rows a join already holds by the partition key stay where they
        // are: the TopN is chained to the join.
        let node = if input.hash_key.as_deref() == Some(partition_columns) {
            self.add(
                graph,
                input.node,
                NodeKind::Operator(Arc::new(factory)),
                Partitioning::Forward,
            )
        } else {
            let node = graph.add_node(
                NodeKind::Operator(Arc::new(factory)),
                self.options.parallelism,
            );
            graph.connect(
                input.node,
                node,
                Partitioning::Hash(partition_columns.to_vec()),
            );
            node
        };
        Ok(Stream {
            node,
            schema,
            updating,
            bounded,
            bounded_bytes: None,
            hash_key: None,
            keys: KeyFacts::default(),
        })
    }

    /// `ORDER BY … LIMIT n`: a TopN over one partition holding every row
    /// (ROW_NUMBER by the sort order), its number dropped again; an
    /// updating result, since later rows can take a place in the first n.
    pub(super) async fn plan_sort_limit(
        &self,
        sort: &datafusion::logical_expr::Sort,
        limit: usize,
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<Stream> {
        let input = Box::pin(self.plan_stream(&sort.input, graph, pos)).await?;
        let width = sort.input.schema().fields().len();
        let op_column = input.updating.as_ref().map(|_| width);
        let order: Vec<Expr> = sort.expr.iter().map(|s| s.expr.clone()).collect();
        let bounded = input.bounded;
        let (input, columns) = self.with_keys(input, sort.input.schema(), &order, graph, pos)?;
        let order_columns = columns
            .iter()
            .zip(&sort.expr)
            .map(|(&c, s)| {
                (
                    c,
                    SortOptions {
                        descending: !s.asc,
                        nulls_first: s.nulls_first,
                    },
                )
            })
            .collect();
        let mut fields: Vec<Field> = sort
            .input
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(
            "__flumen_rank",
            arrow::datatypes::DataType::UInt64,
            false,
        ));
        fields.push(op_field());
        let ranked = Arc::new(Schema::new(fields));
        let factory = TopNFactory {
            input: input.schema.clone(),
            width,
            partition_columns: Vec::new(),
            order_columns,
            function: RankFunction::RowNumber,
            limit,
            window: None,
            state_ttl_ns: self.state_ttl_ns,
            closes: None,
            output: ranked.clone(),
            op_column,
        };
        let node = graph.add_node(
            NodeKind::Operator(Arc::new(factory)),
            self.options.parallelism,
        );
        graph.connect(input.node, node, Partitioning::Hash(Vec::new()));
        // Drop the number, keep the op column.
        let exprs: Vec<Arc<dyn PhysicalExpr>> = (0..width)
            .chain([width + 1])
            .map(|i| Arc::new(Column::new(ranked.field(i).name(), i)) as _)
            .collect();
        let schema = stream_schema(sort.input.schema(), true);
        let kind = NodeKind::Operator(Arc::new(ProjectionFactory::new(exprs, schema.clone())));
        Ok(Stream {
            node: self.add(graph, node, kind, Partitioning::Forward),
            schema,
            updating: Some(format!(
                "ORDER BY … LIMIT {limit} keeps the first {limit} rows, which change as rows arrive"
            )),
            bounded,
            bounded_bytes: None,
            hash_key: None,
            keys: KeyFacts::default(),
        })
    }
}
