//! Seed 003, "Query Usage": documents by author, newest first, limit 10, through an
//! index, on the SQLite adapter.
//!
//! Run with `cargo run -p examples --example documents_sqlite`.

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use storage_core::query::field;
use storage_core::{
    BatchStorage, Direction, IndexDefinition, IndexKind, IndexedStorage, Query, QueryableStorage,
};
use storage_sqlite::{SqliteConfig, SqliteStorage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    title: String,
    author: String,
    created_at: i64,
}

const AUTHORS: [&str; 3] = ["Alice", "Bob", "Carol"];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("documents.db");
    // `new SQLiteStorageAdapter({ database: './data/documents.db' })`
    let storage = SqliteStorage::<Document>::open(
        SqliteConfig::new(path.to_string_lossy()).table_name("documents"),
    )
    .await?;
    println!("opened {}", path.display());

    // 60 documents, 20 per author, one a day.
    let docs: Vec<(String, Document)> = (0..60_i64)
        .map(|i| {
            let author = AUTHORS[usize::try_from(i % 3).unwrap_or(0)];
            (
                format!("doc:{i:03}"),
                Document {
                    title: format!("{author}'s note #{}", i / 3 + 1),
                    author: author.to_owned(),
                    created_at: 1_700_000_000 + i * 86_400,
                },
            )
        })
        .collect();
    storage.set_many(docs).await?;
    println!("stored 60 documents in one atomic batch");

    storage
        .create_index(IndexDefinition::new(
            "by_author",
            "author",
            IndexKind::Btree,
        ))
        .await?;
    println!("created btree index by_author on `author`");

    let query = Query::filter(field("author").eq("Alice"))
        .order_by("createdAt", Direction::Desc)
        .limit(10);
    let plan = storage.explain(&query).await?;
    println!(
        "explain: index = {:?}, full scan = {}, pushed down = {:?}, in process = {:?}",
        plan.index, plan.full_scan, plan.pushed_down, plan.in_process
    );
    for line in &plan.backend_plan {
        println!("  sqlite plan: {line}");
    }

    // `for await (const doc of docs) console.log(doc.value.title)`
    let mut docs = storage.query(&query);
    let mut shown = 0;
    while let Some(doc) = docs.next().await {
        let doc = doc?;
        println!(
            "{}  {} ({})",
            doc.key, doc.value.title, doc.value.created_at
        );
        shown += 1;
    }
    drop(docs);
    println!(
        "{shown} of {} documents by Alice, newest first",
        storage
            .count(&Query::filter(field("author").eq("Alice")))
            .await?
    );
    Ok(())
}
