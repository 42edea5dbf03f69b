//! Secondary indexes of the memory store.
//!
//! An index maps the values found at one field path to the keys holding them.
//! It only ever narrows the candidates a query looks at: the reference evaluator
//! still runs on every candidate, so an index can change speed, never results.
//! For that, an index files a document under exactly the values the evaluator
//! tests a clause against: every value the path reaches (a path crossing an array
//! fans out over its objects, so `items.name` reaches the `name` of each), and
//! each element of a reached array as well as the array itself. Full-text
//! indexes split strings with [`crate::query::words`], the `text` operator's own
//! tokenisation.
//!
//! Documents where the path reaches nothing are not indexed (so they never
//! conflict in a unique index). An explicit `null` is indexed, so two entries
//! with a `null` field do conflict in a unique index, unless it is `sparse`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use super::Map;
use crate::error::{ErrorCode, Result, StorageError};
use crate::query::{FieldPath, Operator, TypeBracket, compare_total, type_bracket, words};
use crate::types::{Document, IndexDefinition, IndexInfo, IndexKind, IndexStats};

/// A value ordered by the evaluator's total order, so btree ranges agree with `gt`/`lt`.
#[derive(Debug, Clone)]
struct SortKey(Document);

impl PartialEq for SortKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for SortKey {}

impl PartialOrd for SortKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SortKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_total(Some(&self.0), Some(&other.0))
    }
}

/// A string equal for values the evaluator considers equal. Numbers are keyed by
/// their nearest `f64`: equal numbers round to the same `f64`, so `1` and `1.0`
/// share a key (distinct huge integers may share one too, which only adds a
/// candidate the evaluator then rejects).
fn canonical(value: &Document) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Document, out: &mut String) {
    match value {
        Document::Null => out.push('z'),
        Document::Bool(b) => out.push(if *b { 't' } else { 'f' }),
        Document::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            // -0.0 equals 0.0.
            let f = if f == 0.0 { 0.0 } else { f };
            let _ = write!(out, "n{:016x}", f.to_bits());
        }
        Document::String(s) => {
            let _ = write!(out, "s{}:{s}", s.len());
        }
        Document::Array(items) => {
            let _ = write!(out, "a{}[", items.len());
            for item in items {
                write_canonical(item, out);
            }
            out.push(']');
        }
        Document::Object(map) => {
            // serde_json's map is sorted by key unless `preserve_order` is on; sort anyway.
            let mut fields: Vec<_> = map.iter().collect();
            fields.sort_by(|a, b| a.0.cmp(b.0));
            let _ = write!(out, "o{}{{", fields.len());
            for (k, v) in fields {
                let _ = write!(out, "{}:{k}", k.len());
                write_canonical(v, out);
            }
            out.push('}');
        }
    }
}

/// The values a document contributes to an index at `path`: exactly the candidates
/// the evaluator tests a clause against (each value [`FieldPath::values`] reaches,
/// and each element of a reached array).
fn index_values<'a>(path: &FieldPath, doc: &'a Document, sparse: bool) -> Vec<&'a Document> {
    let reached = path.values(doc);
    let mut out = Vec::with_capacity(reached.len());
    for value in reached {
        if let Document::Array(items) = value {
            out.extend(items.iter());
        }
        out.push(value);
    }
    if sparse {
        out.retain(|v| !v.is_null());
    }
    out
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug, Clone)]
enum Postings {
    Btree(BTreeMap<SortKey, BTreeSet<String>>),
    Hash(HashMap<String, BTreeSet<String>>),
    Fulltext(HashMap<String, BTreeSet<String>>),
}

/// One index.
#[derive(Debug, Clone)]
pub(super) struct Index {
    definition: IndexDefinition,
    path: FieldPath,
    postings: Postings,
    /// Documents contributing at least one value.
    entries: u64,
    /// Shared by every copy-on-write clone, so snapshots count into the same stats.
    counters: Arc<Counters>,
}

/// What the planner picked: an index and the clause it answers.
pub(super) struct Choice<'a> {
    pub(super) index: &'a Index,
    pub(super) field: &'a str,
    pub(super) op: Operator,
    pub(super) operand: &'a Document,
}

impl Index {
    pub(super) fn name(&self) -> &str {
        &self.definition.name
    }

