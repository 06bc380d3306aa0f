//! Keyed state moves between parallelisms by key group: each stateful
//! operator runs part of its input at one parallelism, every subtask's state
//! is snapshotted, subtasks at another parallelism restore the key groups
//! they own, and the rest of the input runs there. The output must equal an
//! uninterrupted run at parallelism 1, row for row. The runs that move
//! state also take a snapshot after every input event, as checkpoints that
//! are never restored from, so operators that freeze state for a snapshot
//! must go on exactly; and the snapshot that moves state is built only after
//! its subtasks ran on to the end, so it must hold the state of its barrier
//! whatever they changed since.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray, UInt32Array,
};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::util::display::array_value_to_string;
use datafusion::functions_aggregate::count::count_udaf;
use datafusion::functions_aggregate::min_max::{max_udaf, min_udaf};
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::Operator as BinaryOp;
use datafusion::physical_expr::aggregate::AggregateExprBuilder;
use datafusion::physical_expr::expressions::{BinaryExpr, col, lit};
use flumen_operators::{
    AggregateCall, Expiry, HashJoinFactory, JoinKind, JoinSide, Panes, RankFunction,
    SessionAggregateFactory, SessionColumn, TopNFactory, TopNWindow, UpdatingAggregateFactory,
    WindowAggregateFactory,
};
use flumen_runtime::{JobMetrics, Operator, OperatorFactory, TaskContext};
use flumen_state::{StateSnapshot, hash_keys, key_group_for_hash, subtask_for_key_group};
use flumen_types::{DEFAULT_MAX_PARALLELISM, RowOp, Watermark};

const MAX: usize = DEFAULT_MAX_PARALLELISM;
const SECOND: i64 = 1_000_000_000;

/// One input event of a run.
enum Step {
    Batch(usize, RecordBatch),
    Watermark(i64),
}

/// How an input's rows reach the subtasks, as its exchange sends them.
#[derive(Clone)]
enum Routing {
    /// By the hash of these columns.
    Hash(Vec<usize>),
    /// Every row to every subtask.
    Broadcast,
    /// Row `r` of a batch to subtask `r % parallelism`: anywhere, once.
    Spread,
}

/// What the run at each parallelism leaves: output rows and the snapshot.
struct Outcome {
    rows: Vec<String>,
    snapshot_rows: usize,
    snapshot_key_groups: usize,
}

fn create(factory: &dyn OperatorFactory, parallelism: usize) -> Vec<Box<dyn Operator>> {
    let metrics = Arc::new(JobMetrics::default());
    (0..parallelism)
        .map(|s| {
            let ctx = TaskContext::new(s, parallelism, MAX, metrics.clone());
            factory.create(&ctx).unwrap()
        })
        .collect()
}

/// Runs `steps` at the parallelisms of `stages` (each until its step
/// index), snapshotting and restoring between stages, then ends the input.
fn run(
    factory: &dyn OperatorFactory,
    keys: &[Routing],
    steps: &[Step],
    stages: &[(usize, usize)],
) -> Outcome {
    let mut out = Vec::new();
    let mut ops: Vec<Box<dyn Operator>> = Vec::new();
    let (mut done, mut snapshot_rows, mut snapshot_key_groups) = (0, 0, 0);
    for &(parallelism, until) in stages {
        let mut next = create(factory, parallelism);
        if !ops.is_empty() {
            let snapshot =
                StateSnapshot::merge(ops.iter_mut().map(|o| o.snapshot_state().unwrap()));
            // The old subtasks run on to the end before the snapshot is
            // built, as processing goes on beside a checkpoint's upload:
            // what they change after the barrier must not reach it.
            let mut discarded = Vec::new();
            for step in &steps[done..] {
                apply(&mut ops, step, keys, &mut discarded);
            }
            for op in &mut ops {
                op.process_watermark(Watermark::MAX, &mut discarded)
                    .unwrap();
                op.finish(&mut discarded).unwrap();
            }
            let snapshot = snapshot.resolve().unwrap();
            snapshot_rows = snapshot.num_rows();
            snapshot_key_groups = snapshot.key_groups().unwrap().len();
            for op in &mut next {
                op.restore_state(&snapshot).unwrap();
            }
        }
        ops = next;
        for step in &steps[done..until] {
            apply(&mut ops, step, keys, &mut out);
            if stages.len() > 1 {
                // A checkpoint that is not restored from: the operators go
                // on with the state they froze for it.
                for op in &mut ops {
                    op.snapshot_state().unwrap().resolve().unwrap();
                }
            }
        }
        done = until;
    }
    for op in &mut ops {
        op.process_watermark(Watermark::MAX, &mut out).unwrap();
        op.finish(&mut out).unwrap();
    }
    let mut rows: Vec<String> = out
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |r| {
                b.columns()
                    .iter()
                    .map(|c| array_value_to_string(c, r).unwrap())
                    .collect::<Vec<_>>()
                    .join("|")
            })
        })
        .collect();
    rows.sort();
    Outcome {
        rows,
        snapshot_rows,
        snapshot_key_groups,
    }
}

