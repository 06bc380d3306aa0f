//! Starts every subtask of a job graph on the current tokio runtime, wires the
//! bounded channels between them, and waits for the job to end or fail.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use flumen_state::MAX_KEY_GROUPS;
use flumen_types::{DEFAULT_MAX_PARALLELISM, FlumenError, Result};
use tokio::sync::mpsc::{Receiver, Sender, UnboundedSender, channel, unbounded_channel};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::checkpoint::{
    CheckpointOptions, CheckpointStats, Coordinator, NodeMeta, Request, TaskAck, TaskLink,
    check_state_has_homes,
};
use crate::exchange::{Envelope, Exchange};
use crate::graph::{JobGraph, NodeId, NodeKind, Partitioning};
use crate::input::InputGate;
use crate::metrics::JobMetrics;
use crate::operator::{SinkFactory, TaskContext};
use crate::task::{Head, SourceHead, Tail, Task, TaskCheckpoint};

/// How a job runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Batches each channel between two subtasks holds before its sender waits.
    pub channel_capacity: usize,
    /// Number of key groups for hash exchanges.
    pub max_parallelism: usize,
    /// Checkpoints: where, how often, and what to resume from. `None`: off.
    pub checkpoints: Option<CheckpointOptions>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            channel_capacity: 4,
            max_parallelism: DEFAULT_MAX_PARALLELISM,
            checkpoints: None,
        }
    }
}

/// A running job: its counters, a way to stop it, and its outcome.
pub struct JobHandle {
    metrics: Arc<JobMetrics>,
    stop: Arc<AtomicBool>,
    tasks: JoinSet<Result<()>>,
    checkpoint_stats: Arc<CheckpointStats>,
    requests: Option<UnboundedSender<Request>>,
    notes: Vec<String>,
}

/// Asks a running job to stop with a savepoint.
#[derive(Clone)]
pub struct SavepointRequester {
    requests: Option<UnboundedSender<Request>>,
}

impl SavepointRequester {
    /// Takes a savepoint and stops every task at it, without draining (open
    /// windows stay in the savepoint). Returns false when checkpoints are
    /// off or the job has ended.
    pub fn stop_with_savepoint(&self) -> bool {
        self.requests
            .as_ref()
            .is_some_and(|r| r.send(Request::StopWithSavepoint).is_ok())
    }
}

/// What the job's checkpointing needs while its tasks are built.
struct Wiring {
    options: CheckpointOptions,
    ids: Vec<String>,
    restore: Option<Arc<crate::checkpoint::Restore>>,
    acks: UnboundedSender<TaskAck>,
    go: watch::Receiver<bool>,
    links: Vec<TaskLink>,
    first: u64,
}

/// Every subtask must own at least one key group, and key groups fit a `u16`.
fn check_parallelism(graph: &JobGraph, max_parallelism: usize) -> Result<()> {
    if max_parallelism == 0 || max_parallelism > MAX_KEY_GROUPS {
        return Err(FlumenError::plan(format!(
            "max parallelism must be between 1 and {MAX_KEY_GROUPS}, not {max_parallelism}"
        )));
    }
    match graph.nodes.iter().map(|n| n.parallelism).max() {
        Some(p) if p > max_parallelism => Err(FlumenError::plan(format!(
            "parallelism {p} exceeds the max parallelism {max_parallelism} (the number of key groups)"
        ))),
        _ => Ok(()),
    }
}

