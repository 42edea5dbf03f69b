//! Secondary indexes kept in memory, for adapters that hold their entries in memory.
//!
//! [`IndexSet`] is the index machinery of [`crate::MemoryStorage`], public so that
//! another adapter keeping its documents in process (the JSON file store, say)
//! gets the same semantics without a second implementation. The adapter owns the
//! entries; the set only files keys under values and must be told every change
//! ([`IndexSet::update`], [`IndexSet::clear`]) after it is committed.
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
//!
//! # Example
//! ```
//! use serde_json::json;
//! use storage_core::index::IndexSet;
//! use storage_core::query::field;
//! use storage_core::{Document, IndexDefinition, IndexKind};
//!
//! let alice = json!({"email": "a@x", "age": 31});
//! let bob = json!({"email": "b@x", "age": 27});
//! let entries = [("user:1", &alice), ("user:2", &bob)];
//!
//! let mut indexes = IndexSet::new();
//! indexes.create(IndexDefinition::new("by_age", "age", IndexKind::Btree), entries)?;
//!
//! // The planner picks the index for a top-level clause and yields candidate keys.
//! let filter = field("age").gt(30);
//! let choice = indexes.choose(Some(&filter)).expect("the btree index answers `gt`");
//! assert_eq!(choice.index_name(), "by_age");
//! assert_eq!(choice.candidates().into_iter().collect::<Vec<_>>(), ["user:1"]);
//!
//! // After committing a change to its own entries, the adapter files it.
//! let carol = json!({"email": "c@x", "age": 45});
//! indexes.update("user:3", None, Some(&carol));
//! assert_eq!(indexes.list()[0].stats.entries, 3);
//! # Ok::<(), storage_core::StorageError>(())
//! ```

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use crate::error::{ErrorCode, Result, StorageError};
use crate::query::Filter;
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
struct Index {
    definition: IndexDefinition,
    path: FieldPath,
    postings: Postings,
    /// Documents contributing at least one value.
    entries: u64,
    /// Keys filed under more than one value (a btree index's array fields): the only
    /// documents whose range clauses on one field may be met by different values.
    multi: BTreeSet<String>,
    /// Shared by every copy-on-write clone, so snapshots count into the same stats.
    counters: Arc<Counters>,
}

/// Hit and miss counters per index name, for adapters whose indexes live in the
/// backend and which report [`IndexStats::hits`] and [`IndexStats::misses`] themselves.
/// A hit is a lookup through the index that found something, a miss one that found
/// nothing.
#[derive(Debug, Default)]
pub struct IndexUsage {
    counters: std::sync::Mutex<HashMap<String, (u64, u64)>>,
}

impl IndexUsage {
    fn counters(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, u64)>> {
        // The map holds plain counts, valid whatever a panicking holder was doing.
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one lookup through the index `name`.
    pub fn record(&self, name: &str, hit: bool) {
        let mut counters = self.counters();
        let entry = counters.entry(name.to_owned()).or_default();
        if hit {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }

    /// `(hits, misses)` of the index `name`; zeros for one never used.
    pub fn get(&self, name: &str) -> (u64, u64) {
        self.counters().get(name).copied().unwrap_or_default()
    }

    /// Forgets the counters of `name` (the index was dropped).
    pub fn forget(&self, name: &str) {
        self.counters().remove(name);
    }
}

/// What [`IndexSet::choose`] picked: an index and the top-level clause (or, for a
/// btree index, the range clauses on its field) it answers.
///
/// Borrowing the set and the filter, it is meant to be used at once, under
/// whatever lock guards the adapter's entries.
#[derive(Debug, Clone, Copy)]
pub struct IndexChoice<'a> {
    index: &'a Index,
    field: &'a str,
    op: Operator,
    operand: &'a Document,
    /// For a range: every range clause on the field, intersected.
    range: Option<RangeProbe<'a>>,
    estimate: usize,
}

/// One end of a range: the operand and whether it is included.
type RangeEnd<'a> = Option<(&'a Document, bool)>;

/// The intersection of the range clauses on one field.
#[derive(Debug, Clone, Copy)]
struct RangeProbe<'a> {
    lower: RangeEnd<'a>,
    upper: RangeEnd<'a>,
    /// The operands lie in different type brackets: no single value meets them all.
    disjoint: bool,
}

