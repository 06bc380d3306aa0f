//! The planner: runs each statement of a script through DataFusion, keeps
//! the connector tables, and turns each `INSERT INTO … SELECT` or bare
//! `SELECT` into a pipeline of the job graph: a source, its chained filters
//! and projections, and a sink.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::{
    DdlStatement, ExprSchemable, LogicalPlan, WriteOp, utils::conjunction,
};
use datafusion::physical_expr::expressions::Column;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{CreateTableOptions, Spanned, Statement};
use flumen_connectors::{StdoutFormat, StdoutSinkFactory, TableSpec};
use flumen_operators::{
    AggregateCall, FilterFactory, ProjectionFactory, UnnestFactory, WindowAggregateFactory,
};
use flumen_runtime::{JobGraph, NodeId, NodeKind, Partitioning};
use flumen_types::{FlumenError, Result};

use crate::catalog::ConnectorTable;
use crate::errors::SourcePos;
use crate::script::{self, WatermarkClause};
use crate::watermark::ExprWatermarks;

/// How scripts are planned.
#[derive(Debug, Clone)]
pub struct PlannerOptions {
    /// Parallelism of every source, operator and sink (stdout prints from one).
    pub parallelism: usize,
    /// How a bare `SELECT` prints its rows.
    pub stdout_format: StdoutFormat,
    /// `key = value` connector options set on every table whose connector
    /// takes that key, overriding the script (for benchmarks and tests).
    pub overrides: Vec<(String, String)>,
}

impl Default for PlannerOptions {
    fn default() -> Self {
        PlannerOptions {
            parallelism: 1,
            stdout_format: StdoutFormat::Table,
            overrides: Vec::new(),
        }
    }
}

/// A planned job: the graph to run and, for `explain`, each query's plan.
pub struct Pipeline {
    /// The job graph of every query of the script(s).
    pub graph: JobGraph,
    /// Each query's label and optimised logical plan, as text.
    pub logical_plans: Vec<(String, String)>,
}

enum Target {
    Table(String),
    Stdout,
}

/// A table's event time: its column and the watermark expression.
struct EventTime {
    column: String,
    expr: datafusion::logical_expr::Expr,
    text: String,
}

struct Query {
    label: String,
    plan: LogicalPlan,
    target: Target,
    pos: SourcePos,
}

/// Reads scripts statement by statement and builds one job from all their queries.
pub struct Planner {
    ctx: SessionContext,
    options: PlannerOptions,
    tables: HashMap<String, TableSpec>,
    event_times: HashMap<String, EventTime>,
    queries: Vec<Query>,
}

/// A DataFusion session configured as flumen plans: spans kept for error
/// positions, VARCHAR as Arrow `Utf8`, and flumen's UDFs registered. Tests use
/// the same session for their batch oracle.
pub fn session() -> SessionContext {
    let mut config = SessionConfig::new();
    let opts = config.options_mut();
    opts.sql_parser.collect_spans = true;
    opts.sql_parser.map_string_types_to_utf8view = false;
    let ctx = SessionContext::new_with_config(config);
    for udf in crate::udf::udfs() {
        ctx.register_udf(udf);
    }
    ctx
}

impl Planner {
    /// A planner with no tables yet.
    pub fn new(options: PlannerOptions) -> Self {
        Planner {
            ctx: session(),
            options,
            tables: HashMap::new(),
            event_times: HashMap::new(),
            queries: Vec::new(),
        }
    }

