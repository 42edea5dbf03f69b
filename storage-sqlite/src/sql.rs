//! SQL text: the per-table statements, and the translation of query filters into
//! SQL candidate filters.
//!
//! Every statement names its table through [`quote_ident`] (the name was validated as a
//! plain identifier first) and passes keys, values and operands as bound parameters.

/// Quotes an identifier for SQLite (`"` doubled inside double quotes).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQLite (`'` doubled inside single quotes). Used only for
/// DDL, where SQLite accepts no parameters, on text this crate validated.
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Schema shared by every table of a database.
///
/// The change log appends in `seq` order, which is its rowid: a watcher reads the rows
/// after its cursor as a rowid range, so the log needs no index of its own, and a commit
/// writes one more B-tree page than the data alone. `seq` never goes back: a trim records the
/// largest number it removed in `_storage_log_horizon` under the name `''`. Files made before this layout
/// keep theirs (`AUTOINCREMENT`, an index on `(tbl, seq)`), which every statement here
/// also reads and writes correctly.
pub(crate) const SHARED_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS _storage_indexes (
    tbl TEXT NOT NULL,
    name TEXT NOT NULL,
    id INTEGER NOT NULL,
    definition TEXT NOT NULL,
    PRIMARY KEY (tbl, name)
);
CREATE TABLE IF NOT EXISTS _storage_changes (
    seq INTEGER PRIMARY KEY,
    commit_seq INTEGER NOT NULL,
    tbl TEXT NOT NULL,
    kind INTEGER NOT NULL,
    key TEXT NOT NULL,
    value TEXT,
    at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS _storage_log_horizon (
    tbl TEXT PRIMARY KEY,
    trimmed_through INTEGER NOT NULL
);
";

/// Rows fetched per round trip while iterating.
pub(crate) const PAGE_ROWS: usize = 512;

/// The statements of one table, formatted once when the handle opens.
#[derive(Debug)]
pub(crate) struct TableSql {
    /// The table's quoted name.
    pub(crate) table: String,
    pub(crate) create: String,
    pub(crate) get: String,
    pub(crate) has: String,
    pub(crate) upsert: String,
    pub(crate) delete: String,
    pub(crate) delete_returning: String,
    pub(crate) clear: String,
    pub(crate) clear_returning: String,
    pub(crate) count: String,
    pub(crate) page_keys: String,
    pub(crate) page_entries: String,
    pub(crate) all_entries: String,
}

impl TableSql {
    pub(crate) fn new(table_name: &str) -> Self {
        let t = quote_ident(table_name);
        Self {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 id INTEGER PRIMARY KEY, \
                 key TEXT NOT NULL UNIQUE, \
                 value TEXT NOT NULL)"
            ),
            get: format!("SELECT value FROM {t} WHERE key = ?1"),
            has: format!("SELECT 1 FROM {t} WHERE key = ?1"),
            upsert: format!(
                "INSERT INTO {t} (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            ),
            delete: format!("DELETE FROM {t} WHERE key = ?1"),
            delete_returning: format!("DELETE FROM {t} WHERE key = ?1 RETURNING value"),
            clear: format!("DELETE FROM {t}"),
            clear_returning: format!("DELETE FROM {t} RETURNING key, value"),
            count: format!("SELECT count(*) FROM {t}"),
            // The page size is written into the statement: a bound `LIMIT` is one the
            // planner looks at, and SQLite then compiles the statement again every time
            // it is bound anew (every page).
            page_keys: format!("SELECT key FROM {t} WHERE key > ?1 ORDER BY key LIMIT {PAGE_ROWS}"),
            page_entries: format!(
                "SELECT key, value FROM {t} WHERE key > ?1 ORDER BY key LIMIT {PAGE_ROWS}"
            ),
            all_entries: format!("SELECT key, value FROM {t} ORDER BY key"),
            table: t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}

// ---------------------------------------------------------------------------------------
// Query translation: candidate filters.
//
// The reference evaluator's rules (multi-valued paths through arrays of objects, `eq`
// matching any array element, numbers equal across integer and float, type brackets)
// have no exact counterpart in SQLite's JSON functions. So a filter becomes a SQL
// *candidate* filter that provably keeps every entry the evaluator would match (it may
// keep more), and the evaluator then runs in process on the candidates. Clauses with no
// sound candidate filter (`ne`, `nin`, `not`, `regex`, nested clauses, `exists: false`,
// `eq null`, …) keep every entry. Ordering, paging and projection run in process.
// ---------------------------------------------------------------------------------------

use rusqlite::types::Value as SqlValue;
use storage_core::query::{FieldPath, words};
use storage_core::{Document, Filter, IndexKind, Operator};

use crate::index::IndexMeta;

/// Integers and floats of at most this magnitude are represented exactly as doubles,
/// so SQLite's mixed integer/real comparisons agree with the evaluator's on them.
const EXACT_FLOAT_LIMIT: f64 = 9_007_199_254_740_992.0;

/// Limits that keep a candidate filter within SQLite's expression depth (1000) and
/// parameter count: past them a clause simply stays in process.
const MAX_DEPTH: usize = 16;
const MAX_BRANCHES: usize = 64;
const MAX_PARAMS: usize = 2000;

/// A candidate filter: SQL, its parameters, and what it says for `explain`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Candidates {
    /// A boolean SQL expression over the table's columns (`id`, `key`, `value`).
    pub(crate) sql: String,
    pub(crate) params: Vec<SqlValue>,
    /// The clauses translated, for `explain`.
    pub(crate) pushed: Vec<String>,
    /// Indexes the candidate filter can use (by name).
    pub(crate) indexes: Vec<String>,
    /// JSON paths whose values `sql` reads as the columns `__v0`, `__v1`, … (see
    /// [`Candidates::select`]); empty when it reads them with `json_extract`.
    pub(crate) columns: Vec<String>,
}

impl Candidates {
    /// The statement selecting `key, value` of the candidates from `table` (quoted).
    ///
    /// With columns, each path's value is extracted once per row, in a subquery that
    /// SQLite runs as a co-routine (its `LIMIT` keeps it from being merged into the outer
    /// query, which would extract the value again for each clause that reads it): a
    /// range reads its path once instead of once per bound and again per array test.
    pub(crate) fn select(&self, table: &str) -> String {
        if self.columns.is_empty() {
            return format!("SELECT key, value FROM {table} WHERE {}", self.sql);
        }
        let columns: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, p)| format!("json_extract(value, {}) AS __v{i}", quote_literal(p)))
            .collect();
        format!(
            "SELECT key, value FROM (SELECT id, key, value, {} FROM {table} LIMIT -1) WHERE {}",
            columns.join(", "),
            self.sql
        )
    }
}

