//! The contracts of sources, operators and sinks, and the factories that make
//! one instance per parallel subtask.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use flumen_state::checkpoint::SplitPosition;
use flumen_state::{KeyGroups, StateSnapshot};
use flumen_types::{Message, Result, Watermark};

use crate::metrics::JobMetrics;

/// What a subtask knows about where it runs.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// Index of this subtask, `0..parallelism`.
    pub subtask: usize,
    /// Number of parallel subtasks of this node.
    pub parallelism: usize,
    /// The key groups this subtask owns and how keys map to them: what its
    /// hash exchange routes to it, and what its keyed state holds.
    pub key_groups: KeyGroups,
    /// Counters of the whole job.
    pub metrics: Arc<JobMetrics>,
    /// With checkpoints on: the id of the first checkpoint this run takes
    /// (one past the checkpoint it resumed from). A sink stages what it
    /// writes before that checkpoint under this id. `None`: checkpoints off.
    pub first_checkpoint: Option<u64>,
}

impl TaskContext {
    /// The context of `subtask` of `parallelism` subtasks, with
    /// `max_parallelism` key groups.
    pub fn new(
        subtask: usize,
        parallelism: usize,
        max_parallelism: usize,
        metrics: Arc<JobMetrics>,
    ) -> Self {
        TaskContext {
            subtask,
            parallelism,
            key_groups: KeyGroups::of_subtask(subtask, parallelism, max_parallelism),
            metrics,
            first_checkpoint: None,
        }
    }
}

/// Produces the input of a job: batches and watermarks, until the input ends.
#[async_trait]
pub trait Source: Send {
    /// The next [`Message::Batch`] or [`Message::Watermark`]; `None` once a
    /// bounded input is exhausted. Must be safe to cancel: the task drops
    /// this future when a barrier or a stop arrives while it waits, and
    /// calls it again later; nothing may be lost or read twice by that.
    async fn next(&mut self) -> Result<Option<Message>>;

    /// When the rows of the batch `next` returned last became ready, the
    /// first and the last of them (a paced generator's due times, when a
    /// message source took its first message), for latency. `None` (the
    /// default): when `next` returned it.
    fn ready_span(&self) -> Option<(std::time::Instant, std::time::Instant)> {
        None
    }

    /// Where each of its splits has read to, counting exactly the rows
    /// `next` has returned: what checkpoint `checkpoint` stores for it.
    fn snapshot_position(&mut self, _checkpoint: u64) -> Result<Vec<SplitPosition>> {
        Ok(Vec::new())
    }

    /// Checkpoint `checkpoint` is complete: a source whose system wants to
    /// hear what was consumed (acknowledgements, offsets for monitoring)
    /// tells it now about everything up to that checkpoint's positions.
    async fn checkpoint_complete(&mut self, _checkpoint: u64) -> Result<()> {
        Ok(())
    }

    /// Rewinds to `positions`, the positions of every subtask of this
    /// source in a checkpoint (taken at any parallelism): the source takes
    /// up the splits it owns now. Called before the first `next`.
    fn restore_position(&mut self, _positions: &[SplitPosition]) -> Result<()> {
        Ok(())
    }
}

/// Which offered rows an operator would change nothing for, asked by the
/// operator chained before it before that one builds them whole: a join
/// then copies an auction's strings only for the bids a TopN could keep.
pub trait Admission {
    /// The input columns the answer reads, in the order `admits` takes them.
    fn admission_columns(&self) -> &[usize];

    /// For the rows of one batch the operator will get whole, whose
    /// admission columns are `columns`: false where the row, in that batch,
    /// processed now or after batches processed since, would change neither
    /// the operator's state, its output nor its metrics; `None` admits all.
    fn admits(&self, columns: &[ArrayRef]) -> Result<Option<BooleanArray>>;
}

/// A synchronous step over batches; chained operators run in one loop.
pub trait Operator: Send {
    /// Processes one batch, pushing any output batches to `out`.
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()>;

