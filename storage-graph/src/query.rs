//! The Queryable and Indexed tiers: Cypher pre-filters, the reference evaluator,
//! FalkorDB indexes, unique indexes checked under `WATCH`, and `explain`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use falkordb::FalkorValue;
use futures::StreamExt;
use redis::Value;
use serde_json::Value as Json;
use storage_core::codec::to_document;
use storage_core::query::{CompiledQuery, FieldPath, aggregate, words};
use storage_core::{
    AggregateStage, Direction, Document, ErrorCode, ExecutionPlan, Filter, IndexDefinition,
    IndexInfo, IndexKind, IndexStats, IndexedStorage, Operator, OrderBy, Query, QueryResult,
    QueryableStorage, Result, ResultStream, StorageError, StorageValue,
};

use crate::backend::{GraphStorage, cell_int, cell_key, cell_str, decode, key_value_rows};
use crate::cypher::{
    Cypher, KEY_INDEX_PROP, OBJECT_PROP, OPAQUE_PROP, OPAQUE_SLOTS, VALUE_PROP, key_hex,
    opaque_markers, path_tag, pre_filter, promoted_name, quote_name,
};
use crate::error::{BACKEND, redis_err};
use crate::unique::Stamp;

/// The indexes of one label, cached by every handle that opened it, with counters.
#[derive(Debug, Default)]
pub(crate) struct IndexRegistry {
    definitions: Mutex<Vec<IndexDefinition>>,
    counters: storage_core::index::IndexUsage,
    loaded: Mutex<Option<std::time::Instant>>,
    /// The label's index epoch these definitions belong to (see `crate::unique`).
    epoch: Mutex<i64>,
}

/// How long a handle trusts its copy of the index definitions before a write reloads
/// them: indexes created through another handle or process are enforced within this.
const INDEX_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

