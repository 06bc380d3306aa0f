//! Planning `GROUP BY`: an event-time window among the group keys makes a
//! window aggregate that emits each window once; without one the aggregate
//! is non-windowed and its result updates as rows arrive.

use std::sync::Arc;

use datafusion::common::Column as LogicalColumn;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan};
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use flumen_operators::{
    AggregateCall, LocalAggregateFactory, PartialRows, RETRACTABLE, SessionAggregateFactory,
    SessionColumn, UpdatingAggregateFactory, WindowAggregateFactory,
};
use flumen_runtime::{JobGraph, NodeKind, Partitioning};
use flumen_types::{Result, op_field};

use super::Planner;
use super::streaming::{
    KeyFacts, Stream, session_column, stream_schema, trace_column, window_call, window_of,
};
use crate::errors::SourcePos;

impl Planner {
    /// Plans a `GROUP BY` over `input`: the group keys are appended as
    /// columns, a hash exchange on them feeds the aggregate.
    pub(super) fn plan_aggregate(
        &self,
        a: &Aggregate,
        input: Stream,
        panes: Option<super::panes::PanePlan>,
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<Stream> {
        if a.group_expr
            .iter()
            .any(|g| matches!(g, Expr::GroupingSet(_)))
        {
            return Err(pos.error(
                "GROUPING SETS, ROLLUP and CUBE are not supported in streaming queries yet; write one GROUP BY per grouping and UNION ALL them",
            ));
        }
        // Of several window keys (a cumulating window's start and end), the
        // one that closes first decides when a window fires.
        let window = a
            .group_expr
            .iter()
            .enumerate()
            .filter_map(|(i, g)| window_of(g, &a.input).map(|w| (i, w)))
            .min_by_key(|(_, w)| w.0.unwrap_or(i64::MAX));
        let aggregates = self.aggregate_calls(a, pos)?;
        let output = Arc::new(a.schema.as_arrow().clone());
        let sessions: Vec<Option<SessionColumn>> = a
            .group_expr
            .iter()
            .map(|g| session_column(g, &a.input))
            .collect();
        if sessions.iter().any(Option::is_some) {
            return self.session_aggregate(a, input, aggregates, &sessions, graph, pos);
        }
        let Some((window_key, (size_ns, ts, ts_plan))) = window else {
            if let Some(call) = a.group_expr.iter().find_map(|g| window_call(g, &a.input)) {
                return Err(pos.error(format!(
                    "the {call}(…) window is not over an event-time column as it is: group by {call}(INTERVAL '…', <column>) where <column> is the table's event-time column (the one in WATERMARK FOR), with no origin and no expression around it"
                )));
            }
            return self.updating_aggregate(a, input, aggregates, graph, pos);
        };
        let size_ns = size_ns.ok_or_else(|| {
            pos.error(
                "a window's size must be a constant INTERVAL of days, hours, minutes or seconds",
            )
        })?;
        let processing_time = self.is_processing_time(ts_plan, &ts);
        if !processing_time && !self.is_event_time(ts_plan, &ts) {
            return Err(pos.error(match trace_column(ts_plan, &ts) {
                Some((table, column)) => match self.event_times.get(&table) {
                    Some(et) => format!(
                        "the window is over column '{column}', but the event-time column of '{table}' is '{}'; window by '{}'",
                        et.column, et.column
                    ),
                    None => format!(
                        "table '{table}' has no event time, so it cannot be windowed: declare WATERMARK FOR <column> AS … in its CREATE TABLE"
                    ),
                },
                None => format!(
                    "the window is over '{ts}', which is not a source's event-time column; window by the column named in WATERMARK FOR"
                ),
            }));
        }
        if let Some(part) = &input.updating {
            return Err(pos.error(format!(
                "a window over an updating input ({part}) is not supported; window the append-only stream"
            )));
        }
        let mut allowed_lateness_ns = 0;
        let mut output = output;
        let mut updating = None;
        if let Some((table, text)) = self.allowed_lateness(ts_plan, &ts) {
            allowed_lateness_ns = crate::script::duration_nanos(text).ok_or_else(|| {
                pos.error(format!(
                    "table '{table}': allowed_lateness must be a duration such as '5 s', not '{text}'"
                ))
            })?;
            if allowed_lateness_ns > 0 {
                let mut fields: Vec<_> =
                    output.fields().iter().map(|f| f.as_ref().clone()).collect();
                fields.push(op_field());
                output = Arc::new(arrow::datatypes::Schema::new(fields));
                updating = Some(format!(
                    "allowed_lateness = '{text}' on table '{table}' corrects a window's result when late rows arrive"
                ));
            }
        }
        if panes.as_ref().is_some_and(|p| p.window_key != window_key) {
            return Err(pos.error("internal: the panes' window key is not the aggregate's"));
        }
        let (input, keys) = self.with_keys(input, a.input.schema(), &a.group_expr, graph, pos)?;
        let key_schema = Arc::new(input.schema.project(&keys)?);
        // Two-phase: a local aggregate before the exchange sends partial
        // states, which the window aggregate merges (not for DISTINCT: a
        // partial set of distinct values is no smaller than its rows).
        let two_phase = self.two_phase_for(&aggregates);
        let (input_node, key_columns) = if two_phase {
            let local = LocalAggregateFactory {
                key_columns: keys.clone(),
                aggregates: aggregates.clone(),
                key_schema: key_schema.clone(),
                rows: PartialRows::Uncounted,
            };
            let node = self.add(
                graph,
                input.node,
                NodeKind::Operator(Arc::new(local)),
                Partitioning::Forward,
            );
            (node, (0..keys.len()).collect::<Vec<_>>())
        } else {
            (input.node, keys.clone())
        };
        let aggregate = NodeKind::Operator(Arc::new(WindowAggregateFactory {
            key_columns: key_columns.clone(),
            window_key,
            size_ns,
            aggregates,
            key_schema,
            output: output.clone(),
            processing_time,
            allowed_lateness_ns,
            panes: panes.as_ref().map(|p| p.panes.clone()),
            merge_states: two_phase,
        }));
        let hashed: Vec<usize> = match &panes {
            Some(p) => key_columns
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != p.window_key && !p.panes.shifted.contains(i))
                .map(|(_, &k)| k)
                .collect(),
            None => key_columns.clone(),
        };
        let node = graph.add_node(aggregate, self.options.parallelism);
        // A window built from panes merges each group's panes: the group,
        // not the pane, picks the subtask.
        graph.connect(input_node, node, Partitioning::Hash(hashed));
        Ok(Stream {
            node,
            schema: output,
            updating,
            bounded: input.bounded,
            bounded_bytes: None,
            hash_key: None,
            keys: KeyFacts::default(),
        })
    }