    /// Processes one batch of input `input` (the order in which the node's
    /// input edges were connected). Operators with one input keep the default.
    fn process_input(
        &mut self,
        input: usize,
        batch: RecordBatch,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        debug_assert_eq!(input, 0, "a one-input operator got input {input}");
        self.process_batch(batch, out)
    }

    /// Processes rows `rows` (ascending) of a batch of input `input` that a
    /// hash exchange shared between subtasks instead of copying each its
    /// rows. The default copies them out; an operator that keeps whole
    /// input batches (a join's state) can keep the shared one instead.
    fn process_rows(
        &mut self,
        input: usize,
        batch: RecordBatch,
        rows: &UInt32Array,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        self.process_input(input, take_record_batch(&batch, rows)?, out)
    }

    /// Processes a batch as [`Operator::process_rows`] (with `rows`) or
    /// [`Operator::process_input`] do, knowing that every output batch goes
    /// to `next`, which may refuse some of its rows before they are built.
    fn process_offered(
        &mut self,
        input: usize,
        batch: RecordBatch,
        rows: Option<&UInt32Array>,
        _next: &dyn Admission,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        match rows {
            Some(rows) => self.process_rows(input, batch, rows, out),
            None => self.process_input(input, batch, out),
        }
    }

    /// What this operator can say of rows before they are built
    /// ([`Admission`]), to the operator chained before it.
    fn admission(&self) -> Option<&dyn Admission> {
        None
    }

    /// Every upstream subtask of input `input` has finished while other
    /// inputs go on (a join can stop keeping the other side's rows).
    fn input_ended(&mut self, _input: usize, _out: &mut Vec<RecordBatch>) -> Result<()> {
        Ok(())
    }

    /// Event time has reached `watermark`: emit what it completes. Returns the
    /// watermark to forward downstream.
    fn process_watermark(
        &mut self,
        watermark: Watermark,
        _out: &mut Vec<RecordBatch>,
    ) -> Result<Option<Watermark>> {
        Ok(Some(watermark))
    }

    /// All input has arrived: emit whatever is still held.
    fn finish(&mut self, _out: &mut Vec<RecordBatch>) -> Result<()> {
        Ok(())
    }

    /// How often the operator wants [`Operator::on_timer`] called, by the
    /// wall clock, whether or not input arrives (processing-time windows).
    fn timer_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// The timer fired: emit what processing time completes.
    fn on_timer(&mut self, _out: &mut Vec<RecordBatch>) -> Result<()> {
        Ok(())
    }

    /// The operator's keyed state, split by key group (what a checkpoint
    /// stores). Stateless operators keep the default: no state.
    fn snapshot_state(&mut self) -> Result<StateSnapshot> {
        Ok(StateSnapshot::default())
    }

    /// Takes up the state of the key groups this subtask owns from
    /// `snapshot`, which may come from any number of subtasks of the same
    /// operator (restore at another parallelism). Called before any input.
    fn restore_state(&mut self, _snapshot: &StateSnapshot) -> Result<()> {
        Ok(())
    }

    /// An input to read before the others, until it ends (a join's
    /// broadcast table): meanwhile the others wait upstream, held back, so
    /// their rows need not wait in this operator's state. Read by the task
    /// of an operator at the head of its chain.
    fn first_input(&self) -> Option<usize> {
        None
    }

    /// State tables every subtask holds whole (a join's broadcast side):
    /// one subtask snapshots them, and a restore reads all their key
    /// groups, not only the subtask's own.
    fn broadcast_tables(&self) -> Vec<usize> {
        Vec::new()
    }
}

/// Consumes the output of a job. With checkpoints on, a sink commits in two
/// phases: what it wrote before barrier `n` is staged at the barrier
/// ([`Sink::pre_commit`]) and made visible once checkpoint `n` is complete
/// ([`Sink::commit`]); [`SinkFactory::recover`] settles what a run that
/// died had staged.
#[async_trait]
pub trait Sink: Send {
    /// Writes one batch.
    async fn write(&mut self, batch: RecordBatch) -> Result<()>;

    /// Without checkpoints: input has ended, flush and make everything visible.
    async fn finish(&mut self) -> Result<()>;