impl IndexRegistry {
    pub(crate) fn list(&self) -> Vec<IndexDefinition> {
        self.definitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn is_stale(&self) -> bool {
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none_or(|at| at.elapsed() > INDEX_REFRESH)
    }

    pub(crate) fn epoch(&self) -> i64 {
        *self.epoch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn replace(&self, definitions: Vec<IndexDefinition>, epoch: i64) {
        *self.epoch.lock().unwrap_or_else(PoisonError::into_inner) = epoch;
        *self.loaded.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(std::time::Instant::now());
        *self
            .definitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = definitions;
    }

    pub(crate) fn unique(&self) -> Vec<IndexDefinition> {
        self.list().into_iter().filter(|d| d.unique).collect()
    }

    fn record(&self, name: &str, hit: bool) {
        self.counters.record(name, hit);
    }

    fn counters(&self, name: &str) -> (u64, u64) {
        self.counters.get(name)
    }
}

static QUERIES: AtomicU64 = AtomicU64::new(0);

/// The index a query can use: a clause of its top level on an indexed path.
struct Chosen {
    name: String,
    field: String,
    op: Operator,
    operand: Json,
    kind: IndexKind,
}

fn answers(kind: IndexKind, op: Operator, operand: &Json) -> bool {
    match (kind, op) {
        (IndexKind::Btree | IndexKind::Hash, Operator::Eq) => !operand.is_null(),
        (IndexKind::Btree | IndexKind::Hash, Operator::In) => operand
            .as_array()
            .is_some_and(|items| items.iter().all(|v| !v.is_null())),
        (IndexKind::Btree, Operator::Gt | Operator::Gte | Operator::Lt | Operator::Lte) => {
            !operand.is_null()
        }
        (IndexKind::Fulltext, Operator::Text) => {
            operand.as_str().is_some_and(|s| !words(s).is_empty())
        }
        _ => false,
    }
}

fn choose(definitions: &[IndexDefinition], filter: Option<&Filter>) -> Option<Chosen> {
    let clauses: Vec<&Filter> = match filter? {
        Filter::And(children) => children.iter().collect(),
        other => vec![other],
    };
    for clause in clauses {
        let Filter::Condition { field, op, value } = clause else {
            continue;
        };
        for def in definitions {
            let Some(index_field) = def.fields.first() else {
                continue;
            };
            if index_field.path == *field && answers(index_field.kind, *op, value) {
                return Some(Chosen {
                    name: def.name.clone(),
                    field: field.clone(),
                    op: *op,
                    operand: value.clone(),
                    kind: index_field.kind,
                });
            }
        }
    }
    None
}

/// The Cypher of a candidate query, with what runs where.
struct Plan {
    cypher: Cypher,
    pushed: Vec<String>,
    in_process: Vec<String>,
    index: Option<String>,
}

/// An operand for which a FalkorDB range-index lookup returns every node whose
/// promoted value equals it (possibly more: the index also equates `true` with `1`,
/// and `"a"` with `" a"`, which the evaluator's re-check removes).
fn index_operand(value: &Json) -> Option<FalkorValue> {
    match value {
        // FalkorDB's range index trims whitespace when matching strings (a lookup of
        // " a" finds nothing), so only strings without whitespace go through it.
        Json::String(s)
            if !s.is_empty() && !s.contains(|c: char| c == '\0' || c.is_whitespace()) =>
        {
            Some(FalkorValue::String(s.clone()))
        }
        Json::Bool(b) => Some(FalkorValue::Bool(*b)),
        Json::Number(n) => n
            .as_i64()
            .filter(|i| i.unsigned_abs() <= 1 << 53)
            .map(FalkorValue::I64),
        _ => None,
    }
}

/// What an ordered, paged query may hand to Cypher: its order keys and how many of the
/// first entries in that order the final page can come from (`offset + limit`).
struct Top<'a> {
    order: &'a [OrderBy],
    first: u64,
}

/// The nodes on which a filter's Cypher translation, and the order keys, are not exact:
/// those holding an opaque value at a prefix of one of `paths` (FalkorDB finds them
/// through the indexes on `_o1`, `_o2` and `_o`), or an object at one of `order`
/// (through `_x`). Each
/// path is a parameter.
fn dirty_nodes(paths: &[String], order: &[String], q: &mut Cypher) -> Result<String> {
    let mut prefixes = std::collections::BTreeSet::from([String::new()]);
    for path in paths.iter().chain(order) {
        let segments: Vec<&str> = path.split('.').collect();
        for i in 1..=segments.len() {
            prefixes.insert(segments[..i].join("."));
        }
    }
    let mut parts = Vec::with_capacity(prefixes.len() + order.len() + 1);
    let tags: Vec<String> = prefixes.iter().map(|p| path_tag(p)).collect();
    let prefixes: Vec<&String> = prefixes.iter().collect();
    let list = q.param(&opaque_markers(&prefixes))?;
    for slot in OPAQUE_SLOTS {
        parts.push(format!("n.{slot} IN {list}"));
    }
    for tag in &tags {
        parts.push(format!("{} IN n.{OPAQUE_PROP}", q.param(tag.as_str())?));
    }
    for path in order {
        parts.push(format!("{} IN n.{OBJECT_PROP}", q.param(&path_tag(path))?));
    }
    Ok(format!("({})", parts.join(" OR ")))
}

/// Conditions FalkorDB can answer from a range index on `chosen`'s field, written so
/// that the planner uses the index: equality with an operand the index matches exactly
/// or more loosely (see [`index_operand`]), and ranges with a number (the index also
/// returns booleans as 0 and 1, and orders strings in its own collation, so only
/// numeric ranges). The index's answer is a superset; the exact filter stays.
fn index_hints(filter: Option<&Filter>, chosen: &Chosen, q: &mut Cypher) -> Result<Vec<String>> {
    let Some(prop) = quote_name(&promoted_name(&chosen.field)) else {
        return Ok(Vec::new());
    };
    if chosen.kind == IndexKind::Fulltext {
        return Ok(Vec::new());
    }
    let clauses: Vec<&Filter> = match filter {
        Some(Filter::And(children)) => children.iter().collect(),
        Some(other) => vec![other],
        None => Vec::new(),
    };
    let mut hints = Vec::new();
    for clause in clauses {
        let Filter::Condition { field, op, value } = clause else {
            continue;
        };
        if *field != chosen.field {
            continue;
        }
        let sym = match op {
            Operator::Eq => "=",
            Operator::Gt => ">",
            Operator::Gte => ">=",
            Operator::Lt => "<",
            Operator::Lte => "<=",
            _ => continue,
        };
        let operand = if *op == Operator::Eq {
            index_operand(value)
        } else {
            numeric_operand(value)
        };
        if let Some(operand) = operand {
            let p = q.param(&operand)?;
            hints.push(format!("n.{prop} {sym} {p}"));
        }
    }
    Ok(hints)
}

/// A number FalkorDB compares exactly with promoted values: an integer within ±2^53
/// or a finite float.
fn numeric_operand(value: &Json) -> Option<FalkorValue> {
    let Json::Number(n) = value else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        (i.unsigned_abs() <= 1 << 53).then_some(FalkorValue::I64(i))
    } else if n.is_u64() {
        None
    } else {
        n.as_f64().filter(|f| f.is_finite()).map(FalkorValue::F64)
    }
}

