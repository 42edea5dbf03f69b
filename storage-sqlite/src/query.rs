//! Queryable and Indexed: candidate filters run in SQL, the reference evaluator decides.

use std::collections::{BTreeMap, HashMap};
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
use crate::index;
use crate::rows::{Fields, RowText, decode_stored, parse_fields};
use crate::sql::{candidates, quote_ident};

/// The candidate rows of a filter: their text, and each parsed for the evaluator
/// (keeping `fields`).
fn fetch(
    conn: &Connection,
    table: &Table,
    filter: Option<&storage_core::Filter>,
    fields: &Fields,
    operation: &'static str,
) -> Result<(RowText, Vec<Document>)> {
    let catalog = table.indexes.current(conn, &table.name)?;
    let cand = candidates(filter, &catalog);
    let t = &table.sql.table;
    let (sql, params) = match &cand {
        Some(c) => (c.select(t), c.params.clone()),
        None => (format!("SELECT key, value FROM {t}"), Vec::new()),
    };
    let mut stmt = conn.prepare_cached(&sql).map_err(sql_err(operation))?;
    let mut rows = stmt
        .query(params_from_iter(params))
        .map_err(sql_err(operation))?;
    let mut text = RowText::with_capacity(64);
    let mut docs = Vec::new();
    while let Some(row) = rows.next().map_err(sql_err(operation))? {
        let key = row
            .get_ref(0)
            .and_then(|v| Ok(v.as_str()?))
            .map_err(sql_err(operation))?;
        let json = row
            .get_ref(1)
            .and_then(|v| Ok(v.as_str()?))
            .map_err(sql_err(operation))?;
        docs.push(parse_fields(json, fields, key, operation)?);
        text.push(key, json);
    }
    if let Some(c) = &cand {
        for name in &c.indexes {
            table.indexes.record(name, !docs.is_empty());
        }
    }
    Ok((text, docs))
}

/// A pipeline that starts by counting groups of the whole table (`group` by a path with
/// only `count` accumulators) runs that stage as SQL `GROUP BY` when it is provably
/// exact: no entry holds, at the path, an array (or passes an array on the way), an
/// object, a boolean or a number beyond ±2^53 — values whose grouping in SQL could
/// differ from the evaluator's. Each group's `_id` is read from its first entry in key
/// order, as the evaluator does; the later stages run in process on the group rows.
/// `None` when the pipeline or the data does not qualify.
fn group_in_sql(
    conn: &Connection,
    table: &Table,
    pipeline: &[AggregateStage],
) -> Result<Option<Vec<Document>>> {
    let Some(AggregateStage::Group {
        by: Some(by),
        accumulators,
    }) = pipeline.first()
    else {
        return Ok(None);
    };
    if accumulators.is_empty()
        || !accumulators
            .iter()
            .all(|(_, a)| matches!(a, storage_core::query::Accumulator::Count))
    {
        return Ok(None);
    }
    let Ok(path) = storage_core::query::FieldPath::parse(by) else {
        return Ok(None);
    };
    let segments = path.segments();
    let Some(jp) = crate::sql::json_path(&path) else {
        return Ok(None);
    };
    let t = &table.sql.table;
    let mut irregular = vec!["json_type(value) = 'array'".to_owned()];
    for n in 1..segments.len() {
        if let Some(prefix) = crate::sql::json_path_of(&segments[..n]) {
            irregular.push(format!(
                "json_type(value, {}) = 'array'",
                crate::sql::quote_literal(&prefix)
            ));
        }
    }
    let p = crate::sql::quote_literal(&jp);
    let guard = format!(
        "SELECT 1 FROM {t} WHERE {} OR json_type(value, {p}) IN ('array', 'object', 'true', 'false') \
         OR (json_type(value, {p}) IN ('integer', 'real') AND abs(json_extract(value, {p})) > 9007199254740992.0) \
         LIMIT 1",
        irregular.join(" OR ")
    );
    let err = sql_err("aggregate");
    // One read transaction: the check and the grouping see the same snapshot.
    let tx = conn.unchecked_transaction().map_err(&err)?;
    if tx
        .prepare_cached(&guard)
        .and_then(|mut s| s.exists([]))
        .map_err(&err)?
    {
        return Ok(None);
    }
    let sql = format!("SELECT count(*), min(key) FROM {t} GROUP BY json_extract(value, {p})");
    let groups: Vec<(i64, String)> = tx
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(&err)?;
    let mut rows = Vec::with_capacity(groups.len());
    for (count, first_key) in groups {
        let json: String = tx
            .prepare_cached(&table.sql.get)
            .and_then(|mut s| s.query_row([&first_key], |r| r.get(0)))
            .map_err(&err)?;
        let doc: Document = serde_json::from_str(&json).map_err(|e| {
            StorageError::new(ErrorCode::Corrupted, "stored value is not json")
                .with_operation("aggregate")
                .with_backend("sqlite")
                .with_context("key", first_key.escape_debug())
                .with_source(e)
        })?;
        let mut row = serde_json::Map::new();
        row.insert(
            "_id".to_owned(),
            path.get(&doc).cloned().unwrap_or(Document::Null),
        );
        let count = Document::from(u64::try_from(count).unwrap_or(0));
        for (name, _) in accumulators {
            row.insert(name.clone(), count.clone());
        }
        rows.push(Document::Object(row));
    }
    tx.finish().map_err(&err)?;
    rows.sort_by(|a, b| storage_core::query::compare_total(a.get("_id"), b.get("_id")));
    aggregate(&pipeline[1..], rows.iter())
        .map(Some)
        .map_err(|e| e.with_operation("aggregate").with_backend("sqlite"))
}

