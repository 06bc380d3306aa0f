//! The receiving side of a task with inputs: merges its input channels into
//! one ordered stream, taking the minimum of the inputs' watermarks and
//! aligning checkpoint barriers.

use std::future::poll_fn;
use std::task::Poll;

use arrow::array::UInt32Array;
use arrow::record_batch::RecordBatch;
use flumen_types::{Barrier, FlumenError, Message, Result, Watermark};
use tokio::sync::mpsc::Receiver;

use crate::exchange::Envelope;
use crate::latency::Origin;

/// What the gate hands its task next.
#[derive(Debug)]
pub(crate) enum GateEvent {
    /// A batch of the node's input `0` (its first input edge), `1`, …,
    /// the rows of it meant for this subtask when it is shared with others
    /// (`None`: all), and its origin.
    Batch(usize, RecordBatch, Option<UInt32Array>, Option<Origin>),
    /// The minimum watermark over all inputs advanced; the origin of the
    /// watermark that moved it.
    Watermark(Watermark, Option<Origin>),
    /// A barrier arrived on every input.
    Barrier(Barrier),
    /// Every channel of this input ended; other inputs go on.
    InputEnded(usize),
    /// Every input that has not ended is idle.
    Idle,
    /// Every input ended.
    End,
}

struct Input {
    rx: Receiver<Envelope>,
    /// Which input edge of the node this channel belongs to.
    edge: usize,
    watermark: Watermark,
    ended: bool,
    /// Sent [`Message::Idle`] and nothing since: its watermark is ignored.
    idle: bool,
    /// Holds input back until the barrier it delivered arrives on all inputs.
    blocked: bool,
}

/// Merges the channels of every upstream subtask that feeds this task.
pub(crate) struct InputGate {
    inputs: Vec<Input>,
    /// The input polled first next time, rotated for fairness.
    start: usize,
    emitted_watermark: Watermark,
    pending_barrier: Option<Barrier>,
    /// An input edge whose last channel just ended, reported next.
    pending_input_end: Option<usize>,
    /// Every input went idle with a watermark: the idleness is reported next.
    pending_idle: bool,
    /// The input edge read before the others until it ends
    /// ([`InputGate::reading_first`]).
    first: Option<usize>,
}

impl InputGate {
    /// A gate over `receivers`, each tagged with the input edge it belongs to.
    pub(crate) fn new(receivers: Vec<(usize, Receiver<Envelope>)>) -> Self {
        let inputs = receivers
            .into_iter()
            .map(|(edge, rx)| Input {
                rx,
                edge,
                watermark: Watermark::MIN,
                ended: false,
                idle: false,
                blocked: false,
            })
            .collect();
        InputGate {
            inputs,
            start: 0,
            emitted_watermark: Watermark::MIN,
            pending_barrier: None,
            pending_input_end: None,
            pending_idle: false,
            first: None,
        }
    }

    /// Reads input edge `edge` alone while any of its channels can deliver,
    /// until it ends: the other inputs wait (their senders are held back),
    /// so an operator that needs one input whole first (a join's broadcast
    /// table) does not keep the others' rows meanwhile. When every channel
    /// of `edge` has ended or waits for a barrier's alignment, all inputs
    /// are read.
    pub(crate) fn reading_first(mut self, edge: Option<usize>) -> Self {
        self.first = edge;
        self
    }

    /// The next event for the task: a batch, a watermark that advanced the
    /// minimum over all inputs, a barrier seen on every input, the end of one
    /// input edge, or `End` once every input has ended.
    pub(crate) async fn next(&mut self) -> Result<GateEvent> {
        loop {
            if let Some(edge) = self.pending_input_end.take() {
                return Ok(GateEvent::InputEnded(edge));
            }
            if std::mem::take(&mut self.pending_idle) {
                return Ok(GateEvent::Idle);
            }
            if self.inputs.iter().all(|i| i.ended) {
                return Ok(GateEvent::End);
            }
            let (index, (msg, origin)) = self.recv_any().await?;
            if !matches!(msg, Message::Idle) {
                self.inputs[index].idle = false;
            }
            match msg {
                Message::Batch(b) => {
                    return Ok(GateEvent::Batch(self.inputs[index].edge, b, None, origin));
                }
                Message::Rows(b, rows) => {
                    let edge = self.inputs[index].edge;
                    return Ok(GateEvent::Batch(edge, b, Some(rows), origin));
                }
                Message::Idle => {
                    self.inputs[index].idle = true;
                    let all_idle = self.inputs.iter().all(|i| i.idle || i.ended);
                    match self.advance_watermark() {
                        Some(wm) => {
                            self.pending_idle = all_idle;
                            return Ok(GateEvent::Watermark(wm, None));
                        }
                        None if all_idle => return Ok(GateEvent::Idle),
                        None => {}
                    }
                }
                Message::Watermark(wm) => {
                    let input = &mut self.inputs[index];
                    input.watermark = input.watermark.max(wm);
                    if let Some(wm) = self.advance_watermark() {
                        return Ok(GateEvent::Watermark(wm, origin));
                    }
                }
                Message::Barrier(b) => {
                    self.inputs[index].blocked = true;
                    self.pending_barrier = Some(b);
                    if let Some(b) = self.complete_barrier() {
                        return Ok(GateEvent::Barrier(b));
                    }
                }
                Message::End => {
                    let input = &mut self.inputs[index];
                    input.ended = true;
                    input.watermark = Watermark::MAX;
                    let edge = input.edge;
                    let others_go_on = self.inputs.iter().any(|i| !i.ended);
                    if others_go_on && self.inputs.iter().all(|i| i.edge != edge || i.ended) {
                        self.pending_input_end = Some(edge);
                    }
                    if let Some(b) = self.complete_barrier() {
                        return Ok(GateEvent::Barrier(b));
                    }
                    if others_go_on && let Some(wm) = self.advance_watermark() {
                        return Ok(GateEvent::Watermark(wm, None));
                    }
                }
            }
        }
    }