    /// Stages everything written since the last barrier as part of
    /// checkpoint `checkpoint`, durably but not visibly; returns names of
    /// what it staged, for the manifest. At-least-once sinks flush here.
    async fn pre_commit(&mut self, _checkpoint: u64) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Checkpoint `checkpoint` is complete: make visible everything staged
    /// up to it.
    async fn commit(&mut self, _checkpoint: u64) -> Result<()> {
        Ok(())
    }

    /// What the sink staged that must survive in the checkpoint itself
    /// (rows not yet handed to its system), split by key group; called
    /// right after [`Sink::pre_commit`]. Most sinks stage in their own
    /// system and keep the default: nothing.
    fn snapshot_state(&mut self) -> Result<StateSnapshot> {
        Ok(StateSnapshot::default())
    }

    /// Takes up what [`Sink::snapshot_state`] stored, for the key groups
    /// this subtask owns, before any write (restore at any parallelism).
    fn restore_state(&mut self, _snapshot: &StateSnapshot) -> Result<()> {
        Ok(())
    }
}

/// Tracks event time in the batches of one source subtask and says when the
/// watermark advances.
pub trait WatermarkGenerator: Send {
    /// Looks at a batch the source produced; returns the new watermark if
    /// this batch moved it forward.
    fn on_batch(&mut self, batch: &RecordBatch) -> Result<Option<Watermark>>;
}

/// Makes a [`WatermarkGenerator`] for each source subtask.
pub trait WatermarkStrategy: Send + Sync {
    /// A short description for `explain`.
    fn describe(&self) -> String;
    /// The generator of one subtask.
    fn create(&self) -> Box<dyn WatermarkGenerator>;
}

/// Makes a [`Source`] for each subtask.
pub trait SourceFactory: Send + Sync {
    /// A short description for `explain` and progress output.
    fn describe(&self) -> String;
    /// The source of subtask `ctx.subtask`.
    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Source>>;
    /// For a table with event time: a source that tracks it per split (file,
    /// partition) itself, with one generator of `watermarks` per split, and
    /// sends [`Message::Watermark`]s, the minimum over its unfinished splits.
    /// `None` (the default) leaves watermarks to the task, which derives them
    /// from every batch the source returns.
    fn create_with_watermarks(
        &self,
        _ctx: &TaskContext,
        _watermarks: &Arc<dyn WatermarkStrategy>,
    ) -> Result<Option<Box<dyn Source>>> {
        Ok(None)
    }
    /// For a bounded source, the bytes it reads in all (its files' sizes):
    /// what the planner weighs before broadcasting it to every subtask of
    /// a join. `None` (the default): unbounded or unknown.
    fn bounded_bytes(&self) -> Option<u64> {
        None
    }
}

/// Makes an [`Operator`] for each subtask.
pub trait OperatorFactory: Send + Sync {
    /// A short description for `explain`.
    fn describe(&self) -> String;
    /// The operator of subtask `ctx.subtask`.
    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Operator>>;
    /// Whether its operators read the rows of a batch of input `input`
    /// shared between subtasks in place ([`Operator::process_rows`] without
    /// copying them all): a hash exchange into that input then sends each
    /// subtask the batch and its rows' positions. Into the others (the
    /// default) the exchange copies each subtask's rows out itself, while
    /// the batch it just made is still in its core's cache.
    fn reads_shared_rows(&self, _input: usize) -> bool {
        false
    }
}

/// Makes a [`Sink`] for each subtask.
#[async_trait]
pub trait SinkFactory: Send + Sync {
    /// A short description for `explain`.
    fn describe(&self) -> String;
    /// The sink of subtask `ctx.subtask`.
    fn create(&self, ctx: &TaskContext) -> Result<Box<dyn Sink>>;
    /// Before a run with checkpoints starts: finishes what earlier runs of
    /// this job staged for checkpoints up to `committed` (the checkpoint the
    /// run resumes from) and discards what they staged after it, at any
    /// parallelism. Called once per sink, before any subtask writes.
    async fn recover(&self, _committed: Option<u64>) -> Result<()> {
        Ok(())
    }
}