impl<'a> RangeProbe<'a> {
    /// Intersects range clauses (`gt`, `gte`, `lt`, `lte` with their operands).
    fn of(clauses: &[(Operator, &'a Document)]) -> Option<Self> {
        let first = clauses.first()?.1;
        let mut probe = Self {
            lower: None,
            upper: None,
            disjoint: clauses
                .iter()
                .any(|(_, v)| type_bracket(v) != type_bracket(first)),
        };
        for &(op, value) in clauses {
            let inclusive = matches!(op, Operator::Gte | Operator::Lte);
            let (end, tighter) = match op {
                Operator::Gt | Operator::Gte => (&mut probe.lower, Ordering::Greater),
                Operator::Lt | Operator::Lte => (&mut probe.upper, Ordering::Less),
                _ => continue,
            };
            *end = match *end {
                Some((current, current_inclusive)) => {
                    match compare_total(Some(value), Some(current)) {
                        o if o == tighter => Some((value, inclusive)),
                        Ordering::Equal => Some((value, inclusive && current_inclusive)),
                        _ => Some((current, current_inclusive)),
                    }
                }
                None => Some((value, inclusive)),
            };
        }
        Some(probe)
    }

    /// The posting sets of the values inside the range, walked lazily from one end.
    fn sets<'m>(
        &self,
        m: &'m BTreeMap<SortKey, BTreeSet<String>>,
    ) -> Box<dyn Iterator<Item = &'m BTreeSet<String>> + 'm> {
        if self.disjoint {
            return Box::new(std::iter::empty());
        }
        let upper = self
            .upper
            .map(|(v, inclusive)| (SortKey(v.clone()), inclusive));
        let Some((lower, inclusive)) = self.lower else {
            let Some((end, inclusive)) = upper else {
                return Box::new(std::iter::empty());
            };
            let bracket = type_bracket(&end.0);
            let end = if inclusive {
                Bound::Included(end)
            } else {
                Bound::Excluded(end)
            };
            return Box::new(
                m.range((Bound::Unbounded, end))
                    .rev()
                    .take_while(move |(k, _)| type_bracket(&k.0) == bracket)
                    .map(|(_, keys)| keys),
            );
        };
        let bracket = type_bracket(lower);
        let start = SortKey(lower.clone());
        let start = if inclusive {
            Bound::Included(start)
        } else {
            Bound::Excluded(start)
        };
        Box::new(
            m.range((start, Bound::Unbounded))
                .take_while(move |(k, _)| {
                    type_bracket(&k.0) == bracket
                        && upper
                            .as_ref()
                            .is_none_or(|(u, inclusive)| match (*k).cmp(u) {
                                Ordering::Less => true,
                                Ordering::Equal => *inclusive,
                                Ordering::Greater => false,
                            })
                })
                .map(|(_, keys)| keys),
        )
    }

    fn describe(&self, field: &str) -> String {
        let mut parts = Vec::new();
        if let Some((v, inclusive)) = self.lower {
            parts.push(format!(
                "{field} {} {v}",
                if inclusive { ">=" } else { ">" }
            ));
        }
        if let Some((v, inclusive)) = self.upper {
            parts.push(format!(
                "{field} {} {v}",
                if inclusive { "<=" } else { "<" }
            ));
        }
        parts.join(" and ")
    }
}

impl IndexChoice<'_> {
    /// The name of the chosen index (for [`crate::ExecutionPlan::index`]).
    #[must_use]
    pub fn index_name(&self) -> &str {
        &self.index.definition.name
    }

    /// The field path of the clause the index answers.
    #[must_use]
    pub fn field(&self) -> &str {
        self.field
    }

    /// The operator of the clause the index answers (for a range, of the first
    /// range clause on the field; [`IndexChoice::describe`] names them all).
    #[must_use]
    pub fn op(&self) -> Operator {
        self.op
    }

    /// The operand of the clause the index answers (for a range, of the first
    /// range clause on the field).
    #[must_use]
    pub fn operand(&self) -> &Document {
        self.operand
    }

    /// The clause or clauses the index answers, for a plan: `age >= 30 and age < 32`,
    /// `city eq "Paris"`.
    #[must_use]
    pub fn describe(&self) -> String {
        match &self.range {
            Some(range) => range.describe(self.field),
            None => format!("{} {} {}", self.field, self.op.as_str(), self.operand),
        }
    }

    /// About how many candidates the index yields (exact for equality, `in` and
    /// ranges up to the point where the planner stopped counting).
    #[must_use]
    pub fn estimate(&self) -> usize {
        self.estimate
    }

    /// The keys that may match the clause: a superset of the matching entries'
    /// keys, in key order. Run the evaluator over these entries only.
    ///
    /// Counts a hit (some candidate) or a miss (none) in the index's stats.
    #[must_use]
    pub fn candidates(&self) -> BTreeSet<String> {
        match &self.range {
            Some(range) => self.index.range_candidates(range),
            None => self.index.candidates(self.op, self.operand),
        }
    }
}

impl Index {
    fn name(&self) -> &str {
        &self.definition.name
    }

    fn kind(&self) -> IndexKind {
        match self.postings {
            Postings::Btree(_) => IndexKind::Btree,
            Postings::Hash(_) => IndexKind::Hash,
            Postings::Fulltext(_) => IndexKind::Fulltext,
        }
    }