    /// Runs the statements of one script: DDL takes effect now, queries are
    /// kept for [`Planner::build`]. `file` names the script in errors.
    pub async fn add_script(&mut self, file: &str, sql: &str) -> Result<()> {
        let (sql, mut watermarks) =
            script::strip_watermarks(sql).map_err(|e| FlumenError::plan(format!("{file}:{e}")))?;
        let statements = script::parse(file, &sql)?;
        let starts: Vec<(u64, u64)> = statements
            .iter()
            .map(|s| (s.span().start.line, s.span().start.column))
            .collect();
        for (i, statement) in statements.into_iter().enumerate() {
            let pos = SourcePos::at(file, statement.span().start);
            let next = starts.get(i + 1).copied().unwrap_or((u64::MAX, u64::MAX));
            let (mine, rest): (Vec<_>, Vec<_>) = watermarks
                .into_iter()
                .partition(|w| (w.line, w.column) < next);
            watermarks = rest;
            let mut mine = mine.into_iter();
            let watermark = mine.next();
            if let Some(extra) = mine.next().or_else(|| {
                watermark
                    .clone()
                    .filter(|_| !matches!(statement, Statement::CreateTable(_)))
            }) {
                let at = SourcePos {
                    file: file.to_string(),
                    line: extra.line,
                    column: extra.column,
                };
                return Err(at.error(
                    "a table takes one WATERMARK FOR clause, inside its CREATE TABLE column list",
                ));
            }
            self.add_statement(statement, &pos, watermark).await?;
        }
        Ok(())
    }

    async fn plan(&self, statement: Statement, pos: &SourcePos) -> Result<LogicalPlan> {
        self.ctx
            .state()
            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
            .await
            .map_err(|e| pos.datafusion(e))
    }

