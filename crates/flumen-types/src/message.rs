//! The one ordered stream of messages between tasks.

use arrow::array::UInt32Array;
use arrow::record_batch::RecordBatch;

/// Event-time progress: no row with an event time below this will follow
/// (nanoseconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Watermark(pub i64);

impl Watermark {
    /// The watermark of an input that has ended: it never holds anything back.
    pub const MAX: Watermark = Watermark(i64::MAX);
    /// The watermark before any progress has been made.
    pub const MIN: Watermark = Watermark(i64::MIN);
}

/// A checkpoint barrier: everything before it belongs to checkpoint `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Barrier {
    /// Checkpoint identifier, increasing from 1.
    pub id: u64,
    /// Whether the job stops once this checkpoint is taken (a savepoint
    /// that does not drain): a task that has passed it reads no more input.
    pub stop: bool,
}

impl Barrier {
    /// The barrier of periodic checkpoint `id`.
    pub fn checkpoint(id: u64) -> Self {
        Barrier { id, stop: false }
    }

    /// The barrier of savepoint `id`, after which the job stops.
    pub fn stop_with_savepoint(id: u64) -> Self {
        Barrier { id, stop: true }
    }
}

/// What travels over a channel between two tasks, in order, so that
/// watermarks and barriers never overtake the data they follow.
#[derive(Debug, Clone)]
pub enum Message {
    /// A batch of rows.
    Batch(RecordBatch),
    /// Rows of a batch whose other rows went to other subtasks (a hash
    /// exchange's part, sent without copying): the listed rows, ascending.
    Rows(RecordBatch, UInt32Array),
    /// Event time has advanced.
    Watermark(Watermark),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// The sender has had no rows for its idle timeout: until it sends
    /// again, its watermark does not hold back the receiver's.
    Idle,
    /// The sender has finished; no message follows.
    End,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_order_by_time_with_min_and_max_at_the_ends() {
        assert!(Watermark::MIN < Watermark(0));
        assert!(Watermark(0) < Watermark(1));
        assert!(Watermark(i64::MAX - 1) < Watermark::MAX);
        assert_eq!(
            [Watermark(3), Watermark(1)].iter().min(),
            Some(&Watermark(1))
        );
    }
}