/// `WITH n, <keys> ORDER BY …` for `order` on clean nodes: each key is its type bracket
/// (null and missing 0 < numbers 1 < strings 2 < booleans 5, the evaluator's total order
/// restricted to the promoted scalars a clean node can hold) then the value (FalkorDB
/// compares integers with floats by value, exactly within ±2^53, and strings with
/// strcmp, which is UTF-8 byte order), ties broken by key ascending.
fn order_clause(order: &[OrderBy], first: u64) -> Option<String> {
    let mut keys = Vec::with_capacity(order.len());
    let mut sorts = Vec::with_capacity(order.len() * 2 + 1);
    for (i, by) in order.iter().enumerate() {
        let prop = quote_name(&promoted_name(FieldPath::parse(&by.field).ok()?.as_str()))?;
        let dir = match by.direction {
            Direction::Asc => "ASC",
            Direction::Desc => "DESC",
        };
        keys.push(format!(
            "CASE typeOf(n.{prop}) WHEN 'Integer' THEN 1 WHEN 'Float' THEN 1 WHEN 'String' THEN 2 \
             WHEN 'Boolean' THEN 5 ELSE 0 END AS b{i}, n.{prop} AS s{i}"
        ));
        sorts.push(format!("b{i} {dir}, s{i} {dir}"));
    }
    // Hex keys order as the keys' bytes do.
    sorts.push(format!("n.{KEY_INDEX_PROP} ASC"));
    // A first position beyond i64 is no limit at all.
    let limit = i64::try_from(first)
        .map(|l| format!(" LIMIT {l}"))
        .unwrap_or_default();
    let with = if keys.is_empty() {
        "WITH n".to_owned()
    } else {
        format!("WITH n, {}", keys.join(", "))
    };
    Some(format!("{with} ORDER BY {}{limit} ", sorts.join(", ")))
}

/// The paths a filter's conditions name.
fn filter_paths(filter: Option<&Filter>) -> Vec<String> {
    fn walk(filter: &Filter, out: &mut Vec<String>) {
        match filter {
            Filter::And(parts) | Filter::Or(parts) => parts.iter().for_each(|p| walk(p, out)),
            Filter::Not(inner) => walk(inner, out),
            Filter::Condition { field, .. } | Filter::Nested { field, .. } => {
                out.push(field.clone());
            }
        }
    }
    let mut out = Vec::new();
    if let Some(filter) = filter {
        walk(filter, &mut out);
    }
    out
}

impl<T: StorageValue> GraphStorage<T> {
    /// The Cypher that fetches a query's candidates.
    ///
    /// When every clause of the filter translates exactly (see `cypher`), the label
    /// splits in two: *clean* nodes, with no opaque value on the filter's or the order's
    /// paths, on which the translation is exact, so Cypher filters them exactly (through
    /// a range index when one answers a top-level clause), orders them and keeps only
    /// the first `offset + limit`; and the few *dirty* others, found through the `_o1`/`_o2`/`_o`
    /// and `_x` indexes, fetched with the pre-filter. The evaluator then runs the whole
    /// query on both sets, which holds every entry of the final page. Otherwise the
    /// pre-filter runs on the whole label and the evaluator does the rest.
    #[allow(clippy::too_many_lines)] // both shapes and what each says in `explain`
    fn plan(&self, filter: Option<&Filter>, top: Option<&Top<'_>>) -> Result<Plan> {
        let label = &self.inner.label;
        let mut q = Cypher::new();
        let mut pushed = Vec::new();
        let mut in_process = Vec::new();
        let mut index = None;
        let mut pre_complete = true;
        let mut exact = "true".to_owned();
        let pre = match filter {
            Some(filter) => {
                let pre = pre_filter(filter, &mut q)?;
                pre_complete = pre.complete;
                exact.clone_from(&pre.exact);
                pushed.extend(pre.pushed.iter().map(|c| format!("where {c} (cypher)")));
                in_process.extend(
                    pre.in_process
                        .iter()
                        .map(|c| format!("{c} (evaluator only)")),
                );
                pre.expr
            }
            None => "true".to_owned(),
        };
        let definitions = self.inner.indexes.list();
        let chosen = choose(&definitions, filter);
        let returns = format!("RETURN n.{KEY_INDEX_PROP} AS k, n.{VALUE_PROP} AS v");
        if pre_complete {
            let order =
                top.and_then(|t| order_clause(t.order, t.first).map(|clause| (clause, t.order)));
            let order_paths: Vec<String> = order
                .as_ref()
                .map(|(_, by)| by.iter().map(|o| o.field.clone()).collect())
                .unwrap_or_default();
            let dirty = dirty_nodes(&filter_paths(filter), &order_paths, &mut q)?;
            let mut clean = Vec::new();
            if let Some(chosen) = &chosen {
                let hints = index_hints(filter, chosen, &mut q)?;
                if hints.is_empty() {
                    in_process.push(format!(
                        "index {} is not used: its clause on {} is answered exactly without it",
                        chosen.name, chosen.field
                    ));
                } else {
                    index = Some(chosen.name.clone());
                    pushed.push(format!(
                        "index {} range lookup on {} (cypher; a superset, the where clause still applies)",
                        chosen.name, chosen.field
                    ));
                    clean.extend(hints);
                }
            }
            // The exact clause first: it is cheap, and most nodes fail it. Then the
            // dirty test: `x IN n._o` is null where `_o` is missing, which `NOT` would
            // keep null.
            clean.push(exact.clone());
            clean.push(format!("NOT coalesce({dirty}, false)"));
            let paging = match &order {
                Some((clause, _)) => {
                    pushed.push(format!(
                        "order_by, offset and limit: the first {} in order (cypher), on nodes without \
                         opaque values or objects on the order's paths",
                        top.map_or(0, |t| t.first)
                    ));
                    clause.clone()
                }
                None => String::new(),
            };
            q.push(&format!(
                "MATCH (n:{label}) WHERE {} {paging}{returns} UNION ALL \
                 MATCH (n:{label}) WHERE {dirty} AND {pre} {returns}",
                clean.join(" AND ")
            ));
            pushed.push(
                "where: exact in cypher on nodes without opaque values on its paths; those \
                 others are found through the _o index and re-checked by the evaluator"
                    .into(),
            );
            in_process.push(format!(
                "re-check, {}select and scores over the candidates (evaluator)",
                if order.is_some() {
                    "the final order and page over the first entries, "
                } else {
                    "order_by, offset, limit, "
                }
            ));
        } else {
            let mut body = format!("MATCH (n:{label}) WHERE {pre} {returns}");
            if let Some(chosen) = &chosen {
                index = Some(chosen.name.clone());
                let prop = quote_name(&promoted_name(&chosen.field));
                let operand = (chosen.op == Operator::Eq && chosen.kind != IndexKind::Fulltext)
                    .then(|| index_operand(&chosen.operand))
                    .flatten();
                if let (Some(prop), Some(operand)) = (prop, operand) {
                    // The index answers the nodes whose promoted value equals the operand
                    // (and the pre-filter prunes them further); nodes with opaque values get
                    // the pre-filter alone. Together they are a superset of the matches,
                    // which the evaluator then re-checks.
                    let p = q.param(&operand)?;
                    let any_opaque = OPAQUE_SLOTS
                        .iter()
                        .chain([&OPAQUE_PROP])
                        .map(|prop| format!("n.{prop} IS NOT NULL"))
                        .collect::<Vec<_>>()
                        .join(" OR ");
                    let any_opaque = format!("({any_opaque})");
                    body = format!(
                        "MATCH (n:{label}) WHERE n.{prop} = {p} AND {pre} {returns} UNION \
                         MATCH (n:{label}) WHERE {any_opaque} AND {pre} {returns}"
                    );
                    pushed.push(format!(
                        "index {} lookup {} eq (cypher)",
                        chosen.name, chosen.field
                    ));
                } else {
                    in_process.push(format!(
                        "index {} answers {} {:?} by a scan: FalkorDB's index order is not the evaluator's",
                        chosen.name, chosen.field, chosen.op
                    ));
                }
            }
            pushed.push("where: a pre-filter keeping every possible match (cypher)".into());
            in_process
                .push("exact where, order_by, offset, limit, select, scores (evaluator)".into());
            q.push(&body);
        }
        if pre_complete && filter.is_some() {
            pushed.push("count: in cypher, but for nodes with opaque values on its paths".into());
        }
        Ok(Plan {
            cypher: q,
            pushed,
            in_process,
            index,
        })
    }

