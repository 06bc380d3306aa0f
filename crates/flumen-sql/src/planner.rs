//! The planner: runs each statement of a script through DataFusion, keeps
//! the connector tables, and turns each `INSERT INTO … SELECT` or bare
//! `SELECT` into a pipeline of the job graph: a source, its chained filters
//! and projections, and a sink.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::logical_expr::{DdlStatement, ExprSchemable, LogicalPlan, WriteOp};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{CreateTableOptions, Statement};
use flumen_connectors::{StdoutFormat, StdoutSinkFactory, TableSpec};
use flumen_runtime::{JobGraph, NodeKind, Partitioning};
use flumen_types::{FlumenError, Result};

use crate::catalog::ConnectorTable;
use crate::errors::SourcePos;
use crate::script::{self, ComputedClause, MetadataClause, WatermarkClause};

mod aggregate;
mod lookup;
mod panes;
mod split_distinct;
mod streaming;
mod top_n;

/// Flink's setting for two-phase (local-global) aggregation.
const AGG_PHASE_STRATEGY: &str = "table.optimizer.agg-phase-strategy";
const SPLIT_DISTINCT: &str = "table.optimizer.distinct-agg.split.enabled";
const SPLIT_BUCKETS: &str = "table.optimizer.distinct-agg.split.bucket-num";
/// Flink's setting for the largest table (bytes) a join broadcasts; -1: none.
const BROADCAST_THRESHOLD: &str = "table.optimizer.join.broadcast-threshold";
/// Flink's default broadcast threshold: 1 MiB.
const DEFAULT_BROADCAST_THRESHOLD: u64 = 1 << 20;

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
    /// Names the job's output files apart from other jobs'; a job resumed
    /// from a checkpoint keeps the id it started with. `None`: a new id.
    pub job_id: Option<String>,
}

