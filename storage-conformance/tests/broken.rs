//! The suites prove themselves: deliberately broken wrappers around `MemoryStorage` are each
//! caught by named checks, while the same wrapper without a fault passes every suite.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use storage_conformance::{
    CheckResult, Harness, Regressions, batch, batch_suite, hermitage, indexed_suite, model,
    observable, observable_suite, query, queryable_suite, runner::block_on_check, storage,
    storage_suite, transactional, transactional_suite,
};
use storage_core::{
    AfterHook, AggregateStage, BatchResult, BatchStorage, BeforeHook, Capabilities, Document,
    EventHub, ExecutionPlan, HookId, IndexDefinition, IndexInfo, IndexedStorage, IsolationLevel,
    MemoryStorage, ObservableStorage, Operation, Query, QueryResult, QueryableStorage, Result,
    ResultStream, Storage, StorageValue, Subscription, Transaction, TransactionOptions,
    TransactionState, TransactionalStorage, WatchEvent, WatchPattern, async_trait,
};

/// The bug a wrapper carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// No bug: the wrapper must pass everything.
    None,
    /// Streams keys in UTF-16 order (as a JavaScript backend would), not byte order.
    KeysOutOfOrder,
    /// Applies batch operations one by one and stops at the first error.
    NonAtomicBatch,
    /// Transaction writes go straight to the store; rollback undoes nothing.
    LeakyTransaction,
    /// Drops the third change batch of every subscription.
    DroppedChangeEvent,
    /// Ignores `offset` in queries.
    IgnoresOffset,
}

struct Broken<T> {
    inner: Arc<MemoryStorage<T>>,
    fault: Fault,
}

fn utf16_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

impl<T: StorageValue> Broken<T> {
    fn reorder<'a, I: Send + 'static>(
        &self,
        items: ResultStream<'a, I>,
        key: fn(&I) -> String,
    ) -> ResultStream<'a, I> {
        if self.fault != Fault::KeysOutOfOrder {
            return items;
        }
        futures::stream::once(async move {
            let mut all: Vec<Result<I>> = items.collect().await;
            all.sort_by(|a, b| match (a, b) {
                (Ok(x), Ok(y)) => utf16_order(&key(x), &key(y)),
                _ => std::cmp::Ordering::Equal,
            });
            futures::stream::iter(all)
        })
        .flatten()
        .boxed()
    }
}

#[async_trait]
impl<T: StorageValue + Clone> Storage<T> for Broken<T> {
    storage_core::tier_accessors!(T; batch, queryable, indexed, transactional, observable);

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn get(&self, key: &str) -> Result<Option<T>> {
        self.inner.get(key).await
    }
    async fn set(&self, key: &str, value: &T) -> Result<()> {
        self.inner.set(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.inner.delete(key).await
    }
    async fn has(&self, key: &str) -> Result<bool> {
        self.inner.has(key).await
    }
    async fn clear(&self) -> Result<()> {
        self.inner.clear().await
    }
    async fn size(&self) -> Result<u64> {
        self.inner.size().await
    }
    fn keys(&self) -> ResultStream<'_, String> {
        self.reorder(self.inner.keys(), Clone::clone)
    }
    fn values(&self) -> ResultStream<'_, T> {
        if self.fault != Fault::KeysOutOfOrder {
            return self.inner.values();
        }
        self.entries().map(|r| r.map(|(_, v)| v)).boxed()
    }
    fn entries(&self) -> ResultStream<'_, (String, T)> {
        self.reorder(self.inner.entries(), |(k, _)| k.clone())
    }
}

#[async_trait]
impl<T: StorageValue + Clone> BatchStorage<T> for Broken<T> {
    async fn get_many(&self, keys: &[String]) -> Result<BTreeMap<String, T>> {
        self.inner.get_many(keys).await
    }
    async fn batch(&self, operations: Vec<Operation<T>>) -> Result<BatchResult> {
        if self.fault != Fault::NonAtomicBatch {
            return self.inner.batch(operations).await;
        }
        let mut result = BatchResult::default();
        for op in operations {
            match op {
                Operation::Set { key, value } => self.inner.set(&key, &value).await?,
                Operation::Delete { key } => {
                    if self.inner.delete(&key).await? {
                        result.deleted += 1;
                    }
                }
                Operation::Clear => {
                    let n = self.inner.size().await?;
                    self.inner.clear().await?;
                    result.cleared += usize::try_from(n).unwrap_or(usize::MAX);
                }
            }
            result.operations += 1;
        }
        Ok(result)
    }
}

#[async_trait]
impl<T: StorageValue + Clone> QueryableStorage<T> for Broken<T> {
    fn query(&self, query: &Query) -> ResultStream<'_, QueryResult<T>> {
        if self.fault == Fault::IgnoresOffset {
            let mut q = query.clone();
            q.offset = None;
            return self.inner.query(&q);
        }
        self.inner.query(query)
    }
    async fn count(&self, query: &Query) -> Result<u64> {
        self.inner.count(query).await
    }
    async fn aggregate(&self, pipeline: &[AggregateStage]) -> Result<Vec<Document>> {
        self.inner.aggregate(pipeline).await
    }
}