    /// The minimum watermark of the inputs that are not idle, if it moved
    /// forward. Once every input still open is idle, the largest of their
    /// watermarks: nothing older can come from any of them before they send
    /// again (as Flink's watermark valve does).
    fn advance_watermark(&mut self) -> Option<Watermark> {
        let active = self.inputs.iter().filter(|i| !i.idle).map(|i| i.watermark);
        let all_idle = self.inputs.iter().all(|i| i.idle || i.ended);
        let min = if all_idle {
            self.inputs
                .iter()
                .filter(|i| i.idle && !i.ended)
                .map(|i| i.watermark)
                .max()?
        } else {
            active.min()?
        };
        (min > self.emitted_watermark).then(|| {
            self.emitted_watermark = min;
            min
        })
    }

    fn complete_barrier(&mut self) -> Option<Barrier> {
        let aligned = self.inputs.iter().all(|i| i.blocked || i.ended);
        if !aligned {
            return None;
        }
        let barrier = self.pending_barrier.take()?;
        for input in &mut self.inputs {
            input.blocked = false;
        }
        Some(barrier)
    }

    async fn recv_any(&mut self) -> Result<(usize, Envelope)> {
        let n = self.inputs.len();
        let start = self.start;
        self.start = (start + 1) % n;
        let first = self.first.filter(|&edge| {
            self.inputs
                .iter()
                .any(|i| i.edge == edge && !i.ended && !i.blocked)
        });
        poll_fn(|cx| {
            for k in 0..n {
                let index = (start + k) % n;
                let input = &mut self.inputs[index];
                if input.ended || input.blocked || first.is_some_and(|edge| input.edge != edge) {
                    continue;
                }
                match input.rx.poll_recv(cx) {
                    Poll::Ready(Some(msg)) => return Poll::Ready(Ok((index, msg))),
                    Poll::Ready(None) => return Poll::Ready(Err(FlumenError::Cancelled)),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::channel;

    #[tokio::test]
    async fn watermark_is_minimum_of_inputs_and_end_releases_it() {
        let (tx_a, rx_a) = channel(8);
        let (tx_b, rx_b) = channel(8);
        let mut gate = InputGate::new(vec![(0, rx_a), (0, rx_b)]);
        tx_a.send((Message::Watermark(Watermark(10)), None))
            .await
            .unwrap();
        tx_b.send((Message::Watermark(Watermark(5)), None))
            .await
            .unwrap();
        match gate.next().await.unwrap() {
            GateEvent::Watermark(w, _) => assert_eq!(w, Watermark(5)),
            m => panic!("expected watermark, got {m:?}"),
        }
        tx_b.send((Message::End, None)).await.unwrap();
        match gate.next().await.unwrap() {
            GateEvent::Watermark(w, _) => assert_eq!(w, Watermark(10)),
            m => panic!("expected watermark, got {m:?}"),
        }
        tx_a.send((Message::End, None)).await.unwrap();
        assert!(matches!(gate.next().await.unwrap(), GateEvent::End));
    }

    #[tokio::test]
    async fn barrier_is_emitted_once_aligned_on_all_inputs() {
        let (tx_a, rx_a) = channel(8);
        let (tx_b, rx_b) = channel(8);
        let mut gate = InputGate::new(vec![(0, rx_a), (0, rx_b)]);
        tx_a.send((Message::Barrier(Barrier::checkpoint(1)), None))
            .await
            .unwrap();
        tx_a.send((Message::Watermark(Watermark(99)), None))
            .await
            .unwrap();
        tx_b.send((Message::Watermark(Watermark(1)), None))
            .await
            .unwrap();
        tx_b.send((Message::Barrier(Barrier::checkpoint(1)), None))
            .await
            .unwrap();
        // Input a is blocked after its barrier, so b's messages come first.
        assert!(matches!(
            gate.next().await.unwrap(),
            GateEvent::Barrier(Barrier { id: 1, .. })
        ));
        match gate.next().await.unwrap() {
            GateEvent::Watermark(w, _) => assert_eq!(w, Watermark(1)),
            m => panic!("expected watermark, got {m:?}"),
        }
    }

    #[tokio::test]
    async fn batches_carry_their_input_and_an_ended_input_is_reported() {
        let (tx_a, rx_a) = channel(8);
        let (tx_b, rx_b) = channel(8);
        let mut gate = InputGate::new(vec![(0, rx_a), (1, rx_b)]);
        let batch = RecordBatch::new_empty(std::sync::Arc::new(arrow::datatypes::Schema::empty()));
        tx_b.send((Message::Batch(batch), None)).await.unwrap();
        assert!(matches!(
            gate.next().await.unwrap(),
            GateEvent::Batch(1, _, _, _)
        ));
        tx_b.send((Message::End, None)).await.unwrap();
        assert!(matches!(
            gate.next().await.unwrap(),
            GateEvent::InputEnded(1)
        ));
        tx_a.send((Message::End, None)).await.unwrap();
        assert!(matches!(gate.next().await.unwrap(), GateEvent::End));
    }

    /// Input 1 is read first: input 0's batches wait until input 1 ends,
    /// except while input 1 waits for a barrier's alignment.
    #[tokio::test]
    async fn an_input_read_first_holds_the_others_back_until_it_ends() {
        let (tx_a, rx_a) = channel(8);
        let (tx_b, rx_b) = channel(8);
        let (tx_c, rx_c) = channel(8);
        let mut gate = InputGate::new(vec![(0, rx_a), (1, rx_b), (1, rx_c)]).reading_first(Some(1));
        let batch = || {
            let schema = std::sync::Arc::new(arrow::datatypes::Schema::empty());
            Message::Batch(RecordBatch::new_empty(schema))
        };
        tx_a.send((batch(), None)).await.unwrap();
        tx_a.send((Message::Barrier(Barrier::checkpoint(1)), None))
            .await
            .unwrap();
        tx_a.send((batch(), None)).await.unwrap();
        tx_b.send((batch(), None)).await.unwrap();
        tx_b.send((Message::Barrier(Barrier::checkpoint(1)), None))
            .await
            .unwrap();
        tx_c.send((Message::End, None)).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(match gate.next().await.unwrap() {
                GateEvent::Batch(input, _, _, _) => format!("batch {input}"),
                GateEvent::Barrier(b) => format!("barrier {}", b.id),
                m => format!("{m:?}"),
            });
        }
        // Input 1's batch first; once its channels ended or wait at the
        // barrier, input 0 is read up to the barrier.
        assert_eq!(seen, ["batch 1", "batch 0", "barrier 1"]);
        // Input 1 is read first again: its next batch before input 0's.
        tx_b.send((batch(), None)).await.unwrap();
        assert!(matches!(
            gate.next().await.unwrap(),
            GateEvent::Batch(1, _, _, _)
        ));
        tx_b.send((Message::End, None)).await.unwrap();
        assert!(matches!(
            gate.next().await.unwrap(),
            GateEvent::InputEnded(1)
        ));
        assert!(matches!(
            gate.next().await.unwrap(),
            GateEvent::Batch(0, _, _, _)
        ));
    }

    #[tokio::test]
    async fn an_idle_input_stops_holding_the_watermark_back() {
        let (tx_a, rx_a) = channel(8);
        let (tx_b, rx_b) = channel(8);
        let mut gate = InputGate::new(vec![(0, rx_a), (0, rx_b)]);
        tx_a.send((Message::Watermark(Watermark(10)), None))
            .await
            .unwrap();
        tx_b.send((Message::Watermark(Watermark(5)), None))
            .await
            .unwrap();
        assert!(matches!(
            gate.next().await.unwrap(),
            GateEvent::Watermark(Watermark(5), _)
        ));
        tx_b.send((Message::Idle, None)).await.unwrap();
        assert!(matches!(
            gate.next().await.unwrap(),
            GateEvent::Watermark(Watermark(10), _)
        ));
        tx_a.send((Message::Idle, None)).await.unwrap();
        assert!(matches!(gate.next().await.unwrap(), GateEvent::Idle));
        // All idle: the watermark is the largest of theirs (10, already out).
        // Both wake up: the watermark moves on from the minimum of the two,
        // never back below what was emitted.
        tx_b.send((Message::Watermark(Watermark(7)), None))
            .await
            .unwrap();
        tx_a.send((Message::Watermark(Watermark(20)), None))
            .await
            .unwrap();
        tx_b.send((Message::Watermark(Watermark(30)), None))
            .await
            .unwrap();
        assert!(matches!(
            gate.next().await.unwrap(),
            GateEvent::Watermark(Watermark(20), _)
        ));
    }
}
