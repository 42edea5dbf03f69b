//! `MemoryStorage`: the in-memory reference store.
//!
//! The committed state is an `Arc<BTreeMap>` of JSON documents behind a
//! `std::sync::RwLock`. Readers and transactions take a snapshot by cloning the
//! `Arc`; a writer copies the map only when a snapshot is still alive
//! (`Arc::make_mut`). Every write, whether a single `set`, a batch or a
//! transaction's commit, goes through one function ([`Shared::apply`]) that plans
//! the whole change, checks it (quota, unique indexes, transaction conflicts),
//! and only then mutates, so a failure applies nothing.

mod query;
mod tx;

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream;

use crate::capabilities::{Capabilities, Tier};
use crate::codec::{from_document, to_document};
use crate::config::MemoryConfig;
use crate::error::{ErrorCode, Result, StorageError};
use crate::events::{AfterEvent, BeforeEvent, EventHub};
use crate::key::{validate_key, validate_keys};
use crate::tiers::{
    BatchStorage, ResultStream, Storage, StorageValue, Transaction, TransactionalStorage,
};
use crate::trace::op_span;
use crate::types::{
    BatchResult, Change, ChangeBatch, ChangeKind, Document, IsolationLevel, Operation,
    TransactionOptions,
};

use crate::index::IndexSet;

/// The backend name in capabilities, errors and spans.
const BACKEND: &str = "memory";

/// One stored entry: the document and the commit that wrote it (used by
/// transactions to detect that a key changed since their snapshot).
#[derive(Debug, Clone)]
struct Entry {
    doc: Arc<Document>,
    version: u64,
}

type Map = BTreeMap<String, Entry>;

/// The committed state, guarded by [`Shared::state`].
struct State {
    data: Arc<Map>,
    indexes: Arc<IndexSet>,
    /// Number of the last commit that changed something.
    sequence: u64,
    max_entries: Option<u64>,
}

/// A consistent, immutable view of the committed state.
#[derive(Clone)]
struct Snapshot {
    data: Arc<Map>,
    indexes: Arc<IndexSet>,
    sequence: u64,
}

/// A write, prepared (validated and encoded) before the state lock is taken.
enum Op<T> {
    Set {
        key: String,
        doc: Arc<Document>,
        /// The decoded value, when listeners wanted it at preparation time.
        value: Option<Arc<T>>,
    },
    Delete {
        key: String,
    },
    Clear,
}

impl<T> Clone for Op<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Set { key, doc, value } => Self::Set {
                key: key.clone(),
                doc: Arc::clone(doc),
                value: value.clone(),
            },
            Self::Delete { key } => Self::Delete { key: key.clone() },
            Self::Clear => Self::Clear,
        }
    }
}

/// An after-hook event waiting to be run, in owned form.
enum AfterItem<T> {
    Set { key: String, value: Arc<T> },
    Delete { key: String, existed: bool },
    Clear { removed: u64 },
}

/// State shared by the store and its open transactions.
struct Shared<T> {
    state: RwLock<State>,
    hub: EventHub<T>,
    debug: AtomicBool,
    /// After-hook events of committed writes, in commit order (filled under the
    /// state lock, drained outside it so hooks may use the store).
    after_queue: Mutex<VecDeque<AfterItem<T>>>,
    /// Set while one thread drains `after_queue`; keeps hooks in commit order
    /// and lets a hook write to the store without deadlocking.
    dispatching: AtomicBool,
    next_tx: AtomicU64,
}