#[async_trait]
impl<T: StorageValue + Clone> IndexedStorage<T> for Broken<T> {
    async fn create_index(&self, definition: IndexDefinition) -> Result<()> {
        self.inner.create_index(definition).await
    }
    async fn drop_index(&self, name: &str) -> Result<bool> {
        self.inner.drop_index(name).await
    }
    async fn list_indexes(&self) -> Result<Vec<IndexInfo>> {
        self.inner.list_indexes().await
    }
    async fn explain(&self, query: &Query) -> Result<ExecutionPlan> {
        self.inner.explain(query).await
    }
}

/// A transaction that writes straight through to the store.
struct LeakyTx<T> {
    store: Arc<MemoryStorage<T>>,
    id: String,
    state: std::sync::Mutex<TransactionState>,
}

impl<T> LeakyTx<T> {
    fn finish(&self, to: TransactionState) -> Result<()> {
        let mut state = self.state.lock().map_err(|_| {
            storage_core::StorageError::new(storage_core::ErrorCode::Backend, "poisoned")
        })?;
        if *state != TransactionState::Active {
            return Err(storage_core::StorageError::new(
                storage_core::ErrorCode::TransactionAborted,
                "not active",
            ));
        }
        *state = to;
        Ok(())
    }
}

storage_core::storage_via!(LeakyTx, |this| this.store);

#[async_trait]
impl<T: StorageValue> Transaction<T> for LeakyTx<T> {
    fn id(&self) -> &str {
        &self.id
    }
    fn state(&self) -> TransactionState {
        self.state.lock().map_or(TransactionState::Aborted, |s| *s)
    }
    fn isolation(&self) -> IsolationLevel {
        IsolationLevel::Serializable
    }
    async fn commit(&self) -> Result<()> {
        self.finish(TransactionState::Committed)
    }
    async fn rollback(&self) -> Result<()> {
        self.finish(TransactionState::Aborted)
    }
    async fn savepoint(&self, _name: &str) -> Result<()> {
        Ok(())
    }
    async fn rollback_to(&self, _name: &str) -> Result<()> {
        Ok(())
    }
}

static NEXT_TX: AtomicU64 = AtomicU64::new(0);

#[async_trait]
impl<T: StorageValue + Clone> TransactionalStorage<T> for Broken<T> {
    async fn begin(&self, options: TransactionOptions) -> Result<Box<dyn Transaction<T>>> {
        if self.fault != Fault::LeakyTransaction {
            return self.inner.begin(options).await;
        }
        Ok(Box::new(LeakyTx {
            store: Arc::clone(&self.inner),
            id: format!("leaky-{}", NEXT_TX.fetch_add(1, Ordering::Relaxed)),
            state: std::sync::Mutex::new(TransactionState::Active),
        }))
    }
}

impl<T: StorageValue + Clone> ObservableStorage<T> for Broken<T> {
    fn on_before(&self, hook: BeforeHook<T>) -> HookId {
        self.inner.on_before(hook)
    }
    fn on_after(&self, hook: AfterHook<T>) -> HookId {
        self.inner.on_after(hook)
    }
    fn off(&self, id: HookId) -> bool {
        self.inner.off(id)
    }
    fn watch(&self, pattern: WatchPattern, capacity: usize) -> Result<Subscription<T>> {
        let mut upstream = self.inner.watch(pattern, capacity)?;
        if self.fault != Fault::DroppedChangeEvent {
            return Ok(upstream);
        }
        // Relay through a private hub, losing the third batch on the way.
        let hub = Arc::new(EventHub::new());
        let sub = hub.watch(WatchPattern::All, capacity)?;
        tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(event) = upstream.next().await {
                if let WatchEvent::Changes(batch) = event {
                    n += 1;
                    if n != 3 {
                        hub.publish(&batch);
                    }
                }
            }
        });
        Ok(sub)
    }
}

/// Opens [`Broken`] stores carrying one fault.
struct BrokenHarness(Fault);

impl<T: StorageValue + Clone> Harness<T> for BrokenHarness {
    type Store = Broken<T>;

    async fn open(&self, _namespace: &str) -> Result<Broken<T>> {
        Ok(Broken {
            inner: Arc::new(MemoryStorage::new()),
            fault: self.0,
        })
    }
}

// Without a fault, the wrapper passes every suite: what the broken variants fail is their bug.
storage_suite!(healthy_kv, BrokenHarness(Fault::None));
batch_suite!(healthy_batch, BrokenHarness(Fault::None));
queryable_suite!(healthy_queryable, BrokenHarness(Fault::None));
indexed_suite!(healthy_indexed, BrokenHarness(Fault::None));
transactional_suite!(healthy_transactional, BrokenHarness(Fault::None));
observable_suite!(healthy_observable, BrokenHarness(Fault::None));

