//! Queryable and Indexed: candidate filters run in SQL, the reference evaluator decides.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use rusqlite::Connection;
use rusqlite::params_from_iter;
use storage_core::query::{CompiledQuery, aggregate};
use storage_core::{
    AggregateStage, Document, ErrorCode, ExecutionPlan, IndexDefinition, IndexInfo, IndexedStorage,
    Query, QueryResult, QueryableStorage, Result, ResultStream, StorageError, StorageValue,
};

use crate::backend::{SqliteStorage, Table};
use crate::error::sql_err;
use crate::index::{self, load_catalog};
use crate::sql::{Candidates, candidates, quote_ident};

/// The candidate rows of a filter, parsed, with the candidate filter used.
fn fetch(
    conn: &Connection,
    table: &Table,
    filter: Option<&storage_core::Filter>,
    operation: &'static str,
) -> Result<Vec<(String, Document)>> {
    let catalog = load_catalog(conn, &table.name)?;
    let cand = candidates(filter, &catalog);
    let t = &table.sql.table;
    let (sql, params) = match &cand {
        Some(c) => (
            format!("SELECT key, value FROM {t} WHERE {}", c.sql),
            c.params.clone(),
        ),
        None => (format!("SELECT key, value FROM {t}"), Vec::new()),
    };
    let mut stmt = conn.prepare_cached(&sql).map_err(sql_err(operation))?;
    let mut rows = stmt
        .query(params_from_iter(params))
        .map_err(sql_err(operation))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_err(operation))? {
        let key: String = row.get(0).map_err(sql_err(operation))?;
        let json = row
            .get_ref(1)
            .and_then(|v| Ok(v.as_str()?))
            .map_err(sql_err(operation))?;
        let doc: Document = serde_json::from_str(json).map_err(|e| {
            StorageError::new(ErrorCode::Corrupted, "stored value is not json")
                .with_operation(operation)
                .with_backend("sqlite")
                .with_context("key", key.escape_debug())
                .with_source(e)
        })?;
        out.push((key, doc));
    }
    if let Some(c) = &cand {
        for name in &c.indexes {
            table.indexes.record(name, !out.is_empty());
        }
    }
    Ok(out)
}

fn value_of<T: StorageValue>(doc: &Document, key: &str) -> Result<T> {
    <T as serde::Deserialize>::deserialize(doc).map_err(|e| {
        StorageError::new(
            ErrorCode::SerializationFailed,
            format!("stored value does not fit the value type: {e}"),
        )
        .with_backend("sqlite")
        .with_context("key", key.escape_debug())
        .with_source(e)
    })
}

fn run_query<T: StorageValue>(
    conn: &Connection,
    table: &Table,
    query: &Query,
    compiled: &CompiledQuery,
) -> Result<Vec<QueryResult<T>>> {
    let rows = fetch(conn, table, query.filter.as_ref(), "query")?;
    let matches = compiled.run(rows.iter().map(|(k, d)| (k.as_str(), d)));
    let by_key: HashMap<&str, &Document> = rows.iter().map(|(k, d)| (k.as_str(), d)).collect();
    matches
        .into_iter()
        .map(|m| {
            let doc = by_key.get(m.key.as_str()).copied().ok_or_else(|| {
                StorageError::new(ErrorCode::Backend, "evaluator returned an unknown key")
            })?;
            Ok(QueryResult {
                value: value_of(doc, &m.key)?,
                key: m.key,
                score: m.score,
                projection: m.projection,
            })
        })
        .collect()
}

impl<T: StorageValue> SqliteStorage<T> {
    fn compile(query: &Query) -> Result<CompiledQuery> {
        CompiledQuery::compile(query).map_err(|e| e.with_operation("query").with_backend("sqlite"))
    }

    /// The candidate filter of `query` against the current catalog (for `explain`).
    fn plan(
        conn: &Connection,
        table: &Table,
        query: &Query,
    ) -> Result<(Option<Candidates>, Vec<index::IndexMeta>)> {
        let catalog = load_catalog(conn, &table.name)?;
        Ok((candidates(query.filter.as_ref(), &catalog), catalog))
    }
}

