//! The adapter's configuration: [`GraphConfig`] from `storage-core` (seed 003's graph
//! config plus `label`), and the few settings the adapter adds as constants.
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `url` | none | `redis://`, `rediss://`, `falkor://`, `falkors://` or `unix://`; none starts an embedded server |
//! | `database` | `"storage"` | the graph's name (also its Redis key) |
//! | `label` | `"Entry"` | the node label of this handle's entries: `clear` only removes these |
//! | `username`, `password` | none | ACL credentials; the password never appears in `Debug` output or logs |
//! | `tls` | none | TLS through rustls (crate feature `tls`) |
//! | `serialization` (common) | JSON | the codec of stored values |

pub use storage_core::config::{GraphConfig, Secret, TlsConfig};

/// Change batches kept in each label's Redis change stream (trimmed with `MAXLEN ~`),
/// which bounds how far back a watcher can resume.
pub const STREAM_MAX_LEN: usize = 100_000;

/// Whether `name` is a plain Cypher identifier, safe to write in a query body.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The URL with any user-info replaced by `***`, for logs and `Debug`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let start = scheme_end + 3;
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..start], &url[start + at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_appear_in_debug_or_redacted_urls() {
        let config = GraphConfig {
            url: Some("redis://alice:s3cr3t@127.0.0.1:6379/0".into()),
            password: Some(Secret::new("hunter2")),
            ..GraphConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert_eq!(redact_url("redis://a:b@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact_url("unix:///tmp/x.sock"), "unix:///tmp/x.sock");
    }
}
