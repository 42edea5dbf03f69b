//! Configuration types, loadable from TOML, YAML or JSON files.
//!
//! Every adapter configuration embeds the common [`StorageConfig`] (identifier, debug
//! spans, performance hints, serialization) at its top level, next to the adapter's own
//! fields. [`BackendConfig`] picks the adapter with a `type` field, so one file can say
//! which backend an application opens:
//!
//! ```
//! use storage_core::config::{BackendConfig, ConfigFormat, parse_config};
//!
//! let cfg: BackendConfig = parse_config(
//!     r#"
//!     type = "sqlite"
//!     database = "data/app.db"
//!     table_name = "users"
//!
//!     [serialization]
//!     format = "msgpack"
//!     compression = "lz4"
//!     "#,
//!     ConfigFormat::Toml,
//! )?;
//! cfg.validate()?;
//! assert_eq!(cfg.backend_name(), "sqlite");
//! assert_eq!(cfg.common().serialization.format, storage_core::Format::MessagePack);
//! # Ok::<(), storage_core::StorageError>(())
//! ```
//!
//! Field names are snake_case; the multi-word names of the interface design's
//! TypeScript configs (`filePath`, `tableName`, `expectedSize`, …) are accepted as
//! aliases. Unknown fields are rejected, so a misspelt option fails loudly instead of
//! silently falling back to its default. Deserializing only parses; call `validate()`
//! (or [`BackendConfig::load`], which does both) before opening a backend.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::codec::{Compression, Format, SerializationConfig};
use crate::error::{ErrorCode, Result, StorageError};

/// The settings every adapter shares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// An identifier for the store, used in log lines and tracing spans. Default: none.
    pub id: Option<String>,
    /// When true, adapters open a `tracing` span (at debug level) around every
    /// operation, named after the operation and carrying the key and backend.
    /// Default: `false`.
    pub debug: bool,
    /// Hints an adapter may use to size caches and pick strategies. Default: no hints.
    pub hints: PerformanceHints,
    /// How values are serialized and compressed. Default: JSON, no compression.
    pub serialization: SerializationConfig,
}

impl StorageConfig {
    /// Checks the common settings.
    ///
    /// # Errors
    /// `InvalidConfig` when `id` is empty or `serialization.max_decoded_len` is zero.
    pub fn validate(&self) -> Result<()> {
        if self.id.as_deref() == Some("") {
            return Err(invalid("id must not be empty when given").with_context("field", "id"));
        }
        if self.serialization.max_decoded_len == 0 {
            return Err(invalid("serialization.max_decoded_len must be at least 1")
                .with_context("field", "serialization.max_decoded_len"));
        }
        Ok(())
    }
}

/// Hints about the workload; adapters may ignore any of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerformanceHints {
    /// The expected number of entries (alias `expectedSize`). Default: unknown.
    #[serde(alias = "expectedSize")]
    pub expected_size: Option<u64>,
    /// The dominant access pattern (alias `accessPattern`). Default: unknown.
    #[serde(alias = "accessPattern")]
    pub access_pattern: Option<AccessPattern>,
    /// A read cache in front of the backend. Default: no cache.
    pub cache: Option<CacheConfig>,
}

/// The dominant access pattern of a workload.
///
/// Serde names: `random`, `sequential`, `write_heavy` (or `write-heavy`),
/// `read_heavy` (or `read-heavy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessPattern {
    /// Keys are read and written in no particular order.
    Random,
    /// Keys are mostly scanned in order.
    Sequential,
    /// Writes dominate.
    #[serde(alias = "write-heavy")]
    WriteHeavy,
    /// Reads dominate.
    #[serde(alias = "read-heavy")]
    ReadHeavy,
}

/// A read cache in front of the backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// The most entries the cache holds (alias `maxEntries`). Default: unbounded.
    #[serde(alias = "maxEntries")]
    pub max_entries: Option<u64>,
    /// How long an entry stays cached, in milliseconds (alias `ttlMs`). Default: until evicted.
    #[serde(alias = "ttlMs")]
    pub ttl_ms: Option<u64>,
}

/// A password or other credential: never printed, never serialized.
///
/// `Debug` and `Display` print `***`, and serializing writes `***` as well, so a
/// configuration can be logged or dumped without leaking it (a dumped configuration
/// therefore has to get its secret back from elsewhere). Deserializes from a plain
/// string; [`expose`](Self::expose) is the one way to read it.
///
/// ```
/// use storage_core::config::Secret;
///
/// let s = Secret::new("hunter2");
/// assert_eq!(format!("{s} {s:?}"), "*** ***");
/// assert_eq!(s.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; pass it straight to the client that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// Builds the private deserialization shape of an adapter config: the common fields
/// spelled out next to the adapter's own, so unknown fields can be rejected (serde's
/// `flatten` cannot do that), then folded into the public struct. An optional `type`
/// field must name the adapter, so one file reads as the adapter's config or as a
/// [`BackendConfig`].
macro_rules! config_repr {
    ($repr:ident => $target:ident ($kind:literal) { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $repr {
            #[serde(default, rename = "type")]
            kind: Option<String>,
            #[serde(default)]
            id: Option<String>,
            #[serde(default)]
            debug: bool,
            #[serde(default)]
            hints: PerformanceHints,
            #[serde(default)]
            serialization: SerializationConfig,
            $($(#[$fmeta])* $field: $ty,)*
        }

        impl TryFrom<$repr> for $target {
            type Error = String;

            fn try_from(r: $repr) -> std::result::Result<Self, String> {
                if let Some(kind) = r.kind.filter(|k| k != $kind) {
                    return Err(format!(
                        "`type = {kind:?}` in a {} configuration (expected {:?})",
                        $kind, $kind
                    ));
                }
                Ok(Self {
                    common: StorageConfig {
                        id: r.id,
                        debug: r.debug,
                        hints: r.hints,
                        serialization: r.serialization,
                    },
                    $($field: r.$field,)*
                })
            }
        }
    };
}

fn invalid(message: impl Into<std::borrow::Cow<'static, str>>) -> StorageError {
    StorageError::new(ErrorCode::InvalidConfig, message)
}

/// Checks a name that ends up inside SQL or Cypher as an identifier: 1 to 63 ASCII
/// letters, digits or underscores, not starting with a digit.
fn check_identifier(what: &'static str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63;
    if valid {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} {name:?} is not an identifier (1 to 63 ascii letters, digits or underscores, not starting with a digit)"
        ))
        .with_context("field", what))
    }
}