impl Default for PlannerOptions {
    fn default() -> Self {
        PlannerOptions {
            parallelism: 1,
            stdout_format: StdoutFormat::Table,
            overrides: Vec::new(),
            job_id: None,
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

/// A computed column of a table (`name AS expression`): its name among
/// the table's columns and its expression over the table's other columns.
struct ComputedColumn {
    name: String,
    expr: datafusion::logical_expr::Expr,
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
    /// Each table's computed columns, which its source does not read: a
    /// projection after the source computes them.
    computed: HashMap<String, Vec<ComputedColumn>>,
    queries: Vec<Query>,
    /// `SET state_ttl`: how long (event time) a regular join keeps a row.
    state_ttl_ns: Option<i64>,
    /// `SET 'table.optimizer.agg-phase-strategy' = 'TWO_PHASE'`: window
    /// aggregates pre-aggregate each batch before their exchange.
    two_phase: bool,
    /// `SET 'table.optimizer.distinct-agg.split.enabled' = 'true'`: the
    /// bucket count a non-windowed DISTINCT aggregate is split by
    /// (`table.optimizer.distinct-agg.split.bucket-num`, 1024 as in Flink).
    split_distinct: Option<u32>,
    split_buckets: u32,
    /// `SET 'table.optimizer.join.broadcast-threshold'`: a join sends a
    /// bounded side read from at most this many bytes of files to every
    /// subtask whole, instead of hashing both sides; `None` (-1): never.
    broadcast_threshold: Option<u64>,
    /// How many session aggregates are being planned around their input:
    /// session rows are refused outside one.
    session_rows_wanted: std::sync::atomic::AtomicUsize,
    /// The UNNESTs of `hop(…)` (by address in the plan being planned) that
    /// give each row only its last window, for window aggregates built
    /// from panes.
    pane_unnests: std::sync::Mutex<Vec<usize>>,
}

/// A DataFusion session configured as flumen plans: spans kept for error
/// positions, VARCHAR as Arrow `Utf8`, DISTINCT aggregates left whole, and
/// flumen's UDFs registered. Tests use
/// the same session for their batch oracle.
pub fn session() -> SessionContext {
    let mut config = SessionConfig::new();
    let opts = config.options_mut();
    opts.sql_parser.collect_spans = true;
    opts.sql_parser.map_string_types_to_utf8view = false;
    let ctx = SessionContext::new_with_config(config);
    // DataFusion rewrites `count(DISTINCT x), max(y) … GROUP BY k` as an
    // aggregate by (k, x) under one by k: for a stream, an aggregate over
    // an updating input, where MAX cannot take a row back. flumen's
    // aggregates count distinct values themselves.
    ctx.remove_optimizer_rule("single_distinct_aggregation_to_group_by");
    for udf in crate::udf::udfs() {
        ctx.register_udf(udf);
    }
    ctx
}

impl Planner {
    /// A planner with no tables yet.
    pub fn new(options: PlannerOptions) -> Self {
        let state_ttl_ns = options
            .overrides
            .iter()
            .rev()
            .find(|(k, _)| k == "state_ttl")
            .and_then(|(_, v)| script::duration_nanos(v));
        Planner {
            ctx: session(),
            options,
            tables: HashMap::new(),
            event_times: HashMap::new(),
            computed: HashMap::new(),
            queries: Vec::new(),
            state_ttl_ns,
            two_phase: false,
            split_distinct: None,
            split_buckets: 1024,
            broadcast_threshold: Some(DEFAULT_BROADCAST_THRESHOLD),
            session_rows_wanted: std::sync::atomic::AtomicUsize::new(0),
            pane_unnests: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Runs the statements of one script: DDL takes effect now, queries are
    /// kept for [`Planner::build`]. `file` names the script in errors.
    pub async fn add_script(&mut self, file: &str, sql: &str) -> Result<()> {
        if let Some((line, column)) = script::first_hint(sql) {
            return Err(FlumenError::plan(format!(
                "{file}:{line}:{column}: hints (/*+ … */) are not supported yet: \
                 give a table's options in its CREATE TABLE, or with --set KEY=VALUE"
            )));
        }
        let (sql, mut watermarks) =
            script::strip_watermarks(sql).map_err(|e| FlumenError::plan(format!("{file}:{e}")))?;
        let (sql, mut metadata) =
            script::strip_metadata(&sql).map_err(|e| FlumenError::plan(format!("{file}:{e}")))?;
        let (sql, mut lookups) = script::strip_system_time(&sql)
            .map_err(|e| FlumenError::plan(format!("{file}:{e}")))?;
        let sql = script::strip_table_arguments(&sql);
        let sql = script::strip_statement_sets(&sql);
        let sql = script::timestamp_ltz_as_timestamp(&sql);
        let (sql, mut computed) =
            script::strip_computed(&sql).map_err(|e| FlumenError::plan(format!("{file}:{e}")))?;
        let statements = script::parse(file, &sql)?;
        let starts: Vec<(u64, u64)> = statements
            .iter()
            .map(|(_, start)| (start.line, start.column))
            .collect();
        for (i, (statement, start)) in statements.into_iter().enumerate() {
            let pos = SourcePos::at(file, start);
            let next = starts.get(i + 1).copied().unwrap_or((u64::MAX, u64::MAX));
            let (mine, rest): (Vec<_>, Vec<_>) = watermarks
                .into_iter()
                .partition(|w| (w.line, w.column) < next);
            watermarks = rest;
            let (columns, rest): (Vec<_>, Vec<_>) = metadata
                .into_iter()
                .partition(|m| (m.line, m.column) < next);
            metadata = rest;
            let (computed_columns, rest): (Vec<_>, Vec<_>) = computed
                .into_iter()
                .partition(|c| (c.line, c.column) < next);
            computed = rest;
            let (clauses, rest): (Vec<_>, Vec<_>) =
                lookups.into_iter().partition(|c| (c.line, c.column) < next);
            lookups = rest;
            for clause in clauses {
                let at = SourcePos {
                    file: file.to_string(),
                    line: clause.line,
                    column: clause.column,
                };
                self.check_lookup_clause(&clause.table, &at)?;
            }
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
            self.add_statement(statement, &pos, watermark, columns, computed_columns)
                .await?;
        }
        Ok(())
    }

    async fn plan(&self, mut statement: Statement, pos: &SourcePos) -> Result<LogicalPlan> {
        // A table with computed columns may window by one computed by
        // PROCTIME(): the streaming planner checks its windows' time.
        let event_time_of = |table: &str| {
            let name = table.trim_matches('"').to_lowercase();
            (self.tables.contains_key(&name) && !self.computed.contains_key(&name))
                .then(|| self.event_times.get(&name).map(|e| e.column.clone()))
        };
        crate::group_windows::rewrite_group_windows(&mut statement).map_err(|e| pos.error(e))?;
        crate::tvf::expand_window_tvfs(&mut statement, &event_time_of).map_err(|e| pos.error(e))?;
        crate::repeated_names::alias_repeats(&mut statement);
        crate::if_function::rewrite_if(&mut statement).map_err(|e| pos.error(e))?;
        crate::timestamp_units::quote_units(&mut statement);
        let written = statement.clone();
        self.ctx
            .state()
            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
            .await
            .map_err(|e| pos.datafusion_in(e, &written))
    }

    async fn add_statement(
        &mut self,
        statement: Statement,
        pos: &SourcePos,
        watermark: Option<WatermarkClause>,
        metadata: Vec<MetadataClause>,
        computed: Vec<ComputedClause>,
    ) -> Result<()> {
        if let (Some(m), false) = (
            metadata.first(),
            matches!(statement, Statement::CreateTable(_)),
        ) {
            let at = SourcePos {
                file: pos.file.clone(),
                line: m.line,
                column: m.column,
            };
            return Err(at.error("METADATA belongs to a column of a CREATE TABLE"));
        }
        match statement {
            Statement::CreateTable(mut ct) => {
                // Every table lives as long as the job, so Flink's
                // TEMPORARY changes nothing.
                ct.temporary = false;
                if ct.query.is_some() {
                    return Err(pos.error("CREATE TABLE … AS SELECT is not supported; declare the table, then INSERT INTO it"));
                }
                let name = ct.name.to_string().to_lowercase();
                if self.tables.contains_key(&name) {
                    return Err(pos.error(format!("table '{name}' is declared twice")));
                }
                let mut options = script::table_options(&ct).map_err(|e| pos.wrap(e))?;
                let primary_key = script::primary_key(&ct);
                let mut columns_only = ct.clone();
                columns_only.table_options = CreateTableOptions::None;
                script::drop_constraints(&mut columns_only);
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
                    primary_key,
                    metadata: metadata
                        .iter()
                        .map(|m| (m.column_name.clone(), m.key.clone()))
                        .collect(),
                };
                if let Some(missing) = spec
                    .primary_key
                    .iter()
                    .find(|k| schema.field_with_name(k).is_err())
                {
                    return Err(pos.error(format!(
                        "PRIMARY KEY column '{missing}' is not a column of table '{name}'"
                    )));
                }
                flumen_connectors::check_table(&spec).map_err(|e| pos.wrap(e))?;
                // The schema has the declared columns in their order, with
                // their names as SQL normalised them.
                for (column, field) in ct.columns.iter().zip(schema.fields()) {
                    if spec.metadata.iter().any(|(c, _)| c == field.name()) {
                        continue;
                    }
                    flumen_connectors::check_column(&spec, field)
                        .map_err(|e| SourcePos::at(&pos.file, column.name.span.start).wrap(e))?;
                }
                let (schema, computed) = self.computed_columns(&spec, computed, &pos.file)?;
                if let Some(clause) = watermark {
                    let at = SourcePos {
                        file: pos.file.clone(),
                        line: clause.line,
                        column: clause.column,
                    };
                    let event_time = self.event_time(&name, &schema, clause, &at)?;
                    self.event_times.insert(name.clone(), event_time);
                }
                self.ctx
                    .register_table(name.as_str(), Arc::new(ConnectorTable { schema }))
                    .map_err(|e| pos.datafusion(e))?;
                if !computed.is_empty() {
                    self.computed.insert(name.clone(), computed);
                }
                self.tables.insert(name, spec);
            }
            Statement::CreateView(mut view) => {
                view.temporary = false;
                let plan = self.plan(Statement::CreateView(view), pos).await?;
                self.ctx
                    .execute_logical_plan(plan)
                    .await
                    .map_err(|e| pos.datafusion(e))?;
            }
            Statement::Insert(ref insert) => {
                let target = insert.table.to_string().trim_matches('"').to_lowercase();
                if let Some(computed) = self.computed.get(&target) {
                    let names: Vec<&str> = computed.iter().map(|c| c.name.as_str()).collect();
                    return Err(pos.error(format!(
                        "table '{target}' has computed columns ({}), which are read, never written: INSERT INTO a table without them",
                        names.join(", ")
                    )));
                }
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
            Statement::Set(datafusion::sql::sqlparser::ast::Set::SingleAssignment {
                variable,
                values,
                ..
            }) => {
                let name = variable.to_string().trim_matches('\'').to_lowercase();
                let value = values
                    .first()
                    .map(|v| v.to_string().trim_matches('\'').to_string())
                    .unwrap_or_default();
                match name.as_str() {
                    "state_ttl" => {
                        let Some(ns) = script::duration_nanos(&value) else {
                            return Err(pos.error(format!(
                                "state_ttl must be a duration such as '10 s', '5 min' or '1 h', not '{value}'"
                            )));
                        };
                        if !self.options.overrides.iter().any(|(k, _)| k == "state_ttl") {
                            self.state_ttl_ns = Some(ns);
                        }
                    }
                    AGG_PHASE_STRATEGY => {
                        self.two_phase = match value.to_uppercase().as_str() {
                            "TWO_PHASE" => true,
                            "ONE_PHASE" | "AUTO" => false,
                            _ => {
                                return Err(pos.error(format!(
                                    "{AGG_PHASE_STRATEGY} must be 'AUTO', 'ONE_PHASE' or 'TWO_PHASE', not '{value}'"
                                )));
                            }
                        };
                    }
                    SPLIT_DISTINCT => {
                        let on = match value.to_lowercase().as_str() {
                            "true" => true,
                            "false" => false,
                            _ => {
                                return Err(pos.error(format!(
                                    "{SPLIT_DISTINCT} must be 'true' or 'false', not '{value}'"
                                )));
                            }
                        };
                        self.split_distinct = on.then_some(self.split_buckets);
                    }
                    SPLIT_BUCKETS => {
                        let Some(n) = value.parse::<u32>().ok().filter(|n| *n > 0) else {
                            return Err(pos.error(format!(
                                "{SPLIT_BUCKETS} must be a positive integer, not '{value}'"
                            )));
                        };
                        self.split_buckets = n;
                        if self.split_distinct.is_some() {
                            self.split_distinct = Some(n);
                        }
                    }
                    BROADCAST_THRESHOLD => {
                        self.broadcast_threshold = match value.parse::<i64>() {
                            Ok(-1) => None,
                            Ok(bytes) if bytes >= 0 => Some(bytes as u64),
                            _ => {
                                return Err(pos.error(format!(
                                    "{BROADCAST_THRESHOLD} must be a number of bytes, or -1 to never broadcast, not '{value}'"
                                )));
                            }
                        };
                    }
                    _ => {
                        return Err(pos.error(format!(
                            "unknown setting '{name}'; valid settings: state_ttl, {AGG_PHASE_STRATEGY}, {SPLIT_DISTINCT}, {SPLIT_BUCKETS}, {BROADCAST_THRESHOLD}"
                        )));
                    }
                }
            }
            other => {
                let kind = other.to_string();
                let kind: String = kind
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                return Err(pos.error(format!(
                    "'{kind} …' is not supported; flumen runs CREATE TABLE, CREATE VIEW, SET, INSERT INTO and SELECT"
                )));
            }
        }
        Ok(())
    }

    /// `FOR SYSTEM_TIME AS OF` must follow a table of a lookup connector.
    fn check_lookup_clause(&self, table: &str, at: &SourcePos) -> Result<()> {
        let lookups = flumen_connectors::connectors()
            .iter()
            .filter(|c| c.looks_up())
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ");
        match self.tables.get(table) {
            Some(_) if self.is_lookup_table(table) => Ok(()),
            Some(spec) => Err(at.error(format!(
                "FOR SYSTEM_TIME AS OF reads a table by key (a lookup join), but table '{table}' uses connector '{}'; lookup connectors: {lookups}",
                spec.connector()
            ))),
            None => Err(at.error(format!(
                "FOR SYSTEM_TIME AS OF follows '{table}', which is not a declared table; it reads a table of a lookup connector ({lookups}) by key"
            ))),
        }
    }

    /// The columns of `spec`'s table with its computed columns in their
    /// declared places, and the computed columns planned over the others
    /// (which may be metadata columns, not other computed ones, as in
    /// Flink).
    fn computed_columns(
        &self,
        spec: &TableSpec,
        clauses: Vec<ComputedClause>,
        file: &str,
    ) -> Result<(SchemaRef, Vec<ComputedColumn>)> {
        if clauses.is_empty() {
            return Ok((spec.schema.clone(), Vec::new()));
        }
        let df_schema = DFSchema::try_from_qualified_schema(spec.name.as_str(), &spec.schema)
            .map_err(|e| FlumenError::plan(e.to_string()))?;
        let mut fields = spec.schema.fields().to_vec();
        let mut columns: Vec<ComputedColumn> = Vec::with_capacity(clauses.len());
        for (k, clause) in clauses.into_iter().enumerate() {
            let at = SourcePos {
                file: file.to_string(),
                line: clause.line,
                column: clause.column,
            };
            let name = clause.name;
            if fields.iter().any(|f| f.name() == &name) {
                return Err(at.error(format!(
                    "table '{}' declares column '{name}' twice",
                    spec.name
                )));
            }
            let in_column = |e: &dyn std::fmt::Display| {
                at.error(format!(
                    "in computed column '{name}' AS {}: {e}",
                    clause.expr
                ))
            };
            let expr = self
                .ctx
                .state()
                .create_logical_expr(&clause.expr, &df_schema)
                .map_err(|e| in_column(&crate::errors::clean(&e)))?;
            let data_type = expr
                .get_type(&df_schema)
                .map_err(|e| in_column(&crate::errors::clean(&e)))?;
            let index = clause.after + k;
            fields.insert(
                index,
                Arc::new(arrow::datatypes::Field::new(&name, data_type, true)),
            );
            columns.push(ComputedColumn { name, expr });
        }
        Ok((Arc::new(arrow::datatypes::Schema::new(fields)), columns))
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

    /// Every `--set` key must be a setting or an option some table's
    /// connector takes: a typo would otherwise change nothing, silently.
    fn check_overrides(&self) -> Result<()> {
        let mut valid: std::collections::BTreeSet<&str> = ["state_ttl"].into();
        for spec in self.tables.values() {
            let connector = spec.options.get("connector");
            if let Some(c) = connector.and_then(flumen_connectors::connector) {
                valid.extend(c.options().iter().map(|o| o.name));
            }
        }
        match self
            .options
            .overrides
            .iter()
            .find(|(key, _)| !valid.contains(key.as_str()))
        {
            Some((key, _)) => Err(FlumenError::plan(format!(
                "--set {key}: no table of the script takes option '{key}' and it is not a setting; valid here: {}",
                valid.into_iter().collect::<Vec<_>>().join(", ")
            ))),
            None => Ok(()),
        }
    }

    fn apply_overrides(&self, options: &mut Vec<(String, String)>) {
        let connector = options
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("connector"))
            .map(|(_, v)| v.clone());
        let Some(specs) = connector
            .as_deref()
            .and_then(flumen_connectors::connector)
            .map(|c| c.options())
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
            .and_then(crate::shared_regex::share_regexes)
            .map_err(|e| pos.datafusion(e))
    }

    /// Builds the job graph of every query added so far.
    pub async fn build(&self) -> Result<Pipeline> {
        if self.queries.is_empty() {
            return Err(FlumenError::plan(
                "the script has no INSERT INTO or SELECT statement, so there is nothing to run",
            ));
        }
        self.check_overrides()?;
        let mut graph = JobGraph::new();
        let mut logical_plans = Vec::new();
        let run_id = self.options.job_id.clone().unwrap_or_else(new_job_id);
        for (i, query) in self.queries.iter().enumerate() {
            logical_plans.push((query.label.clone(), query.plan.display_indent().to_string()));
            let first = graph.nodes().len();
            let stream = self
                .plan_stream(&query.plan, &mut graph, &query.pos)
                .await?;
            let last = stream.node;
            let input: SchemaRef = stream.schema.clone();
            if let (Some(part), Target::Table(name)) = (&stream.updating, &query.target) {
                let spec = &self.tables[name];
                if !flumen_connectors::accepts_updates(spec) {
                    return Err(query.pos.error(format!(
                        "table '{name}' (connector '{}') can only append rows, but the query gives an updating result: {part}; \
                         write it to a sink that takes updates (stdout, blackhole, filesystem with changelog = 'true') or make the query append-only (window the aggregation)",
                        spec.connector()
                    )));
                }
            }
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
            let edge = match (&stream.updating, &query.target) {
                (Some(_), Target::Table(name)) if parallelism > 1 => {
                    upsert_shuffle(&self.tables[name])
                }
                _ => None,
            };
            let edge = edge.unwrap_or(if parallelism == graph.nodes()[last].parallelism {
                Partitioning::Forward
            } else {
                Partitioning::Rebalance
            });
            graph.connect(last, sink, edge);
            graph.set_origin(first, &format!("{} {}", query.pos, query.label));
        }
        Ok(Pipeline {
            graph,
            logical_plans,
        })
    }
}

/// The hash exchange by a table's upsert key that an updating result takes
/// into its sink, so that one sink subtask applies every change of a key
/// in the order it was made (as Flink's keyed shuffle before upsert sinks);
/// none for a table without a key. The query's columns map to the table's
/// by position.
fn upsert_shuffle(spec: &TableSpec) -> Option<Partitioning> {
    let columns: Option<Vec<usize>> = flumen_connectors::upsert_key(spec)
        .iter()
        .map(|k| spec.schema.index_of(k).ok())
        .collect();
    columns.filter(|c| !c.is_empty()).map(Partitioning::Hash)
}

/// A job id from the clock: distinct for every run started on a machine.
pub fn new_job_id() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string()
}

/// "1 column", "3 columns".
fn columns(n: usize) -> String {
    format!("{n} column{}", if n == 1 { "" } else { "s" })
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
            "INSERT INTO {table}: the table has {} but the query gives {}",
            columns(target.fields().len()),
            columns(source.fields().len())
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
