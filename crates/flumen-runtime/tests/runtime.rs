//! The runtime end to end with hand-made sources and sinks: backpressure,
//! failure, clean ends and the exchanges.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::Int64Type;
use async_trait::async_trait;
use flumen_runtime::{
    JobGraph, NodeKind, Operator, OperatorFactory, Partitioning, RunOptions, Sink, SinkFactory,
    Source, SourceFactory, TaskContext, run_job,
};
use flumen_types::{DEFAULT_MAX_PARALLELISM, FlumenError, Message, Result};

/// Emits `batches` batches (or forever) of `rows` rows numbered from 0, and
/// counts the batches it has produced.
struct Counter {
    batches: Option<u64>,
    rows: i64,
    produced: Arc<AtomicU64>,
}

impl SourceFactory for Counter {
    fn describe(&self) -> String {
        "Source: counter".into()
    }
    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Source>> {
        Ok(Box::new(CounterSource {
            next: ctx.subtask as u64,
            step: ctx.parallelism as u64,
            limit: self.batches,
            rows: self.rows,
            produced: self.produced.clone(),
        }))
    }
}

struct CounterSource {
    next: u64,
    step: u64,
    limit: Option<u64>,
    rows: i64,
    produced: Arc<AtomicU64>,
}

#[async_trait]
impl Source for CounterSource {
    async fn next(&mut self) -> Result<Option<Message>> {
        if self.limit.is_some_and(|l| self.next >= l) {
            return Ok(None);
        }
        let start = self.next as i64 * self.rows;
        self.next += self.step;
        self.produced.fetch_add(1, Ordering::SeqCst);
        let col = Int64Array::from_iter_values(start..start + self.rows);
        let batch = RecordBatch::try_from_iter([("n", Arc::new(col) as ArrayRef)])?;
        Ok(Some(Message::Batch(batch)))
    }
}

/// Records `(subtask, value)` of every row, sleeping per batch if asked.
#[derive(Clone, Default)]
struct Collect {
    rows: Arc<Mutex<Vec<(usize, i64)>>>,
    batches: Arc<AtomicU64>,
    delay: Option<Duration>,
}

impl SinkFactory for Collect {
    fn describe(&self) -> String {
        "Sink: collect".into()
    }
    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(CollectSink {
            subtask: ctx.subtask,
            inner: self.clone(),
        }))
    }
}

struct CollectSink {
    subtask: usize,
    inner: Collect,
}

#[async_trait]
impl Sink for CollectSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if let Some(d) = self.inner.delay {
            tokio::time::sleep(d).await;
        }
        let col = batch.column(0).as_primitive::<Int64Type>();
        let mut rows = self.inner.rows.lock().unwrap();
        rows.extend(col.values().iter().map(|v| (self.subtask, *v)));
        self.inner.batches.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Passes batches through; fails on the `fail_at`-th batch of a subtask.
struct FailAt(usize);

impl OperatorFactory for FailAt {
    fn describe(&self) -> String {
        "FailAt".into()
    }
    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        Ok(Box::new(FailOp {
            seen: 0,
            fail_at: self.0,
        }))
    }
}

struct FailOp {
    seen: usize,
    fail_at: usize,
}

impl Operator for FailOp {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        self.seen += 1;
        if self.seen == self.fail_at {
            return Err(FlumenError::execution("boom: operator failed on purpose"));
        }
        out.push(batch);
        Ok(())
    }
}