    /// The entries that may match `filter` (and, with `top`, be among the first in
    /// order), decoded, in key byte order.
    async fn candidates(
        &self,
        filter: Option<&Filter>,
        top: Option<&Top<'_>>,
    ) -> Result<(Vec<(String, T, Document)>, Option<String>)> {
        let plan = self.plan(filter, top)?;
        let rows = self
            .inner
            .read(&mut self.inner.shared(), &plan.cypher, "query")
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (key, stored) in key_value_rows(rows, "query")? {
            let value: T = decode(&self.codec, &stored, "query")?;
            let doc = to_document(&value)?;
            out.push((key, value, doc));
        }
        out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        out.dedup_by(|a, b| a.0 == b.0);
        Ok((out, plan.index))
    }

    async fn run_query(&self, query: &Query) -> Result<Vec<QueryResult<T>>> {
        let compiled = CompiledQuery::compile(query)?;
        QUERIES.fetch_add(1, Ordering::Relaxed);
        let top = query.limit.map(|limit| Top {
            order: &query.order_by,
            first: query.offset.unwrap_or(0).saturating_add(limit),
        });
        let (entries, index) = self.candidates(query.filter.as_ref(), top.as_ref()).await?;
        let matches = compiled.run(entries.iter().map(|(k, _, d)| (k.as_str(), d)));
        if let Some(index) = index {
            let hit = entries
                .iter()
                .any(|(_, _, d)| compiled.filter().is_none_or(|f| f.matches(d)));
            self.inner.indexes.record(&index, hit);
        }
        let mut values: HashMap<String, T> = entries.into_iter().map(|(k, v, _)| (k, v)).collect();
        Ok(matches
            .into_iter()
            .filter_map(|m| {
                values.remove(&m.key).map(|value| QueryResult {
                    key: m.key,
                    value,
                    score: m.score,
                    projection: m.projection,
                })
            })
            .collect())
    }

