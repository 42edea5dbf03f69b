//! The seven capability tiers, each a supertrait of the next.
//!
//! Every trait is object safe: `Arc<dyn QueryableStorage<User>>` works and
//! upcasts to `Arc<dyn Storage<User>>`. Code that holds only a `dyn Storage<T>`
//! (built from a configuration file, say) asks for a higher tier with the
//! `as_*` accessors, or with [`crate::StorageExt::require`]-style helpers that
//! answer a typed [`crate::ErrorCode::Unsupported`] error.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::capabilities::Capabilities;
use crate::error::Result;
use crate::events::{AfterHook, BeforeHook, HookId, Subscription, WatchPattern};
use crate::query::{AggregateStage, Query};
use crate::types::{
    BatchResult, ConsistencyLevel, Document, ExecutionPlan, IndexDefinition, IndexInfo,
    IsolationLevel, Node, Operation, QueryResult, ReplicationStatus, SyncResult,
    TransactionOptions, TransactionState,
};

/// What a value stored in any adapter must be: serde both ways, shareable across threads.
pub trait StorageValue: Serialize + DeserializeOwned + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> StorageValue for T {}

/// A stream of results, as every iteration returns.
pub type ResultStream<'a, T> = BoxStream<'a, Result<T>>;

/// Level 1: key-value operations on one namespace (a file, a table, a label).
///
/// Keys are non-empty UTF-8 of at most 1024 bytes without NUL
/// ([`crate::validate_key`]); anything else gives `InvalidKey`.
#[async_trait]
pub trait Storage<T: StorageValue>: Send + Sync {
    /// What this store supports. Agrees with the `as_*` accessors.
    fn capabilities(&self) -> Capabilities;

    /// Reads the value under `key`.
    ///
    /// # Behavior
    /// - a missing key returns `Ok(None)`.
    ///
    /// # Errors
    /// `InvalidKey`; `SerializationFailed` or `Corrupted` when stored bytes cannot be read;
    /// backend errors (`ConnectionLost`, `Io`, …).
    async fn get(&self, key: &str) -> Result<Option<T>>;

    /// Stores `value` under `key`, overwriting any previous value.
    ///
    /// # Behavior
    /// - once `Ok(())` is returned the write is acknowledged: a persistent store keeps it
    ///   across closing and reopening;
    /// - on error nothing is stored.
    ///
    /// # Errors
    /// `InvalidKey`; `InvalidValue` or `SerializationFailed` when the value cannot be encoded;
    /// `DuplicateKey` when a unique index rejects it; `QuotaExceeded` over a size limit;
    /// a before-hook's error (observable stores); backend errors.
    async fn set(&self, key: &str, value: &T) -> Result<()>;

    /// Removes `key`.
    ///
    /// # Behavior
    /// - returns `Ok(true)` if the key existed, `Ok(false)` otherwise (deleting a missing key is not an error).
    ///
    /// # Errors
    /// `InvalidKey`; backend errors.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Whether `key` exists.
    ///
    /// # Errors
    /// `InvalidKey`; backend errors.
    async fn has(&self, key: &str) -> Result<bool>;

    /// Removes every entry of this handle's namespace, and nothing outside it.
    ///
    /// # Errors
    /// Backend errors.
    async fn clear(&self) -> Result<()>;

    /// Number of entries.
    ///
    /// # Errors
    /// Backend errors.
    async fn size(&self) -> Result<u64>;

    /// Every key, in ascending byte order.
    fn keys(&self) -> ResultStream<'_, String>;

    /// Every value, in ascending byte order of the key.
    fn values(&self) -> ResultStream<'_, T>;

    /// Every entry, in ascending byte order of the key.
    fn entries(&self) -> ResultStream<'_, (String, T)>;

    /// This store as a [`BatchStorage`], if it is one.
    fn as_batch(&self) -> Option<&dyn BatchStorage<T>> {
        None
    }

    /// This store as a [`QueryableStorage`], if it is one.
    fn as_queryable(&self) -> Option<&dyn QueryableStorage<T>> {
        None
    }

