//! Optimistic, serializable transactions over [`MemoryStorage`](super::MemoryStorage).
//!
//! A transaction reads from the snapshot taken at `begin`, overlaid with its own
//! write buffer, and records what it read. Nothing is locked while it runs. At
//! commit, under the store's write lock, every key it read or wrote must still
//! carry the version it had in the snapshot (absent keys must still be absent),
//! and a transaction that scanned (keys, values, entries, size, clear) requires
//! that nothing at all was committed since its snapshot. Otherwise the commit
//! fails with a retryable `VersionConflict` and applies nothing. A committed
//! transaction is thus equivalent to running alone at its commit point, which
//! makes every transaction serializable.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream;

use super::{BACKEND, Op, Shared, Snapshot, State, decode, prepare_set, with_op};
use crate::capabilities::{Capabilities, Tier};
use crate::error::{ErrorCode, Result, StorageError};
use crate::events::{AfterEvent, BeforeEvent};
use crate::key::validate_key;
use crate::tiers::{ResultStream, Storage, StorageValue, Transaction};
use crate::types::{Document, IsolationLevel, TransactionOptions, TransactionState};

/// The write buffer: the operations in order (replayed at commit) and their net
/// effect (for reads). Cloned whole for savepoints.
struct View<T> {
    log: Vec<Op<T>>,
    overlay: BTreeMap<String, Option<Arc<Document>>>,
    cleared: bool,
}

impl<T> Clone for View<T> {
    fn clone(&self) -> Self {
        Self {
            log: self.log.clone(),
            overlay: self.overlay.clone(),
            cleared: self.cleared,
        }
    }
}

struct Inner<T> {
    state: TransactionState,
    snapshot: Snapshot,
    view: View<T>,
    /// Keys read or written; their versions are checked at commit.
    touched: BTreeSet<String>,
    /// Whether the transaction read a range (any commit since the snapshot conflicts).
    scanned: bool,
    savepoints: Vec<(String, View<T>)>,
}

impl<T> Inner<T> {
    /// The document under `key` as this transaction sees it.
    fn lookup(&mut self, key: &str) -> Option<Arc<Document>> {
        self.touched.insert(key.to_owned());
        match self.view.overlay.get(key) {
            Some(doc) => doc.clone(),
            None if self.view.cleared => None,
            None => self.snapshot.data.get(key).map(|e| Arc::clone(&e.doc)),
        }
    }

