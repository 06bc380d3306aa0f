//! The dataflow runtime: a [`JobGraph`] of sources, operators and sinks is cut
//! into tasks (chains of operators joined by forward edges), tasks are joined by
//! bounded exchanges, and [`run_job`] runs them on a tokio runtime until every
//! source has ended, a task fails, or the job is stopped.

#![warn(missing_docs)]

mod checkpoint;
mod exchange;
mod graph;
mod input;
mod job;
mod latency;
mod lookup;
mod metrics;
mod operator;
mod task;

pub use checkpoint::{CheckpointOptions, CheckpointStats, Restore};
pub use graph::{JobGraph, Node, NodeId, NodeKind, Partitioning};
pub use job::{JobHandle, RunOptions, SavepointRequester, run_job};
pub use latency::{LatencyRecorder, LatencySummary, Origin, Percentiles};
pub use lookup::{Lookup, LookupCache, LookupFactory, wait_for};
pub use metrics::{JobMetrics, KeptGauge, KeptRowsReport, StateGauge};
pub use operator::{
    Admission, Operator, OperatorFactory, Sink, SinkFactory, Source, SourceFactory, TaskContext,
    WatermarkGenerator, WatermarkStrategy,
};
