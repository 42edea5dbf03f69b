//! The tiers of [`DistributedGraphStorage`]: writes on the primary, confirmed at the
//! handle's level; reads where the level sends them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use storage_core::events::{AfterHook, BeforeHook, HookId, Subscription, WatchPattern};
use storage_core::{
    AggregateStage, BatchResult, BatchStorage, Capabilities, ConsistencyLevel, DistributedStorage,
    Document, ExecutionPlan, IndexDefinition, IndexInfo, IndexedStorage, IsolationLevel, Node,
    ObservableStorage, Operation, Query, QueryResult, QueryableStorage, ReplicationStatus, Result,
    ResultStream, Storage, StorageError, StorageValue, SyncResult, Tier, Transaction,
    TransactionOptions, TransactionState, TransactionalStorage,
};

use super::DistributedGraphStorage;

impl<T: StorageValue> DistributedGraphStorage<T> {
    /// A write on the primary, then the acknowledgements the level needs.
    async fn write<R, F, Fut>(&self, op: F) -> Result<R>
    where
        F: FnOnce(crate::GraphStorage<T>) -> Fut,
        Fut: std::future::Future<Output = Result<R>>,
    {
        self.shared.follow_if_due().await;
        match op(self.primary()).await {
            Ok(r) => {
                self.shared.confirm(self.level).await?;
                Ok(r)
            }
            Err(e) => Err(self.shared.check(e).await),
        }
    }

    /// A read where the level sends it; a replica that fails or stalls is replaced by
    /// the primary.
    async fn read<R, F, Fut>(&self, op: F) -> Result<R>
    where
        F: Fn(crate::GraphStorage<T>) -> Fut,
        Fut: std::future::Future<Output = Result<R>>,
    {
        let (replica, store) = self.shared.reader(self.level).await;
        if let Some(id) = replica {
            let limit = self.shared.replication.wait_timeout();
            if let Ok(Ok(r)) = tokio::time::timeout(limit, op(store)).await {
                return Ok(r);
            }
            self.shared.forget_reader(&id).await;
        }
        match op(self.primary()).await {
            Ok(r) => Ok(r),
            Err(e) => Err(self.shared.check(e).await),
        }
    }
}

/// A stream of the store `store` (a clone of the primary's, which a failover may
/// replace): a task owns the store and forwards the items, so the stream outlives
/// the borrow of `self`.
fn stream_of<'a, T, R>(
    store: crate::GraphStorage<T>,
    make: impl for<'s> FnOnce(&'s crate::GraphStorage<T>) -> ResultStream<'s, R> + Send + 'static,
) -> ResultStream<'a, R>
where
    T: StorageValue,
    R: Send + 'static,
{
    use futures::SinkExt;
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return futures::stream::once(async {
            Err(StorageError::unsupported("iteration needs a tokio runtime"))
        })
        .boxed();
    };
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<R>>(256);
    runtime.spawn(async move {
        let mut items = make(&store);
        while let Some(item) = items.next().await {
            if tx.send(item).await.is_err() {
                break;
            }
        }
    });
    rx.boxed()
}

#[async_trait]
impl<T: StorageValue> Storage<T> for DistributedGraphStorage<T> {
    storage_core::tier_accessors!(T; batch, queryable, indexed, transactional, observable, distributed);

    fn capabilities(&self) -> Capabilities {
        let mut caps = self.primary().capabilities();
        caps.tiers.push(Tier::Distributed);
        caps
    }

    async fn get(&self, key: &str) -> Result<Option<T>> {
        self.read(|s| async move { s.get(key).await }).await
    }

    async fn set(&self, key: &str, value: &T) -> Result<()> {
        self.write(|s| async move { s.set(key, value).await }).await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.write(|s| async move { s.delete(key).await }).await
    }

    async fn has(&self, key: &str) -> Result<bool> {
        self.read(|s| async move { s.has(key).await }).await
    }

    async fn clear(&self) -> Result<()> {
        self.write(|s| async move { s.clear().await }).await
    }

    async fn size(&self) -> Result<u64> {
        self.read(|s| async move { s.size().await }).await
    }

    fn keys(&self) -> ResultStream<'_, String> {
        stream_of(self.primary(), |s| s.keys())
    }

    fn values(&self) -> ResultStream<'_, T> {
        stream_of(self.primary(), |s| s.values())
    }

    fn entries(&self) -> ResultStream<'_, (String, T)> {
        stream_of(self.primary(), |s| s.entries())
    }
}

#[async_trait]
impl<T: StorageValue> BatchStorage<T> for DistributedGraphStorage<T> {
    async fn get_many(&self, keys: &[String]) -> Result<std::collections::BTreeMap<String, T>> {
        self.read(|s| async move { s.get_many(keys).await }).await
    }

    async fn batch(&self, operations: Vec<Operation<T>>) -> Result<BatchResult> {
        self.write(|s| async move { s.batch(operations).await })
            .await
    }
}