// ---------------------------------------------------------------------------------
// JSON file adapter
// ---------------------------------------------------------------------------------

/// When the JSON adapter makes a write durable.
///
/// Serde: `"fsync_each"` (or `"fsync-each"`), or `{ group = { max_writes = 64, max_delay_ms = 10 } }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Every acknowledged write is fsynced before it returns. The default.
    #[default]
    #[serde(alias = "fsync-each")]
    FsyncEach,
    /// Group commit: concurrent writes share one fsync. `max_writes` and
    /// `max_delay_ms` are upper bounds on a group; an adapter may close a group sooner
    /// (storage-json closes it as soon as the writers it expects have arrived, so a lone
    /// writer waits one fsync, not `max_delay_ms`). A write is still acknowledged only
    /// after the fsync that covers it.
    Group {
        /// The most writes sharing one fsync. Default: 64.
        #[serde(default = "default_group_max_writes")]
        max_writes: u32,
        /// The longest a write waits for its group's fsync, in milliseconds. Default: 10.
        #[serde(default = "default_group_max_delay_ms")]
        max_delay_ms: u64,
    },
}

fn default_group_max_writes() -> u32 {
    64
}

fn default_group_max_delay_ms() -> u64 {
    10
}

/// What opening a JSON file does when another process holds its lock.
///
/// Serde: `"fail"`, or `{ wait = { timeout_ms = 10000 } }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// Fail at once with a clear error naming the file. The default.
    #[default]
    Fail,
    /// Wait for the lock, then fail with `Timeout`.
    Wait {
        /// How long to wait, in milliseconds. Default: 10000.
        #[serde(default = "default_lock_timeout_ms")]
        timeout_ms: u64,
    },
}

fn default_lock_timeout_ms() -> u64 {
    10_000
}