/// Whether a path segment can appear inside a quoted SQLite JSON path label.
fn sql_safe_segment(segment: &str) -> bool {
    !segment.is_empty()
        && !segment
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control())
}

/// The SQLite JSON path (`$."a"."b"`) of a validated field path whose segments are all
/// object keys, or `None` when a segment cannot be written that way.
pub(crate) fn json_path(path: &FieldPath) -> Option<String> {
    json_path_of(path.segments())
}

pub(crate) fn json_path_of(segments: &[String]) -> Option<String> {
    let mut out = String::from("$");
    for seg in segments {
        if !sql_safe_segment(seg) {
            return None;
        }
        out.push_str(".\"");
        out.push_str(seg);
        out.push('"');
    }
    Some(out)
}

/// How a translated clause names a JSON path: bound (ad-hoc queries) or as the literal
/// an expression index was built on (so SQLite's planner can match the index).
#[derive(Clone, Copy, PartialEq, Eq)]
enum PathMode {
    Bound,
    Literal,
}

struct Builder<'a> {
    depth: usize,
    params: Vec<SqlValue>,
    pushed: Vec<String>,
    indexes: Vec<String>,
    catalog: &'a [IndexMeta],
    /// `Some` when values at unindexed paths are read as columns (the paths so far).
    columns: Option<Vec<String>>,
}

