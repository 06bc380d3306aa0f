//! The job graph: nodes with a parallelism each, joined by partitioned edges,
//! and how it is cut into tasks of chained nodes.

use std::fmt::Write;
use std::hash::Hasher;
use std::sync::Arc;

use flumen_types::{FlumenError, Result};

use crate::operator::{OperatorFactory, SinkFactory, SourceFactory, WatermarkStrategy};

/// Index of a node in its [`JobGraph`].
pub type NodeId = usize;

/// How rows travel along an edge from the subtasks of one node to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitioning {
    /// Subtask `i` feeds subtask `i`; needs equal parallelism. Chained when possible.
    Forward,
    /// Rows go to the subtask owning the key group of the hash of these columns.
    Hash(Vec<usize>),
    /// Whole batches go round-robin to the downstream subtasks.
    Rebalance,
    /// Every batch goes to every downstream subtask.
    Broadcast,
}

impl std::fmt::Display for Partitioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Partitioning::Forward => write!(f, "forward"),
            Partitioning::Hash(cols) => write!(f, "hash{cols:?}"),
            Partitioning::Rebalance => write!(f, "rebalance"),
            Partitioning::Broadcast => write!(f, "broadcast"),
        }
    }
}

/// What a node does.
#[derive(Clone)]
pub enum NodeKind {
    /// Reads input.
    Source(Arc<dyn SourceFactory>),
    /// Transforms batches.
    Operator(Arc<dyn OperatorFactory>),
    /// Writes output.
    Sink(Arc<dyn SinkFactory>),
}

impl NodeKind {
    fn describe(&self) -> String {
        match self {
            NodeKind::Source(f) => f.describe(),
            NodeKind::Operator(f) => f.describe(),
            NodeKind::Sink(f) => f.describe(),
        }
    }
}

/// One logical step of a job, run as `parallelism` subtasks.
#[derive(Clone)]
pub struct Node {
    /// What the node does.
    pub kind: NodeKind,
    /// Number of parallel subtasks.
    pub parallelism: usize,
    /// For a source with event time: how its subtasks derive watermarks.
    pub watermarks: Option<Arc<dyn WatermarkStrategy>>,
    /// For a source: after this long without a row, a subtask is marked idle
    /// and stops holding back the watermark downstream.
    pub idle_timeout: Option<std::time::Duration>,
    /// The statement the node was planned from (`file:line:column INSERT
    /// INTO t`), which a failing task's error names.
    pub origin: Option<Arc<str>>,
}

/// An edge from one node to another.
#[derive(Debug, Clone)]
pub(crate) struct Edge {
    pub from: NodeId,
    pub to: NodeId,
    pub partitioning: Partitioning,
}

/// A dataflow of sources, operators and sinks.
#[derive(Clone, Default)]
pub struct JobGraph {
    pub(crate) nodes: Vec<Node>,
    pub(crate) edges: Vec<Edge>,
}

/// A chain of nodes that runs as one task per subtask.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    pub nodes: Vec<NodeId>,
}

