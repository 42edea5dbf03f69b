//! The adapter's own failures, mapped into [`StorageError`] at the crate boundary.

use std::io;
use std::path::PathBuf;

use storage_core::{ErrorCode, StorageError};

/// Failures specific to the JSON-file adapter.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JsonError {
    /// A file's bytes cannot be read back as what the adapter wrote.
    #[error("{} is corrupt at byte {position}: {}", file.display(), reason.to_lowercase())]
    Corrupt {
        file: PathBuf,
        position: u64,
        reason: String,
    },
    /// Another process (or another handle in this one) holds the lock.
    #[error("{} is locked by another process", file.display())]
    Locked { file: PathBuf },
    /// Waiting for the lock took longer than configured.
    #[error("timed out after {waited_ms} ms waiting for the lock on {}", file.display())]
    LockTimeout { file: PathBuf, waited_ms: u64 },
    /// The handle was closed.
    #[error("the store is closed")]
    Closed,
    /// A write on a handle opened read-only.
    #[error("the store was opened read-only")]
    ReadOnly,
    /// An earlier journal write failed in a way that left file and memory out of step.
    #[error("the store stopped accepting writes after a failed journal write: {}", .0.to_lowercase())]
    Poisoned(String),
    /// An operating-system I/O error on a file.
    #[error("{op} {}: {}", path.display(), source.to_string().to_lowercase())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl JsonError {
    /// An I/O error with the operation and file it happened on.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        file: impl Into<PathBuf>,
        position: u64,
        reason: impl Into<String>,
    ) -> Self {
        Self::Corrupt {
            file: file.into(),
            position,
            reason: reason.into(),
        }
    }
}

impl From<JsonError> for StorageError {
    fn from(err: JsonError) -> Self {
        // Messages are lowercase already, except for file paths, which must stay exact.
        let message = err.to_string();
        let base = match &err {
            JsonError::Corrupt { file, position, .. } => {
                StorageError::new(ErrorCode::Corrupted, message)
                    .with_context("file", file.display())
                    .with_context("position", position)
            }
            JsonError::Locked { file } => StorageError::new(ErrorCode::ConnectionFailed, message)
                .with_context("file", file.display())
                .set_retryable(true),
            JsonError::LockTimeout { file, .. } => {
                StorageError::new(ErrorCode::Timeout, message).with_context("file", file.display())
            }
            JsonError::Closed => {
                StorageError::new(ErrorCode::ConnectionLost, message).set_retryable(false)
            }
            JsonError::ReadOnly => StorageError::new(ErrorCode::Unsupported, message),
            JsonError::Poisoned(_) => StorageError::new(ErrorCode::Io, message),
            JsonError::Io { path, source, .. } => {
                let code = match source.kind() {
                    io::ErrorKind::StorageFull => ErrorCode::StorageFull,
                    io::ErrorKind::QuotaExceeded => ErrorCode::QuotaExceeded,
                    _ => ErrorCode::Io,
                };
                StorageError::new(code, message).with_context("file", path.display())
            }
        };
        base.with_backend("json").with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_names_file_and_position() {
        let e: StorageError = JsonError::corrupt("/tmp/a.json", 17, "expected ','").into();
        assert_eq!(e.code(), ErrorCode::Corrupted);
        assert_eq!(e.context_value("file"), Some("/tmp/a.json"));
        assert_eq!(e.context_value("position"), Some("17"));
        assert_eq!(e.backend(), Some("json"));
    }

    #[test]
    fn locked_is_a_retryable_connection_failure() {
        let e: StorageError = JsonError::Locked {
            file: "/tmp/a.json".into(),
        }
        .into();
        assert_eq!(e.code(), ErrorCode::ConnectionFailed);
        assert!(e.is_retryable());
        assert!(e.message().contains("locked by another process"));
    }
}
