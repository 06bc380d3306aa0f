//! One subtask of a chain: reads from its source or input gate, runs each
//! batch through its chained operators in one loop, and hands the result to
//! its sink or its outgoing exchanges. With checkpoints on it also listens
//! to the coordinator: at a barrier it snapshots its source position,
//! operator state and sink, forwards the barrier, and uploads the snapshot
//! while it goes on processing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::UInt32Array;
use arrow::compute::take_record_batch;
use arrow::record_batch::RecordBatch;
use flumen_state::StateSnapshot;
use flumen_state::checkpoint::{CheckpointStore, StateFile, dir_name};
use flumen_state::{KeyGroupRange, checkpoint::CheckpointKind};
use flumen_types::{Barrier, FlumenError, Message, Result, Watermark};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::checkpoint::{Control, NodeState, Restore, TaskAck};
use crate::exchange::Exchange;
use crate::graph::NodeId;
use crate::input::{GateEvent, InputGate};
use crate::latency::Origin;
use crate::metrics::JobMetrics;
use crate::operator::{Operator, Sink, Source, WatermarkGenerator};

/// Where a task's messages come from.
pub(crate) enum Head {
    Source(SourceHead),
    Inputs(InputGate),
}

/// A source and how its event time is tracked.
pub(crate) struct SourceHead {
    pub source: Box<dyn Source>,
    /// Derives watermarks from each batch, unless the source sends its own
    /// (per split) or the table has no event time.
    pub generator: Option<Box<dyn WatermarkGenerator>>,
    /// The table has event time: `Watermark::MAX` follows the end of input.
    pub event_time: bool,
    /// How long the source may go without rows before it is marked idle.
    pub idle_timeout: Option<std::time::Duration>,
    /// Since when the source has been waiting for its next message, and
    /// whether it was reported idle since: kept across interruptions.
    pub waiting: Option<(Instant, bool)>,
}

/// Where a task's output goes.
pub(crate) enum Tail {
    Sink(Box<dyn Sink>),
    Exchanges(Vec<Exchange>),
}

/// A task's part in checkpoints.
pub(crate) struct TaskCheckpoint {
    /// This task's number, as the coordinator counts tasks.
    pub index: usize,
    pub subtask: usize,
    pub control: UnboundedReceiver<Control>,
    pub acks: UnboundedSender<TaskAck>,
    pub store: CheckpointStore,
    /// The graph node and its stable id of the source (if any), each
    /// chained operator, and the sink (if any).
    pub source_node: Option<(NodeId, String)>,
    pub operator_nodes: Vec<(NodeId, String, String)>,
    pub sink_node: Option<(NodeId, String)>,
    /// The key groups this subtask owns (what it restores).
    pub range: KeyGroupRange,
    /// The checkpoint to resume from.
    pub restore: Option<Arc<Restore>>,
    /// Opens once sinks have settled earlier runs' staged output.
    pub go: watch::Receiver<bool>,
    /// The checkpoint the data now flowing belongs to: one past the last
    /// barrier seen.
    pub epoch: u64,
    /// The upload of the last snapshot: the next acknowledgement waits for
    /// it, so the coordinator hears of a task's snapshots in order.
    pub last_upload: Option<tokio::task::JoinHandle<()>>,
    /// Tasks of the job still restoring: the last one to finish marks the
    /// job restored in its metrics.
    pub restoring: Arc<std::sync::atomic::AtomicUsize>,
}

pub(crate) struct Task {
    pub head: Head,
    pub operators: Vec<Box<dyn Operator>>,
    pub tail: Tail,
    pub metrics: Arc<JobMetrics>,
    /// Where a task ending in a sink keeps its watermark (the job's output
    /// watermark is the least of them).
    pub sink_watermark: Option<Arc<std::sync::atomic::AtomicI64>>,
    /// Set when the job is asked to stop: sources end their input early.
    pub stop: Arc<AtomicBool>,
    /// Ticks for operators that asked for wall-clock timers (tasks with
    /// inputs only: a source's `next` may not be interrupted).
    pub timer: Option<tokio::time::Interval>,
    pub checkpoint: Option<TaskCheckpoint>,
}

/// What the task does next.
enum Step {
    /// A message of the source or the input gate; for a source batch, the
    /// watermark it advanced to.
    Event(GateEvent, Option<Watermark>),
    Control(Control),
    Timer,
}

