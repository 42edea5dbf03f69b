//! The SQLite adapter's configuration, with documented defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use storage_core::{ErrorCode, Result, StorageError};

/// The `synchronous` pragma: how often SQLite waits for the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SynchronousLevel {
    /// Never waits; a power loss may corrupt the database. For throwaway data only.
    Off,
    /// With WAL: durable except for the last commits before a power loss (never corrupt);
    /// a process crash loses nothing.
    #[default]
    Normal,
    /// Waits at every commit: durable across power loss.
    Full,
    /// As `Full`, and also syncs the directory after deleting a journal.
    Extra,
}

impl SynchronousLevel {
    pub(crate) fn pragma_value(self) -> &'static str {
        match self {
            Self::Off => "OFF",
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
            Self::Extra => "EXTRA",
        }
    }
}

/// Where the database lives and how it is opened.
///
/// Deserializes from TOML, YAML or JSON; every field but `database` has a default.
///
/// # Example
/// ```
/// use storage_sqlite::SqliteConfig;
/// let config = SqliteConfig::new("app.db").table_name("users");
/// assert!(config.validate().is_ok());
/// assert!(SqliteConfig::new("app.db").table_name("users; DROP TABLE x").validate().is_err());
/// ```
// Each flag is an independent SQLite setting, as the configuration file names them.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteConfig {
    /// A file path, or `:memory:` for a private database that lives as long as the handle
    /// (backed by a temporary file so that readers and transactions behave as on disk).
    pub database: String,
    /// The table holding this handle's entries: ASCII letters, digits and `_`, not starting
    /// with a digit, at most 64 bytes, not starting with `sqlite_` or `_storage`. Default `storage`.
    pub table_name: String,
    /// Write-ahead logging (default `true`): readers never wait for the writer and run
    /// concurrently. Without it reads and writes take turns on the database lock.
    pub wal: bool,
    /// The `foreign_keys` pragma (default `false`), for databases shared with other schemas.
    pub foreign_keys: bool,
    /// The `synchronous` pragma (default `normal`).
    pub synchronous: SynchronousLevel,
    /// How long a statement waits for a lock held by another connection before it fails
    /// with a retryable error (default 5000 ms).
    pub busy_timeout_ms: u64,
    /// Read connections (and their threads) serving reads outside transactions (default 4).
    pub read_pool_size: usize,
    /// Run `PRAGMA integrity_check` when opening, failing with `Corrupted` unless it answers
    /// `ok` (default `false`: it reads the whole file).
    pub integrity_check_on_open: bool,
    /// Record every committed change in a change-log table, in the same transaction as the
    /// change, so that other handles and processes can watch it (default `true`).
    /// Without it, watches see only changes made through this handle.
    pub change_log: bool,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            database: ":memory:".to_owned(),
            table_name: "storage".to_owned(),
            wal: true,
            foreign_keys: false,
            synchronous: SynchronousLevel::Normal,
            busy_timeout_ms: 5000,
            read_pool_size: 4,
            integrity_check_on_open: false,
            change_log: true,
        }
    }
}

impl SqliteConfig {
    /// A configuration for `database` (a path or `:memory:`) with every default.
    pub fn new(database: impl Into<String>) -> Self {
        Self {
            database: database.into(),
            ..Self::default()
        }
    }

    /// A private in-memory database.
    pub fn memory() -> Self {
        Self::default()
    }

    /// Sets the table name.
    #[must_use]
    pub fn table_name(mut self, name: impl Into<String>) -> Self {
        self.table_name = name.into();
        self
    }

    /// Sets write-ahead logging.
    #[must_use]
    pub fn wal(mut self, yes: bool) -> Self {
        self.wal = yes;
        self
    }

    /// Sets the `foreign_keys` pragma.
    #[must_use]
    pub fn foreign_keys(mut self, yes: bool) -> Self {
        self.foreign_keys = yes;
        self
    }

    /// Sets the `synchronous` level.
    #[must_use]
    pub fn synchronous(mut self, level: SynchronousLevel) -> Self {
        self.synchronous = level;
        self
    }

    /// Sets the busy time-out in milliseconds.
    #[must_use]
    pub fn busy_timeout_ms(mut self, ms: u64) -> Self {
        self.busy_timeout_ms = ms;
        self
    }