/// Starts `graph` on the current tokio runtime.
pub fn run_job(graph: &JobGraph, options: &RunOptions) -> Result<JobHandle> {
    graph.validate()?;
    check_parallelism(graph, options.max_parallelism)?;
    let metrics = Arc::new(JobMetrics::default());
    metrics.start();
    let stop = Arc::new(AtomicBool::new(false));
    let chains = graph.chains();
    let ids = graph.operator_ids();
    let mut notes = Vec::new();
    let (go_tx, go_rx) = watch::channel(false);
    let (ack_tx, ack_rx) = unbounded_channel();
    let restoring = Arc::new(std::sync::atomic::AtomicUsize::new(
        chains
            .iter()
            .map(|c| graph.nodes[c.nodes[0]].parallelism)
            .sum(),
    ));
    let mut wiring = match &options.checkpoints {
        Some(cp) => {
            if let Some(restore) = &cp.restore {
                let m = &restore.manifest;
                notes = check_state_has_homes(m, &ids, cp.allow_unmatched_state)?;
                if m.max_parallelism != options.max_parallelism {
                    return Err(FlumenError::state(format!(
                        "checkpoint {} was taken with {} key groups, the job has {}",
                        m.id, m.max_parallelism, options.max_parallelism
                    )));
                }
            }
            let first = cp
                .first_id
                .max(cp.restore.as_ref().map_or(1, |r| r.manifest.id + 1));
            let mut cp = cp.clone();
            cp.first_id = first;
            Some(Wiring {
                options: cp.clone(),
                ids: ids.clone(),
                restore: cp.restore.clone().map(Arc::new),
                acks: ack_tx,
                go: go_rx,
                links: Vec::new(),
                first,
            })
        }
        None => None,
    };

    // Channels for every edge that crosses a task boundary, keyed by
    // (edge index, upstream subtask, downstream subtask).
    let chained: Vec<bool> = graph
        .edges
        .iter()
        .map(|e| {
            chains
                .iter()
                .any(|c| c.nodes.windows(2).any(|w| w[0] == e.from && w[1] == e.to))
        })
        .collect();
    let mut senders: HashMap<(usize, usize, usize), Sender<Envelope>> = HashMap::new();
    let mut receivers: HashMap<(usize, usize, usize), Receiver<Envelope>> = HashMap::new();
    for (ei, e) in graph.edges.iter().enumerate() {
        if chained[ei] {
            continue;
        }
        let (p_from, p_to) = (
            graph.nodes[e.from].parallelism,
            graph.nodes[e.to].parallelism,
        );
        for i in 0..p_from {
            for j in 0..p_to {
                if e.partitioning == Partitioning::Forward && i != j {
                    continue;
                }
                let (tx, rx) = channel(options.channel_capacity.max(1));
                senders.insert((ei, i, j), tx);
                receivers.insert((ei, i, j), rx);
            }
        }
    }

    let mut tasks = JoinSet::new();
    for chain in &chains {
        let head = chain.nodes[0];
        let parallelism = graph.nodes[head].parallelism;
        for subtask in 0..parallelism {
            let mut ctx = TaskContext::new(
                subtask,
                parallelism,
                options.max_parallelism,
                metrics.clone(),
            );
            ctx.first_checkpoint = wiring.as_ref().map(|w| w.first);
            let mut task = build_task(
                graph,
                &chain.nodes,
                &ctx,
                options,
                stop.clone(),
                &mut senders,
                &mut receivers,
            )?;
            if let Some(w) = &mut wiring {
                let mut cp = wire_task(graph, &chain.nodes, &ctx, &task, w);
                cp.restoring = restoring.clone();
                task.checkpoint = Some(cp);
            }
            let origin = graph.nodes[head].origin.clone();
            tasks.spawn(async move {
                task.run().await.map_err(|e| match &origin {
                    Some(o) => e.within(o),
                    None => e,
                })
            });
        }
    }
    let checkpoint_stats = Arc::new(CheckpointStats::default());
    let mut requests = None;
    if let Some(w) = wiring {
        let (request_tx, request_rx) = unbounded_channel();
        requests = Some(request_tx);
        let sinks: Vec<Arc<dyn SinkFactory>> = graph
            .nodes
            .iter()
            .filter_map(|n| match &n.kind {
                NodeKind::Sink(f) => Some(f.clone()),
                _ => None,
            })
            .collect();
        let coordinator = Coordinator {
            options: w.options,
            tasks: w.links,
            acks: ack_rx,
            requests: request_rx,
            nodes: graph
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| NodeMeta {
                    id: w.ids[i].clone(),
                    name: graph.describe_node(i),
                    parallelism: n.parallelism,
                })
                .collect(),
            sinks,
            fingerprint: graph.fingerprint(),
            max_parallelism: options.max_parallelism,
            stats: checkpoint_stats.clone(),
            go: go_tx,
        };
        tasks.spawn(coordinator.run());
    }
    Ok(JobHandle {
        metrics,
        stop,
        tasks,
        checkpoint_stats,
        requests,
        notes,
    })
}

/// Connects a task to the checkpoint coordinator.
fn wire_task(
    graph: &JobGraph,
    nodes: &[NodeId],
    ctx: &TaskContext,
    task: &Task,
    w: &mut Wiring,
) -> TaskCheckpoint {
    let (control_tx, control_rx) = unbounded_channel();
    let is_source = matches!(task.head, Head::Source(_));
    w.links.push(TaskLink {
        control: control_tx,
        is_source,
    });
    let mut source_node = None;
    let mut operator_nodes = Vec::new();
    let mut sink_node = None;
    for &n in nodes {
        match &graph.nodes[n].kind {
            NodeKind::Source(_) => source_node = Some((n, w.ids[n].clone())),
            NodeKind::Operator(_) => {
                operator_nodes.push((n, w.ids[n].clone(), graph.describe_node(n)))
            }
            NodeKind::Sink(_) => sink_node = Some((n, w.ids[n].clone())),
        }
    }
    TaskCheckpoint {
        index: w.links.len() - 1,
        subtask: ctx.subtask,
        control: control_rx,
        acks: w.acks.clone(),
        store: w.options.store.clone(),
        source_node,
        operator_nodes,
        sink_node,
        range: ctx.key_groups.range,
        restore: w.restore.clone(),
        go: w.go.clone(),
        epoch: w.first,
        last_upload: None,
        restoring: Arc::default(),
    }
}

