//! Rows on their way from a connection thread to the caller, and the partial parse the
//! query evaluator needs.
//!
//! A connection thread copies the rows it read into one buffer ([`RowText`]) and the
//! caller decodes each value as it takes it. Decoding where the value is used keeps
//! every allocation of the value on the thread that later frees it (a value built on
//! one thread and dropped on another costs the allocator a slow path per allocation),
//! and the thread is free for the next read sooner.
//!
//! The evaluator reads only the fields a query names, so candidates are parsed into a
//! document holding just those top-level fields ([`parse_fields`]); the value itself is
//! decoded straight from the stored text, once, for the entries returned.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use storage_core::query::FieldPath;
use storage_core::{Document, ErrorCode, Filter, Query, Result, StorageError, StorageValue};

/// `(key, stored JSON)` rows in one text buffer.
#[derive(Debug, Default)]
pub(crate) struct RowText {
    text: String,
    /// Per row: where its key ends and where its JSON ends (each starts where the
    /// previous part ended).
    ends: Vec<(usize, usize)>,
}

impl RowText {
    /// An empty buffer for about `rows` rows.
    pub(crate) fn with_capacity(rows: usize) -> Self {
        Self {
            text: String::with_capacity(rows * 400),
            ends: Vec::with_capacity(rows),
        }
    }

    /// Appends a row.
    pub(crate) fn push(&mut self, key: &str, json: &str) {
        self.text.push_str(key);
        let key_end = self.text.len();
        self.text.push_str(json);
        self.ends.push((key_end, self.text.len()));
    }

    /// The number of rows.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Row `i`: its key and stored JSON.
    pub(crate) fn get(&self, i: usize) -> Option<(&str, &str)> {
        let &(key_end, json_end) = self.ends.get(i)?;
        let start = match i.checked_sub(1) {
            Some(prev) => self.ends.get(prev).map_or(0, |e| e.1),
            None => 0,
        };
        Some((
            self.text.get(start..key_end)?,
            self.text.get(key_end..json_end)?,
        ))
    }

    /// The key of the last row.
    pub(crate) fn last_key(&self) -> Option<&str> {
        self.len()
            .checked_sub(1)
            .and_then(|i| self.get(i))
            .map(|(k, _)| k)
    }
}

/// Decodes a stored value straight into the value type: `Corrupted` when the text is not
/// JSON at all, `SerializationFailed` when it does not fit the type.
pub(crate) fn decode_stored<T: StorageValue>(
    json: &str,
    key: &str,
    operation: &'static str,
) -> Result<T> {
    serde_json::from_str(json).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            ErrorCode::Corrupted
        } else {
            ErrorCode::SerializationFailed
        };
        StorageError::new(
            code,
            format!("stored value does not fit the value type: {e}"),
        )
        .with_operation(operation)
        .with_backend("sqlite")
        .with_context("type", std::any::type_name::<T>())
        .with_context("key", key.escape_debug())
        .with_source(e)
    })
}

/// Which top-level fields of a stored document to parse.
#[derive(Debug, Clone)]
pub(crate) enum Fields {
    /// The whole document.
    All,
    /// Only these top-level fields (of a document that is an object; any other
    /// document is parsed whole).
    Only(Vec<String>),
}

impl Fields {
    /// The top-level fields `query` reads: those its filter, order and projection name.
    pub(crate) fn of_query(query: &Query) -> Self {
        let mut out = Vec::new();
        if let Some(filter) = &query.filter {
            filter_fields(filter, &mut out);
        }
        for o in &query.order_by {
            push_first(&o.field, &mut out);
        }
        for p in query.select.iter().flatten() {
            push_first(p, &mut out);
        }
        Self::Only(out)
    }

    /// The top-level fields `filter` reads.
    pub(crate) fn of_filter(filter: Option<&Filter>) -> Self {
        let mut out = Vec::new();
        if let Some(filter) = filter {
            filter_fields(filter, &mut out);
        }
        Self::Only(out)
    }
}

fn push_first(path: &str, out: &mut Vec<String>) {
    if let Ok(path) = FieldPath::parse(path)
        && let Some(first) = path.segments().first()
        && !out.contains(first)
    {
        out.push(first.clone());
    }
}

fn filter_fields(filter: &Filter, out: &mut Vec<String>) {
    match filter {
        // A nested clause reads below its field: the field's whole subtree is kept.
        Filter::Condition { field, .. } | Filter::Nested { field, .. } => push_first(field, out),
        Filter::And(items) | Filter::Or(items) => {
            for item in items {
                filter_fields(item, out);
            }
        }
        Filter::Not(inner) => filter_fields(inner, out),
    }
}