/// The in-memory reference store: every tier but Distributed.
///
/// Values are kept as JSON documents (see [`crate::codec::to_document`]), so a
/// value JSON cannot hold faithfully (a NaN, say) is refused with `InvalidValue`.
/// Share a store between tasks with `Arc<MemoryStorage<T>>`.
///
/// # Tiers
/// Storage, Batch (atomic), Queryable (the reference evaluator itself, helped by
/// indexes), Indexed (btree, hash and fulltext; unique indexes; no spatial index),
/// Transactional (optimistic, always serializable, savepoints), Observable (hooks
/// and watches within the process). Nothing persists: data lives as long as the store.
///
/// # Costs
/// Reads, queries and `begin` take a snapshot in O(1). A write copies the map (and
/// its indexes) only while some snapshot is still alive (an open transaction, an
/// unfinished `keys`/`values`/`entries` stream), so keep transactions short.
///
/// # Events
/// Change batches are published under the write lock, so subscribers see commits
/// in commit order. After-hooks also run in commit order, outside every lock (a
/// hook may use the store); when writers race, the thread that finds the hook
/// queue idle runs the queued hooks of the others too, so a write can return
/// before its own after-hooks have run.
///
/// # Example
/// ```
/// use storage_core::{MemoryStorage, Storage};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryStorage::<String>::new().with_max_entries(Some(1000));
/// store.set("greeting", &"hello".to_owned()).await?;
/// assert_eq!(store.get("greeting").await?.as_deref(), Some("hello"));
/// # Ok::<(), storage_core::StorageError>(())
/// # }).unwrap();
/// ```
pub struct MemoryStorage<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for MemoryStorage<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.read();
        f.debug_struct("MemoryStorage")
            .field("entries", &state.data.len())
            .field("sequence", &state.sequence)
            .field("max_entries", &state.max_entries)
            .finish_non_exhaustive()
    }
}

impl<T: StorageValue> Default for MemoryStorage<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: StorageValue> MemoryStorage<T> {
    /// An empty store without limits, tracing off.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: RwLock::new(State {
                    data: Arc::new(Map::new()),
                    indexes: Arc::new(IndexSet::default()),
                    sequence: 0,
                    max_entries: None,
                }),
                hub: EventHub::new(),
                debug: AtomicBool::new(false),
                after_queue: Mutex::new(VecDeque::new()),
                dispatching: AtomicBool::new(false),
                next_tx: AtomicU64::new(1),
            }),
        }
    }

    /// A store built from a configuration: `max_entries` and `debug` apply.
    ///
    /// The configuration's `serialization` section does not: this store keeps
    /// values as JSON documents and never encodes them to bytes.
    ///
    /// # Errors
    /// `InvalidConfig` when the configuration does not validate.
    ///
    /// # Example
    /// ```
    /// use storage_core::MemoryStorage;
    /// use storage_core::config::MemoryConfig;
    /// let config = MemoryConfig { max_entries: Some(10), ..MemoryConfig::default() };
    /// let store = MemoryStorage::<u32>::from_config(&config)?;
    /// assert_eq!(store.max_entries(), Some(10));
    /// # Ok::<(), storage_core::StorageError>(())
    /// ```
    pub fn from_config(config: &MemoryConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self::new()
            .with_max_entries(config.max_entries)
            .debug(config.common.debug))
    }

    /// Limits the number of entries; a write that would exceed it fails with
    /// `QuotaExceeded` and stores nothing. `None` removes the limit.
    #[must_use]
    pub fn with_max_entries(self, max_entries: Option<u64>) -> Self {
        self.shared.write().max_entries = max_entries;
        self
    }

    /// Turns `DEBUG` tracing spans around every operation on or off.
    #[must_use]
    pub fn debug(self, enabled: bool) -> Self {
        self.shared.debug.store(enabled, Ordering::Relaxed);
        self
    }

    /// The configured entry limit.
    pub fn max_entries(&self) -> Option<u64> {
        self.shared.read().max_entries
    }

    fn span(&self, operation: &'static str) -> tracing::Span {
        op_span(
            self.shared.debug.load(Ordering::Relaxed),
            BACKEND,
            operation,
        )
    }

    fn capabilities_static() -> Capabilities {
        Capabilities::new(BACKEND, Tier::Observable)
            .with_isolation_levels([IsolationLevel::Serializable])
            .with_index_kinds(IndexSet::KINDS)
            .with_unique_indexes(true)
            .with_savepoints(true)
            .with_cross_process_watch(false)
            .with_persistent(false)
    }

    fn get_sync(&self, key: &str) -> Result<Option<T>> {
        validate_key(key)?;
        let hub = &self.shared.hub;
        if hub.has_before_hooks() {
            hub.before(&BeforeEvent::Get { key })?;
        }
        let doc = self.shared.read().data.get(key).map(|e| Arc::clone(&e.doc));
        let value = doc.map(|d| decode::<T>(&d, key)).transpose()?;
        if hub.has_after_hooks() {
            hub.after(&AfterEvent::Get {
                key,
                found: value.is_some(),
            });
        }
        Ok(value)
    }

    fn batch_sync(&self, operations: Vec<Operation<T>>) -> Result<BatchResult> {
        validate_keys(operations.iter().filter_map(Operation::key))
            .map_err(|e| rename_index_context(e, &operations))?;
        let hub = &self.shared.hub;
        if hub.has_before_hooks() {
            for (i, op) in operations.iter().enumerate() {
                let event = match op {
                    Operation::Set { key, value } => BeforeEvent::Set { key, value },
                    Operation::Delete { key } => BeforeEvent::Delete { key },
                    Operation::Clear => BeforeEvent::Clear,
                };
                hub.before(&event).map_err(|e| e.with_context("index", i))?;
            }
        }
        let listeners = hub.has_listeners();
        let mut ops = Vec::with_capacity(operations.len());
        for (i, op) in operations.into_iter().enumerate() {
            ops.push(match op {
                Operation::Set { key, value } => {
                    prepare_set(key, &value, listeners).map_err(|e| e.with_context("index", i))?
                }
                Operation::Delete { key } => Op::Delete { key },
                Operation::Clear => Op::Clear,
            });
        }
        self.shared.apply(ops, |_| Ok(()))
    }
}

