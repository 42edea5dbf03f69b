//! Indexes: real SQLite objects (expression indexes, FTS5 tables, R*Trees) kept in step
//! by SQLite itself, recorded in the `_storage_indexes` catalog table.
//!
//! Every object name is derived from the table name and a catalog number, never from
//! the index's user-given name, and every path inside DDL is a validated field path
//! written as a quoted literal (SQLite takes no parameters in DDL).

use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension, params};
use storage_core::query::FieldPath;
use storage_core::{
    ErrorCode, IndexDefinition, IndexInfo, IndexKind, IndexStats, Result, StorageError,
};

use crate::error::sql_err;
use crate::sql::{json_path, json_path_of, quote_ident, quote_literal};

/// One catalog entry.
#[derive(Debug, Clone)]
pub(crate) struct IndexMeta {
    pub(crate) table: String,
    pub(crate) name: String,
    pub(crate) id: i64,
    pub(crate) definition: IndexDefinition,
}

impl IndexMeta {
    fn base(&self) -> String {
        format!("{}__ix{}", self.table, self.id)
    }

    pub(crate) fn fts_table(&self) -> String {
        format!("{}__fts{}", self.table, self.id)
    }

    pub(crate) fn rtree_table(&self) -> String {
        format!("{}__rt{}", self.table, self.id)
    }

    fn kind(&self) -> IndexKind {
        self.definition
            .fields
            .first()
            .map_or(IndexKind::Btree, |f| f.kind)
    }
}

/// Per-handle counters of index use, and the catalog as last read.
#[derive(Debug, Default)]
pub(crate) struct IndexCatalog {
    counters: storage_core::index::IndexUsage,
    /// The catalog entries and the `schema_version` they were read at: every change to
    /// the catalog creates or drops SQLite objects in the same transaction, which moves
    /// the schema version, so an equal version means an unchanged catalog (also when
    /// another handle or process made the change).
    loaded: Mutex<Option<(i64, Arc<Vec<IndexMeta>>)>>,
}

impl IndexCatalog {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The catalog entries of `table`, read again only when the schema changed.
    pub(crate) fn current(&self, conn: &Connection, table: &str) -> Result<Arc<Vec<IndexMeta>>> {
        let version: i64 = conn
            .prepare_cached("PRAGMA schema_version")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(sql_err("list_indexes"))?;
        if let Some((v, entries)) = &*self.loaded.lock().unwrap_or_else(PoisonError::into_inner)
            && *v == version
        {
            return Ok(Arc::clone(entries));
        }
        let entries = Arc::new(load_catalog(conn, table)?);
        *self.loaded.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((version, Arc::clone(&entries)));
        Ok(entries)
    }

    /// Counts one lookup through `name`.
    pub(crate) fn record(&self, name: &str, hit: bool) {
        self.counters.record(name, hit);
    }

    fn counts(&self, name: &str) -> (u64, u64) {
        self.counters.get(name)
    }

    fn forget(&self, name: &str) {
        self.counters.forget(name);
    }
}

/// Reads the catalog entries of `table`.
pub(crate) fn load_catalog(conn: &Connection, table: &str) -> Result<Vec<IndexMeta>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT name, id, definition FROM _storage_indexes WHERE tbl = ?1 ORDER BY id",
        )
        .map_err(sql_err("list_indexes"))?;
    let rows = stmt
        .query_map(params![table], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
        .map_err(sql_err("list_indexes"))?;
    rows.into_iter()
        .map(|(name, id, def)| {
            let definition: IndexDefinition = serde_json::from_str(&def).map_err(|e| {
                StorageError::new(ErrorCode::Corrupted, "unreadable index catalog entry")
                    .with_backend("sqlite")
                    .with_context("index", name.escape_debug())
                    .with_source(e)
            })?;
            Ok(IndexMeta {
                table: table.to_owned(),
                name,
                id,
                definition,
            })
        })
        .collect()
}