/// Feeds one input event to the subtasks in `ops`, routed as `keys` says.
fn apply(ops: &mut [Box<dyn Operator>], step: &Step, keys: &[Routing], out: &mut Vec<RecordBatch>) {
    match step {
        Step::Batch(input, batch) => {
            let parts: Vec<(usize, RecordBatch)> = match &keys[*input] {
                Routing::Hash(columns) => {
                    // As the hash exchange sends them: a batch whose rows
                    // all go to one subtask whole, else the shared batch
                    // and the positions of each subtask's rows.
                    for (subtask, rows) in route(batch, columns, ops.len()) {
                        if rows.len() == batch.num_rows() {
                            ops[subtask].process_input(*input, batch.clone(), out)
                        } else {
                            ops[subtask].process_rows(*input, batch.clone(), &rows, out)
                        }
                        .unwrap();
                    }
                    return;
                }
                Routing::Broadcast => (0..ops.len()).map(|s| (s, batch.clone())).collect(),
                Routing::Spread => {
                    let p = ops.len();
                    (0..p)
                        .map(|s| {
                            let rows: Vec<u32> =
                                (s..batch.num_rows()).step_by(p).map(|r| r as u32).collect();
                            (
                                s,
                                take_record_batch(batch, &UInt32Array::from(rows)).unwrap(),
                            )
                        })
                        .collect()
                }
            };
            for (subtask, part) in parts {
                ops[subtask].process_input(*input, part, out).unwrap();
            }
        }
        Step::Watermark(t) => {
            for op in ops {
                op.process_watermark(Watermark(*t), out).unwrap();
            }
        }
    }
}

/// The rows of `batch` each subtask's exchange would send it.
fn route(batch: &RecordBatch, keys: &[usize], parallelism: usize) -> Vec<(usize, UInt32Array)> {
    let columns: Vec<ArrayRef> = keys.iter().map(|&c| batch.column(c).clone()).collect();
    let mut hashes = Vec::new();
    hash_keys(&columns, batch.num_rows(), &mut hashes).unwrap();
    let mut rows = vec![Vec::new(); parallelism];
    for (row, &h) in hashes.iter().enumerate() {
        let kg = key_group_for_hash(h, MAX);
        rows[subtask_for_key_group(kg, MAX, parallelism)].push(row as u32);
    }
    rows.into_iter()
        .enumerate()
        .filter(|(_, r)| !r.is_empty())
        .map(|(s, r)| (s, UInt32Array::from(r)))
        .collect()
}

/// Runs straight through at parallelism 1, and with state moved 2 → 3 and
/// 3 → 1 halfway; all three must give the same rows.
fn check(factory: &dyn OperatorFactory, keys: &[Vec<usize>], steps: &[Step]) -> Vec<String> {
    let keys: Vec<Routing> = keys.iter().cloned().map(Routing::Hash).collect();
    check_routed(factory, &keys, steps)
}

/// [`check`] with the inputs routed as `keys` says.
fn check_routed(factory: &dyn OperatorFactory, keys: &[Routing], steps: &[Step]) -> Vec<String> {
    let half = steps.len() / 2;
    let straight = run(factory, keys, steps, &[(1, steps.len())]);
    assert!(!straight.rows.is_empty());
    for (from, to) in [(2, 3), (3, 1)] {
        let moved = run(factory, keys, steps, &[(from, half), (to, steps.len())]);
        assert!(
            moved.snapshot_rows > 0,
            "{from} -> {to}: nothing snapshotted"
        );
        assert!(
            moved.snapshot_key_groups > 3,
            "{from} -> {to}: too few key groups"
        );
        assert_eq!(moved.rows, straight.rows, "{from} -> {to}");
    }
    straight.rows
}

fn bids() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
    ]))
}

/// `batches` batches of 50 rows over 20 keys, one second of event time
/// each, with a watermark after each batch.
fn bid_steps(batches: i64) -> Vec<Step> {
    let mut steps = Vec::new();
    for b in 0..batches {
        let rows = 0..50i64;
        let k = Int64Array::from_iter_values(rows.clone().map(|r| (r * 7 + b * 3) % 20));
        let v = Int64Array::from_iter_values(rows.clone().map(|r| (r * 13 + b * 5) % 97));
        let ts =
            TimestampNanosecondArray::from_iter_values(rows.map(|r| b * SECOND + r * SECOND / 50));
        let batch =
            RecordBatch::try_new(bids(), vec![Arc::new(k), Arc::new(v), Arc::new(ts)]).unwrap();
        steps.push(Step::Batch(0, batch));
        steps.push(Step::Watermark((b + 1) * SECOND - 1));
    }
    steps
}

fn aggregate(
    function: Arc<datafusion::logical_expr::AggregateUDF>,
    column: &str,
    schema: &SchemaRef,
) -> AggregateCall {
    let expr = AggregateExprBuilder::new(function, vec![col(column, schema).unwrap()])
        .schema(schema.clone())
        .alias(column)
        .build()
        .unwrap();
    AggregateCall {
        function: Arc::new(expr),
        filter: None,
    }
}