    pub(super) fn definition(&self) -> &IndexDefinition {
        &self.definition
    }

    fn kind(&self) -> IndexKind {
        self.postings_kind()
    }

    fn postings_kind(&self) -> IndexKind {
        match self.postings {
            Postings::Btree(_) => IndexKind::Btree,
            Postings::Hash(_) => IndexKind::Hash,
            Postings::Fulltext(_) => IndexKind::Fulltext,
        }
    }

    /// The terms `doc` is filed under (deduplicated); empty when not indexed.
    fn terms(&self, doc: &Document) -> Vec<Term> {
        let values = index_values(&self.path, doc, self.definition.sparse);
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        match self.postings {
            Postings::Btree(_) | Postings::Hash(_) => {
                for v in values {
                    if seen.insert(canonical(v)) {
                        out.push(Term::Value(v.clone()));
                    }
                }
            }
            Postings::Fulltext(_) => {
                for v in values {
                    if let Document::String(s) = v {
                        for word in words(s) {
                            if seen.insert(word.clone()) {
                                out.push(Term::Word(word));
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn insert(&mut self, key: &str, doc: &Document) {
        let terms = self.terms(doc);
        if terms.is_empty() {
            return;
        }
        self.entries += 1;
        for term in terms {
            let set = match (&mut self.postings, term) {
                (Postings::Btree(m), Term::Value(v)) => m.entry(SortKey(v)).or_default(),
                (Postings::Hash(m), Term::Value(v)) => m.entry(canonical(&v)).or_default(),
                (Postings::Fulltext(m), Term::Word(w)) => m.entry(w).or_default(),
                _ => continue,
            };
            set.insert(key.to_owned());
        }
    }

    fn remove(&mut self, key: &str, doc: &Document) {
        let terms = self.terms(doc);
        if terms.is_empty() {
            return;
        }
        self.entries = self.entries.saturating_sub(1);
        for term in terms {
            match (&mut self.postings, term) {
                (Postings::Btree(m), Term::Value(v)) => {
                    let k = SortKey(v);
                    if let Some(set) = m.get_mut(&k) {
                        set.remove(key);
                        if set.is_empty() {
                            m.remove(&k);
                        }
                    }
                }
                (Postings::Hash(m), Term::Value(v)) => {
                    let k = canonical(&v);
                    if let Some(set) = m.get_mut(&k) {
                        set.remove(key);
                        if set.is_empty() {
                            m.remove(&k);
                        }
                    }
                }
                (Postings::Fulltext(m), Term::Word(w)) => {
                    if let Some(set) = m.get_mut(&w) {
                        set.remove(key);
                        if set.is_empty() {
                            m.remove(&w);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn clear(&mut self) {
        self.entries = 0;
        match &mut self.postings {
            Postings::Btree(m) => m.clear(),
            Postings::Hash(m) | Postings::Fulltext(m) => m.clear(),
        }
    }

    /// Keys filed under a value equal to `value`.
    fn exact(&self, value: &Document) -> Option<&BTreeSet<String>> {
        match &self.postings {
            Postings::Btree(m) => m.get(&SortKey(value.clone())),
            Postings::Hash(m) => m.get(&canonical(value)),
            Postings::Fulltext(_) => None,
        }
    }

    /// Whether this index can narrow `op` on its field.
    fn answers(&self, op: Operator, operand: &Document) -> bool {
        match (self.kind(), op) {
            // `eq null` also matches missing fields, which are not indexed.
            (IndexKind::Btree | IndexKind::Hash, Operator::Eq) => !operand.is_null(),
            (IndexKind::Btree | IndexKind::Hash, Operator::In) => operand
                .as_array()
                .is_some_and(|items| items.iter().all(|v| !v.is_null())),
            (IndexKind::Btree, Operator::Gt | Operator::Gte | Operator::Lt | Operator::Lte) => {
                // Ranges never cross type brackets; `null` has no range to speak of.
                type_bracket(operand) != TypeBracket::Null
            }
            (IndexKind::Fulltext, Operator::Text) => {
                operand.as_str().is_some_and(|s| !words(s).is_empty())
            }
            _ => false,
        }
    }

    /// The candidate keys for `op operand`, and records a hit or a miss.
    pub(super) fn candidates(&self, op: Operator, operand: &Document) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        match op {
            Operator::Eq => {
                if let Some(keys) = self.exact(operand) {
                    out.extend(keys.iter().cloned());
                }
            }
            Operator::In => {
                for v in operand.as_array().into_iter().flatten() {
                    if let Some(keys) = self.exact(v) {
                        out.extend(keys.iter().cloned());
                    }
                }
            }
            Operator::Gt | Operator::Gte | Operator::Lt | Operator::Lte => {
                if let Postings::Btree(m) = &self.postings {
                    let bracket = type_bracket(operand);
                    let pivot = SortKey(operand.clone());
                    let same =
                        |(k, _): &(&SortKey, &BTreeSet<String>)| type_bracket(&k.0) == bracket;
                    let sets: Vec<&BTreeSet<String>> = match op {
                        Operator::Gt => m
                            .range((Bound::Excluded(pivot), Bound::Unbounded))
                            .take_while(same)
                            .map(|(_, s)| s)
                            .collect(),
                        Operator::Gte => m
                            .range((Bound::Included(pivot), Bound::Unbounded))
                            .take_while(same)
                            .map(|(_, s)| s)
                            .collect(),
                        Operator::Lt => m
                            .range((Bound::Unbounded, Bound::Excluded(pivot)))
                            .rev()
                            .take_while(same)
                            .map(|(_, s)| s)
                            .collect(),
                        _ => m
                            .range((Bound::Unbounded, Bound::Included(pivot)))
                            .rev()
                            .take_while(same)
                            .map(|(_, s)| s)
                            .collect(),
                    };
                    for set in sets {
                        out.extend(set.iter().cloned());
                    }
                }
            }
            Operator::Text => {
                if let (Postings::Fulltext(m), Some(text)) = (&self.postings, operand.as_str()) {
                    let mut wanted = words(text);
                    wanted.sort();
                    wanted.dedup();
                    let mut sets = wanted.iter().map(|w| m.get(w));
                    if let Some(Some(first)) = sets.next() {
                        out.clone_from(first);
                        for set in sets {
                            match set {
                                Some(set) => out.retain(|k| set.contains(k)),
                                None => out.clear(),
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        let counter = if out.is_empty() {
            &self.counters.misses
        } else {
            &self.counters.hits
        };
        counter.fetch_add(1, AtomicOrdering::Relaxed);
        out
    }

    fn info(&self) -> IndexInfo {
        IndexInfo {
            definition: self.definition.clone(),
            backend_kind: None,
            stats: IndexStats {
                size_bytes: None,
                entries: self.entries,
                hits: self.counters.hits.load(AtomicOrdering::Relaxed),
                misses: self.counters.misses.load(AtomicOrdering::Relaxed),
            },
        }
    }
}

enum Term {
    Value(Document),
    Word(String),
}

/// Every index of a store.
#[derive(Debug, Clone, Default)]
pub(super) struct IndexSet {
    indexes: Vec<Index>,
}

impl IndexSet {
    pub(super) fn get(&self, name: &str) -> Option<&Index> {
        self.indexes.iter().find(|i| i.name() == name)
    }

    pub(super) fn list(&self) -> Vec<IndexInfo> {
        self.indexes.iter().map(Index::info).collect()
    }

    pub(super) fn drop_index(&mut self, name: &str) -> bool {
        let before = self.indexes.len();
        self.indexes.retain(|i| i.name() != name);
        before != self.indexes.len()
    }

    pub(super) fn insert(&mut self, key: &str, doc: &Document) {
        for index in &mut self.indexes {
            index.insert(key, doc);
        }
    }

    pub(super) fn remove(&mut self, key: &str, doc: &Document) {
        for index in &mut self.indexes {
            index.remove(key, doc);
        }
    }

    pub(super) fn clear(&mut self) {
        for index in &mut self.indexes {
            index.clear();
        }
    }

    pub(super) fn push(&mut self, index: Index) {
        self.indexes.push(index);
    }

    /// Rejects a change that would give two live entries an equal value in a
    /// unique index. `overlay` holds the final document of every touched key
    /// (`None`: removed); `cleared` says the untouched base entries are gone.
    pub(super) fn check_unique(
        &self,
        base: &Map,
        overlay: &BTreeMap<String, Option<Arc<Document>>>,
        cleared: bool,
    ) -> Result<()> {
        for index in self.indexes.iter().filter(|i| i.definition.unique) {
            let mut claimed: HashMap<String, &str> = HashMap::new();
            for (key, doc) in overlay {
                let Some(doc) = doc else { continue };
                for term in index.terms(doc) {
                    let Term::Value(value) = term else { continue };
                    if let Some(other) = claimed.insert(canonical(&value), key) {
                        return Err(conflict(index, &value, other, key));
                    }
                    if cleared {
                        continue;
                    }
                    let holder = index.exact(&value).and_then(|keys| {
                        keys.iter().find(|k| {
                            *k != key && !overlay.contains_key(*k) && base.contains_key(*k)
                        })
                    });
                    if let Some(holder) = holder {
                        return Err(conflict(index, &value, holder, key));
                    }
                }
            }
        }
        Ok(())
    }

    /// The first index answering a clause of the filter's top level (the filter
    /// itself, or a child of a top-level `and`).
    pub(super) fn choose<'a>(&'a self, filter: Option<&'a crate::Filter>) -> Option<Choice<'a>> {
        use crate::Filter;
        let clauses: Vec<&Filter> = match filter? {
            Filter::And(children) => children.iter().collect(),
            other => vec![other],
        };
        for clause in clauses {
            let Filter::Condition { field, op, value } = clause else {
                continue;
            };
            if let Some(index) = self
                .indexes
                .iter()
                .find(|i| i.path.as_str() == field && i.answers(*op, value))
            {
                return Some(Choice {
                    index,
                    field,
                    op: *op,
                    operand: value,
                });
            }
        }
        None
    }
}

fn conflict(index: &Index, value: &Document, existing: &str, key: &str) -> StorageError {
    StorageError::new(
        ErrorCode::DuplicateKey,
        "a unique index already holds this value for another key",
    )
    .with_context("index", index.name())
    .with_context("value", value)
    .with_context("existing_key", existing.escape_debug())
    .with_context("key", key.escape_debug())
}

/// Checks a definition and builds the index over `data`.
///
/// # Errors
/// `Unsupported` (spatial, several fields, unique fulltext), `InvalidQuery` (bad path),
/// `DuplicateKey` (unique over conflicting data).
pub(super) fn build(definition: IndexDefinition, data: &Map) -> Result<Index> {
    let [field] = definition.fields.as_slice() else {
        return Err(
            StorageError::unsupported("the memory store builds single-field indexes only")
                .with_context("index", &definition.name)
                .with_context("fields", definition.fields.len()),
        );
    };
    let postings = match field.kind {
        IndexKind::Btree => Postings::Btree(BTreeMap::new()),
        IndexKind::Hash => Postings::Hash(HashMap::new()),
        IndexKind::Fulltext if definition.unique => {
            return Err(
                StorageError::unsupported("a fulltext index cannot be unique")
                    .with_context("index", &definition.name),
            );
        }
        IndexKind::Fulltext => Postings::Fulltext(HashMap::new()),
        IndexKind::Spatial => {
            return Err(StorageError::unsupported(
                "the memory store has no spatial index; within_box runs in process",
            )
            .with_context("index", &definition.name));
        }
    };
    let path =
        FieldPath::parse(&field.path).map_err(|e| e.with_context("index", &definition.name))?;
    let mut index = Index {
        definition,
        path,
        postings,
        entries: 0,
        counters: Arc::new(Counters::default()),
    };
    let unique = index.definition.unique;
    for (key, entry) in data {
        if unique {
            for term in index.terms(&entry.doc) {
                if let Term::Value(value) = term
                    && let Some(holder) = index.exact(&value).and_then(|keys| keys.iter().next())
                {
                    return Err(conflict(&index, &value, holder, key));
                }
            }
        }
        index.insert(key, &entry.doc);
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn canonical_form_equates_integer_and_float() {
        assert_eq!(canonical(&json!(1)), canonical(&json!(1.0)));
        assert_eq!(canonical(&json!(0)), canonical(&json!(-0.0)));
        assert_ne!(canonical(&json!(1)), canonical(&json!("1")));
        assert_ne!(canonical(&json!(["ab"])), canonical(&json!(["a", "b"])));
        assert_eq!(
            canonical(&json!({"a": [1, 2.0]})),
            canonical(&json!({"a": [1.0, 2]}))
        );
    }
}
