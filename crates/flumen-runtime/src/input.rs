//! The receiving side of a task with inputs: merges its input channels into
//! one ordered stream, taking the minimum of the inputs' watermarks and
//! aligning checkpoint barriers.

use std::future::poll_fn;
use std::task::Poll;

use flumen_types::{Barrier, FlumenError, Message, Result, Watermark};
use tokio::sync::mpsc::Receiver;

struct Input {
    rx: Receiver<Message>,
    watermark: Watermark,
    ended: bool,
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
}

impl InputGate {
    pub(crate) fn new(receivers: Vec<Receiver<Message>>) -> Self {
        let inputs = receivers
            .into_iter()
            .map(|rx| Input {
                rx,
                watermark: Watermark::MIN,
                ended: false,
                blocked: false,
            })
            .collect();
        InputGate {
            inputs,
            start: 0,
            emitted_watermark: Watermark::MIN,
            pending_barrier: None,
        }
    }

    /// The next message for the task: a batch, a watermark that advanced the
    /// minimum over all inputs, a barrier seen on every input, or `End` once
    /// every input has ended.
    pub(crate) async fn next(&mut self) -> Result<Message> {
        loop {
            if self.inputs.iter().all(|i| i.ended) {
                return Ok(Message::End);
            }
            let (index, msg) = self.recv_any().await?;
            match msg {
                Message::Batch(_) => return Ok(msg),
                Message::Watermark(wm) => {
                    let input = &mut self.inputs[index];
                    input.watermark = input.watermark.max(wm);
                    if let Some(wm) = self.advance_watermark() {
                        return Ok(Message::Watermark(wm));
                    }
                }
                Message::Barrier(b) => {
                    self.inputs[index].blocked = true;
                    self.pending_barrier = Some(b);
                    if let Some(b) = self.complete_barrier() {
                        return Ok(Message::Barrier(b));
                    }
                }
                Message::End => {
                    let input = &mut self.inputs[index];
                    input.ended = true;
                    input.watermark = Watermark::MAX;
                    if let Some(b) = self.complete_barrier() {
                        return Ok(Message::Barrier(b));
                    }
                    if self.inputs.iter().any(|i| !i.ended)
                        && let Some(wm) = self.advance_watermark()
                    {
                        return Ok(Message::Watermark(wm));
                    }
                }
            }
        }
    }

    fn advance_watermark(&mut self) -> Option<Watermark> {
        let min = self.inputs.iter().map(|i| i.watermark).min()?;
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

    async fn recv_any(&mut self) -> Result<(usize, Message)> {
        let n = self.inputs.len();
        let start = self.start;
        self.start = (start + 1) % n;
        poll_fn(|cx| {
            for k in 0..n {
                let index = (start + k) % n;
                let input = &mut self.inputs[index];
                if input.ended || input.blocked {
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
        let mut gate = InputGate::new(vec![rx_a, rx_b]);
        tx_a.send(Message::Watermark(Watermark(10))).await.unwrap();
        tx_b.send(Message::Watermark(Watermark(5))).await.unwrap();
        match gate.next().await.unwrap() {
            Message::Watermark(w) => assert_eq!(w, Watermark(5)),
            m => panic!("expected watermark, got {m:?}"),
        }
        tx_b.send(Message::End).await.unwrap();
        match gate.next().await.unwrap() {
            Message::Watermark(w) => assert_eq!(w, Watermark(10)),
            m => panic!("expected watermark, got {m:?}"),
        }
        tx_a.send(Message::End).await.unwrap();
        assert!(matches!(gate.next().await.unwrap(), Message::End));
    }

    #[tokio::test]
    async fn barrier_is_emitted_once_aligned_on_all_inputs() {
        let (tx_a, rx_a) = channel(8);
        let (tx_b, rx_b) = channel(8);
        let mut gate = InputGate::new(vec![rx_a, rx_b]);
        tx_a.send(Message::Barrier(Barrier { id: 1 }))
            .await
            .unwrap();
        tx_a.send(Message::Watermark(Watermark(99))).await.unwrap();
        tx_b.send(Message::Watermark(Watermark(1))).await.unwrap();
        tx_b.send(Message::Barrier(Barrier { id: 1 }))
            .await
            .unwrap();
        // Input a is blocked after its barrier, so b's messages come first.
        assert!(matches!(
            gate.next().await.unwrap(),
            Message::Barrier(Barrier { id: 1 })
        ));
        match gate.next().await.unwrap() {
            Message::Watermark(w) => assert_eq!(w, Watermark(1)),
            m => panic!("expected watermark, got {m:?}"),
        }
    }
}
