//! # storage-sqlite
//!
//! A SQLite adapter for the storage tiers of [`storage_core`], over `rusqlite` with
//! the bundled SQLite: one table per handle, values stored as JSON text, SQLite calls on
//! dedicated threads (one writer connection, a pool of reader connections under WAL, one
//! connection per open transaction), so the async executor never waits on a lock, a
//! write or a scan.
//!
//! The one exception is a bounded point read under WAL — `get`, `has`, or a `get_many`
//! of at most 32 keys — which runs on the calling thread with an idle connection from a
//! second small pool: it is a B-tree lookup by key of a few microseconds, about what
//! decoding the value costs, while handing it to a thread and waking the task again cost
//! three times that. Those connections never wait for a lock (under WAL a reader never
//! waits for the writer, and a lock that is not free at once sends the read to a reader
//! thread); a page SQLite has not cached is read from the file. Without WAL, or when no
//! such connection is idle, the read goes to a reader thread. A bounded query runs the
//! same way: a numeric range on a btree-indexed path, ordered by that path, whose offset
//! plus limit is at most 256 entries — SQLite walks the index from the lower bound and
//! stops after that many entries (plus those tied with the last), a few hundred
//! microseconds at most, about what a `get_many` of as many keys costs. Every other query,
//! and a bounded one that finds an entry holding an array on the path, runs on a reader
//! thread. Values returned by scans and queries are decoded by the caller as it takes
//! them, not on the connection thread; `keys`, `values` and `entries` page through the
//! table 512 entries at a time and ask for the next page as soon as one arrives, so a
//! reader thread reads it while the caller decodes.
//!
//! Bounded writes under WAL — `set`, `delete`, and batches of at most 16 operations
//! without a `clear` — run on the calling thread too, with the writer connection, when
//! it is free at once (the writer thread takes the same connection's lock for every job
//! it runs, so writes stay serial whichever thread runs them, and after-hooks, change
//! events and the change log follow in commit order, under that lock). With
//! `synchronous = normal` a WAL commit appends to the log without syncing: a few
//! microseconds of work, about what the hand-off to the writer thread and back cost.
//! Two things could make such a write wait, and neither does: a write lock held by
//! another connection (a transaction, another process) makes it fail at once, before
//! anything is written (no busy timeout on the calling thread; one autocommit statement,
//! or a `BEGIN IMMEDIATE` transaction), and it is then queued to the writer thread,
//! which waits as configured; and a WAL checkpoint, which syncs and can take
//! milliseconds, never runs inside such a commit: automatic checkpointing is off on the
//! writer connection, and once more than 1000 pages of the log (SQLite's default
//! threshold) are not yet copied, a `PASSIVE` checkpoint runs on a thread with a
//! connection of its own, so writes go on while it syncs. Such a checkpoint cannot
//! restart the log while writes keep landing, so once the log passes 4000 pages one
//! checkpoint runs on the writer thread instead (writes wait for it, and it first waits
//! for a checkpoint still running on the other thread), and the log restarts: it stays
//! bounded, at about 16 MB with 4 KiB pages plus what was committed before that wait
//! began. Dropping the last
//! handle finishes a checkpoint under way before the file is closed.
//! Without WAL, or when the connection is busy, writes go to the writer thread.
//! A `set_many` of 4096 entries or more is encoded by the caller while the writer
//! thread applies the chunks already encoded, in one transaction, so encoding and
//! writing overlap rather than add up.
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
//! numbers beyond ±2^53, full-text and box clauses without an index; ordering,
//! offset/limit, projection and scores — except in two exact cases: a plain page in key
//! order (`ORDER BY key LIMIT … OFFSET …`), and a numeric range (a lower and an upper
//! bound within ±2^53) on a btree-indexed path, ordered by that path or by key, while no
//! entry holds an array on the path (checked per query through the index's partial
//! indexes), which SQL filters, orders and pages exactly; and `eq`/`in` of strings (not
//! starting with `{` or `[`) as the whole filter on a btree/hash-indexed path, with no
//! order or projection, which the index answers exactly, in key order with offset/limit,
//! except for entries holding an array on the path, which the evaluator checks; aggregate stages (a leading `match` narrows the rows read; a
//! leading `group` by a path with only `count` accumulators runs as `GROUP BY` when no
//! entry holds an array, object, boolean or number beyond ±2^53 there). [`IndexedStorage::explain`](storage_core::IndexedStorage::explain)
//! lists both sides and SQLite's `EXPLAIN QUERY PLAN` lines.
//!
//! ## Isolation
//! Every transaction reports [`Serializable`](storage_core::IsolationLevel::Serializable),
//! whatever it asked for. A transaction reads the database as of its `begin` (one WAL
//! snapshot), writers are serial (SQLite's single write lock), and a transaction cannot
//! write once another has written since its snapshot: SQLite answers
//! `SQLITE_BUSY_SNAPSHOT`, or `SQLITE_BUSY` while the other still holds the lock, both
//! reported as a retryable `VersionConflict` that
//! [`TransactionalExt::transaction`](storage_core::TransactionalExt::transaction) re-runs.
//! So of two concurrent writing transactions the second to write fails at once instead of
//! waiting. The Hermitage anomalies (G0, G1a–c, OTV, PMP, P4, G-single, G2-item) are all
//! prevented. Savepoints are SQLite savepoints; read-only transactions run with
//! `PRAGMA query_only`; a time-out rolls back; dropping an open transaction rolls it back.
//!
//! ## Storage layout
//! A handle's table is `(id INTEGER PRIMARY KEY, key TEXT UNIQUE, value TEXT)`, the value
//! being the JSON text of the value; keys order by bytes (SQLite's `BINARY` collation).
//! Several handles, on different tables and value types, share one file
//! ([`SqliteStorage::table`] also shares the connection threads). `:memory:` is a private
//! database in a temporary file deleted with its last handle, so readers and transactions
//! behave exactly as on disk. Indexes are SQLite objects named after the table
//! (`<table>__ix<n>`, `<table>__fts<n>`, `<table>__rt<n>`) and listed in
//! `_storage_indexes`; hash indexes are btrees (`IndexInfo::backend_kind` says so).
//!
//! ## Observing changes
//! Before-hooks run on the caller's task; after-hooks and change batches are produced on
//! the thread that committed, in commit order, so a hook must not block on the store.
//! What a watch sees depends on `change_log`:
//! - `change_log = false` (the default): every handle in this process on the same file
//!   (by canonical path) and table — clones, [`SqliteStorage::table`] handles and
//!   handles opened separately — sees every commit made through any of them, in commit
//!   order, with sequence numbers counted per file and table in this process. Commits
//!   of other processes are not seen, [`SqliteStorage::watch_from`] is `Unsupported`,
//!   and the capabilities say `cross_process_watch: false`. A write costs what raw
//!   SQLite's costs.
//! - `change_log = true`: every commit is also written to `_storage_changes` in the same
//!   SQLite transaction (one more row per change, the value included): watchers of other
//!   handles and processes on the file see it within [`POLL_INTERVAL_MS`] milliseconds,
//!   batches carry the log's sequence number as their `sequence` and resume token,
//!   [`SqliteStorage::watch_from`] resumes after one, and
//!   [`SqliteStorage::trim_change_log`] bounds the log (a resumed watch older than the
//!   trim starts with `Resync`). Handles of this process without the log still see
//!   these commits as above. Every handle on a table should agree on the setting: a
//!   handle with the log does not see the commits of one without it.
//!
//! ## Durability
//! With WAL and `synchronous = normal` (the defaults) an acknowledged write survives the
//! process being killed at any instant (the crash test kills a writer 200 times with
//! `SIGKILL` and finds every acknowledged write and `integrity_check` = `ok`); a power loss
//! may lose the last commits but never corrupts the file. `synchronous = full` makes every
//! commit survive power loss too.
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
//! - `rows`: rows handed from connection threads to callers, and partial parses;
//! - `error`, `worker`: error mapping, connection threads and inline read connections.

#![forbid(unsafe_code)]

mod backend;
mod config;
mod error;
mod index;
mod observe;
mod query;
mod rows;
mod sql;
mod tx;
mod worker;

pub use backend::{POLL_INTERVAL_MS, SqliteStorage};
pub use config::{SqliteConfig, SynchronousLevel, validate_config};

/// Compile-time check that the public types can cross threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SqliteStorage<serde_json::Value>>();
    assert_send_sync::<SqliteConfig>();
};
