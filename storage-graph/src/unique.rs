//! Unique indexes, checked in process under `WATCH`.
//!
//! FalkorDB's unique constraints compare single property values, while a unique index
//! here follows the evaluator: it files a document under every value its path reaches
//! (fanning out over arrays of objects), each element of a reached array, and the array
//! itself, with `1` and `1.0` equal; an explicit `null` counts unless the index is
//! sparse. So the check runs in process on the state read under the commit's `WATCH`:
//! if that state changes before `EXEC`, the commit is retried and checked again.
//!
//! To read only the entries that could conflict, every node carries, per unique index,
//! its terms as canonical strings (`` `u:<hex name>` ``), and the label's index *epoch*
//! (`ix`, left out at epoch 0) they were computed at. The epoch is a counter bumped, in the same
//! `MULTI`/`EXEC`, whenever a unique index is created (which also fills every node's
//! terms) or dropped. A commit reads the epoch under its `WATCH`, and the candidates
//! are the nodes holding one of its terms plus every node stamped with another epoch
//! (written by a handle that did not know the current indexes yet), whose terms are
//! recomputed from their documents.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde_json::Value;
use storage_core::query::FieldPath;
use storage_core::{Document, ErrorCode, IndexDefinition, Result, StorageError};

use crate::backend::{Encoded, Op};
use crate::cypher::{key_hex, write_str_list};
use crate::error::BACKEND;

/// Node property holding the index epoch a node's terms were computed at.
pub(crate) const EPOCH_PROP: &str = "ix";

/// The node property holding the terms of the unique index `name`.
pub(crate) fn terms_prop(name: &str) -> String {
    format!("u:{}", key_hex(name))
}

/// What a write stamps on the nodes it writes: the index epoch, and the terms of the
/// unique indexes of that epoch.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stamp {
    pub(crate) epoch: i64,
    pub(crate) uniques: Vec<(String, IndexDefinition, FieldPath)>,
}

impl Stamp {
    /// The stamp of `epoch`, whose index definitions are `definitions`.
    pub(crate) fn new(epoch: i64, definitions: &[IndexDefinition]) -> Result<Self> {
        let mut uniques = Vec::new();
        for def in definitions.iter().filter(|d| d.unique) {
            if let Some(field) = def.fields.first() {
                uniques.push((
                    terms_prop(&def.name),
                    def.clone(),
                    FieldPath::parse(&field.path)?,
                ));
            }
        }
        Ok(Self { epoch, uniques })
    }

    /// The unique index definitions.
    pub(crate) fn definitions(&self) -> Vec<IndexDefinition> {
        self.uniques.iter().map(|(_, d, _)| d.clone()).collect()
    }

    /// Appends `, ix: <epoch>` (nothing at epoch 0, which a missing `ix` means) and each
    /// unique index's terms (`null`, which removes the property, when the document has
    /// none) to a node's map literal.
    pub(crate) fn write_props(&self, doc: &Document, out: &mut String) -> Result<()> {
        self.write_epoch(out);
        for (prop, def, path) in &self.uniques {
            let _ = write!(out, ", `{prop}`: ");
            write_str_list(out, &terms(def, path, doc))?;
        }
        Ok(())
    }

    /// Appends `, ix: <epoch>` to a node's map, or nothing at epoch 0: a node without
    /// `ix` counts as stamped at epoch 0, which every label starts at and most never
    /// leave (only creating or dropping a unique index moves it), so most nodes carry
    /// no stamp at all.
    pub(crate) fn write_epoch(&self, out: &mut String) {
        if self.epoch != 0 {
            let _ = write!(out, ", {EPOCH_PROP}: {}", self.epoch);
        }
    }

    /// Each unique index's term property and its terms as a literal (`null` when the
    /// document has none), for a query that passes them as parameters.
    pub(crate) fn term_literals(&self, value: &Encoded) -> Result<Vec<(&str, String)>> {
        self.uniques
            .iter()
            .map(|(prop, def, path)| {
                let doc = value.doc()?;
                let mut out = String::new();
                write_str_list(&mut out, &terms(def, path, doc))?;
                Ok((prop.as_str(), out))
            })
            .collect()
    }

    /// Appends a row's terms for each unique index (in the order of `uniques`) to the
    /// next columns of a column-wise batch, one column per index.
    pub(crate) fn write_term_cells<'c>(
        &self,
        value: &Encoded,
        columns: &mut impl Iterator<Item = &'c mut String>,
    ) -> Result<()> {
        for (_, def, path) in &self.uniques {
            let doc = value.doc()?;
            let column = columns.next().ok_or_else(|| {
                StorageError::new(
                    ErrorCode::Backend,
                    "a batch row has more cells than columns",
                )
                .with_backend(BACKEND)
            })?;
            write_str_list(column, &terms(def, path, doc))?;
        }
        Ok(())
    }
}

