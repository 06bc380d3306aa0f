//! Checkpoint coordination by messages only: the coordinator injects
//! barrier `n` at every source task, every task acknowledges `n` with the
//! handles of the state it uploaded, and once all have, the coordinator
//! writes the manifest and tells every task to commit `n`. Nothing here
//! assumes one process: a cluster can carry the same messages over RPC.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flumen_state::checkpoint::{
    CheckpointKind, CheckpointStore, MANIFEST_FORMAT, Manifest, OperatorState, SplitPosition,
    StateFile,
};
use flumen_types::{Barrier, FlumenError, Result};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::watch;

use crate::graph::NodeId;
use crate::operator::SinkFactory;

/// How a job takes checkpoints and what it resumes from.
#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    /// Where checkpoints are written.
    pub store: CheckpointStore,
    /// Time between the start of one checkpoint and the next.
    pub interval: Duration,
    /// Least time between the end of one checkpoint and the start of the
    /// next (Flink's `min-pause`): when checkpoints take longer than the
    /// interval, processing still gets this much time to itself between
    /// them instead of the next starting at once.
    pub min_pause: Duration,
    /// Complete checkpoints kept (savepoints are never deleted).
    pub retention: usize,
    /// Names the job's output apart from other jobs'; kept across restarts.
    pub job_id: String,
    /// The id of the first checkpoint this run takes: past every id in the
    /// directory, so no directory is written twice.
    pub first_id: u64,
    /// The checkpoint or savepoint to resume from.
    pub restore: Option<Restore>,
    /// Drop the state of operators that the job no longer has, instead of
    /// refusing to start.
    pub allow_unmatched_state: bool,
}

/// A complete checkpoint or savepoint to resume from, and the store it is in.
#[derive(Debug, Clone)]
pub struct Restore {
    /// Where its files are (a savepoint may live apart from the checkpoints).
    pub store: CheckpointStore,
    /// Its manifest.
    pub manifest: Manifest,
}

/// What the checkpoints of a running job have done, for progress and the summary.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    completed: AtomicU64,
    last_id: AtomicU64,
    last_bytes: AtomicU64,
    max_bytes: AtomicU64,
    last_duration_ms: AtomicU64,
    max_duration_ms: AtomicU64,
    max_pause_us: AtomicU64,
    failed: AtomicU64,
    savepoint: Mutex<Option<String>>,
    /// What went wrong without stopping the job, not yet reported.
    warnings: Mutex<Vec<String>>,
}

impl CheckpointStats {
    /// Checkpoints completed by this run.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }
    /// Id of the newest complete checkpoint (0: none yet).
    pub fn last_id(&self) -> u64 {
        self.last_id.load(Ordering::Relaxed)
    }
    /// Bytes of state in the newest complete checkpoint.
    pub fn last_bytes(&self) -> u64 {
        self.last_bytes.load(Ordering::Relaxed)
    }
    /// Bytes of state in the largest checkpoint of this run.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes.load(Ordering::Relaxed)
    }
    /// Milliseconds from injecting the newest complete checkpoint's barriers
    /// to writing its manifest.
    pub fn last_duration_ms(&self) -> u64 {
        self.last_duration_ms.load(Ordering::Relaxed)
    }
    /// The longest such duration of this run.
    pub fn max_duration_ms(&self) -> u64 {
        self.max_duration_ms.load(Ordering::Relaxed)
    }
    /// The longest time any task stopped processing to take a snapshot, in
    /// microseconds (the upload runs while processing goes on).
    pub fn max_pause_us(&self) -> u64 {
        self.max_pause_us.load(Ordering::Relaxed)
    }
    /// Checkpoints that failed (a task could not store its state).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    /// What went wrong without stopping the job (a checkpoint that failed,
    /// old checkpoints that could not be deleted) since the last call.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn warn(&self, warning: String) {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(warning);
    }

    /// The directory of the savepoint the job stopped with, if it did.
    pub fn savepoint(&self) -> Option<String> {
        self.savepoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What the coordinator tells a task.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Control {
    /// Take checkpoint `barrier.id` now (source tasks only).
    Barrier(Barrier),
    /// Checkpoint `n` is complete: sinks make visible what they staged up to it.
    Commit(u64),
}

/// What one node of a task stored for a checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct NodeState {
    pub node: NodeId,
    pub subtask: usize,
    pub files: Vec<StateFile>,
    pub positions: Vec<SplitPosition>,
    pub staged: Vec<String>,
}

