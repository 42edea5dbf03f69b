//! Mapping SQLite's failures into [`StorageError`] codes.
//!
//! The mapping follows what a caller can do about each failure: BUSY and LOCKED mean
//! another connection holds a lock (retry); BUSY_SNAPSHOT means a transaction read a
//! snapshot that another writer has since moved past (re-run it: `VersionConflict`);
//! unique constraints come from unique indexes (`DuplicateKey`); a corrupt or foreign
//! file is `Corrupted`; a full disk is `StorageFull`.

use rusqlite::ErrorCode as SqliteCode;
use rusqlite::ffi;
use storage_core::{ErrorCode, StorageError};

/// Failures inside this crate before they become a [`StorageError`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum SqliteError {
    /// SQLite (or rusqlite) reported an error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The thread owning a connection has stopped (the store is closing or a thread panicked).
    #[error("the sqlite connection thread has stopped")]
    WorkerGone,
}

impl SqliteError {
    pub(crate) fn into_storage(self, operation: &'static str) -> StorageError {
        match self {
            Self::Sqlite(err) => from_sqlite(err, operation),
            Self::WorkerGone => StorageError::new(ErrorCode::ConnectionLost, self.to_string())
                .with_operation(operation)
                .with_backend("sqlite"),
        }
    }
}

/// Maps a rusqlite error, recording the operation.
pub(crate) fn from_sqlite(err: rusqlite::Error, operation: &'static str) -> StorageError {
    let (code, retryable, message) = classify(&err);
    let mut out = StorageError::new(code, message)
        .with_operation(operation)
        .with_backend("sqlite");
    if let Some(retryable) = retryable {
        out = out.set_retryable(retryable);
    }
    out.with_source(err)
}

/// A closure for `map_err` that records `operation`.
pub(crate) fn sql_err(operation: &'static str) -> impl Fn(rusqlite::Error) -> StorageError {
    move |err| from_sqlite(err, operation)
}

fn classify(err: &rusqlite::Error) -> (ErrorCode, Option<bool>, String) {
    let message = err.to_string().to_lowercase().replace('\n', " ");
    match err {
        rusqlite::Error::SqliteFailure(e, _) => {
            let code = match e.code {
                _ if e.extended_code == ffi::SQLITE_BUSY_SNAPSHOT => {
                    return (
                        ErrorCode::VersionConflict,
                        Some(true),
                        "another transaction committed after this one's snapshot".to_owned(),
                    );
                }
                SqliteCode::DatabaseBusy | SqliteCode::DatabaseLocked => {
                    return (ErrorCode::Backend, Some(true), message);
                }
                SqliteCode::ConstraintViolation
                    if e.extended_code == ffi::SQLITE_CONSTRAINT_UNIQUE
                        || e.extended_code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
                {
                    ErrorCode::DuplicateKey
                }
                SqliteCode::DatabaseCorrupt | SqliteCode::NotADatabase => ErrorCode::Corrupted,
                SqliteCode::DiskFull => ErrorCode::StorageFull,
                SqliteCode::TooBig => ErrorCode::QuotaExceeded,
                SqliteCode::SystemIoFailure
                | SqliteCode::CannotOpen
                | SqliteCode::PermissionDenied
                | SqliteCode::FileLockingProtocolFailed => ErrorCode::Io,
                _ => ErrorCode::Backend,
            };
            (code, None, message)
        }
        rusqlite::Error::SqlInputError { .. } => (ErrorCode::InvalidQuery, None, message),
        _ => (ErrorCode::Backend, None, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: std::os::raw::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), None)
    }

    #[test]
    fn busy_and_locked_are_retryable() {
        for code in [ffi::SQLITE_BUSY, ffi::SQLITE_LOCKED] {
            let e = from_sqlite(failure(code), "set");
            assert!(e.is_retryable());
            assert_eq!(e.backend(), Some("sqlite"));
        }
    }

    #[test]
    fn busy_snapshot_is_a_retryable_version_conflict() {
        let e = from_sqlite(failure(ffi::SQLITE_BUSY_SNAPSHOT), "commit");
        assert_eq!(e.code(), ErrorCode::VersionConflict);
        assert!(e.is_retryable());
    }

    #[test]
    fn codes_follow_the_failure() {
        let cases = [
            (ffi::SQLITE_CONSTRAINT_UNIQUE, ErrorCode::DuplicateKey),
            (ffi::SQLITE_CORRUPT, ErrorCode::Corrupted),
            (ffi::SQLITE_NOTADB, ErrorCode::Corrupted),
            (ffi::SQLITE_FULL, ErrorCode::StorageFull),
            (ffi::SQLITE_IOERR, ErrorCode::Io),
        ];
        for (code, expected) in cases {
            let e = from_sqlite(failure(code), "set");
            assert_eq!(e.code(), expected);
            assert!(!e.is_retryable());
        }
        let gone = SqliteError::WorkerGone.into_storage("get");
        assert_eq!(gone.code(), ErrorCode::ConnectionLost);
    }
}