    async fn add_statement(
        &mut self,
        statement: Statement,
        pos: &SourcePos,
        watermark: Option<WatermarkClause>,
    ) -> Result<()> {
        match statement {
            Statement::CreateTable(ct) => {
                if ct.query.is_some() {
                    return Err(pos.error("CREATE TABLE … AS SELECT is not supported; declare the table, then INSERT INTO it"));
                }
                let name = ct.name.to_string().to_lowercase();
                if self.tables.contains_key(&name) {
                    return Err(pos.error(format!("table '{name}' is declared twice")));
                }
                let mut options = script::table_options(&ct).map_err(|e| pos.wrap(e))?;
                let mut columns_only = ct.clone();
                columns_only.table_options = CreateTableOptions::None;
                let plan = self.plan(Statement::CreateTable(columns_only), pos).await?;
                let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) = plan else {
                    return Err(pos.error("CREATE TABLE did not plan as a table declaration"));
                };
                let schema: SchemaRef = Arc::new(create.input.schema().as_arrow().clone());
                self.apply_overrides(&mut options);
                let spec = TableSpec {
                    name: name.clone(),
                    schema: schema.clone(),
                    options: flumen_connectors::Options::new(options).map_err(|e| pos.wrap(e))?,
                };
                flumen_connectors::check_table(&spec).map_err(|e| pos.wrap(e))?;
                if let Some(clause) = watermark {
                    let at = SourcePos {
                        file: pos.file.clone(),
                        line: clause.line,
                        column: clause.column,
                    };
                    let event_time = self.event_time(&name, &spec.schema, clause, &at)?;
                    self.event_times.insert(name.clone(), event_time);
                }
                self.ctx
                    .register_table(name.as_str(), Arc::new(ConnectorTable { schema }))
                    .map_err(|e| pos.datafusion(e))?;
                self.tables.insert(name, spec);
            }
            Statement::CreateView(_) => {
                let plan = self.plan(statement, pos).await?;
                self.ctx
                    .execute_logical_plan(plan)
                    .await
                    .map_err(|e| pos.datafusion(e))?;
            }
            Statement::Insert(ref insert) => {
                let source_schema = match &insert.source {
                    Some(q) if insert.columns.is_empty() => Some(
                        self.plan(Statement::Query(q.clone()), pos)
                            .await?
                            .schema()
                            .as_arrow()
                            .clone(),
                    ),
                    _ => None,
                };
                let plan = self.plan(statement, pos).await?;
                let LogicalPlan::Dml(dml) = plan else {
                    return Err(pos.error("INSERT did not plan as an insert"));
                };
                if dml.op != WriteOp::Insert(datafusion::logical_expr::dml::InsertOp::Append) {
                    return Err(pos.error(format!("{} is not supported; use INSERT INTO", dml.op)));
                }
                let table = dml.table_name.table().to_string();
                let Some(spec) = self.tables.get(&table) else {
                    return Err(pos.error(format!(
                        "'{table}' is a view; INSERT INTO needs a table declared with CREATE TABLE … WITH (connector = …)"
                    )));
                };
                if let Some(source) = source_schema {
                    check_insert_types(&table, &spec.schema, &source).map_err(|e| pos.wrap(e))?;
                }
                let plan = self.optimize(&dml.input, pos)?;
                self.queries.push(Query {
                    label: format!("INSERT INTO {table}"),
                    plan,
                    target: Target::Table(table),
                    pos: pos.clone(),
                });
            }
            Statement::Query(_) => {
                let plan = self.plan(statement, pos).await?;
                let plan = self.optimize(&plan, pos)?;
                self.queries.push(Query {
                    label: "SELECT".to_string(),
                    plan,
                    target: Target::Stdout,
                    pos: pos.clone(),
                });
            }
            other => {
                let kind = other.to_string();
                let kind: String = kind
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                return Err(pos.error(format!(
                    "'{kind} …' is not supported; flumen runs CREATE TABLE, CREATE VIEW, INSERT INTO and SELECT"
                )));
            }
        }
        Ok(())
    }

    /// Checks a table's `WATERMARK FOR` clause and plans its expression.
    fn event_time(
        &self,
        table: &str,
        schema: &SchemaRef,
        clause: WatermarkClause,
        at: &SourcePos,
    ) -> Result<EventTime> {
        let field = schema.field_with_name(&clause.column_name).map_err(|_| {
            at.error(format!(
                "WATERMARK FOR names column '{}', which table '{table}' does not have",
                clause.column_name
            ))
        })?;
        if !matches!(field.data_type(), DataType::Timestamp(..)) {
            return Err(at.error(format!(
                "event-time column '{}' must be a TIMESTAMP, not {}",
                clause.column_name,
                field.data_type()
            )));
        }
        let df_schema =
            DFSchema::try_from_qualified_schema(table, schema).map_err(|e| at.datafusion(e))?;
        let expr = self
            .ctx
            .state()
            .create_logical_expr(&clause.expr, &df_schema)
            .map_err(|e| at.error(format!("in the watermark expression: {e}")))?;
        if expr
            .column_refs()
            .iter()
            .any(|c| c.name != clause.column_name)
        {
            return Err(at.error(format!(
                "the watermark expression '{}' may use only the event-time column '{}'",
                clause.expr, clause.column_name
            )));
        }
        let data_type = expr
            .get_type(&df_schema)
            .map_err(|e| at.error(format!("in the watermark expression: {e}")))?;
        if !matches!(data_type, DataType::Timestamp(..)) {
            return Err(at.error(format!(
                "the watermark expression '{}' must give a TIMESTAMP, not {data_type}",
                clause.expr
            )));
        }
        Ok(EventTime {
            text: format!("{} AS {}", clause.column_name, clause.expr),
            column: clause.column_name,
            expr,
        })
    }

    fn apply_overrides(&self, options: &mut Vec<(String, String)>) {
        let connector = options
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("connector"))
            .map(|(_, v)| v.clone());
        let Some(specs) = flumen_connectors::CONNECTORS
            .iter()
            .find(|c| Some(c.0) == connector.as_deref())
            .map(|c| c.3)
        else {
            return;
        };
        for (key, value) in &self.options.overrides {
            if specs.iter().any(|s| s.name == key) {
                options.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
                options.push((key.clone(), value.clone()));
            }
        }
    }

    fn optimize(&self, plan: &LogicalPlan, pos: &SourcePos) -> Result<LogicalPlan> {
        self.ctx
            .state()
            .optimize(plan)
            .map_err(|e| pos.datafusion(e))
    }

    /// Builds the job graph of every query added so far.
    pub async fn build(&self) -> Result<Pipeline> {
        if self.queries.is_empty() {
            return Err(FlumenError::plan(
                "the script has no INSERT INTO or SELECT statement, so there is nothing to run",
            ));
        }
        let mut graph = JobGraph::new();
        let mut logical_plans = Vec::new();
        let run_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        for (i, query) in self.queries.iter().enumerate() {
            logical_plans.push((query.label.clone(), query.plan.display_indent().to_string()));
            let last = self
                .plan_pipeline(&query.plan, &mut graph, &query.pos)
                .await?;
            let input: SchemaRef = Arc::new(query.plan.schema().as_arrow().clone());
            let (factory, parallelism) = match &query.target {
                Target::Stdout => (
                    Arc::new(StdoutSinkFactory::new(self.options.stdout_format)) as _,
                    1,
                ),
                Target::Table(name) => {
                    let spec = &self.tables[name];
                    let factory =
                        flumen_connectors::sink_factory(spec, input, &format!("{run_id}-{i}"))
                            .map_err(|e| query.pos.wrap(e))?;
                    let parallelism = if spec.connector() == "stdout" {
                        1
                    } else {
                        self.options.parallelism
                    };
                    (factory, parallelism)
                }
            };
            let sink = graph.add_node(NodeKind::Sink(factory), parallelism);
            let edge = if parallelism == graph.nodes()[last].parallelism {
                Partitioning::Forward
            } else {
                Partitioning::Rebalance
            };
            graph.connect(last, sink, edge);
        }
        Ok(Pipeline {
            graph,
            logical_plans,
        })
    }

    /// Adds the source and stateless operators of `plan`; returns the last node.
    async fn plan_pipeline(
        &self,
        plan: &LogicalPlan,
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<NodeId> {
        let mut steps = Vec::new();
        let mut current = plan;
        let scan = loop {
            match current {
                LogicalPlan::Projection(p) => {
                    steps.push(current);
                    current = &p.input;
                }
                LogicalPlan::Filter(f) => {
                    steps.push(current);
                    current = &f.input;
                }
                LogicalPlan::SubqueryAlias(a) => current = &a.input,
                LogicalPlan::Unnest(u) => {
                    steps.push(current);
                    current = &u.input;
                }
                LogicalPlan::Aggregate(a)
                    if !steps.iter().any(|s| matches!(s, LogicalPlan::Aggregate(_))) =>
                {
                    steps.push(current);
                    current = &a.input;
                }
                LogicalPlan::TableScan(scan) => break scan,
                other => return Err(pos.error(unsupported(other))),
            }
        };
        if scan.fetch.is_some() {
            return Err(pos.error("LIMIT is not supported in streaming queries yet"));
        }
        let table = scan.table_name.table();
        let spec = self
            .tables
            .get(table)
            .ok_or_else(|| pos.error(format!("'{table}' is a not a connector table")))?;
        // A source with event time always reads its event-time column, to
        // derive watermarks, and drops it again if the query does not use it.
        let event_time = self.event_times.get(table);
        let mut projection = scan.projection.clone();
        let mut keep = None;
        if let (Some(et), Some(p)) = (event_time, projection.as_mut()) {
            let index = spec.schema.index_of(&et.column)?;
            if !p.contains(&index) {
                keep = Some((0..p.len()).collect::<Vec<usize>>());
                p.push(index);
            }
        }
        let source = flumen_connectors::source_factory(spec, projection.as_deref())
            .await
            .map_err(|e| pos.wrap(e))?;
        let parallelism = self.options.parallelism;
        let source_node = graph.add_node(NodeKind::Source(source), parallelism);
        let mut last = source_node;
        let state = self.ctx.state();
        let mut add = |graph: &mut JobGraph, kind: NodeKind, partitioning: Partitioning| {
            let node = graph.add_node(kind, parallelism);
            graph.connect(last, node, partitioning);
            last = node;
        };
        if let Some(et) = event_time {
            let produced = match &projection {
                Some(p) => Arc::new(spec.schema.project(p)?),
                None => spec.schema.clone(),
            };
            let column = produced.index_of(&et.column)?;
            let one_column = Arc::new(produced.project(&[column])?);
            let df_schema = DFSchema::try_from_qualified_schema(table, &one_column)
                .map_err(|e| pos.datafusion(e))?;
            let expr = state
                .create_physical_expr(et.expr.clone(), &df_schema)
                .map_err(|e| pos.datafusion(e))?;
            let strategy = ExprWatermarks::new(column, one_column, expr, et.text.clone());
            graph.set_watermarks(source_node, Arc::new(strategy));
            if let Some(keep) = keep {
                let exprs = keep
                    .iter()
                    .map(|&i| Arc::new(Column::new(produced.field(i).name(), i)) as _)
                    .collect();
                let schema = Arc::new(produced.project(&keep)?);
                let kind = NodeKind::Operator(Arc::new(ProjectionFactory::new(exprs, schema)));
                add(graph, kind, Partitioning::Forward);
            }
        }
        if let Some(predicate) = conjunction(scan.filters.iter().cloned()) {
            let expr = state
                .create_physical_expr(predicate, &scan.projected_schema)
                .map_err(|e| pos.datafusion(e))?;
            let kind = NodeKind::Operator(Arc::new(FilterFactory::new(expr)));
            add(graph, kind, Partitioning::Forward);
        }
        for step in steps.into_iter().rev() {
            let kind = match step {
                LogicalPlan::Filter(f) => {
                    let expr = state
                        .create_physical_expr(f.predicate.clone(), f.input.schema())
                        .map_err(|e| pos.datafusion(e))?;
                    NodeKind::Operator(Arc::new(FilterFactory::new(expr)))
                }
                LogicalPlan::Projection(p) => {
                    let exprs = p
                        .expr
                        .iter()
                        .map(|e| state.create_physical_expr(e.clone(), p.input.schema()))
                        .collect::<datafusion::common::Result<Vec<_>>>()
                        .map_err(|e| pos.datafusion(e))?;
                    let schema = Arc::new(p.schema.as_arrow().clone());
                    NodeKind::Operator(Arc::new(ProjectionFactory::new(exprs, schema)))
                }
                LogicalPlan::Unnest(u) => {
                    let [(list_column, list)] = u.list_type_columns.as_slice() else {
                        return Err(
                            pos.error("UNNEST of more than one column is not supported yet")
                        );
                    };
                    if list.depth != 1 || !u.struct_type_columns.is_empty() {
                        return Err(
                            pos.error("only UNNEST of one level of a list is supported yet")
                        );
                    }
                    let output = Arc::new(u.schema.as_arrow().clone());
                    let factory =
                        UnnestFactory::new(*list_column, u.dependency_indices.clone(), output);
                    NodeKind::Operator(Arc::new(factory))
                }
                LogicalPlan::Aggregate(a) => {
                    let (pre, aggregate, keys) = self.window_aggregate(
                        a,
                        event_time.map(|e| e.column.as_str()),
                        table,
                        pos,
                    )?;
                    add(graph, pre, Partitioning::Forward);
                    add(graph, aggregate, Partitioning::Hash(keys));
                    continue;
                }
                _ => {
                    unreachable!("only filters, projections and aggregates are collected as steps")
                }
            };
            add(graph, kind, Partitioning::Forward);
        }
        Ok(last)
    }
}