    /// The table of event-time column `ts` of `plan`, and its
    /// `allowed_lateness` option when it has one.
    pub(super) fn allowed_lateness(
        &self,
        plan: &LogicalPlan,
        ts: &LogicalColumn,
    ) -> Option<(String, &str)> {
        let (table, _) = trace_column(plan, ts)?;
        let text = self.tables.get(&table)?.options.get("allowed_lateness")?;
        Some((table, text))
    }

    /// A `GROUP BY` over a `session(…)` table function: rows arrive as
    /// sessions of their own and the session aggregate merges them per key.
    fn session_aggregate(
        &self,
        a: &Aggregate,
        input: Stream,
        aggregates: Vec<AggregateCall>,
        sessions: &[Option<SessionColumn>],
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<Stream> {
        no_ordered_filter(a, &aggregates, pos)?;
        let has = |c| sessions.contains(&Some(c));
        if !has(SessionColumn::Start) || !has(SessionColumn::End) {
            return Err(pos.error(
                "a session window aggregate groups by both window_start and window_end of session(…)",
            ));
        }
        if let Some(part) = &input.updating {
            return Err(pos.error(format!(
                "a session window over an updating input ({part}) is not supported"
            )));
        }
        let (input, columns) =
            self.with_keys(input, a.input.schema(), &a.group_expr, graph, pos)?;
        let mut key_columns = Vec::new();
        let mut layout = Vec::new();
        let (mut start_column, mut end_column) = (0, 0);
        for (part, &column) in sessions.iter().zip(&columns) {
            layout.push(match part {
                Some(SessionColumn::Start) => {
                    start_column = column;
                    SessionColumn::Start
                }
                Some(SessionColumn::End) => {
                    end_column = column;
                    SessionColumn::End
                }
                _ => {
                    key_columns.push(column);
                    SessionColumn::Key(key_columns.len() - 1)
                }
            });
        }
        let output = Arc::new(a.schema.as_arrow().clone());
        let factory = SessionAggregateFactory {
            key_columns: key_columns.clone(),
            start_column,
            end_column,
            layout,
            aggregates,
            input: input.schema.clone(),
            output: output.clone(),
        };
        let node = graph.add_node(
            NodeKind::Operator(Arc::new(factory)),
            self.options.parallelism,
        );
        graph.connect(input.node, node, Partitioning::Hash(key_columns));
        Ok(Stream {
            node,
            schema: output,
            updating: None,
            bounded: input.bounded,
            bounded_bytes: None,
            hash_key: None,
            keys: KeyFacts::default(),
        })
    }

    /// A `GROUP BY` without a window: one running result per group, emitted
    /// as an insert when the group appears and as an update when it changes.
    fn updating_aggregate(
        &self,
        a: &Aggregate,
        input: Stream,
        aggregates: Vec<AggregateCall>,
        graph: &mut JobGraph,
        pos: &SourcePos,
    ) -> Result<Stream> {
        no_ordered_filter(a, &aggregates, pos)?;
        let retracting = input.updating.is_some();
        if retracting {
            for (call, e) in aggregates.iter().zip(&a.aggr_expr) {
                let retractable = RETRACTABLE.contains(&call.function.fun().name())
                    && call
                        .function
                        .create_sliding_accumulator()
                        .is_ok_and(|acc| acc.supports_retract_batch());
                if !retractable {
                    return Err(pos.error(format!(
                        "aggregate {e} cannot be computed incrementally over an updating input ({}), \
                         because it cannot take back a row; COUNT, SUM and AVG can — or aggregate the append-only stream",
                        input.updating.as_deref().unwrap_or_default()
                    )));
                }
            }
        }
        let (input, keys) = self.with_keys(input, a.input.schema(), &a.group_expr, graph, pos)?;
        let output = stream_schema(&a.schema, true);
        let group_text: Vec<String> = a.group_expr.iter().map(Expr::to_string).collect();
        let op_column = retracting.then(|| input.schema.fields().len() - 1);
        // Rows a join holds by some of the group keys stay where they are:
        // every row of a group has those keys' values, so came to the same
        // subtask. The groups are routed by those keys alone (their key
        // groups too, at any parallelism, so that state moves between
        // parallelisms), and the aggregate is chained to the join, which
        // saves hashing and copying every row again.
        let routed_by: Option<Vec<usize>> = input
            .hash_key
            .as_ref()
            .filter(|h| !h.is_empty())
            .and_then(|h| h.iter().map(|c| keys.iter().position(|k| k == c)).collect());
        // Two-phase, as for windows: partial states with their row counts,
        // a group's retractions apart from its additions.
        let two_phase = routed_by.is_none() && self.two_phase_for(&aggregates);
        let (input_node, key_columns, op_column) = if two_phase {
            let local = LocalAggregateFactory {
                key_columns: keys.clone(),
                aggregates: aggregates.clone(),
                key_schema: Arc::new(input.schema.project(&keys)?),
                rows: match op_column {
                    Some(op) => PartialRows::Retracting(op),
                    None => PartialRows::Counted,
                },
            };
            let width = local.output()?.fields().len();
            let node = self.add(
                graph,
                input.node,
                NodeKind::Operator(Arc::new(local)),
                Partitioning::Forward,
            );
            (
                node,
                (0..keys.len()).collect(),
                op_column.map(|_| width - 1),
            )
        } else {
            (input.node, keys, op_column)
        };
        let factory = UpdatingAggregateFactory {
            key_columns: key_columns.clone(),
            aggregates,
            op_column,
            state_ttl_ns: self.state_ttl_ns,
            output: output.clone(),
            merge_states: two_phase,
            routed_by: routed_by.clone(),
        };
        let kind = NodeKind::Operator(Arc::new(factory));
        // At parallelism 1 the exchange only hands batches on, and the task
        // boundary it makes lets the join and the aggregate use two cores:
        // chained there, q4 ran slower and took more CPU.
        let node = if routed_by.is_some() && self.options.parallelism > 1 {
            self.add(graph, input_node, kind, Partitioning::Forward)
        } else {
            let hashed = match routed_by {
                Some(routed) => routed.iter().map(|&c| key_columns[c]).collect(),
                None => key_columns,
            };
            let node = graph.add_node(kind, self.options.parallelism);
            graph.connect(input_node, node, Partitioning::Hash(hashed));
            node
        };
        Ok(Stream {
            node,
            schema: output,
            updating: Some(format!(
                "GROUP BY {} without a window updates each group's row as rows arrive",
                group_text.join(", ")
            )),
            bounded: input.bounded,
            bounded_bytes: None,
            hash_key: None,
            keys: KeyFacts::default(),
        })
    }

    /// Whether `aggregates` are aggregated in two phases: when asked for
    /// and none is DISTINCT (a partial set of distinct values is no smaller
    /// than its rows).
    fn two_phase_for(&self, aggregates: &[AggregateCall]) -> bool {
        self.two_phase && aggregates.iter().all(|a| !a.function.is_distinct())
    }

    /// DataFusion's aggregate functions for the aggregate expressions.
    fn aggregate_calls(&self, a: &Aggregate, pos: &SourcePos) -> Result<Vec<AggregateCall>> {
        let state = self.ctx.state();
        let input_df = a.input.schema();
        let input = input_df.as_arrow();
        a.aggr_expr
            .iter()
            .map(|e| {
                let planning = PhysicalPlanningContext::default();
                let lowered = LoweredAggregateBuilder::new(
                    e,
                    input_df,
                    input,
                    state.execution_props(),
                    &planning,
                )
                .build()
                .map_err(|e| pos.datafusion(e))?;
                // Ordered aggregates whose accumulators compare the ORDER BY
                // columns themselves (first_value, last_value, array_agg)
                // work on rows in any order; one that needs sorted input
                // does not.
                if !lowered.order_bys.is_empty()
                    && lowered.aggregate.order_sensitivity().hard_requires()
                {
                    return Err(pos.error(format!(
                        "ordered aggregate {e} needs its input sorted, which a stream is not; \
                         first_value, last_value and array_agg with ORDER BY work"
                    )));
                }
                Ok(AggregateCall {
                    function: lowered.aggregate,
                    filter: lowered.filter,
                })
            })
            .collect()
    }
}

/// Session and non-windowed aggregates feed row accumulators, where a
/// `FILTER` turns the rows it leaves out into nulls; an ordered aggregate
/// would still order by those rows (`last_value` could pick one), so the two
/// together are a plan error there.
fn no_ordered_filter(a: &Aggregate, aggregates: &[AggregateCall], pos: &SourcePos) -> Result<()> {
    match aggregates
        .iter()
        .zip(&a.aggr_expr)
        .find(|(c, _)| c.filter.is_some() && !c.function.order_bys().is_empty())
    {
        Some((_, e)) => Err(pos.error(format!(
            "ordered aggregate {e} with FILTER (WHERE …) is supported in event-time windows only; \
             filter the rows in WHERE, or window them"
        ))),
        None => Ok(()),
    }
}
