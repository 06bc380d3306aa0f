//! The contract of a lookup table: an external table read by key while a
//! stream is joined to it (`JOIN t FOR SYSTEM_TIME AS OF …`), and a way for
//! a synchronous operator to wait for it.

use std::future::Future;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use flumen_types::{FlumenError, Result};

/// How a lookup join keeps what it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupCache {
    /// Keys held at most; when full, the key read longest ago goes first.
    pub max_keys: usize,
    /// A key is read again this long after it was read.
    pub ttl: Duration,
    /// Whether a key the table does not have is remembered as such.
    pub cache_missing: bool,
}

/// Reads rows of an external table by their key columns.
#[async_trait]
pub trait Lookup: Send {
    /// The rows whose key columns equal one of the rows of `keys` (one array
    /// per key column, each row a distinct key without nulls), with, for
    /// each returned row, the index of the key row it belongs to. A key may
    /// have no row or several.
    async fn lookup(&mut self, keys: &[ArrayRef]) -> Result<(RecordBatch, Vec<u32>)>;
}

/// Makes a [`Lookup`] for each subtask of a lookup join.
pub trait LookupFactory: Send + Sync {
    /// A short description for `explain`: the table and its system.
    fn describe(&self) -> String;
    /// The columns of the rows [`Lookup::lookup`] returns.
    fn schema(&self) -> SchemaRef;
    /// One subtask's lookup; it connects when first used.
    fn create(&self) -> Result<Box<dyn Lookup>>;
}

/// Runs `future` to its end from synchronous operator code inside the job's
/// multi-threaded tokio runtime: the worker thread hands its other tasks to
/// the rest of the runtime while it waits. Outside such a runtime it is an
/// internal error, not a panic.
pub fn wait_for<F: Future>(future: F) -> Result<F::Output> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|e| FlumenError::internal(format!("a lookup ran outside the runtime: {e}")))?;
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return Err(FlumenError::internal(
            "a lookup needs the multi-threaded runtime, which flumen runs jobs on",
        ));
    }
    Ok(tokio::task::block_in_place(|| handle.block_on(future)))
}
