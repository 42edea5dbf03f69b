//! # storage-json
//!
//! A key-value store in one human-readable JSON file, loaded into memory on
//! open, that survives being killed at any instant and stays cheap to write at
//! a hundred thousand entries. Writes go to an append-only journal beside the
//! file (one checksummed JSON line per acknowledged write, batch or
//! transaction), which is compacted into the main file atomically when it grows
//! and on close. An advisory lock keeps a second process from writing the same
//! file.
//!
//! ## Quick start
//! ```
//! use serde::{Deserialize, Serialize};
//! use storage_core::query::field;
//! use storage_core::{Query, QueryableStorage, Storage};
//! use storage_json::{JsonConfig, JsonStorage};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct User {
//!     name: String,
//!     age: u32,
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("users.json");
//! let store = JsonStorage::<User>::open(JsonConfig::new(&path)).await?;
//! store.set("user:1", &User { name: "Alice".into(), age: 31 }).await?;
//! store.set("user:2", &User { name: "Bob".into(), age: 27 }).await?;
//!
//! let over_30 = store.find_many(&Query::filter(field("age").gt(30))).await?;
//! assert_eq!(over_30[0].value.name, "Alice");
//!
//! store.close().await?; // compacts the journal into users.json
//! let text = std::fs::read_to_string(&path).unwrap();
//! assert!(text.contains("\"user:1\""));
//! # Ok::<(), storage_core::StorageError>(())
//! # }).unwrap();
//! ```
//!
//! ## Tiers
//! Implemented: `Storage`, `BatchStorage`, `QueryableStorage`, `IndexedStorage`,
//! `TransactionalStorage`, `ObservableStorage`. Not implemented: `DistributedStorage`
//! (one file on one machine has no replicas).
//!
//! - **Queries** run on the in-memory entries through the reference evaluator
//!   ([`storage_core::query::CompiledQuery`]), so results are the evaluator's, in its order.
//! - **Indexes** are in-memory structures ([`storage_core::index::IndexSet`], the
//!   memory store's own): btree (equality and ranges), hash
//!   (equality), unique, fulltext (word match with a `score`). Spatial is
//!   `Unsupported` (`within_box` still runs in process). An index narrows the
//!   candidates and the evaluator judges them, so an index never changes results.
//!   The planner costs every usable clause and takes the cheapest; range clauses on
//!   one btree field (`gte a` and `lt b`) are answered as one range.
//!   Index definitions are persisted: `create_index` and `drop_index` are journaled
//!   like writes (durable when they return, as the durability mode says) and the
//!   main file lists them; open rebuilds the indexes (a main file edited by hand so
//!   that it breaks a unique index then fails to open with `DuplicateKey`). A
//!   read-only handle's own indexes live in its memory only.
//! - **Transactions** are optimistic and serializable: reads come from a snapshot
//!   taken at `begin`, writes are buffered, and the commit fails with
//!   `VersionConflict` (retryable) if another commit since `begin` wrote anything
//!   the transaction read (or anything at all, if it listed or counted entries).
//!   Every requested level runs as `Serializable`. Savepoints, read-only
//!   transactions (writes give `Unsupported`) and time-outs (`TransactionAborted`)
//!   are supported; a commit is one journal record; dropping rolls back.
//! - **Observation**: hooks and watches through [`storage_core::EventHub`]; events
//!   describe committed changes, in commit order, one batch per commit. Another
//!   process cannot write while this handle holds the lock, but a person may edit the
//!   file: [`JsonStorage::reload`] re-reads it and announces the difference as one
//!   change batch (on a read-only handle, it picks up what the writer committed).
//!   `cross_process_watch` is `false`: nothing is noticed without `reload`.
//!
//! ## The files
//! `users.json` (the main file; `pretty: false` writes it on one line):
//! ```json
//! {
//!   "format": "storage-json/1",
//!   "seq": 3,
//!   "indexes": [
//!     {
//!       "name": "by_age",
//!       "fields": [{ "path": "age", "kind": "btree", "direction": "asc" }],
//!       "unique": false,
//!       "sparse": false
//!     }
//!   ],
//!   "entries": {
//!     "user:1": {
//!       "age": 31,
//!       "name": "Alice"
//!     },
//!     "user:2": {
//!       "age": 27,
//!       "name": "Bob"
//!     }
//!   }
//! }
//! ```
//! `indexes` (left out when there is none) lists the index definitions, in creation
//! order. Keys are in ascending byte order (object fields inside values too); values are their JSON documents
//! ([`storage_core::codec::to_document`], so a value JSON cannot hold, like NaN, is
//! refused with `InvalidValue` and nothing is stored). `seq` is the last journal
//! record the file is known to contain (after a background compaction it may hold some
//! later changes too, which the journal repeats). The file round-trips through any JSON parser and may
//! be edited by hand while the store is closed (or followed by `reload`).
//!
//! `users.json.journal`, one line per acknowledged commit, numbered consecutively from
//! the main file's `seq` (a gap is `Corrupted`: records were lost), each plain JSON
//! whose last member is a CRC-32 of the bytes before it:
//! ```text
//! {"seq":4,"ops":[{"op":"set","key":"user:3","value":{"age":40,"name":"Carol"}}],"crc":"…"}
//! {"seq":5,"ops":[{"op":"clear"},{"op":"set","key":"a","value":1}],"crc":"…"}
//! {"seq":6,"ops":[{"op":"create_index","index":{"name":"by_name","fields":[{"path":"name","kind":"hash","direction":"asc"}],"unique":true,"sparse":false}}],"crc":"…"}
//! {"seq":7,"ops":[{"op":"drop_index","name":"by_name"}],"crc":"…"}
//! ```
//! With `atomic: true` the journal is kept longer than its records: it grows by
//! zero-filled, fsync'd chunks of 1 MiB, and its records end at the first NUL byte
//! (a text editor shows the zeros after the last line). Appends then overwrite space
//! that already exists, so `fdatasync` has no file size or block allocation to
//! commit. Closing the store (and every foreground compaction) empties it.
//! `users.json.lock` carries the advisory lock (it stays after close; deleting it
//! while a process holds it defeats the lock). `users.json.tmp` exists only during
//! compaction (as does `users.json.journal.tmp`) and is removed on open if a crash left it.
//!
//! ## Crash safety
//! - A write is acknowledged only after its journal line was written and (with
//!   `atomic: true`) fsync'd — per write, or per group with group commit, where
//!   writers wait for the fsync covering them. With group commit a writer hands its
//!   line to the group (collected in memory in commit order, under the store lock);
//!   the group-commit thread writes the whole group to the journal in one `write`
//!   just before its `fdatasync`. A change is visible to readers, hooks and watchers
//!   of this handle from the moment it is committed in memory, which may be up to one
//!   group (at most `max_delay_ms`) before its writer's call returns, and another
//!   process (or a `reload`) sees it once its group was written; if that write or
//!   fsync fails, the group's writers get `Io` and the store refuses further writes.
//! - Appends go into preallocated, zero-filled space and are made durable with
//!   `fdatasync`; growing that space writes the zeros and takes a full `fsync` (size
//!   and blocks) before any record lands there. Compaction takes full `fsync`s of the
//!   new file and of the directory after the rename.
//! - A line torn by a crash fails its checksum (or runs into the zeros) and, being
//!   last, is dropped and cut off on open. The zeros after the last record are the
//!   journal's end, not damage, and are kept. A damaged line followed by good ones is
//!   `Corrupted` with the journal's path and the line's byte offset — except one that
//!   runs into zeros up to a sector boundary: that is an append whose page never
//!   reached the disk while a later page did (an operating-system crash before the
//!   fsync), and since fsyncs come in append order nothing from there on was
//!   acknowledged; it is dropped with a warning.
//! - Compaction writes `<file>.tmp`, fsyncs it, renames it over the file, fsyncs the
//!   directory, and only then replaces the journal by the records the new file lacks
//!   (copied to `<file>.journal.tmp`, fsync'd, renamed; or simply emptied when nothing
//!   was written meanwhile); replay skips records the main file already holds, so a
//!   kill at any instant leaves every acknowledged write.
//! - Opening a damaged main file (truncated, invalid JSON, empty, starting with a
//!   byte-order mark, wrong `format`) gives `Corrupted` naming the file and byte
//!   position, and changes no file.
//!
//! ## Durability modes
//! What each mode loses when the process is killed, and when the machine crashes or
//! loses power (the main file is replaced by an fsync'd, atomic rename in every mode,
//! so it is never lost or half-written):
//!
//! | mode | a write returns after | process killed | machine crash or power loss |
//! |---|---|---|---|
//! | `fsync_each` (default) | its line is appended and `fdatasync`'d | nothing acknowledged | nothing acknowledged |
//! | `group` | its group's lines are written (one `write`) and `fdatasync`'d | nothing acknowledged (a kill before the group's `write` loses only writes not yet acknowledged) | nothing acknowledged |
//! | `atomic: false` | its line is appended (no fsync) | nothing acknowledged (the lines are in the kernel's page cache) | the writes since the kernel last wrote the journal back (typically up to 30 s); a torn tail is dropped on open |
//!
//! In every mode a write that had not returned when the crash came is either there
//! after reopening or not, never half of it: a batch or a transaction is one record.
//!
//! Group commit closes a group, and starts its `fdatasync`, when as many writers wait
//! as the last fsync released (writers waiting for their acknowledgement come back
//! together; at most `max_writes`), when no writer has arrived for half the recent
//! fsync time (at least 20 µs: fewer came back), or when the oldest has waited
//! `max_delay_ms`. So a lone writer's group closes at once (it waits one fsync, not
//! `max_delay_ms`), and *w* concurrent writers share each fsync and one `write`.
//! Writers go on committing (in memory) while an fsync runs. The store then acknowledges about *w* sets per
//! fsync, plus their CPU cost; a single writer gains nothing from it. Waiting writers
//! share one "synced up to record *N*" mark (no channel per write); after an fsync
//! the group-commit thread wakes one of the writers it covered, and that writer wakes
//! the others from its executor thread, which is far cheaper than waking each task
//! from outside the executor (a writer that stops waiting holds nobody up).
//!
//! ## Costs
//! A `set` appends one line and fsyncs (or joins a group): its cost does not grow
//! with the number of entries (a map insert, the index updates, the encoding of its
//! own line), and its fsync is the disk's floor for a durable append: `fdatasync` of
//! a write into preallocated space. In memory, a value written through the store is
//! kept as the compact JSON text its journal line holds (serialized once, straight
//! from the value, with object fields in ascending order as its document has them),
//! and its document is parsed from that text the first time a query, an index, an
//! aggregate or an event needs it, then kept beside it; values read from the files
//! are kept as documents. With indexes, a set builds its document directly (the
//! indexes read it on every commit). Compaction rewrites the whole file; it starts once the
//! journal holds `compact_after` records *and* is at least half the main file's
//! size, so its cost per write stays bounded as the store grows. It runs on a
//! background thread that reads the entries a chunk at a time under short read
//! locks, so reads and writes go on while the file is written. What it writes is a
//! *fuzzy* snapshot (each entry as of some instant after the record the file names as
//! its `seq`); since journal records hold final values, replaying the records after
//! `seq` over it gives exactly the current state, and the journal keeps those records.
//! `compact`, `close` and dropping the last handle compact in the foreground, giving
//! a main file that is exact on its own. Everything runs on
//! the calling thread except the group-commit thread (it writes and fsyncs each
//! group) and lock waiting; an fsync'd
//! write holds the store's lock while it syncs, so reads wait for it. Figures (sets at
//! 1k to 100k entries against a raw fsync'd append, open, gets, queries) are in the
//! crate's `BENCHMARKS.md`, produced by `cargo bench -p storage-json`.
//!
//! ## Two processes
//! `open` takes an exclusive lock on `<file>.lock` (`std::fs::File::try_lock`). A
//! second opener — another process, or a second handle in the same process — gets
//! `ConnectionFailed` ("locked by another process", retryable), or with
//! [`LockMode::Wait`] waits up to its time-out and then gets `Timeout`.
//!
//! Readers need no lock: [`JsonStorage::open_read_only`] loads the files beside a
//! writer and never sees a half-written state (the main file is only ever replaced
//! whole, by rename; a journal line being appended fails its checksum and is left out;
//! a compaction racing the load is detected by the record numbering and the load
//! retried). It refuses writes with `Unsupported` and follows the writer through
//! [`JsonStorage::reload`], which announces what changed.
//!
//! ## Configuration
//! [`JsonConfig`] comes from `storage_core::config` (so a TOML, YAML or JSON file with
//! `type = "json"` opens this store); [`JsonConfigExt`] adds builder methods. The
//! common `serialization` setting must stay JSON without compression (anything else is
//! `InvalidConfig`: the file is for people to read), and `debug = true` wraps every
//! operation in a `tracing` debug span.
//!
//! ## Crate features
//! None.
//!
//! ## Modules
//! - `config`: [`JsonConfig`], [`Durability`], [`LockMode`] (from `storage_core::config`) and
//!   the [`JsonConfigExt`] builder;
//! - `backend`: [`JsonStorage`] and its tier implementations;
//! - `transaction`: [`JsonTransaction`];
//! - `journal`: the file formats, compaction and group commit;
//! - `error`: the adapter's errors, mapped into [`storage_core::StorageError`].

#![forbid(unsafe_code)]

mod backend;
mod config;
mod error;
mod journal;
mod transaction;
mod value;

pub use backend::{JsonStorage, files_of};
pub use config::{Durability, JsonConfig, JsonConfigExt, LockMode};
pub use transaction::JsonTransaction;

/// Compile-time check that the public types can cross threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<JsonStorage<serde_json::Value>>();
    assert_send_sync::<JsonTransaction<serde_json::Value>>();
    assert_send_sync::<JsonConfig>();
};
