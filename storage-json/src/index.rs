//! In-memory secondary indexes over the loaded entries.
//!
//! An index only narrows the candidates a query looks at; the reference
//! evaluator still judges every candidate, so an index changes speed and never
//! results. To stay a superset, a document is filed under every value its path
//! reaches (fanning out over arrays of objects), each element of a reached
//! array, and the array itself. Documents where the path reaches nothing are
//! not filed (so they never conflict in a unique index); an explicit `null` is
//! filed, so two `null`s conflict in a unique index unless it is `sparse`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use storage_core::query::{FieldPath, TypeBracket, compare_total, type_bracket, words};
use storage_core::{
    Document, ErrorCode, Filter, IndexDefinition, IndexInfo, IndexKind, IndexStats, Operator,
    Result, StorageError,
};

use crate::journal::Commit;

/// A document ordered by the evaluator's total order, so btree ranges agree with `gt`/`lt`.
#[derive(Debug, Clone)]
struct Ordered(Document);

impl PartialEq for Ordered {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ordered {}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_total(Some(&self.0), Some(&other.0))
    }
}

/// A string that is equal for any two values the evaluator calls equal.
/// Numbers go through their nearest `f64` (equal numbers round alike; two huge
/// distinct integers may collide, which only adds a candidate).
fn equality_key(value: &Document) -> String {
    fn write(value: &Document, out: &mut String) {
        match value {
            Document::Null => out.push('N'),
            Document::Bool(b) => out.push(if *b { 'T' } else { 'F' }),
            Document::Number(n) => {
                let f = n.as_f64().unwrap_or(0.0);
                let f = if f == 0.0 { 0.0 } else { f };
                let _ = write!(out, "#{:x}", f.to_bits());
            }
            Document::String(s) => {
                let _ = write!(out, "\"{}:{s}", s.len());
            }
            Document::Array(items) => {
                let _ = write!(out, "[{}", items.len());
                for item in items {
                    write(item, out);
                }
                out.push(']');
            }
            Document::Object(map) => {
                let mut fields: Vec<_> = map.iter().collect();
                fields.sort_by(|a, b| a.0.cmp(b.0));
                let _ = write!(out, "{{{}", fields.len());
                for (k, v) in fields {
                    let _ = write!(out, "{}:{k}", k.len());
                    write(v, out);
                }
                out.push('}');
            }
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

#[derive(Debug)]
enum Postings {
    /// Equality by `equality_key`, and ranges through `Ordered` (btree only).
    Values {
        equal: HashMap<String, BTreeSet<String>>,
        ordered: Option<BTreeMap<Ordered, BTreeSet<String>>>,
    },
    /// Lower-cased words, split as the evaluator's `text` operator splits them.
    Words(HashMap<String, BTreeSet<String>>),
}

/// One index.
#[derive(Debug)]
pub(crate) struct Index {
    definition: IndexDefinition,
    kind: IndexKind,
    path: FieldPath,
    postings: Postings,
    entries: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

enum Term {
    Value(Document),
    Word(String),
}

impl Index {
    fn terms(&self, doc: &Document) -> Vec<Term> {
        let mut reached = Vec::new();
        for v in self.path.values(doc) {
            if let Document::Array(items) = v {
                reached.extend(items.iter());
            }
            reached.push(v);
        }
        if self.definition.sparse {
            reached.retain(|v| !v.is_null());
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        match self.postings {
            Postings::Values { .. } => {
                for v in reached {
                    if seen.insert(equality_key(v)) {
                        out.push(Term::Value(v.clone()));
                    }
                }
            }
            Postings::Words(_) => {
                for v in reached {
                    if let Document::String(s) = v {
                        for w in words(s) {
                            if seen.insert(w.clone()) {
                                out.push(Term::Word(w));
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
            match (&mut self.postings, term) {
                (Postings::Values { equal, ordered }, Term::Value(v)) => {
                    equal
                        .entry(equality_key(&v))
                        .or_default()
                        .insert(key.to_owned());
                    if let Some(ordered) = ordered {
                        ordered
                            .entry(Ordered(v))
                            .or_default()
                            .insert(key.to_owned());
                    }
                }
                (Postings::Words(m), Term::Word(w)) => {
                    m.entry(w).or_default().insert(key.to_owned());
                }
                _ => {}
            }
        }
    }

    fn remove(&mut self, key: &str, doc: &Document) {
        fn take(set: Option<&mut BTreeSet<String>>, key: &str) -> bool {
            set.is_some_and(|s| {
                s.remove(key);
                s.is_empty()
            })
        }
        let terms = self.terms(doc);
        if terms.is_empty() {
            return;
        }
        self.entries = self.entries.saturating_sub(1);
        for term in terms {
            match (&mut self.postings, term) {
                (Postings::Values { equal, ordered }, Term::Value(v)) => {
                    let ek = equality_key(&v);
                    if take(equal.get_mut(&ek), key) {
                        equal.remove(&ek);
                    }
                    if let Some(ordered) = ordered {
                        let ok = Ordered(v);
                        if take(ordered.get_mut(&ok), key) {
                            ordered.remove(&ok);
                        }
                    }
                }
                (Postings::Words(m), Term::Word(w)) => {
                    let emptied = take(m.get_mut(&w), key);
                    if emptied {
                        m.remove(&w);
                    }
                }
                _ => {}
            }
        }
    }

    fn clear(&mut self) {
        self.entries = 0;
        match &mut self.postings {
            Postings::Values { equal, ordered } => {
                equal.clear();
                if let Some(o) = ordered {
                    o.clear();
                }
            }
            Postings::Words(m) => m.clear(),
        }
    }

    fn exact(&self, value: &Document) -> Option<&BTreeSet<String>> {
        match &self.postings {
            Postings::Values { equal, .. } => equal.get(&equality_key(value)),
            Postings::Words(_) => None,
        }
    }

    /// Whether this index can narrow `op operand` on its field.
    fn answers(&self, op: Operator, operand: &Document) -> bool {
        match (self.kind, op) {
            // `eq null` also matches documents missing the field, which are not filed.
            (IndexKind::Btree | IndexKind::Hash, Operator::Eq) => !operand.is_null(),
            (IndexKind::Btree | IndexKind::Hash, Operator::In) => operand
                .as_array()
                .is_some_and(|items| items.iter().all(|v| !v.is_null())),
            (IndexKind::Btree, Operator::Gt | Operator::Gte | Operator::Lt | Operator::Lte) => {
                type_bracket(operand) != TypeBracket::Null
            }
            (IndexKind::Fulltext, Operator::Text) => {
                operand.as_str().is_some_and(|s| !words(s).is_empty())
            }
            _ => false,
        }
    }

    /// The candidates for `op operand`; counts a hit or a miss.
    fn candidates(&self, op: Operator, operand: &Document) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        match (&self.postings, op) {
            (Postings::Values { .. }, Operator::Eq) => {
                if let Some(keys) = self.exact(operand) {
                    out.extend(keys.iter().cloned());
                }
            }
            (Postings::Values { .. }, Operator::In) => {
                for v in operand.as_array().into_iter().flatten() {
                    if let Some(keys) = self.exact(v) {
                        out.extend(keys.iter().cloned());
                    }
                }
            }
            (
                Postings::Values {
                    ordered: Some(ordered),
                    ..
                },
                Operator::Gt | Operator::Gte | Operator::Lt | Operator::Lte,
            ) => {
                let bracket = type_bracket(operand);
                let at = Ordered(operand.clone());
                let (lo, hi) = match op {
                    Operator::Gt => (Bound::Excluded(at), Bound::Unbounded),
                    Operator::Gte => (Bound::Included(at), Bound::Unbounded),
                    Operator::Lt => (Bound::Unbounded, Bound::Excluded(at)),
                    _ => (Bound::Unbounded, Bound::Included(at)),
                };
                for (k, keys) in ordered.range((lo, hi)) {
                    // Ranges never cross type brackets.
                    if type_bracket(&k.0) == bracket {
                        out.extend(keys.iter().cloned());
                    }
                }
            }
            (Postings::Words(m), Operator::Text) => {
                let query = operand.as_str().map(words).unwrap_or_default();
                let mut sets = query.iter().map(|w| m.get(w));
                if let Some(Some(first)) = sets.next() {
                    out.clone_from(first);
                    for set in sets {
                        match set {
                            Some(s) => out.retain(|k| s.contains(k)),
                            None => out.clear(),
                        }
                    }
                }
            }
            _ => {}
        }
        if out.is_empty() {
            self.misses.fetch_add(1, Relaxed);
        } else {
            self.hits.fetch_add(1, Relaxed);
        }
        out
    }

    fn info(&self) -> IndexInfo {
        IndexInfo {
            definition: self.definition.clone(),
            backend_kind: Some(
                match self.kind {
                    IndexKind::Btree => "in-memory btree",
                    IndexKind::Hash => "in-memory hash",
                    IndexKind::Fulltext => "in-memory inverted word index",
                    IndexKind::Spatial => "none",
                }
                .to_owned(),
            ),
            stats: IndexStats {
                size_bytes: None,
                entries: self.entries,
                hits: self.hits.load(Relaxed),
                misses: self.misses.load(Relaxed),
            },
        }
    }
}

/// What the planner picked for a query.
pub(crate) struct Plan {
    pub(crate) candidates: BTreeSet<String>,
}

/// Every index of a store.
#[derive(Debug, Default)]
pub(crate) struct Indexes {
    list: Vec<Index>,
}

impl Indexes {
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(crate) fn infos(&self) -> Vec<IndexInfo> {
        self.list.iter().map(Index::info).collect()
    }

    /// `Ok(true)` when created, `Ok(false)` when the identical index exists.
    pub(crate) fn create(
        &mut self,
        definition: IndexDefinition,
        entries: &BTreeMap<String, Arc<Document>>,
    ) -> Result<bool> {
        if let Some(existing) = self
            .list
            .iter()
            .find(|i| i.definition.name == definition.name)
        {
            if existing.definition == definition {
                return Ok(false);
            }
            return Err(StorageError::new(
                ErrorCode::DuplicateKey,
                "an index with this name exists with another definition",
            )
            .with_context("index", &definition.name));
        }
        let index = build(definition, entries)?;
        self.list.push(index);
        Ok(true)
    }

    pub(crate) fn drop_index(&mut self, name: &str) -> bool {
        let before = self.list.len();
        self.list.retain(|i| i.definition.name != name);
        self.list.len() != before
    }

    /// Rebuilds every index over new contents (after a reload).
    pub(crate) fn rebuild(&self, entries: &BTreeMap<String, Arc<Document>>) -> Result<Self> {
        let mut list = Vec::with_capacity(self.list.len());
        for index in &self.list {
            list.push(build(index.definition.clone(), entries)?);
        }
        Ok(Self { list })
    }

    /// Rejects a commit that would give two live entries an equal value in a unique index.
    pub(crate) fn check_unique(
        &self,
        base: &BTreeMap<String, Arc<Document>>,
        commit: &Commit,
    ) -> Result<()> {
        for index in self.list.iter().filter(|i| i.definition.unique) {
            let mut claimed: HashMap<String, &str> = HashMap::new();
            for (key, doc) in &commit.writes {
                let Some(doc) = doc else { continue };
                for term in index.terms(doc) {
                    let Term::Value(value) = term else { continue };
                    if let Some(other) = claimed.insert(equality_key(&value), key)
                        && other != key
                    {
                        return Err(conflict(index, &value, other, key));
                    }
                    if commit.cleared {
                        continue;
                    }
                    let holder = index.exact(&value).and_then(|keys| {
                        keys.iter().find(|k| {
                            *k != key && !commit.writes.contains_key(*k) && base.contains_key(*k)
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

    /// Files a change of `key` from `old` to `new`.
    pub(crate) fn update(&mut self, key: &str, old: Option<&Document>, new: Option<&Document>) {
        for index in &mut self.list {
            if let Some(old) = old {
                index.remove(key, old);
            }
            if let Some(new) = new {
                index.insert(key, new);
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        for index in &mut self.list {
            index.clear();
        }
    }

    /// The first index answering a top-level clause (the filter, or a child of a
    /// top-level `and`), with its candidates.
    pub(crate) fn plan(&self, filter: Option<&Filter>) -> Option<Plan> {
        let clauses: Vec<&Filter> = match filter? {
            Filter::And(children) => children.iter().collect(),
            other => vec![other],
        };
        for clause in clauses {
            let Filter::Condition { field, op, value } = clause else {
                continue;
            };
            if let Some(index) = self
                .list
                .iter()
                .find(|i| i.path.as_str() == field && i.answers(*op, value))
            {
                return Some(Plan {
                    candidates: index.candidates(*op, value),
                });
            }
        }
        None
    }

    /// The index `plan` would pick, without looking anything up.
    pub(crate) fn choose(&self, filter: Option<&Filter>) -> Option<(String, String)> {
        let clauses: Vec<&Filter> = match filter? {
            Filter::And(children) => children.iter().collect(),
            other => vec![other],
        };
        clauses.into_iter().find_map(|clause| {
            let Filter::Condition { field, op, value } = clause else {
                return None;
            };
            self.list
                .iter()
                .find(|i| i.path.as_str() == field && i.answers(*op, value))
                .map(|i| {
                    (
                        i.definition.name.clone(),
                        format!("{field} {} {value}", op_name(*op)),
                    )
                })
        })
    }
}

fn op_name(op: Operator) -> &'static str {
    match op {
        Operator::Eq => "eq",
        Operator::Ne => "ne",
        Operator::Gt => "gt",
        Operator::Gte => "gte",
        Operator::Lt => "lt",
        Operator::Lte => "lte",
        Operator::In => "in",
        Operator::Nin => "nin",
        Operator::Regex => "regex",
        Operator::Exists => "exists",
        Operator::Text => "text",
        Operator::WithinBox => "within_box",
    }
}

fn conflict(index: &Index, value: &Document, existing: &str, key: &str) -> StorageError {
    StorageError::new(
        ErrorCode::DuplicateKey,
        "a unique index already holds this value for another key",
    )
    .with_backend("json")
    .with_context("index", &index.definition.name)
    .with_context("value", value)
    .with_context("existing_key", existing.escape_debug())
    .with_context("key", key.escape_debug())
}

fn build(definition: IndexDefinition, entries: &BTreeMap<String, Arc<Document>>) -> Result<Index> {
    let [field] = definition.fields.as_slice() else {
        return Err(
            StorageError::unsupported("the json store builds single-field indexes only")
                .with_backend("json")
                .with_context("index", &definition.name)
                .with_context("fields", definition.fields.len()),
        );
    };
    let kind = field.kind;
    let postings = match kind {
        IndexKind::Btree => Postings::Values {
            equal: HashMap::new(),
            ordered: Some(BTreeMap::new()),
        },
        IndexKind::Hash => Postings::Values {
            equal: HashMap::new(),
            ordered: None,
        },
        IndexKind::Fulltext if definition.unique => {
            return Err(
                StorageError::unsupported("a fulltext index cannot be unique")
                    .with_backend("json")
                    .with_context("index", &definition.name),
            );
        }
        IndexKind::Fulltext => Postings::Words(HashMap::new()),
        IndexKind::Spatial => {
            return Err(StorageError::unsupported(
                "the json store has no spatial index; within_box runs in process",
            )
            .with_backend("json")
            .with_context("index", &definition.name));
        }
    };
    let path =
        FieldPath::parse(&field.path).map_err(|e| e.with_context("index", &definition.name))?;
    let mut index = Index {
        definition,
        kind,
        path,
        postings,
        entries: 0,
        hits: AtomicU64::new(0),
        misses: AtomicU64::new(0),
    };
    let unique = index.definition.unique;
    for (key, doc) in entries {
        if unique {
            for term in index.terms(doc) {
                if let Term::Value(value) = term
                    && let Some(holder) = index.exact(&value).and_then(|keys| keys.iter().next())
                    && holder != key
                {
                    return Err(conflict(&index, &value, holder, key));
                }
            }
        }
        index.insert(key, doc);
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entries(pairs: &[(&str, Document)]) -> BTreeMap<String, Arc<Document>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Arc::new(v.clone())))
            .collect()
    }

    #[test]
    fn equal_numbers_share_a_key() {
        assert_eq!(equality_key(&json!(1)), equality_key(&json!(1.0)));
        assert_eq!(equality_key(&json!(0)), equality_key(&json!(-0.0)));
        assert_ne!(equality_key(&json!(1)), equality_key(&json!("1")));
    }

    #[test]
    fn range_candidates_stay_in_the_operand_bracket() -> Result<()> {
        let data = entries(&[
            ("a", json!({"n": 1})),
            ("b", json!({"n": 5})),
            ("c", json!({"n": "9"})),
            ("d", json!({"n": [2, 7]})),
        ]);
        let mut idx = Indexes::default();
        idx.create(IndexDefinition::new("n", "n", IndexKind::Btree), &data)?;
        let f = storage_core::query::field("n").gt(3);
        let plan = idx
            .plan(Some(&f))
            .ok_or_else(|| StorageError::unsupported("no plan"))?;
        assert_eq!(plan.candidates.into_iter().collect::<Vec<_>>(), ["b", "d"]);
        Ok(())
    }

    #[test]
    fn unique_index_refuses_existing_duplicates() {
        let data = entries(&[("a", json!({"e": "x"})), ("b", json!({"e": "x"}))]);
        let mut idx = Indexes::default();
        let err = idx
            .create(
                IndexDefinition::new("e", "e", IndexKind::Hash).unique(),
                &data,
            )
            .expect_err("must fail");
        assert_eq!(err.code(), ErrorCode::DuplicateKey);
        assert!(idx.is_empty());
    }
}