impl Builder<'_> {
    /// The value at `json_path`: a column when columns are on and the path has no
    /// index, else `json_extract`.
    fn value_at(&mut self, json_path: &str, mode: PathMode) -> String {
        if mode == PathMode::Bound
            && let Some(columns) = &mut self.columns
        {
            let i = columns
                .iter()
                .position(|c| c == json_path)
                .unwrap_or_else(|| {
                    columns.push(json_path.to_owned());
                    columns.len() - 1
                });
            return format!("__v{i}");
        }
        let p = self.path_expr(json_path, mode);
        format!("json_extract(value, {p})")
    }

    fn path_expr(&mut self, json_path: &str, mode: PathMode) -> String {
        match mode {
            PathMode::Literal => quote_literal(json_path),
            PathMode::Bound => {
                self.params.push(SqlValue::Text(json_path.to_owned()));
                "?".to_owned()
            }
        }
    }

    /// `OR`-terms that keep entries where the path passes through an array before
    /// its last segment (and, with `leaf`, ends on an array): there the evaluator sees
    /// several values, which `json_extract` does not.
    fn irregular(&mut self, segments: &[String], leaf: bool, mode: PathMode) -> Vec<String> {
        let upto = if leaf {
            segments.len()
        } else {
            segments.len().saturating_sub(1)
        };
        let columns = mode == PathMode::Bound && self.columns.is_some();
        // The stored text is serde_json's compact JSON: a document that is an array
        // starts with `[`, and `json_extract` gives an array as its JSON text, which
        // starts with `[` too (so does a string starting with `[`, which the evaluator
        // then rejects). With columns these text tests replace a JSON lookup per row.
        let root_array = "(value >= '[' AND value < '\\')";
        if columns
            && leaf
            && let Some(jp) = json_path_of(segments)
        {
            // A path through an array (the document itself included) reads as NULL, so
            // only a row whose value is NULL needs the prefix tests.
            let v = self.value_at(&jp, mode);
            let mut through = vec![root_array.to_owned()];
            for n in 1..segments.len() {
                if let Some(prefix) = json_path_of(&segments[..n]) {
                    let p = self.path_expr(&prefix, mode);
                    through.push(format!("json_type(value, {p}) = 'array'"));
                }
            }
            return vec![
                format!("({v} >= '[' AND {v} < '\\')"),
                format!("({v} IS NULL AND ({}))", through.join(" OR ")),
            ];
        }
        let mut terms = Vec::new();
        // n = 0 is the document itself: a document that is an array is searched element-wise.
        for n in 0..=upto {
            if let Some(prefix) = json_path_of(&segments[..n]) {
                if columns && n == 0 {
                    terms.push(root_array.to_owned());
                    continue;
                }
                let p = self.path_expr(&prefix, mode);
                terms.push(format!("json_type(value, {p}) = 'array'"));
            }
        }
        terms
    }

    fn index_on(&self, path: &str, kinds: &[IndexKind]) -> Option<&IndexMeta> {
        self.catalog.iter().find(|ix| {
            ix.definition
                .fields
                .first()
                .is_some_and(|f| f.path == path && kinds.contains(&f.kind))
        })
    }

    /// Translates `filter`; on `None` nothing it pushed (parameters, notes) remains.
    fn translate(&mut self, filter: &Filter) -> Option<String> {
        let marks = (self.params.len(), self.pushed.len(), self.indexes.len());
        let columns_mark = self.columns.as_ref().map_or(0, Vec::len);
        self.depth += 1;
        let sql = if self.depth > MAX_DEPTH {
            None
        } else {
            self.translate_inner(filter)
        }
        .filter(|_| self.params.len() <= MAX_PARAMS);
        self.depth -= 1;
        if sql.is_none() {
            self.params.truncate(marks.0);
            self.pushed.truncate(marks.1);
            self.indexes.truncate(marks.2);
            if let Some(columns) = &mut self.columns {
                columns.truncate(columns_mark);
            }
        }
        sql
    }

    fn translate_inner(&mut self, filter: &Filter) -> Option<String> {
        match filter {
            Filter::And(items) => {
                // Any subset of a conjunction still keeps every match.
                let parts: Vec<String> = items
                    .iter()
                    .filter_map(|f| self.translate(f))
                    .take(MAX_BRANCHES)
                    .collect();
                (!parts.is_empty()).then(|| format!("({})", parts.join(" AND ")))
            }
            Filter::Or(items) => {
                if items.is_empty() {
                    return Some("0".to_owned());
                }
                if items.len() > MAX_BRANCHES {
                    return None;
                }
                // One untranslatable branch keeps everything (`translate` then undoes the rest).
                let mut parts = Vec::new();
                for item in items {
                    parts.push(self.translate(item)?);
                }
                Some(format!("({})", parts.join(" OR ")))
            }
            Filter::Not(_) | Filter::Nested { .. } => None,
            Filter::Condition { field, op, value } => {
                let path = FieldPath::parse(field).ok()?;
                let jp = json_path(&path)?;
                let sql = self.condition(&path, &jp, *op, value)?;
                self.pushed.push(format!(
                    "{field} {} {value}",
                    format!("{op:?}").to_lowercase()
                ));
                Some(sql)
            }
        }
    }

    fn condition(
        &mut self,
        path: &FieldPath,
        jp: &str,
        op: Operator,
        value: &Document,
    ) -> Option<String> {
        let segs = path.segments();
        match op {
            Operator::Eq => self.eq_any(path, jp, std::slice::from_ref(value)),
            Operator::In => match value {
                Document::Array(values) if !values.is_empty() => self.eq_any(path, jp, values),
                Document::Array(_) => Some("0".to_owned()),
                _ => None,
            },
            Operator::Gt | Operator::Gte | Operator::Lt | Operator::Lte => {
                let lower = matches!(op, Operator::Gt | Operator::Gte);
                let bound = match value {
                    Document::Number(n) => {
                        let x = n.as_f64().filter(|x| x.abs() <= EXACT_FLOAT_LIMIT)?;
                        // Widened by a relative margin: SQLite's text-to-double conversion
                        // may differ from Rust's in the last bits; the evaluator decides.
                        let margin = x.abs() * 1e-9 + 1e-300;
                        SqlValue::Real(if lower { x - margin } else { x + margin })
                    }
                    Document::String(s) => SqlValue::Text(s.clone()),
                    _ => return None,
                };
                let cmp = if lower { ">=" } else { "<=" };
                let (mode, index) = self.mode_for(path.as_str(), &[IndexKind::Btree]);
                let v = self.value_at(jp, mode);
                self.params.push(bound);
                let mut terms = vec![format!("{v} {cmp} ?")];
                terms.extend(self.irregular(segs, true, mode));
                self.note_index(index);
                Some(format!("({})", terms.join(" OR ")))
            }
            Operator::Exists => match value {
                Document::Bool(true) => {
                    let p = self.path_expr(jp, PathMode::Bound);
                    let mut terms = vec![format!("json_type(value, {p}) IS NOT NULL")];
                    terms.extend(self.irregular(segs, false, PathMode::Bound));
                    Some(format!("({})", terms.join(" OR ")))
                }
                _ => None,
            },
            Operator::Text => {
                let Document::String(text) = value else {
                    return None;
                };
                let ix = self.index_on(path.as_str(), &[IndexKind::Fulltext])?;
                let query_words = words(text);
                if query_words.is_empty()
                    || !query_words
                        .iter()
                        .all(|w| w.chars().all(|c| c.is_ascii_alphanumeric()))
                {
                    return None;
                }
                let fts = quote_ident(&ix.fts_table());
                let name = ix.name.clone();
                let phrase = query_words
                    .iter()
                    .map(|w| format!("\"{w}\""))
                    .collect::<Vec<_>>()
                    .join(" ");
                self.params.push(SqlValue::Text(phrase));
                let mut terms = vec![format!(
                    "id IN (SELECT rowid FROM {fts} WHERE {fts} MATCH ?)"
                )];
                terms.extend(self.irregular(segs, false, PathMode::Literal));
                self.note_index(Some(name));
                Some(format!("({})", terms.join(" OR ")))
            }
            Operator::WithinBox => {
                let ix = self.index_on(path.as_str(), &[IndexKind::Spatial])?;
                let (min, max) = box_corners(value)?;
                let rt = quote_ident(&ix.rtree_table());
                let name = ix.name.clone();
                self.params.extend([
                    SqlValue::Real(max[0]),
                    SqlValue::Real(min[0]),
                    SqlValue::Real(max[1]),
                    SqlValue::Real(min[1]),
                ]);
                let mut terms = vec![format!(
                    "id IN (SELECT id FROM {rt} WHERE minx <= ? AND maxx >= ? AND miny <= ? AND maxy >= ?)"
                )];
                // Arrays of points at the leaf are inside the entry's bounding box.
                terms.extend(self.irregular(segs, false, PathMode::Literal));
                self.note_index(Some(name));
                Some(format!("({})", terms.join(" OR ")))
            }
            Operator::Ne | Operator::Nin | Operator::Regex => None,
        }
    }

    fn mode_for(&self, path: &str, kinds: &[IndexKind]) -> (PathMode, Option<String>) {
        match self.index_on(path, kinds) {
            Some(ix) if ix.definition.fields.len() == 1 || kinds.contains(&IndexKind::Btree) => {
                (PathMode::Literal, Some(ix.name.clone()))
            }
            _ => (PathMode::Bound, None),
        }
    }

    fn note_index(&mut self, index: Option<String>) {
        if let Some(name) = index
            && !self.indexes.contains(&name)
        {
            self.indexes.push(name);
        }
    }

    /// Entries where the path may equal one of `values`.
    fn eq_any(&mut self, path: &FieldPath, jp: &str, values: &[Document]) -> Option<String> {
        if values.len() > MAX_BRANCHES {
            return None;
        }
        let (mode, index) = self.mode_for(path.as_str(), &[IndexKind::Btree, IndexKind::Hash]);
        let mut terms = Vec::new();
        for value in values {
            match value {
                Document::String(s) if mode == PathMode::Bound => {
                    // The stored text is serde_json's, so an equal string occurs in it
                    // verbatim, escaped the same way: a byte search finds every candidate.
                    let needle = serde_json::to_string(s).ok()?;
                    self.params.push(SqlValue::Text(needle));
                    terms.push("instr(value, ?) > 0".to_owned());
                }
                Document::String(s) => {
                    let p = self.path_expr(jp, mode);
                    self.params.push(SqlValue::Text(s.clone()));
                    terms.push(format!("json_extract(value, {p}) = ?"));
                }
                Document::Number(n) => {
                    let x = n.as_f64().filter(|x| x.abs() <= EXACT_FLOAT_LIMIT)?;
                    let margin = x.abs() * 1e-9 + 1e-300;
                    let v = self.value_at(jp, mode);
                    self.params.push(SqlValue::Real(x - margin));
                    self.params.push(SqlValue::Real(x + margin));
                    terms.push(format!("{v} BETWEEN ? AND ?"));
                }
                Document::Bool(b) => {
                    let p = self.path_expr(jp, mode);
                    terms.push(format!(
                        "json_type(value, {p}) = '{}'",
                        if *b { "true" } else { "false" }
                    ));
                }
                // null matches missing fields; arrays and objects compare structurally.
                _ => return None,
            }
        }
        let all_strings_scanned = mode == PathMode::Bound && values.iter().all(Document::is_string);
        if !all_strings_scanned {
            terms.extend(self.irregular(path.segments(), true, mode));
        }
        self.note_index(index);
        Some(format!("({})", terms.join(" OR ")))
    }
}

