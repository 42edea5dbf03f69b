//! The conformance suites, run against `SqliteStorage` on a temporary database file.
//!
//! Every test builds its own harness (one temporary directory, one database file), and
//! every namespace the suites ask for is a table of that file.

use std::path::PathBuf;

use storage_conformance::{
    Harness, batch_suite, crash_suite, indexed_suite, observable_suite, persistence_suite,
    queryable_suite, storage_suite, transactional_suite,
};
use storage_core::{Result, StorageError, StorageValue};
use storage_sqlite::{SqliteConfig, SqliteStorage};

/// Opens tables of one temporary database file.
struct SqliteHarness {
    dir: tempfile::TempDir,
    change_log: bool,
}

impl SqliteHarness {
    fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("sqlite-conformance-")
                .tempdir()
                .unwrap_or_else(|e| panic!("temp dir: {e}")),
            change_log: false,
        }
    }

    /// Handles that keep the change log (cross-process watches, resumable).
    fn with_change_log() -> Self {
        Self {
            change_log: true,
            ..Self::new()
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("store.sqlite")
    }

    fn config(&self, namespace: &str) -> SqliteConfig {
        SqliteConfig::new(self.path().to_string_lossy())
            .table_name(namespace)
            .busy_timeout_ms(2000)
            .change_log(self.change_log)
    }
}

impl<T: StorageValue> Harness<T> for SqliteHarness {
    type Store = SqliteStorage<T>;

    async fn open(&self, namespace: &str) -> Result<SqliteStorage<T>> {
        SqliteStorage::open(self.config(namespace)).await
    }

    async fn corrupt(&self, namespace: &str, key: &str) -> Result<bool> {
        let conn = rusqlite::Connection::open(self.path())
            .map_err(|e| StorageError::new(storage_core::ErrorCode::Io, e.to_string()))?;
        let changed = conn
            .execute(
                &format!("UPDATE \"{namespace}\" SET value = '{{\"ok\": tru' WHERE key = ?1"),
                [key],
            )
            .map_err(|e| StorageError::new(storage_core::ErrorCode::Backend, e.to_string()))?;
        Ok(changed == 1)
    }
}

storage_suite!(SqliteHarness::new());
batch_suite!(SqliteHarness::new());
queryable_suite!(SqliteHarness::new());
indexed_suite!(SqliteHarness::new());
transactional_suite!(SqliteHarness::new());
observable_suite!(SqliteHarness::new());
observable_suite!(
    observable_conformance_with_change_log,
    SqliteHarness::with_change_log()
);
persistence_suite!(SqliteHarness::new());
crash_suite!(|location: String| async move {
    SqliteStorage::<serde_json::Value>::open(SqliteConfig::new(location)).await
});