    /// Counts in Cypher when every clause of `filter` translates exactly: clean nodes
    /// (see [`GraphStorage::plan`]) are counted by the server, through a range index
    /// when one answers; the dirty others are fetched and counted by the evaluator, both
    /// in one read (one consistent state). `None` when some clause only runs in process.
    async fn count_in_cypher(
        &self,
        compiled: &CompiledQuery,
        filter: &Filter,
    ) -> Result<Option<u64>> {
        let mut q = Cypher::new();
        let pre = pre_filter(filter, &mut q)?;
        if !pre.complete {
            return Ok(None);
        }
        let dirty = dirty_nodes(&filter_paths(Some(filter)), &[], &mut q)?;
        let mut clean = match choose(&self.inner.indexes.list(), Some(filter)) {
            Some(chosen) => index_hints(Some(filter), &chosen, &mut q)?,
            None => Vec::new(),
        };
        clean.push(pre.exact.clone());
        // `x IN n._o` is null where `_o` is missing, which `NOT` would keep null.
        clean.push(format!("NOT coalesce({dirty}, false)"));
        let label = &self.inner.label;
        q.push(&format!(
            "MATCH (n:{label}) WHERE {} RETURN count(n) AS c, null AS k, null AS v \
             UNION ALL MATCH (n:{label}) WHERE {dirty} AND {expr} RETURN 0 AS c, n.{KEY_INDEX_PROP} AS k, n.{VALUE_PROP} AS v",
            clean.join(" AND "),
            expr = pre.expr
        ));
        let rows = self
            .inner
            .read(&mut self.inner.shared(), &q, "count")
            .await?;
        let mut total: u64 = 0;
        let mut docs = Vec::new();
        for row in rows {
            if let (Some(key), Some(stored)) =
                (row.get(1).and_then(cell_key), row.get(2).and_then(cell_str))
            {
                let value: T = decode(&self.codec, &stored, "count")?;
                docs.push((key, to_document(&value)?));
            } else {
                let c = row.first().and_then(cell_int).unwrap_or(0);
                total += u64::try_from(c).unwrap_or(0);
            }
        }
        total += compiled.count(docs.iter().map(|(k, d)| (k.as_str(), d)));
        Ok(Some(total))
    }

    /// Registers a unique index: under `WATCH`, checks every entry, stamps every node
    /// with its terms and the next epoch, and records the definition, in one `EXEC`.
    async fn register_unique(&self, definition: IndexDefinition) -> Result<()> {
        let inner = &self.inner;
        let text = serde_json::to_string(&definition).map_err(|e| {
            StorageError::new(ErrorCode::SerializationFailed, e.to_string()).with_backend(BACKEND)
        })?;
        let mut conn = inner.dedicated().await?;
        for _ in 0..16 {
            redis::cmd("WATCH")
                .arg(&inner.graph)
                .arg(&inner.version_key)
                .arg(&inner.epoch_key)
                .arg(&inner.index_key)
                .query_async::<()>(&mut conn)
                .await
                .map_err(redis_err("create_index"))?;
            let outcome = self
                .register_unique_once(&mut conn, &definition, &text)
                .await;
            match outcome {
                Ok(true) => {
                    inner.give_back(conn);
                    return self.load_indexes().await;
                }
                Ok(false) => {}
                Err(e) => {
                    let _ = redis::cmd("UNWATCH").query_async::<()>(&mut conn).await;
                    inner.give_back(conn);
                    return Err(e);
                }
            }
        }
        Err(StorageError::new(
            ErrorCode::VersionConflict,
            "concurrent writes kept changing the graph while the index was built",
        )
        .with_backend(BACKEND))
    }

    /// One attempt of [`Self::register_unique`]; `Ok(false)` when `EXEC` was aborted.
    async fn register_unique_once(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        definition: &IndexDefinition,
        text: &str,
    ) -> Result<bool> {
        let inner = &self.inner;
        self.load_indexes_on(conn, false).await?;
        let mut definitions = inner.indexes.list();
        if let Some(existing) = definitions.iter().find(|d| d.name == definition.name) {
            if existing == definition {
                let _ = redis::cmd("UNWATCH").query_async::<()>(conn).await;
                return Ok(true);
            }
            return Err(StorageError::new(
                ErrorCode::DuplicateKey,
                "an index with this name has another definition",
            )
            .with_context("index", &definition.name));
        }
        definitions.push(definition.clone());
        let all: BTreeMap<String, Option<Document>> = self
            .all_documents(conn)
            .await?
            .into_iter()
            .map(|(k, d)| (k, Some(d)))
            .collect();
        crate::unique::check(&definitions, &BTreeMap::new(), &all, true)?;
        let stamp = Stamp::new(inner.indexes.epoch() + 1, &definitions)?;
        let mut rows = String::from("[");
        for (i, (key, doc)) in all.iter().enumerate() {
            let Some(doc) = doc else { continue };
            if i > 0 {
                rows.push_str(", ");
            }
            // `write_props` writes `, ix: …, …`: the map starts after that comma.
            let mut props = String::new();
            stamp.write_props(doc, &mut props)?;
            let props = props.trim_start_matches(", ");
            let _ = write!(
                rows,
                "{{{KEY_INDEX_PROP}: '{}', p: {{{props}}}}}",
                key_hex(key)
            );
        }
        rows.push(']');
        let mut q = Cypher::new();
        let r = q.param_literal(&rows);
        q.push(&format!(
            "UNWIND {r} AS r MATCH (n:{} {{{KEY_INDEX_PROP}: r.{KEY_INDEX_PROP}}}) SET n += r.p",
            inner.label
        ));
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("GRAPH.QUERY")
            .arg(&inner.graph)
            .arg(q.text())
            .ignore()
            .cmd("INCR")
            .arg(&inner.epoch_key)
            .ignore()
            .cmd("INCR")
            .arg(&inner.version_key)
            .ignore()
            .cmd("HSET")
            .arg(&inner.index_key)
            .arg(&definition.name)
            .arg(text)
            .ignore();
        let reply: Value = pipe
            .query_async(conn)
            .await
            .map_err(redis_err("create_index"))?;
        Ok(!matches!(reply, Value::Nil))
    }