fn invalid(message: impl Into<std::borrow::Cow<'static, str>>) -> StorageError {
    StorageError::new(ErrorCode::InvalidQuery, message)
        .with_operation("create_index")
        .with_backend("sqlite")
}

/// Checks a definition and returns the JSON paths of its fields.
fn validate(def: &IndexDefinition) -> Result<Vec<String>> {
    if def.name.is_empty() || def.name.len() > 1024 || def.name.contains('\0') {
        return Err(invalid("index name must be 1 to 1024 bytes without nul"));
    }
    let Some(first) = def.fields.first() else {
        return Err(invalid("an index needs at least one field"));
    };
    let kind = first.kind;
    if def.fields.iter().any(|f| f.kind != kind) {
        return Err(
            StorageError::unsupported("every field of an index must have the same kind")
                .with_operation("create_index")
                .with_backend("sqlite"),
        );
    }
    if matches!(kind, IndexKind::Fulltext | IndexKind::Spatial) && def.fields.len() > 1 {
        return Err(
            StorageError::unsupported(format!("a {kind} index covers one field"))
                .with_operation("create_index")
                .with_backend("sqlite"),
        );
    }
    if def.unique && matches!(kind, IndexKind::Fulltext | IndexKind::Spatial) {
        return Err(
            StorageError::unsupported(format!("a {kind} index cannot be unique"))
                .with_operation("create_index")
                .with_backend("sqlite"),
        );
    }
    def.fields
        .iter()
        .map(|f| {
            let path = FieldPath::parse(&f.path)
                .map_err(|e| e.with_operation("create_index").with_backend("sqlite"))?;
            json_path(&path).ok_or_else(|| {
                StorageError::unsupported(
                    "index paths with '\"', '\\' or control characters are not supported",
                )
                .with_operation("create_index")
                .with_backend("sqlite")
                .with_context("path", f.path.escape_debug())
            })
        })
        .collect()
}

/// The DDL creating an index's objects and filling them from existing rows.
fn create_ddl(meta: &IndexMeta, paths: &[String]) -> Vec<String> {
    let t = quote_ident(&meta.table);
    let mut ddl = Vec::new();
    match meta.kind() {
        IndexKind::Btree | IndexKind::Hash => btree_ddl(meta, paths, &t, &mut ddl),
        IndexKind::Fulltext => fulltext_ddl(meta, paths, &t, &mut ddl),
        IndexKind::Spatial => spatial_ddl(meta, paths, &t, &mut ddl),
    }
    array_prefix_ddl(meta, &t, &mut ddl);
    ddl
}

fn btree_ddl(meta: &IndexMeta, paths: &[String], t: &str, ddl: &mut Vec<String>) {
    let def = &meta.definition;
    let exprs: Vec<String> = paths
        .iter()
        .map(|p| format!("json_extract(value, {})", quote_literal(p)))
        .collect();
    let unique = if def.unique { "UNIQUE " } else { "" };
    let sparse = if def.sparse {
        let conds: Vec<String> = paths
            .iter()
            .map(|p| format!("json_type(value, {}) IS NOT NULL", quote_literal(p)))
            .collect();
        format!(" WHERE {}", conds.join(" AND "))
    } else {
        String::new()
    };
    ddl.push(format!(
        "CREATE {unique}INDEX {} ON {t} ({}){sparse}",
        quote_ident(&meta.base()),
        exprs.join(", ")
    ));
}