#[async_trait]
impl<T: StorageValue> QueryableStorage<T> for DistributedGraphStorage<T> {
    fn query(&self, query: &Query) -> ResultStream<'_, QueryResult<T>> {
        let query = query.clone();
        stream_of(self.primary(), move |s| s.query(&query))
    }

    async fn count(&self, query: &Query) -> Result<u64> {
        self.read(|s| async move { s.count(query).await }).await
    }

    async fn aggregate(&self, pipeline: &[AggregateStage]) -> Result<Vec<Document>> {
        self.read(|s| async move { s.aggregate(pipeline).await })
            .await
    }
}

#[async_trait]
impl<T: StorageValue> IndexedStorage<T> for DistributedGraphStorage<T> {
    async fn create_index(&self, definition: IndexDefinition) -> Result<()> {
        self.write(|s| async move { s.create_index(definition).await })
            .await
    }

    async fn drop_index(&self, name: &str) -> Result<bool> {
        self.write(|s| async move { s.drop_index(name).await })
            .await
    }

    async fn list_indexes(&self) -> Result<Vec<IndexInfo>> {
        match self.primary().list_indexes().await {
            Ok(r) => Ok(r),
            Err(e) => Err(self.shared.check(e).await),
        }
    }

    async fn explain(&self, query: &Query) -> Result<ExecutionPlan> {
        match self.primary().explain(query).await {
            Ok(r) => Ok(r),
            Err(e) => Err(self.shared.check(e).await),
        }
    }
}

/// A transaction on the primary whose commit waits for the handle's level.
struct ConfirmedTransaction<T: StorageValue> {
    inner: Box<dyn Transaction<T>>,
    store: DistributedGraphStorage<T>,
}

storage_core::storage_via!(ConfirmedTransaction, |this| this.inner);

#[async_trait]
impl<T: StorageValue> Transaction<T> for ConfirmedTransaction<T> {
    fn id(&self) -> &str {
        self.inner.id()
    }
    fn state(&self) -> TransactionState {
        self.inner.state()
    }
    fn isolation(&self) -> IsolationLevel {
        self.inner.isolation()
    }
    async fn commit(&self) -> Result<()> {
        match self.inner.commit().await {
            Ok(()) => self.store.shared.confirm(self.store.level).await,
            Err(e) => Err(self.store.shared.check(e).await),
        }
    }
    async fn rollback(&self) -> Result<()> {
        self.inner.rollback().await
    }
    async fn savepoint(&self, name: &str) -> Result<()> {
        self.inner.savepoint(name).await
    }
    async fn rollback_to(&self, name: &str) -> Result<()> {
        self.inner.rollback_to(name).await
    }
}

#[async_trait]
impl<T: StorageValue> TransactionalStorage<T> for DistributedGraphStorage<T> {
    async fn begin(&self, options: TransactionOptions) -> Result<Box<dyn Transaction<T>>> {
        match TransactionalStorage::begin(&self.primary(), options).await {
            Ok(inner) => Ok(Box::new(ConfirmedTransaction {
                inner,
                store: self.clone(),
            })),
            Err(e) => Err(self.shared.check(e).await),
        }
    }
}

impl<T: StorageValue> ObservableStorage<T> for DistributedGraphStorage<T> {
    fn on_before(&self, hook: BeforeHook<T>) -> HookId {
        self.primary().on_before(hook)
    }

    fn on_after(&self, hook: AfterHook<T>) -> HookId {
        self.primary().on_after(hook)
    }

    fn off(&self, id: HookId) -> bool {
        self.primary().off(id)
    }

    /// Watches the current primary's change stream. A failover ends the subscription
    /// with [`storage_core::WatchEvent::Resync`]; resume on the new primary with
    /// [`DistributedGraphStorage::watch_from`] and the last batch's resume token.
    fn watch(&self, pattern: WatchPattern, capacity: usize) -> Result<Subscription<T>> {
        self.primary().watch(pattern, capacity)
    }
}

impl<T: StorageValue> DistributedGraphStorage<T> {
    /// Subscribes to the batches committed after the stream entry `after` on the
    /// current primary (see [`crate::GraphStorage::watch_from`]); batches the old
    /// primary acknowledged but never replicated are gone, and a resume point the new
    /// primary's stream does not hold gives `Resync`.
    ///
    /// # Errors
    /// As [`crate::GraphStorage::watch_from`].
    pub fn watch_from(
        &self,
        pattern: WatchPattern,
        capacity: usize,
        after: &str,
    ) -> Result<Subscription<T>> {
        self.primary().watch_from(pattern, capacity, after)
    }
}

#[async_trait]
impl<T: StorageValue> DistributedStorage<T> for DistributedGraphStorage<T> {
    async fn get_nodes(&self) -> Result<Vec<Node>> {
        self.shared.nodes().await
    }

    async fn get_replication_status(&self) -> Result<ReplicationStatus> {
        self.shared.status().await
    }

    async fn sync(&self, timeout: Duration) -> Result<SyncResult> {
        match self.shared.sync(timeout).await {
            Ok(r) => Ok(r),
            Err(e) => Err(self.shared.check(e).await),
        }
    }

    fn with_consistency(&self, level: ConsistencyLevel) -> Result<Arc<dyn DistributedStorage<T>>> {
        Ok(Arc::new(self.with_level(level)?))
    }
}
