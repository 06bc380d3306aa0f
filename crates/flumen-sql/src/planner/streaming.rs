//! The streaming walk: turns an optimised logical plan, bottom up, into nodes
//! of the job graph — sources, chained stateless operators, window
//! aggregates behind hash exchanges, and joins of two streams.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{Column as LogicalColumn, DFSchema, ScalarValue};
use datafusion::logical_expr::logical_plan::{FetchType, SkipType, TableScan};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, JoinType, LogicalPlan, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use flumen_operators::{
    Expiry, FilterFactory, HashJoinFactory, JoinKind, JoinSide, LimitFactory, ProjectionFactory,
    SessionColumn, UnionFactory, UnnestFactory,
};
use flumen_runtime::{JobGraph, NodeId, NodeKind, Partitioning};
use flumen_types::{OP_COLUMN, Result, op_field};

use super::Planner;
use super::top_n::top_n_of;
use crate::errors::SourcePos;
use crate::tvf::parse_session_alias;
use crate::watermark::ExprWatermarks;

/// A planned stream: the node that produces it and what its rows are.
pub(super) struct Stream {
    /// The last node of the stream.
    pub node: NodeId,
    /// Its rows: the logical plan's columns, then the op column if updating.
    pub schema: SchemaRef,
    /// When the stream is updating: the part of the query that makes it so.
    pub updating: Option<String>,
    /// Whether every source under it is bounded (files), so it ends by itself.
    pub bounded: bool,
    /// For a bounded source's rows, filtered or projected: the bytes of its
    /// files, which a join weighs before broadcasting the stream; `None`
    /// for anything else.
    pub bounded_bytes: Option<u64>,
    /// Columns by whose hash its subtasks already hold their rows (at the
    /// job's parallelism): what a join's output keeps of its exchanges. An
    /// operator keyed by exactly these columns takes it forward, chained,
    /// instead of through another exchange.
    pub hash_key: Option<Vec<usize>>,
    /// What is known of its rows by their keys.
    pub keys: KeyFacts,
}

/// What the planner knows of a stream's rows by their key columns, for
/// operators that can then keep less state.
#[derive(Clone, Debug, Default)]
pub(super) struct KeyFacts {
    /// Columns whose values no two rows share: an append-only source's
    /// declared `PRIMARY KEY`, passed on through filters and projections.
    pub unique: Option<Vec<usize>>,
    /// Rows equal in these columns stop coming once the watermark passes
    /// the time in the expiry's column plus its offset: an inner join's
    /// rows made from one row of a unique side, which the join frees then.
    pub closing: Option<(Vec<usize>, Expiry)>,
}

/// The arrow schema of a plan's output, with the op column appended when
/// the stream updates.
pub(super) fn stream_schema(schema: &DFSchema, updating: bool) -> SchemaRef {
    let mut fields: Vec<Field> = schema
        .as_arrow()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    if updating {
        fields.push(op_field());
    }
    Arc::new(Schema::new(fields))
}

impl Stream {
    pub(super) fn width(&self) -> usize {
        self.schema.fields().len() - usize::from(self.updating.is_some())
    }
}

impl Planner {
    /// The physical expression of `expr` over `schema`, with fixed-length
    /// timestamp arithmetic done on integers (`time_shift`), regular
    /// expressions only tested where only a match matters (`regexp_extract`)
    /// and CASEs of constant comparisons in one pass (`case_lookup`).
    fn physical(
        &self,
        expr: Expr,
        schema: &DFSchema,
    ) -> datafusion::common::Result<Arc<dyn PhysicalExpr>> {
        let expr = crate::regexp_extract::match_tests(expr)?;
        let physical = self.ctx.state().create_physical_expr(expr, schema)?;
        let physical = crate::time_shift::fast_time_arithmetic(physical, schema.as_arrow())?;
        crate::case_lookup::one_pass_cases(physical, schema.as_arrow())
    }

    pub(super) fn add(
        &self,
        graph: &mut JobGraph,
        input: NodeId,
        kind: NodeKind,
        partitioning: Partitioning,
    ) -> NodeId {
        // A forward edge keeps the input's parallelism (a LIMIT runs as one
        // subtask, and what follows it stays with it).
        let parallelism = match partitioning {
            Partitioning::Forward => graph.nodes()[input].parallelism,
            _ => self.options.parallelism,
        };
        let node = graph.add_node(kind, parallelism);
        graph.connect(input, node, partitioning);
        node
    }

