//! Dotted field paths.

use crate::error::{ErrorCode, Result, StorageError};
use crate::types::Document;

/// The longest field path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 1024;

/// A validated dotted field path (`address.city`, `tags.0`).
///
/// A segment written in canonical decimal (`0`, `17`, not `01` or `+1`) is an array
/// index when it meets an array; any segment is an object key when it meets an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath {
    raw: String,
    segments: Vec<String>,
    /// The array index each segment names, parsed once at compile time.
    indices: Vec<Option<usize>>,
}

fn invalid(message: &'static str, raw: &str) -> StorageError {
    let shown: String = raw.chars().take(64).collect();
    StorageError::new(ErrorCode::InvalidQuery, message).with_context("path", shown.escape_debug())
}

fn parse_index(segment: &str) -> Option<usize> {
    let canonical = !segment.is_empty()
        && segment.bytes().all(|b| b.is_ascii_digit())
        && (segment == "0" || !segment.starts_with('0'));
    if canonical {
        segment.parse().ok()
    } else {
        None
    }
}

impl FieldPath {
    /// Parses and validates a path.
    ///
    /// # Errors
    /// `InvalidQuery` for an empty path, an empty segment, a NUL byte, or a path over 1024 bytes.
    pub fn parse(raw: &str) -> Result<Self> {
        if raw.is_empty() {
            return Err(invalid("empty field path", raw));
        }
        if raw.len() > MAX_PATH_LEN {
            return Err(invalid("field path longer than 1024 bytes", raw));
        }
        if raw.contains('\0') {
            return Err(invalid("field path contains a nul byte", raw));
        }
        let segments: Vec<String> = raw.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(invalid("field path has an empty segment", raw));
        }
        let indices = segments.iter().map(|s| parse_index(s)).collect();
        Ok(Self {
            raw: raw.to_owned(),
            segments,
            indices,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The segments.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The array index segment `i` names, when it is written in canonical decimal
    /// (`0`, `12`; not `01`); such a segment indexes an array and names a member of an object.
    pub fn array_index(&self, i: usize) -> Option<usize> {
        self.indices.get(i).copied().flatten()
    }

    /// The value at this path, if present. A numeric segment indexes an array.
    ///
    /// This is the single-valued resolution `order_by`, `select` and the aggregate
    /// stages use: a non-numeric segment that meets an array (or any segment that
    /// meets a scalar) makes the value missing.
    pub fn get<'a>(&self, doc: &'a Document) -> Option<&'a Document> {
        let mut current = doc;
        for (segment, index) in self.segments.iter().zip(&self.indices) {
            current = match current {
                Document::Object(map) => map.get(segment.as_str())?,
                Document::Array(items) => items.get((*index)?)?,
                _ => return None,
            };
        }
        Some(current)
    }

    /// Every value this path reaches, as filter clauses see them.
    ///
    /// Like [`FieldPath::get`], except that a non-numeric segment meeting an array
    /// applies to each element of the array that is an object (MongoDB-style), so
    /// `items.name` on `{"items": [{"name": "a"}, {"name": "b"}]}` yields `"a"` and `"b"`.
    /// Elements that are arrays are not descended into by a non-numeric segment.
    pub fn values<'a>(&self, doc: &'a Document) -> Vec<&'a Document> {
        let mut out = Vec::new();
        self.visit(doc, &mut |v| {
            out.push(v);
            false
        });
        out
    }

    /// Calls `f` on every value [`FieldPath::values`] yields, stopping as soon as `f`
    /// returns `true`; returns whether it stopped.
    pub(crate) fn visit<'a>(
        &self,
        doc: &'a Document,
        f: &mut impl FnMut(&'a Document) -> bool,
    ) -> bool {
        visit_from(&self.segments, &self.indices, doc, f)
    }
}

fn visit_from<'a>(
    segments: &[String],
    indices: &[Option<usize>],
    value: &'a Document,
    f: &mut impl FnMut(&'a Document) -> bool,
) -> bool {
    let (Some(segment), Some(index)) = (segments.first(), indices.first()) else {
        return f(value);
    };
    let (rest_segments, rest_indices) = (&segments[1..], &indices[1..]);
    match value {
        Document::Object(map) => match map.get(segment.as_str()) {
            Some(next) => visit_from(rest_segments, rest_indices, next, f),
            None => false,
        },
        Document::Array(items) => match index {
            Some(i) => match items.get(*i) {
                Some(next) => visit_from(rest_segments, rest_indices, next, f),
                None => false,
            },
            None => items.iter().any(|item| {
                let Document::Object(map) = item else {
                    return false;
                };
                match map.get(segment.as_str()) {
                    Some(next) => visit_from(rest_segments, rest_indices, next, f),
                    None => false,
                }
            }),
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parse_rejects_bad_paths_with_invalid_query() {
        for bad in ["", ".", "a.", ".a", "a..b", "a\0b"] {
            let err = FieldPath::parse(bad).err();
            assert_eq!(
                err.map(|e| e.code()),
                Some(ErrorCode::InvalidQuery),
                "{bad:?}"
            );
        }
        let long = "a".repeat(MAX_PATH_LEN + 1);
        assert_eq!(
            FieldPath::parse(&long).err().map(|e| e.code()),
            Some(ErrorCode::InvalidQuery)
        );
        assert!(FieldPath::parse(&"a".repeat(MAX_PATH_LEN)).is_ok());
    }

    #[test]
    fn get_follows_dots_and_array_indices() -> Result<()> {
        let doc = json!({"address": {"city": "Oslo"}, "tags": ["x", "y"], "m": {"0": "zero"}});
        assert_eq!(
            FieldPath::parse("address.city")?.get(&doc),
            Some(&json!("Oslo"))
        );
        assert_eq!(FieldPath::parse("tags.1")?.get(&doc), Some(&json!("y")));
        assert_eq!(FieldPath::parse("tags.2")?.get(&doc), None);
        assert_eq!(FieldPath::parse("tags.01")?.get(&doc), None);
        assert_eq!(FieldPath::parse("tags.01")?.array_index(1), None);
        assert_eq!(FieldPath::parse("tags.10")?.array_index(1), Some(10));
        assert_eq!(FieldPath::parse("tags.10")?.array_index(0), None);
        assert_eq!(FieldPath::parse("m.0")?.get(&doc), Some(&json!("zero")));
        assert_eq!(FieldPath::parse("address.city.x")?.get(&doc), None);
        assert_eq!(FieldPath::parse("missing")?.get(&doc), None);
        Ok(())
    }

    #[test]
    fn get_does_not_fan_out_but_values_does() -> Result<()> {
        let doc = json!({"items": [{"name": "a"}, {"qty": 1}, {"name": "b"}, ["n"], 3]});
        let path = FieldPath::parse("items.name")?;
        assert_eq!(path.get(&doc), None);
        assert_eq!(path.values(&doc), vec![&json!("a"), &json!("b")]);
        assert_eq!(
            FieldPath::parse("items.0.name")?.values(&doc),
            vec![&json!("a")]
        );
        Ok(())
    }
}
