//! The adapter's configuration.
//!
//! Field names follow seed 003's graph config (`url`, `database`, `username`,
//! `password`, `tls`) plus `label`, which namespaces one handle's entries inside
//! the graph.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use storage_core::{ErrorCode, Result, StorageError};

/// The graph used when the configuration names none.
pub const DEFAULT_DATABASE: &str = "storage";
/// The node label used when the configuration names none.
pub const DEFAULT_LABEL: &str = "Entry";
/// The longest change stream kept per graph and label before old entries are trimmed.
pub const DEFAULT_STREAM_MAX_LEN: usize = 100_000;

/// A password or other secret: serialized as given, never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the one place that must send it to the server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// TLS settings; setting `tls` at all switches the connection to TLS.
///
/// Needs the crate feature `tls` (rustls); without it a config with `tls` is rejected
/// with `InvalidConfig` rather than silently connecting in the clear.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the certificate authority that signed the server's certificate
    /// (the system roots when absent).
    pub ca_file: Option<PathBuf>,
    /// PEM file of a client certificate, for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate. For tests only: it gives up authentication.
    pub insecure: bool,
}

/// Configuration of a [`crate::GraphStorage`].
///
/// # Defaults
/// - `url`: none, which starts an embedded server (see [`crate::EmbeddedServer`]);
/// - `database`: `"storage"` (the graph's name, also its Redis key);
/// - `label`: `"Entry"` (one label per handle: `clear` only removes this label's nodes);
/// - `username`, `password`, `tls`: none;
/// - `stream_max_len`: 100 000 change batches kept for watchers that resume.
///
/// # Example
/// ```
/// use storage_graph::GraphConfig;
/// let config: GraphConfig = serde_json::from_str(
///     r#"{"url": "redis://127.0.0.1:6379", "database": "shop", "label": "Order", "password": "hunter2"}"#,
/// ).unwrap();
/// assert_eq!(config.label, "Order");
/// assert!(!format!("{config:?}").contains("hunter2"));
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphConfig {
    /// `redis://`, `rediss://`, `redis+unix://` or `falkor://` URL of the server; none starts an embedded one.
    pub url: Option<String>,
    /// The graph's name.
    pub database: String,
    /// The node label of this handle's entries.
    pub label: String,
    /// ACL user name.
    pub username: Option<String>,
    /// Password (never in `Debug` output or logs).
    pub password: Option<Secret>,
    /// TLS settings.
    pub tls: Option<TlsConfig>,
    /// Change batches kept in the Redis stream (approximately, trimmed with `MAXLEN ~`).
    pub stream_max_len: usize,
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            url: None,
            database: DEFAULT_DATABASE.to_owned(),
            label: DEFAULT_LABEL.to_owned(),
            username: None,
            password: None,
            tls: None,
            stream_max_len: DEFAULT_STREAM_MAX_LEN,
        }
    }
}

impl fmt::Debug for GraphConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("database", &self.database)
            .field("label", &self.label)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("tls", &self.tls)
            .field("stream_max_len", &self.stream_max_len)
            .finish()
    }
}

impl GraphConfig {
    /// The default configuration: an embedded server, graph `storage`, label `Entry`.
    pub fn new() -> Self {
        Self::default()
    }

    /// A configuration for the server at `url`.
    pub fn with_url(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            ..Self::default()
        }
    }

    /// Sets the graph name.
    #[must_use]
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = database.into();
        self
    }

    /// Sets the label.
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Sets user name and password.
    #[must_use]
    pub fn credentials(mut self, username: Option<String>, password: impl Into<String>) -> Self {
        self.username = username;
        self.password = Some(Secret::new(password));
        self
    }

    /// Checks names and limits.
    ///
    /// # Errors
    /// `InvalidConfig` for an empty or oversized graph name, a label that is not a
    /// plain identifier (letters, digits, `_`, not starting with a digit), or a zero
    /// stream length.
    pub fn validate(&self) -> Result<()> {
        if self.database.is_empty() || self.database.len() > 256 || self.database.contains('\0')
        {
            return Err(invalid("database must be 1 to 256 bytes without nul"));
        }
        if !is_identifier(&self.label) || self.label.len() > 128 {
            return Err(invalid(
                "label must be an identifier of at most 128 bytes ([A-Za-z_][A-Za-z0-9_]*)",
            )
            .with_context("label", &self.label));
        }
        if self.stream_max_len == 0 {
            return Err(invalid("stream_max_len must be at least 1"));
        }
        if let Some(url) = &self.url {
            if url.is_empty() {
                return Err(invalid("url is empty"));
            }
        }
        Ok(())
    }
}

fn invalid(message: &'static str) -> StorageError {
    StorageError::new(ErrorCode::InvalidConfig, message).with_backend("graph")
}

/// Whether `name` is a plain Cypher identifier, safe to write unquoted.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The URL with any password replaced by `***`, for logs and `Debug`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let user_info = &authority[..at];
            let user = user_info.split(':').next().unwrap_or("");
            format!(
                "{}{}:***@{}",
                &url[..scheme_end + 3],
                user,
                &rest[at + 1..]
            )
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_appears_in_debug() {
        let config = GraphConfig::with_url("redis://alice:s3cr3t@127.0.0.1:6379/0")
            .credentials(Some("alice".into()), "hunter2");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("alice"));
        assert_eq!(format!("{}", Secret::new("x")), "***");
    }

    #[test]
    fn labels_must_be_identifiers() {
        assert!(GraphConfig::new().validate().is_ok());
        for bad in ["", "a b", "1abc", "a`b", "Entry}) DETACH DELETE n //"] {
            let err = GraphConfig::new().label(bad).validate().unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidConfig, "{bad}");
        }
    }

    #[test]
    fn defaults_apply_to_missing_fields() -> Result<(), serde_json::Error> {
        let config: GraphConfig = serde_json::from_str("{}")?;
        assert_eq!(config.database, DEFAULT_DATABASE);
        assert_eq!(config.label, DEFAULT_LABEL);
        assert!(config.url.is_none());
        Ok(())
    }
}