    /// The first `limit` rows of `input`, counted by one subtask.
    fn limit(
        &self,
        input: Stream,
        limit: usize,
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<Stream> {
        if let Some(part) = &input.updating {
            return Err(pos.error(format!(
                "LIMIT over an updating input ({part}) is not supported; use ORDER BY … LIMIT n"
            )));
        }
        let node = graph.add_node(NodeKind::Operator(Arc::new(LimitFactory { limit })), 1);
        graph.connect(input.node, node, Partitioning::Rebalance);
        Ok(Stream {
            node,
            hash_key: None,
            ..input
        })
    }

    /// Plans `plan` and everything below it; returns the stream it produces.
    pub(super) async fn plan_stream(
        &self,
        plan: &LogicalPlan,
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<Stream> {
        match plan {
            LogicalPlan::TableScan(_) => self.plan_scan(plan, graph, pos).await,
            LogicalPlan::SubqueryAlias(a) => match parse_session_alias(a.alias.table()) {
                Some((gap_ns, time)) => {
                    Box::pin(self.plan_session_rows(a, gap_ns, &time, graph, pos)).await
                }
                None => Box::pin(self.plan_stream(&a.input, graph, pos)).await,
            },
            LogicalPlan::Projection(p) => {
                let input = Box::pin(self.plan_stream(&p.input, graph, pos)).await?;
                self.project(p, input, graph, pos)
            }
            LogicalPlan::Filter(f) => {
                let input = match top_n_of(f) {
                    Some(top_n) => {
                        let mut stream = Box::pin(self.plan_top_n(&top_n, graph, pos)).await?;
                        for step in top_n.chain.iter().rev() {
                            if let LogicalPlan::Projection(p) = step {
                                stream = self.project(p, stream, graph, pos)?;
                            }
                        }
                        // The TopN emits only rows within the bound; other
                        // conditions of the filter still apply.
                        if split_conjunction(&f.predicate).len() == 1 {
                            return Ok(stream);
                        }
                        stream
                    }
                    None => Box::pin(self.plan_stream(&f.input, graph, pos)).await?,
                };
                no_subquery(&f.predicate, pos)?;
                let expr = self
                    .physical(f.predicate.clone(), f.input.schema())
                    .map_err(|e| pos.datafusion(e))?;
                let kind = NodeKind::Operator(Arc::new(FilterFactory::new(expr)));
                Ok(Stream {
                    node: self.add(graph, input.node, kind, Partitioning::Forward),
                    ..input
                })
            }
            LogicalPlan::Unnest(u) => {
                let input = Box::pin(self.plan_stream(&u.input, graph, pos)).await?;
                if input.updating.is_some() {
                    return Err(pos.error("UNNEST of an updating result is not supported"));
                }
                let [(list_column, list)] = u.list_type_columns.as_slice() else {
                    return Err(pos.error("UNNEST of more than one column is not supported yet"));
                };
                if list.depth != 1 || !u.struct_type_columns.is_empty() {
                    return Err(pos.error("only UNNEST of one level of a list is supported yet"));
                }
                let schema = Arc::new(u.schema.as_arrow().clone());
                let address = u as *const datafusion::logical_expr::logical_plan::Unnest as usize;
                let last_only = self.take_pane_unnest(address);
                let factory = UnnestFactory::new(
                    *list_column,
                    u.dependency_indices.clone(),
                    schema.clone(),
                    last_only,
                );
                Ok(Stream {
                    node: self.add(
                        graph,
                        input.node,
                        NodeKind::Operator(Arc::new(factory)),
                        Partitioning::Forward,
                    ),
                    schema,
                    updating: None,
                    bounded: input.bounded,
                    bounded_bytes: None,
                    hash_key: None,
                    keys: KeyFacts::default(),
                })
            }
            LogicalPlan::Aggregate(a) => {
                // Session rows are only meaningful to the session aggregate
                // that merges them.
                let sessions = a
                    .group_expr
                    .iter()
                    .any(|g| session_column(g, &a.input).is_some());
                let windowed = a.group_expr.iter().any(|g| {
                    window_of(g, &a.input).is_some() || window_call(g, &a.input).is_some()
                });
                if let Some(buckets) = self.split_distinct
                    && !sessions
                    && !windowed
                    && let Some(split) =
                        super::split_distinct::split(a, buckets).map_err(|e| pos.datafusion(e))?
                {
                    return Box::pin(self.plan_stream(&split, graph, pos)).await;
                }
                if sessions {
                    self.session_rows_wanted.fetch_add(1, Ordering::Relaxed);
                }
                let mut panes = if sessions {
                    None
                } else {
                    self.pane_plan(a, pos)?
                };
                if let Some(p) = &panes {
                    self.pane_unnests().push(p.unnest);
                }
                let input = Box::pin(self.plan_stream(&a.input, graph, pos)).await;
                if sessions {
                    self.session_rows_wanted.fetch_sub(1, Ordering::Relaxed);
                }
                // Panes only if the UNNEST was planned to give last windows:
                // it takes its address out of the list when it is.
                if let Some(p) = &panes
                    && self.take_pane_unnest(p.unnest)
                {
                    panes = None;
                }
                self.plan_aggregate(a, input?, panes, graph, pos)
            }
            LogicalPlan::Union(u) => {
                let mut inputs = Vec::new();
                for input in &u.inputs {
                    inputs.push(Box::pin(self.plan_stream(input, graph, pos)).await?);
                }
                // With an updating branch the union updates too; the other
                // branches' rows become inserts.
                let updating = inputs.iter().find_map(|s| s.updating.clone());
                let schema = stream_schema(&u.schema, updating.is_some());
                let factory = UnionFactory {
                    output: schema.clone(),
                    inputs: inputs.len(),
                    insert_op: inputs
                        .iter()
                        .map(|s| updating.is_some() && s.updating.is_none())
                        .collect(),
                };
                let node = graph.add_node(
                    NodeKind::Operator(Arc::new(factory)),
                    self.options.parallelism,
                );
                for input in &inputs {
                    graph.connect(input.node, node, Partitioning::Forward);
                }
                Ok(Stream {
                    node,
                    schema,
                    updating,
                    bounded: inputs.iter().all(|s| s.bounded),
                    bounded_bytes: None,
                    hash_key: None,
                    keys: KeyFacts::default(),
                })
            }
            LogicalPlan::Join(j) => {
                if let Some(side) = self.lookup_side(&j.right) {
                    let left = Box::pin(self.plan_stream(&j.left, graph, pos)).await?;
                    return Box::pin(self.plan_lookup_join(j, left, side, graph, pos)).await;
                }
                if let Some(side) = self.lookup_side(&j.left) {
                    return Err(pos.error(format!(
                        "lookup table '{}' must be the right side of its join: FROM stream s JOIN {0} FOR SYSTEM_TIME AS OF s.time …",
                        side.table()
                    )));
                }
                let left = Box::pin(self.plan_stream(&j.left, graph, pos)).await?;
                let right = Box::pin(self.plan_stream(&j.right, graph, pos)).await?;
                match j.join_type {
                    JoinType::Right => self.plan_right_join(j, left, right, graph, pos),
                    // Right semi and anti joins are the left ones with the
                    // sides swapped; their output is the right side only.
                    JoinType::RightSemi | JoinType::RightAnti => {
                        let swapped = datafusion::logical_expr::Join {
                            left: j.right.clone(),
                            right: j.left.clone(),
                            on: j.on.iter().map(|(l, r)| (r.clone(), l.clone())).collect(),
                            join_type: j.join_type.swap(),
                            ..j.clone()
                        };
                        self.plan_join(&swapped, right, left, graph, pos)
                    }
                    _ => self.plan_join(j, left, right, graph, pos),
                }
            }
            // `ORDER BY … LIMIT n`: the first n rows so far, a global TopN.
            LogicalPlan::Limit(l) => match (l.get_skip_type(), l.get_fetch_type(), &*l.input) {
                (
                    Ok(SkipType::Literal(0)),
                    Ok(FetchType::Literal(Some(n))),
                    LogicalPlan::Sort(sort),
                ) if n > 0 => self.plan_sort_limit(sort, n, graph, pos).await,
                // Plain `LIMIT n`: the first n rows that arrive, counted by
                // one subtask.
                (Ok(SkipType::Literal(0)), Ok(FetchType::Literal(Some(n))), _) => {
                    let input = Box::pin(self.plan_stream(&l.input, graph, pos)).await?;
                    self.limit(input, n, graph, pos)
                }
                _ => Err(pos.error(
                    "LIMIT with OFFSET is not supported in streaming queries; \
                     use LIMIT n, or ORDER BY … LIMIT n for the first n rows by an order",
                )),
            },
            LogicalPlan::Sort(sort) if sort.fetch.is_some_and(|n| n > 0) => {
                let n = sort.fetch.unwrap_or_default();
                self.plan_sort_limit(sort, n, graph, pos).await
            }
            other => Err(pos.error(unsupported(other))),
        }
    }

    /// A projection over `input`; an updating input's op column is kept last.
    pub(super) fn project(
        &self,
        p: &datafusion::logical_expr::Projection,
        input: Stream,
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<Stream> {
        for e in &p.expr {
            no_subquery(e, pos)?;
        }
        let mut exprs = p
            .expr
            .iter()
            .map(|e| self.physical(e.clone(), p.input.schema()))
            .collect::<datafusion::common::Result<Vec<_>>>()
            .map_err(|e| pos.datafusion(e))?;
        if input.updating.is_some() {
            exprs.push(Arc::new(Column::new(OP_COLUMN, input.width())));
        }
        let schema = stream_schema(&p.schema, input.updating.is_some());
        // The rows stay where they are: the partitioning holds if every
        // hashed column is passed through, as it is.
        let passed = |k: usize| {
            p.expr
                .iter()
                .position(|e| match e.clone().unalias_nested().data {
                    Expr::Column(c) => p.input.schema().index_of_column(&c).ok() == Some(k),
                    _ => false,
                })
        };
        let passed_all =
            |key: &Vec<usize>| -> Option<Vec<usize>> { key.iter().map(|&k| passed(k)).collect() };
        let hash_key = input.hash_key.as_ref().and_then(passed_all);
        let keys = KeyFacts {
            unique: input.keys.unique.as_ref().and_then(passed_all),
            closing: input.keys.closing.as_ref().and_then(|(key, expiry)| {
                Some((
                    passed_all(key)?,
                    Expiry {
                        column: passed(expiry.column)?,
                        ..*expiry
                    },
                ))
            }),
        };
        let kind = NodeKind::Operator(Arc::new(ProjectionFactory::new(exprs, schema.clone())));
        Ok(Stream {
            node: self.add(graph, input.node, kind, Partitioning::Forward),
            schema,
            updating: input.updating,
            bounded: input.bounded,
            bounded_bytes: input.bounded_bytes,
            hash_key,
            keys,
        })
    }

    /// The rows of a `session(…)` table function, each as a session of its
    /// own: `window_start` its time, `window_end` its time plus the gap. The
    /// session aggregate above merges them; the batch subquery's window
    /// functions are not run.
    async fn plan_session_rows(
        &self,
        a: &datafusion::logical_expr::SubqueryAlias,
        gap_ns: i64,
        time: &str,
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<Stream> {
        if self.session_rows_wanted.load(Ordering::Relaxed) == 0 {
            return Err(pos.error(
                "session(…) windows are computed by an aggregate: GROUP BY <key columns>, window_start, window_end",
            ));
        }
        let mut inner = a.input.as_ref();
        while matches!(inner, LogicalPlan::Projection(_) | LogicalPlan::Window(_)) {
            inner = inner.inputs()[0];
        }
        let ts = inner
            .schema()
            .columns()
            .into_iter()
            .find(|c| c.name == time)
            .ok_or_else(|| pos.error(format!("session: no column '{time}'")))?;
        if !self.is_event_time(inner, &ts) {
            return Err(pos.error(format!(
                "session windows need event time: '{time}' is not the event-time column of its table (declare WATERMARK FOR {time} AS …)"
            )));
        }
        let input = Box::pin(self.plan_stream(inner, graph, pos)).await?;
        let gap = datafusion::logical_expr::lit(ScalarValue::IntervalMonthDayNano(Some(
            arrow::datatypes::IntervalMonthDayNano::new(0, 0, gap_ns),
        )));
        let mut exprs = Vec::new();
        for field in a.schema.fields() {
            let logical = match field.name().as_str() {
                "window_start" => Expr::Column(ts.clone()),
                "window_end" => Expr::Column(ts.clone()) + gap.clone(),
                name => Expr::Column(
                    inner
                        .schema()
                        .columns()
                        .into_iter()
                        .find(|c| c.name == name)
                        .ok_or_else(|| pos.error(format!("session: no column '{name}'")))?,
                ),
            };
            exprs.push(
                self.physical(logical, inner.schema())
                    .map_err(|e| pos.datafusion(e))?,
            );
        }
        let schema = Arc::new(a.schema.as_arrow().clone());
        let kind = NodeKind::Operator(Arc::new(ProjectionFactory::new(exprs, schema.clone())));
        Ok(Stream {
            node: self.add(graph, input.node, kind, Partitioning::Forward),
            schema,
            updating: None,
            bounded: input.bounded,
            bounded_bytes: None,
            hash_key: None,
            keys: KeyFacts::default(),
        })
    }

    /// A source for a table scan, with its watermarks, and a projection that
    /// drops the event-time column again when only watermarks needed it.
    async fn plan_scan(
        &self,
        plan: &LogicalPlan,
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<Stream> {
        let LogicalPlan::TableScan(scan) = plan else {
            unreachable!("called for table scans only")
        };
        // DataFusion pushes a plain LIMIT into the scan.
        if let Some(limit) = scan.fetch {
            let mut whole = scan.clone();
            whole.fetch = None;
            let input =
                Box::pin(self.plan_scan(&LogicalPlan::TableScan(whole), graph, pos)).await?;
            return self.limit(input, limit, graph, pos);
        }
        let table = scan.table_name.table();
        let spec = self
            .tables
            .get(table)
            .ok_or_else(|| pos.error(format!("'{table}' is a not a connector table")))?;
        if self.is_lookup_table(table) {
            return Err(pos.error(format!(
                "table '{table}' (connector '{}') is read by key, as the right side of a lookup join: \
                 FROM stream s JOIN {table} FOR SYSTEM_TIME AS OF s.time AS t ON s.key = t.key",
                spec.connector()
            )));
        }
        // A table of change events is an updating stream: its rows, then
        // the op column.
        let changes = flumen_connectors::produces_updates(spec);
        // A source with event time always reads its event-time column, to
        // derive watermarks, and drops it again if the query does not use it.
        let event_time = self.event_times.get(table);
        if changes && event_time.is_some() {
            return Err(pos.error(format!(
                "table '{table}' holds change events (format '{}'), which have no event time: \
                 windows need an append-only table, so declare it without WATERMARK",
                spec.options.get("format").unwrap_or_default()
            )));
        }
        let computed = self.computed.get(table).map_or(&[][..], Vec::as_slice);
        if changes && !computed.is_empty() {
            return Err(pos.error(format!(
                "table '{table}' holds change events, which cannot have computed columns yet"
            )));
        }
        let read = if computed.is_empty() {
            self.read_columns(spec, scan, event_time, graph, pos)
                .await?
        } else {
            self.read_computed(spec, scan, computed, event_time, graph, pos)
                .await?
        };
        let (mut node, produced, bounded_bytes) = (read.node, read.produced, read.bounded_bytes);
        let mut schema = produced.clone();
        if let (Some(et), Some(time)) = (event_time, read.time) {
            let field = scan.source.schema().field_with_name(&et.column)?.clone();
            let one_column = Arc::new(Schema::new(vec![field]));
            let df_schema = DFSchema::try_from_qualified_schema(table, &one_column)
                .map_err(|e| pos.datafusion(e))?;
            let expr = self
                .ctx
                .state()
                .create_physical_expr(et.expr.clone(), &df_schema)
                .map_err(|e| pos.datafusion(e))?;
            let strategy = ExprWatermarks::new(time, one_column, expr, et.text.clone());
            graph.set_watermarks(node, Arc::new(strategy));
            let idle = spec.options.get("idle_timeout").unwrap_or("10 s");
            let idle_ns = crate::script::duration_nanos(idle).ok_or_else(|| {
                pos.error(format!(
                    "table '{table}': idle_timeout must be a duration such as '10 s' or '500 ms', not '{idle}'"
                ))
            })?;
            graph.set_idle_timeout(node, std::time::Duration::from_nanos(idle_ns as u64));
            if let Some(keep) = read.keep {
                let exprs = keep
                    .iter()
                    .map(|&i| Arc::new(Column::new(produced.field(i).name(), i)) as _)
                    .collect();
                schema = Arc::new(produced.project(&keep)?);
                let kind =
                    NodeKind::Operator(Arc::new(ProjectionFactory::new(exprs, schema.clone())));
                node = self.add(graph, node, kind, Partitioning::Forward);
            }
        }
        if !computed.is_empty() {
            (node, schema) =
                self.compute_columns(table, scan, computed, &produced, node, graph, pos)?;
        }
        let updating = changes.then(|| {
            format!(
                "table '{table}' of change events (format '{}')",
                spec.options.get("format").unwrap_or_default()
            )
        });
        if updating.is_some() {
            let mut fields = schema.fields().to_vec();
            fields.push(Arc::new(flumen_types::op_field()));
            schema = Arc::new(arrow::datatypes::Schema::new(fields));
        }
        // A declared primary key holds of an append-only table's rows (as
        // in Flink, NOT ENFORCED: the user vouches for it).
        let unique = match &updating {
            None if !spec.primary_key.is_empty() => spec
                .primary_key
                .iter()
                .map(|k| schema.index_of(k).ok())
                .collect(),
            _ => None,
        };
        Ok(Stream {
            node,
            schema,
            updating,
            bounded: spec.connector() == "filesystem",
            bounded_bytes,
            hash_key: None,
            keys: KeyFacts {
                unique,
                closing: None,
            },
        })
    }

    /// The source of a table without computed columns: the scan's columns,
    /// and the event-time column too when only its watermarks need it.
    async fn read_columns(
        &self,
        spec: &flumen_connectors::TableSpec,
        scan: &TableScan,
        event_time: Option<&crate::planner::EventTime>,
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<Read> {
        let mut projection = scan.projection.clone();
        let mut keep = None;
        if let (Some(et), Some(p)) = (event_time, projection.as_mut()) {
            let index = spec.schema.index_of(&et.column)?;
            if !p.contains(&index) {
                keep = Some((0..p.len()).collect::<Vec<usize>>());
                p.push(index);
            }
        }
        let (node, produced, bounded_bytes) = self
            .add_source(spec, projection.as_deref(), graph, pos)
            .await?;
        let time = event_time
            .map(|et| self.column_expr(&spec.name, &et.column, &[], &produced, pos))
            .transpose()?;
        Ok(Read {
            node,
            produced,
            bounded_bytes,
            time,
            keep,
        })
    }

    /// The source of a table with computed columns: the columns the scan
    /// wants that are not computed, those the wanted computed ones and the
    /// event time are computed from, in the order first needed.
    async fn read_computed(
        &self,
        spec: &flumen_connectors::TableSpec,
        scan: &TableScan,
        computed: &[crate::planner::ComputedColumn],
        event_time: Option<&crate::planner::EventTime>,
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<Read> {
        let full = scan.source.schema();
        let mut physical: Vec<usize> = Vec::new();
        let mut need = |name: &str| -> Result<()> {
            let index = spec.schema.index_of(name)?;
            if !physical.contains(&index) {
                physical.push(index);
            }
            Ok(())
        };
        let computed_by_name = |name: &str| computed.iter().find(|c| c.name == name);
        let mut wanted: Vec<&str> = scan_columns(scan)
            .into_iter()
            .map(|i| full.field(i).name().as_str())
            .collect();
        wanted.extend(event_time.map(|et| et.column.as_str()));
        for name in wanted {
            match computed_by_name(name) {
                Some(c) => {
                    for column in c.expr.column_refs() {
                        need(&column.name)?;
                    }
                }
                None => need(name)?,
            }
        }
        let (node, produced, bounded_bytes) =
            self.add_source(spec, Some(&physical), graph, pos).await?;
        let time = event_time
            .map(|et| self.column_expr(&spec.name, &et.column, computed, &produced, pos))
            .transpose()?;
        Ok(Read {
            node,
            produced,
            bounded_bytes,
            time,
            keep: None,
        })
    }

    /// A source node reading `projection` of `spec`'s columns: the node,
    /// the columns it produces, and the bytes of its files if bounded.
    async fn add_source(
        &self,
        spec: &flumen_connectors::TableSpec,
        projection: Option<&[usize]>,
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<(NodeId, SchemaRef, Option<u64>)> {
        let source = flumen_connectors::source_factory(spec, projection)
            .await
            .map_err(|e| pos.wrap(e))?;
        let bounded_bytes = source.bounded_bytes();
        let node = graph.add_node(NodeKind::Source(source), self.options.parallelism);
        let produced = match projection {
            Some(p) => Arc::new(spec.schema.project(p)?),
            None => spec.schema.clone(),
        };
        Ok((node, produced, bounded_bytes))
    }

    /// Column `name` of a table with computed columns, over the columns
    /// its source produced: a column of them, or a computed column's
    /// expression.
    fn column_expr(
        &self,
        table: &str,
        name: &str,
        computed: &[crate::planner::ComputedColumn],
        produced: &SchemaRef,
        pos: &SourcePos,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        match computed.iter().find(|c| c.name == name) {
            Some(c) => {
                let df_schema = DFSchema::try_from_qualified_schema(table, produced)
                    .map_err(|e| pos.datafusion(e))?;
                self.ctx
                    .state()
                    .create_physical_expr(c.expr.clone(), &df_schema)
                    .map_err(|e| pos.datafusion(e))
            }
            None => Ok(Arc::new(Column::new(name, produced.index_of(name)?))),
        }
    }

    /// A projection after a table's source that gives the scan's columns,
    /// computing the computed ones from the columns the source produced.
    #[allow(clippy::too_many_arguments)]
    fn compute_columns(
        &self,
        table: &str,
        scan: &TableScan,
        computed: &[crate::planner::ComputedColumn],
        produced: &SchemaRef,
        node: NodeId,
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<(NodeId, SchemaRef)> {
        let full = scan.source.schema();
        let columns = scan_columns(scan);
        let exprs = columns
            .iter()
            .map(|&i| self.column_expr(table, full.field(i).name(), computed, produced, pos))
            .collect::<Result<Vec<_>>>()?;
        let schema = Arc::new(full.project(&columns)?);
        let kind = NodeKind::Operator(Arc::new(ProjectionFactory::new(exprs, schema.clone())));
        Ok((self.add(graph, node, kind, Partitioning::Forward), schema))
    }

    /// Appends computed key columns to a stream so that a hash exchange and
    /// a keyed operator can use them; returns the stream and the key columns.
    /// Keys that are already plain columns are used as they are.
    pub(super) fn with_keys(
        &self,
        input: Stream,
        input_schema: &DFSchema,
        keys: &[Expr],
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<(Stream, Vec<usize>)> {
        let plain: Option<Vec<usize>> = keys
            .iter()
            .map(|k| match k {
                Expr::Column(c) => input_schema.index_of_column(c).ok(),
                _ => None,
            })
            .collect();
        if let Some(columns) = plain {
            return Ok((input, columns));
        }
        let width = input.schema.fields().len();
        let mut exprs: Vec<Arc<dyn PhysicalExpr>> = input
            .schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| Arc::new(Column::new(f.name(), i)) as _)
            .collect();
        let mut fields: Vec<Field> = input
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        for (i, k) in keys.iter().enumerate() {
            exprs.push(
                self.physical(k.clone(), input_schema)
                    .map_err(|e| pos.datafusion(e))?,
            );
            let data_type = k.get_type(input_schema).map_err(|e| pos.datafusion(e))?;
            fields.push(Field::new(format!("__flumen_key_{i}"), data_type, true));
        }
        let schema = Arc::new(Schema::new(fields));
        let kind = NodeKind::Operator(Arc::new(ProjectionFactory::new(exprs, schema.clone())));
        let node = self.add(graph, input.node, kind, Partitioning::Forward);
        Ok((
            Stream {
                node,
                schema,
                updating: input.updating,
                bounded: input.bounded,
                bounded_bytes: input.bounded_bytes,
                hash_key: None,
                keys: input.keys,
            },
            (width..width + keys.len()).collect(),
        ))
    }

    /// A RIGHT join: the LEFT join with the sides swapped, and a projection
    /// that puts the left side's columns first again.
    fn plan_right_join(
        &self,
        j: &datafusion::logical_expr::Join,
        left: Stream,
        right: Stream,
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<Stream> {
        let schema = datafusion::logical_expr::logical_plan::builder::build_join_schema(
            j.right.schema(),
            j.left.schema(),
            &JoinType::Left,
        )
        .map_err(|e| pos.datafusion(e))?;
        let swapped = datafusion::logical_expr::Join {
            left: j.right.clone(),
            right: j.left.clone(),
            on: j.on.iter().map(|(l, r)| (r.clone(), l.clone())).collect(),
            filter: j.filter.clone(),
            join_type: JoinType::Left,
            join_constraint: j.join_constraint,
            schema: Arc::new(schema),
            null_equality: j.null_equality,
            null_aware: false,
        };
        let (left_width, right_width) = (left.width(), right.width());
        let joined = self.plan_join(&swapped, right, left, graph, pos)?;
        // Joined columns are (right…, left…, _op); put left first.
        let order: Vec<usize> = (right_width..right_width + left_width)
            .chain(0..right_width)
            .chain([right_width + left_width])
            .collect();
        let exprs: Vec<Arc<dyn PhysicalExpr>> = order
            .iter()
            .map(|&i| Arc::new(Column::new(joined.schema.field(i).name(), i)) as _)
            .collect();
        let schema = stream_schema(&j.schema, true);
        let kind = NodeKind::Operator(Arc::new(ProjectionFactory::new(exprs, schema.clone())));
        Ok(Stream {
            node: self.add(graph, joined.node, kind, Partitioning::Forward),
            schema,
            updating: joined.updating.map(|_| {
                "a RIGHT JOIN retracts a row padded with nulls when its first match arrives"
                    .to_string()
            }),
            bounded: joined.bounded,
            bounded_bytes: None,
            hash_key: None,
            keys: KeyFacts::default(),
        })
    }

    /// A join of two streams on equal keys (an inner join may take updating
    /// ones): a hash exchange on
    /// the keys from each side into one symmetric hash join. Conditions
    /// that bound a row's life (an interval `b.t BETWEEN a.t AND a.expires`,
    /// both sides in the same event-time window) let the join free rows by
    /// watermark; without them the join keeps rows until `state_ttl`.
    fn plan_join(
        &self,
        j: &datafusion::logical_expr::Join,
        left: Stream,
        right: Stream,
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<Stream> {
        let kind = match j.join_type {
            JoinType::Inner => JoinKind::Inner,
            JoinType::Left => JoinKind::Left,
            JoinType::Full => JoinKind::Full,
            JoinType::LeftSemi => JoinKind::LeftSemi,
            JoinType::LeftAnti if j.null_aware => {
                return Err(pos.error(
                    "NOT IN over a subquery whose column may be NULL is not supported in streaming queries yet \
                     (one NULL would empty the result); write NOT EXISTS (… WHERE a = b)",
                ));
            }
            JoinType::LeftAnti => JoinKind::LeftAnti,
            other => {
                return Err(pos.error(format!(
                    "{other} JOIN is not supported in streaming queries yet; use an inner, LEFT or RIGHT join"
                )));
            }
        };
        let updating_input = left.updating.as_ref().or(right.updating.as_ref()).cloned();

        if j.on.is_empty() {
            return Err(pos.error(
                "a streaming join needs at least one equality between the two sides (ON a.key = b.key); \
                 a join on other conditions alone would keep and compare every pair of rows",
            ));
        }
        let (left_keys, right_keys): (Vec<Expr>, Vec<Expr>) = j.on.iter().cloned().unzip();
        // An updating side's op column follows its own columns.
        let mut left_side = JoinSide {
            keys: Vec::new(),
            width: left.width(),
            expiry: None,
            op_column: left.updating.as_ref().map(|_| left.width()),
            settled_by_match: false,
        };
        let mut right_side = JoinSide {
            keys: Vec::new(),
            width: right.width(),
            expiry: None,
            op_column: right.updating.as_ref().map(|_| right.width()),
            settled_by_match: false,
        };
        // Window joins: both sides keyed by the same event-time window.
        for (l, r) in &j.on {
            if let (Some(lw), Some(rw)) = (
                self.event_time_window(l, &j.left),
                self.event_time_window(r, &j.right),
            ) {
                left_side.expiry = Some(lw);
                right_side.expiry = Some(rw);
            }
        }
        // Interval joins: `lo <= hi` where lo is one side's event time bounds
        // how long the other side's row `hi` can still match.
        if let Some(filter) = &j.filter {
            for conjunct in split_conjunction(filter) {
                let Some((lo, hi)) = ordered_columns(conjunct) else {
                    continue;
                };
                for (lo_plan, hi_plan, hi_side) in [
                    (&j.left, &j.right, &mut right_side),
                    (&j.right, &j.left, &mut left_side),
                ] {
                    let (Ok(_), Ok(hi_index)) = (
                        lo_plan.schema().index_of_column(lo),
                        hi_plan.schema().index_of_column(hi),
                    ) else {
                        continue;
                    };
                    if hi_side.expiry.is_none()
                        && self.is_event_time(lo_plan, lo)
                        && matches!(
                            hi_plan.schema().field(hi_index).data_type(),
                            DataType::Timestamp(..)
                        )
                    {
                        hi_side.expiry = Some(Expiry {
                            column: hi_index,
                            offset_ns: 0,
                        });
                    }
                }
            }
        }
        let (left, lk) = self.with_keys(left, j.left.schema(), &left_keys, graph, pos)?;
        let (right, rk) = self.with_keys(right, j.right.schema(), &right_keys, graph, pos)?;
        for (&l, &r) in lk.iter().zip(&rk) {
            let (lt, rt) = (
                left.schema.field(l).data_type(),
                right.schema.field(r).data_type(),
            );
            if lt != rt {
                return Err(pos.error(format!(
                    "join keys {} and {} have different types ({lt} and {rt}); CAST one to the other's type",
                    j.on[lk.iter().position(|&x| x == l).unwrap_or(0)].0,
                    j.on[rk.iter().position(|&x| x == r).unwrap_or(0)].1,
                )));
            }
        }
        if let Some(part) = &updating_input
            && (left_side.expiry.is_some() || right_side.expiry.is_some())
        {
            return Err(pos.error(format!(
                "a window or interval join of an updating input ({part}) is not supported yet; \
                 a regular join (equal keys only) takes one"
            )));
        }
        left_side.keys = lk.clone();
        right_side.keys = rk.clone();
        let joined = j
            .left
            .schema()
            .join(j.right.schema())
            .map_err(|e| pos.datafusion(e))?;
        let filter = match &j.filter {
            Some(f) => Some(
                self.physical(f.clone(), &joined)
                    .map_err(|e| pos.datafusion(e))?,
            ),
            None => None,
        };
        let updating = match (kind, updating_input) {
            (JoinKind::Left, _) => Some(
                "a LEFT JOIN retracts a row padded with nulls when its first match arrives"
                    .to_string(),
            ),
            (JoinKind::Full, _) => Some(
                "a FULL JOIN retracts a row padded with nulls when its first match arrives"
                    .to_string(),
            ),
            (JoinKind::LeftAnti, _) => Some(
                "NOT EXISTS (an anti join) takes a row back when its first match arrives"
                    .to_string(),
            ),
            (_, Some(part)) => Some(format!(
                "a join of an updating input ({part}) takes back the joined rows of each row taken back"
            )),
            _ => None,
        };
        let schema = stream_schema(&j.schema, updating.is_some());
        let left_width = left_side.width;
        // An inner join's rows made from one row of a side unique by a key
        // stop once the join frees that row: they close.
        let closing = (kind == JoinKind::Inner && updating.is_none())
            .then(|| {
                [(&left, &left_side, 0), (&right, &right_side, left_width)]
                    .into_iter()
                    .find_map(|(stream, side, shift)| {
                        let unique = stream.keys.unique.as_ref()?;
                        let expiry = side.expiry?;
                        Some((
                            unique.iter().map(|&k| k + shift).collect(),
                            Expiry {
                                column: expiry.column + shift,
                                ..expiry
                            },
                        ))
                    })
            })
            .flatten();
        let broadcast =
            self.broadcast_side(kind, [&left, &right], [&left_side, &right_side], graph);
        // A row that matched a side unique by some of its join keys (an
        // append-only source's primary key) can match nothing more: the
        // join does not store it (an auction's bids, once it is there).
        if kind == JoinKind::Inner && updating.is_none() && broadcast.is_none() {
            let unique_by = |stream: &Stream, keys: &[usize]| {
                stream
                    .keys
                    .unique
                    .as_ref()
                    .is_some_and(|u| !u.is_empty() && u.iter().all(|c| keys.contains(c)))
            };
            left_side.settled_by_match = unique_by(&right, &rk);
            right_side.settled_by_match = unique_by(&left, &lk);
        }
        let factory = HashJoinFactory {
            kind,
            left: left_side,
            right: right_side,
            filter,
            state_ttl_ns: self.state_ttl_ns,
            joined: Arc::new(joined.as_arrow().clone()),
            bounded_input: left.bounded || right.bounded,
            broadcast,
            output: schema.clone(),
        };
        let node = graph.add_node(
            NodeKind::Operator(Arc::new(factory)),
            self.options.parallelism,
        );
        // Every output row's left columns come from a left row this subtask
        // was sent by the hash of its key (not so for a FULL join's right
        // rows padded with nulls, nor when a side is broadcast).
        let hash_key =
            (kind != JoinKind::Full && broadcast.is_none() && lk.iter().all(|&k| k < left_width))
                .then(|| lk.clone());
        let partitionings = match broadcast {
            None => [Partitioning::Hash(lk), Partitioning::Hash(rk)],
            Some(side) => {
                // The other side's rows stay where they are: with their own
                // subtask when it lines up with the join's.
                let other = [&left, &right][1 - side];
                let spread = if graph.nodes()[other.node].parallelism == self.options.parallelism {
                    Partitioning::Forward
                } else {
                    Partitioning::Rebalance
                };
                let mut p = [spread.clone(), spread];
                p[side] = Partitioning::Broadcast;
                p
            }
        };
        let [left_partitioning, right_partitioning] = partitionings;
        graph.connect(left.node, node, left_partitioning);
        graph.connect(right.node, node, right_partitioning);
        Ok(Stream {
            node,
            schema,
            updating,
            bounded: left.bounded && right.bounded,
            bounded_bytes: None,
            hash_key,
            keys: KeyFacts {
                unique: None,
                closing,
            },
        })
    }

    /// The side of a join to broadcast to every join subtask, if any: a
    /// bounded source's rows (filtered or projected) of at most the
    /// broadcast threshold's bytes, the smaller if both are, that the join
    /// neither pads with nulls (the right side of a LEFT, semi or anti
    /// join; either of an inner one) nor expires: each subtask expires by
    /// its own watermark, so their copies could differ, and one copy is
    /// what a checkpoint keeps. The other side must not be updating unless
    /// it can go forward, each row with its retractions.
    fn broadcast_side(
        &self,
        kind: JoinKind,
        streams: [&Stream; 2],
        sides: [&JoinSide; 2],
        graph: &JobGraph,
    ) -> Option<usize> {
        let threshold = self.broadcast_threshold?;
        if self.state_ttl_ns.is_some() {
            return None;
        }
        let candidates: &[usize] = match kind {
            JoinKind::Inner => &[0, 1],
            JoinKind::Left | JoinKind::LeftSemi | JoinKind::LeftAnti => &[1],
            JoinKind::Full => &[],
        };
        candidates
            .iter()
            .filter(|&&s| sides[s].expiry.is_none())
            .filter(|&&s| {
                let other = streams[1 - s];
                other.updating.is_none()
                    || graph.nodes()[other.node].parallelism == self.options.parallelism
            })
            .filter_map(|&s| {
                let bytes = streams[s].bounded_bytes.filter(|&b| b <= threshold)?;
                Some((bytes, s))
            })
            .min()
            .map(|(_, s)| s)
    }

    /// If `key` (an expression over `plan`'s output) is an event-time window
    /// start, the window's length in nanoseconds.
    pub(super) fn event_time_window_size(&self, key: &Expr, plan: &LogicalPlan) -> Option<i64> {
        let (size, ts, ts_plan) = window_of(key, plan)?;
        self.is_event_time(ts_plan, &ts).then_some(size).flatten()
    }

    /// If `key` is a column of `plan` holding an event-time window start, the
    /// expiry of a row: the window's end.
    fn event_time_window(&self, key: &Expr, plan: &LogicalPlan) -> Option<Expiry> {
        let Expr::Column(c) = key else { return None };
        Some(Expiry {
            column: plan.schema().index_of_column(c).ok()?,
            offset_ns: self.event_time_window_size(key, plan)?,
        })
    }

    /// Whether column `c` of `plan` is processing time: computed by
    /// `proctime()` in the query or in its table's computed column.
    pub(super) fn is_processing_time(&self, plan: &LogicalPlan, c: &LogicalColumn) -> bool {
        is_proctime(plan, c)
            || trace_column(plan, c).is_some_and(|(table, column)| {
                self.computed.get(&table).is_some_and(|computed| {
                    computed.iter().any(|x| {
                    x.name == column
                        && matches!(&x.expr, Expr::ScalarFunction(f) if f.func.name() == "proctime")
                })
                })
            })
    }

    /// Whether column `c` of `plan` is, unchanged, a source's event-time column.
    pub(super) fn is_event_time(&self, plan: &LogicalPlan, c: &LogicalColumn) -> bool {
        trace_column(plan, c).is_some_and(|(table, column)| {
            self.event_times
                .get(&table)
                .is_some_and(|et| et.column == column)
        })
    }
}

/// A table's source node and what it reads.
struct Read {
    node: NodeId,
    /// The columns the source produces.
    produced: SchemaRef,
    /// The bytes of its files, for a bounded source.
    bounded_bytes: Option<u64>,
    /// With event time: its expression over `produced`.
    time: Option<Arc<dyn PhysicalExpr>>,
    /// The columns of `produced` the scan wants, when the source also
    /// reads the event-time column for its watermarks only.
    keep: Option<Vec<usize>>,
}

/// The indexes of the table's columns a scan produces, in its order.
fn scan_columns(scan: &TableScan) -> Vec<usize> {
    scan.projection
        .clone()
        .unwrap_or_else(|| (0..scan.source.schema().fields().len()).collect())
}

/// `lo <= hi` (or `<`) between two columns, in either spelling.
fn ordered_columns(e: &Expr) -> Option<(&LogicalColumn, &LogicalColumn)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return None;
    };
    let (Expr::Column(a), Expr::Column(b)) = (left.as_ref(), right.as_ref()) else {
        return None;
    };
    match op {
        Operator::Lt | Operator::LtEq => Some((a, b)),
        Operator::Gt | Operator::GtEq => Some((b, a)),
        _ => None,
    }
}

/// The table and column that column `c` of `plan` is, unchanged, if any.
pub(super) fn trace_column(plan: &LogicalPlan, c: &LogicalColumn) -> Option<(String, String)> {
    let index = plan.schema().index_of_column(c).ok()?;
    let input_column =
        |input: &LogicalPlan, i: usize| LogicalColumn::from(input.schema().qualified_field(i));
    match plan {
        LogicalPlan::TableScan(scan) => Some((
            scan.table_name.table().to_string(),
            plan.schema().field(index).name().clone(),
        )),
        LogicalPlan::Projection(p) => match p.expr[index].clone().unalias_nested().data {
            Expr::Column(inner) => trace_column(&p.input, &inner),
            _ => None,
        },
        LogicalPlan::SubqueryAlias(a) => trace_column(&a.input, &input_column(&a.input, index)),
        LogicalPlan::Filter(f) => trace_column(&f.input, c),
        LogicalPlan::Join(j) => {
            let left_width = j.left.schema().fields().len();
            if index < left_width {
                trace_column(&j.left, &input_column(&j.left, index))
            } else {
                trace_column(&j.right, &input_column(&j.right, index - left_width))
            }
        }
        LogicalPlan::Window(w) if index < w.input.schema().fields().len() => {
            trace_column(&w.input, &input_column(&w.input, index))
        }
        LogicalPlan::Aggregate(a) if index < a.group_expr.len() => {
            match a.group_expr[index].clone().unalias_nested().data {
                Expr::Column(inner) => trace_column(&a.input, &inner),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The window a group key stands for: the window length in nanoseconds
/// (`None` when it is not a constant interval), the timestamp column it is
/// computed from, and the plan that column belongs to. A key is a window
/// when it is `date_bin(INTERVAL, col)` (tumbling), or a column that, through
/// projections, aliases, joins and groupings, is one or is the UNNEST of
/// `hop(slide, size, col)` (sliding) or of `cumulate(step, size, col)` (the
/// key is then the window's end, and the length returned 0).
pub(super) fn window_of<'a>(
    key: &Expr,
    input: &'a LogicalPlan,
) -> Option<(Option<i64>, LogicalColumn, &'a LogicalPlan)> {
    match key.clone().unalias_nested().data {
        Expr::Column(c) => match defining_expr(input, &c)? {
            // The starts of sliding windows (the window ends `size` later) or
            // the ends of cumulating windows (the key is the end itself).
            (Expr::ScalarFunction(f), true, plan)
                if matches!(f.func.name(), "hop" | "cumulate") && f.args.len() == 3 =>
            {
                let Expr::Column(ts) = &f.args[2] else {
                    return None;
                };
                let offset = match f.func.name() {
                    "hop" => literal_nanos(&f.args[1]),
                    _ => Some(0),
                };
                Some((offset, ts.clone(), plan))
            }
            // `defining_expr` follows renames, so `e` is never a bare column.
            (e, false, plan) => window_of(&e, plan),
            _ => None,
        },
        Expr::ScalarFunction(f) if f.func.name() == "date_bin" && f.args.len() == 2 => {
            let Expr::Column(ts) = &f.args[1] else {
                return None;
            };
            Some((literal_nanos(&f.args[0]), ts.clone(), input))
        }
        _ => None,
    }
}

fn literal_nanos(e: &Expr) -> Option<i64> {
    match e {
        Expr::Literal(v, _) => crate::udf::interval_nanos(v),
        _ => None,
    }
}

/// The expression that computes column `c` of `plan`'s output, following
/// renames down the plan, whether an UNNEST of it gives the column, and the
/// plan the expression is evaluated over.
fn defining_expr<'a>(
    plan: &'a LogicalPlan,
    c: &LogicalColumn,
) -> Option<(Expr, bool, &'a LogicalPlan)> {
    let index = plan.schema().index_of_column(c).ok()?;
    let input_column =
        |input: &LogicalPlan, i: usize| LogicalColumn::from(input.schema().qualified_field(i));
    match plan {
        LogicalPlan::Projection(p) => match p.expr[index].clone().unalias_nested().data {
            Expr::Column(inner) => defining_expr(&p.input, &inner),
            e => Some((e, false, &p.input)),
        },
        LogicalPlan::SubqueryAlias(a) => defining_expr(&a.input, &input_column(&a.input, index)),
        LogicalPlan::Filter(f) => defining_expr(&f.input, c),
        LogicalPlan::Unnest(u) => {
            let source = *u.dependency_indices.get(index)?;
            let (e, _, p) = defining_expr(&u.input, &input_column(&u.input, source))?;
            let unnested = u.list_type_columns.iter().any(|(i, _)| *i == source);
            Some((e, unnested, p))
        }
        LogicalPlan::Join(j) => {
            let left_width = j.left.schema().fields().len();
            if index < left_width {
                defining_expr(&j.left, &input_column(&j.left, index))
            } else {
                defining_expr(&j.right, &input_column(&j.right, index - left_width))
            }
        }
        LogicalPlan::Window(w) if index < w.input.schema().fields().len() => {
            defining_expr(&w.input, &input_column(&w.input, index))
        }
        LogicalPlan::Aggregate(a) if index < a.group_expr.len() => {
            match a.group_expr[index].clone().unalias_nested().data {
                Expr::Column(inner) => defining_expr(&a.input, &inner),
                e => Some((e, false, &a.input)),
            }
        }
        _ => None,
    }
}

fn unsupported(plan: &LogicalPlan) -> String {
    let what = match plan {
        LogicalPlan::Window(_) => {
            return "window functions (OVER) are supported only as TopN: \
                    ROW_NUMBER() or RANK() OVER (PARTITION BY … ORDER BY …) filtered by <= N (N ≥ 1)"
                .into();
        }
        LogicalPlan::Sort(_) => {
            return "ORDER BY is supported in streaming queries only with LIMIT n (the first n rows, \
                    updated as rows arrive), or in ROW_NUMBER() OVER (… ORDER BY …) <= n"
                .into();
        }
        LogicalPlan::Distinct(_) => "DISTINCT is",
        LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => {
            return "a query must read from a connector table (a source) to run as a stream".into();
        }
        other => return format!("{} is not supported in streaming queries", other.display()),
    };
    format!("{what} not supported in streaming queries yet")
}

/// Whether column expression `key` of `plan` is the `window_start` or
/// `window_end` of a `session(…)` table function below.
pub(super) fn session_column(key: &Expr, plan: &LogicalPlan) -> Option<SessionColumn> {
    let Expr::Column(c) = key.clone().unalias_nested().data else {
        return None;
    };
    let index = plan.schema().index_of_column(&c).ok()?;
    let input_column =
        |input: &LogicalPlan, i: usize| LogicalColumn::from(input.schema().qualified_field(i));
    match plan {
        LogicalPlan::Projection(p) => session_column(&p.expr[index], &p.input),
        LogicalPlan::Filter(f) => session_column(key, &f.input),
        LogicalPlan::SubqueryAlias(a) if parse_session_alias(a.alias.table()).is_some() => {
            match plan.schema().field(index).name().as_str() {
                "window_start" => Some(SessionColumn::Start),
                "window_end" => Some(SessionColumn::End),
                _ => None,
            }
        }
        LogicalPlan::SubqueryAlias(a) => {
            session_column(&Expr::Column(input_column(&a.input, index)), &a.input)
        }
        _ => None,
    }
}

/// Whether column `c` of `plan` is computed by `proctime()` (processing time).
fn is_proctime(plan: &LogicalPlan, c: &LogicalColumn) -> bool {
    matches!(
        defining_expr(plan, c),
        Some((Expr::ScalarFunction(f), false, _)) if f.func.name() == "proctime"
    )
}

/// The name of the window function (`date_bin`, `hop`, `cumulate`) group key
/// `key` is computed from but that `window_of` does not take as a window
/// (its time argument is not a plain column: a cast of text, say).
pub(super) fn window_call(key: &Expr, input: &LogicalPlan) -> Option<String> {
    let e = match key.clone().unalias_nested().data {
        Expr::Column(c) => defining_expr(input, &c)?.0,
        e => e,
    };
    match &e {
        Expr::ScalarFunction(f) if matches!(f.func.name(), "date_bin" | "hop" | "cumulate") => {
            Some(f.func.name().to_string())
        }
        _ => None,
    }
}

/// A subquery left inside an expression (the optimizer could not turn it
/// into a join, as with a comparison to an aggregate of the whole stream)
/// is a plan error that says what works.
fn no_subquery(e: &Expr, pos: &SourcePos) -> Result<()> {
    use datafusion::common::tree_node::TreeNode;
    let found = e
        .exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
            ))
        })
        .unwrap_or(false);
    if found {
        return Err(pos.error(
            "a subquery inside an expression is not supported in streaming queries; \
             write it as a JOIN (IN / EXISTS over a table with an equality become joins)",
        ));
    }
    Ok(())
}
