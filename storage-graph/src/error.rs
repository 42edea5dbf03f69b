//! Failures of the adapter, mapped into [`StorageError`] codes.

use storage_core::{ErrorCode, StorageError};

/// The backend name every error of this crate carries.
pub(crate) const BACKEND: &str = "graph";

/// What can go wrong below the tier traits, before it becomes a [`StorageError`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum GraphError {
    /// A Redis or FalkorDB command failed.
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// The server answered something this adapter does not understand.
    #[error("unexpected reply: {0}")]
    Reply(String),
    /// A stored value could not be read back.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

impl GraphError {
    /// The [`StorageError`] for this failure, during `operation`.
    pub(crate) fn into_storage(self, operation: &'static str) -> StorageError {
        let (code, message) = match &self {
            GraphError::Redis(e) => redis_code(e),
            GraphError::Reply(m) => (ErrorCode::Backend, format!("unexpected reply: {m}")),
            GraphError::Corrupt(m) => (ErrorCode::Corrupted, format!("corrupt stored value: {m}")),
        };
        StorageError::new(code, message)
            .with_operation(operation)
            .with_backend(BACKEND)
            .with_source(self)
    }
}

/// Classifies a Redis error: connection failures, FalkorDB's unique-constraint
/// violations, time-outs, memory limits, everything else `Backend`.
fn redis_code(e: &redis::RedisError) -> (ErrorCode, String) {
    let text = e.to_string();
    let lower = text.to_lowercase();
    let code = if lower.contains("unique constraint violation") {
        ErrorCode::DuplicateKey
    } else if e.is_timeout() || lower.contains("query timed out") {
        ErrorCode::Timeout
    } else if e.is_connection_refusal() {
        ErrorCode::ConnectionFailed
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
        ErrorCode::ConnectionLost
    } else if lower.contains("oom") || lower.contains("maxmemory") {
        ErrorCode::StorageFull
    } else if lower.contains("noperm") || lower.contains("wrongpass") || lower.contains("noauth") {
        ErrorCode::ConnectionFailed
    } else {
        ErrorCode::Backend
    };
    let mut message = lower;
    message.truncate(message.trim_end().len());
    (code, message)
}

/// Shorthand: a Redis error during `operation`.
pub(crate) fn redis_err(operation: &'static str) -> impl Fn(redis::RedisError) -> StorageError {
    move |e| GraphError::Redis(e).into_storage(operation)
}

/// Shorthand: an unexpected reply during `operation`.
pub(crate) fn reply_err(operation: &'static str, what: impl Into<String>) -> StorageError {
    GraphError::Reply(what.into()).into_storage(operation)
}

/// Shorthand: a stored value that cannot be decoded.
pub(crate) fn corrupt(operation: &'static str, what: impl Into<String>) -> StorageError {
    GraphError::Corrupt(what.into()).into_storage(operation)
}

/// Whether a read failed only because the graph does not exist yet (an empty store).
pub(crate) fn is_missing_graph(e: &redis::RedisError) -> bool {
    e.to_string().contains("empty key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_violations_become_duplicate_key() {
        let e = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "unique constraint violation on node of type Entry",
        ));
        let err = GraphError::Redis(e).into_storage("set");
        assert_eq!(err.code(), ErrorCode::DuplicateKey);
        assert_eq!(err.backend(), Some(BACKEND));
    }
}