/// A task's acknowledgement: its state for checkpoint `checkpoint`, or, with
/// `None`, its final state after its input ended (which stands for it in
/// every later checkpoint).
pub(crate) struct TaskAck {
    pub task: usize,
    pub checkpoint: Option<u64>,
    pub state: Result<Vec<NodeState>>,
    /// How long the task stopped processing to take its snapshot.
    pub pause: Duration,
}

/// What the job asks of the coordinator.
#[derive(Debug)]
pub(crate) enum Request {
    /// Take a savepoint and stop the job without draining it.
    StopWithSavepoint,
}

/// The coordinator's view of one task.
pub(crate) struct TaskLink {
    pub control: UnboundedSender<Control>,
    pub is_source: bool,
}

/// The coordinator's view of one node.
pub(crate) struct NodeMeta {
    pub id: String,
    pub name: String,
    pub parallelism: usize,
}

struct Pending {
    id: u64,
    stop: bool,
    started: Instant,
    acks: Vec<Option<Vec<NodeState>>>,
}

pub(crate) struct Coordinator {
    pub options: CheckpointOptions,
    pub tasks: Vec<TaskLink>,
    pub acks: UnboundedReceiver<TaskAck>,
    pub requests: UnboundedReceiver<Request>,
    pub nodes: Vec<NodeMeta>,
    pub sinks: Vec<Arc<dyn SinkFactory>>,
    pub fingerprint: String,
    pub max_parallelism: usize,
    pub stats: Arc<CheckpointStats>,
    /// Set once sinks have settled what earlier runs staged: tasks start then.
    pub go: watch::Sender<bool>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Coordinator {
    /// When the checkpoint after one started at `started` and ending now
    /// may start: an interval after its start and the minimum pause after
    /// its end.
    fn next_start(&self, started: Instant) -> tokio::time::Instant {
        let interval = self.options.interval.max(Duration::from_millis(1));
        let after_start = tokio::time::Instant::from_std(started + interval);
        after_start.max(tokio::time::Instant::now() + self.options.min_pause)
    }

    pub(crate) async fn run(mut self) -> Result<()> {
        let committed = self.options.restore.as_ref().map(|r| r.manifest.id);
        for sink in &self.sinks {
            sink.recover(committed).await?;
        }
        // No task is waiting only if the job failed already.
        let _ = self.go.send(true);
        let mut next_id = self.options.first_id;
        let mut pending: Option<Pending> = None;
        let mut finished: Vec<Option<Vec<NodeState>>> = vec![None; self.tasks.len()];
        let mut stop_wanted = false;
        let mut requests_open = true;
        let interval = self.options.interval.max(Duration::from_millis(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if pending.is_none() && stop_wanted {
                pending = Some(self.inject(next_id, true, &finished));
                next_id += 1;
            }
            tokio::select! {
                _ = tick.tick(), if pending.is_none() && !stop_wanted => {
                    pending = Some(self.inject(next_id, false, &finished));
                    next_id += 1;
                }
                request = self.requests.recv(), if requests_open && !stop_wanted => match request {
                    Some(Request::StopWithSavepoint) => stop_wanted = true,
                    None => requests_open = false,
                },
                ack = self.acks.recv() => {
                    let Some(ack) = ack else { return Ok(()) };
                    self.stats
                        .max_pause_us
                        .fetch_max(ack.pause.as_micros() as u64, Ordering::Relaxed);
                    let state = match ack.state {
                        Ok(state) => state,
                        Err(e) => match ack.checkpoint {
                            // A periodic checkpoint is given up (once, however
                            // many tasks fail it); the next one tries again.
                            Some(n) if !pending.as_ref().is_some_and(|p| p.id == n && p.stop) => {
                                if let Some(p) = pending.take_if(|p| p.id == n) {
                                    tick.reset_at(self.next_start(p.started));
                                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                                    self.stats.warn(format!("checkpoint {n} failed: {e}"));
                                }
                                continue;
                            }
                            // The savepoint the job stops at, or a task's
                            // final state: the job fails (and may restart).
                            _ => return Err(e),
                        },
                    };
                    match ack.checkpoint {
                        Some(n) => {
                            if let Some(p) = pending.as_mut().filter(|p| p.id == n) {
                                p.acks[ack.task] = Some(state);
                            }
                        }
                        None => {
                            if let Some(p) = pending.as_mut()
                                && p.acks[ack.task].is_none()
                            {
                                p.acks[ack.task] = Some(state.clone());
                            }
                            finished[ack.task] = Some(state);
                        }
                    }
                    // Once every task has ended, a last checkpoint of their
                    // final states holds the job's end, and sinks commit what
                    // they staged last. The pending one cannot stand for it:
                    // a task that took its barrier and then ended staged more
                    // after it, and waits for a later commit.
                    let all_ended = finished.iter().all(Option::is_some);
                    if let Some(p) = pending.take_if(|p| p.acks.iter().all(Option::is_some)) {
                        let stop = p.stop;
                        let started = p.started;
                        // A task that takes a stop barrier stops there
                        // without ending, so a savepoint of tasks that all
                        // ended holds only final states: the job's end.
                        self.complete(p, stop && all_ended).await?;
                        if stop {
                            return Ok(());
                        }
                        tick.reset_at(self.next_start(started));
                    }
                    if all_ended {
                        let last = Pending {
                            id: next_id,
                            stop: false,
                            started: Instant::now(),
                            acks: finished,
                        };
                        self.complete(last, true).await?;
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Sends barrier `id` to every source task still running; a task that
    /// has ended stands in with its final state.
    fn inject(&self, id: u64, stop: bool, finished: &[Option<Vec<NodeState>>]) -> Pending {
        let barrier = if stop {
            Barrier::stop_with_savepoint(id)
        } else {
            Barrier::checkpoint(id)
        };
        let acks = finished.to_vec();
        for (i, task) in self.tasks.iter().enumerate() {
            if task.is_source && acks[i].is_none() {
                // A task that ended meanwhile sends its final state instead.
                let _ = task.control.send(Control::Barrier(barrier));
            }
        }
        Pending {
            id,
            stop,
            started: Instant::now(),
            acks,
        }
    }

    fn manifest(&self, p: &Pending, kind: CheckpointKind, finished: bool) -> Manifest {
        let mut operators: Vec<OperatorState> = self
            .nodes
            .iter()
            .map(|n| OperatorState {
                id: n.id.clone(),
                name: n.name.clone(),
                parallelism: n.parallelism,
                ..Default::default()
            })
            .collect();
        for state in p.acks.iter().flatten().flatten() {
            let op = &mut operators[state.node];
            op.files.extend(state.files.iter().cloned());
            op.positions.extend(state.positions.iter().cloned());
            op.staged.extend(state.staged.iter().cloned());
        }
        for op in &mut operators {
            op.files
                .sort_by(|a, b| (a.subtask, &a.path).cmp(&(b.subtask, &b.path)));
        }
        Manifest {
            format: MANIFEST_FORMAT,
            id: p.id,
            kind,
            finished,
            time_ms: now_ms(),
            job_id: self.options.job_id.clone(),
            fingerprint: self.fingerprint.clone(),
            parallelism: self.nodes.iter().map(|n| n.parallelism).max().unwrap_or(1),
            max_parallelism: self.max_parallelism,
            operators,
        }
    }

    /// Completes checkpoint `p`; `finished`: every task has ended.
    async fn complete(&self, p: Pending, finished: bool) -> Result<()> {
        let kind = if p.stop {
            CheckpointKind::Savepoint
        } else {
            CheckpointKind::Checkpoint
        };
        let manifest = self.manifest(&p, kind, finished);
        self.publish(&p, &manifest).await
    }

    /// Writes the manifest (the checkpoint is complete from then on), tells
    /// every task to commit, and deletes checkpoints past the retention.
    async fn publish(&self, p: &Pending, manifest: &Manifest) -> Result<()> {
        self.options.store.write_manifest(manifest).await?;
        let took = p.started.elapsed().as_millis() as u64;
        let stats = &self.stats;
        stats.completed.fetch_add(1, Ordering::Relaxed);
        stats.last_id.store(manifest.id, Ordering::Relaxed);
        stats.last_bytes.store(manifest.bytes(), Ordering::Relaxed);
        stats
            .max_bytes
            .fetch_max(manifest.bytes(), Ordering::Relaxed);
        stats.last_duration_ms.store(took, Ordering::Relaxed);
        stats.max_duration_ms.fetch_max(took, Ordering::Relaxed);
        if manifest.kind == CheckpointKind::Savepoint {
            *stats.savepoint.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                "{}/{}",
                self.options.store.display().trim_end_matches('/'),
                manifest.dir()
            ));
        }
        for task in &self.tasks {
            // A task that has already returned needs no commit.
            let _ = task.control.send(Control::Commit(manifest.id));
        }
        if let Err(e) = self.options.store.retain(self.options.retention).await {
            self.stats
                .warn(format!("deleting old checkpoints failed (they stay): {e}"));
        }
        Ok(())
    }
}

/// Checks that every operator holding state in `manifest` has a home in the
/// job (an operator with the same id); returns a note per dropped operator
/// when `allow_unmatched` says to drop such state, and an error naming the
/// first otherwise.
pub(crate) fn check_state_has_homes(
    manifest: &Manifest,
    ids: &[String],
    allow_unmatched: bool,
) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    for op in &manifest.operators {
        let holds = !op.files.is_empty() || !op.positions.is_empty();
        if !holds || ids.contains(&op.id) {
            continue;
        }
        let what = format!(
            "checkpoint {} holds state of operator '{}' ({}: {} rows, {} bytes, {} source positions) that the job no longer has",
            manifest.id,
            op.name,
            op.id,
            op.rows(),
            op.bytes(),
            op.positions.len()
        );
        if !allow_unmatched {
            return Err(FlumenError::state(format!(
                "{what}: the plan changed. Restore the old SQL, start over with --fresh, or drop that state with --allow-unmatched-state"
            )));
        }
        notes.push(format!("dropping state: {what}"));
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::unbounded_channel;

    /// A coordinator of two source tasks checkpointing every millisecond
    /// into `store`: it, each task's control channel, and the senders of
    /// acknowledgements and requests.
    #[allow(clippy::type_complexity)]
    fn two_tasks(
        store: &CheckpointStore,
    ) -> (
        Coordinator,
        [UnboundedReceiver<Control>; 2],
        UnboundedSender<TaskAck>,
        UnboundedSender<Request>,
    ) {
        let (control0, commands0) = unbounded_channel();
        let (control1, commands1) = unbounded_channel();
        let (acks_tx, acks) = unbounded_channel();
        let (requests_tx, requests) = unbounded_channel();
        let (go, _) = watch::channel(false);
        let link = |control| TaskLink {
            control,
            is_source: true,
        };
        let coordinator = Coordinator {
            options: CheckpointOptions {
                store: store.clone(),
                interval: Duration::from_millis(1),
                min_pause: Duration::ZERO,
                retention: 10,
                job_id: "job".to_string(),
                first_id: 1,
                restore: None,
                allow_unmatched_state: false,
            },
            tasks: vec![link(control0), link(control1)],
            acks,
            requests,
            nodes: Vec::new(),
            sinks: Vec::new(),
            fingerprint: String::new(),
            max_parallelism: 1,
            stats: Arc::new(CheckpointStats::default()),
            go,
        };
        (coordinator, [commands0, commands1], acks_tx, requests_tx)
    }

    fn ack(task: usize, checkpoint: Option<u64>) -> TaskAck {
        TaskAck {
            task,
            checkpoint,
            state: Ok(Vec::new()),
            pause: Duration::ZERO,
        }
    }

    /// Task 0 takes barrier 1 and then ends (staging more output after the
    /// barrier); task 1 ends before barrier 1 reaches it, so its final
    /// state completes checkpoint 1. Task 0 waits for a commit past 1: the
    /// job's end must be a later checkpoint, not checkpoint 1 marked
    /// finished (which left task 0 waiting on a closed channel, and its
    /// output after barrier 1 uncommitted).
    #[tokio::test]
    async fn the_end_is_a_checkpoint_after_every_barrier_a_task_took() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
        let (coordinator, [mut commands0, _commands1], acks, _requests) = two_tasks(&store);
        let running = tokio::spawn(coordinator.run());
        let Some(Control::Barrier(b)) = commands0.recv().await else {
            panic!("barrier 1 is injected");
        };
        assert_eq!(b.id, 1);
        for a in [ack(0, Some(1)), ack(0, None), ack(1, None)] {
            acks.send(a).unwrap();
        }
        running.await.unwrap().unwrap();
        let mut commits = Vec::new();
        while let Ok(c) = commands0.try_recv() {
            if let Control::Commit(n) = c {
                commits.push(n);
            }
        }
        assert!(
            commits.iter().any(|&n| n >= 2),
            "task 0 (epoch 2) got commits {commits:?}"
        );
        let (last, _) = store.latest().await.unwrap();
        let last = last.expect("a manifest");
        assert!(last.finished && last.id >= 2, "{last:?}");
    }

    /// With a minimum pause, a checkpoint starts no sooner than that after
    /// the last one completed, however short the interval.
    #[tokio::test]
    async fn checkpoints_wait_the_minimum_pause_after_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
        let (mut coordinator, [mut commands0, _commands1], acks, _requests) = two_tasks(&store);
        let pause = Duration::from_millis(150);
        coordinator.options.min_pause = pause;
        let running = tokio::spawn(coordinator.run());
        // Bounded: a coordinator that never injects fails, not hangs.
        let checked = tokio::time::timeout(Duration::from_secs(30), async {
            let mut completed: Option<Instant> = None;
            for expected in 1..=4 {
                let b = loop {
                    match commands0.recv().await {
                        Some(Control::Barrier(b)) => break b,
                        Some(_) => {}
                        None => panic!("barrier {expected} is injected"),
                    }
                };
                assert_eq!(b.id, expected);
                if let Some(at) = completed {
                    let waited = at.elapsed();
                    assert!(
                        waited >= pause,
                        "barrier {expected} {waited:?} after the last"
                    );
                }
                acks.send(ack(0, Some(b.id))).unwrap();
                acks.send(ack(1, Some(b.id))).unwrap();
                // Completed once its commit goes out.
                loop {
                    match commands0.recv().await {
                        Some(Control::Commit(n)) if n == b.id => break,
                        Some(_) => {}
                        None => panic!("checkpoint {expected} completes"),
                    }
                }
                completed = Some(Instant::now());
            }
        })
        .await;
        running.abort();
        checked.expect("four checkpoints within 30 s");
    }

    /// Both tasks end before the stop barrier reaches them: the savepoint
    /// holds their final states and is the job's end.
    #[tokio::test]
    async fn a_savepoint_of_ended_tasks_is_the_jobs_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
        let (mut coordinator, [mut commands0, _commands1], acks, requests) = two_tasks(&store);
        coordinator.options.interval = Duration::from_secs(3600);
        let running = tokio::spawn(coordinator.run());
        requests.send(Request::StopWithSavepoint).unwrap();
        let Some(Control::Barrier(b)) = commands0.recv().await else {
            panic!("the stop barrier is injected");
        };
        assert!(b.stop);
        for a in [ack(0, None), ack(1, None)] {
            acks.send(a).unwrap();
        }
        running.await.unwrap().unwrap();
        let (last, _) = store.latest().await.unwrap();
        let last = last.expect("a manifest");
        assert_eq!(last.kind, CheckpointKind::Savepoint);
        assert!(last.finished, "{last:?}");
    }
}