fn fulltext_ddl(meta: &IndexMeta, paths: &[String], t: &str, ddl: &mut Vec<String>) {
    let fts = quote_ident(&meta.fts_table());
    let body = |v: &str| {
        format!(
            "(SELECT group_concat(atom, ' ') FROM json_tree({v}, {}) WHERE type = 'text')",
            quote_literal(&paths[0])
        )
    };
    ddl.push(format!(
        "CREATE VIRTUAL TABLE {fts} USING fts5(body, content='', contentless_delete=1, \
         tokenize='unicode61 remove_diacritics 0')"
    ));
    ddl.push(format!(
        "INSERT INTO {fts} (rowid, body) SELECT src.id, {} FROM {t} AS src",
        // Qualified: inside the subquery a bare `value` is json_tree's own column.
        body("src.value")
    ));
    let trig = |suffix: &str| quote_ident(&format!("{}_{suffix}", meta.fts_table()));
    ddl.push(format!(
        "CREATE TRIGGER {} AFTER INSERT ON {t} BEGIN \
         INSERT INTO {fts} (rowid, body) VALUES (new.id, {}); END",
        trig("ai"),
        body("new.value")
    ));
    ddl.push(format!(
        "CREATE TRIGGER {} AFTER DELETE ON {t} BEGIN \
         DELETE FROM {fts} WHERE rowid = old.id; END",
        trig("ad")
    ));
    ddl.push(format!(
        "CREATE TRIGGER {} AFTER UPDATE OF value ON {t} BEGIN \
         DELETE FROM {fts} WHERE rowid = old.id; \
         INSERT INTO {fts} (rowid, body) VALUES (new.id, {}); END",
        trig("au"),
        body("new.value")
    ));
}

fn spatial_ddl(meta: &IndexMeta, paths: &[String], t: &str, ddl: &mut Vec<String>) {
    let rt = quote_ident(&meta.rtree_table());
    let p = &paths[0];
    // Coordinate `i` (or member `name`) of the point at JSON path `jp` of `v`.
    let coord = |v: &str, jp: &str, i: usize, name: &str| {
        format!(
            "CASE json_type({v}, {pl}) WHEN 'array' THEN json_extract({v}, {ai}) \
             WHEN 'object' THEN json_extract({v}, {oi}) END",
            pl = quote_literal(jp),
            ai = quote_literal(&format!("{jp}[{i}]")),
            oi = quote_literal(&format!("{jp}.\"{name}\"")),
        )
    };
    // One R*Tree entry per row: the bounding box of every point the evaluator may test
    // (the value at the path, and each element of an array there). A box holding one of
    // those points overlaps the entry, so an overlap search finds every candidate.
    let bbox = format!(
        "SELECT new.id, min(x), max(x), min(y), max(y) FROM (\
         SELECT {} AS x, {} AS y \
         UNION ALL \
         SELECT {}, {} FROM json_each(new.value, {}) AS e WHERE e.type IN ('array', 'object')\
         ) WHERE typeof(x) IN ('integer', 'real') AND typeof(y) IN ('integer', 'real') \
         HAVING count(*) > 0",
        coord("new.value", p, 0, "x"),
        coord("new.value", p, 1, "y"),
        coord("e.value", "$", 0, "x"),
        coord("e.value", "$", 1, "y"),
        quote_literal(p),
    );
    ddl.push(format!(
        "CREATE VIRTUAL TABLE {rt} USING rtree(id, minx, maxx, miny, maxy)"
    ));
    let trig = |suffix: &str| quote_ident(&format!("{}_{suffix}", meta.rtree_table()));
    ddl.push(format!(
        "CREATE TRIGGER {} AFTER INSERT ON {t} BEGIN INSERT INTO {rt} {bbox}; END",
        trig("ai"),
    ));
    ddl.push(format!(
        "CREATE TRIGGER {} AFTER DELETE ON {t} BEGIN \
         DELETE FROM {rt} WHERE id = old.id; END",
        trig("ad")
    ));
    ddl.push(format!(
        "CREATE TRIGGER {} AFTER UPDATE OF value ON {t} BEGIN \
         DELETE FROM {rt} WHERE id = old.id; INSERT INTO {rt} {bbox}; END",
        trig("au"),
    ));
    // Existing rows go through the update trigger (other indexes' triggers re-index
    // them too, which leaves them as they were).
    ddl.push(format!("UPDATE {t} SET value = value"));
}