#[test]
fn updating_aggregate_groups_move_by_key_group() {
    let schema = bids();
    let output = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("n", DataType::Int64, true),
        Field::new("total", DataType::Int64, true),
        Field::new("lowest", DataType::Int64, true),
        Field::new("highest", DataType::Int64, true),
        Field::new("highest_over_90", DataType::Int64, true),
        Field::new("_op", DataType::Int8, false),
    ]));
    // A group with no row over 90 has a NULL MAX, in its snapshot too.
    let over_90 = AggregateCall {
        filter: Some(Arc::new(BinaryExpr::new(
            col("v", &schema).unwrap(),
            BinaryOp::Gt,
            lit(90i64),
        ))),
        ..aggregate(max_udaf(), "v", &schema)
    };
    let factory = UpdatingAggregateFactory {
        key_columns: vec![0],
        aggregates: vec![
            aggregate(count_udaf(), "v", &schema),
            aggregate(sum_udaf(), "v", &schema),
            aggregate(min_udaf(), "v", &schema),
            aggregate(max_udaf(), "v", &schema),
            over_90,
        ],
        op_column: None,
        state_ttl_ns: None,
        output,
        merge_states: false,
        routed_by: None,
    };
    let rows = check(&factory, &[vec![0]], &bid_steps(8));
    assert!(rows.iter().any(|r| r.ends_with("|3")), "updates expected");
    assert!(
        rows.iter().any(|r| r.ends_with("||0")),
        "NULL maxima expected"
    );
}

/// Groups keyed by `(k, class)` whose rows come routed by `k` alone (an
/// aggregate chained to a join on `k`): a restored group's key group is
/// `k`'s, so it lands where its later rows come.
#[test]
fn groups_routed_by_part_of_their_key_move_with_that_part() {
    let schema = bids();
    let output = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("class", DataType::Int64, false),
        Field::new("n", DataType::Int64, true),
        Field::new("_op", DataType::Int8, false),
    ]));
    let factory = UpdatingAggregateFactory {
        key_columns: vec![0, 1],
        aggregates: vec![aggregate(count_udaf(), "ts", &schema)],
        op_column: None,
        state_ttl_ns: None,
        output,
        merge_states: false,
        routed_by: Some(vec![0]),
    };
    // Column 1 becomes a class of k, so each k is one group all along.
    let steps: Vec<Step> = bid_steps(8)
        .into_iter()
        .map(|s| match s {
            Step::Batch(i, b) => {
                let k = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                let class = Int64Array::from_iter_values(k.values().iter().map(|k| k % 4));
                let columns = vec![b.column(0).clone(), Arc::new(class), b.column(2).clone()];
                Step::Batch(i, RecordBatch::try_new(schema.clone(), columns).unwrap())
            }
            w => w,
        })
        .collect();
    let rows = check(&factory, &[vec![0]], &steps);
    assert!(rows.iter().any(|r| r.ends_with("|3")), "updates expected");
}

#[test]
fn window_aggregate_windows_move_by_key_group() {
    let rows = check(&window_aggregate(0), &[vec![0, 1]], &window_steps(0));
    assert_eq!(rows.len(), 20 * 3, "20 keys in each of 3 windows");
}

#[test]
fn fired_windows_with_allowed_lateness_move_by_key_group() {
    // Rows up to 2 s late reach windows that fired; they emit corrections.
    let factory = window_aggregate(5 * SECOND);
    let rows = check(&factory, &[vec![0, 1]], &window_steps(2 * SECOND));
    assert!(
        rows.iter().any(|r| r.ends_with("|3")),
        "corrections expected"
    );
}

/// Sliding windows of 3 s every second built from panes: each row arrives
/// once, in its pane (the start of its last window), shuffled by its key
/// alone. The windows equal those of the rows copied into each of their
/// three windows, and move by key group with the watermark that says which
/// windows have fired (a pane outlives its first two windows).
#[test]
fn sliding_windows_from_panes_move_by_key_group() {
    let panes = WindowAggregateFactory {
        panes: Some(Panes {
            slide_ns: SECOND,
            shifted: Vec::new(),
        }),
        ..window_aggregate(0)
    };
    let rows = check(&panes, &[vec![0]], &sliding_steps(|pane| vec![pane]));
    let copied = check(
        &window_aggregate(0),
        &[vec![0, 1]],
        &sliding_steps(|pane| vec![pane - 2 * SECOND, pane - SECOND, pane]),
    );
    assert_eq!(rows, copied);
    assert_eq!(rows.len(), 20 * 11, "20 keys in each of 11 windows");
}