    /// This store as an [`IndexedStorage`], if it is one.
    fn as_indexed(&self) -> Option<&dyn IndexedStorage<T>> {
        None
    }

    /// This store as a [`TransactionalStorage`], if it is one.
    fn as_transactional(&self) -> Option<&dyn TransactionalStorage<T>> {
        None
    }

    /// This store as an [`ObservableStorage`], if it is one.
    fn as_observable(&self) -> Option<&dyn ObservableStorage<T>> {
        None
    }

    /// This store as a [`DistributedStorage`], if it is one.
    fn as_distributed(&self) -> Option<&dyn DistributedStorage<T>> {
        None
    }

    /// This shared store as a shared [`BatchStorage`], if it is one.
    fn into_batch(self: Arc<Self>) -> Option<Arc<dyn BatchStorage<T>>> {
        None
    }

    /// This shared store as a shared [`QueryableStorage`], if it is one.
    fn into_queryable(self: Arc<Self>) -> Option<Arc<dyn QueryableStorage<T>>> {
        None
    }

    /// This shared store as a shared [`IndexedStorage`], if it is one.
    fn into_indexed(self: Arc<Self>) -> Option<Arc<dyn IndexedStorage<T>>> {
        None
    }

    /// This shared store as a shared [`TransactionalStorage`], if it is one.
    fn into_transactional(self: Arc<Self>) -> Option<Arc<dyn TransactionalStorage<T>>> {
        None
    }

    /// This shared store as a shared [`ObservableStorage`], if it is one.
    fn into_observable(self: Arc<Self>) -> Option<Arc<dyn ObservableStorage<T>>> {
        None
    }

    /// This shared store as a shared [`DistributedStorage`], if it is one.
    fn into_distributed(self: Arc<Self>) -> Option<Arc<dyn DistributedStorage<T>>> {
        None
    }
}

/// Expands, inside an `impl Storage<T> for …` block, into the `as_*` and
/// `into_*` accessors of the named tiers.
///
/// ```text
/// impl<T: StorageValue> Storage<T> for MyStore<T> {
///     storage_core::tier_accessors!(T; batch, queryable);
///     // …
/// }
/// ```
#[macro_export]
macro_rules! tier_accessors {
    ($t:ty; $($tier:ident),* $(,)?) => {
        $( $crate::tier_accessors!(@one $t; $tier); )*
    };
    (@one $t:ty; batch) => {
        fn as_batch(&self) -> ::std::option::Option<&dyn $crate::BatchStorage<$t>> { ::std::option::Option::Some(self) }
        fn into_batch(self: ::std::sync::Arc<Self>) -> ::std::option::Option<::std::sync::Arc<dyn $crate::BatchStorage<$t>>> { ::std::option::Option::Some(self) }
    };
    (@one $t:ty; queryable) => {
        fn as_queryable(&self) -> ::std::option::Option<&dyn $crate::QueryableStorage<$t>> { ::std::option::Option::Some(self) }
        fn into_queryable(self: ::std::sync::Arc<Self>) -> ::std::option::Option<::std::sync::Arc<dyn $crate::QueryableStorage<$t>>> { ::std::option::Option::Some(self) }
    };
    (@one $t:ty; indexed) => {
        fn as_indexed(&self) -> ::std::option::Option<&dyn $crate::IndexedStorage<$t>> { ::std::option::Option::Some(self) }
        fn into_indexed(self: ::std::sync::Arc<Self>) -> ::std::option::Option<::std::sync::Arc<dyn $crate::IndexedStorage<$t>>> { ::std::option::Option::Some(self) }
    };
    (@one $t:ty; transactional) => {
        fn as_transactional(&self) -> ::std::option::Option<&dyn $crate::TransactionalStorage<$t>> { ::std::option::Option::Some(self) }
        fn into_transactional(self: ::std::sync::Arc<Self>) -> ::std::option::Option<::std::sync::Arc<dyn $crate::TransactionalStorage<$t>>> { ::std::option::Option::Some(self) }
    };
    (@one $t:ty; observable) => {
        fn as_observable(&self) -> ::std::option::Option<&dyn $crate::ObservableStorage<$t>> { ::std::option::Option::Some(self) }
        fn into_observable(self: ::std::sync::Arc<Self>) -> ::std::option::Option<::std::sync::Arc<dyn $crate::ObservableStorage<$t>>> { ::std::option::Option::Some(self) }
    };
    (@one $t:ty; distributed) => {
        fn as_distributed(&self) -> ::std::option::Option<&dyn $crate::DistributedStorage<$t>> { ::std::option::Option::Some(self) }
        fn into_distributed(self: ::std::sync::Arc<Self>) -> ::std::option::Option<::std::sync::Arc<dyn $crate::DistributedStorage<$t>>> { ::std::option::Option::Some(self) }
    };
}

