//! The configuration of a [`crate::JsonStorage`].
//!
//! Field names follow the interface seed's `JSONStorageConfig` (`filePath`,
//! `encoding`, `pretty`, `atomic`) in snake case, plus the knobs a crash-safe
//! journal needs (`durability`, `lock`, `compact_after`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use storage_core::{ErrorCode, Result, StorageError};

/// The only encoding the adapter reads and writes.
pub const SUPPORTED_ENCODING: &str = "utf-8";

/// When an acknowledged write reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Every acknowledged write was fsync'd first (the default).
    #[default]
    FsyncEach,
    /// Group commit: one fsync covers up to `max_writes` writes or `max_delay_ms`
    /// milliseconds, whichever comes first. A write is still acknowledged only
    /// once the fsync covering it returned, so concurrent writers share one fsync
    /// and a lone writer waits up to `max_delay_ms`.
    Group {
        /// Writes one fsync may cover.
        max_writes: usize,
        /// Longest wait, in milliseconds, before the pending writes are synced.
        max_delay_ms: u64,
    },
}

/// What opening a file another process holds does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// Fail at once with `ConnectionFailed` ("locked by another process"), retryable.
    #[default]
    Fail,
    /// Wait up to `timeout_ms` milliseconds for the other process to close the file,
    /// then fail with `Timeout`.
    Wait {
        /// Longest wait in milliseconds.
        timeout_ms: u64,
    },
}

/// Configuration of a [`crate::JsonStorage`].
///
/// # Example
/// ```
/// use storage_json::{Durability, JsonConfig};
/// let config = JsonConfig::new("data/users.json").durability(Durability::Group {
///     max_writes: 64,
///     max_delay_ms: 2,
/// });
/// assert!(config.pretty);
/// config.validate()?;
/// # Ok::<(), storage_core::StorageError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JsonConfig {
    /// The main JSON file. The journal is `<file_path>.journal`, the lock
    /// `<file_path>.lock`, the compaction temp file `<file_path>.tmp`.
    pub file_path: PathBuf,
    /// Text encoding; only `"utf-8"` (any case, with or without the dash) is supported.
    pub encoding: String,
    /// Indent the main file so a person can read and edit it (default `true`).
    pub pretty: bool,
    /// `true` (default): every acknowledged write is on disk before the call returns,
    /// as `durability` says. `false`: journal appends are never fsync'd; a process
    /// crash still loses nothing (the kernel holds the bytes), but an operating-system
    /// crash or power loss may lose writes acknowledged since the kernel last flushed
    /// (typically up to 30 seconds). Compaction stays fsync'd and atomic either way.
    pub atomic: bool,
    /// Fsync per write or group commit (default: per write).
    pub durability: Durability,
    /// Fail or wait when another process holds the file (default: fail).
    pub lock: LockMode,
    /// Compact the journal into the main file once it holds this many records and
    /// is at least half the main file's size (default 10 000). Also compacted on close.
    pub compact_after: u64,
}

impl Default for JsonConfig {
    fn default() -> Self {
        Self {
            file_path: PathBuf::from("storage.json"),
            encoding: SUPPORTED_ENCODING.to_owned(),
            pretty: true,
            atomic: true,
            durability: Durability::FsyncEach,
            lock: LockMode::Fail,
            compact_after: 10_000,
        }
    }
}

impl JsonConfig {
    /// The defaults, for the file at `file_path`.
    pub fn new(file_path: impl Into<PathBuf>) -> Self {
        Self {
            file_path: file_path.into(),
            ..Self::default()
        }
    }

    /// Sets indentation.
    #[must_use]
    pub fn pretty(mut self, pretty: bool) -> Self {
        self.pretty = pretty;
        self
    }

    /// Sets `atomic`.
    #[must_use]
    pub fn atomic(mut self, atomic: bool) -> Self {
        self.atomic = atomic;
        self
    }

    /// Sets the durability mode.
    #[must_use]
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the lock mode.
    #[must_use]
    pub fn lock(mut self, lock: LockMode) -> Self {
        self.lock = lock;
        self
    }

    /// Sets the compaction threshold.
    #[must_use]
    pub fn compact_after(mut self, records: u64) -> Self {
        self.compact_after = records;
        self
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// `InvalidConfig` for an empty path, an encoding other than UTF-8 (naming the one
    /// supported), a zero `compact_after`, or a group commit of zero writes.
    pub fn validate(&self) -> Result<()> {
        if self.file_path.as_os_str().is_empty() {
            return Err(invalid("file_path is empty").with_context("field", "file_path"));
        }
        if self.file_path.file_name().is_none() {
            return Err(invalid("file_path does not name a file")
                .with_context("file_path", self.file_path.display()));
        }
        let normalized = self.encoding.to_ascii_lowercase().replace(['-', '_'], "");
        if normalized != "utf8" {
            return Err(invalid(format!(
                "encoding '{}' is not supported; the supported encoding is '{SUPPORTED_ENCODING}'",
                self.encoding
            ))
            .with_context("field", "encoding")
            .with_context("supported", SUPPORTED_ENCODING));
        }
        if self.compact_after == 0 {
            return Err(
                invalid("compact_after must be at least 1").with_context("field", "compact_after")
            );
        }
        if let Durability::Group { max_writes: 0, .. } = self.durability {
            return Err(invalid("group commit max_writes must be at least 1")
                .with_context("field", "durability"));
        }
        Ok(())
    }
}

fn invalid(message: impl Into<std::borrow::Cow<'static, str>>) -> StorageError {
    StorageError::new(ErrorCode::InvalidConfig, message).with_backend("json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_spellings_are_accepted() -> Result<()> {
        for enc in ["utf-8", "UTF-8", "utf8", "UTF_8"] {
            let mut c = JsonConfig::new("x.json");
            c.encoding = enc.to_owned();
            c.validate()?;
        }
        Ok(())
    }

    #[test]
    fn other_encoding_is_invalid_config_naming_utf8() {
        let mut c = JsonConfig::new("x.json");
        c.encoding = "latin1".to_owned();
        let err = c.validate().expect_err("must fail");
        assert_eq!(err.code(), ErrorCode::InvalidConfig);
        assert!(err.message().contains("latin1"));
        assert!(err.message().contains("utf-8"));
    }

    #[test]
    fn zero_thresholds_are_rejected() {
        assert!(
            JsonConfig::new("x.json")
                .compact_after(0)
                .validate()
                .is_err()
        );
        let c = JsonConfig::new("x.json").durability(Durability::Group {
            max_writes: 0,
            max_delay_ms: 1,
        });
        assert_eq!(
            c.validate().expect_err("must fail").code(),
            ErrorCode::InvalidConfig
        );
    }

    #[test]
    fn config_deserializes_with_defaults() -> std::result::Result<(), serde_json::Error> {
        let c: JsonConfig = serde_json::from_str(
            r#"{"file_path": "a.json", "durability": {"group": {"max_writes": 8, "max_delay_ms": 1}}}"#,
        )?;
        assert_eq!(c.file_path, PathBuf::from("a.json"));
        assert!(c.pretty && c.atomic);
        assert_eq!(c.compact_after, 10_000);
        assert!(matches!(
            c.durability,
            Durability::Group { max_writes: 8, .. }
        ));
        Ok(())
    }
}
