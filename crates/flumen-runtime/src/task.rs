//! One subtask of a chain: reads from its source or input gate, runs each
//! batch through its chained operators in one loop, and hands the result to
//! its sink or its outgoing exchanges.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::record_batch::RecordBatch;
use flumen_types::{Message, Result, Watermark};

use crate::exchange::Exchange;
use crate::input::{GateEvent, InputGate};
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
}

/// Where a task's output goes.
pub(crate) enum Tail {
    Sink(Box<dyn Sink>),
    Exchanges(Vec<Exchange>),
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
}

impl Task {
    pub(crate) async fn run(mut self) -> Result<()> {
        loop {
            // A chain that never waits on a channel (source to sink in one
            // task) must still give the runtime's timers, signals and other
            // tasks their turn: this yields once the task's budget is spent.
            tokio::task::consume_budget().await;
            let mut advanced = None;
            let event = match &mut self.head {
                Head::Source(head) => {
                    let next = if self.stop.load(Ordering::Relaxed) {
                        None
                    } else {
                        match head.idle_timeout {
                            Some(timeout) if head.event_time => {
                                next_or_idle(head.source.as_mut(), timeout, &mut self.tail).await?
                            }
                            _ => head.source.next().await?,
                        }
                    };
                    match next {
                        Some(Message::Batch(b)) => {
                            self.metrics.add_rows_in(b.num_rows());
                            if let Some(generator) = &mut head.generator {
                                advanced = generator.on_batch(&b)?;
                            }
                            GateEvent::Batch(0, b)
                        }
                        Some(Message::Watermark(wm)) => GateEvent::Watermark(wm),
                        Some(Message::Barrier(b)) => GateEvent::Barrier(b),
                        Some(Message::Idle) => GateEvent::Idle,
                        // At the end of its input a source with event time
                        // releases every window and timer downstream.
                        None if head.event_time => {
                            head.event_time = false;
                            head.generator = None;
                            GateEvent::Watermark(Watermark::MAX)
                        }
                        Some(Message::End) | None => GateEvent::End,
                    }
                }
                Head::Inputs(gate) => match &mut self.timer {
                    // The gate's `next` is cancel-safe: a message is only
                    // taken from a channel when it is handled.
                    Some(timer) => tokio::select! {
                        biased;
                        event = gate.next() => event?,
                        _ = timer.tick() => {
                            self.on_timer().await?;
                            continue;
                        }
                    },
                    None => gate.next().await?,
                },
            };
            match event {
                GateEvent::Batch(input, batch) => {
                    let out = self.apply_head(input, batch)?;
                    self.emit(out).await?;
                    if let Some(wm) = advanced {
                        self.on_watermark(wm).await?;
                    }
                }
                GateEvent::Watermark(wm) => self.on_watermark(wm).await?,
                GateEvent::Barrier(b) => self.emit_control(Message::Barrier(b)).await?,
                GateEvent::Idle => self.emit_control(Message::Idle).await?,
                GateEvent::InputEnded(input) => {
                    if let Some(first) = self.operators.first_mut() {
                        let mut out = Vec::new();
                        first.input_ended(input, &mut out)?;
                        let out = self.apply_operators(1, out)?;
                        self.emit(out).await?;
                    }
                }
                GateEvent::End => return self.finish().await,
            }
        }
    }

    /// Runs a batch of input `input` through the chain: the first operator
    /// is told which input it came from, the rest see one input.
    fn apply_head(&mut self, input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let Some(first) = self.operators.first_mut() else {
            return Ok(vec![batch]);
        };
        let mut out = Vec::new();
        first.process_input(input, batch, &mut out)?;
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
            self.emit(out).await?;
        }
        Ok(())
    }

    async fn on_watermark(&mut self, wm: Watermark) -> Result<()> {
        let mut current = Some(wm);
        for i in 0..self.operators.len() {
            let Some(wm) = current else { break };
            let mut out = Vec::new();
            current = self.operators[i].process_watermark(wm, &mut out)?;
            let out = self.apply_operators(i + 1, out)?;
            self.emit(out).await?;
        }
        match current {
            Some(wm) => {
                if let Some(slot) = &self.sink_watermark {
                    slot.store(wm.0, std::sync::atomic::Ordering::Relaxed);
                }
                self.emit_control(Message::Watermark(wm)).await
            }
            None => Ok(()),
        }
    }

    async fn finish(&mut self) -> Result<()> {
        for i in 0..self.operators.len() {
            let mut out = Vec::new();
            self.operators[i].finish(&mut out)?;
            let out = self.apply_operators(i + 1, out)?;
            self.emit(out).await?;
        }
        match &mut self.tail {
            Tail::Sink(sink) => sink.finish().await,
            Tail::Exchanges(exchanges) => {
                for ex in exchanges {
                    ex.broadcast(Message::End).await?;
                }
                Ok(())
            }
        }
    }

    async fn emit(&mut self, batches: Vec<RecordBatch>) -> Result<()> {
        for batch in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            match &mut self.tail {
                Tail::Sink(sink) => {
                    let rows = batch.num_rows();
                    sink.write(batch).await?;
                    self.metrics.add_rows_out(rows);
                }
                Tail::Exchanges(exchanges) => {
                    let (last, rest) = exchanges
                        .split_last_mut()
                        .expect("a task without a sink has at least one output");
                    for ex in rest {
                        ex.send_batch(batch.clone()).await?;
                    }
                    last.send_batch(batch).await?;
                }
            }
        }
        Ok(())
    }

    async fn emit_control(&mut self, msg: Message) -> Result<()> {
        emit_control(&mut self.tail, msg).await
    }
}

async fn emit_control(tail: &mut Tail, msg: Message) -> Result<()> {
    if let Tail::Exchanges(exchanges) = tail {
        for ex in exchanges {
            ex.broadcast(msg.clone()).await?;
        }
    }
    Ok(())
}

/// The source's next message; if it has none for `timeout`, tells the
/// downstream tasks once that this subtask is idle, and keeps waiting.
async fn next_or_idle(
    source: &mut dyn Source,
    timeout: std::time::Duration,
    tail: &mut Tail,
) -> Result<Option<Message>> {
    let next = source.next();
    tokio::pin!(next);
    tokio::select! {
        biased;
        msg = &mut next => return msg,
        () = tokio::time::sleep(timeout) => {}
    }
    emit_control(tail, Message::Idle).await?;
    next.await
}