/// `validate_keys` numbers only the keyed operations; report the batch position instead.
fn rename_index_context<T>(err: StorageError, operations: &[Operation<T>]) -> StorageError {
    let Some(keyed) = err
        .context_value("index")
        .and_then(|i| i.parse::<usize>().ok())
    else {
        return err;
    };
    let position = operations
        .iter()
        .enumerate()
        .filter(|(_, op)| op.key().is_some())
        .nth(keyed)
        .map_or(keyed, |(i, _)| i);
    StorageError::new(err.code(), err.message().to_owned())
        .with_context("index", position)
        .with_context(
            "key",
            operations
                .get(position)
                .and_then(Operation::key)
                .map(|k| k.escape_debug().to_string())
                .unwrap_or_default(),
        )
}

/// Encodes a value for storage; decodes it back when listeners will need it,
/// which also proves it can be read again.
fn prepare_set<T: StorageValue>(key: String, value: &T, listeners: bool) -> Result<Op<T>> {
    let doc = to_document(value).map_err(|e| e.with_context("key", &key))?;
    let value = if listeners {
        Some(Arc::new(decode::<T>(&doc, &key)?))
    } else {
        None
    };
    Ok(Op::Set {
        key,
        doc: Arc::new(doc),
        value,
    })
}

fn decode<T: StorageValue>(doc: &Document, key: &str) -> Result<T> {
    from_document(doc.clone()).map_err(|e| e.with_context("key", key))
}

fn with_op(err: StorageError, operation: &'static str) -> StorageError {
    err.with_operation(operation).with_backend(BACKEND)
}

/// What [`Shared::apply`] decided to change, before anything is mutated.
struct Plan<T> {
    /// Final state of every key the operations touched (`None`: removed).
    overlay: BTreeMap<String, Option<Arc<Document>>>,
    /// Whether a `Clear` wiped the base state.
    cleared: bool,
    /// Entries after the change.
    size: u64,
    result: BatchResult,
    /// Changes in application order, with the old document for events.
    changes: Vec<PlannedChange<T>>,
    after: Vec<AfterItem<T>>,
}

struct PlannedChange<T> {
    kind: ChangeKind,
    key: String,
    old: Option<Arc<Document>>,
    new: Option<(Arc<Document>, Option<Arc<T>>)>,
}

impl<T> Shared<T> {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: StorageValue> Shared<T> {
    fn snapshot(&self) -> Snapshot {
        let state = self.read();
        Snapshot {
            data: Arc::clone(&state.data),
            indexes: Arc::clone(&state.indexes),
            sequence: state.sequence,
        }
    }