fn build_task(
    graph: &JobGraph,
    nodes: &[NodeId],
    ctx: &TaskContext,
    options: &RunOptions,
    stop: Arc<AtomicBool>,
    senders: &mut HashMap<(usize, usize, usize), Sender<Envelope>>,
    receivers: &mut HashMap<(usize, usize, usize), Receiver<Envelope>>,
) -> Result<Task> {
    let head_id = nodes[0];
    let last_id = *nodes.last().expect("chains are never empty");
    let mut operators = Vec::new();
    let mut head = None;
    let mut sink = None;
    for &n in nodes {
        match &graph.nodes[n].kind {
            NodeKind::Source(f) => {
                let node = &graph.nodes[n];
                let (source, generator) = match &node.watermarks {
                    Some(w) => match f.create_with_watermarks(ctx, w)? {
                        Some(source) => (source, None),
                        None => (f.create(ctx)?, Some(w.create())),
                    },
                    None => (f.create(ctx)?, None),
                };
                head = Some(Head::Source(SourceHead {
                    source,
                    generator,
                    event_time: node.watermarks.is_some(),
                    idle_timeout: node.idle_timeout,
                    waiting: None,
                }));
            }
            NodeKind::Operator(f) => operators.push(f.create(ctx)?),
            NodeKind::Sink(f) => sink = Some(f.create(ctx)?),
        }
    }
    let head = match head {
        Some(h) => h,
        None => {
            let mut rxs = Vec::new();
            let inputs = graph
                .edges
                .iter()
                .enumerate()
                .filter(|(_, e)| e.to == head_id);
            for (input, (ei, e)) in inputs.enumerate() {
                for i in 0..graph.nodes[e.from].parallelism {
                    if let Some(rx) = receivers.remove(&(ei, i, ctx.subtask)) {
                        rxs.push((input, rx));
                    }
                }
            }
            let first = operators.first().and_then(|o| o.first_input());
            Head::Inputs(InputGate::new(rxs).reading_first(first))
        }
    };
    let tail = match sink {
        Some(s) => Tail::Sink(s),
        None => {
            let mut exchanges = Vec::new();
            for (ei, e) in graph.edges.iter().enumerate() {
                if e.from != last_id {
                    continue;
                }
                let p_to = graph.nodes[e.to].parallelism;
                let txs: Vec<Sender<Envelope>> = (0..p_to)
                    .filter_map(|j| senders.remove(&(ei, ctx.subtask, j)))
                    .collect();
                // The edge's input index at its node: the order in which
                // the node's input edges were connected.
                let input = graph.edges[..ei].iter().filter(|x| x.to == e.to).count();
                let shares = matches!(&graph.nodes[e.to].kind,
                    NodeKind::Operator(f) if f.reads_shared_rows(input));
                exchanges.push(Exchange::new(
                    &e.partitioning,
                    txs,
                    ctx.subtask,
                    options.max_parallelism,
                    shares,
                ));
            }
            Tail::Exchanges(exchanges)
        }
    };
    let timer = match &head {
        Head::Inputs(_) => operators
            .iter()
            .filter_map(|o| o.timer_interval())
            .min()
            .map(|every| {
                let mut t = tokio::time::interval(every);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            }),
        Head::Source(_) => None,
    };
    let sink_watermark = matches!(tail, Tail::Sink(_)).then(|| ctx.metrics.watermark_slot());
    Ok(Task {
        head,
        operators,
        tail,
        sink_watermark,
        metrics: ctx.metrics.clone(),
        stop,
        timer,
        checkpoint: None,
    })
}

impl JobHandle {
    /// The job's live counters.
    pub fn metrics(&self) -> Arc<JobMetrics> {
        self.metrics.clone()
    }

    /// A flag that, once set, makes every source end its input, so the job
    /// drains and finishes cleanly.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Asks the sources to stop; the job then drains and finishes.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// A way to stop the job with a savepoint, usable after the handle is
    /// moved into [`JobHandle::wait`].
    pub fn savepoint_requester(&self) -> SavepointRequester {
        SavepointRequester {
            requests: self.requests.clone(),
        }
    }

    /// What the job's checkpoints have done so far.
    pub fn checkpoint_stats(&self) -> Arc<CheckpointStats> {
        self.checkpoint_stats.clone()
    }

    /// Notes from starting the job (state dropped with
    /// `allow_unmatched_state`).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Waits for the job. The first failing task stops every other task and
    /// its error is returned.
    pub async fn wait(mut self) -> Result<()> {
        let mut first_error: Option<FlumenError> = None;
        while let Some(joined) = self.tasks.join_next().await {
            let outcome = match joined {
                Ok(r) => r,
                Err(e) if e.is_cancelled() => continue,
                Err(e) => Err(FlumenError::execution(format!("a task panicked: {e}"))),
            };
            if let Err(e) = outcome {
                self.tasks.abort_all();
                let keep = match &first_error {
                    None => true,
                    Some(FlumenError::Cancelled) => !matches!(e, FlumenError::Cancelled),
                    Some(_) => false,
                };
                if keep {
                    first_error = Some(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