    /// Every visible entry in key order; marks the transaction as having scanned.
    fn scan(&mut self) -> Vec<(String, Arc<Document>)> {
        self.scanned = true;
        let mut out: Vec<(String, Arc<Document>)> = Vec::new();
        if !self.view.cleared {
            out.extend(
                self.snapshot
                    .data
                    .iter()
                    .filter(|(k, _)| !self.view.overlay.contains_key(*k))
                    .map(|(k, e)| (k.clone(), Arc::clone(&e.doc))),
            );
        }
        out.extend(
            self.view
                .overlay
                .iter()
                .filter_map(|(k, d)| d.as_ref().map(|d| (k.clone(), Arc::clone(d)))),
        );
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// A transaction of [`MemoryStorage`](super::MemoryStorage).
pub(super) struct MemoryTransaction<T> {
    shared: Arc<Shared<T>>,
    id: String,
    read_only: bool,
    deadline: Option<Instant>,
    inner: Mutex<Inner<T>>,
}

fn aborted(message: &'static str) -> StorageError {
    StorageError::new(ErrorCode::TransactionAborted, message)
}

impl<T: StorageValue> MemoryTransaction<T> {
    pub(super) fn new(shared: Arc<Shared<T>>, id: u64, options: TransactionOptions) -> Self {
        let snapshot = shared.snapshot();
        Self {
            shared,
            id: format!("memory-tx-{id}"),
            read_only: options.read_only,
            deadline: options.timeout.and_then(|t| Instant::now().checked_add(t)),
            inner: Mutex::new(Inner {
                state: TransactionState::Active,
                snapshot,
                view: View {
                    log: Vec::new(),
                    overlay: BTreeMap::new(),
                    cleared: false,
                },
                touched: BTreeSet::new(),
                scanned: false,
                savepoints: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the transaction if it is still active; a passed deadline aborts it.
    fn active(&self) -> Result<MutexGuard<'_, Inner<T>>> {
        let mut inner = self.lock();
        match inner.state {
            TransactionState::Active => {}
            TransactionState::Committed => return Err(aborted("transaction already committed")),
            TransactionState::Aborted => return Err(aborted("transaction is no longer active")),
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            inner.state = TransactionState::Aborted;
            return Err(aborted("transaction timed out"));
        }
        Ok(inner)
    }

    fn writable(&self) -> Result<()> {
        drop(self.active()?);
        if self.read_only {
            return Err(StorageError::unsupported(
                "writes are not allowed in a read-only transaction",
            ));
        }
        Ok(())
    }

    fn err(&self, err: StorageError, operation: &'static str) -> StorageError {
        with_op(err, operation).with_context("transaction", &self.id)
    }

    fn get_sync(&self, key: &str) -> Result<Option<T>> {
        drop(self.active()?);
        validate_key(key)?;
        let hub = &self.shared.hub;
        if hub.has_before_hooks() {
            hub.before(&BeforeEvent::Get { key })?;
        }
        let doc = self.active()?.lookup(key);
        let value = doc.map(|d| decode::<T>(&d, key)).transpose()?;
        if hub.has_after_hooks() {
            hub.after(&AfterEvent::Get {
                key,
                found: value.is_some(),
            });
        }
        Ok(value)
    }

    fn set_sync(&self, key: &str, value: &T) -> Result<()> {
        self.writable()?;
        validate_key(key)?;
        let hub = &self.shared.hub;
        if hub.has_before_hooks() {
            hub.before(&BeforeEvent::Set { key, value })?;
        }
        let op = prepare_set(key.to_owned(), value, hub.has_listeners())?;
        let mut inner = self.active()?;
        inner.touched.insert(key.to_owned());
        if let Op::Set { doc, .. } = &op {
            inner
                .view
                .overlay
                .insert(key.to_owned(), Some(Arc::clone(doc)));
        }
        inner.view.log.push(op);
        Ok(())
    }

    fn delete_sync(&self, key: &str) -> Result<bool> {
        self.writable()?;
        validate_key(key)?;
        let hub = &self.shared.hub;
        if hub.has_before_hooks() {
            hub.before(&BeforeEvent::Delete { key })?;
        }
        let mut inner = self.active()?;
        let existed = inner.lookup(key).is_some();
        inner.view.overlay.insert(key.to_owned(), None);
        inner.view.log.push(Op::Delete {
            key: key.to_owned(),
        });
        Ok(existed)
    }

    fn clear_sync(&self) -> Result<()> {
        self.writable()?;
        let hub = &self.shared.hub;
        if hub.has_before_hooks() {
            hub.before(&BeforeEvent::Clear)?;
        }
        let mut inner = self.active()?;
        // A clear removes whatever exists at commit: a concurrent insert must conflict.
        inner.scanned = true;
        inner.view.overlay.clear();
        inner.view.cleared = true;
        inner.view.log.push(Op::Clear);
        Ok(())
    }

    fn scan_sync(&self, operation: &'static str) -> Result<Vec<(String, Arc<Document>)>> {
        self.active()
            .map(|mut inner| inner.scan())
            .map_err(|e| self.err(e, operation))
    }

    fn commit_sync(&self) -> Result<()> {
        let (view, snapshot, touched, scanned) = {
            let mut inner = self.active()?;
            // Marked before applying so that no call can slip a write into a
            // buffer that is being committed; reset to Aborted on failure.
            inner.state = TransactionState::Committed;
            inner.savepoints.clear();
            let view = std::mem::replace(
                &mut inner.view,
                View {
                    log: Vec::new(),
                    overlay: BTreeMap::new(),
                    cleared: false,
                },
            );
            (
                view,
                inner.snapshot.clone(),
                std::mem::take(&mut inner.touched),
                inner.scanned,
            )
        };
        if view.log.is_empty() {
            // Reads alone serialize at the snapshot, which was a committed state.
            return Ok(());
        }
        let outcome = self.shared.apply(view.log, |state: &State| {
            validate(state, &snapshot, &touched, scanned)
        });
        if let Err(err) = outcome {
            self.lock().state = TransactionState::Aborted;
            return Err(err);
        }
        Ok(())
    }
}

/// Serializability check at commit: what the transaction saw is still what is committed.
fn validate(
    state: &State,
    snapshot: &Snapshot,
    touched: &BTreeSet<String>,
    scanned: bool,
) -> Result<()> {
    if state.sequence == snapshot.sequence {
        return Ok(());
    }
    if scanned {
        return Err(StorageError::new(
            ErrorCode::VersionConflict,
            "another transaction committed after this one scanned the store",
        ));
    }
    for key in touched {
        let then = snapshot.data.get(key).map(|e| e.version);
        let now = state.data.get(key).map(|e| e.version);
        if then != now {
            return Err(StorageError::new(
                ErrorCode::VersionConflict,
                "a key this transaction used was changed by a concurrent commit",
            )
            .with_context("key", key.escape_debug()));
        }
    }
    Ok(())
}

#[async_trait]
impl<T: StorageValue> Storage<T> for MemoryTransaction<T> {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new(BACKEND, Tier::Storage)
    }

    async fn get(&self, key: &str) -> Result<Option<T>> {
        self.get_sync(key).map_err(|e| self.err(e, "get"))
    }

    async fn set(&self, key: &str, value: &T) -> Result<()> {
        self.set_sync(key, value)
            .map_err(|e| self.err(e, "set").with_context("key", key.escape_debug()))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.delete_sync(key).map_err(|e| self.err(e, "delete"))
    }

    async fn has(&self, key: &str) -> Result<bool> {
        (|| {
            let mut inner = self.active()?;
            validate_key(key)?;
            Ok(inner.lookup(key).is_some())
        })()
        .map_err(|e| self.err(e, "has"))
    }

    async fn clear(&self) -> Result<()> {
        self.clear_sync().map_err(|e| self.err(e, "clear"))
    }

    async fn size(&self) -> Result<u64> {
        let entries = self.scan_sync("size")?;
        Ok(u64::try_from(entries.len()).unwrap_or(u64::MAX))
    }

    fn keys(&self) -> ResultStream<'_, String> {
        match self.scan_sync("keys") {
            Ok(entries) => stream::iter(entries.into_iter().map(|(k, _)| Ok(k))).boxed(),
            Err(e) => stream::once(async move { Err(e) }).boxed(),
        }
    }

    fn values(&self) -> ResultStream<'_, T> {
        match self.scan_sync("values") {
            Ok(entries) => stream::iter(entries.into_iter().map(|(k, d)| decode(&d, &k))).boxed(),
            Err(e) => stream::once(async move { Err(e) }).boxed(),
        }
    }

    fn entries(&self) -> ResultStream<'_, (String, T)> {
        match self.scan_sync("entries") {
            Ok(entries) => stream::iter(
                entries
                    .into_iter()
                    .map(|(k, d)| decode(&d, &k).map(|v| (k, v))),
            )
            .boxed(),
            Err(e) => stream::once(async move { Err(e) }).boxed(),
        }
    }
}

#[async_trait]
impl<T: StorageValue> Transaction<T> for MemoryTransaction<T> {
    fn id(&self) -> &str {
        &self.id
    }

