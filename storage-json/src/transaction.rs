//! Optimistic serializable transactions.
//!
//! A transaction reads from a snapshot (the store's state when it began,
//! reconstructed from before-images the store keeps while the transaction is
//! open), buffers its writes, and at commit checks that no commit since its
//! start wrote anything it read (or anything at all, if it scanned). Passing
//! that check means its reads still hold at commit time, so applying its writes
//! there as one journal record is equivalent to running it alone at that
//! instant: serializable. Nothing is locked while it runs, so two open
//! transactions never deadlock; the loser of a conflict gets `VersionConflict`
//! (retryable) and applies nothing.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use storage_core::events::BeforeEvent;
use storage_core::{
    Capabilities, ErrorCode, IsolationLevel, Result, ResultStream, Storage, StorageError,
    StorageValue, Transaction, TransactionOptions, TransactionState, validate_key,
};

use crate::backend::{Inner, ReadSet, StagedOp, capabilities, decode, encode};
use crate::journal::to_u64;
use crate::value::Stored;

struct TxState {
    state: TransactionState,
    ops: Vec<StagedOp>,
    /// The transaction's own writes over the snapshot: `None` deleted.
    overlay: BTreeMap<String, Option<Arc<Stored>>>,
    cleared: bool,
    reads: HashSet<String>,
    scanned: bool,
    savepoints: Vec<(String, usize)>,
}

impl TxState {
    fn rebuild_overlay(&mut self) {
        self.overlay.clear();
        self.cleared = false;
        for op in &self.ops {
            match op {
                StagedOp::Set(k, v) => {
                    self.overlay.insert(k.clone(), Some(Arc::clone(v)));
                }
                StagedOp::Delete(k) => {
                    self.overlay.insert(k.clone(), None);
                }
                StagedOp::Clear => {
                    self.overlay.clear();
                    self.cleared = true;
                }
            }
        }
    }
}

/// A transaction on a [`crate::JsonStorage`]; see the module docs for how it isolates.
///
/// Dropping it without commit rolls it back.
pub struct JsonTransaction<T: StorageValue> {
    id: String,
    inner: Arc<Inner<T>>,
    start: u64,
    read_only: bool,
    deadline: Option<Instant>,
    st: Mutex<TxState>,
}

fn aborted(message: &'static str) -> StorageError {
    StorageError::new(ErrorCode::TransactionAborted, message).with_backend("json")
}