/// [`bid_steps`] as window rows of 1 s panes, each row copied to the window
/// starts `starts` gives for its pane.
fn sliding_steps(starts: impl Fn(i64) -> Vec<i64>) -> Vec<Step> {
    let schema = window_input();
    bid_steps(9)
        .into_iter()
        .map(|s| match s {
            Step::Batch(i, b) => {
                let (mut k, mut start, mut v) = (Vec::new(), Vec::new(), Vec::new());
                let ts = b
                    .column(2)
                    .as_any()
                    .downcast_ref::<TimestampNanosecondArray>();
                for (r, t) in ts.unwrap().values().iter().enumerate() {
                    for s in starts(t - t % SECOND) {
                        k.push(
                            b.column(0)
                                .as_any()
                                .downcast_ref::<Int64Array>()
                                .unwrap()
                                .value(r),
                        );
                        v.push(
                            b.column(1)
                                .as_any()
                                .downcast_ref::<Int64Array>()
                                .unwrap()
                                .value(r),
                        );
                        start.push(s);
                    }
                }
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(Int64Array::from(k)),
                    Arc::new(TimestampNanosecondArray::from(start)),
                    Arc::new(Int64Array::from(v)),
                ];
                Step::Batch(i, RecordBatch::try_new(schema.clone(), columns).unwrap())
            }
            w => w,
        })
        .collect()
}

/// A 3 s tumbling window aggregate (count and max per key and window).
fn window_aggregate(allowed_lateness_ns: i64) -> WindowAggregateFactory {
    let schema = window_input();
    let timestamp = DataType::Timestamp(TimeUnit::Nanosecond, None);
    let mut fields = vec![
        Field::new("k", DataType::Int64, false),
        Field::new("start", timestamp, false),
        Field::new("n", DataType::Int64, true),
        Field::new("top", DataType::Int64, true),
    ];
    if allowed_lateness_ns > 0 {
        fields.push(Field::new("_op", DataType::Int8, false));
    }
    WindowAggregateFactory {
        key_columns: vec![0, 1],
        window_key: 1,
        size_ns: 3 * SECOND,
        aggregates: vec![
            aggregate(count_udaf(), "v", &schema),
            aggregate(max_udaf(), "v", &schema),
        ],
        key_schema: Arc::new(schema.project(&[0, 1]).unwrap()),
        output: Arc::new(Schema::new(fields)),
        processing_time: false,
        allowed_lateness_ns,
        panes: None,
        merge_states: false,
    }
}

/// Keys and a 3 s window start (computed upstream in a real plan).
fn window_input() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new(
            "start",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        ),
        Field::new("v", DataType::Int64, false),
    ]))
}

/// The start of each row's 3 s window, every third row's time moved `late`
/// back first.
fn window_start(ts: &ArrayRef, late: i64) -> ArrayRef {
    let ts = ts.as_any().downcast_ref::<TimestampNanosecondArray>();
    Arc::new(TimestampNanosecondArray::from_iter_values(
        ts.unwrap().values().iter().enumerate().map(|(r, t)| {
            let t = if r % 3 == 0 { (t - late).max(0) } else { *t };
            t - t % (3 * SECOND)
        }),
    ))
}

/// [`bid_steps`] as window rows, every third row `late` behind its batch.
fn window_steps(late: i64) -> Vec<Step> {
    let schema = window_input();
    bid_steps(9)
        .into_iter()
        .map(|s| match s {
            Step::Batch(i, b) => {
                let columns = vec![
                    b.column(0).clone(),
                    window_start(b.column(2), late),
                    b.column(1).clone(),
                ];
                Step::Batch(i, RecordBatch::try_new(schema.clone(), columns).unwrap())
            }
            w => w,
        })
        .collect()
}

#[test]
fn session_aggregate_sessions_move_by_key_group() {
    // Each row is a session of its own, [ts, ts + 2 s), computed upstream.
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("start", DataType::Int64, false),
        Field::new("end", DataType::Int64, false),
    ]));
    let steps: Vec<Step> = bid_steps(8)
        .into_iter()
        .map(|s| match s {
            Step::Batch(i, b) => {
                let ts = b
                    .column(2)
                    .as_any()
                    .downcast_ref::<TimestampNanosecondArray>();
                let ts = ts.unwrap().values();
                // Key 5 pauses for 3 s after second 2, which splits its session.
                let keep: Vec<u32> = (0..b.num_rows() as u32)
                    .filter(|&r| {
                        let key = b.column(0).as_any().downcast_ref::<Int64Array>();
                        let t = ts[r as usize];
                        key.unwrap().value(r as usize) != 5
                            || !(2 * SECOND..5 * SECOND).contains(&t)
                    })
                    .collect();
                let b = take_record_batch(&b, &UInt32Array::from(keep)).unwrap();
                let ts = b
                    .column(2)
                    .as_any()
                    .downcast_ref::<TimestampNanosecondArray>();
                let ts = ts.unwrap().values();
                let start = Int64Array::from_iter_values(ts.iter().copied());
                let end = Int64Array::from_iter_values(ts.iter().map(|t| t + 2 * SECOND));
                let columns = vec![
                    b.column(0).clone(),
                    b.column(1).clone(),
                    Arc::new(start) as ArrayRef,
                    Arc::new(end),
                ];
                Step::Batch(i, RecordBatch::try_new(schema.clone(), columns).unwrap())
            }
            w => w,
        })
        .collect();
    let timestamp = DataType::Timestamp(TimeUnit::Nanosecond, None);
    let output = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("window_start", timestamp.clone(), false),
        Field::new("window_end", timestamp, false),
        Field::new("total", DataType::Int64, true),
    ]));
    let factory = SessionAggregateFactory {
        key_columns: vec![0],
        start_column: 2,
        end_column: 3,
        layout: vec![
            SessionColumn::Key(0),
            SessionColumn::Start,
            SessionColumn::End,
        ],
        aggregates: vec![aggregate(sum_udaf(), "v", &schema)],
        input: schema.clone(),
        output,
    };
    let rows = check(&factory, &[vec![0]], &steps);
    assert_eq!(rows.len(), 21, "one session per key, two for key 5");
}