fn default_encoding() -> String {
    "utf-8".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_compact_after() -> u64 {
    10_000
}

/// Configuration of the JSON file adapter (`type = "json"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "JsonConfigRepr")]
pub struct JsonConfig {
    /// The common settings, at the top level of the file.
    #[serde(flatten)]
    pub common: StorageConfig,
    /// The JSON file (alias `filePath`). Required.
    pub file_path: PathBuf,
    /// The file's text encoding. Only UTF-8 is supported (`utf-8` or `utf8`, any case);
    /// [`validate`](Self::validate) names any other as unsupported. Default: `"utf-8"`.
    pub encoding: String,
    /// Indent the compacted file for humans. Default: `true`.
    pub pretty: bool,
    /// Replace the file by writing a temporary file and renaming it over the old one,
    /// so a crash leaves the old or the new file, never a torn one. Default: `true`.
    pub atomic: bool,
    /// When writes become durable. Default: `fsync_each`.
    pub durability: Durability,
    /// What to do when another process holds the file's lock. Default: `fail`.
    pub lock: LockMode,
    /// Compact the journal into the file after this many journal records (alias
    /// `compactAfter`). Default: 10000.
    pub compact_after: u64,
}

config_repr!(JsonConfigRepr => JsonConfig ("json") {
    #[serde(alias = "filePath")]
    file_path: PathBuf,
    #[serde(default = "default_encoding")]
    encoding: String,
    #[serde(default = "default_true")]
    pretty: bool,
    #[serde(default = "default_true")]
    atomic: bool,
    #[serde(default)]
    durability: Durability,
    #[serde(default)]
    lock: LockMode,
    #[serde(default = "default_compact_after", alias = "compactAfter")]
    compact_after: u64,
});

impl JsonConfig {
    /// A configuration for a file, every other field at its default.
    pub fn new(file_path: impl Into<PathBuf>) -> Self {
        Self {
            common: StorageConfig::default(),
            file_path: file_path.into(),
            encoding: default_encoding(),
            pretty: true,
            atomic: true,
            durability: Durability::default(),
            lock: LockMode::default(),
            compact_after: default_compact_after(),
        }
    }

    /// Checks what deserialization cannot.
    ///
    /// # Errors
    /// As [`StorageConfig::validate`]; `InvalidConfig` when the encoding is not UTF-8, the file path is empty,
    /// `compact_after` or a group's `max_writes` is zero.
    pub fn validate(&self) -> Result<()> {
        self.common.validate()?;
        let enc = self.encoding.to_ascii_lowercase();
        if enc != "utf-8" && enc != "utf8" {
            return Err(invalid(format!(
                "encoding {:?} is not supported: the json adapter reads and writes utf-8 only (spelled \"utf-8\" or \"utf8\")",
                self.encoding
            ))
            .with_context("field", "encoding"));
        }
        if self.file_path.as_os_str().is_empty() {
            return Err(invalid("file_path must not be empty").with_context("field", "file_path"));
        }
        if self.compact_after == 0 {
            return Err(
                invalid("compact_after must be at least 1").with_context("field", "compact_after")
            );
        }
        if let Durability::Group { max_writes: 0, .. } = self.durability {
            return Err(invalid("durability.group.max_writes must be at least 1")
                .with_context("field", "durability"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// SQLite adapter
// ---------------------------------------------------------------------------------

/// SQLite's `PRAGMA synchronous` level.
///
/// Serde names: `off`, `normal`, `full`, `extra` (upper case accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SynchronousLevel {
    /// No syncs: fastest, and a power loss can corrupt the database.
    #[serde(alias = "OFF")]
    Off,
    /// Sync at critical moments; with WAL, a power loss may lose the last commits
    /// but never corrupts. The default.
    #[default]
    #[serde(alias = "NORMAL")]
    Normal,
    /// Sync on every commit.
    #[serde(alias = "FULL")]
    Full,
    /// Like `full`, and also sync the directory after deleting a rollback journal.
    #[serde(alias = "EXTRA")]
    Extra,
}

impl SynchronousLevel {
    /// The value for `PRAGMA synchronous = …`.
    pub const fn as_pragma(self) -> &'static str {
        match self {
            Self::Off => "OFF",
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
            Self::Extra => "EXTRA",
        }
    }
}

fn default_table_name() -> String {
    "storage".to_owned()
}

fn default_busy_timeout_ms() -> u64 {
    5000
}

fn default_read_pool_size() -> usize {
    4
}

/// Configuration of the SQLite adapter (`type = "sqlite"`).
// Each flag is an independent SQLite setting, named as configuration files name it.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SqliteConfigRepr")]
pub struct SqliteConfig {
    /// The common settings, at the top level of the file.
    #[serde(flatten)]
    pub common: StorageConfig,
    /// The database file, or `":memory:"` for a private in-memory database. Required.
    pub database: String,
    /// The table holding the entries (alias `tableName`); an identifier, see
    /// [`validate`](Self::validate) for the reserved names. Default: `"storage"`.
    pub table_name: String,
    /// Use write-ahead logging (readers never block the writer). Default: `true`.
    pub wal: bool,
    /// Enforce foreign keys (alias `foreignKeys`). Default: `false`.
    pub foreign_keys: bool,
    /// `PRAGMA synchronous`. Default: `normal`.
    pub synchronous: SynchronousLevel,
    /// How long a connection waits for a lock before failing with a retryable error,
    /// in milliseconds (alias `busyTimeoutMs`). Default: 5000.
    pub busy_timeout_ms: u64,
    /// Read-only connections serving reads beside the one writer (alias
    /// `readPoolSize`); 1 to 64. Default: 4.
    pub read_pool_size: usize,
    /// Run `PRAGMA integrity_check` when opening and fail with `Corrupted` if it
    /// reports a problem; it reads the whole file (alias `integrityCheckOnOpen`).
    /// Default: `false`.
    pub integrity_check_on_open: bool,
    /// Record every committed change in a change-log table, in the same transaction
    /// as the change, so other processes can watch it and a watch can resume from a
    /// sequence number (alias `changeLog`); it costs a second row per change. Without
    /// it, watches see the changes made through every handle on the same file and
    /// table in this process. Default: `false`.
    pub change_log: bool,
}

config_repr!(SqliteConfigRepr => SqliteConfig ("sqlite") {
    database: String,
    #[serde(default = "default_table_name", alias = "tableName")]
    table_name: String,
    #[serde(default = "default_true")]
    wal: bool,
    #[serde(default, alias = "foreignKeys")]
    foreign_keys: bool,
    #[serde(default)]
    synchronous: SynchronousLevel,
    #[serde(default = "default_busy_timeout_ms", alias = "busyTimeoutMs")]
    busy_timeout_ms: u64,
    #[serde(default = "default_read_pool_size", alias = "readPoolSize")]
    read_pool_size: usize,
    #[serde(default, alias = "integrityCheckOnOpen")]
    integrity_check_on_open: bool,
    #[serde(default, alias = "changeLog")]
    change_log: bool,
});

impl SqliteConfig {
    /// A configuration for a database file (or `":memory:"`), every other field at its default.
    pub fn new(database: impl Into<String>) -> Self {
        Self {
            common: StorageConfig::default(),
            database: database.into(),
            table_name: default_table_name(),
            wal: true,
            foreign_keys: false,
            synchronous: SynchronousLevel::default(),
            busy_timeout_ms: default_busy_timeout_ms(),
            read_pool_size: default_read_pool_size(),
            integrity_check_on_open: false,
            change_log: false,
        }
    }

    /// A private in-memory database.
    pub fn memory() -> Self {
        Self::new(":memory:")
    }

    /// Whether the database is the private in-memory one.
    pub fn is_memory(&self) -> bool {
        self.database == ":memory:"
    }

    /// The database file, `None` for `:memory:`.
    pub fn path(&self) -> Option<PathBuf> {
        (!self.is_memory()).then(|| PathBuf::from(&self.database))
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

    /// Sets whether to run an integrity check on open.
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

    /// Checks what deserialization cannot.
    ///
    /// # Errors
    /// As [`StorageConfig::validate`]; `InvalidConfig` naming the field when
    /// `table_name` is not an identifier (`^[A-Za-z_][A-Za-z0-9_]{0,62}$`), starts with
    /// `sqlite_` (reserved by SQLite) or `_storage` (the adapter's own tables), any case,
    /// or contains `__` (the separator of the adapter's derived names); when `database`
    /// is empty or contains NUL; when `read_pool_size` is not 1 to 64; when
    /// `busy_timeout_ms` exceeds one hour.
    pub fn validate(&self) -> Result<()> {
        self.common.validate()?;
        check_identifier("table_name", &self.table_name)?;
        let lower = self.table_name.to_ascii_lowercase();
        let reserved = if lower.starts_with("sqlite_") {
            Some("starts with `sqlite_`, which sqlite reserves for itself")
        } else if lower.starts_with("_storage") {
            Some("starts with `_storage`, which the sqlite adapter reserves for its own tables")
        } else if lower.contains("__") {
            Some("contains `__`, which the sqlite adapter uses in the names it derives")
        } else {
            None
        };
        if let Some(why) = reserved {
            return Err(invalid(format!("table_name {:?} {why}", self.table_name))
                .with_context("field", "table_name"));
        }
        if self.database.is_empty() || self.database.contains('\0') {
            return Err(invalid(
                "database must be a file path or \":memory:\", not empty and without nul",
            )
            .with_context("field", "database"));
        }
        if !(1..=64).contains(&self.read_pool_size) {
            return Err(invalid("read_pool_size must be between 1 and 64")
                .with_context("field", "read_pool_size"));
        }
        if self.busy_timeout_ms > 3_600_000 {
            return Err(
                invalid("busy_timeout_ms must be at most one hour (3600000)")
                    .with_context("field", "busy_timeout_ms"),
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Graph (FalkorDB) adapter
// ---------------------------------------------------------------------------------

/// TLS settings for the connection to the graph server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// A PEM file of CA certificates to trust instead of the system roots (alias
    /// `caFile`). Default: the system roots.
    #[serde(alias = "caFile")]
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. For tests only: it allows anyone on the path to
    /// read the traffic (alias `insecureSkipVerify`). Default: `false`.
    #[serde(alias = "insecureSkipVerify")]
    pub insecure_skip_verify: bool,
}

fn default_graph_name() -> String {
    "storage".to_owned()
}

fn default_label() -> String {
    "Entry".to_owned()
}

/// URL schemes the graph adapter connects with.
const GRAPH_URL_SCHEMES: [&str; 5] = [
    "redis://",
    "rediss://",
    "falkor://",
    "falkors://",
    "unix://",
];

/// Configuration of the FalkorDB graph adapter (`type = "graph"`).
///
/// `Debug` hides the password and any credentials inside the URL.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "GraphConfigRepr")]
pub struct GraphConfig {
    /// The common settings, at the top level of the file.
    #[serde(flatten)]
    pub common: StorageConfig,
    /// The server (`redis://`, `rediss://`, `falkor://`, `falkors://` or `unix://`).
    /// Default: none, which starts an embedded server stopped on drop.
    pub url: Option<String>,
    /// The graph's name; an identifier. Default: `"storage"`.
    pub database: String,
    /// The node label of entries; an identifier. Default: `"Entry"`.
    pub label: String,
    /// The user to authenticate as. Default: none.
    pub username: Option<String>,
    /// The password. Never printed. Default: none.
    pub password: Option<Secret>,
    /// TLS settings; `rediss://` and `falkors://` URLs use TLS even without them.
    /// Default: none.
    pub tls: Option<TlsConfig>,
}

config_repr!(GraphConfigRepr => GraphConfig ("graph") {
    #[serde(default)]
    url: Option<String>,
    #[serde(default = "default_graph_name")]
    database: String,
    #[serde(default = "default_label")]
    label: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default)]
    tls: Option<TlsConfig>,
});

impl Default for GraphConfig {
    /// An embedded server, graph `storage`, label `Entry`.
    fn default() -> Self {
        Self {
            common: StorageConfig::default(),
            url: None,
            database: default_graph_name(),
            label: default_label(),
            username: None,
            password: None,
            tls: None,
        }
    }
}

/// Replaces the user-info part of a URL (`redis://user:pass@host`) with `***`.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    match url[authority_start..authority_end].rfind('@') {
        Some(at) => format!(
            "{}***@{}",
            &url[..authority_start],
            &url[authority_start + at + 1..]
        ),
        None => url.to_owned(),
    }
}

impl fmt::Debug for GraphConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphConfig")
            .field("common", &self.common)
            .field("url", &self.url.as_deref().map(redact_url))
            .field("database", &self.database)
            .field("label", &self.label)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("tls", &self.tls)
            .finish()
    }
}

impl GraphConfig {
    /// Checks what deserialization cannot.
    ///
    /// # Errors
    /// As [`StorageConfig::validate`]; `InvalidConfig` when `database` or `label` is not an identifier
    /// (`^[A-Za-z_][A-Za-z0-9_]{0,62}$`), or the URL's scheme is not one the adapter
    /// speaks.
    pub fn validate(&self) -> Result<()> {
        self.common.validate()?;
        check_identifier("database", &self.database)?;
        check_identifier("label", &self.label)?;
        if let Some(url) = &self.url
            && !GRAPH_URL_SCHEMES.iter().any(|s| url.starts_with(s))
        {
            return Err(invalid(format!(
                "url {:?} has an unsupported scheme (expected one of {})",
                redact_url(url),
                GRAPH_URL_SCHEMES.join(", ")
            ))
            .with_context("field", "url"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// In-memory adapter
// ---------------------------------------------------------------------------------

/// Configuration of the in-memory reference store (`type = "memory"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MemoryConfigRepr")]
pub struct MemoryConfig {
    /// The common settings, at the top level of the file.
    #[serde(flatten)]
    pub common: StorageConfig,
    /// The most entries the store accepts; a write beyond it fails with
    /// `QuotaExceeded` (alias `maxEntries`). Default: unbounded.
    pub max_entries: Option<u64>,
}

config_repr!(MemoryConfigRepr => MemoryConfig ("memory") {
    #[serde(default, alias = "maxEntries")]
    max_entries: Option<u64>,
});

impl MemoryConfig {
    /// Checks what deserialization cannot (only the common settings, for memory).
    ///
    /// # Errors
    /// As [`StorageConfig::validate`].
    pub fn validate(&self) -> Result<()> {
        self.common.validate()
    }
}

// ---------------------------------------------------------------------------------
// Backend selection and loading
// ---------------------------------------------------------------------------------

/// One adapter's configuration, chosen by the `type` field
/// (`memory`, `json`, `sqlite` or `graph`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BackendConfig {
    /// The in-memory reference store.
    Memory(MemoryConfig),
    /// The JSON file adapter.
    Json(JsonConfig),
    /// The SQLite adapter.
    Sqlite(SqliteConfig),
    /// The FalkorDB graph adapter.
    Graph(GraphConfig),
}

impl BackendConfig {
    /// The backend's name, as the `type` field spells it.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Json(_) => "json",
            Self::Sqlite(_) => "sqlite",
            Self::Graph(_) => "graph",
        }
    }

    /// The common settings.
    pub fn common(&self) -> &StorageConfig {
        match self {
            Self::Memory(c) => &c.common,
            Self::Json(c) => &c.common,
            Self::Sqlite(c) => &c.common,
            Self::Graph(c) => &c.common,
        }
    }

    /// Checks the chosen adapter's configuration.
    ///
    /// # Errors
    /// `InvalidConfig` as the adapter's own `validate` says, with a `backend` recorded.
    pub fn validate(&self) -> Result<()> {
        let result = match self {
            Self::Memory(c) => c.validate(),
            Self::Json(c) => c.validate(),
            Self::Sqlite(c) => c.validate(),
            Self::Graph(c) => c.validate(),
        };
        result.map_err(|e| e.with_backend(self.backend_name()))
    }

    /// Parses a configuration from text, without validating it.
    ///
    /// Unlike `parse_config::<BackendConfig>`, this reads the `type` first and then
    /// parses the text as that adapter's configuration directly. serde has to buffer
    /// an internally tagged enum's content, and YAML errors raised from the buffer lose
    /// their position; the direct parse keeps every line and column.
    ///
    /// # Errors
    /// As [`parse_config`].
    pub fn parse(text: &str, format: ConfigFormat) -> Result<Self> {
        #[derive(Deserialize)]
        struct Probe {
            #[serde(rename = "type")]
            kind: Option<String>,
        }
        let probe: Probe = parse_config(text, format)?;
        match probe.kind.as_deref() {
            Some("memory") => parse_config(text, format).map(Self::Memory),
            Some("json") => parse_config(text, format).map(Self::Json),
            Some("sqlite") => parse_config(text, format).map(Self::Sqlite),
            Some("graph") => parse_config(text, format).map(Self::Graph),
            // serde's own message names the missing or unknown tag and the valid ones.
            _ => parse_config(text, format),
        }
    }

    /// Loads a configuration file (syntax by extension, as [`load_config`]) and
    /// validates it.
    ///
    /// # Errors
    /// As [`load_config`] and [`validate`](Self::validate).
    pub fn load(path: &Path) -> Result<Self> {
        let (text, format) = read_config_text(path)?;
        let cfg = Self::parse(&text, format).map_err(|e| e.with_context("file", path.display()))?;
        cfg.validate()
            .map_err(|e| e.with_context("file", path.display()))?;
        Ok(cfg)
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<BackendConfig>();
    assert_send_sync::<Secret>();
};

/// The syntax of a configuration text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigFormat {
    /// TOML (`.toml`).
    Toml,
    /// YAML (`.yaml`, `.yml`), parsed by `serde-saphyr`.
    Yaml,
    /// JSON (`.json`).
    Json,
}

impl ConfigFormat {
    /// The format a file's extension names (case-insensitive).
    ///
    /// # Errors
    /// `InvalidConfig` for any other extension, naming the supported ones.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("toml") => Ok(Self::Toml),
            Some("yaml" | "yml") => Ok(Self::Yaml),
            Some("json") => Ok(Self::Json),
            _ => Err(invalid(
                "configuration file extension is not supported (expected .toml, .yaml, .yml or .json)",
            )
            .with_context("file", path.display())),
        }
    }

    /// The format's name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Toml => "toml",
            Self::Yaml => "yaml",
            Self::Json => "json",
        }
    }
}