impl Task {
    pub(crate) async fn run(mut self) -> Result<()> {
        self.restore().await?;
        loop {
            // A chain that never waits on a channel (source to sink in one
            // task) must still give the runtime's timers, signals and other
            // tasks their turn: this yields once the task's budget is spent.
            tokio::task::consume_budget().await;
            match self.next_step().await? {
                Step::Timer => self.on_timer().await?,
                Step::Control(Control::Barrier(b)) => {
                    if self.on_barrier(b).await? {
                        return Ok(());
                    }
                }
                Step::Control(Control::Commit(n)) => {
                    if let Head::Source(head) = &mut self.head {
                        head.source.checkpoint_complete(n).await?;
                    }
                    if let Tail::Sink(sink) = &mut self.tail {
                        sink.commit(n).await?;
                    }
                }
                Step::Event(event, advanced) => match event {
                    GateEvent::Batch(input, batch, rows, origin) => {
                        let out = self.apply_head(input, batch, rows)?;
                        self.emit(out, origin).await?;
                        if let Some(wm) = advanced {
                            self.on_watermark(wm, origin.map(Origin::watermark)).await?;
                        }
                    }
                    GateEvent::Watermark(wm, origin) => self.on_watermark(wm, origin).await?,
                    GateEvent::Barrier(b) => {
                        if self.on_barrier(b).await? {
                            return Ok(());
                        }
                    }
                    GateEvent::Idle => self.emit_control(Message::Idle, None).await?,
                    GateEvent::InputEnded(input) => {
                        if let Some(first) = self.operators.first_mut() {
                            let mut out = Vec::new();
                            first.input_ended(input, &mut out)?;
                            let out = self.apply_operators(1, out)?;
                            self.emit(out, None).await?;
                        }
                    }
                    GateEvent::End => return self.finish().await,
                },
            }
        }
    }