    /// Reloads the index definitions when this handle's copy is older than a second.
    pub(crate) async fn refresh_indexes(&self) -> Result<()> {
        if self.inner.indexes.is_stale() {
            self.load_indexes().await?;
        }
        Ok(())
    }

    /// Waits until FalkorDB finished building this label's indexes: it fills an index
    /// over existing nodes in the background, and plans queries without it until then.
    ///
    /// # Errors
    /// `Timeout` (retryable) when an index is still building after the store's index
    /// build timeout ([`GraphStorage::set_index_build_timeout`]).
    async fn wait_for_indexes(&self) -> Result<()> {
        let mut q = Cypher::new();
        let l = q.param(self.inner.label_name.as_str())?;
        q.push(&format!(
            "CALL db.indexes() YIELD label, status WHERE label = {l} RETURN status"
        ));
        let timeout = self.index_build_timeout();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let rows = self
                .inner
                .read(&mut self.inner.shared(), &q, "create_index")
                .await?;
            let building = rows
                .iter()
                .any(|r| r.first().and_then(cell_str).as_deref() != Some("OPERATIONAL"));
            if !building {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(StorageError::new(
                    ErrorCode::Timeout,
                    format!(
                        "falkordb is still building the index after {timeout:?}; the backend index \
                         exists, and calling create_index again waits for it and registers it"
                    ),
                )
                .with_backend(BACKEND)
                .with_context("label", &self.inner.label_name));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Loads the index definitions of this label from the server.
    pub(crate) async fn load_indexes(&self) -> Result<()> {
        self.load_indexes_on(&mut self.inner.shared(), true).await
    }

    /// Loads the index definitions and epoch on `conn`, in one `MULTI` when `atomic`;
    /// on a watching connection (`atomic` false) the `WATCH` on the epoch makes the pair
    /// consistent instead, since an `EXEC` would end the watch.
    pub(crate) async fn load_indexes_on(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        atomic: bool,
    ) -> Result<()> {
        let mut pipe = redis::pipe();
        if atomic {
            pipe.atomic();
        }
        let (map, epoch): (BTreeMap<String, String>, Option<i64>) = pipe
            .cmd("HGETALL")
            .arg(&self.inner.index_key)
            .cmd("GET")
            .arg(&self.inner.epoch_key)
            .query_async(conn)
            .await
            .map_err(redis_err("list_indexes"))?;
        let mut definitions = Vec::with_capacity(map.len());
        for text in map.values() {
            let def: IndexDefinition = serde_json::from_str(text).map_err(|e| {
                StorageError::new(ErrorCode::Corrupted, format!("bad index definition: {e}"))
                    .with_backend(BACKEND)
            })?;
            definitions.push(def);
        }
        definitions.sort_by(|a, b| a.name.cmp(&b.name));
        self.inner.indexes.replace(definitions, epoch.unwrap_or(0));
        Ok(())
    }

    async fn schema_query(&self, text: &str, operation: &'static str) -> Result<()> {
        let mut q = Cypher::new();
        q.push(text);
        match self.inner.write_query(&q, operation).await {
            Ok(_) => Ok(()),
            Err(e) if e.message().contains("already indexed") => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn backend_index_kind(kind: IndexKind) -> &'static str {
        match kind {
            IndexKind::Btree | IndexKind::Hash => "falkordb range index",
            IndexKind::Fulltext => "falkordb full-text index",
            IndexKind::Spatial => "none",
        }
    }
}

#[async_trait]
impl<T: StorageValue> QueryableStorage<T> for GraphStorage<T> {
    fn query(&self, query: &Query) -> ResultStream<'_, QueryResult<T>> {
        let query = query.clone();
        futures::stream::once(async move { self.run_query(&query).await })
            .map(|r| match r {
                Ok(results) => futures::stream::iter(results.into_iter().map(Ok)).boxed(),
                Err(e) => futures::stream::iter([Err(e)]).boxed(),
            })
            .flatten()
            .boxed()
    }

    async fn count(&self, query: &Query) -> Result<u64> {
        let compiled = CompiledQuery::compile(query)?;
        let Some(filter) = &query.filter else {
            return storage_core::Storage::size(self).await;
        };
        if let Some(counted) = self.count_in_cypher(&compiled, filter).await? {
            return Ok(counted);
        }
        let (entries, _) = self.candidates(Some(filter), None).await?;
        Ok(compiled.count(entries.iter().map(|(k, _, d)| (k.as_str(), d))))
    }

    async fn aggregate(&self, pipeline: &[AggregateStage]) -> Result<Vec<Document>> {
        // Validate the whole pipeline before touching the server.
        aggregate(pipeline, std::iter::empty())?;
        let first = match pipeline.first() {
            Some(AggregateStage::Match(filter)) => Some(filter),
            _ => None,
        };
        let (entries, _) = self.candidates(first, None).await?;
        aggregate(pipeline, entries.iter().map(|(_, _, d)| d))
    }
}

#[async_trait]
impl<T: StorageValue> IndexedStorage<T> for GraphStorage<T> {
    async fn create_index(&self, definition: IndexDefinition) -> Result<()> {
        let err = |e: StorageError| e.with_operation("create_index").with_backend(BACKEND);
        let [field] = definition.fields.as_slice() else {
            return Err(err(StorageError::unsupported(
                "indexes cover exactly one field",
            )));
        };
        let path = FieldPath::parse(&field.path).map_err(err)?;
        if field.kind == IndexKind::Spatial {
            return Err(err(StorageError::unsupported(
                "falkordb spatial indexes need point values; spatial is not supported",
            )));
        }
        if field.kind == IndexKind::Fulltext && definition.unique {
            return Err(err(StorageError::unsupported(
                "a fulltext index cannot be unique",
            )));
        }
        let Some(prop) = quote_name(&promoted_name(path.as_str())) else {
            return Err(err(StorageError::unsupported(
                "falkordb cannot name a property containing a backtick",
            )));
        };
        self.load_indexes().await?;
        if let Some(existing) = self
            .inner
            .indexes
            .list()
            .into_iter()
            .find(|d| d.name == definition.name)
        {
            if existing == definition {
                return Ok(());
            }
            return Err(err(StorageError::new(
                ErrorCode::DuplicateKey,
                "an index with this name has another definition",
            )
            .with_context("index", &definition.name)));
        }
        if definition.unique {
            // Refuse before creating anything when existing data already conflicts.
            let mut with_new = self.inner.indexes.list();
            with_new.push(definition.clone());
            let all: BTreeMap<String, Option<Document>> = self
                .all_documents(&mut self.inner.shared())
                .await?
                .into_iter()
                .map(|(k, d)| (k, Some(d)))
                .collect();
            crate::unique::check(&with_new, &BTreeMap::new(), &all, true).map_err(err)?;
        }
        let label = &self.inner.label;
        match field.kind {
            IndexKind::Btree | IndexKind::Hash => {
                self.schema_query(
                    &format!("CREATE INDEX FOR (n:{label}) ON (n.{prop})"),
                    "create_index",
                )
                .await?;
            }
            IndexKind::Fulltext => {
                let mut q = Cypher::new();
                let l = q.param(self.inner.label_name.as_str())?;
                let p = q.param(promoted_name(path.as_str()).as_str())?;
                q.push(&format!("CALL db.idx.fulltext.createNodeIndex({l}, {p})"));
                if let Err(e) = self.inner.write_query(&q, "create_index").await
                    && !e.message().contains("already indexed")
                {
                    return Err(e);
                }
            }
            IndexKind::Spatial => {}
        }
        self.wait_for_indexes()
            .await
            .map_err(|e| err(e.with_context("index", &definition.name)))?;
        if definition.unique {
            return self.register_unique(definition).await.map_err(err);
        }
        let text = serde_json::to_string(&definition).map_err(|e| {
            StorageError::new(ErrorCode::SerializationFailed, e.to_string()).with_backend(BACKEND)
        })?;
        let created: bool = redis::cmd("HSETNX")
            .arg(&self.inner.index_key)
            .arg(&definition.name)
            .arg(text)
            .query_async(&mut self.inner.shared())
            .await
            .map_err(redis_err("create_index"))?;
        self.load_indexes().await?;
        if !created && !self.inner.indexes.list().contains(&definition) {
            return Err(err(StorageError::new(
                ErrorCode::DuplicateKey,
                "an index with this name has another definition",
            )
            .with_context("index", &definition.name)));
        }
        Ok(())
    }

    async fn drop_index(&self, name: &str) -> Result<bool> {
        self.load_indexes().await?;
        let Some(def) = self
            .inner
            .indexes
            .list()
            .into_iter()
            .find(|d| d.name == name)
        else {
            return Ok(false);
        };
        // Bumping the epoch makes every handle re-read the definitions before its next
        // unique check, so a dropped unique index stops refusing writes at once.
        let (removed, _): (i64, i64) = redis::pipe()
            .atomic()
            .cmd("HDEL")
            .arg(&self.inner.index_key)
            .arg(name)
            .cmd("INCR")
            .arg(&self.inner.epoch_key)
            .query_async(&mut self.inner.shared())
            .await
            .map_err(redis_err("drop_index"))?;
        self.load_indexes().await?;
        // The FalkorDB index goes only when no other definition still needs the property.
        if let Some(field) = def.fields.first() {
            let still_used = self.inner.indexes.list().iter().any(|d| {
                d.fields.first().is_some_and(|f| {
                    f.path == field.path
                        && (f.kind == IndexKind::Fulltext) == (field.kind == IndexKind::Fulltext)
                })
            });
            if !still_used && let Some(prop) = quote_name(&promoted_name(&field.path)) {
                {
                    let label = &self.inner.label;
                    let text = if field.kind == IndexKind::Fulltext {
                        format!("DROP FULLTEXT INDEX FOR (n:{label}) ON (n.{prop})")
                    } else {
                        format!("DROP INDEX FOR (n:{label}) ON (n.{prop})")
                    };
                    let mut q = Cypher::new();
                    q.push(&text);
                    // Dropping a server index that is already gone is not an error here.
                    let _ = self.inner.write_query(&q, "drop_index").await;
                }
            }
        }
        Ok(removed > 0)
    }

    async fn list_indexes(&self) -> Result<Vec<IndexInfo>> {
        self.load_indexes().await?;
        let mut out = Vec::new();
        for definition in self.inner.indexes.list() {
            let mut entries = 0;
            if let Some(prop) = definition
                .fields
                .first()
                .and_then(|f| quote_name(&promoted_name(&f.path)))
            {
                let mut q = Cypher::new();
                q.push(&format!(
                    "MATCH (n:{}) WHERE n.{prop} IS NOT NULL RETURN count(n)",
                    self.inner.label
                ));
                let rows = self
                    .inner
                    .read(&mut self.inner.shared(), &q, "list_indexes")
                    .await?;
                entries = rows
                    .first()
                    .and_then(|r| r.first())
                    .and_then(cell_int)
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0);
            }
            let (hits, misses) = self.inner.indexes.counters(&definition.name);
            let kind = definition
                .fields
                .first()
                .map_or(IndexKind::Btree, |f| f.kind);
            out.push(IndexInfo {
                backend_kind: Some(if definition.unique {
                    format!(
                        "{} + unique check under WATCH",
                        Self::backend_index_kind(kind)
                    )
                } else {
                    Self::backend_index_kind(kind).to_owned()
                }),
                definition,
                stats: IndexStats {
                    size_bytes: None,
                    entries,
                    hits,
                    misses,
                },
            });
        }
        Ok(out)
    }

    async fn explain(&self, query: &Query) -> Result<ExecutionPlan> {
        CompiledQuery::compile(query)?;
        self.load_indexes().await?;
        let top = query.limit.map(|limit| Top {
            order: &query.order_by,
            first: query.offset.unwrap_or(0).saturating_add(limit),
        });
        let plan = self.plan(query.filter.as_ref(), top.as_ref())?;
        let backend_plan = match redis::cmd("GRAPH.EXPLAIN")
            .arg(&self.inner.graph)
            .arg(plan.cypher.text())
            .query_async::<Value>(&mut self.inner.shared())
            .await
        {
            Ok(Value::Array(lines)) => lines.iter().filter_map(cell_str).collect(),
            Ok(_) => Vec::new(),
            Err(e) if crate::error::is_missing_graph(&e) => vec!["(empty graph)".to_owned()],
            Err(e) => return Err(redis_err("explain")(e)),
        };
        let mut pushed_down = vec![format!("cypher: {}", plan.cypher.body())];
        pushed_down.extend(plan.pushed);
        Ok(ExecutionPlan {
            full_scan: plan.index.is_none(),
            index: plan.index,
            pushed_down,
            in_process: plan.in_process,
            backend_plan,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_answering_top_level_clause_chooses_the_index() {
        let defs = vec![
            IndexDefinition::new("by_age", "age", IndexKind::Btree),
            IndexDefinition::new("by_name", "name", IndexKind::Hash),
        ];
        let filter = Filter::And(vec![
            Filter::Condition {
                field: "name".into(),
                op: Operator::Gt,
                value: json!("a"),
            },
            Filter::Condition {
                field: "age".into(),
                op: Operator::Gte,
                value: json!(3),
            },
        ]);
        let chosen = choose(&defs, Some(&filter)).map(|c| c.name);
        assert_eq!(chosen.as_deref(), Some("by_age"));
        assert!(choose(&defs, None).is_none());
    }
}
