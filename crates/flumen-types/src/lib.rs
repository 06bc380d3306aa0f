//! Types every flumen crate shares: the [`Message`] that flows between tasks,
//! [`Watermark`]s, checkpoint [`Barrier`]s and the common [`FlumenError`].

#![warn(missing_docs)]

mod changelog;
mod duration;
mod error;
mod message;

pub use changelog::{OP_COLUMN, RowOp, is_updating, op_field};
pub use duration::duration_nanos;
pub use error::{ErrorKind, FlumenError, Result};
pub use message::{Barrier, Message, Watermark};

/// Rows per batch that sources aim for: large enough to amortise every
/// per-batch cost, small enough to stay in cache.
pub const DEFAULT_BATCH_SIZE: usize = 8192;

/// Number of key groups keys hash into (the maximum parallelism of a keyed
/// operator). State is partitioned by key group so a job can rescale.
pub const DEFAULT_MAX_PARALLELISM: usize = 128;
