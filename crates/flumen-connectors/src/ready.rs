//! The decoded messages a message source (Kafka, NATS) has ready to return,
//! each with where its split moves once it is returned, paced by
//! `rows_per_second`.

use std::collections::VecDeque;

use flumen_types::Message;

use crate::throttle::Throttle;

/// Messages waiting to be returned, in order.
pub(crate) struct Ready<A> {
    queue: VecDeque<(Message, Option<A>)>,
    throttle: Option<Throttle>,
}

impl<A> Ready<A> {
    /// An empty queue, paced by `throttle` when there is one.
    pub(crate) fn new(throttle: Option<Throttle>) -> Self {
        Ready {
            queue: VecDeque::new(),
            throttle,
        }
    }

    /// Queues `message`; `advance` is where its split moves once returned.
    pub(crate) fn push(&mut self, message: Message, advance: Option<A>) {
        self.queue.push_back((message, advance));
    }

    /// The next message and its advance; the message is `None` for a batch
    /// without rows, whose split still moves. Waits for the throttle before
    /// taking a batch, so it is safe to cancel.
    pub(crate) async fn pop(&mut self) -> Option<(Option<Message>, Option<A>)> {
        if let Some(t) = &mut self.throttle
            && matches!(self.queue.front(), Some((Message::Batch(_), _)))
        {
            t.wait().await;
        }
        let (message, advance) = self.queue.pop_front()?;
        if let Message::Batch(b) = &message {
            if b.num_rows() == 0 {
                return Some((None, advance));
            }
            if let Some(t) = &mut self.throttle {
                t.sent(b.num_rows());
            }
        }
        Some((Some(message), advance))
    }

    /// The advances of the messages still queued.
    pub(crate) fn advances(&self) -> impl Iterator<Item = &A> {
        self.queue.iter().filter_map(|(_, a)| a.as_ref())
    }
}
