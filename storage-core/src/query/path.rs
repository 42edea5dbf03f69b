//! Dotted field paths.

use crate::error::Result;
use crate::types::Document;

/// A validated dotted field path (`address.city`, `tags.0`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath {
    raw: String,
    segments: Vec<String>,
}

impl FieldPath {
    /// Parses and validates a path.
    ///
    /// # Errors
    /// `InvalidQuery` for an empty path, an empty segment, a NUL byte, or a path over 1024 bytes.
    pub fn parse(raw: &str) -> Result<Self> {
        let _ = raw;
        todo!("query helper")
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The segments.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The value at this path, if present. A numeric segment indexes an array.
    pub fn get<'a>(&self, doc: &'a Document) -> Option<&'a Document> {
        let _ = doc;
        todo!("query helper")
    }
}