/// Partial indexes over the (usually no) entries where the first path meets an array
/// before its end (and, for btree and hash, at its end): candidate filters add these
/// cases as OR-terms, and with these indexes SQLite answers the whole OR from indexes.
fn array_prefix_ddl(meta: &IndexMeta, t: &str, ddl: &mut Vec<String>) {
    for (n, prefix) in array_prefixes(meta) {
        let jt = format!("json_type(value, {})", quote_literal(&prefix));
        ddl.push(format!(
            "CREATE INDEX IF NOT EXISTS {} ON {t} ({jt}) WHERE {jt} = 'array'",
            quote_ident(&format!("{}_a{n}", meta.base())),
        ));
    }
}

/// The JSON paths (numbered) whose array-ness the candidate filters test for `meta`.
fn array_prefixes(meta: &IndexMeta) -> Vec<(usize, String)> {
    let Some(path) = meta
        .definition
        .fields
        .first()
        .and_then(|f| FieldPath::parse(&f.path).ok())
    else {
        return Vec::new();
    };
    let segs = path.segments();
    let upto = match meta.kind() {
        IndexKind::Btree | IndexKind::Hash => segs.len(),
        IndexKind::Fulltext | IndexKind::Spatial => segs.len().saturating_sub(1),
    };
    (0..=upto)
        .filter_map(|n| json_path_of(&segs[..n]).map(|p| (n, p)))
        .collect()
}

fn drop_ddl(meta: &IndexMeta) -> Vec<String> {
    let mut out = match meta.kind() {
        IndexKind::Btree | IndexKind::Hash => {
            vec![format!(
                "DROP INDEX IF EXISTS {}",
                quote_ident(&meta.base())
            )]
        }
        IndexKind::Fulltext | IndexKind::Spatial => {
            let table = if meta.kind() == IndexKind::Fulltext {
                meta.fts_table()
            } else {
                meta.rtree_table()
            };
            let mut out: Vec<String> = ["ai", "ad", "au"]
                .iter()
                .map(|s| {
                    format!(
                        "DROP TRIGGER IF EXISTS {}",
                        quote_ident(&format!("{table}_{s}"))
                    )
                })
                .collect();
            out.push(format!("DROP TABLE IF EXISTS {}", quote_ident(&table)));
            out
        }
    };
    for (n, _) in array_prefixes(meta) {
        out.push(format!(
            "DROP INDEX IF EXISTS {}",
            quote_ident(&format!("{}_a{n}", meta.base()))
        ));
    }
    out
}

/// Validates a definition before it reaches the writer thread.
pub(crate) fn check_definition(def: &IndexDefinition) -> Result<Vec<String>> {
    validate(def)
}

/// Creates an index (in one transaction with its catalog entry).
pub(crate) fn create(
    conn: &mut Connection,
    table: &str,
    def: IndexDefinition,
    paths: &[String],
) -> Result<()> {
    let err = sql_err("create_index");
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(&err)?;
    let existing: Option<String> = tx
        .query_row(
            "SELECT definition FROM _storage_indexes WHERE tbl = ?1 AND name = ?2",
            params![table, def.name],
            |r| r.get(0),
        )
        .optional()
        .map_err(&err)?;
    if let Some(existing) = existing {
        let same = serde_json::from_str::<IndexDefinition>(&existing).is_ok_and(|e| e == def);
        if same {
            return Ok(());
        }
        return Err(StorageError::new(
            ErrorCode::DuplicateKey,
            "an index with this name but another definition exists",
        )
        .with_operation("create_index")
        .with_backend("sqlite")
        .with_context("index", def.name.escape_debug()));
    }
    let id: i64 = tx
        .query_row(
            "SELECT IFNULL(MAX(id), 0) + 1 FROM _storage_indexes",
            [],
            |r| r.get(0),
        )
        .map_err(&err)?;
    let definition = serde_json::to_string(&def).map_err(|e| {
        StorageError::new(
            ErrorCode::SerializationFailed,
            "index definition encoding failed",
        )
        .with_source(e)
    })?;
    let meta = IndexMeta {
        table: table.to_owned(),
        name: def.name.clone(),
        id,
        definition: def,
    };
    for statement in create_ddl(&meta, paths) {
        tx.execute_batch(&statement).map_err(|e| {
            let mapped = sql_err("create_index")(e);
            if mapped.code() == ErrorCode::DuplicateKey {
                StorageError::new(
                    ErrorCode::DuplicateKey,
                    "existing entries break the unique index; it was not created",
                )
                .with_operation("create_index")
                .with_backend("sqlite")
                .with_context("index", meta.name.escape_debug())
            } else {
                mapped
            }
        })?;
    }
    tx.execute(
        "INSERT INTO _storage_indexes (tbl, name, id, definition) VALUES (?1, ?2, ?3, ?4)",
        params![table, meta.name, id, definition],
    )
    .map_err(&err)?;
    tx.commit().map_err(&err)
}