/// Asserts that a check fails on a store with `fault`, returning its message.
fn caught(fault: Fault, name: &str, outcome: CheckResult) -> String {
    match outcome {
        Ok(()) => panic!("{fault:?} was not caught by `{name}`"),
        Err(failure) => failure.to_string(),
    }
}

#[test]
fn keys_out_of_order_are_caught() {
    let h = BrokenHarness(Fault::KeysOutOfOrder);
    caught(
        h.0,
        "keys_stream_in_ascending_byte_order",
        block_on_check(storage::keys_stream_in_ascending_byte_order(&h)),
    );
    caught(
        h.0,
        "values_and_entries_follow_key_order",
        block_on_check(storage::values_and_entries_follow_key_order(&h)),
    );
}

#[test]
fn a_non_atomic_batch_is_caught() {
    let h = BrokenHarness(Fault::NonAtomicBatch);
    caught(
        h.0,
        "failed_batch_applies_nothing",
        block_on_check(batch::failed_batch_applies_nothing(&h)),
    );
    caught(
        h.0,
        "random_batch_sequences_match_a_btreemap_model",
        block_on_check(model::random_batch_sequences_match_a_btreemap_model(
            &h,
            Regressions::file(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/proptest-regressions/broken-non_atomic_batch.txt"
            )),
        )),
    );
}

#[test]
fn a_transaction_leaking_uncommitted_writes_is_caught() {
    let h = BrokenHarness(Fault::LeakyTransaction);
    caught(
        h.0,
        "rolled_back_writes_vanish",
        block_on_check(transactional::rolled_back_writes_vanish(&h)),
    );
    caught(
        h.0,
        "uncommitted_writes_are_invisible_to_others",
        block_on_check(transactional::uncommitted_writes_are_invisible_to_others(
            &h,
        )),
    );
    caught(
        h.0,
        "a_dropped_transaction_rolls_back",
        block_on_check(transactional::a_dropped_transaction_rolls_back(&h)),
    );
    caught(
        h.0,
        "hermitage_g1a_aborted_reads_are_prevented",
        block_on_check(hermitage::hermitage_g1a_aborted_reads_are_prevented(&h)),
    );
    caught(
        h.0,
        "hermitage_p4_lost_update_is_prevented",
        block_on_check(hermitage::hermitage_p4_lost_update_is_prevented(&h)),
    );
    caught(
        h.0,
        "hermitage_g2_item_write_skew_is_prevented",
        block_on_check(hermitage::hermitage_g2_item_write_skew_is_prevented(&h)),
    );
}

#[test]
fn a_dropped_change_event_is_caught() {
    let h = BrokenHarness(Fault::DroppedChangeEvent);
    caught(
        h.0,
        "committed_writes_arrive_in_commit_order",
        block_on_check(observable::committed_writes_arrive_in_commit_order(&h)),
    );
    caught(
        h.0,
        "concurrent_writes_arrive_once_each_in_sequence_order",
        block_on_check(observable::concurrent_writes_arrive_once_each_in_sequence_order(&h)),
    );
}

#[test]
fn a_query_ignoring_offset_is_caught() {
    let h = BrokenHarness(Fault::IgnoresOffset);
    caught(
        h.0,
        "limit_and_offset_page_the_ordered_results",
        block_on_check(query::limit_and_offset_page_the_ordered_results(&h)),
    );
    caught(
        h.0,
        "corpus_cases_return_the_expected_keys",
        block_on_check(query::corpus_cases_return_the_expected_keys(&h)),
    );
    caught(
        h.0,
        "find_one_returns_the_first_ordered_result",
        block_on_check(query::find_one_returns_the_first_ordered_result(&h)),
    );
    caught(
        h.0,
        "random_queries_match_the_reference_evaluator",
        block_on_check(query::random_queries_match_the_reference_evaluator(
            &h,
            Regressions::file(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/proptest-regressions/broken-ignores_offset.txt"
            )),
        )),
    );
}

#[test]
fn failures_name_the_broken_property() {
    let h = BrokenHarness(Fault::KeysOutOfOrder);
    let message = caught(
        h.0,
        "keys_stream_in_ascending_byte_order",
        block_on_check(storage::keys_stream_in_ascending_byte_order(&h)),
    );
    assert!(message.contains("keys() order"), "{message}");
}

#[test]
fn the_suites_catch_nothing_on_the_healthy_wrapper_directly() {
    let h = BrokenHarness(Fault::None);
    assert!(block_on_check(transactional::rolled_back_writes_vanish(&h)).is_ok());
    assert!(block_on_check(observable::committed_writes_arrive_in_commit_order(&h)).is_ok());
}