/// Parses stored JSON into the document the evaluator sees, keeping `fields`: the
/// evaluator's answer on it is the same as on the whole document, since it reads
/// nothing else.
pub(crate) fn parse_fields(
    json: &str,
    fields: &Fields,
    key: &str,
    operation: &'static str,
) -> Result<Document> {
    let parsed = match fields {
        Fields::Only(keep) if json.trim_start().starts_with('{') => {
            let mut de = serde_json::Deserializer::from_str(json);
            Projected(keep)
                .deserialize(&mut de)
                .and_then(|doc| de.end().map(|()| doc))
        }
        _ => serde_json::from_str(json),
    };
    parsed.map_err(|e| {
        StorageError::new(ErrorCode::Corrupted, "stored value is not json")
            .with_operation(operation)
            .with_backend("sqlite")
            .with_context("key", key.escape_debug())
            .with_source(e)
    })
}

/// An object with only the members named in `.0`; the others are checked and skipped.
struct Projected<'a>(&'a [String]);

impl<'de> DeserializeSeed<'de> for Projected<'_> {
    type Value = Document;

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<Document, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Projected<'_> {
    type Value = Document;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a json object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Document, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(Key(name)) = map.next_key::<Key<'de>>()? {
            if self.0.iter().any(|k| *k == name) {
                // A repeated member replaces the earlier one, as in a whole parse.
                out.insert(name.into_owned(), map.next_value::<Document>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Document::Object(out))
    }
}

/// A member name, borrowed from the text when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use storage_core::query::field;

    #[test]
    fn rows_come_back_as_pushed() {
        let mut rows = RowText::with_capacity(2);
        rows.push("a", "{\"x\":1}");
        rows.push("bé", "[2]");
        rows.push("c", "");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows.get(0), Some(("a", "{\"x\":1}")));
        assert_eq!(rows.get(1), Some(("bé", "[2]")));
        assert_eq!(rows.get(2), Some(("c", "")));
        assert_eq!(rows.get(3), None);
        assert_eq!(rows.last_key(), Some("c"));
    }

    #[test]
    fn a_partial_parse_keeps_only_the_named_fields() -> Result<()> {
        let text = r#"{"a": {"b": [1, 2]}, "c\u0041": "x", "d": 3, "a": {"b": 5}}"#;
        let keep = Fields::Only(vec!["a".into(), "cA".into()]);
        let doc = parse_fields(text, &keep, "k", "query")?;
        // The later "a" wins, as in a whole parse.
        assert_eq!(doc, json!({"a": {"b": 5}, "cA": "x"}));
        assert_eq!(
            parse_fields(" [1, {\"a\": 2}]", &keep, "k", "query")?,
            json!([1, {"a": 2}])
        );
        assert_eq!(
            parse_fields(text, &Fields::All, "k", "query")?,
            serde_json::from_str::<Document>(text)
                .map_err(|e| StorageError::new(ErrorCode::Corrupted, e.to_string()))?
        );
        Ok(())
    }

    #[test]
    fn broken_json_is_corrupted_even_in_a_skipped_field() {
        let keep = Fields::Only(vec!["a".into()]);
        for bad in [r#"{"a": 1, "b": tru}"#, r#"{"a": 1} x"#, r#"{"a": "#] {
            let err = parse_fields(bad, &keep, "k", "query").expect_err(bad);
            assert_eq!(err.code(), ErrorCode::Corrupted, "{bad}");
        }
        let err = decode_stored::<Vec<i64>>("[1,", "k", "get").expect_err("not json");
        assert_eq!(err.code(), ErrorCode::Corrupted);
        let err = decode_stored::<i64>("\"x\"", "k", "get").expect_err("not a number");
        assert_eq!(err.code(), ErrorCode::SerializationFailed);
    }

    #[test]
    fn a_query_reads_the_fields_it_names() {
        let q = Query::filter(
            field("a.b")
                .eq(1)
                .and(field("c").gt(2).or(field("a").exists(true))),
        )
        .order_by("d.e", storage_core::Direction::Asc)
        .select(["f", "c"]);
        let Fields::Only(names) = Fields::of_query(&q) else {
            panic!("a query names its fields")
        };
        assert_eq!(names, ["a", "c", "d", "f"]);
    }
}