/// Whether `query` is a plain page in key order, which SQL answers exactly.
fn pages_in_sql(query: &Query) -> bool {
    query.filter.is_none()
        && query.order_by.is_empty()
        && (query.limit.is_some() || query.offset.is_some())
}

/// One page of entries in key order, parsed for the evaluator (keeping `fields`).
fn fetch_page(
    conn: &Connection,
    table: &Table,
    query: &Query,
    fields: &Fields,
) -> Result<(RowText, Vec<Document>)> {
    // SQLite reads a negative limit as "no limit".
    let limit = query
        .limit
        .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let offset = query
        .offset
        .map_or(0, |o| i64::try_from(o).unwrap_or(i64::MAX));
    let sql = format!(
        "SELECT key, value FROM {} ORDER BY key LIMIT ?1 OFFSET ?2",
        table.sql.table
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(sql_err("query"))?;
    let mut rows = stmt
        .query(rusqlite::params![limit, offset])
        .map_err(sql_err("query"))?;
    let mut text = RowText::with_capacity(64);
    let mut docs = Vec::new();
    while let Some(row) = rows.next().map_err(sql_err("query"))? {
        let key = row
            .get_ref(0)
            .and_then(|v| Ok(v.as_str()?))
            .map_err(sql_err("query"))?;
        let json = row
            .get_ref(1)
            .and_then(|v| Ok(v.as_str()?))
            .map_err(sql_err("query"))?;
        docs.push(parse_fields(json, fields, key, "query")?);
        text.push(key, json);
    }
    Ok((text, docs))
}

/// `EXPLAIN QUERY PLAN` of `sql`, one line per step.
fn plan_lines(
    conn: &Connection,
    sql: &str,
    params: Vec<rusqlite::types::Value>,
) -> Result<Vec<String>> {
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .map_err(sql_err("explain"))?;
    stmt.query_map(params_from_iter(params), |r| r.get::<_, String>(3))
        .and_then(Iterator::collect)
        .map_err(sql_err("explain"))
}

/// The index a candidate filter uses according to the plan `lines`.
fn index_used(
    catalog: &[index::IndexMeta],
    cand: Option<&crate::sql::Candidates>,
    lines: &[String],
) -> Option<String> {
    let uses = |object: &str| lines.iter().any(|l| l.contains(object));
    catalog
        .iter()
        .find(|m| {
            cand.is_some_and(|c| c.indexes.contains(&m.name))
                && (uses(&format!("{}__ix{} ", m.table, m.id))
                    || uses(&format!("{}__ix{})", m.table, m.id))
                    || lines
                        .iter()
                        .any(|l| l.ends_with(&format!("{}__ix{}", m.table, m.id)))
                    || uses(&m.fts_table())
                    || uses(&m.rtree_table()))
        })
        .map(|m| m.name.clone())
}

/// Whether plan `lines` scan the whole table without an index.
fn scans_table(lines: &[String], table: &str) -> bool {
    lines.iter().any(|l| {
        (l == &format!("SCAN {table}") || l.starts_with(&format!("SCAN {table} ")))
            && !l.contains("USING")
    }) && !lines.iter().any(|l| l.contains("MULTI-INDEX"))
}

/// How `query` runs: the exact range plan when it applies, else candidates in SQL and
/// the evaluator in process.
fn explain(conn: &Connection, table: &Table, query: &Query) -> Result<ExecutionPlan> {
    let catalog = table.indexes.current(conn, &table.name)?;
    let plain = table.name.as_str();
    if let Some(plan) = eq_plan(query, &catalog) {
        return explain_eq(conn, table, &plan);
    }
    if let Some(plan) = range_plan(query, &catalog)
        .filter(|plan| run_range_guard(conn, table, plan).unwrap_or(false))
    {
        let lines = plan_lines(
            conn,
            &range_sql(table, &plan),
            vec![
                plan.lower.0.clone(),
                plan.upper.0.clone(),
                (-1i64).into(),
                0i64.into(),
            ],
        )?;
        let uses_index = lines
            .iter()
            .any(|l| l.contains("USING INDEX") || l.contains("USING COVERING INDEX"));
        return Ok(ExecutionPlan {
            index: uses_index.then(|| plan.index.clone()),
            full_scan: scans_table(&lines, plain),
            pushed_down: vec![
                "exact range filter, order_by and offset/limit (no entry has an array on the path)"
                    .to_owned(),
            ],
            in_process: query
                .select
                .as_ref()
                .map(|_| vec!["select".to_owned()])
                .unwrap_or_default(),
            backend_plan: lines,
        });
    }
    let cand = candidates(query.filter.as_ref(), &catalog);
    let t = &table.sql.table;
    let (sql, params) = match &cand {
        Some(c) => (c.select(t), c.params.clone()),
        None if pages_in_sql(query) => (
            format!("SELECT key, value FROM {t} ORDER BY key LIMIT ?1 OFFSET ?2"),
            vec![
                query
                    .limit
                    .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX))
                    .into(),
                query
                    .offset
                    .map_or(0, |o| i64::try_from(o).unwrap_or(i64::MAX))
                    .into(),
            ],
        ),
        None => (format!("SELECT key, value FROM {t}"), Vec::new()),
    };
    let lines = plan_lines(conn, &sql, params)?;
    let index = index_used(&catalog, cand.as_ref(), &lines);
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
        in_process.push("filter: the reference evaluator checks every candidate".to_owned());
    }
    if !query.order_by.is_empty() {
        in_process.push("order_by".to_owned());
    }
    if pages_in_sql(query) {
        pushed_down.push("key order, offset/limit".to_owned());
    } else if query.offset.is_some() || query.limit.is_some() {
        in_process.push("offset/limit".to_owned());
    }
    if query.select.is_some() {
        in_process.push("select".to_owned());
    }
    Ok(ExecutionPlan {
        index,
        full_scan: scans_table(&lines, plain),
        pushed_down,
        in_process,
        backend_plan: lines,
    })
}