    /// Waits for the sinks to settle, then takes up this subtask's share of
    /// the checkpoint the job resumes from.
    async fn restore(&mut self) -> Result<()> {
        let Some(cp) = &mut self.checkpoint else {
            return Ok(());
        };
        cp.go
            .wait_for(|go| *go)
            .await
            .map_err(|_| FlumenError::Cancelled)?;
        let Some(restore) = cp.restore.clone() else {
            return Ok(());
        };
        let manifest = &restore.manifest;
        let restoring = |name: &str, id: &str, e: FlumenError| match e {
            FlumenError::Transient { .. } => e,
            e => FlumenError::state(format!(
                "restoring operator '{name}' ({id}) from checkpoint {}: {e}",
                manifest.id
            )),
        };
        if let (Head::Source(head), Some((_, id))) = (&mut self.head, &cp.source_node)
            && let Some(state) = manifest.operator(id)
        {
            head.source
                .restore_position(&state.positions)
                .map_err(|e| restoring("source", id, e))?;
        }
        for (op, (_, id, name)) in self.operators.iter_mut().zip(&cp.operator_nodes) {
            let whole = op.broadcast_tables();
            let Some(snapshot) = read_snapshot(&restore, id, cp.range, &whole).await else {
                continue;
            };
            // An operator's restore reads columns by the layout it wrote;
            // a snapshot of another layout must be an error, not a crash.
            let restored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                op.restore_state(&snapshot?)
            }))
            .unwrap_or_else(|_| Err(FlumenError::state(WRONG_LAYOUT)));
            restored.map_err(|e| restoring(name, id, e))?;
        }
        if let (Tail::Sink(sink), Some((_, id))) = (&mut self.tail, &cp.sink_node)
            && let Some(snapshot) = read_snapshot(&restore, id, cp.range, &[]).await
        {
            let restored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                sink.restore_state(&snapshot?)
            }))
            .unwrap_or_else(|_| Err(FlumenError::state(WRONG_LAYOUT)));
            restored.map_err(|e| restoring("sink", id, e))?;
        }
        if cp.restoring.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.metrics.restored();
        }
        Ok(())
    }

    async fn next_step(&mut self) -> Result<Step> {
        let Task {
            head,
            tail,
            checkpoint,
            timer,
            stop,
            metrics,
            ..
        } = self;
        let control = checkpoint.as_mut().map(|c| &mut c.control);
        match head {
            Head::Source(head) => {
                let stopped = stop.load(Ordering::Relaxed);
                let pull = async {
                    let next = if stopped {
                        None
                    } else {
                        pull_source(head, tail).await?
                    };
                    source_event(head, next, metrics)
                };
                match control {
                    Some(control) => tokio::select! {
                        biased;
                        Some(c) = control.recv() => Ok(Step::Control(c)),
                        event = pull => event,
                    },
                    None => pull.await,
                }
            }
            // The gate's `next` is cancel-safe: a message is only taken
            // from a channel when it is handled.
            Head::Inputs(gate) => {
                let tick = async {
                    match timer {
                        Some(t) => {
                            t.tick().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                let control = async {
                    match control {
                        Some(c) => c.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    Some(c) = control => Ok(Step::Control(c)),
                    event = gate.next() => Ok(Step::Event(event?, None)),
                    () = tick => Ok(Step::Timer),
                }
            }
        }
    }

    /// Runs a batch of input `input` (only rows `rows` of it, when given)
    /// through the chain: the first operator is told which input it came
    /// from, the rest see one input.
    fn apply_head(
        &mut self,
        input: usize,
        batch: RecordBatch,
        rows: Option<UInt32Array>,
    ) -> Result<Vec<RecordBatch>> {
        let Some((first, rest)) = self.operators.split_first_mut() else {
            return Ok(vec![match rows {
                Some(rows) => take_record_batch(&batch, &rows)?,
                None => batch,
            }]);
        };
        let mut out = Vec::new();
        match (rest.first().and_then(|next| next.admission()), rows) {
            (Some(next), rows) => {
                first.process_offered(input, batch, rows.as_ref(), next, &mut out)?
            }
            (None, Some(rows)) => first.process_rows(input, batch, &rows, &mut out)?,
            (None, None) => first.process_input(input, batch, &mut out)?,
        }
        self.apply_operators(1, out)
    }

    /// Runs `batches` through the operators from index `from` to the end.
    fn apply_operators(
        &mut self,
        from: usize,
        mut batches: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>> {
        for op in &mut self.operators[from..] {
            if batches.is_empty() {
                break;
            }
            let mut next = Vec::with_capacity(batches.len());
            for batch in batches.drain(..) {
                op.process_batch(batch, &mut next)?;
            }
            batches = next;
        }
        Ok(batches)
    }

    async fn on_timer(&mut self) -> Result<()> {
        for i in 0..self.operators.len() {
            let mut out = Vec::new();
            self.operators[i].on_timer(&mut out)?;
            let out = self.apply_operators(i + 1, out)?;
            self.emit(out, None).await?;
        }
        Ok(())
    }

    /// Event time reached `wm`; what it releases is written as of `origin`,
    /// when the watermark passed at the source.
    async fn on_watermark(&mut self, wm: Watermark, origin: Option<Origin>) -> Result<()> {
        let origin = origin.map(|o| Origin {
            watermark: true,
            ..o
        });
        let mut current = Some(wm);
        for i in 0..self.operators.len() {
            let Some(wm) = current else { break };
            let mut out = Vec::new();
            current = self.operators[i].process_watermark(wm, &mut out)?;
            let out = self.apply_operators(i + 1, out)?;
            self.emit(out, origin).await?;
        }
        match current {
            Some(wm) => {
                if let Some(slot) = &self.sink_watermark {
                    slot.store(wm.0, std::sync::atomic::Ordering::Relaxed);
                }
                self.emit_control(Message::Watermark(wm), origin).await
            }
            None => Ok(()),
        }
    }

    /// Barrier `b` reached this task on every input: snapshot, forward the
    /// barrier, upload in the background. Returns whether the task stops
    /// here (a savepoint that does not drain).
    async fn on_barrier(&mut self, b: Barrier) -> Result<bool> {
        if self.checkpoint.is_none() {
            self.emit_control(Message::Barrier(b), None).await?;
            return Ok(false);
        }
        let paused = Instant::now();
        let states = self.snapshot(b.id).await?;
        let pause = paused.elapsed();
        self.emit_control(Message::Barrier(b), None).await?;
        let cp = checkpointing(&mut self.checkpoint)?;
        cp.epoch = b.id + 1;
        let kind = if b.stop {
            CheckpointKind::Savepoint
        } else {
            CheckpointKind::Checkpoint
        };
        upload(cp, Some(b.id), dir_name(kind, b.id), states, pause);
        if !b.stop {
            return Ok(false);
        }
        self.await_commit(b.id).await?;
        Ok(true)
    }

    /// This task's source position, operator state and staged sink output.
    async fn snapshot(&mut self, checkpoint: u64) -> Result<Vec<(NodeState, StateSnapshot)>> {
        let cp = checkpointing(&mut self.checkpoint)?;
        let subtask = cp.subtask;
        let node = |node: NodeId| NodeState {
            node,
            subtask,
            files: Vec::new(),
            positions: Vec::new(),
            staged: Vec::new(),
        };
        let mut states = Vec::new();
        if let (Head::Source(head), Some((id, _))) = (&mut self.head, &cp.source_node) {
            let mut state = node(*id);
            state.positions = head.source.snapshot_position(checkpoint)?;
            states.push((state, StateSnapshot::default()));
        }
        for (op, (id, _, _)) in self.operators.iter_mut().zip(&cp.operator_nodes) {
            states.push((node(*id), op.snapshot_state()?));
        }
        if let (Tail::Sink(sink), Some((id, _))) = (&mut self.tail, &cp.sink_node) {
            let mut state = node(*id);
            state.staged = sink.pre_commit(checkpoint).await?;
            states.push((state, sink.snapshot_state()?));
        }
        Ok(states)
    }

    /// Waits until the coordinator says a checkpoint at or past `checkpoint`
    /// is complete, and commits the sink's staged output.
    async fn await_commit(&mut self, checkpoint: u64) -> Result<()> {
        let cp = checkpointing(&mut self.checkpoint)?;
        let Tail::Sink(sink) = &mut self.tail else {
            return Ok(());
        };
        loop {
            match cp.control.recv().await {
                Some(Control::Commit(n)) if n >= checkpoint => return sink.commit(n).await,
                Some(_) => {}
                None => return Err(FlumenError::Cancelled),
            }
        }
    }

    async fn finish(&mut self) -> Result<()> {
        for i in 0..self.operators.len() {
            let mut out = Vec::new();
            self.operators[i].finish(&mut out)?;
            let out = self.apply_operators(i + 1, out)?;
            self.emit(out, None).await?;
        }
        if self.checkpoint.is_some() {
            // The task's final state stands for it in every later
            // checkpoint; a sink commits once one of them completes.
            let epoch = self.checkpoint.as_ref().map_or(0, |c| c.epoch);
            let states = self.snapshot(epoch).await?;
            if let Tail::Exchanges(exchanges) = &mut self.tail {
                for ex in exchanges {
                    ex.broadcast(Message::End, None).await?;
                }
            }
            let cp = checkpointing(&mut self.checkpoint)?;
            upload(
                cp,
                None,
                dir_name(CheckpointKind::Checkpoint, epoch),
                states,
                std::time::Duration::ZERO,
            );
            self.await_commit(epoch).await?;
            // Nothing is left to stage: this only closes the output (a
            // table's last rule on stdout).
            if let Tail::Sink(sink) = &mut self.tail {
                sink.finish().await?;
            }
            return Ok(());
        }
        match &mut self.tail {
            Tail::Sink(sink) => sink.finish().await,
            Tail::Exchanges(exchanges) => {
                for ex in exchanges {
                    ex.broadcast(Message::End, None).await?;
                }
                Ok(())
            }
        }
    }

    /// Hands `batches`, made from input of `origin`, to the sink or the
    /// exchanges; a sink's writes are recorded as latency from `origin`.
    async fn emit(&mut self, batches: Vec<RecordBatch>, origin: Option<Origin>) -> Result<()> {
        for batch in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            match &mut self.tail {
                Tail::Sink(sink) => {
                    let rows = batch.num_rows();
                    sink.write(batch).await?;
                    self.metrics.add_rows_out(rows);
                    if let Some(origin) = origin {
                        self.metrics.record_latency(origin, rows);
                    }
                }
                Tail::Exchanges(exchanges) => {
                    let (last, rest) = exchanges
                        .split_last_mut()
                        .expect("a task without a sink has at least one output");
                    for ex in rest {
                        ex.send_batch(batch.clone(), origin).await?;
                    }
                    last.send_batch(batch, origin).await?;
                }
            }
        }
        Ok(())
    }

    async fn emit_control(&mut self, msg: Message, origin: Option<Origin>) -> Result<()> {
        emit_control(&mut self.tail, msg, origin).await
    }
}

/// The task's part in checkpoints, which the checkpoint steps need.
fn checkpointing(cp: &mut Option<TaskCheckpoint>) -> Result<&mut TaskCheckpoint> {
    cp.as_mut()
        .ok_or_else(|| FlumenError::internal("a checkpoint step ran with checkpoints off"))
}

/// Why a restore that panicked failed.
const WRONG_LAYOUT: &str = "its state tables do not have the layout this operator stores";

/// The state node `id` stored in the checkpoint `restore` resumes from, for
/// the key groups in `range` (all of them for the tables in `whole`);
/// `None` when it stored none.
async fn read_snapshot(
    restore: &Restore,
    id: &str,
    range: KeyGroupRange,
    whole: &[usize],
) -> Option<Result<StateSnapshot>> {
    let state = restore.manifest.operator(id)?;
    if state.files.is_empty() {
        return None;
    }
    let files: Vec<&StateFile> = state.files.iter().collect();
    Some(restore.store.read_state(&files, range, whole).await)
}

/// Stores the snapshots of `states` under checkpoint directory `dir` in the
/// background and acknowledges `checkpoint` (`None`: the final state) to
/// the coordinator with the files written.
fn upload(
    cp: &mut TaskCheckpoint,
    checkpoint: Option<u64>,
    dir: String,
    states: Vec<(NodeState, StateSnapshot)>,
    pause: std::time::Duration,
) {
    let store = cp.store.clone();
    let acks = cp.acks.clone();
    let task = cp.index;
    let ids: Vec<(NodeId, String)> = cp
        .source_node
        .iter()
        .cloned()
        .chain(cp.operator_nodes.iter().map(|(n, id, _)| (*n, id.clone())))
        .chain(cp.sink_node.iter().cloned())
        .collect();
    let previous = cp.last_upload.take();
    cp.last_upload = Some(tokio::spawn(async move {
        let mut out = Vec::with_capacity(states.len());
        let mut failure = None;
        for (mut state, snapshot) in states {
            if snapshot.num_rows() > 0 {
                let id = ids
                    .iter()
                    .find(|(n, _)| *n == state.node)
                    .map_or("node", |(_, id)| id.as_str());
                // Rows that operators left to build (from state they no
                // longer change) are built as they are written, beside
                // processing.
                match store.write_state(&dir, id, state.subtask, snapshot).await {
                    Ok(files) => state.files = files,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            out.push(state);
        }
        let state = match failure {
            Some(e) => Err(e),
            None => Ok(out),
        };
        if let Some(previous) = previous {
            // Only a panic fails it, and the job fails with that panic.
            let _ = previous.await;
        }
        // The coordinator is gone only when the job is over.
        let _ = acks.send(TaskAck {
            task,
            checkpoint,
            state,
            pause,
        });
    }));
}

async fn emit_control(tail: &mut Tail, msg: Message, origin: Option<Origin>) -> Result<()> {
    if let Tail::Exchanges(exchanges) = tail {
        for ex in exchanges {
            ex.broadcast(msg.clone(), origin).await?;
        }
    }
    Ok(())
}

/// The source's next message. If it has none for its idle timeout, tells
/// the downstream tasks once that this subtask is idle, and keeps waiting.
/// Safe to cancel: how long it has waited is kept in the head.
async fn pull_source(head: &mut SourceHead, tail: &mut Tail) -> Result<Option<Message>> {
    let timeout = match head.idle_timeout {
        Some(t) if head.event_time => t,
        _ => return head.source.next().await,
    };
    let (since, reported) = *head.waiting.get_or_insert((Instant::now(), false));
    let next = if reported {
        head.source.next().await
    } else {
        let next = head.source.next();
        tokio::pin!(next);
        tokio::select! {
            biased;
            msg = &mut next => msg,
            () = tokio::time::sleep_until(since + timeout) => {
                head.waiting = Some((since, true));
                emit_control(tail, Message::Idle, None).await?;
                next.await
            }
        }
    };
    head.waiting = None;
    next
}

/// Turns what the source returned into the task's next step.
fn source_event(
    head: &mut SourceHead,
    next: Option<Message>,
    metrics: &JobMetrics,
) -> Result<Step> {
    // When the rows of what the source returned became ready.
    let origin = || {
        let (first, last) = head.source.ready_span().unwrap_or_else(|| {
            let now = std::time::Instant::now();
            (now, now)
        });
        Origin::rows(first, last)
    };
    Ok(match next {
        // Sources send whole batches; a part of one is taken as its rows.
        Some(Message::Rows(b, rows)) => {
            return source_event(
                head,
                Some(Message::Batch(take_record_batch(&b, &rows)?)),
                metrics,
            );
        }
        Some(Message::Batch(b)) => {
            metrics.add_rows_in(b.num_rows());
            let origin = origin();
            let advanced = match &mut head.generator {
                Some(generator) => generator.on_batch(&b)?,
                None => None,
            };
            Step::Event(GateEvent::Batch(0, b, None, Some(origin)), advanced)
        }
        Some(Message::Watermark(wm)) => {
            Step::Event(GateEvent::Watermark(wm, Some(origin().watermark())), None)
        }
        Some(Message::Barrier(b)) => Step::Event(GateEvent::Barrier(b), None),
        Some(Message::Idle) => Step::Event(GateEvent::Idle, None),
        // At the end of its input a source with event time releases every
        // window and timer downstream.
        None if head.event_time => {
            head.event_time = false;
            head.generator = None;
            Step::Event(GateEvent::Watermark(Watermark::MAX, None), None)
        }
        Some(Message::End) | None => Step::Event(GateEvent::End, None),
    })
}