/// Drops an index; `false` when there is none by that name.
pub(crate) fn drop(
    conn: &mut Connection,
    table: &str,
    name: &str,
    catalog: &IndexCatalog,
) -> Result<bool> {
    let err = sql_err("drop_index");
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(&err)?;
    let Some(meta) = load_catalog(&tx, table)?
        .into_iter()
        .find(|m| m.name == name)
    else {
        return Ok(false);
    };
    for statement in drop_ddl(&meta) {
        tx.execute_batch(&statement).map_err(&err)?;
    }
    tx.execute(
        "DELETE FROM _storage_indexes WHERE tbl = ?1 AND name = ?2",
        params![table, name],
    )
    .map_err(&err)?;
    tx.commit().map_err(&err)?;
    catalog.forget(name);
    Ok(true)
}

/// Every index of `table` with its counters.
pub(crate) fn list(
    conn: &Connection,
    table: &str,
    catalog: &IndexCatalog,
) -> Result<Vec<IndexInfo>> {
    let err = sql_err("list_indexes");
    let t = quote_ident(table);
    load_catalog(conn, table)?
        .into_iter()
        .map(|meta| {
            let kind = meta.kind();
            let (entries, objects): (i64, Vec<String>) = match kind {
                IndexKind::Btree | IndexKind::Hash => {
                    let path = json_path(
                        &FieldPath::parse(&meta.definition.fields[0].path)
                            .map_err(|e| e.with_operation("list_indexes"))?,
                    )
                    .unwrap_or_default();
                    let n = conn
                        .query_row(
                            &format!(
                                "SELECT count(*) FROM {t} WHERE json_extract(value, {}) IS NOT NULL",
                                quote_literal(&path)
                            ),
                            [],
                            |r| r.get(0),
                        )
                        .map_err(&err)?;
                    (n, vec![meta.base()])
                }
                IndexKind::Fulltext => {
                    let n = conn
                        .query_row(
                            &format!("SELECT count(*) FROM {t} WHERE id IN (SELECT rowid FROM {})", quote_ident(&meta.fts_table())),
                            [],
                            |r| r.get(0),
                        )
                        .map_err(&err)?;
                    (n, vec![format!("{}_data", meta.fts_table()), format!("{}_idx", meta.fts_table())])
                }
                IndexKind::Spatial => {
                    let n = conn
                        .query_row(&format!("SELECT count(*) FROM {}", quote_ident(&meta.rtree_table())), [], |r| r.get(0))
                        .map_err(&err)?;
                    (n, vec![format!("{}_node", meta.rtree_table())])
                }
            };
            let mut size: i64 = 0;
            for object in &objects {
                let bytes: Option<i64> = conn
                    .query_row("SELECT SUM(pgsize) FROM dbstat WHERE name = ?1", params![object], |r| r.get(0))
                    .map_err(&err)?;
                size += bytes.unwrap_or(0);
            }
            let (hits, misses) = catalog.counts(&meta.name);
            Ok(IndexInfo {
                backend_kind: (kind == IndexKind::Hash).then(|| "btree".to_owned()),
                stats: IndexStats {
                    size_bytes: u64::try_from(size).ok(),
                    entries: u64::try_from(entries).unwrap_or(0),
                    hits,
                    misses,
                },
                definition: meta.definition,
            })
        })
        .collect()
}