#[test]
fn interval_join_sides_move_by_key_group() {
    // Left: auctions (k, v, ts) expiring 3 s after ts; right: bids.
    let left_steps = bid_steps(8);
    let mut steps = Vec::new();
    for step in left_steps {
        match step {
            Step::Batch(_, b) => {
                let left = b.slice(0, 10);
                steps.push(Step::Batch(0, left));
                steps.push(Step::Batch(1, b));
            }
            w => steps.push(w),
        }
    }
    let mut fields: Vec<Field> = bids().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(bids().fields().iter().map(|f| f.as_ref().clone()));
    let joined = Arc::new(Schema::new(fields.clone()));
    // Right ts within [left ts, left ts + 3 s].
    let bound = |op, offset: i64| -> Arc<dyn datafusion::physical_expr::PhysicalExpr> {
        let left_ts: Arc<dyn datafusion::physical_expr::PhysicalExpr> =
            Arc::new(datafusion::physical_expr::expressions::Column::new("ts", 2));
        let right_ts = Arc::new(datafusion::physical_expr::expressions::Column::new("ts", 5));
        let shifted = Arc::new(BinaryExpr::new(
            Arc::new(datafusion::physical_expr::expressions::CastExpr::new(
                left_ts,
                DataType::Int64,
                None,
            )),
            BinaryOp::Plus,
            lit(offset),
        ));
        Arc::new(BinaryExpr::new(
            Arc::new(datafusion::physical_expr::expressions::CastExpr::new(
                right_ts,
                DataType::Int64,
                None,
            )),
            op,
            shifted,
        ))
    };
    let filter = Arc::new(BinaryExpr::new(
        bound(BinaryOp::GtEq, 0),
        BinaryOp::And,
        bound(BinaryOp::LtEq, 3 * SECOND),
    ));
    let side = |expiry| JoinSide {
        keys: vec![0],
        width: 3,
        expiry,
        op_column: None,
        settled_by_match: false,
    };
    let factory = HashJoinFactory {
        kind: JoinKind::Inner,
        left: side(Some(Expiry {
            column: 2,
            offset_ns: 3 * SECOND,
        })),
        right: side(Some(Expiry {
            column: 2,
            offset_ns: 0,
        })),
        filter: Some(filter),
        joined: joined.clone(),
        state_ttl_ns: None,
        bounded_input: false,
        broadcast: None,
        output: joined,
    };
    check(&factory, &[vec![0], vec![0]], &steps);
}

#[test]
fn left_join_matches_move_by_key_group() {
    // Left rows of keys 0..30 (10 of them never match); right rows of 0..20.
    let mut steps = Vec::new();
    for (b, step) in bid_steps(6).into_iter().enumerate() {
        if let Step::Batch(_, right) = step {
            let k = Int64Array::from_iter_values((0..5).map(|r| (b as i64 * 5 + r) % 30));
            let left = RecordBatch::try_new(
                Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)])),
                vec![Arc::new(k)],
            )
            .unwrap();
            steps.push(Step::Batch(0, left));
            steps.push(Step::Batch(1, right));
        }
    }
    let mut fields = vec![Field::new("k", DataType::Int64, false)];
    fields.extend(
        bids()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true)),
    );
    let joined = Arc::new(Schema::new(fields.clone()));
    fields.push(Field::new("_op", DataType::Int8, false));
    let factory = HashJoinFactory {
        kind: JoinKind::Left,
        left: JoinSide {
            keys: vec![0],
            width: 1,
            expiry: None,
            op_column: None,
            settled_by_match: false,
        },
        right: JoinSide {
            keys: vec![0],
            width: 3,
            expiry: None,
            op_column: None,
            settled_by_match: false,
        },
        filter: None,
        joined,
        state_ttl_ns: None,
        bounded_input: false,
        broadcast: None,
        output: Arc::new(Schema::new(fields)),
    };
    let rows = check(&factory, &[vec![0], vec![0]], &steps);
    assert!(
        rows.iter().any(|r| r.ends_with("|1")),
        "retractions expected"
    );
}