/// How an [`EqPlan`] runs.
fn explain_eq(conn: &Connection, table: &Table, plan: &EqPlan) -> Result<ExecutionPlan> {
    let sql = eq_sql(table, plan);
    let params = plan.values.iter().cloned().map(Into::into).collect();
    let lines = plan_lines(conn, &sql, params)?;
    let uses_index = lines
        .iter()
        .any(|l| l.contains("USING INDEX") || l.contains("USING COVERING INDEX"));
    Ok(ExecutionPlan {
        index: uses_index.then(|| plan.index.clone()),
        full_scan: scans_table(&lines, &table.name),
        pushed_down: vec![
            "exact string equality through the index, and key order and offset/limit".to_owned(),
        ],
        in_process: vec![
            "filter: the reference evaluator checks the entries with an array on the path"
                .to_owned(),
        ],
        backend_plan: lines,
    })
}

/// A numeric range on one btree-indexed path, ordered by that path or by key: with no
/// array on the path in any entry (checked through the index's partial indexes), every
/// entry has at most one value there, and SQL filters, orders and pages exactly.
struct RangePlan {
    index: String,
    json_path: String,
    segments: Vec<String>,
    lower: (rusqlite::types::Value, bool),
    upper: (rusqlite::types::Value, bool),
    /// `None`: key order; `Some(desc)`: by the path, then key.
    by_path: Option<bool>,
}