/// Implements [`Storage`] for a wrapper `Name<T>` by forwarding every method to an
/// inner store, for wrappers that change one tier (a transaction whose commit does
/// more, a store that adds a check) and leave the basic operations alone.
///
/// The closure-like last argument says where the inner store is, given the wrapper;
/// anything whose methods are [`Storage`]'s (a store, an `Arc` or `Box` of one, a
/// `Box<dyn Transaction<T>>`) will do.
///
/// ```
/// use std::sync::Arc;
/// use storage_core::{MemoryStorage, Storage};
///
/// struct Audited<T> {
///     inner: Arc<MemoryStorage<T>>,
/// }
/// storage_core::storage_via!(Audited, |this| this.inner);
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = Audited { inner: Arc::new(MemoryStorage::<i64>::new()) };
/// store.set("a", &1).await?;
/// assert_eq!(store.get("a").await?, Some(1));
/// # Ok::<(), storage_core::StorageError>(())
/// # }).unwrap();
/// ```
#[macro_export]
macro_rules! storage_via {
    ($wrapper:ident, |$this:ident| $inner:expr) => {
        #[$crate::async_trait]
        impl<T: $crate::StorageValue> $crate::Storage<T> for $wrapper<T> {
            fn capabilities(&self) -> $crate::Capabilities {
                let $this = self;
                $inner.capabilities()
            }
            async fn get(&self, key: &str) -> $crate::Result<::std::option::Option<T>> {
                let $this = self;
                $inner.get(key).await
            }
            async fn set(&self, key: &str, value: &T) -> $crate::Result<()> {
                let $this = self;
                $inner.set(key, value).await
            }
            async fn delete(&self, key: &str) -> $crate::Result<bool> {
                let $this = self;
                $inner.delete(key).await
            }
            async fn has(&self, key: &str) -> $crate::Result<bool> {
                let $this = self;
                $inner.has(key).await
            }
            async fn clear(&self) -> $crate::Result<()> {
                let $this = self;
                $inner.clear().await
            }
            async fn size(&self) -> $crate::Result<u64> {
                let $this = self;
                $inner.size().await
            }
            fn keys(&self) -> $crate::ResultStream<'_, ::std::string::String> {
                let $this = self;
                $inner.keys()
            }
            fn values(&self) -> $crate::ResultStream<'_, T> {
                let $this = self;
                $inner.values()
            }
            fn entries(&self) -> $crate::ResultStream<'_, (::std::string::String, T)> {
                let $this = self;
                $inner.entries()
            }
        }
    };
}

/// Level 1b: many keys at once. Every method is all-or-nothing.
#[async_trait]
pub trait BatchStorage<T: StorageValue>: Storage<T> {
    /// Reads many keys; missing keys are absent from the map.
    ///
    /// # Errors
    /// `InvalidKey` (naming the index of the bad key; nothing is read); backend errors.
    async fn get_many(&self, keys: &[String]) -> Result<BTreeMap<String, T>>;

    /// Stores every entry, all or none. Later entries win over earlier ones with the same key.
    ///
    /// # Errors
    /// As [`Storage::set`] for any entry; on error nothing is stored.
    async fn set_many(&self, entries: Vec<(String, T)>) -> Result<()> {
        self.batch(
            entries
                .into_iter()
                .map(|(key, value)| Operation::Set { key, value })
                .collect(),
        )
        .await
        .map(|_| ())
    }