fn box_corners(value: &Document) -> Option<([f64; 2], [f64; 2])> {
    let corner = |name: &str| -> Option<[f64; 2]> {
        match value.get(name)? {
            Document::Array(xy) => match xy.as_slice() {
                [Document::Number(x), Document::Number(y)] => Some([x.as_f64()?, y.as_f64()?]),
                _ => None,
            },
            _ => None,
        }
    };
    let (min, max) = (corner("min")?, corner("max")?);
    // The R*Tree holds 32-bit floats rounded outwards; widen the box so that rounding
    // never drops a point the evaluator keeps.
    let widen = |v: f64, down: bool| {
        let m = v.abs() * 1e-6 + 1e-6;
        if down { v - m } else { v + m }
    };
    Some((
        [widen(min[0], true), widen(min[1], true)],
        [widen(max[0], false), widen(max[1], false)],
    ))
}

/// Translates `filter` into a candidate filter, or `None` when every entry is a candidate.
///
/// A filter that uses no index reads the values it compares as columns (see
/// [`Candidates::select`]); one that uses an index reads them with `json_extract`, the
/// expression the index is on, so that SQLite's planner can match it.
pub(crate) fn candidates(filter: Option<&Filter>, catalog: &[IndexMeta]) -> Option<Candidates> {
    let filter = filter?;
    let plain = build(filter, catalog, false)?;
    if plain.indexes.is_empty()
        && let Some(with_columns) = build(filter, catalog, true)
        && !with_columns.columns.is_empty()
    {
        return Some(with_columns);
    }
    Some(plain)
}

fn build(filter: &Filter, catalog: &[IndexMeta], columns: bool) -> Option<Candidates> {
    let mut b = Builder {
        depth: 0,
        params: Vec::new(),
        pushed: Vec::new(),
        indexes: Vec::new(),
        catalog,
        columns: columns.then(Vec::new),
    };
    let sql = b.translate(filter)?;
    Some(Candidates {
        sql,
        params: b.params,
        pushed: b.pushed,
        indexes: b.indexes,
        columns: b.columns.unwrap_or_default(),
    })
}