fn counter(batches: Option<u64>, rows: i64) -> (Arc<Counter>, Arc<AtomicU64>) {
    let produced = Arc::new(AtomicU64::new(0));
    let c = Counter {
        batches,
        rows,
        produced: produced.clone(),
    };
    (Arc::new(c), produced)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sink_slows_the_source_and_memory_stays_bounded() {
    let (source, produced) = counter(None, 1024);
    let sink = Collect {
        delay: Some(Duration::from_millis(5)),
        ..Default::default()
    };
    let consumed = sink.batches.clone();
    let mut g = JobGraph::new();
    let s = g.add_node(NodeKind::Source(source), 2);
    let op = g.add_node(NodeKind::Operator(Arc::new(FailAt(usize::MAX))), 2);
    let k = g.add_node(NodeKind::Sink(Arc::new(sink)), 1);
    g.connect(s, op, Partitioning::Forward);
    g.connect(op, k, Partitioning::Rebalance);
    let options = RunOptions {
        channel_capacity: 4,
        ..Default::default()
    };
    let job = run_job(&g, &options).unwrap();
    let mut max_in_flight = 0;
    while consumed.load(Ordering::SeqCst) < 60 {
        tokio::time::sleep(Duration::from_millis(3)).await;
        let in_flight = produced.load(Ordering::SeqCst) - consumed.load(Ordering::SeqCst);
        max_in_flight = max_in_flight.max(in_flight);
    }
    // Two channels of 4 batches, plus at most one batch held by each of the
    // two source tasks and one in the sink: an unthrottled source would be
    // thousands of batches ahead by now.
    let bound = 2 * 4 + 2 + 1;
    assert!(
        max_in_flight <= bound,
        "{max_in_flight} batches in flight, bound {bound}"
    );
    job.stop();
    tokio::time::timeout(Duration::from_secs(10), job.wait())
        .await
        .expect("a stopped job drains and ends")
        .expect("a stopped job ends without error");
    assert_eq!(
        produced.load(Ordering::SeqCst),
        consumed.load(Ordering::SeqCst),
        "every produced batch reaches the sink after a stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_stops_the_whole_job_with_its_error() {
    let (source, _) = counter(None, 100);
    let mut g = JobGraph::new();
    let s = g.add_node(NodeKind::Source(source), 2);
    let op = g.add_node(NodeKind::Operator(Arc::new(FailAt(10))), 3);
    let k = g.add_node(NodeKind::Sink(Arc::new(Collect::default())), 1);
    g.connect(s, op, Partitioning::Rebalance);
    g.connect(op, k, Partitioning::Rebalance);
    let job = run_job(&g, &RunOptions::default()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), job.wait())
        .await
        .expect("a failed job must not hang");
    let err = outcome.expect_err("the job fails");
    assert!(err.to_string().contains("boom"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_exchange_sends_each_key_to_one_subtask() {
    let (source, _) = counter(Some(40), 1000);
    let sink = Collect::default();
    let rows = sink.rows.clone();
    let mut g = JobGraph::new();
    let s = g.add_node(NodeKind::Source(source), 2);
    let k = g.add_node(NodeKind::Sink(Arc::new(sink)), 3);
    g.connect(s, k, Partitioning::Hash(vec![0]));
    run_job(&g, &RunOptions::default())
        .unwrap()
        .wait()
        .await
        .unwrap();
    let rows = rows.lock().unwrap();
    assert_eq!(rows.len(), 40_000, "every row arrives once");
    let values: HashSet<i64> = rows.iter().map(|r| r.1).collect();
    assert_eq!(values.len(), 40_000);
    let subtasks: HashSet<usize> = rows.iter().map(|r| r.0).collect();
    assert_eq!(subtasks.len(), 3, "keys spread over all subtasks");
    // Each row reached the subtask owning its key group: the one whose
    // keyed state holds that key.
    let keys = Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))) as ArrayRef;
    let groups = flumen_state::KeyGroups::of_subtask(0, 1, DEFAULT_MAX_PARALLELISM);
    let (mut hashes, mut key_groups) = (Vec::new(), Vec::new());
    groups
        .assign(&[keys], rows.len(), &mut hashes, &mut key_groups)
        .unwrap();
    for (row, kg) in rows.iter().zip(key_groups) {
        let owned = flumen_state::KeyGroupRange::of_subtask(row.0, 3, DEFAULT_MAX_PARALLELISM);
        assert!(owned.contains(kg), "key {} in key group {kg}", row.1);
    }
}

/// Passes rows through and counts the batches that came shared (with their
/// rows' positions) and whole; `shares`: the input its factory says it
/// reads in place, if any.
struct CountShared {
    shares: Option<usize>,
    shared: Arc<AtomicU64>,
    whole: Arc<AtomicU64>,
}

impl OperatorFactory for CountShared {
    fn describe(&self) -> String {
        "CountShared".into()
    }
    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        Ok(Box::new(SharedCounter {
            shared: self.shared.clone(),
            whole: self.whole.clone(),
        }))
    }
    fn reads_shared_rows(&self, input: usize) -> bool {
        self.shares == Some(input)
    }
}

struct SharedCounter {
    shared: Arc<AtomicU64>,
    whole: Arc<AtomicU64>,
}

impl Operator for SharedCounter {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        self.whole.fetch_add(1, Ordering::SeqCst);
        out.push(batch);
        Ok(())
    }
    fn process_input(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        self.process_batch(batch, out)
    }
    fn process_rows(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        rows: &arrow::array::UInt32Array,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        self.shared.fetch_add(1, Ordering::SeqCst);
        out.push(arrow::compute::take_record_batch(&batch, rows)?);
        Ok(())
    }
}

