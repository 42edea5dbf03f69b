//! The configuration of a [`crate::SqliteStorage`]: storage-core's [`SqliteConfig`]
//! (loadable from TOML, YAML or JSON files with `type = "sqlite"`, with builder
//! methods) and the checks only this adapter makes.
//!
//! Fields and defaults: `database` (required; a path, or `:memory:` for a private
//! database that lives as long as its handles, backed by a temporary file so readers
//! and transactions behave as on disk), `table_name` (`storage`), `wal` (`true`),
//! `foreign_keys` (`false`), `synchronous` (`normal`), `busy_timeout_ms` (5000),
//! `read_pool_size` (4: reader threads, and at most as many connections for point reads
//! on the calling thread under WAL), `integrity_check_on_open` (`false`), `change_log`
//! (`false`: watches see the commits of every handle on the file and table in this
//! process; `true`: every commit is also recorded in the `_storage_changes` table, in
//! the same transaction, so other processes can watch it and a watch can resume from a
//! sequence number, at the cost of a second row per change), and the common settings
//! (`id`, `debug` spans, `serialization`, which must stay JSON without compression:
//! values are stored as JSON text so that SQL can filter and index them).

use storage_core::{Compression, ErrorCode, Format, Result, StorageError};

pub use storage_core::config::{SqliteConfig, SynchronousLevel};

fn config_error(field: &'static str, message: &'static str) -> StorageError {
    StorageError::new(ErrorCode::InvalidConfig, message)
        .with_backend("sqlite")
        .with_context("field", field)
}

/// Checks a configuration as [`SqliteStorage::open`](crate::SqliteStorage::open) does:
/// [`SqliteConfig::validate`], then what this adapter adds.
///
/// # Errors
/// `InvalidConfig` naming the field: everything `validate` refuses, and a serialization
/// other than JSON without compression.
///
/// # Example
/// ```
/// use storage_sqlite::{SqliteConfig, validate_config};
/// assert!(validate_config(&SqliteConfig::new("app.db").table_name("users")).is_ok());
/// let bad = SqliteConfig::new("app.db").table_name("users; DROP TABLE x");
/// assert!(validate_config(&bad).is_err());
/// ```
pub fn validate_config(config: &SqliteConfig) -> Result<()> {
    config.validate().map_err(|e| e.with_backend("sqlite"))?;
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
        let c = SqliteConfig::memory();
        assert_eq!(c.table_name, "storage");
        assert!(c.wal);
        assert!(!c.foreign_keys);
        assert_eq!(c.synchronous, SynchronousLevel::Normal);
        assert_eq!(c.busy_timeout_ms, 5000);
        assert_eq!(c.read_pool_size, 4);
        assert!(!c.change_log);
        assert!(validate_config(&c).is_ok());
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
            let err = validate_config(&SqliteConfig::memory().table_name(bad))
                .expect_err("must be refused");
            assert_eq!(err.code(), ErrorCode::InvalidConfig, "{bad}");
            assert_eq!(err.context_value("field"), Some("table_name"), "{bad}");
        }
        for good in ["users", "_t", "T1_x", &"x".repeat(63)] {
            assert!(
                validate_config(&SqliteConfig::memory().table_name(good)).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn only_plain_json_serialization_is_accepted() {
        let mut c = SqliteConfig::memory();
        c.common.serialization.format = Format::MessagePack;
        let err = validate_config(&c).expect_err("msgpack is refused");
        assert_eq!(err.context_value("field"), Some("serialization"));
    }
}
