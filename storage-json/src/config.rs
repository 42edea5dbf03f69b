//! The configuration of a [`crate::JsonStorage`]: storage-core's [`JsonConfig`]
//! (loadable from TOML, YAML or JSON files with `type = "json"`), plus builder
//! methods and the checks only this adapter can make.
//!
//! Fields and defaults: `file_path` (required; the journal is `<file_path>.journal`,
//! the lock `<file_path>.lock`, the compaction temp file `<file_path>.tmp`),
//! `encoding` (`"utf-8"`, the only one supported), `pretty` (`true`: indent the file
//! for people), `atomic` (`true`: fsync as `durability` says; `false`: never fsync
//! the journal, see the crate docs for what a crash may then lose), `durability`
//! (`fsync_each`, or `group` with `max_writes` and `max_delay_ms`), `lock` (`fail`,
//! or `wait` with `timeout_ms`), `compact_after` (10 000 journal records), and the
//! common settings (`id`, `debug` spans, `serialization`, which must stay JSON
//! without compression: the file is meant to be read by people).

use storage_core::{Compression, ErrorCode, Format, Result, StorageError};

pub use storage_core::config::{Durability, JsonConfig, LockMode};

/// Builder methods on [`JsonConfig`].
///
/// # Example
/// ```
/// use storage_json::{Durability, JsonConfig, JsonConfigExt};
/// let config = JsonConfig::new("data/users.json").durability(Durability::Group {
///     max_writes: 64,
///     max_delay_ms: 2,
/// });
/// assert!(config.pretty);
/// config.validate()?;
/// # Ok::<(), storage_core::StorageError>(())
/// ```
pub trait JsonConfigExt: Sized + sealed::Sealed {
    /// Sets indentation of the main file.
    #[must_use]
    fn pretty(self, pretty: bool) -> Self;
    /// Sets `atomic`.
    #[must_use]
    fn atomic(self, atomic: bool) -> Self;
    /// Sets the durability mode.
    #[must_use]
    fn durability(self, durability: Durability) -> Self;
    /// Sets what opening a locked file does.
    #[must_use]
    fn lock(self, lock: LockMode) -> Self;
    /// Sets the compaction threshold, in journal records.
    #[must_use]
    fn compact_after(self, records: u64) -> Self;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::JsonConfig {}
}

impl JsonConfigExt for JsonConfig {
    fn pretty(mut self, pretty: bool) -> Self {
        self.pretty = pretty;
        self
    }

    fn atomic(mut self, atomic: bool) -> Self {
        self.atomic = atomic;
        self
    }

    fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    fn lock(mut self, lock: LockMode) -> Self {
        self.lock = lock;
        self
    }

    fn compact_after(mut self, records: u64) -> Self {
        self.compact_after = records;
        self
    }
}

/// [`JsonConfig::validate`], plus what only this adapter knows.
///
/// # Errors
/// `InvalidConfig` naming the field: everything `validate` rejects (an encoding
/// other than UTF-8 is named as unsupported), a path that does not name a file, or a
/// serialization other than JSON without compression.
pub(crate) fn check(config: &JsonConfig) -> Result<()> {
    config.validate().map_err(|e| e.with_backend("json"))?;
    if config.file_path.file_name().is_none() {
        return Err(invalid("file_path does not name a file")
            .with_context("field", "file_path")
            .with_context("file_path", config.file_path.display()));
    }
    let serialization = &config.common.serialization;
    if serialization.format != Format::Json || serialization.compression != Compression::None {
        return Err(invalid(
            "the json file adapter stores values as readable json documents; serialization must be format json without compression",
        )
        .with_context("field", "serialization"));
    }
    Ok(())
}

fn invalid(message: impl Into<std::borrow::Cow<'static, str>>) -> StorageError {
    StorageError::new(ErrorCode::InvalidConfig, message).with_backend("json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_spellings_are_accepted() -> Result<()> {
        for enc in ["utf-8", "UTF-8", "utf8"] {
            let mut c = JsonConfig::new("x.json");
            c.encoding = enc.to_owned();
            check(&c)?;
        }
        Ok(())
    }

    #[test]
    fn other_encoding_is_invalid_config_naming_utf8() {
        let mut c = JsonConfig::new("x.json");
        c.encoding = "latin1".to_owned();
        let err = check(&c).expect_err("must fail");
        assert_eq!(err.code(), ErrorCode::InvalidConfig);
        assert!(err.message().contains("latin1"));
        assert!(err.message().contains("utf-8"));
    }

    #[test]
    fn zero_thresholds_are_rejected() {
        assert!(check(&JsonConfig::new("x.json").compact_after(0)).is_err());
        let c = JsonConfig::new("x.json").durability(Durability::Group {
            max_writes: 0,
            max_delay_ms: 1,
        });
        assert_eq!(
            check(&c).expect_err("must fail").code(),
            ErrorCode::InvalidConfig
        );
    }

    #[test]
    fn binary_serialization_is_refused() {
        let mut c = JsonConfig::new("x.json");
        c.common.serialization.format = Format::MessagePack;
        let err = check(&c).expect_err("must fail");
        assert_eq!(err.context_value("field"), Some("serialization"));
    }

    #[test]
    fn config_loads_from_toml() -> Result<()> {
        let c: JsonConfig = storage_core::config::parse_config(
            "type = \"json\"\nfilePath = \"a.json\"\ndurability = { group = { max_writes = 8 } }\n",
            storage_core::config::ConfigFormat::Toml,
        )?;
        check(&c)?;
        assert!(c.pretty && c.atomic);
        assert_eq!(c.compact_after, 10_000);
        assert!(matches!(
            c.durability,
            Durability::Group { max_writes: 8, .. }
        ));
        Ok(())
    }
}