    /// Sets the number of read connections.
    #[must_use]
    pub fn read_pool_size(mut self, size: usize) -> Self {
        self.read_pool_size = size;
        self
    }

    /// Runs an integrity check on open.
    #[must_use]
    pub fn integrity_check_on_open(mut self, yes: bool) -> Self {
        self.integrity_check_on_open = yes;
        self
    }

    /// Turns the change-log table on or off.
    #[must_use]
    pub fn change_log(mut self, yes: bool) -> Self {
        self.change_log = yes;
        self
    }

    /// Whether this names a private in-memory database.
    pub fn is_memory(&self) -> bool {
        self.database == ":memory:"
    }

    /// The database path, `None` for `:memory:`.
    pub fn path(&self) -> Option<PathBuf> {
        (!self.is_memory()).then(|| PathBuf::from(&self.database))
    }

    /// Checks every field.
    ///
    /// # Errors
    /// `InvalidConfig` naming the field: an empty database path, a table name that is not a
    /// plain identifier (see [`SqliteConfig::table_name`]), a read pool of 0 or over 64
    /// connections, a busy time-out over one hour.
    pub fn validate(&self) -> Result<()> {
        if self.database.is_empty() || self.database.contains('\0') {
            return Err(config_error(
                "database",
                "database path is empty or contains nul",
            ));
        }
        validate_identifier(&self.table_name).map_err(|e| e.with_context("field", "table_name"))?;
        if self.read_pool_size == 0 || self.read_pool_size > 64 {
            return Err(config_error(
                "read_pool_size",
                "read_pool_size must be between 1 and 64",
            ));
        }
        if self.busy_timeout_ms > 3_600_000 {
            return Err(config_error(
                "busy_timeout_ms",
                "busy_timeout_ms must be at most one hour",
            ));
        }
        Ok(())
    }
}

fn config_error(field: &'static str, message: &'static str) -> StorageError {
    StorageError::new(ErrorCode::InvalidConfig, message)
        .with_backend("sqlite")
        .with_context("field", field)
}

/// Checks that `name` can name a table: it is always quoted as well, so this is about
/// keeping names portable and out of SQLite's and this crate's own namespaces.
pub(crate) fn validate_identifier(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    let lower = name.to_ascii_lowercase();
    if !first_ok
        || !rest_ok
        || name.len() > 64
        || lower.starts_with("sqlite_")
        || lower.starts_with("_storage")
        || name.contains("__")
    {
        return Err(StorageError::new(
            ErrorCode::InvalidConfig,
            "table name must be 1 to 64 ascii letters, digits or '_', start with a letter or '_', \
             contain no '__' and not start with 'sqlite_' or '_storage'",
        )
        .with_backend("sqlite")
        .with_context("table", name.escape_debug()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_docs() {
        let c = SqliteConfig::default();
        assert_eq!(c.table_name, "storage");
        assert!(c.wal);
        assert!(!c.foreign_keys);
        assert_eq!(c.synchronous, SynchronousLevel::Normal);
        assert_eq!(c.busy_timeout_ms, 5000);
        assert_eq!(c.read_pool_size, 4);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn injection_strings_are_not_table_names() {
        for bad in [
            "",
            "users; DROP TABLE x",
            "a\"b",
            "a'b",
            "1abc",
            "sqlite_master",
            "_storage_changes",
            "a__b",
            "naïve",
            "a b",
            &"x".repeat(65),
        ] {
            let err = SqliteConfig::memory()
                .table_name(bad)
                .validate()
                .expect_err("must be refused");
            assert_eq!(err.code(), ErrorCode::InvalidConfig, "{bad}");
        }
        for good in ["users", "_t", "T1_x", &"x".repeat(64)] {
            assert!(
                SqliteConfig::memory().table_name(good).validate().is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn deserializes_with_defaults() -> Result<(), serde_json::Error> {
        let c: SqliteConfig =
            serde_json::from_str(r#"{"database": "a.db", "synchronous": "full"}"#)?;
        assert_eq!(c.database, "a.db");
        assert_eq!(c.synchronous, SynchronousLevel::Full);
        assert_eq!(c.table_name, "storage");
        Ok(())
    }
}