/// A string equal for exactly the values the evaluator calls equal.
pub(crate) fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "n{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "n{u}");
            } else if let Some(f) = n.as_f64() {
                // An integral float equals the integer of the same value.
                if f.fract() == 0.0 && f.abs() < 1.8e19 {
                    let _ = write!(out, "n{}", format_integral(f));
                } else {
                    let _ = write!(out, "f{f:?}");
                }
            }
        }
        Value::Array(items) => {
            out.push('[');
            for item in items {
                write_canonical(item, out);
                out.push(',');
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for k in keys {
                let _ = write!(out, "{k:?}:");
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
                out.push(',');
            }
            out.push('}');
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

/// The integer text of an integral float below 2^64 in magnitude.
fn format_integral(f: f64) -> String {
    // `{:.0}` prints an integral f64 exactly (no exponent), which is what an
    // integer of the same value prints.
    format!("{f:.0}")
}

/// The canonical values `doc` is filed under in `index`.
pub(crate) fn terms(index: &IndexDefinition, path: &FieldPath, doc: &Document) -> Vec<String> {
    let mut out = Vec::new();
    for value in path.values(doc) {
        if let Value::Array(items) = value {
            out.extend(
                items
                    .iter()
                    .filter(|v| !(index.sparse && v.is_null()))
                    .map(canonical),
            );
        }
        if !(index.sparse && value.is_null()) {
            out.push(canonical(value));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn conflict(index: &IndexDefinition, existing: &str, key: &str) -> StorageError {
    StorageError::new(
        ErrorCode::DuplicateKey,
        "a unique index already holds this value for another key",
    )
    .with_backend(BACKEND)
    .with_context("index", &index.name)
    .with_context("existing_key", existing.escape_debug())
    .with_context("key", key.escape_debug())
}

/// Rejects a change giving two live entries an equal value in a unique index.
/// `overlay` holds the final document of every touched key (`None`: removed);
/// `cleared` says the untouched `base` entries are gone.
pub(crate) fn check(
    indexes: &[IndexDefinition],
    base: &BTreeMap<String, Document>,
    overlay: &BTreeMap<String, Option<Document>>,
    cleared: bool,
) -> Result<()> {
    for index in indexes.iter().filter(|i| i.unique) {
        let Some(field) = index.fields.first() else {
            continue;
        };
        let path = FieldPath::parse(&field.path)?;
        let mut held: HashMap<String, &str> = HashMap::new();
        if !cleared {
            for (key, doc) in base {
                if overlay.contains_key(key) {
                    continue;
                }
                for term in terms(index, &path, doc) {
                    held.entry(term).or_insert(key);
                }
            }
        }
        for (key, doc) in overlay {
            let Some(doc) = doc else { continue };
            for term in terms(index, &path, doc) {
                if let Some(other) = held.insert(term, key)
                    && other != key
                {
                    return Err(conflict(index, other, key));
                }
            }
        }
    }
    Ok(())
}

/// The terms every document set by `ops` is filed under, per unique index of `stamp`.
pub(crate) fn op_terms(stamp: &Stamp, ops: &[Op]) -> Result<Vec<Vec<String>>> {
    stamp
        .uniques
        .iter()
        .map(|(_, def, path)| {
            let mut all = Vec::new();
            for op in ops {
                if let Op::Set { value, .. } = op {
                    all.extend(terms(def, path, value.doc()?));
                }
            }
            all.sort();
            all.dedup();
            Ok(all)
        })
        .collect()
}

/// [`check`] for a list of encoded operations applied in order.
pub(crate) fn check_ops(
    indexes: &[IndexDefinition],
    base: &BTreeMap<String, Document>,
    ops: &[Op],
) -> Result<()> {
    let mut overlay: BTreeMap<String, Option<Document>> = BTreeMap::new();
    let mut cleared = false;
    for op in ops {
        match op {
            Op::Set { key, value } => {
                overlay.insert(key.clone(), Some(value.doc()?.clone()));
            }
            Op::Delete { key } => {
                overlay.insert(key.clone(), None);
            }
            Op::Clear => {
                cleared = true;
                overlay.clear();
            }
        }
    }
    check(indexes, base, &overlay, cleared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use storage_core::IndexKind;

    #[test]
    fn integers_and_integral_floats_are_one_value() {
        assert_eq!(canonical(&json!(1)), canonical(&json!(1.0)));
        assert_eq!(canonical(&json!(-3)), canonical(&json!(-3.0)));
        assert_ne!(canonical(&json!(1)), canonical(&json!("1")));
        assert_ne!(canonical(&json!(1.5)), canonical(&json!(1)));
        assert_eq!(
            canonical(&json!({"b": 1, "a": 2})),
            canonical(&json!({"a": 2.0, "b": 1}))
        );
    }

    #[test]
    fn conflicts_follow_array_elements_and_nulls() -> Result<()> {
        let index = IndexDefinition::new("u", "tags", IndexKind::Hash).unique();
        let base = BTreeMap::from([("a".to_owned(), json!({"tags": ["x", "y"]}))]);
        let clash = BTreeMap::from([("b".to_owned(), Some(json!({"tags": ["y"]})))]);
        assert_eq!(
            check(std::slice::from_ref(&index), &base, &clash, false)
                .unwrap_err()
                .code(),
            ErrorCode::DuplicateKey
        );
        let repeat = BTreeMap::from([("c".to_owned(), Some(json!({"tags": ["q", "q"]})))]);
        check(std::slice::from_ref(&index), &base, &repeat, false)?;
        check(std::slice::from_ref(&index), &base, &clash, true)?;
        Ok(())
    }
}