fn range_plan(query: &Query, catalog: &[index::IndexMeta]) -> Option<RangePlan> {
    use storage_core::{Direction, Filter, Operator};
    let conds: Vec<(&str, Operator, &Document)> = match query.filter.as_ref()? {
        Filter::Condition { field, op, value } => vec![(field.as_str(), *op, value)],
        Filter::And(items) => items
            .iter()
            .map(|f| match f {
                Filter::Condition { field, op, value } => Some((field.as_str(), *op, value)),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?,
        _ => return None,
    };
    let field = conds.first()?.0;
    if conds.iter().any(|(f, _, _)| *f != field) {
        return None;
    }
    let by_path = match query.order_by.as_slice() {
        [] => None,
        [o] if o.field == field => Some(o.direction == Direction::Desc),
        _ => return None,
    };
    let index = catalog.iter().find(|m| {
        m.definition.fields.len() == 1
            && m.definition.fields[0].path == field
            && matches!(
                m.definition.fields[0].kind,
                storage_core::IndexKind::Btree | storage_core::IndexKind::Hash
            )
            && !m.definition.sparse
    })?;
    let path = storage_core::query::FieldPath::parse(field).ok()?;
    let json_path = crate::sql::json_path(&path)?;
    let (mut lower, mut upper) = (None, None);
    for (_, op, value) in conds {
        let Document::Number(n) = value else {
            return None;
        };
        let bound = if let Some(i) = n.as_i64() {
            (i.unsigned_abs() <= 1 << 53).then_some(rusqlite::types::Value::Integer(i))?
        } else {
            let x = n.as_f64().filter(|x| x.abs() <= 9_007_199_254_740_992.0)?;
            rusqlite::types::Value::Real(x)
        };
        let (slot, inclusive) = match op {
            Operator::Gt => (&mut lower, false),
            Operator::Gte => (&mut lower, true),
            Operator::Lt => (&mut upper, false),
            Operator::Lte => (&mut upper, true),
            _ => return None,
        };
        if slot.replace((bound, inclusive)).is_some() {
            return None;
        }
    }
    Some(RangePlan {
        index: index.name.clone(),
        json_path,
        segments: path.segments().to_vec(),
        lower: lower?,
        upper: upper?,
        by_path,
    })
}

/// SQL finding an entry with an array on the plan's path (answered from the index's
/// partial indexes).
fn guard_sql(table: &Table, plan: &RangePlan) -> String {
    format!(
        "SELECT 1 FROM {} WHERE {} LIMIT 1",
        table.sql.table,
        arrays_on(&plan.segments)
    )
}

/// SQL true for entries with an array at, or on the way to, the path of `segments` (the
/// index's partial indexes answer it).
fn arrays_on(segments: &[String]) -> String {
    use crate::sql::{json_path_of, quote_literal};
    let arrays: Vec<String> = (0..=segments.len())
        .filter_map(|n| json_path_of(&segments[..n]))
        .map(|p| format!("json_type(value, {}) = 'array'", quote_literal(&p)))
        .collect();
    arrays.join(" OR ")
}

/// `eq` or `in` of strings on a btree- or hash-indexed path, the whole filter of a query
/// without order or projection: SQL answers it exactly, with the entries holding an
/// array on the path as the only exception.
///
/// `json_extract` equals a string operand exactly when the path holds that string:
/// numbers, booleans and null never equal text; an object or array comes out as its
/// JSON text, which starts with `{` or `[` (operands that do are not planned); a path
/// through an array gives NULL. So entries found through the index match, and those
/// with an array on the path (found through the partial indexes) are the only ones the
/// evaluator must look at.
struct EqPlan {
    index: String,
    json_path: String,
    segments: Vec<String>,
    values: Vec<String>,
}

fn eq_plan(query: &Query, catalog: &[index::IndexMeta]) -> Option<EqPlan> {
    use storage_core::{Filter, Operator};
    if !query.order_by.is_empty() || query.select.is_some() {
        return None;
    }
    let Filter::Condition { field, op, value } = query.filter.as_ref()? else {
        return None;
    };
    let values: Vec<String> = match (op, value) {
        (Operator::Eq, Document::String(s)) => vec![s.clone()],
        (Operator::In, Document::Array(items)) if !items.is_empty() && items.len() <= 64 => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()?,
        _ => return None,
    };
    if values
        .iter()
        .any(|v| v.starts_with('{') || v.starts_with('['))
    {
        return None;
    }
    let index = catalog.iter().find(|m| {
        m.definition.fields.first().is_some_and(|f| {
            f.path == *field
                && matches!(
                    f.kind,
                    storage_core::IndexKind::Btree | storage_core::IndexKind::Hash
                )
        }) && !m.definition.sparse
    })?;
    let path = storage_core::query::FieldPath::parse(field).ok()?;
    Some(EqPlan {
        index: index.name.clone(),
        json_path: crate::sql::json_path(&path)?,
        segments: path.segments().to_vec(),
        values,
    })
}

/// The SQL of an [`EqPlan`], one statement (so one snapshot): the entries the index
/// finds (third column 1) and those with an array on the path (0), in key order.
fn eq_sql(table: &Table, plan: &EqPlan) -> String {
    let t = &table.sql.table;
    let p = crate::sql::quote_literal(&plan.json_path);
    let marks: Vec<String> = (1..=plan.values.len()).map(|i| format!("?{i}")).collect();
    format!(
        "SELECT key, value, 1 FROM {t} WHERE json_extract(value, {p}) IN ({}) \
         UNION ALL SELECT key, value, 0 FROM {t} WHERE {} ORDER BY 1",
        marks.join(", "),
        arrays_on(&plan.segments)
    )
}

/// Runs an [`EqPlan`].
fn run_eq(
    conn: &Connection,
    table: &Table,
    plan: &EqPlan,
    query: &Query,
    compiled: &CompiledQuery,
) -> Result<Found> {
    let err = sql_err("query");
    let mut rows = RowText::with_capacity(64);
    {
        let mut stmt = conn.prepare_cached(&eq_sql(table, plan)).map_err(&err)?;
        let mut found = stmt
            .query(params_from_iter(plan.values.iter()))
            .map_err(&err)?;
        while let Some(row) = found.next().map_err(&err)? {
            let key = row.get_ref(0).and_then(|v| Ok(v.as_str()?)).map_err(&err)?;
            if rows.last_key() == Some(key) {
                // Both parts found it (they cannot, but one answer per entry regardless).
                continue;
            }
            let json = row.get_ref(1).and_then(|v| Ok(v.as_str()?)).map_err(&err)?;
            let certain: i64 = row.get(2).map_err(&err)?;
            if certain == 1 || compiled.matches(&parse_fields(json, &Fields::All, key, "query")?) {
                rows.push(key, json);
            }
        }
    }
    table.indexes.record(&plan.index, rows.len() > 0);
    let offset = usize::try_from(query.offset.unwrap_or(0)).unwrap_or(usize::MAX);
    let limit = query
        .limit
        .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let results = (0..rows.len())
        .skip(offset)
        .take(limit)
        .map(|i| (i, None, None))
        .collect();
    Ok(Found { rows, results })
}

/// Whether a [`RangePlan`] runs exactly now (no entry has an array on the path).
fn run_range_guard(conn: &Connection, table: &Table, plan: &RangePlan) -> Result<bool> {
    conn.prepare_cached(&guard_sql(table, plan))
        .and_then(|mut s| s.exists([]))
        .map(|found| !found)
        .map_err(sql_err("explain"))
}

/// The SQL of a [`RangePlan`] (parameters: lower, upper, limit, offset).
fn range_sql(table: &Table, plan: &RangePlan) -> String {
    use crate::sql::quote_literal;
    let t = &table.sql.table;
    let p = quote_literal(&plan.json_path);
    let order = match plan.by_path {
        None => "key".to_owned(),
        Some(false) => format!("json_extract(value, {p}), key"),
        Some(true) => format!("json_extract(value, {p}) DESC, key"),
    };
    // `json_extract` reads `true` and `false` as 1 and 0, which the evaluator never
    // compares with numbers; strings, arrays and objects come out as text, which sorts
    // above every number and so fails the upper bound. Only a range holding 0 or 1 needs
    // the type test, which parses each row's JSON instead of reading the index alone.
    let numbers_only = if plan.admits_boolean() {
        format!("json_type(value, {p}) IN ('integer', 'real') AND ")
    } else {
        String::new()
    };
    format!(
        "SELECT key, value FROM {t} WHERE {numbers_only}\
         json_extract(value, {p}) {} ?1 AND json_extract(value, {p}) {} ?2 \
         ORDER BY {order} LIMIT ?3 OFFSET ?4",
        if plan.lower.1 { ">=" } else { ">" },
        if plan.upper.1 { "<=" } else { "<" },
    )
}

impl RangePlan {
    /// Whether 0 or 1 (a boolean, as `json_extract` reads it) lies within the bounds.
    fn admits_boolean(&self) -> bool {
        use rusqlite::types::Value;
        let as_f64 = |v: &Value| match v {
            // Bounds are within ±2^53, so the conversion is exact.
            #[allow(clippy::cast_precision_loss)]
            Value::Integer(i) => Some(*i as f64),
            Value::Real(x) => Some(*x),
            _ => None,
        };
        let (Some(lo), Some(hi)) = (as_f64(&self.lower.0), as_f64(&self.upper.0)) else {
            return true;
        };
        [0.0, 1.0].iter().any(|&x| {
            (if self.lower.1 { x >= lo } else { x > lo })
                && (if self.upper.1 { x <= hi } else { x < hi })
        })
    }
}

/// Runs a [`RangePlan`]: the rows' keys and stored JSON; `None` when some entry has an
/// array on the path.
fn run_range(
    conn: &Connection,
    table: &Table,
    plan: &RangePlan,
    query: &Query,
) -> Result<Option<RowText>> {
    let err = sql_err("query");
    let guard = guard_sql(table, plan);
    let sql = range_sql(table, plan);
    // One read transaction: the check and the query see the same snapshot.
    let tx = conn.unchecked_transaction().map_err(&err)?;
    if tx
        .prepare_cached(&guard)
        .and_then(|mut s| s.exists([]))
        .map_err(&err)?
    {
        return Ok(None);
    }
    let limit = query
        .limit
        .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let offset = query
        .offset
        .map_or(0, |o| i64::try_from(o).unwrap_or(i64::MAX));
    let mut text = RowText::with_capacity(usize::try_from(limit).unwrap_or(64).min(1024));
    {
        let mut stmt = tx.prepare_cached(&sql).map_err(&err)?;
        let mut rows = stmt
            .query(rusqlite::params![plan.lower.0, plan.upper.0, limit, offset])
            .map_err(&err)?;
        while let Some(row) = rows.next().map_err(&err)? {
            let key = row.get_ref(0).and_then(|v| Ok(v.as_str()?)).map_err(&err)?;
            let json = row.get_ref(1).and_then(|v| Ok(v.as_str()?)).map_err(&err)?;
            text.push(key, json);
        }
    }
    tx.finish().map_err(&err)?;
    table.indexes.record(&plan.index, text.len() > 0);
    Ok(Some(text))
}

/// One result before decoding: its row, score and projection.
type Pending = (usize, Option<f64>, Option<BTreeMap<String, Document>>);

/// A query's answer as a connection thread hands it over: the rows' text, and per
/// result (in order) its row, score and projection. The caller decodes the values.
pub(crate) struct Found {
    rows: RowText,
    results: Vec<Pending>,
}

impl Found {
    /// Decodes result `i` into the value type.
    fn result<T: StorageValue>(&mut self, i: usize) -> Option<Result<QueryResult<T>>> {
        let (row, score, projection) = self.results.get_mut(i)?;
        let (key, json) = self.rows.get(*row)?;
        Some(decode_stored(json, key, "query").map(|value| QueryResult {
            key: key.to_owned(),
            value,
            score: *score,
            projection: projection.take(),
        }))
    }
}

/// The answer of a [`RangePlan`]: every row is a result, in order, projected when the
/// query selects.
fn range_found(rows: RowText, query: &Query) -> Result<Found> {
    let select: Option<Vec<storage_core::query::FieldPath>> = query
        .select
        .as_ref()
        .map(|paths| {
            paths
                .iter()
                .map(|p| storage_core::query::FieldPath::parse(p))
                .collect()
        })
        .transpose()?;
    let fields = Fields::of_query(query);
    let mut results = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let projection = match (&select, rows.get(i)) {
            (Some(paths), Some((key, json))) => {
                let doc = parse_fields(json, &fields, key, "query")?;
                Some(
                    paths
                        .iter()
                        .filter_map(|p| p.get(&doc).map(|v| (p.as_str().to_owned(), v.clone())))
                        .collect(),
                )
            }
            _ => None,
        };
        results.push((i, None, projection));
    }
    Ok(Found { rows, results })
}

/// The most entries (offset plus limit) a query may page through and still run on the
/// calling thread (see [`run_bounded`]).
const INLINE_QUERY_ROWS: u64 = 256;

/// Runs `query` if it is bounded: a [`RangePlan`] ordered by its path, whose offset
/// plus limit is at most [`INLINE_QUERY_ROWS`]. SQLite then walks the index from the
/// lower bound and stops after that many entries (plus the entries tied with the last
/// one, which it orders by key), and the array check reads the partial indexes, which
/// are empty unless entries hold arrays there; such a query costs about what a
/// `get_many` of as many keys costs. `Ok(None)` when the query is not of that kind or
/// cannot run exactly now (an entry holds an array on the path): nothing was read then.
pub(crate) fn run_bounded(
    conn: &Connection,
    table: &Table,
    query: &Query,
) -> Result<Option<Found>> {
    let Some(limit) = query.limit else {
        return Ok(None);
    };
    if query.order_by.is_empty()
        || limit.saturating_add(query.offset.unwrap_or(0)) > INLINE_QUERY_ROWS
    {
        return Ok(None);
    }
    let catalog = table.indexes.current(conn, &table.name)?;
    let Some(plan) = range_plan(query, &catalog).filter(|p| p.by_path.is_some()) else {
        return Ok(None);
    };
    match run_range(conn, table, &plan, query)? {
        Some(rows) => range_found(rows, query).map(Some),
        None => Ok(None),
    }
}

fn run_query(
    conn: &Connection,
    table: &Table,
    query: &Query,
    compiled: &CompiledQuery,
) -> Result<Found> {
    let catalog = table.indexes.current(conn, &table.name)?;
    if let Some(plan) = eq_plan(query, &catalog) {
        return run_eq(conn, table, &plan, query, compiled);
    }
    if let Some(plan) = range_plan(query, &catalog)
        && let Some(rows) = run_range(conn, table, &plan, query)?
    {
        return range_found(rows, query);
    }
    let fields = Fields::of_query(query);
    let ((rows, docs), matches) = if pages_in_sql(query) {
        // Without filter and order the result is the key order itself: SQL pages it.
        let fetched = fetch_page(conn, table, query, &fields)?;
        let unpaged = CompiledQuery::compile(&Query {
            limit: None,
            offset: None,
            ..query.clone()
        })?;
        let matches = unpaged.run(
            (0..fetched.0.len()).filter_map(|i| Some((fetched.0.get(i)?.0, fetched.1.get(i)?))),
        );
        (fetched, matches)
    } else {
        let fetched = fetch(conn, table, query.filter.as_ref(), &fields, "query")?;
        let matches = compiled.run(
            (0..fetched.0.len()).filter_map(|i| Some((fetched.0.get(i)?.0, fetched.1.get(i)?))),
        );
        (fetched, matches)
    };
    drop(docs);
    let by_key: HashMap<&str, usize> = (0..rows.len())
        .filter_map(|i| Some((rows.get(i)?.0, i)))
        .collect();
    let results = matches
        .into_iter()
        .map(|m| {
            let row = by_key.get(m.key.as_str()).copied().ok_or_else(|| {
                StorageError::new(ErrorCode::Backend, "evaluator returned an unknown key")
            })?;
            Ok((row, m.score, m.projection))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Found { rows, results })
}

impl<T: StorageValue> SqliteStorage<T> {
    fn compile(query: &Query) -> Result<CompiledQuery> {
        CompiledQuery::compile(query).map_err(|e| e.with_operation("query").with_backend("sqlite"))
    }
}

#[async_trait::async_trait]
impl<T: StorageValue> QueryableStorage<T> for SqliteStorage<T> {
    fn query(&self, query: &Query) -> ResultStream<'_, QueryResult<T>> {
        let compiled = match Self::compile(query) {
            Ok(c) => c,
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
        };
        let query = query.clone();
        futures::stream::once(async move {
            // A bounded query runs where it is asked, as a point read does.
            let inline =
                self.read_inline_bounded("query", |conn| run_bounded(conn, &self.table, &query));
            if let Some(found) = inline {
                return found;
            }
            let table = Arc::clone(&self.table);
            self.db
                .readers
                .run("query", move |conn| {
                    run_query(conn, &table, &query, &compiled)
                })
                .await
        })
        .flat_map(|result| match result {
            // Each value is decoded as the caller takes it.
            Ok(mut found) => futures::stream::iter(
                (0..found.results.len()).map_while(move |i| found.result::<T>(i)),
            )
            .boxed(),
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
                if filter.is_none() {
                    let n: i64 = conn
                        .prepare_cached(&table.sql.count)
                        .and_then(|mut s| s.query_row([], |r| r.get(0)))
                        .map_err(sql_err("count"))?;
                    return Ok(u64::try_from(n).unwrap_or(0));
                }
                let (rows, docs) = fetch(
                    conn,
                    &table,
                    filter.as_ref(),
                    &Fields::of_filter(filter.as_ref()),
                    "count",
                )?;
                Ok(compiled
                    .count((0..rows.len()).filter_map(|i| Some((rows.get(i)?.0, docs.get(i)?)))))
            })
            .await
    }

    async fn aggregate(&self, pipeline: &[AggregateStage]) -> Result<Vec<Document>> {
        let table = Arc::clone(&self.table);
        let pipeline = pipeline.to_vec();
        self.db
            .readers
            .run("aggregate", move |conn| {
                // Compiling on no input checks every stage (bad paths, names, operands).
                aggregate(&pipeline, std::iter::empty())
                    .map_err(|e| e.with_operation("aggregate").with_backend("sqlite"))?;
                if let Some(docs) = group_in_sql(conn, &table, &pipeline)? {
                    return Ok(docs);
                }
                // A leading match narrows the rows read; the pipeline still runs it exactly.
                let first = match pipeline.first() {
                    Some(AggregateStage::Match(f)) => Some(f.clone()),
                    _ => None,
                };
                let (rows, docs) = fetch(conn, &table, first.as_ref(), &Fields::All, "aggregate")?;
                let mut order: Vec<usize> = (0..docs.len()).collect();
                order.sort_unstable_by(|&a, &b| {
                    let key = |i| rows.get(i).map(|(k, _)| k.as_bytes());
                    key(a).cmp(&key(b))
                });
                aggregate(&pipeline, order.iter().filter_map(|&i| docs.get(i)))
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
        Self::compile(query)?;
        let table = Arc::clone(&self.table);
        let query = query.clone();
        self.db
            .readers
            .run("explain", move |conn| explain(conn, &table, &query))
            .await
    }
}