impl<T: StorageValue> JsonTransaction<T> {
    pub(crate) fn begin(inner: Arc<Inner<T>>, options: TransactionOptions) -> Result<Self> {
        let start = inner.begin_tx()?;
        let id = format!("json-tx-{}", inner.next_tx_id());
        Ok(Self {
            id,
            inner,
            start,
            read_only: options.read_only,
            deadline: options.timeout.map(|t| Instant::now() + t),
            st: Mutex::new(TxState {
                state: TransactionState::Active,
                ops: Vec::new(),
                overlay: BTreeMap::new(),
                cleared: false,
                reads: HashSet::new(),
                scanned: false,
                savepoints: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TxState> {
        self.st.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the transaction in `state`, releasing its snapshot.
    fn finish(&self, st: &mut TxState, state: TransactionState) {
        if st.state == TransactionState::Active {
            st.state = state;
            st.ops.clear();
            st.overlay.clear();
            self.inner.end_tx(self.start);
        }
    }

    /// Checks that the transaction is active and not past its time-out.
    fn check(&self, st: &mut TxState) -> Result<()> {
        if st.state != TransactionState::Active {
            return Err(aborted("the transaction is no longer active").with_context("id", &self.id));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.finish(st, TransactionState::Aborted);
            return Err(aborted("the transaction timed out").with_context("id", &self.id));
        }
        Ok(())
    }

    fn check_writable(&self, st: &mut TxState) -> Result<()> {
        self.check(st)?;
        if self.read_only {
            return Err(StorageError::unsupported(
                "the transaction is read-only and rejects writes",
            )
            .with_backend("json")
            .with_context("id", &self.id));
        }
        Ok(())
    }

    /// The transaction's view of `key`.
    fn view_get(&self, st: &mut TxState, key: &str) -> Result<Option<Arc<Stored>>> {
        if let Some(v) = st.overlay.get(key) {
            return Ok(v.clone());
        }
        if st.cleared {
            return Ok(None);
        }
        st.reads.insert(key.to_owned());
        self.inner.with_state(|s| s.snapshot_get(self.start, key))
    }

    /// The transaction's view of every entry.
    fn view_all(&self, st: &mut TxState) -> Result<BTreeMap<String, Arc<Stored>>> {
        let mut view = if st.cleared {
            BTreeMap::new()
        } else {
            st.scanned = true;
            self.inner.with_state(|s| s.snapshot_all(self.start))?
        };
        for (k, v) in &st.overlay {
            match v {
                Some(v) => {
                    view.insert(k.clone(), Arc::clone(v));
                }
                None => {
                    view.remove(k);
                }
            }
        }
        Ok(view)
    }

    fn decode(stored: &Stored, key: &str) -> Result<T> {
        decode(stored, key)
    }

    fn all_entries(&self) -> Result<Vec<(String, Arc<Stored>)>> {
        let mut st = self.lock();
        self.check(&mut st)?;
        Ok(self.view_all(&mut st)?.into_iter().collect())
    }
}

impl<T: StorageValue> Drop for JsonTransaction<T> {
    fn drop(&mut self) {
        let mut st = self.lock();
        self.finish(&mut st, TransactionState::Aborted);
    }
}

fn stream_of<'a, I: Send + 'a>(items: Result<Vec<Result<I>>>) -> ResultStream<'a, I> {
    match items {
        Ok(v) => Box::pin(futures::stream::iter(v)),
        Err(e) => Box::pin(futures::stream::iter(vec![Err(e)])),
    }
}

#[async_trait]
impl<T: StorageValue> Storage<T> for JsonTransaction<T> {
    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn get(&self, key: &str) -> Result<Option<T>> {
        validate_key(key)?;
        let doc = {
            let mut st = self.lock();
            self.check(&mut st)?;
            self.view_get(&mut st, key)?
        };
        doc.map(|d| Self::decode(&d, key)).transpose()
    }

    async fn set(&self, key: &str, value: &T) -> Result<()> {
        validate_key(key)?;
        let mut st = self.lock();
        self.check_writable(&mut st)?;
        let doc = encode(value, key, self.inner.indexed())?;
        let hub = self.inner.hub();
        if hub.has_before_hooks() {
            hub.before(&BeforeEvent::Set { key, value })?;
        }
        st.overlay.insert(key.to_owned(), Some(Arc::clone(&doc)));
        st.ops.push(StagedOp::Set(key.to_owned(), doc));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let mut st = self.lock();
        self.check_writable(&mut st)?;
        let hub = self.inner.hub();
        if hub.has_before_hooks() {
            hub.before(&BeforeEvent::Delete { key })?;
        }
        let existed = self.view_get(&mut st, key)?.is_some();
        st.overlay.insert(key.to_owned(), None);
        st.ops.push(StagedOp::Delete(key.to_owned()));
        Ok(existed)
    }

    async fn has(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let mut st = self.lock();
        self.check(&mut st)?;
        Ok(self.view_get(&mut st, key)?.is_some())
    }

    async fn clear(&self) -> Result<()> {
        let mut st = self.lock();
        self.check_writable(&mut st)?;
        let hub = self.inner.hub();
        if hub.has_before_hooks() {
            hub.before(&BeforeEvent::Clear)?;
        }
        st.overlay.clear();
        st.cleared = true;
        st.ops.push(StagedOp::Clear);
        Ok(())
    }

    async fn size(&self) -> Result<u64> {
        let mut st = self.lock();
        self.check(&mut st)?;
        Ok(to_u64(self.view_all(&mut st)?.len()))
    }

    fn keys(&self) -> ResultStream<'_, String> {
        stream_of(
            self.all_entries()
                .map(|v| v.into_iter().map(|(k, _)| Ok(k)).collect()),
        )
    }

    fn values(&self) -> ResultStream<'_, T> {
        stream_of(
            self.all_entries()
                .map(|v| v.into_iter().map(|(k, d)| Self::decode(&d, &k)).collect()),
        )
    }

    fn entries(&self) -> ResultStream<'_, (String, T)> {
        stream_of(self.all_entries().map(|v| {
            v.into_iter()
                .map(|(k, d)| Self::decode(&d, &k).map(|t| (k, t)))
                .collect()
        }))
    }
}

#[async_trait]
impl<T: StorageValue> Transaction<T> for JsonTransaction<T> {
    fn id(&self) -> &str {
        &self.id
    }

    fn state(&self) -> TransactionState {
        self.lock().state
    }

    fn isolation(&self) -> IsolationLevel {
        IsolationLevel::Serializable
    }

    async fn commit(&self) -> Result<()> {
        let (ops, reads, scanned) = {
            let mut st = self.lock();
            self.check(&mut st)?;
            if st.ops.is_empty() {
                // A read-only run saw one consistent snapshot: it serializes at its start.
                self.finish(&mut st, TransactionState::Committed);
                return Ok(());
            }
            (
                std::mem::take(&mut st.ops),
                std::mem::take(&mut st.reads),
                st.scanned,
            )
        };
        let read_set = ReadSet {
            start: self.start,
            keys: &reads,
            scanned,
        };
        let outcome = self.inner.commit_ops(&ops, Some(&read_set)).await;
        let mut st = self.lock();
        match outcome {
            Ok(_) => {
                self.finish(&mut st, TransactionState::Committed);
                Ok(())
            }
            Err(e) => {
                self.finish(&mut st, TransactionState::Aborted);
                Err(e.with_operation("commit").with_context("id", &self.id))
            }
        }
    }

    async fn rollback(&self) -> Result<()> {
        let mut st = self.lock();
        if st.state != TransactionState::Active {
            return Err(aborted("the transaction is no longer active").with_context("id", &self.id));
        }
        self.finish(&mut st, TransactionState::Aborted);
        Ok(())
    }

    async fn savepoint(&self, name: &str) -> Result<()> {
        let mut st = self.lock();
        self.check(&mut st)?;
        st.savepoints.retain(|(n, _)| n != name);
        let at = st.ops.len();
        st.savepoints.push((name.to_owned(), at));
        Ok(())
    }

    async fn rollback_to(&self, name: &str) -> Result<()> {
        let mut st = self.lock();
        self.check(&mut st)?;
        let Some(pos) = st.savepoints.iter().position(|(n, _)| n == name) else {
            return Err(
                StorageError::new(ErrorCode::KeyNotFound, "no savepoint with this name")
                    .with_backend("json")
                    .with_context("savepoint", name.escape_debug()),
            );
        };
        let at = st.savepoints[pos].1;
        st.savepoints.truncate(pos + 1);
        st.ops.truncate(at);
        st.rebuild_overlay();
        Ok(())
    }
}