/// A join whose right side every subtask receives whole (a small table
/// broadcast) and whose left rows go anywhere: subtask 0 alone snapshots
/// the broadcast rows, every subtask restores all of them, and the left
/// rows (with their match counts, for the LEFT join) move by key group.
#[test]
fn broadcast_join_sides_move_whole_and_by_key_group() {
    let table = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
    ]));
    // Bids of keys 0..20 from the start; table rows of even keys at the
    // start, of keys divisible by 3 only late, after the state moves.
    let table_rows = |keys: Vec<i64>| {
        let names = StringArray::from_iter_values(keys.iter().map(|k| format!("name-{k}")));
        let batch = RecordBatch::try_new(
            table.clone(),
            vec![Arc::new(Int64Array::from(keys)), Arc::new(names)],
        )
        .unwrap();
        Step::Batch(1, batch)
    };
    let mut steps = vec![table_rows((0..20).step_by(2).collect())];
    let bid_batches = bid_steps(6);
    let late = bid_batches.len() * 2 / 3;
    for (i, step) in bid_batches.into_iter().enumerate() {
        if i == late {
            steps.push(table_rows(vec![3, 9, 15]));
        }
        steps.push(step);
    }
    for kind in [JoinKind::Inner, JoinKind::Left] {
        let mut fields: Vec<Field> = bids().fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(
            table
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true)),
        );
        let joined = Arc::new(Schema::new(fields.clone()));
        if kind == JoinKind::Left {
            fields.push(Field::new("_op", DataType::Int8, false));
        }
        let factory = HashJoinFactory {
            kind,
            left: JoinSide {
                keys: vec![0],
                width: 3,
                expiry: None,
                op_column: None,
                settled_by_match: false,
            },
            right: JoinSide {
                keys: vec![0],
                width: 2,
                expiry: None,
                op_column: None,
                settled_by_match: false,
            },
            filter: None,
            joined,
            state_ttl_ns: None,
            bounded_input: true,
            broadcast: Some(1),
            output: Arc::new(Schema::new(fields)),
        };
        let rows = check_routed(&factory, &[Routing::Spread, Routing::Broadcast], &steps);
        assert!(
            rows.iter().any(|r| r.contains("name-9")),
            "{kind:?}: late matches"
        );
        if kind == JoinKind::Left {
            assert!(
                rows.iter().any(|r| r.ends_with("|1")),
                "retractions expected"
            );
        }
    }
}

fn top_n(
    input: SchemaRef,
    partition_columns: Vec<usize>,
    window: Option<TopNWindow>,
) -> TopNFactory {
    let mut fields: Vec<Field> = bids().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("rank", DataType::UInt64, false));
    if window.is_none() {
        fields.push(Field::new("_op", DataType::Int8, false));
    }
    TopNFactory {
        input,
        width: 3,
        partition_columns,
        order_columns: vec![(
            1,
            arrow::compute::SortOptions {
                descending: true,
                nulls_first: false,
            },
        )],
        function: RankFunction::Rank,
        limit: 3,
        window,
        state_ttl_ns: None,
        closes: None,
        output: Arc::new(Schema::new(fields)),
        op_column: None,
    }
}

#[test]
fn top_n_per_key_moves_by_key_group() {
    check(&top_n(bids(), vec![0], None), &[vec![0]], &bid_steps(8));
}

/// Row numbers break ties by arrival: a restore, from the parts of
/// several subtasks, puts tied rows back in their places, so the numbers
/// tied rows get stay those of an uninterrupted run.
#[test]
fn top_n_row_numbers_keep_their_ties_in_order() {
    // Values 0..5 only: every key's top rows tie.
    let steps: Vec<Step> = bid_steps(8)
        .into_iter()
        .map(|step| match step {
            Step::Batch(side, batch) => {
                let v = batch
                    .column(1)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                let tied = Int64Array::from_iter_values(v.values().iter().map(|v| v % 5));
                let mut columns = batch.columns().to_vec();
                columns[1] = Arc::new(tied);
                Step::Batch(side, RecordBatch::try_new(bids(), columns).unwrap())
            }
            watermark => watermark,
        })
        .collect();
    let factory = TopNFactory {
        function: RankFunction::RowNumber,
        ..top_n(bids(), vec![0], None)
    };
    check(&factory, &[vec![0]], &steps);
}

/// A TopN keeping bids with a `channel` of few distinct values (nulls
/// among them), and its input.
fn channel_top_n() -> (TopNFactory, Vec<Step>) {
    let mut fields: Vec<Field> = bids().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("channel", DataType::Utf8, true));
    let input = Arc::new(Schema::new(fields.clone()));
    let channel =
        |b: usize, r: usize| ((r + b) % 6 != 5).then(|| format!("channel-{}", (r * 5 + b) % 6));
    let steps: Vec<Step> = bid_steps(8)
        .into_iter()
        .enumerate()
        .map(|(i, step)| match step {
            Step::Batch(side, batch) => {
                let strings: StringArray = (0..batch.num_rows()).map(|r| channel(i, r)).collect();
                let mut columns = batch.columns().to_vec();
                columns.push(Arc::new(strings));
                Step::Batch(side, RecordBatch::try_new(input.clone(), columns).unwrap())
            }
            watermark => watermark,
        })
        .collect();
    fields.push(Field::new("rank", DataType::UInt64, false));
    fields.push(Field::new("_op", DataType::Int8, false));
    let factory = TopNFactory {
        width: 4,
        output: Arc::new(Schema::new(fields)),
        ..top_n(input, vec![0], None)
    };
    (factory, steps)
}