    /// Plans, checks and applies `ops` as one commit. `check` runs first under
    /// the write lock (transactions validate their reads there).
    fn apply(
        &self,
        ops: Vec<Op<T>>,
        check: impl FnOnce(&State) -> Result<()>,
    ) -> Result<BatchResult> {
        let result = {
            let mut state = self.write();
            check(&state)?;
            let want_after = self.hub.has_after_hooks();
            let plan = plan(&state.data, ops, want_after);
            if let Some(max) = state.max_entries {
                let before = u64::try_from(state.data.len()).unwrap_or(u64::MAX);
                // Shrinking writes stay allowed even when a lowered limit is already exceeded.
                if plan.size > max && plan.size > before {
                    return Err(StorageError::new(
                        ErrorCode::QuotaExceeded,
                        format!("the store is limited to {max} entries"),
                    )
                    .with_context("entries", plan.size));
                }
            }
            state.indexes.check_unique(&plan.overlay, plan.cleared)?;
            self.commit_plan(&mut state, plan)
        };
        self.dispatch_after();
        Ok(result)
    }

    /// Mutates the state, publishes the change batch and queues after-events.
    /// Runs under the write lock so that both go out in commit order.
    fn commit_plan(&self, state: &mut State, plan: Plan<T>) -> BatchResult {
        if !plan.changes.is_empty() {
            state.sequence += 1;
            let sequence = state.sequence;
            let data = Arc::make_mut(&mut state.data);
            let indexes = Arc::make_mut(&mut state.indexes);
            if plan.cleared {
                data.clear();
                indexes.clear();
            }
            for (key, doc) in plan.overlay {
                indexes.update(
                    &key,
                    data.get(&key).map(|old| old.doc.as_ref()),
                    doc.as_deref(),
                );
                match doc {
                    Some(doc) => {
                        data.insert(
                            key,
                            Entry {
                                doc,
                                version: sequence,
                            },
                        );
                    }
                    None => {
                        data.remove(&key);
                    }
                }
            }
            if self.hub.has_subscribers() {
                self.hub.publish(&change_batch(sequence, plan.changes));
            }
        }
        if !plan.after.is_empty() {
            lock(&self.after_queue).extend(plan.after);
        }
        plan.result
    }

    /// Runs queued after-hooks in commit order. Whoever finds the queue idle
    /// drains it; a hook that writes to the store only enqueues, and the loop
    /// above it runs the new events next.
    fn dispatch_after(&self) {
        struct Release<'a>(&'a AtomicBool);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        loop {
            if self
                .dispatching
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                return;
            }
            {
                let _release = Release(&self.dispatching);
                loop {
                    let Some(item) = lock(&self.after_queue).pop_front() else {
                        break;
                    };
                    match &item {
                        AfterItem::Set { key, value } => {
                            self.hub.after(&AfterEvent::Set { key, value });
                        }
                        AfterItem::Delete { key, existed } => {
                            self.hub.after(&AfterEvent::Delete {
                                key,
                                existed: *existed,
                            });
                        }
                        AfterItem::Clear { removed } => {
                            self.hub.after(&AfterEvent::Clear { removed: *removed });
                        }
                    }
                }
            }
            // An event queued between the last pop and the release would
            // otherwise wait for the next write.
            if lock(&self.after_queue).is_empty() {
                return;
            }
        }
    }
}