impl JobGraph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node and returns its id.
    pub fn add_node(&mut self, kind: NodeKind, parallelism: usize) -> NodeId {
        self.nodes.push(Node {
            kind,
            parallelism: parallelism.max(1),
            watermarks: None,
            idle_timeout: None,
            origin: None,
        });
        self.nodes.len() - 1
    }

    /// Names `origin` as the statement of every node from `first` on that
    /// has none yet: the nodes one query added.
    pub fn set_origin(&mut self, first: NodeId, origin: &str) {
        let origin: Arc<str> = origin.into();
        for node in self.nodes.iter_mut().skip(first) {
            node.origin.get_or_insert_with(|| origin.clone());
        }
    }

    /// Connects `from` to `to`.
    pub fn connect(&mut self, from: NodeId, to: NodeId, partitioning: Partitioning) {
        self.edges.push(Edge {
            from,
            to,
            partitioning,
        });
    }

    /// Makes source `node` emit watermarks derived by `strategy` after each batch.
    pub fn set_watermarks(&mut self, node: NodeId, strategy: Arc<dyn WatermarkStrategy>) {
        self.nodes[node].watermarks = Some(strategy);
    }

    /// Makes source `node` mark a subtask idle after `timeout` without rows.
    pub fn set_idle_timeout(&mut self, node: NodeId, timeout: std::time::Duration) {
        self.nodes[node].idle_timeout = Some(timeout);
    }

    /// The nodes, indexed by [`NodeId`].
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub(crate) fn inputs(&self, node: NodeId) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.to == node)
    }

    pub(crate) fn outputs(&self, node: NodeId) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.from == node)
    }

    /// A stable id per node: a hash of what the node does and of its
    /// inputs' ids, so planning the same SQL again gives the same ids (and a
    /// checkpoint's state finds its operator) whatever the parallelism.
    pub fn operator_ids(&self) -> Vec<String> {
        let mut ids: Vec<Option<String>> = vec![None; self.nodes.len()];
        let mut seen = std::collections::HashMap::new();
        for node in 0..self.nodes.len() {
            self.operator_id(node, &mut ids, &mut seen);
        }
        ids.into_iter()
            .map(|id| id.expect("every node got an id"))
            .collect()
    }

    fn operator_id(
        &self,
        node: NodeId,
        ids: &mut Vec<Option<String>>,
        seen: &mut std::collections::HashMap<u64, usize>,
    ) -> String {
        if let Some(id) = &ids[node] {
            return id.clone();
        }
        let mut h = twox_hash::XxHash64::with_seed(0);
        let kind = match &self.nodes[node].kind {
            NodeKind::Source(_) => "source",
            NodeKind::Operator(_) => "operator",
            NodeKind::Sink(_) => "sink",
        };
        h.write(kind.as_bytes());
        h.write(self.nodes[node].kind.describe().as_bytes());
        let inputs: Vec<NodeId> = self.inputs(node).map(|e| e.from).collect();
        for input in inputs {
            h.write(self.operator_id(input, ids, seen).as_bytes());
        }
        let hash = h.finish();
        // Two identical nodes (the same query twice) are told apart by order.
        let n = seen.entry(hash).or_insert(0);
        *n += 1;
        let id = if *n == 1 {
            format!("{kind}-{hash:016x}")
        } else {
            format!("{kind}-{hash:016x}-{n}")
        };
        ids[node] = Some(id.clone());
        id
    }

    /// A hash of the whole graph's operators and edges: equal for the same
    /// job planned again, at any parallelism.
    pub fn fingerprint(&self) -> String {
        let ids = self.operator_ids();
        let mut h = twox_hash::XxHash64::with_seed(0);
        for id in &ids {
            h.write(id.as_bytes());
        }
        for e in &self.edges {
            h.write(ids[e.from].as_bytes());
            h.write(ids[e.to].as_bytes());
        }
        format!("{:016x}", h.finish())
    }

    /// What node `node` does, for messages.
    pub fn describe_node(&self, node: NodeId) -> String {
        self.nodes[node].kind.describe()
    }

    /// Checks that the graph can run: sources have no inputs, sinks no outputs,
    /// forward edges join equal parallelisms, and every node is connected.
    pub fn validate(&self) -> Result<()> {
        for e in &self.edges {
            if e.from >= self.nodes.len() || e.to >= self.nodes.len() {
                return Err(FlumenError::plan(format!(
                    "edge {} -> {} names a missing node",
                    e.from, e.to
                )));
            }
            let (p_from, p_to) = (self.nodes[e.from].parallelism, self.nodes[e.to].parallelism);
            if e.partitioning == Partitioning::Forward && p_from != p_to {
                return Err(FlumenError::plan(format!(
                    "forward edge {} -> {} joins parallelism {p_from} to {p_to}",
                    e.from, e.to
                )));
            }
        }
        for (id, node) in self.nodes.iter().enumerate() {
            let ins = self.inputs(id).count();
            let outs = self.outputs(id).count();
            let ok = match node.kind {
                NodeKind::Source(_) => ins == 0 && outs > 0,
                NodeKind::Operator(_) => ins > 0 && outs > 0,
                NodeKind::Sink(_) => ins > 0 && outs == 0,
            };
            if !ok {
                return Err(FlumenError::plan(format!(
                    "node {id} ({}) has {ins} inputs and {outs} outputs",
                    node.kind.describe()
                )));
            }
        }
        Ok(())
    }

    /// Cuts the graph into chains: a node joins its upstream's chain when its
    /// only input is a forward edge from a node whose only output it is.
    pub(crate) fn chains(&self) -> Vec<Chain> {
        let chained_to_upstream = |id: NodeId| -> Option<NodeId> {
            let mut ins = self.inputs(id);
            let edge = ins.next()?;
            if ins.next().is_some() || edge.partitioning != Partitioning::Forward {
                return None;
            }
            (self.outputs(edge.from).count() == 1).then_some(edge.from)
        };
        let mut chains = Vec::new();
        for head in 0..self.nodes.len() {
            if chained_to_upstream(head).is_some() {
                continue;
            }
            let mut nodes = vec![head];
            loop {
                let last = *nodes.last().expect("a chain starts with its head");
                let mut outs = self.outputs(last);
                let next = match (outs.next(), outs.next()) {
                    (Some(e), None) if chained_to_upstream(e.to) == Some(last) => e.to,
                    _ => break,
                };
                nodes.push(next);
            }
            chains.push(Chain { nodes });
        }
        chains
    }

    /// A readable description of the tasks (chained nodes) with each node's
    /// stable id, their parallelism and the exchanges between them.
    pub fn describe(&self) -> String {
        let chains = self.chains();
        let ids = self.operator_ids();
        let task_of = |node: NodeId| {
            chains
                .iter()
                .position(|c| c.nodes.contains(&node))
                .expect("every node belongs to a chain")
        };
        let mut out = String::new();
        for (t, chain) in chains.iter().enumerate() {
            let head = chain.nodes[0];
            let _ = writeln!(
                out,
                "Task {t} (parallelism {}):",
                self.nodes[head].parallelism
            );
            for e in self.inputs(head) {
                let _ = writeln!(
                    out,
                    "  <- {} exchange from Task {}",
                    e.partitioning,
                    task_of(e.from)
                );
            }
            for (i, &n) in chain.nodes.iter().enumerate() {
                let link = if i == 0 { "  " } else { "  -> " };
                let _ = writeln!(out, "{link}[{n}] {}", self.nodes[n].kind.describe());
                let _ = writeln!(out, "       id: {}", ids[n]);
                if let Some(w) = &self.nodes[n].watermarks {
                    let _ = writeln!(out, "       watermarks: {}", w.describe());
                    if let Some(t) = self.nodes[n].idle_timeout {
                        let _ =
                            writeln!(out, "       idle after {} ms without rows", t.as_millis());
                    }
                }
            }
        }
        out
    }
}