/// The TopN's strings, kept in a dictionary, move as the other columns do
/// and come back in every output row, nulls included.
#[test]
fn top_n_with_dictionary_strings_moves_by_key_group() {
    let (factory, steps) = channel_top_n();
    let rows = check(&factory, &[vec![0]], &steps);
    assert!(rows.iter().any(|r| r.contains("|channel-")), "{rows:?}");
    assert!(
        rows.iter().any(|r| r.contains("||")),
        "a null channel: {rows:?}"
    );
}

/// A snapshot writes the strings of a dictionary column as ids into one
/// copy of its strings, not a string per row.
#[test]
fn a_top_n_snapshot_keeps_dictionary_strings_encoded() {
    let (factory, steps) = channel_top_n();
    let mut ops = create(&factory, 1);
    let mut out = Vec::new();
    for step in &steps {
        apply(&mut ops, step, &[Routing::Hash(vec![0])], &mut out);
    }
    let snapshot = ops[0].snapshot_state().unwrap().resolve().unwrap();
    let stored = snapshot.to_batches().unwrap();
    let channel = stored[0].1[0].column(3);
    assert_eq!(
        channel.data_type(),
        &DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8))
    );
    assert!(channel.null_count() > 0);
}

#[test]
fn top_n_per_window_moves_by_key_group() {
    // 3 s windows: a start column after the output columns, partitions by
    // key and window, closed when the watermark passes the window's end.
    let mut fields: Vec<Field> = bids().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(
        "start",
        DataType::Timestamp(TimeUnit::Nanosecond, None),
        false,
    ));
    let schema = Arc::new(Schema::new(fields));
    let steps: Vec<Step> = bid_steps(9)
        .into_iter()
        .map(|s| match s {
            Step::Batch(i, b) => {
                let mut columns = b.columns().to_vec();
                columns.push(window_start(b.column(2), 0));
                Step::Batch(i, RecordBatch::try_new(schema.clone(), columns).unwrap())
            }
            w => w,
        })
        .collect();
    let window = TopNWindow {
        column: 3,
        size_ns: 3 * SECOND,
    };
    let factory = top_n(schema, vec![0, 3], Some(window));
    let rows = check(&factory, &[vec![0, 3]], &steps);
    assert!(
        rows.len() >= 20 * 3 * 3,
        "at least 3 rows per key and window"
    );
}

/// Batch `b` of a running value per key 0..40, as a non-windowed aggregate
/// emits it: `+I` of every key first, then `-U` of the old and `+U` of the
/// new value for the keys `value(key, b)` changes. Columns: the keys, the
/// values, the ops.
fn running_values(
    b: i64,
    last: &mut [i64],
    value: impl Fn(i64, i64) -> Option<i64>,
) -> (Vec<i64>, Vec<i64>, Vec<i8>) {
    let (mut k, mut v, mut op) = (Vec::new(), Vec::new(), Vec::new());
    for key in 0..last.len() as i64 {
        let Some(now) = value(key, b) else {
            continue;
        };
        if b > 0 {
            k.push(key);
            v.push(last[key as usize]);
            op.push(RowOp::UpdateBefore as i8);
        }
        last[key as usize] = now;
        k.push(key);
        v.push(now);
        op.push(if b == 0 {
            RowOp::Insert
        } else {
            RowOp::UpdateAfter
        } as i8);
    }
    (k, v, op)
}

#[test]
fn top_n_over_an_updating_input_moves_by_key_group() {
    // A running value per key k (as a non-windowed aggregate would emit:
    // +I first, then -U/+U of the old and new value), ranked per class
    // g = k % 8: the two keys with the highest values in each class.
    let schema = Arc::new(Schema::new(vec![
        Field::new("g", DataType::Int64, false),
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("_op", DataType::Int8, false),
    ]));
    let mut steps = Vec::new();
    let mut last = vec![0i64; 40];
    for b in 0..8i64 {
        let (k, v, op) = running_values(b, &mut last, |k, b| Some((k * 31 + b * 17) % 23));
        let g: Vec<i64> = k.iter().map(|k| k % 8).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(g)),
            Arc::new(Int64Array::from(k)),
            Arc::new(Int64Array::from(v)),
            Arc::new(arrow::array::Int8Array::from(op)),
        ];
        steps.push(Step::Batch(
            0,
            RecordBatch::try_new(schema.clone(), columns).unwrap(),
        ));
        steps.push(Step::Watermark(b));
    }
    let output = Arc::new(Schema::new(vec![
        Field::new("g", DataType::Int64, false),
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("rank", DataType::UInt64, false),
        Field::new("_op", DataType::Int8, false),
    ]));
    let factory = TopNFactory {
        input: schema,
        width: 3,
        partition_columns: vec![0],
        order_columns: vec![(
            2,
            arrow::compute::SortOptions {
                descending: true,
                nulls_first: false,
            },
        )],
        function: RankFunction::RowNumber,
        limit: 2,
        window: None,
        state_ttl_ns: None,
        closes: None,
        output,
        op_column: Some(3),
    };
    let rows = check(&factory, &[vec![0]], &steps);
    assert!(rows.iter().any(|r| r.ends_with("|2")), "-U rows expected");
}

