//! # storage-core
//!
//! The capability tiers, typed errors, serializer layer, query language and
//! in-memory reference store that every adapter of this workspace builds on.
//! Library authors code against the tier traits (`S: TransactionalStorage<Account>`);
//! adapter authors implement as many tiers as their backend truly supports and prove
//! it with `storage-conformance`.
//!
//! ## Quick start
//! ```
//! use serde::{Deserialize, Serialize};
//! use storage_core::query::field;
//! use storage_core::{MemoryStorage, Query, QueryableStorage, Storage};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct User {
//!     name: String,
//!     age: u32,
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = MemoryStorage::<User>::new();
//! store.set("user:1", &User { name: "Alice".into(), age: 31 }).await?;
//! store.set("user:2", &User { name: "Bob".into(), age: 27 }).await?;
//!
//! let adults_over_30 = store.find_many(&Query::filter(field("age").gt(30))).await?;
//! assert_eq!(adults_over_30.len(), 1);
//! assert_eq!(adults_over_30[0].value.name, "Alice");
//! # Ok::<(), storage_core::StorageError>(())
//! # }).unwrap();
//! ```
//!
//! ## Crate features
//! None: every format and compression is always built.
//!
//! ## Modules
//! - [`query`]: the query AST, builder, aggregate pipeline and reference evaluator;
//! - [`codec`]: formats, compression and the stored-value header;
//! - [`config`]: configuration types and file loading;
//! - [`events`]: hooks, watch patterns, subscriptions and the event hub adapters embed;
//! - [`trace`]: the tracing span adapters wrap operations in when `debug` is on;
//! - [`index`]: the in-memory secondary indexes of [`MemoryStorage`], for any adapter
//!   that keeps its entries in memory;
//! - the tier traits, [`StorageError`], [`Capabilities`] and [`MemoryStorage`] at the root.

#![forbid(unsafe_code)]

mod capabilities;
pub mod codec;
pub mod config;
mod error;
pub mod events;
mod ext;
pub mod index;
mod key;
mod memory;
pub mod query;
mod tiers;
pub mod trace;
mod types;

pub use async_trait::async_trait;
pub use capabilities::{Capabilities, Tier};
pub use codec::{Codec, Compression, Format, SerializationConfig};
pub use config::{BackendConfig, StorageConfig};
pub use error::{BoxError, ErrorCode, Result, StorageError};
pub use events::{
    AfterEvent, AfterHook, BeforeEvent, BeforeHook, EventHub, HookId, Subscription, WatchPattern,
};
pub use ext::{ArcStorageExt, StorageExt, TransactionalExt};
pub use key::{MAX_KEY_LEN, validate_key, validate_keys};
pub use memory::MemoryStorage;
pub use query::{AggregateStage, Filter, Operator, OrderBy, Query};
pub use tiers::{
    BatchStorage, DistributedStorage, IndexedStorage, ObservableStorage, QueryableStorage,
    ResultStream, Storage, StorageValue, Transaction, TransactionalStorage,
};
pub use types::{
    BatchResult, Change, ChangeBatch, ChangeKind, ConsistencyLevel, Direction, Document,
    ExecutionPlan, IndexDefinition, IndexField, IndexInfo, IndexKind, IndexStats, IsolationLevel,
    Node, NodeRole, NodeStatus, Operation, QueryResult, ReplicationStatus, SyncResult,
    TransactionOptions, TransactionState, WatchEvent,
};

/// Compile-time check that the public types can cross threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<StorageError>();
    assert_send_sync::<Capabilities>();
    assert_send_sync::<Query>();
    assert_send_sync::<index::IndexSet>();
    assert_send_sync::<MemoryStorage<serde_json::Value>>();
    assert_send_sync::<EventHub<serde_json::Value>>();
    assert_send_sync::<Subscription<serde_json::Value>>();
};