fn lock<V>(mutex: &Mutex<V>) -> std::sync::MutexGuard<'_, V> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Works out the net effect of `ops` on `base` without mutating it.
fn plan<T: StorageValue>(base: &Map, ops: Vec<Op<T>>, want_after: bool) -> Plan<T> {
    let mut plan = Plan {
        overlay: BTreeMap::new(),
        cleared: false,
        size: u64::try_from(base.len()).unwrap_or(u64::MAX),
        result: BatchResult {
            operations: ops.len(),
            ..BatchResult::default()
        },
        changes: Vec::new(),
        after: Vec::new(),
    };
    for op in ops {
        match op {
            Op::Set { key, doc, value } => {
                let old = current(base, &plan, &key);
                if old.is_none() {
                    plan.size += 1;
                }
                // A hook registered after the value was prepared still gets it.
                let value = match value {
                    None if want_after => decode::<T>(&doc, &key).ok().map(Arc::new),
                    other => other,
                };
                if want_after && let Some(value) = &value {
                    plan.after.push(AfterItem::Set {
                        key: key.clone(),
                        value: Arc::clone(value),
                    });
                }
                plan.overlay.insert(key.clone(), Some(Arc::clone(&doc)));
                plan.changes.push(PlannedChange {
                    kind: ChangeKind::Set,
                    key,
                    old,
                    new: Some((doc, value)),
                });
            }
            Op::Delete { key } => {
                let old = current(base, &plan, &key);
                let existed = old.is_some();
                if want_after {
                    plan.after.push(AfterItem::Delete {
                        key: key.clone(),
                        existed,
                    });
                }
                if existed {
                    plan.size -= 1;
                    plan.result.deleted += 1;
                    plan.overlay.insert(key.clone(), None);
                    plan.changes.push(PlannedChange {
                        kind: ChangeKind::Delete,
                        key,
                        old,
                        new: None,
                    });
                }
            }
            Op::Clear => {
                let mut removed: Vec<(String, Arc<Document>)> = Vec::new();
                if !plan.cleared {
                    removed.extend(
                        base.iter()
                            .filter(|(k, _)| !plan.overlay.contains_key(*k))
                            .map(|(k, e)| (k.clone(), Arc::clone(&e.doc))),
                    );
                }
                removed.extend(
                    plan.overlay
                        .iter()
                        .filter_map(|(k, d)| d.as_ref().map(|d| (k.clone(), Arc::clone(d)))),
                );
                removed.sort_by(|a, b| a.0.cmp(&b.0));
                plan.result.cleared += removed.len();
                if want_after {
                    plan.after.push(AfterItem::Clear {
                        removed: u64::try_from(removed.len()).unwrap_or(u64::MAX),
                    });
                }
                plan.cleared = true;
                plan.overlay.clear();
                plan.size = 0;
                for (key, doc) in removed {
                    plan.changes.push(PlannedChange {
                        kind: ChangeKind::Delete,
                        key,
                        old: Some(doc),
                        new: None,
                    });
                }
            }
        }
    }
    plan
}

/// The document under `key` as the plan sees it so far.
fn current<T>(base: &Map, plan: &Plan<T>, key: &str) -> Option<Arc<Document>> {
    match plan.overlay.get(key) {
        Some(doc) => doc.clone(),
        None if plan.cleared => None,
        None => base.get(key).map(|e| Arc::clone(&e.doc)),
    }
}

fn change_batch<T: StorageValue>(sequence: u64, changes: Vec<PlannedChange<T>>) -> ChangeBatch<T> {
    let timestamp = SystemTime::now();
    ChangeBatch {
        sequence,
        resume_token: None,
        changes: changes
            .into_iter()
            .map(|c| {
                let old_value = c
                    .old
                    .and_then(|d| decode::<T>(&d, &c.key).ok())
                    .map(Arc::new);
                let new_value = c.new.and_then(|(doc, value)| {
                    value.or_else(|| decode::<T>(&doc, &c.key).ok().map(Arc::new))
                });
                Change {
                    kind: c.kind,
                    key: c.key,
                    old_value,
                    new_value,
                    timestamp,
                }
            })
            .collect(),
    }
}

/// Iterates a snapshot in key order without borrowing it: each step resumes
/// after the last key returned.
struct SnapshotIter {
    data: Arc<Map>,
    after: Option<String>,
}

impl SnapshotIter {
    fn new(data: Arc<Map>) -> Self {
        Self { data, after: None }
    }
}

impl Iterator for SnapshotIter {
    type Item = (String, Arc<Document>);

    fn next(&mut self) -> Option<Self::Item> {
        let lower = match &self.after {
            Some(last) => Bound::Excluded(last.as_str()),
            None => Bound::Unbounded,
        };
        let (key, entry) = self
            .data
            .range::<str, _>((lower, Bound::Unbounded))
            .next()?;
        let item = (key.clone(), Arc::clone(&entry.doc));
        self.after = Some(key.clone());
        Some(item)
    }
}

#[async_trait]
impl<T: StorageValue> Storage<T> for MemoryStorage<T> {
    crate::tier_accessors!(T; batch, queryable, indexed, transactional, observable);

    fn capabilities(&self) -> Capabilities {
        Self::capabilities_static()
    }

    async fn get(&self, key: &str) -> Result<Option<T>> {
        self.span("get")
            .in_scope(|| self.get_sync(key))
            .map_err(|e| with_op(e, "get"))
    }

