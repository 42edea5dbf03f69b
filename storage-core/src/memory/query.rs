//! Queries, aggregates and indexes of the memory store.
//!
//! The reference evaluator answers every query. An index, when one applies to a
//! top-level clause, only narrows the entries handed to the evaluator, so the
//! results are exactly the evaluator's over the whole store.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream;

use super::{Entry, MemoryStorage, Snapshot, State, decode, with_op};
use crate::error::{ErrorCode, Result, StorageError};
use crate::index::IndexChoice;
use crate::query::{AggregateStage, CompiledQuery, Match, Query, aggregate};
use crate::tiers::{IndexedStorage, QueryableStorage, ResultStream, StorageValue};
use crate::types::{Document, ExecutionPlan, IndexDefinition, IndexInfo, QueryResult};

/// Runs `query` over the snapshot, through an index when one applies.
fn run(query: &Query, snapshot: &Snapshot) -> Result<Vec<Match>> {
    let compiled = CompiledQuery::compile(query)?;
    let entries = snapshot.indexes.scan(query.filter.as_ref(), &snapshot.data);
    Ok(compiled.run(entries.map(pair)))
}

fn count(query: &Query, snapshot: &Snapshot) -> Result<u64> {
    let compiled = CompiledQuery::compile(query)?;
    let entries = snapshot.indexes.scan(query.filter.as_ref(), &snapshot.data);
    Ok(compiled.count(entries.map(pair)))
}

/// An entry as the evaluator and the index set take it.
fn pair<'a>((key, entry): (&'a String, &'a Entry)) -> (&'a str, &'a Document) {
    (key.as_str(), entry.doc.as_ref())
}

fn describe(choice: &IndexChoice<'_>) -> String {
    format!(
        "candidates from index {} ({:?} on {})",
        choice.index_name(),
        choice.op(),
        choice.field()
    )
    .to_lowercase()
}

fn plan(query: &Query, snapshot: &Snapshot) -> ExecutionPlan {
    let choice = snapshot.indexes.choose(query.filter.as_ref());
    let mut in_process = Vec::new();
    if query.filter.is_some() {
        in_process.push("filter (reference evaluator)".to_owned());
    }
    if !query.order_by.is_empty() {
        let keys: Vec<String> = query
            .order_by
            .iter()
            .map(|o| format!("{} {:?}", o.field, o.direction).to_lowercase())
            .collect();
        in_process.push(format!("order by {}", keys.join(", ")));
    }
    if query.offset.is_some() || query.limit.is_some() {
        in_process.push("offset/limit".to_owned());
    }
    if let Some(select) = &query.select {
        in_process.push(format!("select {}", select.join(", ")));
    }
    ExecutionPlan {
        index: choice.as_ref().map(|c| c.index_name().to_owned()),
        full_scan: choice.is_none(),
        pushed_down: choice.as_ref().map(describe).into_iter().collect(),
        in_process,
        backend_plan: Vec::new(),
    }
}

#[async_trait]
impl<T: StorageValue> QueryableStorage<T> for MemoryStorage<T> {
    fn query(&self, query: &Query) -> ResultStream<'_, QueryResult<T>> {
        // The matched documents are taken out of the snapshot at once, so a slow
        // consumer does not keep the snapshot alive (which would make writers copy the map).
        let outcome = self.span("query").in_scope(|| {
            let snapshot = self.shared.snapshot();
            run(query, &snapshot).map(|matches| {
                matches
                    .into_iter()
                    .map(|m| {
                        let doc = snapshot.data.get(&m.key).map(|e| Arc::clone(&e.doc));
                        (m, doc)
                    })
                    .collect::<Vec<_>>()
            })
        });
        match outcome {
            Ok(found) => stream::iter(found.into_iter().map(|(m, doc)| {
                let doc = doc.ok_or_else(|| {
                    StorageError::new(
                        ErrorCode::Backend,
                        "query matched a key missing from its snapshot",
                    )
                    .with_context("key", m.key.escape_debug())
                })?;
                Ok(QueryResult {
                    value: decode(&doc, &m.key).map_err(|e| with_op(e, "query"))?,
                    key: m.key,
                    score: m.score,
                    projection: m.projection,
                })
            }))
            .boxed(),
            Err(err) => stream::once(async move { Err(with_op(err, "query")) }).boxed(),
        }
    }

    async fn count(&self, query: &Query) -> Result<u64> {
        self.span("count")
            .in_scope(|| count(query, &self.shared.snapshot()))
            .map_err(|e| with_op(e, "count"))
    }

    async fn aggregate(&self, pipeline: &[AggregateStage]) -> Result<Vec<Document>> {
        self.span("aggregate")
            .in_scope(|| {
                let snapshot = self.shared.snapshot();
                aggregate(pipeline, snapshot.data.values().map(|e| e.doc.as_ref()))
            })
            .map_err(|e| with_op(e, "aggregate"))
    }
}

#[async_trait]
impl<T: StorageValue> IndexedStorage<T> for MemoryStorage<T> {
    async fn create_index(&self, definition: IndexDefinition) -> Result<()> {
        self.span("create_index")
            .in_scope(|| {
                // Built under the write lock so no write slips between the build and the swap.
                let mut state = self.shared.write();
                if state.indexes.definition(&definition.name) == Some(&definition) {
                    // Identical: nothing to do, and no reason to copy a shared set.
                    return Ok(());
                }
                let State { data, indexes, .. } = &mut *state;
                Arc::make_mut(indexes).create(definition, data.iter().map(pair))?;
                Ok(())
            })
            .map_err(|e| with_op(e, "create_index"))
    }

    async fn drop_index(&self, name: &str) -> Result<bool> {
        let mut state = self.shared.write();
        if state.indexes.definition(name).is_none() {
            return Ok(false);
        }
        Ok(Arc::make_mut(&mut state.indexes).drop_index(name))
    }

    async fn list_indexes(&self) -> Result<Vec<IndexInfo>> {
        Ok(self.shared.snapshot().indexes.list())
    }

    async fn explain(&self, query: &Query) -> Result<ExecutionPlan> {
        self.span("explain")
            .in_scope(|| {
                CompiledQuery::compile(query)?;
                Ok(plan(query, &self.shared.snapshot()))
            })
            .map_err(|e| with_op(e, "explain"))
    }
}