impl Planner {
    /// Plans a `GROUP BY` that includes `date_bin(INTERVAL …, event_time)` as
    /// a tumbling window aggregate: a projection that appends the group keys
    /// as columns, then the aggregate behind a hash exchange on those keys.
    /// Returns both operators and the key columns to hash.
    fn window_aggregate(
        &self,
        a: &datafusion::logical_expr::Aggregate,
        event_time: Option<&str>,
        table: &str,
        pos: &SourcePos,
    ) -> Result<(NodeKind, NodeKind, Vec<usize>)> {
        let window = a
            .group_expr
            .iter()
            .enumerate()
            .find_map(|(i, g)| window_of(g, &a.input).map(|(size, column)| (i, size, column)));
        let Some((window_key, size_ns, column)) = window else {
            return Err(pos.error(
                "GROUP BY without an event-time window gives an updating result, which is not supported yet; \
                 group by date_bin(INTERVAL '…', <event-time column>) for a tumbling window",
            ));
        };
        let size_ns = size_ns.ok_or_else(|| {
            pos.error("a tumbling window's size must be a constant INTERVAL of days, hours, minutes or seconds")
        })?;
        match event_time {
            None => {
                return Err(pos.error(format!(
                    "table '{table}' has no event time, so it cannot be windowed: declare WATERMARK FOR <column> AS … in its CREATE TABLE"
                )));
            }
            Some(et) if et != column => {
                return Err(pos.error(format!(
                    "the window is over column '{column}', but the event-time column of '{table}' is '{et}'"
                )));
            }
            Some(_) => {}
        }
        let state = self.ctx.state();
        let input_df = a.input.schema();
        let input = input_df.as_arrow();
        let width = input.fields().len();
        let output = a.schema.as_arrow();
        let mut exprs: Vec<Arc<dyn datafusion::physical_expr::PhysicalExpr>> = input
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| Arc::new(Column::new(f.name(), i)) as _)
            .collect();
        let mut fields: Vec<arrow::datatypes::FieldRef> = input.fields().iter().cloned().collect();
        for (i, g) in a.group_expr.iter().enumerate() {
            exprs.push(
                state
                    .create_physical_expr(g.clone(), input_df)
                    .map_err(|e| pos.datafusion(e))?,
            );
            let field = output.field(i);
            fields.push(Arc::new(arrow::datatypes::Field::new(
                format!("__flumen_key_{i}"),
                field.data_type().clone(),
                true,
            )));
        }
        let pre_schema = Arc::new(arrow::datatypes::Schema::new(fields));
        let keys: Vec<usize> = (width..width + a.group_expr.len()).collect();
        let aggregates = a
            .aggr_expr
            .iter()
            .map(|e| {
                let planning = datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext::default();
                let lowered = datafusion::physical_expr::aggregate::LoweredAggregateBuilder::new(
                    e,
                    input_df,
                    input,
                    state.execution_props(),
                    &planning,
                )
                .build()
                .map_err(|e| pos.datafusion(e))?;
                let (function, filter) = (lowered.aggregate, lowered.filter);
                if !lowered.order_bys.is_empty() {
                    return Err(pos.error(format!(
                        "ordered aggregate {e} is not supported in windows yet"
                    )));
                }
                Ok(AggregateCall { function, filter })
            })
            .collect::<Result<Vec<_>>>()?;
        let pre = NodeKind::Operator(Arc::new(ProjectionFactory::new(exprs, pre_schema.clone())));
        let aggregate = NodeKind::Operator(Arc::new(WindowAggregateFactory {
            key_columns: keys.clone(),
            window_key,
            size_ns,
            aggregates,
            key_schema: Arc::new(pre_schema.project(&keys)?),
            output: Arc::new(output.clone()),
        }));
        Ok((pre, aggregate, keys))
    }
}

