//! The error type shared by the engine's crates.

use arrow::error::ArrowError;

/// Result with a [`FlumenError`].
pub type Result<T, E = FlumenError> = std::result::Result<T, E>;

/// Everything that can stop a flumen job or plan.
#[derive(Debug, thiserror::Error)]
pub enum FlumenError {
    /// Arrow failed while computing on a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    /// A connector option is unknown, missing or has a bad value.
    #[error("{0}")]
    Config(String),
    /// The SQL cannot be planned as a streaming job.
    #[error("{0}")]
    Plan(String),
    /// A source or sink failed reading or writing external data.
    #[error("{0}")]
    Io(String),
    /// A record could not be decoded and the job is set to fail on bad data.
    #[error("bad record: {0}")]
    BadData(String),
    /// An operator failed while processing.
    #[error("{0}")]
    Execution(String),
    /// The reader of the job's output went away (stdout closed by `| head`).
    #[error("output closed")]
    OutputClosed,
    /// The job was cancelled because another task failed.
    #[error("cancelled")]
    Cancelled,
}

impl FlumenError {
    /// Shorthand for a [`FlumenError::Config`] error.
    pub fn config(msg: impl Into<String>) -> Self {
        FlumenError::Config(msg.into())
    }
    /// Shorthand for a [`FlumenError::Plan`] error.
    pub fn plan(msg: impl Into<String>) -> Self {
        FlumenError::Plan(msg.into())
    }
    /// Shorthand for a [`FlumenError::Io`] error.
    pub fn io(msg: impl Into<String>) -> Self {
        FlumenError::Io(msg.into())
    }
    /// Shorthand for a [`FlumenError::Execution`] error.
    pub fn execution(msg: impl Into<String>) -> Self {
        FlumenError::Execution(msg.into())
    }
}
