//! The one error type every tier returns.
//!
//! Callers match on [`StorageError::code`]; adapters add context as the error
//! travels up (operation, backend, key, table, query) without new variants.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

/// A boxed error that can cross threads, used as the source of a [`StorageError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The result type of every storage operation.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The stable code of a [`StorageError`]: what went wrong, independent of backend.
///
/// The first thirteen codes are the interface design's; the rest name failures
/// every real backend has (unsupported capability, corrupt data, time-outs,
/// bad queries and configurations, I/O and other backend failures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The backend could not be reached.
    ConnectionFailed,
    /// An established connection to the backend was lost.
    ConnectionLost,
    /// A key that had to exist does not.
    KeyNotFound,
    /// A write would break a unique constraint, or an index name is taken by another definition.
    DuplicateKey,
    /// The transaction was aborted (explicitly, by a time-out, or because it is no longer active).
    TransactionAborted,
    /// The backend detected a deadlock; retrying may succeed.
    DeadlockDetected,
    /// A consistency level was not reached in time (the write may be applied on the primary).
    ConsistencyViolation,
    /// A concurrent change conflicted with this one; retrying may succeed.
    VersionConflict,
    /// The backend ran out of space.
    StorageFull,
    /// A quota or configured limit was exceeded.
    QuotaExceeded,
    /// The key is empty, longer than 1024 bytes, or contains a NUL byte.
    InvalidKey,
    /// The value cannot be stored faithfully.
    InvalidValue,
    /// Encoding or decoding a value failed, or stored bytes were written under another configuration.
    SerializationFailed,
    /// The query is malformed (bad field path, bad regex, wrong operand type).
    InvalidQuery,
    /// The configuration is invalid.
    InvalidConfig,
    /// The store does not support the requested capability.
    Unsupported,
    /// Stored data is corrupt.
    Corrupted,
    /// The operation did not finish in time.
    Timeout,
    /// An operating-system I/O error.
    Io,
    /// Any other backend failure.
    Backend,
}