    async fn set(&self, key: &str, value: &T) -> Result<()> {
        self.span("set")
            .in_scope(|| {
                validate_key(key)?;
                let hub = &self.shared.hub;
                if hub.has_before_hooks() {
                    hub.before(&BeforeEvent::Set { key, value })?;
                }
                let op = prepare_set(key.to_owned(), value, hub.has_listeners())?;
                self.shared.apply(vec![op], |_| Ok(())).map(|_| ())
            })
            .map_err(|e| with_op(e, "set").with_context("key", key.escape_debug()))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.span("delete")
            .in_scope(|| {
                validate_key(key)?;
                let hub = &self.shared.hub;
                if hub.has_before_hooks() {
                    hub.before(&BeforeEvent::Delete { key })?;
                }
                let op = Op::Delete {
                    key: key.to_owned(),
                };
                Ok(self.shared.apply(vec![op], |_| Ok(()))?.deleted > 0)
            })
            .map_err(|e| with_op(e, "delete"))
    }

    async fn has(&self, key: &str) -> Result<bool> {
        self.span("has")
            .in_scope(|| {
                validate_key(key)?;
                Ok(self.shared.read().data.contains_key(key))
            })
            .map_err(|e| with_op(e, "has"))
    }

    async fn clear(&self) -> Result<()> {
        self.span("clear")
            .in_scope(|| {
                let hub = &self.shared.hub;
                if hub.has_before_hooks() {
                    hub.before(&BeforeEvent::Clear)?;
                }
                self.shared.apply(vec![Op::Clear], |_| Ok(())).map(|_| ())
            })
            .map_err(|e| with_op(e, "clear"))
    }

    async fn size(&self) -> Result<u64> {
        let _entered = self.span("size").entered();
        Ok(u64::try_from(self.shared.read().data.len()).unwrap_or(u64::MAX))
    }

    fn keys(&self) -> ResultStream<'_, String> {
        let data = self.span("keys").in_scope(|| self.shared.snapshot().data);
        stream::iter(SnapshotIter::new(data).map(|(k, _)| Ok(k))).boxed()
    }

    fn values(&self) -> ResultStream<'_, T> {
        let data = self.span("values").in_scope(|| self.shared.snapshot().data);
        stream::iter(
            SnapshotIter::new(data).map(|(k, d)| decode(&d, &k).map_err(|e| with_op(e, "values"))),
        )
        .boxed()
    }

    fn entries(&self) -> ResultStream<'_, (String, T)> {
        let data = self
            .span("entries")
            .in_scope(|| self.shared.snapshot().data);
        stream::iter(SnapshotIter::new(data).map(|(k, d)| {
            decode(&d, &k)
                .map(|v| (k, v))
                .map_err(|e| with_op(e, "entries"))
        }))
        .boxed()
    }
}

#[async_trait]
impl<T: StorageValue> BatchStorage<T> for MemoryStorage<T> {
    async fn get_many(&self, keys: &[String]) -> Result<BTreeMap<String, T>> {
        self.span("get_many")
            .in_scope(|| {
                validate_keys(keys.iter().map(String::as_str))?;
                let data = self.shared.snapshot().data;
                keys.iter()
                    .filter_map(|k| data.get(k).map(|e| (k, &e.doc)))
                    .map(|(k, d)| decode(d, k).map(|v| (k.clone(), v)))
                    .collect::<Result<BTreeMap<_, _>>>()
            })
            .map_err(|e| with_op(e, "get_many"))
    }

    async fn batch(&self, operations: Vec<Operation<T>>) -> Result<BatchResult> {
        self.span("batch")
            .in_scope(|| self.batch_sync(operations))
            .map_err(|e| with_op(e, "batch"))
    }
}

#[async_trait]
impl<T: StorageValue> TransactionalStorage<T> for MemoryStorage<T> {
    async fn begin(&self, options: TransactionOptions) -> Result<Box<dyn Transaction<T>>> {
        let span = self.span("begin");
        let _entered = span.enter();
        // Every transaction runs serializably, which honours any requested level.
        let id = self.shared.next_tx.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(tx::MemoryTransaction::new(
            Arc::clone(&self.shared),
            id,
            options,
        )))
    }
}

crate::observable_via_hub!(MemoryStorage, BACKEND, |store| &store.shared.hub);

#[cfg(test)]
mod tests;
