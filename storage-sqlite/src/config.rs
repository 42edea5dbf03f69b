//! The configuration of a [`crate::SqliteStorage`]: storage-core's [`SqliteConfig`]
//! (loadable from TOML, YAML or JSON files with `type = "sqlite"`), builder methods,
//! the checks only this adapter makes, and [`SqliteOptions`] for what is not in the file.
//!
//! Fields and defaults: `database` (required; a path, or `:memory:` for a private
//! database that lives as long as its handles, backed by a temporary file so readers
//! and transactions behave as on disk), `table_name` (`storage`), `wal` (`true`),
//! `foreign_keys` (`false`), `synchronous` (`normal`), `busy_timeout_ms` (5000),
//! `read_pool_size` (4), `integrity_check_on_open` (`false`), and the common settings
//! (`id`, `debug` spans, `serialization`, which must stay JSON without compression:
//! values are stored as JSON text so that SQL can filter and index them).

use storage_core::{Compression, ErrorCode, Format, Result, StorageError};

pub use storage_core::config::{SqliteConfig, SynchronousLevel};

/// What a store does beyond its file configuration.
///
/// # Example
/// ```
/// use storage_sqlite::SqliteOptions;
/// let options = SqliteOptions::default().change_log(true);
/// assert!(options.change_log);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// Record every committed change in the `_storage_changes` table, in the same
    /// transaction as the change, so that other handles and processes can watch it and a
    /// watch can resume from a sequence number. Default `false`: each write then costs
    /// one statement, and watches see only this handle's changes.
    pub change_log: bool,
}

impl SqliteOptions {
    /// Turns the change log on or off.
    #[must_use]
    pub fn change_log(mut self, yes: bool) -> Self {
        self.change_log = yes;
        self
    }
}

/// Builder methods on [`SqliteConfig`].
///
/// # Example
/// ```
/// use storage_sqlite::{SqliteConfig, SqliteConfigExt};
/// let config = SqliteConfig::new("app.db").table_name("users").read_pool_size(2);
/// assert!(storage_sqlite::validate_config(&config).is_ok());
/// let bad = SqliteConfig::new("app.db").table_name("users; DROP TABLE x");
/// assert!(storage_sqlite::validate_config(&bad).is_err());
/// ```
pub trait SqliteConfigExt: Sized + sealed::Sealed {
    /// Sets the table name.
    #[must_use]
    fn table_name(self, name: impl Into<String>) -> Self;
    /// Sets write-ahead logging.
    #[must_use]
    fn wal(self, yes: bool) -> Self;
    /// Sets the `foreign_keys` pragma.
    #[must_use]
    fn foreign_keys(self, yes: bool) -> Self;
    /// Sets the `synchronous` level.
    #[must_use]
    fn synchronous(self, level: SynchronousLevel) -> Self;
    /// Sets the busy time-out in milliseconds.
    #[must_use]
    fn busy_timeout_ms(self, ms: u64) -> Self;
    /// Sets the number of read connections.
    #[must_use]
    fn read_pool_size(self, size: usize) -> Self;
    /// Runs an integrity check on open.
    #[must_use]
    fn integrity_check_on_open(self, yes: bool) -> Self;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::SqliteConfig {}
}

impl SqliteConfigExt for SqliteConfig {
    fn table_name(mut self, name: impl Into<String>) -> Self {
        self.table_name = name.into();
        self
    }

    fn wal(mut self, yes: bool) -> Self {
        self.wal = yes;
        self
    }

    fn foreign_keys(mut self, yes: bool) -> Self {
        self.foreign_keys = yes;
        self
    }

    fn synchronous(mut self, level: SynchronousLevel) -> Self {
        self.synchronous = level;
        self
    }

    fn busy_timeout_ms(mut self, ms: u64) -> Self {
        self.busy_timeout_ms = ms;
        self
    }

    fn read_pool_size(mut self, size: usize) -> Self {
        self.read_pool_size = size;
        self
    }

    fn integrity_check_on_open(mut self, yes: bool) -> Self {
        self.integrity_check_on_open = yes;
        self
    }
}

fn config_error(field: &'static str, message: &'static str) -> StorageError {
    StorageError::new(ErrorCode::InvalidConfig, message)
        .with_backend("sqlite")
        .with_context("field", field)
}

/// Checks a configuration as [`SqliteStorage::open`](crate::SqliteStorage::open) does:
/// [`SqliteConfig::validate`], then what this adapter adds.
///
/// # Errors
/// `InvalidConfig` naming the field: everything `validate` refuses; a table name with
/// `__` or starting with `_storage` (this adapter's own objects); a database path with a
/// nul byte; more than 64 read connections; a busy time-out over one hour; a
/// serialization other than JSON without compression.
pub fn validate_config(config: &SqliteConfig) -> Result<()> {
    config.validate().map_err(|e| e.with_backend("sqlite"))?;
    validate_identifier(&config.table_name)?;
    if config.database.contains('\0') {
        return Err(config_error(
            "database",
            "database path contains a nul byte",
        ));
    }
    if config.read_pool_size > 64 {
        return Err(config_error(
            "read_pool_size",
            "read_pool_size must be at most 64",
        ));
    }
    if config.busy_timeout_ms > 3_600_000 {
        return Err(config_error(
            "busy_timeout_ms",
            "busy_timeout_ms must be at most one hour",
        ));
    }
    let ser = &config.common.serialization;
    if ser.format != Format::Json || ser.compression != Compression::None {
        return Err(config_error(
            "serialization",
            "the sqlite adapter stores values as json text (so sql can filter and index \
             them): serialization must be json without compression",
        ));
    }
    Ok(())
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
        || name.len() > 63
        || lower.starts_with("sqlite_")
        || lower.starts_with("_storage")
        || name.contains("__")
    {
        return Err(StorageError::new(
            ErrorCode::InvalidConfig,
            "table name must be 1 to 63 ascii letters, digits or '_', start with a letter or '_', \
             contain no '__' and not start with 'sqlite_' or '_storage'",
        )
        .with_backend("sqlite")
        .with_context("field", "table_name")
        .with_context("table", name.escape_debug()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_docs() {
        let c = SqliteConfig::in_memory();
        assert_eq!(c.table_name, "storage");
        assert!(c.wal);
        assert!(!c.foreign_keys);
        assert_eq!(c.synchronous, SynchronousLevel::Normal);
        assert_eq!(c.busy_timeout_ms, 5000);
        assert_eq!(c.read_pool_size, 4);
        assert!(validate_config(&c).is_ok());
        assert!(!SqliteOptions::default().change_log);
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
            &"x".repeat(64),
        ] {
            let err = validate_config(&SqliteConfig::in_memory().table_name(bad))
                .expect_err("must be refused");
            assert_eq!(err.code(), ErrorCode::InvalidConfig, "{bad}");
            assert_eq!(err.context_value("field"), Some("table_name"), "{bad}");
        }
        for good in ["users", "_t", "T1_x", &"x".repeat(63)] {
            assert!(
                validate_config(&SqliteConfig::in_memory().table_name(good)).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn only_plain_json_serialization_is_accepted() {
        let mut c = SqliteConfig::in_memory();
        c.common.serialization.format = Format::MessagePack;
        let err = validate_config(&c).expect_err("msgpack is refused");
        assert_eq!(err.context_value("field"), Some("serialization"));
    }
}