    /// Deletes every key, all or none, and returns how many existed.
    ///
    /// # Errors
    /// `InvalidKey` (nothing is deleted); backend errors.
    async fn delete_many(&self, keys: &[String]) -> Result<u64> {
        let result = self
            .batch(keys.iter().map(|k| Operation::delete(k.clone())).collect())
            .await?;
        Ok(u64::try_from(result.deleted).unwrap_or(u64::MAX))
    }

    /// Applies the operations in order, atomically.
    ///
    /// # Behavior
    /// - either every operation is applied or none is (a failed batch leaves nothing applied);
    /// - `Clear` removes everything written before it in the same batch too.
    ///
    /// # Errors
    /// `InvalidKey`, `InvalidValue`, `SerializationFailed`, `DuplicateKey`,
    /// `QuotaExceeded` over `max_batch_operations`, a before-hook's error; backend errors.
    async fn batch(&self, operations: Vec<Operation<T>>) -> Result<BatchResult>;
}

/// Level 2: queries and aggregates.
///
/// Results are those of the reference evaluator ([`crate::query::evaluate`]),
/// in the same order, whether the backend runs the query or not.
#[async_trait]
pub trait QueryableStorage<T: StorageValue>: BatchStorage<T> {
    /// Streams the entries matching `query`, ordered, paged and projected.
    fn query(&self, query: &Query) -> ResultStream<'_, QueryResult<T>>;

    /// Counts the entries matching `query`'s filter (ignoring `limit` and `offset`).
    ///
    /// # Errors
    /// `InvalidQuery`; backend errors.
    async fn count(&self, query: &Query) -> Result<u64>;

    /// The first result of `query`, if any.
    ///
    /// # Errors
    /// As [`QueryableStorage::query`].
    async fn find_one(&self, query: &Query) -> Result<Option<QueryResult<T>>> {
        use futures::StreamExt;
        let mut first = query.clone();
        first.limit = Some(1);
        let mut stream = self.query(&first);
        stream.next().await.transpose()
    }

    /// Every result of `query`.
    ///
    /// # Errors
    /// As [`QueryableStorage::query`].
    async fn find_many(&self, query: &Query) -> Result<Vec<QueryResult<T>>> {
        use futures::TryStreamExt;
        self.query(query).try_collect().await
    }

    /// Runs an aggregation pipeline and returns its output documents.
    ///
    /// # Errors
    /// `InvalidQuery`; backend errors.
    async fn aggregate(&self, pipeline: &[AggregateStage]) -> Result<Vec<Document>>;
}

/// Level 2b: indexes and query plans.
#[async_trait]
pub trait IndexedStorage<T: StorageValue>: QueryableStorage<T> {
    /// Creates an index over existing and future entries.
    ///
    /// # Behavior
    /// - creating an identical definition again is a no-op;
    /// - a unique index over data that already conflicts is refused and not created.
    ///
    /// # Errors
    /// `DuplicateKey` when the name is taken by another definition or existing data breaks
    /// uniqueness; `Unsupported` for a kind the backend lacks; `InvalidQuery` for a bad path.
    async fn create_index(&self, definition: IndexDefinition) -> Result<()>;

    /// Drops an index; `Ok(false)` when no index has that name.
    ///
    /// # Errors
    /// Backend errors.
    async fn drop_index(&self, name: &str) -> Result<bool>;

    /// Every index, with its counters.
    ///
    /// # Errors
    /// Backend errors.
    async fn list_indexes(&self) -> Result<Vec<IndexInfo>>;

    /// How `query` would run: the index it uses, what runs where.
    ///
    /// # Errors
    /// `InvalidQuery`; backend errors.
    async fn explain(&self, query: &Query) -> Result<ExecutionPlan>;
}

/// An open transaction: a [`Storage`] view that sees its own writes.
///
/// Dropping an active transaction rolls it back.
#[async_trait]
pub trait Transaction<T: StorageValue>: Storage<T> {
    /// Unique id.
    fn id(&self) -> &str;

    /// Current state.
    fn state(&self) -> TransactionState;

    /// The isolation level it actually runs at (at least the one requested).
    fn isolation(&self) -> IsolationLevel;

