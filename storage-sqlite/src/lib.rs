//! # storage-sqlite
//!
//! A SQLite adapter for the storage tiers of [`storage_core`], over `rusqlite` with
//! the bundled SQLite: one table per handle, values stored as JSON text, every SQLite
//! call on a dedicated thread (one writer connection, a pool of reader connections
//! under WAL, one connection per open transaction), so the async executor never blocks.
//!
//! ## Quick start
//! ```
//! use serde::{Deserialize, Serialize};
//! use storage_core::query::field;
//! use storage_core::{Query, QueryableStorage, Storage};
//! use storage_sqlite::{SqliteConfig, SqliteStorage};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct User {
//!     name: String,
//!     age: u32,
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = SqliteStorage::<User>::open(SqliteConfig::memory().table_name("users")).await?;
//! store.set("user:1", &User { name: "Alice".into(), age: 31 }).await?;
//! store.set("user:2", &User { name: "Bob".into(), age: 27 }).await?;
//!
//! let over_30 = store.find_many(&Query::filter(field("age").gt(30))).await?;
//! assert_eq!(over_30.len(), 1);
//! assert_eq!(over_30[0].value.name, "Alice");
//! # Ok::<(), storage_core::StorageError>(())
//! # }).unwrap();
//! ```
//!
//! ## Tiers
//! [`Storage`](storage_core::Storage), [`BatchStorage`](storage_core::BatchStorage),
//! [`QueryableStorage`](storage_core::QueryableStorage),
//! [`IndexedStorage`](storage_core::IndexedStorage),
//! [`TransactionalStorage`](storage_core::TransactionalStorage) and
//! [`ObservableStorage`](storage_core::ObservableStorage). Not `DistributedStorage`:
//! SQLite has no replication of its own.
//!
//! ## What runs in SQL and what does not
//! A query filter becomes a SQL *candidate filter* that keeps every entry the reference
//! evaluator would match: string equality as a byte search of the stored JSON, or
//! through a btree/hash expression index; number and string ranges through
//! `json_extract` (and its index); `exists: true`; full-text words through FTS5 and
//! boxes through an R*Tree when such an index exists; `and`/`or` of these. The
//! evaluator then checks every candidate in process, so results always equal the
//! reference evaluator's. These parts are **not pushed down**: `ne`, `nin`, `not`,
//! `regex`, nested clauses, `exists: false`, `eq`/`in` with `null`, arrays or objects,
//! numbers beyond ±2^53, full-text and box clauses without an index; and always
//! ordering, offset/limit, projection, scores and aggregate stages (a leading `match`
//! narrows the rows read). [`IndexedStorage::explain`](storage_core::IndexedStorage::explain)
//! lists both sides and SQLite's `EXPLAIN QUERY PLAN` lines.
//!
//! ## Isolation
//! Every transaction reports [`Serializable`](storage_core::IsolationLevel::Serializable):
//! reads come from one WAL snapshot, writers are serial, and a transaction whose snapshot
//! another commit has overtaken cannot write (`SQLITE_BUSY_SNAPSHOT`, reported as a
//! retryable `VersionConflict`). A transaction that has not read yet waits for another
//! transaction's write lock up to `busy_timeout_ms`; one that already reads a snapshot
//! fails at once with a retryable `VersionConflict` (SQLite does not let it wait: its
//! snapshot would be stale once the other writer commits). The Hermitage anomalies
//! (G0, G1a–c, OTV, PMP, P4, G-single, G2-item) are all prevented.
//!
//! ## Crate features
//! None. SQLite is always bundled (FTS5, R*Tree and JSON included).
//!
//! ## Modules
//! - [`SqliteConfig`] (storage-core's) and [`validate_config`] (`config`): configuration,
//!   its defaults and this adapter's checks;
//! - [`SqliteStorage`] (`backend`): the store, Storage and Batch;
//! - `query`, `sql`, `index`: queries, their translation, indexes;
//! - `tx`: transactions; `observe`: hooks, watches and the change log;
//! - `error`, `worker`: error mapping and connection threads.

#![forbid(unsafe_code)]

mod backend;
mod config;
mod error;
mod index;
mod observe;
mod query;
mod sql;
mod tx;
mod worker;

pub use backend::SqliteStorage;
pub use config::{SqliteConfig, SynchronousLevel, validate_config};

/// Compile-time check that the public types can cross threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SqliteStorage<serde_json::Value>>();
    assert_send_sync::<SqliteConfig>();
};