    fn state(&self) -> TransactionState {
        let mut inner = self.lock();
        if inner.state == TransactionState::Active
            && self.deadline.is_some_and(|d| Instant::now() >= d)
        {
            inner.state = TransactionState::Aborted;
        }
        inner.state
    }

    fn isolation(&self) -> IsolationLevel {
        IsolationLevel::Serializable
    }

    async fn commit(&self) -> Result<()> {
        let span = super::op_span(
            self.shared.debug.load(std::sync::atomic::Ordering::Relaxed),
            BACKEND,
            "commit",
        );
        span.in_scope(|| self.commit_sync())
            .map_err(|e| self.err(e, "commit"))
    }

    async fn rollback(&self) -> Result<()> {
        let mut inner = self.lock();
        if inner.state != TransactionState::Active {
            return Err(self.err(aborted("transaction is no longer active"), "rollback"));
        }
        inner.state = TransactionState::Aborted;
        inner.savepoints.clear();
        inner.view.log.clear();
        inner.view.overlay.clear();
        Ok(())
    }

    async fn savepoint(&self, name: &str) -> Result<()> {
        let mut inner = self.active().map_err(|e| self.err(e, "savepoint"))?;
        // Reusing a name moves the savepoint to now.
        inner.savepoints.retain(|(n, _)| n != name);
        let view = inner.view.clone();
        inner.savepoints.push((name.to_owned(), view));
        Ok(())
    }

    async fn rollback_to(&self, name: &str) -> Result<()> {
        let mut inner = self.active().map_err(|e| self.err(e, "rollback_to"))?;
        let Some(pos) = inner.savepoints.iter().position(|(n, _)| n == name) else {
            return Err(self.err(
                StorageError::new(ErrorCode::KeyNotFound, "no savepoint with this name")
                    .with_context("savepoint", name),
                "rollback_to",
            ));
        };
        inner.savepoints.truncate(pos + 1);
        let view = inner.savepoints[pos].1.clone();
        inner.view = view;
        Ok(())
    }
}
