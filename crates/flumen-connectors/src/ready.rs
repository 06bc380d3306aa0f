//! The decoded messages a message source (Kafka, NATS, MQTT) has ready to
//! return, each with where its split moves once it is returned and when its
//! rows arrived, paced by `rows_per_second`.

use std::collections::VecDeque;
use std::time::Instant;

use flumen_types::Message;

use crate::throttle::Throttle;

/// Messages waiting to be returned, in order.
pub(crate) struct Ready<A> {
    queue: VecDeque<(Message, Option<A>, Option<Instant>)>,
    throttle: Option<Throttle>,
    /// When the rows pushed from now on arrived.
    arrived: Option<Instant>,
    /// When the rows of the last batch returned arrived.
    returned: Option<Instant>,
}

impl<A> Ready<A> {
    /// An empty queue, paced by `throttle` when there is one.
    pub(crate) fn new(throttle: Option<Throttle>) -> Self {
        Ready {
            queue: VecDeque::new(),
            throttle,
            arrived: None,
            returned: None,
        }
    }

    /// The rows pushed from now on arrived at `at` (when the first message
    /// of their round was taken).
    pub(crate) fn arrived(&mut self, at: Instant) {
        self.arrived = Some(at);
    }

    /// Queues `message`; `advance` is where its split moves once returned.
    pub(crate) fn push(&mut self, message: Message, advance: Option<A>) {
        self.queue.push_back((message, advance, self.arrived));
    }

    /// The next message and its advance; the message is `None` for a batch
    /// without rows, whose split still moves. Waits for the throttle before
    /// taking a batch, so it is safe to cancel.
    pub(crate) async fn pop(&mut self) -> Option<(Option<Message>, Option<A>)> {
        if let Some(t) = &mut self.throttle
            && matches!(self.queue.front(), Some((Message::Batch(_), _, _)))
        {
            t.wait().await;
        }
        let (message, advance, arrived) = self.queue.pop_front()?;
        if let Message::Batch(b) = &message {
            if b.num_rows() == 0 {
                return Some((None, advance));
            }
            if let Some(t) = &mut self.throttle {
                t.sent(b.num_rows());
            }
            self.returned = arrived;
        }
        Some((Some(message), advance))
    }

    /// When the rows of the last batch returned arrived, as
    /// [`flumen_runtime::Source::ready_span`] says it.
    pub(crate) fn ready_span(&self) -> Option<(Instant, Instant)> {
        self.returned.map(|at| (at, at))
    }

    /// The advances of the messages still queued.
    pub(crate) fn advances(&self) -> impl Iterator<Item = &A> {
        self.queue.iter().filter_map(|(_, a, _)| a.as_ref())
    }
}

/// The next message of a partial batch: one the stream has ready, else one
/// that comes before `deadline` (a linger after the batch's first); `None`
/// when none does, or without a deadline (no linger) when none is ready.
/// Safe to cancel: a message is only taken when it is returned.
pub(crate) async fn next_within<S: futures::Stream + Unpin>(
    stream: &mut S,
    deadline: Option<tokio::time::Instant>,
) -> Option<S::Item> {
    use futures::{FutureExt, StreamExt};
    match stream.next().now_or_never() {
        Some(m) => m,
        None => match deadline {
            Some(d) => tokio::time::timeout_at(d, stream.next())
                .await
                .ok()
                .flatten(),
            None => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::SinkExt;
    use std::time::Duration;

    /// A partial batch takes what is ready and what comes within the
    /// linger, then stops at the deadline; without a linger it takes only
    /// what is ready.
    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_waits_one_linger_for_more_and_no_longer() {
        let (mut tx, mut rx) = futures::channel::mpsc::channel::<u32>(16);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        let mut later = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            later.send(3).await.unwrap();
            tokio::time::sleep(Duration::from_millis(8)).await;
            later.send(4).await.unwrap();
        });
        let start = tokio::time::Instant::now();
        let deadline = Some(start + Duration::from_millis(5));
        let mut batch = Vec::new();
        while let Some(m) = next_within(&mut rx, deadline).await {
            batch.push(m);
        }
        // 1 and 2 were ready, 3 came within the 5 ms linger, 4 after it.
        assert_eq!(batch, [1, 2, 3]);
        assert_eq!(start.elapsed(), Duration::from_millis(5));
        // Without a linger nothing that is not ready is waited for.
        let start = tokio::time::Instant::now();
        assert_eq!(next_within(&mut rx, None).await, None);
        assert_eq!(start.elapsed(), Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(6)).await;
        assert_eq!(next_within(&mut rx, None).await, Some(4));
    }
}
