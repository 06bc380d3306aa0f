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
    /// The job was cancelled because another task failed. It reaches a user
    /// only if no task reported why (a task ended early without an error).
    #[error("cancelled: a channel between the job's tasks closed, and no task reported an error")]
    Cancelled,
    /// A checkpoint or savepoint cannot be used: torn, corrupt, or holding
    /// state that does not fit the job.
    #[error("{0}")]
    State(String),
    /// A call to an outside system (storage, a broker, a database) failed in
    /// a way that trying again may cure; the underlying error is kept
    /// ([`FlumenError::cause`]) and its message is part of this one's.
    #[error("{context}: {cause}")]
    Transient {
        /// What flumen was doing.
        context: String,
        /// What the outside system said.
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A broken invariant: a bug in flumen, not in the job.
    #[error("internal error (a bug in flumen): {0}")]
    Internal(String),
}

/// Who can fix an error, which decides whether a job restarts after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The user's SQL, options, data or checkpoint: a retry fails again.
    User,
    /// An outside system failed; a restart from the last checkpoint may cure it.
    Retryable,
    /// A bug in flumen.
    Internal,
}

impl FlumenError {
    /// Who can fix this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FlumenError::Io(_) | FlumenError::Transient { .. } | FlumenError::Cancelled => {
                ErrorKind::Retryable
            }
            FlumenError::Internal(_) | FlumenError::Arrow(_) => ErrorKind::Internal,
            FlumenError::Config(_)
            | FlumenError::Plan(_)
            | FlumenError::BadData(_)
            | FlumenError::Execution(_)
            | FlumenError::OutputClosed
            | FlumenError::State(_) => ErrorKind::User,
        }
    }

    /// This error as met while running the statement `origin`: an
    /// operator's failure (a division by zero, a cast that fails) names the
    /// statement; other kinds already name what failed and keep their
    /// variant, which restart and retry decisions read.
    pub fn within(self, origin: &str) -> Self {
        match self {
            FlumenError::Execution(m) => FlumenError::Execution(format!("{origin}: {m}")),
            other => other,
        }
    }

    /// A [`FlumenError::Transient`] error: `context` says what flumen was
    /// doing, `source` what failed.
    pub fn transient(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        FlumenError::Transient {
            context: context.into(),
            cause: Box::new(source),
        }
    }

    /// The outside system's own error behind a [`FlumenError::Transient`]
    /// one, to tell its kinds apart (not found, refused, timed out).
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            FlumenError::Transient { cause, .. } => Some(cause.as_ref()),
            _ => None,
        }
    }
    /// Shorthand for a [`FlumenError::State`] error.
    pub fn state(msg: impl Into<String>) -> Self {
        FlumenError::State(msg.into())
    }
    /// Shorthand for a [`FlumenError::Internal`] error.
    pub fn internal(msg: impl Into<String>) -> Self {
        FlumenError::Internal(msg.into())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An operator's failure names the statement it ran for; other errors
    /// keep their variant (and so whether a restart may cure them).
    #[test]
    fn an_execution_error_names_its_statement_and_others_keep_their_kind() {
        let e = FlumenError::execution("division by zero").within("q.sql:3:1 INSERT INTO t");
        assert_eq!(e.to_string(), "q.sql:3:1 INSERT INTO t: division by zero");
        assert_eq!(e.kind(), ErrorKind::User);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = FlumenError::transient("reading", io).within("q.sql:3:1 INSERT INTO t");
        assert!(matches!(e, FlumenError::Transient { .. }), "{e}");
        assert!(matches!(
            FlumenError::Cancelled.within("x"),
            FlumenError::Cancelled
        ));
    }

    #[test]
    fn a_transient_error_keeps_its_cause_and_may_be_retried() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = FlumenError::transient("reading s3://b/k", io);
        assert_eq!(e.to_string(), "reading s3://b/k: refused");
        assert_eq!(e.kind(), ErrorKind::Retryable);
        let cause = e.cause().unwrap().downcast_ref::<std::io::Error>().unwrap();
        assert_eq!(cause.kind(), std::io::ErrorKind::ConnectionRefused);
        assert_eq!(FlumenError::plan("x").kind(), ErrorKind::User);
        assert_eq!(FlumenError::internal("x").kind(), ErrorKind::Internal);
        assert!(
            FlumenError::internal("x")
                .to_string()
                .contains("a bug in flumen")
        );
    }
}