    /// Makes every write visible atomically.
    ///
    /// # Errors
    /// `VersionConflict` or `DeadlockDetected` (retryable; nothing is applied),
    /// `TransactionAborted` when not active or timed out, `DuplicateKey`; backend errors.
    async fn commit(&self) -> Result<()>;

    /// Discards every write.
    ///
    /// # Errors
    /// `TransactionAborted` when not active.
    async fn rollback(&self) -> Result<()>;

    /// Marks a savepoint. Savepoints nest; reusing a name moves it.
    ///
    /// # Errors
    /// `Unsupported` without savepoints; `TransactionAborted` when not active.
    async fn savepoint(&self, name: &str) -> Result<()>;

    /// Undoes every write after the savepoint; the savepoint stays, later ones go.
    ///
    /// # Errors
    /// `KeyNotFound` for an unknown savepoint; `Unsupported`; `TransactionAborted`.
    async fn rollback_to(&self, name: &str) -> Result<()>;
}

/// Level 3: transactions.
#[async_trait]
pub trait TransactionalStorage<T: StorageValue>: IndexedStorage<T> {
    /// Begins a transaction.
    ///
    /// # Behavior
    /// - the transaction runs at the requested isolation level or a stronger one;
    /// - `read_only` transactions reject writes (`set`, `delete`, `clear`) with `Unsupported`
    ///   and stay usable for reads;
    /// - past `timeout`, every call and the commit fail with `TransactionAborted` and nothing is applied;
    /// - dropping the transaction without commit rolls it back.
    ///
    /// # Errors
    /// `Unsupported` for an isolation level above every supported one; backend errors.
    async fn begin(&self, options: TransactionOptions) -> Result<Box<dyn Transaction<T>>>;
}

/// Level 4: hooks, change events and watches.
///
/// After-events and change events describe committed changes only, in commit order.
pub trait ObservableStorage<T: StorageValue>: TransactionalStorage<T> {
    /// Registers a hook run before every get, set, delete and clear (and every
    /// operation of a batch or transaction write); an `Err` vetoes the operation,
    /// which is then not applied, and is returned to the caller.
    fn on_before(&self, hook: BeforeHook<T>) -> HookId;

    /// Registers a hook run after every committed operation (and after gets).
    fn on_after(&self, hook: AfterHook<T>) -> HookId;

    /// Removes a hook; `false` if it was not registered.
    fn off(&self, id: HookId) -> bool;

    /// Subscribes to committed change batches whose keys match `pattern`.
    ///
    /// # Behavior
    /// - batches arrive in commit order; a transaction arrives as one batch;
    /// - a subscriber that falls more than `capacity` batches behind loses the oldest
    ///   and receives [`crate::WatchEvent::Lagged`]; writers never wait for it;
    /// - dropping the subscription stops delivery.
    ///
    /// # Errors
    /// `InvalidQuery` for a bad pattern.
    fn watch(&self, pattern: WatchPattern, capacity: usize) -> Result<Subscription<T>>;
}

/// Level 5: nodes, replication and consistency levels, on an engine's own replication.
#[async_trait]
pub trait DistributedStorage<T: StorageValue>: ObservableStorage<T> {
    /// Every node with role, address and health.
    ///
    /// # Errors
    /// `ConnectionFailed` when no node answers.
    async fn get_nodes(&self) -> Result<Vec<Node>>;

    /// Replication summary.
    ///
    /// # Errors
    /// `ConnectionFailed` when no node answers.
    async fn get_replication_status(&self) -> Result<ReplicationStatus>;

    /// Waits until every reachable replica acknowledged the primary's current offset.
    ///
    /// # Errors
    /// `ConnectionFailed`.
    async fn sync(&self, timeout: Duration) -> Result<SyncResult>;

    /// A handle whose writes wait for the acknowledgements `level` needs.
    ///
    /// # Errors
    /// `Unsupported` for a level the deployment cannot meet (for example EACH without data centres).
    fn with_consistency(&self, level: ConsistencyLevel) -> Result<Arc<dyn DistributedStorage<T>>>;
}