/// A hash exchange shares its batches with the input of an operator that
/// reads rows in place there, and copies each subtask's rows for the other
/// inputs and operators; either way every row arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_exchange_shares_batches_only_with_operators_that_read_them_in_place() {
    for shares in [None, Some(0), Some(1)] {
        let (shared, whole) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let op = CountShared {
            shares,
            shared: shared.clone(),
            whole: whole.clone(),
        };
        let sink = Collect::default();
        let rows = sink.rows.clone();
        let mut g = JobGraph::new();
        let o = g.add_node(NodeKind::Operator(Arc::new(op)), 2);
        // Two inputs of 20 batches each, both hashed over two subtasks.
        for _ in 0..2 {
            let (source, _) = counter(Some(20), 1000);
            let s = g.add_node(NodeKind::Source(source), 1);
            g.connect(s, o, Partitioning::Hash(vec![0]));
        }
        let k = g.add_node(NodeKind::Sink(Arc::new(sink)), 1);
        g.connect(o, k, Partitioning::Rebalance);
        run_job(&g, &RunOptions::default())
            .unwrap()
            .wait()
            .await
            .unwrap();
        let mut counts: HashMap<i64, usize> = HashMap::new();
        for r in rows.lock().unwrap().iter() {
            *counts.entry(r.1).or_default() += 1;
        }
        assert_eq!(counts.len(), 20_000, "shares {shares:?}: every value");
        assert!(
            counts.values().all(|&c| c == 2),
            "shares {shares:?}: every row of both inputs once"
        );
        let (shared, whole) = (shared.load(Ordering::SeqCst), whole.load(Ordering::SeqCst));
        // Each batch of an input goes to both subtasks: shared or copied.
        let expected = if shares.is_some() { (40, 40) } else { (0, 80) };
        assert_eq!((shared, whole), expected, "shares {shares:?}");
    }
}