/// The window a group key stands for: the window length in nanoseconds
/// (`None` when it is not a constant interval) and the timestamp column it is
/// computed from. A key is a window when it is `date_bin(INTERVAL, col)`
/// (tumbling), or a column that, through projections and aliases, is the
/// UNNEST of `hop(slide, size, col)` (sliding).
fn window_of(key: &Expr, input: &LogicalPlan) -> Option<(Option<i64>, String)> {
    match key.clone().unalias_nested().data {
        Expr::Column(c) => match defining_expr(input, &c)? {
            (Expr::ScalarFunction(f), true) if f.func.name() == "hop" && f.args.len() == 3 => {
                let Expr::Column(ts) = &f.args[2] else {
                    return None;
                };
                Some((literal_nanos(&f.args[1]), ts.name.clone()))
            }
            // `defining_expr` follows renames, so `e` is never a bare column.
            (e, false) => window_of(&e, input),
            _ => None,
        },
        Expr::ScalarFunction(f) if f.func.name() == "date_bin" && f.args.len() == 2 => {
            let Expr::Column(ts) = &f.args[1] else {
                return None;
            };
            Some((literal_nanos(&f.args[0]), ts.name.clone()))
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
/// renames down the plan, and whether an UNNEST of it gives the column.
fn defining_expr(plan: &LogicalPlan, c: &datafusion::common::Column) -> Option<(Expr, bool)> {
    let index = plan.schema().index_of_column(c).ok()?;
    let input_column = |input: &LogicalPlan, i: usize| {
        datafusion::common::Column::from(input.schema().qualified_field(i))
    };
    match plan {
        LogicalPlan::Projection(p) => match p.expr[index].clone().unalias_nested().data {
            Expr::Column(inner) => defining_expr(&p.input, &inner),
            e => Some((e, false)),
        },
        LogicalPlan::SubqueryAlias(a) => defining_expr(&a.input, &input_column(&a.input, index)),
        LogicalPlan::Filter(f) => defining_expr(&f.input, c),
        LogicalPlan::Unnest(u) => {
            let source = *u.dependency_indices.get(index)?;
            let (e, _) = defining_expr(&u.input, &input_column(&u.input, source))?;
            let unnested = u.list_type_columns.iter().any(|(i, _)| *i == source);
            Some((e, unnested))
        }
        _ => None,
    }
}

fn unsupported(plan: &LogicalPlan) -> String {
    let what = match plan {
        LogicalPlan::Aggregate(_) => "GROUP BY and aggregate functions are",
        LogicalPlan::Join(_) => "JOIN is",
        LogicalPlan::Window(_) => "window functions (OVER) are",
        LogicalPlan::Sort(_) => "ORDER BY is",
        LogicalPlan::Limit(_) => "LIMIT is",
        LogicalPlan::Distinct(_) => "DISTINCT is",
        LogicalPlan::Union(_) => "UNION is",
        LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => {
            return "a query must read from a connector table (a source) to run as a stream".into();
        }
        other => return format!("{} is not supported in streaming queries", other.display()),
    };
    format!("{what} not supported in streaming queries yet")
}

/// Rejects an INSERT whose query gives a column a type the table's column
/// cannot take (a number into a timestamp, text into a number, …).
fn check_insert_types(
    table: &str,
    target: &SchemaRef,
    source: &arrow::datatypes::Schema,
) -> Result<()> {
    if target.fields().len() != source.fields().len() {
        return Err(FlumenError::plan(format!(
            "INSERT INTO {table}: the table has {} columns but the query gives {}",
            target.fields().len(),
            source.fields().len()
        )));
    }
    for (t, s) in target.fields().iter().zip(source.fields()) {
        let (tt, st) = (t.data_type(), s.data_type());
        let ok = tt == st
            || matches!(st, DataType::Null)
            || (tt.is_numeric() && st.is_numeric())
            || matches!(
                tt,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
            || (tt.is_temporal() && st.is_temporal());
        if !ok {
            return Err(FlumenError::plan(format!(
                "INSERT INTO {table}: column '{}' is {tt} but the query gives {st} (query column '{}')",
                t.name(),
                s.name()
            )));
        }
    }
    Ok(())
}
