//! The workload through the storage tiers, the same code for every adapter.

use futures::StreamExt;
use storage_core::query::field;
use storage_core::{Direction, IndexDefinition, IndexKind, IndexedStorage, Query, Result};

use crate::measure::{Op, Sample, start};
use crate::workload::{Doc, WINDOW_LIMIT, Workload, key};

/// The `author == X` query.
pub fn author_query(author: &str) -> Query {
    Query::filter(field("author").eq(author))
}

/// The window query: `from <= created_at < to`, oldest first, limit 100.
pub fn window_query(from: i64, to: i64) -> Query {
    Query::filter(
        field("created_at")
            .gte(from)
            .and(field("created_at").lt(to)),
    )
    .order_by("created_at", Direction::Asc)
    .limit(WINDOW_LIMIT)
}

/// Runs every operation: one-by-one inserts on `single` (a fresh, empty store), then
/// the batch and everything after it on `bulk` (another fresh, empty store).
pub async fn run(
    single: &dyn IndexedStorage<Doc>,
    bulk: &dyn IndexedStorage<Doc>,
    w: &Workload,
) -> Result<Sample> {
    let mut s = Sample::default();

    let t = start();
    for (k, d) in w.single() {
        single.set(k, d).await?;
    }
    s.record(
        Op::InsertOne,
        t.elapsed(),
        w.single_inserts,
        w.single_inserts,
    );

    let entries = w.docs.clone();
    let t = start();
    bulk.set_many(entries).await?;
    s.record(Op::InsertBatch, t.elapsed(), 1, w.docs.len());

    let t = start();
    let mut found = 0;
    for &i in &w.gets {
        found += usize::from(bulk.get(&key(i)).await?.is_some());
    }
    s.record(Op::Get, t.elapsed(), w.gets.len(), found);

    queries(bulk, w, &mut s, Op::AuthorScan, Op::WindowScan).await?;

    let t = start();
    bulk.create_index(IndexDefinition::new(
        "by_author",
        "author",
        IndexKind::Btree,
    ))
    .await?;
    bulk.create_index(IndexDefinition::new(
        "by_created_at",
        "created_at",
        IndexKind::Btree,
    ))
    .await?;
    s.record(Op::CreateIndexes, t.elapsed(), 1, 2);

    queries(bulk, w, &mut s, Op::AuthorIndexed, Op::WindowIndexed).await?;

    let t = start();
    let mut seen = 0;
    let mut entries = bulk.entries();
    while let Some(entry) = entries.next().await {
        entry?;
        seen += 1;
    }
    drop(entries);
    s.record(Op::Iterate, t.elapsed(), 1, seen);
    Ok(s)
}

async fn queries(
    store: &dyn IndexedStorage<Doc>,
    w: &Workload,
    s: &mut Sample,
    author_op: Op,
    window_op: Op,
) -> Result<()> {
    let t = start();
    let mut results = 0;
    for a in &w.authors {
        results += store.find_many(&author_query(a)).await?.len();
    }
    s.record(author_op, t.elapsed(), w.authors.len(), results);

    let t = start();
    let mut results = 0;
    for &(from, to) in &w.windows {
        results += store.find_many(&window_query(from, to)).await?.len();
    }
    s.record(window_op, t.elapsed(), w.windows.len(), results);
    Ok(())
}