impl ErrorCode {
    /// The code as the interface design spells it (`KEY_NOT_FOUND`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionFailed => "CONNECTION_FAILED",
            Self::ConnectionLost => "CONNECTION_LOST",
            Self::KeyNotFound => "KEY_NOT_FOUND",
            Self::DuplicateKey => "DUPLICATE_KEY",
            Self::TransactionAborted => "TRANSACTION_ABORTED",
            Self::DeadlockDetected => "DEADLOCK_DETECTED",
            Self::ConsistencyViolation => "CONSISTENCY_VIOLATION",
            Self::VersionConflict => "VERSION_CONFLICT",
            Self::StorageFull => "STORAGE_FULL",
            Self::QuotaExceeded => "QUOTA_EXCEEDED",
            Self::InvalidKey => "INVALID_KEY",
            Self::InvalidValue => "INVALID_VALUE",
            Self::SerializationFailed => "SERIALIZATION_FAILED",
            Self::InvalidQuery => "INVALID_QUERY",
            Self::InvalidConfig => "INVALID_CONFIG",
            Self::Unsupported => "UNSUPPORTED",
            Self::Corrupted => "CORRUPTED",
            Self::Timeout => "TIMEOUT",
            Self::Io => "IO",
            Self::Backend => "BACKEND",
        }
    }

    /// Whether an error with this code is worth retrying by default.
    pub const fn is_retryable_by_default(self) -> bool {
        matches!(
            self,
            Self::VersionConflict | Self::DeadlockDetected | Self::ConnectionLost | Self::Timeout
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error every storage operation returns.
///
/// # Example
/// ```
/// use storage_core::{ErrorCode, StorageError};
///
/// let err = StorageError::new(ErrorCode::KeyNotFound, "no such key")
///     .with_operation("get")
///     .with_backend("memory")
///     .with_context("key", "user:1");
/// assert_eq!(err.code(), ErrorCode::KeyNotFound);
/// assert_eq!(err.context_value("key"), Some("user:1"));
/// assert_eq!(
///     err.to_string(),
///     "key not found: no such key (operation: get, backend: memory, key: user:1)"
/// );
/// ```
pub struct StorageError {
    code: ErrorCode,
    message: Cow<'static, str>,
    operation: Option<&'static str>,
    backend: Option<Cow<'static, str>>,
    context: Vec<(&'static str, String)>,
    retryable: Option<bool>,
    source: Option<BoxError>,
}

impl StorageError {
    /// A new error with a code and a one-line, lowercase message.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
            operation: None,
            backend: None,
            context: Vec::new(),
            retryable: None,
            source: None,
        }
    }

    /// Shorthand for an [`ErrorCode::Unsupported`] error.
    pub fn unsupported(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Unsupported, message)
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message, without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The operation that failed (`get`, `set`, `commit`, …), if recorded.
    pub fn operation(&self) -> Option<&'static str> {
        self.operation
    }

    /// The backend that failed (`memory`, `sqlite`, …), if recorded.
    pub fn backend(&self) -> Option<&str> {
        self.backend.as_deref()
    }

    /// The context pairs, in the order they were added.
    pub fn context(&self) -> &[(&'static str, String)] {
        &self.context
    }

    /// The first context value recorded under `name`.
    pub fn context_value(&self, name: &str) -> Option<&str> {
        self.context
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether retrying the operation (or the transaction) may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
            .unwrap_or_else(|| self.code.is_retryable_by_default())
    }

    /// Records the operation, unless one is already recorded.
    #[must_use]
    pub fn with_operation(mut self, operation: &'static str) -> Self {
        if self.operation.is_none() {
            self.operation = Some(operation);
        }
        self
    }

    /// Records the backend, unless one is already recorded.
    #[must_use]
    pub fn with_backend(mut self, backend: impl Into<Cow<'static, str>>) -> Self {
        if self.backend.is_none() {
            self.backend = Some(backend.into());
        }
        self
    }

    /// Adds a context pair (key, table, query, file, position, …).
    #[must_use]
    pub fn with_context(mut self, name: &'static str, value: impl fmt::Display) -> Self {
        self.context.push((name, value.to_string()));
        self
    }

    /// Overrides whether the error is retryable (for example SQLite's BUSY).
    #[must_use]
    pub fn set_retryable(mut self, retryable: bool) -> Self {
        self.retryable = Some(retryable);
        self
    }

    /// Chains the underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One lowercase line, as log lines and CLI output want it; callers that need
        // the stable code match on `code()`, not on this text.
        let code = self.code.as_str().to_lowercase().replace('_', " ");
        write!(f, "{code}: {}", self.message)?;
        let mut parts: Vec<String> = Vec::new();
        if let Some(op) = self.operation {
            parts.push(format!("operation: {op}"));
        }
        if let Some(backend) = &self.backend {
            parts.push(format!("backend: {backend}"));
        }
        for (k, v) in &self.context {
            parts.push(format!("{k}: {v}"));
        }
        if !parts.is_empty() {
            write!(f, " ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

impl fmt::Debug for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("StorageError");
        d.field("code", &self.code)
            .field("message", &self.message)
            .field("operation", &self.operation)
            .field("backend", &self.backend)
            .field("context", &self.context)
            .field("retryable", &self.is_retryable());
        if let Some(source) = &self.source {
            d.field("source", &source.to_string());
        }
        d.finish()
    }
}

impl StdError for StorageError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn StdError + 'static))
    }
}

impl From<std::io::Error> for StorageError {
    fn from(err: std::io::Error) -> Self {
        let code = match err.kind() {
            std::io::ErrorKind::StorageFull => ErrorCode::StorageFull,
            std::io::ErrorKind::QuotaExceeded => ErrorCode::QuotaExceeded,
            std::io::ErrorKind::TimedOut => ErrorCode::Timeout,
            _ => ErrorCode::Io,
        };
        Self::new(code, err.to_string().to_lowercase()).with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_follows_code_unless_overridden() {
        assert!(StorageError::new(ErrorCode::VersionConflict, "x").is_retryable());
        assert!(!StorageError::new(ErrorCode::InvalidKey, "x").is_retryable());
        assert!(
            StorageError::new(ErrorCode::Backend, "busy")
                .set_retryable(true)
                .is_retryable()
        );
    }

    #[test]
    fn first_operation_and_backend_win() {
        let e = StorageError::new(ErrorCode::Io, "x")
            .with_operation("set")
            .with_operation("batch")
            .with_backend("json")
            .with_backend("memory");
        assert_eq!(e.operation(), Some("set"));
        assert_eq!(e.backend(), Some("json"));
    }

    #[test]
    fn source_is_chained() {
        let io = std::io::Error::other("disk on fire");
        let e = StorageError::from(io);
        assert_eq!(e.code(), ErrorCode::Io);
        assert!(StdError::source(&e).is_some());
        assert!(!e.to_string().contains('\n'));
    }
}