#[test]
fn a_join_of_an_updating_input_moves_by_key_group() {
    // Left: running values per key (+I, then -U/+U for the keys k with
    // k % 5 == b % 5 in batch b, so a stored batch keeps some rows and has
    // lost others when the state moves); right: a row per key early and
    // late. Rows taken back must stay taken back after a restore.
    let left_schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("_op", DataType::Int8, false),
    ]));
    let right_schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("w", DataType::Int64, false),
    ]));
    let mut steps = Vec::new();
    let mut last = vec![0i64; 40];
    for b in 0..8i64 {
        let (k, v, op) = running_values(b, &mut last, |k, b| {
            (b == 0 || k % 5 == b % 5).then_some(k * 10 + b)
        });
        let left: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(k)),
            Arc::new(Int64Array::from(v)),
            Arc::new(arrow::array::Int8Array::from(op)),
        ];
        steps.push(Step::Batch(
            0,
            RecordBatch::try_new(left_schema.clone(), left).unwrap(),
        ));
        if b == 1 || b == 6 {
            let right: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from_iter_values(0..40)),
                Arc::new(Int64Array::from_iter_values((0..40).map(|x| x + b * 100))),
            ];
            steps.push(Step::Batch(
                1,
                RecordBatch::try_new(right_schema.clone(), right).unwrap(),
            ));
        }
        steps.push(Step::Watermark(b));
    }
    let joined = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("k", DataType::Int64, false),
        Field::new("w", DataType::Int64, false),
    ]));
    let mut fields: Vec<Field> = joined.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("_op", DataType::Int8, false));
    let side = |width, op_column| JoinSide {
        keys: vec![0],
        width,
        expiry: None,
        op_column,
        settled_by_match: false,
    };
    let factory = HashJoinFactory {
        kind: JoinKind::Inner,
        left: side(2, Some(2)),
        right: side(2, None),
        filter: None,
        joined,
        state_ttl_ns: None,
        bounded_input: false,
        broadcast: None,
        output: Arc::new(Schema::new(fields)),
    };
    let rows = check(&factory, &[vec![0], vec![0]], &steps);
    assert!(rows.iter().any(|r| r.ends_with("|2")), "-U rows expected");
}

#[test]
fn an_aggregate_of_an_updating_input_moves_by_key_group() {
    // Sum and count per class g = k % 6 of running values per key: each
    // -U takes a value back from its class (sliding accumulators), whose
    // state must survive the move.
    let schema = Arc::new(Schema::new(vec![
        Field::new("g", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("_op", DataType::Int8, false),
    ]));
    let mut steps = Vec::new();
    let mut last = vec![0i64; 40];
    for b in 0..8i64 {
        let (k, v, op) = running_values(b, &mut last, |k, b| {
            (b == 0 || k % 3 == b % 3).then_some((k * 7 + b * 13) % 50)
        });
        let g: Vec<i64> = k.iter().map(|k| k % 6).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(g)),
            Arc::new(Int64Array::from(v)),
            Arc::new(arrow::array::Int8Array::from(op)),
        ];
        steps.push(Step::Batch(
            0,
            RecordBatch::try_new(schema.clone(), columns).unwrap(),
        ));
        steps.push(Step::Watermark(b));
    }
    let output = Arc::new(Schema::new(vec![
        Field::new("g", DataType::Int64, false),
        Field::new("n", DataType::Int64, true),
        Field::new("total", DataType::Int64, true),
        Field::new("_op", DataType::Int8, false),
    ]));
    let factory = UpdatingAggregateFactory {
        key_columns: vec![0],
        aggregates: vec![
            aggregate(count_udaf(), "v", &schema),
            aggregate(sum_udaf(), "v", &schema),
        ],
        op_column: Some(2),
        state_ttl_ns: None,
        output,
        merge_states: false,
        routed_by: None,
    };
    let rows = check(&factory, &[vec![0]], &steps);
    assert!(rows.iter().any(|r| r.ends_with("|2")), "updates expected");
}

#[test]
fn a_snapshot_of_another_layout_is_an_error_naming_the_table() {
    let mut wrong = StateSnapshot::default();
    let text: ArrayRef = Arc::new(arrow::array::StringArray::from(vec!["x", "y"]));
    wrong.add_columns(0, vec![text], &[0, 1]).unwrap();
    let factories: Vec<Box<dyn OperatorFactory>> = vec![
        Box::new(window_aggregate(0)),
        Box::new(top_n(bids(), vec![0], None)),
    ];
    for factory in &factories {
        let mut op = create(factory.as_ref(), 1).pop().unwrap();
        let err = op.restore_state(&wrong).unwrap_err().to_string();
        assert!(
            err.contains("state table 0"),
            "{}: {err}",
            factory.describe()
        );
    }
}