    /// The terms `doc` is filed under (deduplicated); empty when not indexed.
    fn terms<'d>(&self, doc: &'d Document) -> Vec<Term<'d>> {
        /// Up to this many values, duplicates are found by comparing pairs (no hashing,
        /// no allocation); a single value, the common case, needs no check at all.
        const LINEAR: usize = 16;
        let values = index_values(&self.path, doc, self.definition.sparse);
        let mut out = Vec::with_capacity(values.len());
        match self.postings {
            Postings::Btree(_) if values.len() <= LINEAR => {
                for v in values {
                    let fresh = !out.iter().any(|t| {
                        matches!(t, Term::Ordered(u) if compare_total(Some(u), Some(v)) == Ordering::Equal)
                    });
                    if fresh {
                        out.push(Term::Ordered(v));
                    }
                }
            }
            Postings::Hash(_) if values.len() <= LINEAR => {
                for v in values {
                    let canon = canonical(v);
                    if !out
                        .iter()
                        .any(|t| matches!(t, Term::Hashed(_, c) if *c == canon))
                    {
                        out.push(Term::Hashed(v, canon));
                    }
                }
            }
            Postings::Btree(_) | Postings::Hash(_) => {
                let hashed = matches!(self.postings, Postings::Hash(_));
                let mut seen = HashSet::new();
                for v in values {
                    let canon = canonical(v);
                    if seen.insert(canon.clone()) {
                        out.push(if hashed {
                            Term::Hashed(v, canon)
                        } else {
                            Term::Ordered(v)
                        });
                    }
                }
            }
            Postings::Fulltext(_) => {
                let mut seen = HashSet::new();
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

    /// Keys filed under a term's value.
    fn exact_term(&self, term: &Term<'_>) -> Option<&BTreeSet<String>> {
        match (&self.postings, term) {
            (Postings::Btree(m), Term::Ordered(v)) => m.get(&SortKey((*v).clone())),
            (Postings::Hash(m), Term::Hashed(_, canon)) => m.get(canon),
            _ => None,
        }
    }

    /// Files `doc` under `key`, refusing a value a unique index already holds.
    fn insert_checked(&mut self, key: &str, doc: &Document) -> Result<()> {
        if self.definition.unique {
            for term in self.terms(doc) {
                if let Some(holder) = self
                    .exact_term(&term)
                    .and_then(|keys| keys.iter().find(|k| *k != key))
                    && let Some(value) = term.value()
                {
                    return Err(conflict(self, value, holder, key));
                }
            }
        }
        self.insert(key, doc);
        Ok(())
    }

    fn insert(&mut self, key: &str, doc: &Document) {
        let terms = self.terms(doc);
        self.insert_terms(key, terms);
    }

    fn insert_terms(&mut self, key: &str, terms: Vec<Term<'_>>) {
        if terms.is_empty() {
            return;
        }
        self.entries += 1;
        if terms.len() > 1 && matches!(self.postings, Postings::Btree(_)) {
            self.multi.insert(key.to_owned());
        }
        for term in terms {
            let set = match (&mut self.postings, term) {
                (Postings::Btree(m), Term::Ordered(v)) => m.entry(SortKey(v.clone())).or_default(),
                (Postings::Hash(m), Term::Hashed(_, canon)) => m.entry(canon).or_default(),
                (Postings::Fulltext(m), Term::Word(w)) => m.entry(w).or_default(),
                _ => continue,
            };
            set.insert(key.to_owned());
        }
    }

    fn remove(&mut self, key: &str, doc: &Document) {
        let terms = self.terms(doc);
        self.remove_terms(key, terms);
    }

    /// Files a change of `key` from `old` to `new`; nothing to do when both are
    /// filed under the same terms (an overwrite that leaves the field alone).
    fn replace(&mut self, key: &str, old: &Document, new: &Document) {
        let before = self.terms(old);
        let after = self.terms(new);
        if before.len() == after.len() && before.iter().all(|t| after.iter().any(|u| t.same(u))) {
            return;
        }
        self.remove_terms(key, before);
        self.insert_terms(key, after);
    }

    fn remove_terms(&mut self, key: &str, terms: Vec<Term<'_>>) {
        if terms.is_empty() {
            return;
        }
        self.entries = self.entries.saturating_sub(1);
        if terms.len() > 1 {
            self.multi.remove(key);
        }
        for term in terms {
            match (&mut self.postings, term) {
                (Postings::Btree(m), Term::Ordered(v)) => {
                    let k = SortKey(v.clone());
                    if let Some(set) = m.get_mut(&k) {
                        set.remove(key);
                        if set.is_empty() {
                            m.remove(&k);
                        }
                    }
                }
                (Postings::Hash(m) | Postings::Fulltext(m), Term::Hashed(_, k) | Term::Word(k)) => {
                    if let Some(set) = m.get_mut(&k) {
                        set.remove(key);
                        if set.is_empty() {
                            m.remove(&k);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn clear(&mut self) {
        self.entries = 0;
        self.multi.clear();
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
    fn candidates(&self, op: Operator, operand: &Document) -> BTreeSet<String> {
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
                if let Some(range) = RangeProbe::of(&[(op, operand)]) {
                    return self.range_candidates(&range);
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
        self.count_lookup(out.is_empty());
        out
    }

    /// The candidate keys for a range: the keys filed under a value inside it, and
    /// every key filed under several values (whose range clauses another value may
    /// meet). Records a hit or a miss.
    fn range_candidates(&self, range: &RangeProbe<'_>) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if let Postings::Btree(m) = &self.postings {
            for keys in range.sets(m) {
                out.extend(keys.iter().cloned());
            }
            out.extend(self.multi.iter().cloned());
        }
        self.count_lookup(out.is_empty());
        out
    }

    fn count_lookup(&self, miss: bool) {
        let counter = if miss {
            &self.counters.misses
        } else {
            &self.counters.hits
        };
        counter.fetch_add(1, AtomicOrdering::Relaxed);
    }

    /// How many candidates `op operand` yields (for `text`, at most).
    fn estimate_clause(&self, op: Operator, operand: &Document) -> usize {
        match op {
            Operator::Eq => self.exact(operand).map_or(0, BTreeSet::len),
            Operator::In => operand
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| self.exact(v).map_or(0, BTreeSet::len))
                .sum(),
            Operator::Text => match (&self.postings, operand.as_str()) {
                (Postings::Fulltext(m), Some(text)) => words(text)
                    .iter()
                    .map(|w| m.get(w).map_or(0, BTreeSet::len))
                    .min()
                    .unwrap_or(0),
                _ => usize::MAX,
            },
            _ => usize::MAX,
        }
    }

    /// How many candidates a range yields, counted until it exceeds `cap`.
    fn count_range(&self, range: &RangeProbe<'_>, cap: usize) -> usize {
        let Postings::Btree(m) = &self.postings else {
            return usize::MAX;
        };
        let mut count = self.multi.len();
        for keys in range.sets(m) {
            if count > cap {
                break;
            }
            count += keys.len();
        }
        count
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

/// One value (or word) a document is filed under, borrowed from the document.
enum Term<'d> {
    /// A btree index's value.
    Ordered(&'d Document),
    /// A hash index's value, with its canonical form (the map's key).
    Hashed(&'d Document, String),
    /// A fulltext index's word.
    Word(String),
}

impl Term<'_> {
    /// Whether two terms of one index file a document in the same place.
    fn same(&self, other: &Term<'_>) -> bool {
        match (self, other) {
            (Self::Ordered(a), Term::Ordered(b)) => {
                compare_total(Some(a), Some(b)) == Ordering::Equal
            }
            (Self::Hashed(_, a), Term::Hashed(_, b)) | (Self::Word(a), Term::Word(b)) => a == b,
            _ => false,
        }
    }

    /// The value, for a btree or hash index.
    fn value(&self) -> Option<&Document> {
        match self {
            Self::Ordered(v) | Self::Hashed(v, _) => Some(v),
            Self::Word(_) => None,
        }
    }
}

/// Every secondary index of one store, kept in step with the store's entries.
///
/// The adapter owns the entries and this set; it must call [`IndexSet::update`]
/// (or [`IndexSet::clear`]) for every committed change, and may call
/// [`IndexSet::check_unique`] before committing to refuse a change a unique
/// index forbids. Cloning is cheap enough for copy-on-write snapshots, and the
/// clones share their hit/miss counters.
///
/// Supported: single-field btree (equality, `in`, ranges), hash (equality,
/// `in`) and fulltext (`text`) indexes, `unique` and `sparse`. Spatial and
/// multi-field indexes are refused with `Unsupported`.
#[derive(Debug, Clone, Default)]
pub struct IndexSet {
    indexes: Vec<Index>,
}

impl IndexSet {
    /// The index kinds a set builds, for [`crate::Capabilities::with_index_kinds`]
    /// (all of them may be `unique` but fulltext).
    pub const KINDS: [IndexKind; 3] = [IndexKind::Btree, IndexKind::Hash, IndexKind::Fulltext];

    /// A set without indexes.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the set has no index (then no change needs filing).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.indexes.is_empty()
    }

    /// The definition of the index called `name`, if any.
    #[must_use]
    pub fn definition(&self, name: &str) -> Option<&IndexDefinition> {
        self.indexes
            .iter()
            .find(|i| i.name() == name)
            .map(|i| &i.definition)
    }

    /// Checks `definition` and builds the index over `entries` (each key once).
    ///
    /// # Behavior
    /// - returns `Ok(true)` when the index was built and added;
    /// - returns `Ok(false)` and changes nothing when an identical definition
    ///   exists under the name;
    /// - on any error the set is unchanged.
    ///
    /// # Errors
    /// `DuplicateKey` when another definition has the name, or the index is
    /// unique and two entries share a value; `Unsupported` for a spatial,
    /// multi-field or unique fulltext index; `InvalidQuery` for a bad field path.
    pub fn create<'a, I>(&mut self, definition: IndexDefinition, entries: I) -> Result<bool>
    where
        I: IntoIterator<Item = (&'a str, &'a Document)>,
    {
        if let Some(existing) = self.definition(&definition.name) {
            if *existing == definition {
                return Ok(false);
            }
            return Err(StorageError::new(
                ErrorCode::DuplicateKey,
                "an index with this name and another definition exists",
            )
            .with_context("index", &definition.name));
        }
        let mut index = empty(definition)?;
        for (key, doc) in entries {
            index.insert_checked(key, doc)?;
        }
        self.indexes.push(index);
        Ok(true)
    }

    /// Removes the index called `name`; `false` when there is none.
    pub fn drop_index(&mut self, name: &str) -> bool {
        let before = self.indexes.len();
        self.indexes.retain(|i| i.name() != name);
        before != self.indexes.len()
    }

    /// Every index with its definition and stats, in creation order.
    ///
    /// `backend_kind` is `None`: each index is built as the kind requested.
    #[must_use]
    pub fn list(&self) -> Vec<IndexInfo> {
        self.indexes.iter().map(Index::info).collect()
    }

    /// The same definitions built afresh over `entries` (after the adapter
    /// replaced its contents wholesale, say by reloading a file). Stats restart.
    ///
    /// # Errors
    /// `DuplicateKey` when the new entries break a unique index.
    pub fn rebuild<'a, I>(&self, entries: I) -> Result<Self>
    where
        I: IntoIterator<Item = (&'a str, &'a Document)>,
    {
        let mut indexes = self
            .indexes
            .iter()
            .map(|i| empty(i.definition.clone()))
            .collect::<Result<Vec<_>>>()?;
        for (key, doc) in entries {
            for index in &mut indexes {
                index.insert_checked(key, doc)?;
            }
        }
        Ok(Self { indexes })
    }

    /// Files a committed change of `key`: `old` is its previous document
    /// (`None`: absent), `new` its document now (`None`: deleted).
    pub fn update(&mut self, key: &str, old: Option<&Document>, new: Option<&Document>) {
        for index in &mut self.indexes {
            match (old, new) {
                (Some(old), Some(new)) => index.replace(key, old, new),
                (Some(old), None) => index.remove(key, old),
                (None, Some(new)) => index.insert(key, new),
                (None, None) => {}
            }
        }
    }

    /// Forgets every entry (the store was cleared); the definitions stay.
    pub fn clear(&mut self) {
        for index in &mut self.indexes {
            index.clear();
        }
    }

    /// Refuses a planned set of changes that would give two live entries an
    /// equal value in a unique index. Call it before committing, against the
    /// set as it reflects the committed entries.
    ///
    /// `changes` holds the final document of every touched key (`None`:
    /// removed); `cleared` says every untouched entry is removed too.
    ///
    /// # Errors
    /// `DuplicateKey`, naming the index, the value and both keys.
    pub fn check_unique<D: Borrow<Document>>(
        &self,
        changes: &BTreeMap<String, Option<D>>,
        cleared: bool,
    ) -> Result<()> {
        for index in self.indexes.iter().filter(|i| i.definition.unique) {
            let mut claimed: HashMap<String, &str> = HashMap::new();
            for (key, doc) in changes {
                let Some(doc) = doc else { continue };
                for term in index.terms(doc.borrow()) {
                    let Some(value) = term.value() else { continue };
                    let canon = match &term {
                        Term::Hashed(_, canon) => canon.clone(),
                        _ => canonical(value),
                    };
                    if let Some(other) = claimed.insert(canon, key) {
                        return Err(conflict(index, value, other, key));
                    }
                    if cleared {
                        continue;
                    }
                    // The set mirrors the committed entries, so a filed key is live
                    // unless this change touches it.
                    let holder = index.exact_term(&term).and_then(|keys| {
                        keys.iter().find(|k| *k != key && !changes.contains_key(*k))
                    });
                    if let Some(holder) = holder {
                        return Err(conflict(index, value, holder, key));
                    }
                }
            }
        }
        Ok(())
    }

    /// The most selective index for the filter's top level (the filter itself, or
    /// the children of a top-level `and`); `None` means a full scan.
    ///
    /// Only clauses an index answers exactly as a superset are considered: `eq`
    /// and `in` without `null` (which also matches missing fields), `text` on a
    /// fulltext index, and ranges on a btree index, where every range clause on
    /// the field is answered at once as one range (`gte a and lt b` walks the
    /// values from `a` to `b` only, never crossing type brackets). Each
    /// candidate plan is costed by the keys it would yield (posting sizes for
    /// equality, counted lazily for ranges, stopping once a plan costs more than
    /// the best so far), and the cheapest wins; ties go to the earlier clause.
    /// The evaluator still checks every clause on the candidates.
    #[must_use]
    pub fn choose<'a>(&'a self, filter: Option<&'a Filter>) -> Option<IndexChoice<'a>> {
        if self.indexes.is_empty() {
            return None;
        }
        let clauses: Vec<(&str, Operator, &Document)> = match filter? {
            Filter::And(children) => children.iter().collect::<Vec<_>>(),
            other => vec![other],
        }
        .into_iter()
        .filter_map(|clause| match clause {
            Filter::Condition { field, op, value } => Some((field.as_str(), *op, value)),
            _ => None,
        })
        .collect();
        let is_range = |op: Operator| {
            matches!(
                op,
                Operator::Gt | Operator::Gte | Operator::Lt | Operator::Lte
            )
        };
        let mut best: Option<IndexChoice<'a>> = None;
        let mut ranged: Vec<&str> = Vec::new();
        for &(field, op, operand) in &clauses {
            let cap = best.map_or(usize::MAX, |b| b.estimate);
            if is_range(op) {
                if ranged.contains(&field) {
                    continue;
                }
                ranged.push(field);
            }
            let Some(index) = self
                .indexes
                .iter()
                .find(|i| i.path.as_str() == field && i.answers(op, operand))
            else {
                continue;
            };
            let (estimate, range) = if is_range(op) {
                let on_field: Vec<(Operator, &Document)> = clauses
                    .iter()
                    .filter(|(f, o, v)| *f == field && is_range(*o) && index.answers(*o, v))
                    .map(|(_, o, v)| (*o, *v))
                    .collect();
                let Some(range) = RangeProbe::of(&on_field) else {
                    continue;
                };
                (index.count_range(&range, cap), Some(range))
            } else {
                (index.estimate_clause(op, operand), None)
            };
            let choice = IndexChoice {
                index,
                field,
                op,
                operand,
                range,
                estimate,
            };
            if best.is_none_or(|b| choice.estimate < b.estimate) {
                best = Some(choice);
            }
        }
        best
    }

    /// The entries a query with `filter` must hand to the evaluator: those of
    /// the [chosen](Self::choose) index's candidates, in key order, or every
    /// entry when no index applies (a full scan). Counts a hit or a miss like
    /// [`IndexChoice::candidates`].
    pub fn scan<'e, V>(
        &self,
        filter: Option<&Filter>,
        entries: &'e BTreeMap<String, V>,
    ) -> impl Iterator<Item = (&'e String, &'e V)> + use<'e, V> {
        match self.choose(filter) {
            Some(choice) => Scan::Keys(choice.candidates().into_iter(), entries),
            None => Scan::All(entries.iter()),
        }
    }
}

/// Iterator of [`IndexSet::scan`]: the candidates' entries, or every entry.
enum Scan<'e, V> {
    Keys(
        std::collections::btree_set::IntoIter<String>,
        &'e BTreeMap<String, V>,
    ),
    All(std::collections::btree_map::Iter<'e, String, V>),
}

impl<'e, V> Iterator for Scan<'e, V> {
    type Item = (&'e String, &'e V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            // A candidate missing from the entries is skipped, not an error: the
            // evaluator judges what exists.
            Self::Keys(keys, entries) => keys.find_map(|k| entries.get_key_value(&k)),
            Self::All(iter) => iter.next(),
        }
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

/// Checks a definition and makes an index without entries.
fn empty(definition: IndexDefinition) -> Result<Index> {
    let [field] = definition.fields.as_slice() else {
        return Err(
            StorageError::unsupported("in-memory indexes cover a single field only")
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
                "there is no in-memory spatial index; within_box runs in process",
            )
            .with_context("index", &definition.name));
        }
    };
    let path =
        FieldPath::parse(&field.path).map_err(|e| e.with_context("index", &definition.name))?;
    Ok(Index {
        definition,
        path,
        postings,
        entries: 0,
        multi: BTreeSet::new(),
        counters: Arc::new(Counters::default()),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::query::field;

    fn set_with(definition: IndexDefinition, data: &[(&str, Document)]) -> Result<IndexSet> {
        let mut set = IndexSet::new();
        set.create(definition, data.iter().map(|(k, v)| (*k, v)))?;
        Ok(set)
    }

    fn candidates(set: &IndexSet, filter: &Filter) -> Result<Vec<String>> {
        let choice = set
            .choose(Some(filter))
            .ok_or_else(|| StorageError::unsupported("no index chosen"))?;
        Ok(choice.candidates().into_iter().collect())
    }

    #[test]
    fn index_usage_counts_hits_and_misses_per_name() {
        let usage = IndexUsage::default();
        usage.record("a", true);
        usage.record("a", true);
        usage.record("a", false);
        assert_eq!(usage.get("a"), (2, 1));
        assert_eq!(usage.get("b"), (0, 0));
        usage.forget("a");
        assert_eq!(usage.get("a"), (0, 0));
    }

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

    #[test]
    fn range_candidates_stay_in_the_operand_bracket() -> Result<()> {
        let set = set_with(
            IndexDefinition::new("n", "n", IndexKind::Btree),
            &[
                ("a", json!({"n": 1})),
                ("b", json!({"n": 5})),
                ("c", json!({"n": "9"})),
                ("d", json!({"n": [2, 7]})),
            ],
        )?;
        assert_eq!(candidates(&set, &field("n").gt(3))?, ["b", "d"]);
        assert_eq!(candidates(&set, &field("n").lte(2))?, ["a", "d"]);
        Ok(())
    }

    #[test]
    fn range_clauses_on_one_field_are_answered_as_one_range() -> Result<()> {
        let mut data: Vec<(String, Document)> = (0..10)
            .map(|i| (format!("k{i}"), json!({"n": i})))
            .collect();
        // An array field may meet `gte 5` and `lt 3` with different elements.
        data.push(("multi".to_owned(), json!({"n": [1, 10]})));
        data.push(("text".to_owned(), json!({"n": "4"})));
        let mut set = IndexSet::new();
        set.create(
            IndexDefinition::new("n", "n", IndexKind::Btree),
            data.iter().map(|(k, v)| (k.as_str(), v)),
        )?;
        let both = |a: Filter, b: Filter| crate::query::and(vec![a, b]);
        let window = both(field("n").gte(3), field("n").lt(6));
        let choice = set
            .choose(Some(&window))
            .ok_or_else(|| StorageError::unsupported("no index chosen"))?;
        assert_eq!(choice.describe(), "n >= 3 and n < 6");
        assert_eq!(choice.estimate(), 4);
        assert_eq!(candidates(&set, &window)?, ["k3", "k4", "k5", "multi"]);
        // The tighter bound of each side wins; an exclusive bound beats an equal inclusive one.
        let tight = crate::query::and(vec![
            field("n").gt(1),
            field("n").gte(4),
            field("n").lte(8),
            field("n").lt(8),
        ]);
        assert_eq!(
            set.choose(Some(&tight))
                .ok_or_else(|| StorageError::unsupported("no index chosen"))?
                .describe(),
            "n >= 4 and n < 8"
        );
        assert_eq!(candidates(&set, &tight)?, ["k4", "k5", "k6", "k7", "multi"]);
        // An empty or inverted range, or bounds in two type brackets: only multi-valued keys.
        assert_eq!(
            candidates(&set, &both(field("n").gte(5), field("n").lt(3)))?,
            ["multi"]
        );
        assert_eq!(
            candidates(&set, &both(field("n").gte(5), field("n").lt("9")))?,
            ["multi"]
        );
        // Every candidate set is a superset of what the evaluator matches.
        for filter in [window, tight, both(field("n").gte(5), field("n").lt(3))] {
            let q = crate::query::CompiledQuery::compile(&crate::Query::filter(filter.clone()))?;
            let matched: Vec<String> = q
                .run(data.iter().map(|(k, v)| (k.as_str(), v)))
                .into_iter()
                .map(|m| m.key)
                .collect();
            let got = candidates(&set, &filter)?;
            assert!(
                matched.iter().all(|k| got.contains(k)),
                "{matched:?} ⊄ {got:?}"
            );
        }
        Ok(())
    }

    use proptest::strategy::Strategy as _;

    fn scalar() -> impl proptest::strategy::Strategy<Value = Document> {
        use proptest::prelude::*;
        prop_oneof![
            (-5i64..15).prop_map(|n| json!(n)),
            (-5i64..15).prop_map(|n| json!(f64::from(i32::try_from(n).unwrap_or(0)) + 0.5)),
            "[a-d]{0,2}".prop_map(|s| json!(s)),
            Just(json!(null)),
            any::<bool>().prop_map(|b| json!(b)),
        ]
    }

    proptest::proptest! {
        /// Whatever the documents (scalars, arrays, mixed types, missing fields) and the
        /// range clauses, the chosen index's candidates hold every entry the evaluator
        /// matches.
        #[test]
        fn range_candidates_are_a_superset_of_the_matches(
            values in proptest::collection::vec(
                proptest::option::of(proptest::prop_oneof![
                    scalar(),
                    proptest::collection::vec(scalar(), 0..4).prop_map(Document::Array),
                ]),
                0..30,
            ),
            clauses in proptest::collection::vec((0usize..4, scalar()), 1..4),
            eq_other in proptest::option::of(0i64..3),
        ) {
            use proptest::prelude::*;
            let data: Vec<(String, Document)> = values
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    let mut doc = json!({"m": i64::try_from(i % 3).unwrap_or(0)});
                    if let Some(v) = v {
                        doc["n"] = v;
                    }
                    (format!("k{i:02}"), doc)
                })
                .collect();
            let mut set = IndexSet::new();
            for (name, path) in [("n", "n"), ("m", "m")] {
                set.create(
                    IndexDefinition::new(name, path, IndexKind::Btree),
                    data.iter().map(|(k, v)| (k.as_str(), v)),
                )?;
            }
            let mut filters: Vec<Filter> = clauses
                .into_iter()
                .map(|(op, v)| match op {
                    0 => field("n").gt(v),
                    1 => field("n").gte(v),
                    2 => field("n").lt(v),
                    _ => field("n").lte(v),
                })
                .collect();
            if let Some(m) = eq_other {
                filters.push(field("m").eq(m));
            }
            let filter = crate::query::and(filters);
            let q = crate::query::CompiledQuery::compile(&crate::Query::filter(filter.clone()))?;
            let matched: Vec<String> = q
                .run(data.iter().map(|(k, v)| (k.as_str(), v)))
                .into_iter()
                .map(|m| m.key)
                .collect();
            let data_map: BTreeMap<String, Document> = data.into_iter().collect();
            let scanned: BTreeSet<String> = set
                .scan(Some(&filter), &data_map)
                .map(|(k, _)| k.clone())
                .collect();
            for key in &matched {
                prop_assert!(scanned.contains(key), "{key} matched but was not a candidate");
            }
        }
    }

    #[test]
    fn an_overwrite_refiles_only_when_the_indexed_values_change() -> Result<()> {
        let old = json!({"tags": ["a", "b"], "other": 1});
        let mut set = set_with(
            IndexDefinition::new("t", "tags", IndexKind::Btree),
            &[("k", old.clone())],
        )?;
        // Same tags in another order, another unindexed field: filed as before.
        let same = json!({"tags": ["b", "a"], "other": 2});
        set.update("k", Some(&old), Some(&same));
        assert_eq!(candidates(&set, &field("tags").eq("a"))?, ["k"]);
        assert_eq!(set.list()[0].stats.entries, 1);
        let moved = json!({"tags": ["c"]});
        set.update("k", Some(&same), Some(&moved));
        assert_eq!(candidates(&set, &field("tags").eq("c"))?, ["k"]);
        assert!(
            set.choose(Some(&field("tags").eq("a")))
                .is_some_and(|c| c.candidates().is_empty())
        );
        assert_eq!(set.list()[0].stats.entries, 1);
        Ok(())
    }

    #[test]
    fn the_most_selective_index_is_chosen() -> Result<()> {
        let data: Vec<(String, Document)> = (0..100)
            .map(|i| (format!("k{i:03}"), json!({"kind": i % 2, "id": i})))
            .collect();
        let mut set = IndexSet::new();
        for (name, path) in [("by_kind", "kind"), ("by_id", "id")] {
            set.create(
                IndexDefinition::new(name, path, IndexKind::Btree),
                data.iter().map(|(k, v)| (k.as_str(), v)),
            )?;
        }
        let pick = |filter: &Filter| -> Result<String> {
            Ok(set
                .choose(Some(filter))
                .ok_or_else(|| StorageError::unsupported("no index chosen"))?
                .index_name()
                .to_owned())
        };
        let q = crate::query::and(vec![field("kind").eq(1), field("id").gte(90)]);
        assert_eq!(pick(&q)?, "by_id");
        let q = crate::query::and(vec![field("kind").eq(1), field("id").gte(10)]);
        assert_eq!(pick(&q)?, "by_kind");
        let q = crate::query::and(vec![
            field("id").gte(10),
            field("kind").eq(0),
            field("id").lt(12),
        ]);
        assert_eq!(pick(&q)?, "by_id");
        assert_eq!(candidates(&set, &q)?, ["k010", "k011"]);
        Ok(())
    }

    #[test]
    fn scan_narrows_to_candidates_only_when_an_index_applies() -> Result<()> {
        let data: BTreeMap<String, Document> = [
            ("a".to_owned(), json!({"n": 1, "s": "x"})),
            ("b".to_owned(), json!({"n": 2, "s": "y"})),
        ]
        .into();
        let mut set = IndexSet::new();
        set.create(
            IndexDefinition::new("n", "n", IndexKind::Hash),
            data.iter().map(|(k, v)| (k.as_str(), v)),
        )?;
        let keys = |filter: &Filter| -> Vec<String> {
            set.scan(Some(filter), &data)
                .map(|(k, _)| k.clone())
                .collect()
        };
        assert_eq!(keys(&field("n").eq(2)), ["b"]);
        assert_eq!(keys(&field("n").eq(3)), Vec::<String>::new());
        // No index on `s`, and a hash index cannot answer a range: full scans.
        assert_eq!(keys(&field("s").eq("x")), ["a", "b"]);
        assert_eq!(keys(&field("n").gt(1)), ["a", "b"]);
        let stats = set.list()[0].stats;
        assert_eq!((stats.hits, stats.misses), (1, 1));
        Ok(())
    }

    #[test]
    fn unique_index_refuses_existing_duplicates_and_is_not_added() {
        let mut set = IndexSet::new();
        let (a, b) = (json!({"e": "x"}), json!({"e": "x"}));
        let err = set
            .create(
                IndexDefinition::new("e", "e", IndexKind::Hash).unique(),
                [("a", &a), ("b", &b)],
            )
            .expect_err("must fail");
        assert_eq!(err.code(), ErrorCode::DuplicateKey);
        assert!(set.is_empty());
    }

    #[test]
    fn create_is_idempotent_and_refuses_another_definition_under_the_name() -> Result<()> {
        let mut set = IndexSet::new();
        let def = IndexDefinition::new("i", "a", IndexKind::Btree);
        assert!(set.create(def.clone(), [])?);
        assert!(!set.create(def, [])?);
        let err = set
            .create(IndexDefinition::new("i", "b", IndexKind::Btree), [])
            .expect_err("must fail");
        assert_eq!(err.code(), ErrorCode::DuplicateKey);
        let err = set
            .create(IndexDefinition::new("g", "loc", IndexKind::Spatial), [])
            .expect_err("must fail");
        assert_eq!(err.code(), ErrorCode::Unsupported);
        assert_eq!(set.list().len(), 1);
        assert!(set.drop_index("i"));
        assert!(!set.drop_index("i"));
        Ok(())
    }

    #[test]
    fn check_unique_sees_moves_within_a_change_and_clears() -> Result<()> {
        let set = set_with(
            IndexDefinition::new("e", "e", IndexKind::Hash).unique(),
            &[("a", json!({"e": 1})), ("b", json!({"e": 2}))],
        )?;
        let taken: BTreeMap<String, Option<Document>> =
            [("c".to_owned(), Some(json!({"e": 1.0})))].into();
        assert_eq!(
            set.check_unique(&taken, false).map_err(|e| e.code()),
            Err(ErrorCode::DuplicateKey)
        );
        // Clearing, or moving the value away in the same change, frees it.
        set.check_unique(&taken, true)?;
        let moved: BTreeMap<String, Option<Document>> = [
            ("a".to_owned(), None),
            ("c".to_owned(), Some(json!({"e": 1}))),
        ]
        .into();
        set.check_unique(&moved, false)?;
        let twice: BTreeMap<String, Option<Document>> = [
            ("c".to_owned(), Some(json!({"e": 3}))),
            ("d".to_owned(), Some(json!({"e": 3}))),
        ]
        .into();
        assert!(set.check_unique(&twice, true).is_err());
        Ok(())
    }

    #[test]
    fn rebuild_and_update_keep_entries_and_stats_in_step() -> Result<()> {
        let mut set = set_with(
            IndexDefinition::new("t", "bio", IndexKind::Fulltext),
            &[("a", json!({"bio": "Rust and SQL"}))],
        )?;
        let new = json!({"bio": "rust everywhere"});
        set.update("b", None, Some(&new));
        assert_eq!(candidates(&set, &field("bio").text("rust"))?, ["a", "b"]);
        set.update("b", Some(&new), None);
        assert_eq!(
            candidates(&set, &field("bio").text("everywhere"))?,
            Vec::<String>::new()
        );
        let stats = set.list()[0].stats;
        assert_eq!((stats.entries, stats.hits, stats.misses), (1, 1, 1));
        let other = json!({"bio": "sql"});
        let rebuilt = set.rebuild([("z", &other)])?;
        assert_eq!(candidates(&rebuilt, &field("bio").text("sql"))?, ["z"]);
        set.clear();
        assert_eq!(set.list()[0].stats.entries, 0);
        Ok(())
    }
}