impl fmt::Display for ConfigFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The 1-based line and column of a byte offset in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Folds a parser's message onto one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn parse_error(
    format: ConfigFormat,
    message: &str,
    position: Option<(u64, u64)>,
    source: impl Into<crate::BoxError>,
) -> StorageError {
    let mut err = invalid(format!(
        "invalid {format} configuration: {}",
        one_line(message)
    ))
    .with_context("format", format);
    if let Some((line, column)) = position {
        err = err
            .with_context("line", line)
            .with_context("column", column);
    }
    err.with_source(source)
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Parses a configuration from text.
///
/// # Errors
/// `InvalidConfig` when the text is not valid `format` or does not fit `C` (unknown
/// field, unknown `type`, wrong value type), with the `line` and `column` the parser
/// reports as context.
pub fn parse_config<C: DeserializeOwned>(text: &str, format: ConfigFormat) -> Result<C> {
    match format {
        ConfigFormat::Toml => toml::from_str(text).map_err(|err| {
            let position = err.span().map(|span| {
                let (line, column) = line_column(text, span.start);
                (to_u64(line), to_u64(column))
            });
            let message = err.message().to_owned();
            parse_error(format, &message, position, err)
        }),
        ConfigFormat::Yaml => serde_saphyr::from_str(text).map_err(|err| {
            let position = err.location().map(|loc| (loc.line(), loc.column()));
            let message = err.without_snippet().to_string();
            parse_error(
                format,
                &message,
                position,
                err.without_snippet().to_string(),
            )
        }),
        ConfigFormat::Json => serde_json::from_str(text).map_err(|err| {
            let position = (err.line() > 0).then(|| (to_u64(err.line()), to_u64(err.column())));
            parse_error(format, &err.to_string(), position, err)
        }),
    }
}

/// Loads a configuration file, choosing the syntax by extension (`.toml`, `.yaml`,
/// `.yml`, `.json`).
///
/// ```no_run
/// use std::path::Path;
/// use storage_core::config::{SqliteConfig, load_config};
///
/// let cfg: SqliteConfig = load_config(Path::new("storage.yaml"))?;
/// cfg.validate()?;
/// # Ok::<(), storage_core::StorageError>(())
/// ```
///
/// # Errors
/// `InvalidConfig` for another extension, text that is not UTF-8, or a parse error
/// (with `file`, `line` and `column` context); `Io` (with `file`) when the file cannot
/// be read.
pub fn load_config<C: DeserializeOwned>(path: &Path) -> Result<C> {
    let (text, format) = read_config_text(path)?;
    parse_config(&text, format).map_err(|e| e.with_context("file", path.display()))
}

/// Reads a configuration file as UTF-8 text and picks its syntax by extension.
fn read_config_text(path: &Path) -> Result<(String, ConfigFormat)> {
    let format = ConfigFormat::from_path(path)?;
    let bytes = std::fs::read(path).map_err(|err| {
        StorageError::from(err)
            .with_operation("load_config")
            .with_context("file", path.display())
    })?;
    let text = String::from_utf8(bytes).map_err(|err| {
        invalid(format!(
            "configuration file is not utf-8 (invalid byte at offset {})",
            err.utf8_error().valid_up_to()
        ))
        .with_context("file", path.display())
        .with_source(err)
    })?;
    Ok((text, format))
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    const TOML_JSON: &str = r#"
type = "json"
id = "users"
debug = true
filePath = "data/users.json"
pretty = false
durability = { group = { max_writes = 8 } }
lock = { wait = { timeout_ms = 250 } }

[hints]
expectedSize = 1000
access_pattern = "read-heavy"
cache = { max_entries = 10, ttlMs = 5000 }

[serialization]
format = "json"
"#;

    const YAML_SQLITE: &str = "
type: sqlite
database: ':memory:'
tableName: users
synchronous: FULL
busy_timeout_ms: 250
serialization:
  format: msgpack
  compression: lz4
hints:
  access_pattern: write_heavy
";

    const JSON_GRAPH: &str = r#"{
  "type": "graph",
  "url": "redis://admin:s3cr3t-url@localhost:6379/0",
  "username": "admin",
  "password": "hunter2-very-secret",
  "tls": { "caFile": "/etc/ca.pem" },
  "serialization": { "format": "postcard", "compression": "snappy" }
}"#;

    #[test]
    fn toml_json_config_parses_with_aliases_and_defaults() -> TestResult {
        let cfg: BackendConfig = parse_config(TOML_JSON, ConfigFormat::Toml)?;
        cfg.validate()?;
        let BackendConfig::Json(json) = cfg else {
            return Err("expected json".into());
        };
        assert_eq!(json.common.id.as_deref(), Some("users"));
        assert!(json.common.debug);
        assert_eq!(json.common.hints.expected_size, Some(1000));
        assert_eq!(
            json.common.hints.access_pattern,
            Some(AccessPattern::ReadHeavy)
        );
        assert_eq!(
            json.common.hints.cache,
            Some(CacheConfig {
                max_entries: Some(10),
                ttl_ms: Some(5000)
            })
        );
        assert_eq!(json.file_path, PathBuf::from("data/users.json"));
        assert_eq!(json.encoding, "utf-8");
        assert!(!json.pretty);
        assert!(json.atomic);
        assert_eq!(
            json.durability,
            Durability::Group {
                max_writes: 8,
                max_delay_ms: 10
            }
        );
        assert_eq!(json.lock, LockMode::Wait { timeout_ms: 250 });
        assert_eq!(json.compact_after, 10_000);
        Ok(())
    }

    #[test]
    fn yaml_sqlite_config_parses() -> TestResult {
        let cfg: BackendConfig = parse_config(YAML_SQLITE, ConfigFormat::Yaml)?;
        cfg.validate()?;
        assert_eq!(cfg.backend_name(), "sqlite");
        assert_eq!(cfg.common().serialization.format, Format::MessagePack);
        assert_eq!(cfg.common().serialization.compression, Compression::Lz4);
        let BackendConfig::Sqlite(s) = cfg else {
            return Err("expected sqlite".into());
        };
        assert!(s.is_memory());
        assert_eq!(s.table_name, "users");
        assert_eq!(s.synchronous, SynchronousLevel::Full);
        assert_eq!(s.synchronous.as_pragma(), "FULL");
        assert_eq!(s.busy_timeout_ms, 250);
        assert!(s.wal);
        assert!(!s.foreign_keys);
        assert_eq!(s.read_pool_size, 4);
        assert!(!s.integrity_check_on_open);
        assert_eq!(
            s.common.hints.access_pattern,
            Some(AccessPattern::WriteHeavy)
        );
        Ok(())
    }

    #[test]
    fn json_graph_config_parses_and_never_prints_the_password() -> TestResult {
        let cfg: BackendConfig = parse_config(JSON_GRAPH, ConfigFormat::Json)?;
        cfg.validate()?;
        let debug = format!("{cfg:?} {cfg:#?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("s3cr3t-url"), "{debug}");
        assert!(debug.contains("localhost:6379"));
        let serialized = serde_json::to_string(&cfg)?;
        assert!(!serialized.contains("hunter2"), "{serialized}");
        let BackendConfig::Graph(g) = cfg else {
            return Err("expected graph".into());
        };
        assert_eq!(
            g.password.as_ref().map(Secret::expose),
            Some("hunter2-very-secret")
        );
        assert_eq!(g.database, "storage");
        assert_eq!(g.label, "Entry");
        assert_eq!(
            g.tls,
            Some(TlsConfig {
                ca_file: Some(PathBuf::from("/etc/ca.pem")),
                insecure_skip_verify: false
            })
        );
        assert_eq!(g.common.serialization.format, Format::Postcard);
        Ok(())
    }

    #[test]
    fn minimal_configs_take_their_defaults() -> TestResult {
        let memory: BackendConfig = parse_config(r#"{"type":"memory"}"#, ConfigFormat::Json)?;
        assert_eq!(memory, BackendConfig::Memory(MemoryConfig::default()));
        let json: JsonConfig = parse_config("file_path = 'a.json'", ConfigFormat::Toml)?;
        assert_eq!(json, JsonConfig::new("a.json"));
        let sqlite: SqliteConfig = parse_config("database: x.db", ConfigFormat::Yaml)?;
        assert_eq!(sqlite, SqliteConfig::new("x.db"));
        let graph: GraphConfig = parse_config("{}", ConfigFormat::Json)?;
        assert_eq!(graph, GraphConfig::default());
        let common: StorageConfig = parse_config("", ConfigFormat::Toml)?;
        assert_eq!(common, StorageConfig::default());
        Ok(())
    }

    #[test]
    fn serialized_configs_read_back() -> TestResult {
        let mut s = SqliteConfig::new("db.sqlite");
        s.common.id = Some("x".into());
        s.synchronous = SynchronousLevel::Extra;
        let cfg = BackendConfig::Sqlite(s);
        let text = serde_json::to_string(&cfg)?;
        assert_eq!(
            parse_config::<BackendConfig>(&text, ConfigFormat::Json)?,
            cfg
        );
        let text = toml::to_string(&cfg)?;
        assert_eq!(
            parse_config::<BackendConfig>(&text, ConfigFormat::Toml)?,
            cfg
        );
        let j = BackendConfig::Json(JsonConfig {
            durability: Durability::Group {
                max_writes: 3,
                max_delay_ms: 4,
            },
            lock: LockMode::Wait { timeout_ms: 5 },
            ..JsonConfig::new("f.json")
        });
        let text = serde_json::to_string(&j)?;
        assert_eq!(parse_config::<BackendConfig>(&text, ConfigFormat::Json)?, j);
        Ok(())
    }

    fn expect_invalid(result: Result<impl fmt::Debug>) -> StorageError {
        let err = result.expect_err("must be rejected");
        assert_eq!(err.code(), ErrorCode::InvalidConfig, "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
        err
    }

    #[test]
    fn unknown_type_and_unknown_fields_are_rejected_with_a_position() {
        for (text, named) in [
            ("type = \"redis\"\nurl = \"x\"", "redis"),
            ("url = \"x\"", "type"),
        ] {
            let err = expect_invalid(BackendConfig::parse(text, ConfigFormat::Toml));
            assert!(err.message().contains(named), "{err}");
            assert_eq!(err.context_value("line"), Some("1"), "{err}");
            expect_invalid(parse_config::<BackendConfig>(text, ConfigFormat::Toml));
        }
        let err = expect_invalid(BackendConfig::parse(
            "type: redis\nurl: x\n",
            ConfigFormat::Yaml,
        ));
        assert!(err.message().contains("redis"), "{err}");

        let err = expect_invalid(BackendConfig::parse(
            "type = \"sqlite\"\ndatabase = \"a\"\ntabel_name = \"x\"",
            ConfigFormat::Toml,
        ));
        assert!(err.message().contains("tabel_name"), "{err}");
        assert_eq!(err.context_value("line"), Some("3"), "{err}");
        expect_invalid(parse_config::<BackendConfig>(
            "type = \"sqlite\"\ndatabase = \"a\"\ntabel_name = \"x\"",
            ConfigFormat::Toml,
        ));

        let yaml = "type: json\nfile_path: a.json\npretty: maybe\n";
        let err = expect_invalid(BackendConfig::parse(yaml, ConfigFormat::Yaml));
        assert_eq!(err.context_value("line"), Some("3"), "{err}");
        expect_invalid(parse_config::<BackendConfig>(yaml, ConfigFormat::Yaml));

        let json = "{\n  \"type\": \"json\",\n  \"file_path\": 3\n}";
        let err = expect_invalid(BackendConfig::parse(json, ConfigFormat::Json));
        assert_eq!(err.context_value("line"), Some("3"), "{err}");
        // Through serde's buffered enum content the parser knows no position.
        expect_invalid(parse_config::<BackendConfig>(json, ConfigFormat::Json));

        expect_invalid(parse_config::<SqliteConfig>(
            "wal = true",
            ConfigFormat::Toml,
        ));
        expect_invalid(parse_config::<StorageConfig>(
            "[serialization]\nformat = 'xml'",
            ConfigFormat::Toml,
        ));
        expect_invalid(parse_config::<StorageConfig>(
            "[hints]\naccess_pattern = 'diagonal'",
            ConfigFormat::Toml,
        ));
        expect_invalid(BackendConfig::parse("[1, 2]", ConfigFormat::Json));
        expect_invalid(BackendConfig::parse(
            "type = 'json'\nfile_path = ",
            ConfigFormat::Toml,
        ));
    }

    #[test]
    fn durability_and_lock_modes_parse_in_every_syntax() -> TestResult {
        let group = Durability::Group {
            max_writes: 8,
            max_delay_ms: 10,
        };
        let yaml = "file_path: a\ndurability:\n  group:\n    max_writes: 8\nlock: fail\n";
        let j: JsonConfig = parse_config(yaml, ConfigFormat::Yaml)?;
        assert_eq!((j.durability, j.lock), (group, LockMode::Fail));
        let json = r#"{"file_path":"a","durability":"fsync-each","lock":{"wait":{}}}"#;
        let j: JsonConfig = parse_config(json, ConfigFormat::Json)?;
        assert_eq!(j.durability, Durability::FsyncEach);
        assert_eq!(j.lock, LockMode::Wait { timeout_ms: 10_000 });
        let toml = "file_path = 'a'\ndurability = 'fsync_each'\n[lock.wait]\ntimeout_ms = 1";
        let j: JsonConfig = parse_config(toml, ConfigFormat::Toml)?;
        assert_eq!(j.lock, LockMode::Wait { timeout_ms: 1 });
        expect_invalid(parse_config::<JsonConfig>(
            "file_path = 'a'\ndurability = 'sometimes'",
            ConfigFormat::Toml,
        ));
        let zero = JsonConfig {
            durability: Durability::Group {
                max_writes: 0,
                max_delay_ms: 1,
            },
            ..JsonConfig::new("a")
        };
        expect_invalid(zero.validate());
        Ok(())
    }

    #[test]
    fn an_adapter_config_accepts_only_its_own_type() -> TestResult {
        let j: JsonConfig = parse_config("type = 'json'\nfile_path = 'a'", ConfigFormat::Toml)?;
        assert_eq!(j, JsonConfig::new("a"));
        let err = expect_invalid(parse_config::<JsonConfig>(
            "type = 'sqlite'\nfile_path = 'a'",
            ConfigFormat::Toml,
        ));
        assert!(err.message().contains("sqlite"), "{err}");
        Ok(())
    }

    #[test]
    fn bad_table_names_are_rejected() {
        for bad in [
            "",
            "1table",
            "x; DROP TABLE y",
            "users\"",
            "a-b",
            "tbl name",
            "sqlite_master",
            "SQLITE_custom",
            "Sqlite_x",
            "_storage_changes",
            "_STORAGE",
            "a__b",
            "users\0",
            "ünïcode",
            &"t".repeat(64),
        ] {
            let cfg = SqliteConfig {
                table_name: bad.to_owned(),
                ..SqliteConfig::memory()
            };
            let err = expect_invalid(cfg.validate());
            assert_eq!(err.context_value("field"), Some("table_name"), "{bad}");
        }
        for good in ["users", "_t", "T_1", "sqlite", "sqlitex_1", &"t".repeat(63)] {
            let cfg = SqliteConfig {
                table_name: good.to_owned(),
                ..SqliteConfig::memory()
            };
            assert!(cfg.validate().is_ok(), "{good}");
        }
        expect_invalid(SqliteConfig::new("").validate());
        expect_invalid(SqliteConfig::new("a\0b").validate());
        expect_invalid(SqliteConfig::memory().read_pool_size(0).validate());
        expect_invalid(SqliteConfig::memory().read_pool_size(65).validate());
        expect_invalid(SqliteConfig::memory().busy_timeout_ms(3_600_001).validate());
        let built = SqliteConfig::new("x.db")
            .table_name("users")
            .wal(false)
            .foreign_keys(true)
            .synchronous(SynchronousLevel::Off)
            .busy_timeout_ms(1)
            .read_pool_size(2)
            .integrity_check_on_open(true)
            .change_log(false);
        assert!(built.validate().is_ok());
        assert_eq!(built.path(), Some(PathBuf::from("x.db")));
        assert_eq!(SqliteConfig::memory().path(), None);
    }

    #[test]
    fn only_utf8_encodings_are_accepted() {
        for ok in ["utf-8", "UTF-8", "utf8", "Utf8"] {
            let cfg = JsonConfig {
                encoding: ok.to_owned(),
                ..JsonConfig::new("a.json")
            };
            assert!(cfg.validate().is_ok(), "{ok}");
        }
        for bad in ["latin1", "utf-16", "ascii", ""] {
            let cfg = JsonConfig {
                encoding: bad.to_owned(),
                ..JsonConfig::new("a.json")
            };
            let err = expect_invalid(cfg.validate());
            assert!(err.message().contains("utf-8"), "{err}");
            assert!(err.message().contains(&format!("{bad:?}")), "{err}");
        }
        expect_invalid(JsonConfig::new("").validate());
        expect_invalid(
            JsonConfig {
                compact_after: 0,
                ..JsonConfig::new("a.json")
            }
            .validate(),
        );
    }

    #[test]
    fn graph_names_and_urls_are_validated() {
        for (database, label) in [
            ("g-1", "Entry"),
            ("g", "Entry`) DETACH DELETE n //"),
            ("", "E"),
        ] {
            let cfg = GraphConfig {
                database: database.to_owned(),
                label: label.to_owned(),
                ..GraphConfig::default()
            };
            expect_invalid(cfg.validate());
        }
        let cfg = GraphConfig {
            url: Some("http://user:pw@host".into()),
            ..GraphConfig::default()
        };
        let err = expect_invalid(cfg.validate());
        assert!(!err.to_string().contains("pw"), "{err}");
        for url in [
            "redis://localhost:6379",
            "falkors://h:1",
            "unix:///tmp/s.sock",
        ] {
            let cfg = GraphConfig {
                url: Some(url.into()),
                ..GraphConfig::default()
            };
            assert!(cfg.validate().is_ok(), "{url}");
        }
    }

    #[test]
    fn common_settings_are_validated_by_every_adapter() {
        let mut common = StorageConfig::default();
        common.serialization.max_decoded_len = 0;
        for cfg in [
            BackendConfig::Memory(MemoryConfig {
                common: common.clone(),
                ..MemoryConfig::default()
            }),
            BackendConfig::Json(JsonConfig {
                common: common.clone(),
                ..JsonConfig::new("a.json")
            }),
            BackendConfig::Sqlite(SqliteConfig {
                common: common.clone(),
                ..SqliteConfig::memory()
            }),
            BackendConfig::Graph(GraphConfig {
                common: common.clone(),
                ..GraphConfig::default()
            }),
        ] {
            let err = expect_invalid(cfg.validate());
            assert_eq!(err.backend(), Some(cfg.backend_name()));
        }
        let empty_id = StorageConfig {
            id: Some(String::new()),
            ..StorageConfig::default()
        };
        expect_invalid(empty_id.validate());
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://u:p@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact_url("redis://:p@h"), "redis://***@h");
        assert_eq!(redact_url("redis://h:1/x@y"), "redis://h:1/x@y");
        assert_eq!(redact_url("no scheme"), "no scheme");
    }

    #[test]
    fn files_load_by_extension() -> TestResult {
        let dir = tempfile::tempdir()?;
        for (name, text) in [
            ("a.toml", TOML_JSON),
            ("b.YAML", YAML_SQLITE),
            ("c.yml", YAML_SQLITE),
            ("d.json", JSON_GRAPH),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text)?;
            let cfg = BackendConfig::load(&path)?;
            assert!(["json", "sqlite", "graph"].contains(&cfg.backend_name()));
        }
        let path = dir.path().join("e.ini");
        std::fs::write(&path, "x")?;
        let err = expect_invalid(load_config::<BackendConfig>(&path));
        assert!(
            err.context_value("file")
                .is_some_and(|f| f.ends_with("e.ini"))
        );

        let missing = dir.path().join("missing.toml");
        let err = load_config::<BackendConfig>(&missing).expect_err("missing file");
        assert_eq!(err.code(), ErrorCode::Io);
        assert!(
            err.context_value("file")
                .is_some_and(|f| f.ends_with("missing.toml"))
        );

        let broken = dir.path().join("broken.yaml");
        std::fs::write(&broken, "type: sqlite\ndatabase: [unclosed\n")?;
        let err = expect_invalid(load_config::<BackendConfig>(&broken));
        assert!(
            err.context_value("file")
                .is_some_and(|f| f.ends_with("broken.yaml"))
        );
        assert!(err.context_value("line").is_some(), "{err}");

        let latin1 = dir.path().join("latin1.toml");
        std::fs::write(&latin1, b"type = \"memory\"\nid = \"caf\xe9\"\n")?;
        expect_invalid(load_config::<BackendConfig>(&latin1));

        let bad_table = dir.path().join("bad.toml");
        std::fs::write(
            &bad_table,
            "type = 'sqlite'\ndatabase = 'a'\ntable_name = 'x; DROP TABLE y'",
        )?;
        let err = expect_invalid(BackendConfig::load(&bad_table));
        assert_eq!(err.backend(), Some("sqlite"));
        assert!(err.context_value("file").is_some());
        Ok(())
    }

    #[test]
    fn secrets_never_print() -> TestResult {
        let s: Secret = serde_json::from_str("\"pa55\"")?;
        assert_eq!(s.expose(), "pa55");
        assert_eq!(format!("{s}|{s:?}|{s:#?}"), "***|***|***");
        assert_eq!(serde_json::to_string(&s)?, "\"***\"");
        Ok(())
    }
}