#[async_trait::async_trait]
impl<T: StorageValue> QueryableStorage<T> for SqliteStorage<T> {
    fn query(&self, query: &Query) -> ResultStream<'_, QueryResult<T>> {
        let compiled = match Self::compile(query) {
            Ok(c) => c,
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
        };
        let table = Arc::clone(&self.table);
        let db = Arc::clone(&self.db);
        let query = query.clone();
        futures::stream::once(async move {
            db.readers
                .run("query", move |conn| {
                    run_query::<T>(conn, &table, &query, &compiled)
                })
                .await
        })
        .flat_map(|result| match result {
            Ok(rows) => futures::stream::iter(rows.into_iter().map(Ok)).boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .boxed()
    }

    async fn count(&self, query: &Query) -> Result<u64> {
        let compiled = Self::compile(query)?;
        let table = Arc::clone(&self.table);
        let filter = query.filter.clone();
        self.db
            .readers
            .run("count", move |conn| {
                let rows = fetch(conn, &table, filter.as_ref(), "count")?;
                Ok(compiled.count(rows.iter().map(|(k, d)| (k.as_str(), d))))
            })
            .await
    }

    async fn aggregate(&self, pipeline: &[AggregateStage]) -> Result<Vec<Document>> {
        let table = Arc::clone(&self.table);
        let pipeline = pipeline.to_vec();
        self.db
            .readers
            .run("aggregate", move |conn| {
                // A leading match narrows the rows read; the pipeline still runs it exactly.
                let first = match pipeline.first() {
                    Some(AggregateStage::Match(f)) => Some(f.clone()),
                    _ => None,
                };
                let mut rows = fetch(conn, &table, first.as_ref(), "aggregate")?;
                rows.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                aggregate(&pipeline, rows.iter().map(|(_, d)| d))
                    .map_err(|e| e.with_operation("aggregate").with_backend("sqlite"))
            })
            .await
    }
}

#[async_trait::async_trait]
impl<T: StorageValue> IndexedStorage<T> for SqliteStorage<T> {
    async fn create_index(&self, definition: IndexDefinition) -> Result<()> {
        let paths = index::check_definition(&definition)?;
        let table = self.table.name.clone();
        self.db
            .writer
            .run("create_index", move |conn| {
                index::create(conn, &table, definition, &paths)
            })
            .await
    }

    async fn drop_index(&self, name: &str) -> Result<bool> {
        let table = Arc::clone(&self.table);
        let name = name.to_owned();
        self.db
            .writer
            .run("drop_index", move |conn| {
                index::drop(conn, &table.name, &name, &table.indexes)
            })
            .await
    }

    async fn list_indexes(&self) -> Result<Vec<IndexInfo>> {
        let table = Arc::clone(&self.table);
        self.db
            .readers
            .run("list_indexes", move |conn| {
                index::list(conn, &table.name, &table.indexes)
            })
            .await
    }

    async fn explain(&self, query: &Query) -> Result<ExecutionPlan> {
        let compiled = Self::compile(query)?;
        drop(compiled);
        let table = Arc::clone(&self.table);
        let query = query.clone();
        self.db
            .readers
            .run("explain", move |conn| {
                let (cand, catalog) = Self::plan(conn, &table, &query)?;
                let t = &table.sql.table;
                let (sql, params) = match &cand {
                    Some(c) => (
                        format!("SELECT key, value FROM {t} WHERE {}", c.sql),
                        c.params.clone(),
                    ),
                    None => (format!("SELECT key, value FROM {t}"), Vec::new()),
                };
                let mut stmt = conn
                    .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .map_err(sql_err("explain"))?;
                let lines: Vec<String> = stmt
                    .query_map(params_from_iter(params), |r| r.get::<_, String>(3))
                    .and_then(Iterator::collect)
                    .map_err(sql_err("explain"))?;
                let uses = |object: &str| lines.iter().any(|l| l.contains(object));
                let index = catalog
                    .iter()
                    .find(|m| {
                        cand.as_ref().is_some_and(|c| c.indexes.contains(&m.name))
                            && (uses(&format!("{}__ix{} ", m.table, m.id))
                                || uses(&format!("{}__ix{})", m.table, m.id))
                                || lines
                                    .iter()
                                    .any(|l| l.ends_with(&format!("{}__ix{}", m.table, m.id)))
                                || uses(&m.fts_table())
                                || uses(&m.rtree_table()))
                    })
                    .map(|m| m.name.clone());
                let plain = table.name.as_str();
                let full_scan = lines.iter().any(|l| {
                    l == &format!("SCAN {plain}") || l.starts_with(&format!("SCAN {plain} "))
                }) && !lines.iter().any(|l| {
                    l.contains("USING INDEX")
                        || l.contains("USING COVERING INDEX")
                        || l.contains("MULTI-INDEX")
                });
                let mut pushed_down: Vec<String> = cand
                    .as_ref()
                    .map(|c| {
                        c.pushed
                            .iter()
                            .map(|p| format!("candidate filter: {p}"))
                            .collect()
                    })
                    .unwrap_or_default();
                if pushed_down.is_empty() {
                    pushed_down.push(format!("scan of table {}", quote_ident(plain)));
                }
                let mut in_process = Vec::new();
                if query.filter.is_some() {
                    in_process
                        .push("filter: the reference evaluator checks every candidate".to_owned());
                }
                if !query.order_by.is_empty() {
                    in_process.push("order_by".to_owned());
                }
                if query.offset.is_some() || query.limit.is_some() {
                    in_process.push("offset/limit".to_owned());
                }
                if query.select.is_some() {
                    in_process.push("select".to_owned());
                }
                Ok(ExecutionPlan {
                    index,
                    full_scan,
                    pushed_down,
                    in_process,
                    backend_plan: lines,
                })
            })
            .await
    }
}