#[test]
fn parallelism_beyond_the_key_groups_is_rejected() {
    let (source, _) = counter(Some(1), 1);
    let mut g = JobGraph::new();
    let s = g.add_node(NodeKind::Source(source), 1);
    let k = g.add_node(NodeKind::Sink(Arc::new(Collect::default())), 9);
    g.connect(s, k, Partitioning::Hash(vec![0]));
    let options = RunOptions {
        max_parallelism: 8,
        ..RunOptions::default()
    };
    let err = run_job(&g, &options).err().expect("rejected");
    assert!(
        err.to_string().contains("exceeds the max parallelism 8"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_sends_every_row_to_every_subtask_and_rebalance_to_one() {
    let (source, _) = counter(Some(10), 10);
    let all = Collect::default();
    let one = Collect::default();
    let (all_rows, one_rows) = (all.rows.clone(), one.rows.clone());
    let mut g = JobGraph::new();
    let s = g.add_node(NodeKind::Source(source), 1);
    let a = g.add_node(NodeKind::Sink(Arc::new(all)), 3);
    let o = g.add_node(NodeKind::Sink(Arc::new(one)), 3);
    g.connect(s, a, Partitioning::Broadcast);
    g.connect(s, o, Partitioning::Rebalance);
    run_job(&g, &RunOptions::default())
        .unwrap()
        .wait()
        .await
        .unwrap();
    let mut per_subtask: HashMap<usize, usize> = HashMap::new();
    for (sub, _) in all_rows.lock().unwrap().iter() {
        *per_subtask.entry(*sub).or_default() += 1;
    }
    assert_eq!(per_subtask.len(), 3);
    assert!(per_subtask.values().all(|n| *n == 100));
    assert_eq!(one_rows.lock().unwrap().len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_fuse_forward_edges_and_describe_shows_exchanges() {
    let (source, _) = counter(Some(3), 5);
    let sink = Collect::default();
    let rows = sink.rows.clone();
    let mut g = JobGraph::new();
    let s = g.add_node(NodeKind::Source(source), 2);
    let op = g.add_node(NodeKind::Operator(Arc::new(FailAt(usize::MAX))), 2);
    let k = g.add_node(NodeKind::Sink(Arc::new(sink)), 1);
    g.connect(s, op, Partitioning::Forward);
    g.connect(op, k, Partitioning::Rebalance);
    let text = g.describe();
    assert!(text.contains("Task 0 (parallelism 2)"), "{text}");
    assert!(text.contains("-> [1] FailAt"), "{text}");
    assert!(text.contains("rebalance exchange from Task 0"), "{text}");
    run_job(&g, &RunOptions::default())
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(
        rows.lock().unwrap().len(),
        15,
        "a bounded job ends once its sources do"
    );
}

#[test]
fn forward_edge_between_different_parallelisms_is_rejected() {
    let (source, _) = counter(Some(1), 1);
    let mut g = JobGraph::new();
    let s = g.add_node(NodeKind::Source(source), 2);
    let k = g.add_node(NodeKind::Sink(Arc::new(Collect::default())), 1);
    g.connect(s, k, Partitioning::Forward);
    let err = g.validate().unwrap_err();
    assert!(err.to_string().contains("forward edge"), "{err}");
}

/// Watermark = largest value seen minus 5.
struct MaxMinus5;

impl flumen_runtime::WatermarkStrategy for MaxMinus5 {
    fn describe(&self) -> String {
        "n - 5".into()
    }
    fn create(&self) -> Box<dyn flumen_runtime::WatermarkGenerator> {
        Box::new(MaxMinus5Gen(i64::MIN))
    }
}

struct MaxMinus5Gen(i64);

impl flumen_runtime::WatermarkGenerator for MaxMinus5Gen {
    fn on_batch(&mut self, batch: &RecordBatch) -> Result<Option<flumen_types::Watermark>> {
        let col = batch.column(0).as_primitive::<Int64Type>();
        let max = arrow::compute::max(col).unwrap_or(i64::MIN);
        if max - 5 > self.0 {
            self.0 = max - 5;
            return Ok(Some(flumen_types::Watermark(self.0)));
        }
        Ok(None)
    }
}

/// Records the watermarks it is given, and passes batches on.
struct RecordWatermarks(Arc<Mutex<Vec<(usize, i64)>>>);

impl OperatorFactory for RecordWatermarks {
    fn describe(&self) -> String {
        "RecordWatermarks".into()
    }
    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        Ok(Box::new(WatermarkRecorder {
            subtask: ctx.subtask,
            seen: self.0.clone(),
        }))
    }
}

struct WatermarkRecorder {
    subtask: usize,
    seen: Arc<Mutex<Vec<(usize, i64)>>>,
}

impl Operator for WatermarkRecorder {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        out.push(batch);
        Ok(())
    }
    fn process_watermark(
        &mut self,
        wm: flumen_types::Watermark,
        _out: &mut Vec<RecordBatch>,
    ) -> Result<Option<flumen_types::Watermark>> {
        self.seen.lock().unwrap().push((self.subtask, wm.0));
        Ok(Some(wm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_watermarks_flow_as_the_minimum_over_inputs_and_end_at_max() {
    let (source, _) = counter(Some(20), 100);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut g = JobGraph::new();
    let s = g.add_node(NodeKind::Source(source), 2);
    g.set_watermarks(s, Arc::new(MaxMinus5));
    let op = g.add_node(
        NodeKind::Operator(Arc::new(RecordWatermarks(seen.clone()))),
        2,
    );
    let k = g.add_node(NodeKind::Sink(Arc::new(Collect::default())), 2);
    g.connect(s, op, Partitioning::Hash(vec![0]));
    g.connect(op, k, Partitioning::Forward);
    assert!(g.describe().contains("watermarks: n - 5"));
    let job = run_job(&g, &RunOptions::default()).unwrap();
    let metrics = job.metrics();
    assert_eq!(
        metrics.output_watermark(),
        None,
        "no sink has a watermark yet"
    );
    job.wait().await.unwrap();
    assert_eq!(
        metrics.output_watermark(),
        Some(i64::MAX),
        "every sink subtask saw the input end"
    );
    let seen = seen.lock().unwrap();
    for subtask in 0..2 {
        let wms: Vec<i64> = seen
            .iter()
            .filter(|s| s.0 == subtask)
            .map(|s| s.1)
            .collect();
        assert!(wms.windows(2).all(|w| w[0] < w[1]), "increasing: {wms:?}");
        assert_eq!(wms.last(), Some(&i64::MAX), "ends at the maximum");
        // Source subtask 0 emits batches 0, 2, 4, … and subtask 1 batches
        // 1, 3, 5, …: before the end, the merged watermark never passes
        // what the slower source has reached.
        let before_end = &wms[..wms.len() - 1];
        assert!(!before_end.is_empty());
        assert!(
            before_end.iter().all(|w| *w <= 19 * 100 + 99 - 5),
            "{before_end:?}"
        );
    }
}

/// Subtask 0 emits `fast` batches of 100 rows and ends after a third of
/// `stall`; subtask 1 emits one batch and ends after `stall`.
struct Stalling {
    fast: i64,
    stall: Duration,
}

impl SourceFactory for Stalling {
    fn describe(&self) -> String {
        "Source: stalling".into()
    }
    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Source>> {
        Ok(Box::new(StallingSource {
            left: if ctx.subtask == 0 { self.fast } else { 1 },
            next: 0,
            stall: Some(if ctx.subtask == 0 {
                self.stall / 3
            } else {
                self.stall
            }),
        }))
    }
}

struct StallingSource {
    left: i64,
    next: i64,
    stall: Option<Duration>,
}

#[async_trait]
impl Source for StallingSource {
    async fn next(&mut self) -> Result<Option<Message>> {
        if self.left > 0 {
            self.left -= 1;
            let col = Int64Array::from_iter_values(self.next..self.next + 100);
            self.next += 100;
            let batch = RecordBatch::try_from_iter([("n", Arc::new(col) as ArrayRef)])?;
            return Ok(Some(Message::Batch(batch)));
        }
        if let Some(stall) = self.stall.take() {
            tokio::time::sleep(stall).await;
        }
        Ok(None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_source_subtask_stops_holding_the_watermark_back() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut g = JobGraph::new();
    let s = g.add_node(
        NodeKind::Source(Arc::new(Stalling {
            fast: 10,
            stall: Duration::from_millis(1500),
        })),
        2,
    );
    g.set_watermarks(s, Arc::new(MaxMinus5));
    g.set_idle_timeout(s, Duration::from_millis(50));
    let op = g.add_node(
        NodeKind::Operator(Arc::new(RecordWatermarks(seen.clone()))),
        1,
    );
    let k = g.add_node(NodeKind::Sink(Arc::new(Collect::default())), 1);
    g.connect(s, op, Partitioning::Rebalance);
    g.connect(op, k, Partitioning::Forward);
    assert!(g.describe().contains("idle after 50 ms without rows"));
    run_job(&g, &RunOptions::default())
        .unwrap()
        .wait()
        .await
        .unwrap();
    let wms: Vec<i64> = seen.lock().unwrap().iter().map(|s| s.1).collect();
    // Subtask 1 stalls at 94; once it is idle the watermark follows
    // subtask 0 to 994. Without idleness it would stay at 94 until subtask 1
    // ends (subtask 0's end alone does not lift the minimum).
    assert!(wms.contains(&994), "{wms:?}");
    assert_eq!(wms.last(), Some(&i64::MAX));
    assert!(wms.windows(2).all(|w| w[0] < w[1]), "{wms:?}");
}

/// Counts its timer calls, asking for one every 20 ms.
struct Ticking(Arc<AtomicU64>);

impl OperatorFactory for Ticking {
    fn describe(&self) -> String {
        "Ticking".into()
    }
    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        Ok(Box::new(TickCounter(self.0.clone())))
    }
}

struct TickCounter(Arc<AtomicU64>);

impl Operator for TickCounter {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        out.push(batch);
        Ok(())
    }
    fn timer_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(20))
    }
    fn on_timer(&mut self, _out: &mut Vec<RecordBatch>) -> Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_get_their_timer_while_no_input_arrives() {
    let ticks = Arc::new(AtomicU64::new(0));
    let mut g = JobGraph::new();
    // One batch, then 400 ms (a third of the stall) of nothing before the
    // input ends.
    let s = g.add_node(
        NodeKind::Source(Arc::new(Stalling {
            fast: 1,
            stall: Duration::from_millis(1200),
        })),
        1,
    );
    let op = g.add_node(NodeKind::Operator(Arc::new(Ticking(ticks.clone()))), 1);
    let k = g.add_node(NodeKind::Sink(Arc::new(Collect::default())), 1);
    g.connect(s, op, Partitioning::Rebalance);
    g.connect(op, k, Partitioning::Forward);
    run_job(&g, &RunOptions::default())
        .unwrap()
        .wait()
        .await
        .unwrap();
    let n = ticks.load(Ordering::SeqCst);
    assert!(n >= 5, "timer called {n} times in 400 ms of quiet");
}
