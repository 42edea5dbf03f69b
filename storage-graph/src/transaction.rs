//! Optimistic transactions: `WATCH` on a dedicated connection, writes buffered in
//! the client, one `MULTI`/`EXEC` at commit.
//!
//! # Isolation
//! Every transaction runs at `SERIALIZABLE`:
//! - at `begin` the transaction `WATCH`es the graph key and the graph's write version
//!   and remembers that version;
//! - every read from the server is followed, on the same connection, by a read of the
//!   version; if any write committed since `begin`, the read fails with a retryable
//!   `VersionConflict` instead of returning data from a newer state. So every value a
//!   transaction sees comes from the one state it began on (reads see the
//!   transaction's own buffered writes on top of it);
//! - `EXEC` fails when anything wrote to the graph since `WATCH`, which becomes a
//!   retryable `VersionConflict` with nothing applied.
//!
//! A committed transaction therefore read and wrote one unchanged state: it is
//! equivalent to running alone at its commit point. Writes made to the graph by other
//! programs with raw Cypher do not bump the version; `EXEC` still catches them at
//! commit, but reads cannot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use storage_core::events::BeforeEvent;
use storage_core::{
    Capabilities, ErrorCode, IsolationLevel, Result, ResultStream, Storage, StorageError,
    StorageValue, Transaction, TransactionOptions, TransactionState, TransactionalStorage,
    validate_key,
};

use crate::backend::{Applied, GraphStorage, Op, cell_key, cell_str, decode, encode};
use crate::cypher::{Cypher, KEY_INDEX_PROP, VALUE_PROP};
use crate::error::{BACKEND, corrupt, redis_err};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A transaction on a [`GraphStorage`], from [`storage_core::TransactionalStorage::begin`].
pub struct GraphTransaction<T: StorageValue> {
    store: GraphStorage<T>,
    id: String,
    options: TransactionOptions,
    started: Instant,
    status: Mutex<TransactionState>,
    inner: tokio::sync::Mutex<TxInner>,
}

struct TxInner {
    conn: Option<MultiplexedConnection>,
    version: i64,
    ops: Vec<Op>,
    savepoints: Vec<(String, usize)>,
}

/// What the buffer says about one key.
enum Buffered {
    Unknown,
    Missing,
    Present(String),
}

fn buffered(ops: &[Op], key: &str) -> Buffered {
    for op in ops.iter().rev() {
        match op {
            Op::Set { key: k, value } if k == key => {
                return Buffered::Present(value.stored.clone());
            }
            Op::Delete { key: k } if k == key => return Buffered::Missing,
            Op::Clear => return Buffered::Missing,
            _ => {}
        }
    }
    Buffered::Unknown
}

fn aborted(message: &'static str) -> StorageError {
    StorageError::new(ErrorCode::TransactionAborted, message).with_backend(BACKEND)
}

fn conflict() -> StorageError {
    StorageError::new(
        ErrorCode::VersionConflict,
        "the graph changed since the transaction began",
    )
    .with_backend(BACKEND)
}

impl<T: StorageValue> GraphTransaction<T> {
    pub(crate) async fn begin(
        store: &GraphStorage<T>,
        options: TransactionOptions,
    ) -> Result<Self> {
        let inner = &store.inner;
        let mut conn = inner.dedicated().await?;
        redis::cmd("WATCH")
            .arg(&inner.graph)
            .arg(&inner.version_key)
            .arg(&inner.epoch_key)
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_err("begin"))?;
        let version = inner.version(&mut conn).await?;
        Ok(Self {
            store: store.clone(),
            id: format!(
                "graph-tx-{}-{}",
                std::process::id(),
                NEXT_ID.fetch_add(1, Ordering::Relaxed)
            ),
            options,
            started: Instant::now(),
            status: Mutex::new(TransactionState::Active),
            inner: tokio::sync::Mutex::new(TxInner {
                conn: Some(conn),
                version,
                ops: Vec::new(),
                savepoints: Vec::new(),
            }),
        })
    }

    fn set_status(&self, state: TransactionState) {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }

    /// Fails unless the transaction is active and within its time-out (aborting it if not).
    fn check_active(&self, tx: &mut TxInner) -> Result<()> {
        if self.state() != TransactionState::Active {
            return Err(aborted("transaction is no longer active"));
        }
        if self
            .options
            .timeout
            .is_some_and(|t| self.started.elapsed() > t)
        {
            self.abort(tx);
            return Err(aborted("transaction timed out"));
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.options.read_only {
            return Err(StorageError::unsupported("transaction is read-only").with_backend(BACKEND));
        }
        Ok(())
    }

    fn abort(&self, tx: &mut TxInner) {
        self.set_status(TransactionState::Aborted);
        tx.ops.clear();
        tx.savepoints.clear();
        // Dropping the connection releases its WATCH; it is not reused.
        tx.conn = None;
    }

    /// Fails with `VersionConflict` (and aborts) when a write committed since `begin`.
    async fn validate(&self, tx: &mut TxInner) -> Result<()> {
        let conn = tx
            .conn
            .as_mut()
            .ok_or_else(|| aborted("transaction is no longer active"))?;
        let now = self.store.inner.version(conn).await?;
        if now != tx.version {
            self.abort(tx);
            return Err(conflict());
        }
        Ok(())
    }

    /// The stored value of `key` as this transaction sees it.
    async fn read_stored(&self, tx: &mut TxInner, key: &str) -> Result<Option<String>> {
        match buffered(&tx.ops, key) {
            Buffered::Present(stored) => return Ok(Some(stored)),
            Buffered::Missing => return Ok(None),
            Buffered::Unknown => {}
        }
        let conn = tx
            .conn
            .as_mut()
            .ok_or_else(|| aborted("transaction is no longer active"))?;
        let stored = self.store.inner.get_stored(conn, key).await?;
        self.validate(tx).await?;
        Ok(stored)
    }

    /// Every entry as this transaction sees it.
    async fn view(&self, tx: &mut TxInner) -> Result<BTreeMap<String, String>> {
        let mut q = Cypher::new();
        q.push(&format!(
            "MATCH (n:{}) RETURN n.{KEY_INDEX_PROP}, n.{VALUE_PROP}",
            self.store.inner.label
        ));
        let conn = tx
            .conn
            .as_mut()
            .ok_or_else(|| aborted("transaction is no longer active"))?;
        let rows = self.store.inner.read(conn, &q, "read").await?;
        self.validate(tx).await?;
        let mut view = BTreeMap::new();
        for row in rows {
            match (
                row.first().and_then(cell_key),
                row.get(1).and_then(cell_str),
            ) {
                (Some(k), Some(v)) => {
                    view.insert(k, v);
                }
                _ => return Err(corrupt("read", "node without key or value")),
            }
        }
        for op in &tx.ops {
            match op {
                Op::Set { key, value } => {
                    view.insert(key.clone(), value.stored.clone());
                }
                Op::Delete { key } => {
                    view.remove(key);
                }
                Op::Clear => view.clear(),
            }
        }
        Ok(view)
    }

    async fn sorted_view(&self) -> Result<Vec<(String, String)>> {
        let mut tx = self.inner.lock().await;
        self.check_active(&mut tx)?;
        let view = self.view(&mut tx).await?;
        let mut entries: Vec<(String, String)> = view.into_iter().collect();
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        Ok(entries)
    }

    async fn commit_inner(&self, tx: &mut TxInner) -> Result<Option<Applied>> {
        if tx.ops.is_empty() {
            if let Some(mut conn) = tx.conn.take() {
                let _ = redis::cmd("UNWATCH").query_async::<()>(&mut conn).await;
                self.store.inner.give_back(conn);
            }
            return Ok(None);
        }
        self.store.refresh_indexes().await?;
        let inner = &self.store.inner;
        let ops = std::mem::take(&mut tx.ops);
        let mut conn = tx
            .conn
            .take()
            .ok_or_else(|| aborted("transaction is no longer active"))?;
        let Some(applied) = self.store.commit_watched(&mut conn, &ops).await? else {
            // EXEC was aborted, which also ended the WATCH: the connection is clean.
            inner.give_back(conn);
            return Err(conflict());
        };
        if applied.stream_id.is_none() {
            let _ = redis::cmd("UNWATCH").query_async::<()>(&mut conn).await;
        }
        inner.give_back(conn);
        Ok(Some(applied))
    }
}

#[async_trait]
impl<T: StorageValue> Storage<T> for GraphTransaction<T> {
    fn capabilities(&self) -> Capabilities {
        self.store.capabilities()
    }

    async fn get(&self, key: &str) -> Result<Option<T>> {
        validate_key(key)?;
        let mut tx = self.inner.lock().await;
        self.check_active(&mut tx)?;
        self.store.before(&BeforeEvent::Get { key })?;
        let value = match self.read_stored(&mut tx, key).await? {
            Some(stored) => Some(decode(&self.store.codec, &stored, "get")?),
            None => None,
        };
        self.store.after_get(key, value.is_some());
        Ok(value)
    }

    async fn set(&self, key: &str, value: &T) -> Result<()> {
        validate_key(key)?;
        let mut tx = self.inner.lock().await;
        self.check_active(&mut tx)?;
        self.check_writable()?;
        self.store.before(&BeforeEvent::Set { key, value })?;
        let value = encode(&self.store.codec, value, self.store.needs_documents())?;
        tx.ops.push(Op::Set {
            key: key.to_owned(),
            value,
        });
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let mut tx = self.inner.lock().await;
        self.check_active(&mut tx)?;
        self.check_writable()?;
        self.store.before(&BeforeEvent::Delete { key })?;
        let existed = self.read_stored(&mut tx, key).await?.is_some();
        tx.ops.push(Op::Delete {
            key: key.to_owned(),
        });
        Ok(existed)
    }

    async fn has(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let mut tx = self.inner.lock().await;
        self.check_active(&mut tx)?;
        Ok(self.read_stored(&mut tx, key).await?.is_some())
    }

    async fn clear(&self) -> Result<()> {
        let mut tx = self.inner.lock().await;
        self.check_active(&mut tx)?;
        self.check_writable()?;
        self.store.before(&BeforeEvent::Clear)?;
        tx.ops.push(Op::Clear);
        Ok(())
    }

    async fn size(&self) -> Result<u64> {
        let mut tx = self.inner.lock().await;
        self.check_active(&mut tx)?;
        let view = self.view(&mut tx).await?;
        Ok(u64::try_from(view.len()).unwrap_or(u64::MAX))
    }

    fn keys(&self) -> ResultStream<'_, String> {
        futures::stream::once(async move { self.sorted_view().await })
            .map(|r| match r {
                Ok(entries) => {
                    futures::stream::iter(entries.into_iter().map(|(k, _)| Ok(k))).boxed()
                }
                Err(e) => futures::stream::iter([Err(e)]).boxed(),
            })
            .flatten()
            .boxed()
    }

    fn values(&self) -> ResultStream<'_, T> {
        use futures::TryStreamExt;
        self.entries().map_ok(|(_, v)| v).boxed()
    }

    fn entries(&self) -> ResultStream<'_, (String, T)> {
        futures::stream::once(async move { self.sorted_view().await })
            .map(|r| match r {
                Ok(entries) => futures::stream::iter(
                    entries
                        .into_iter()
                        .map(|(k, v)| decode(&self.store.codec, &v, "iterate").map(|v| (k, v))),
                )
                .boxed(),
                Err(e) => futures::stream::iter([Err(e)]).boxed(),
            })
            .flatten()
            .boxed()
    }
}

#[async_trait]
impl<T: StorageValue> Transaction<T> for GraphTransaction<T> {
    fn id(&self) -> &str {
        &self.id
    }

    fn state(&self) -> TransactionState {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn isolation(&self) -> IsolationLevel {
        IsolationLevel::Serializable
    }

    async fn commit(&self) -> Result<()> {
        let mut tx = self.inner.lock().await;
        self.check_active(&mut tx)?;
        match self.commit_inner(&mut tx).await {
            Ok(applied) => {
                self.set_status(TransactionState::Committed);
                if let Some(applied) = applied {
                    self.store.after_commit(&applied);
                }
                Ok(())
            }
            Err(e) => {
                self.abort(&mut tx);
                Err(e.with_operation("commit"))
            }
        }
    }

    async fn rollback(&self) -> Result<()> {
        let mut tx = self.inner.lock().await;
        if self.state() != TransactionState::Active {
            return Err(aborted("transaction is no longer active"));
        }
        if let Some(mut conn) = tx.conn.take()
            && redis::cmd("UNWATCH")
                .query_async::<()>(&mut conn)
                .await
                .is_ok()
        {
            self.store.inner.give_back(conn);
        }
        self.abort(&mut tx);
        Ok(())
    }

    async fn savepoint(&self, name: &str) -> Result<()> {
        let mut tx = self.inner.lock().await;
        self.check_active(&mut tx)?;
        let position = tx.ops.len();
        tx.savepoints.retain(|(n, _)| n != name);
        tx.savepoints.push((name.to_owned(), position));
        Ok(())
    }

    async fn rollback_to(&self, name: &str) -> Result<()> {
        let mut tx = self.inner.lock().await;
        self.check_active(&mut tx)?;
        let Some(index) = tx.savepoints.iter().rposition(|(n, _)| n == name) else {
            return Err(
                StorageError::new(ErrorCode::KeyNotFound, "no such savepoint")
                    .with_backend(BACKEND)
                    .with_context("savepoint", name),
            );
        };
        let position = tx.savepoints[index].1;
        tx.ops.truncate(position);
        tx.savepoints.truncate(index + 1);
        Ok(())
    }
}

#[async_trait]
impl<T: StorageValue> TransactionalStorage<T> for GraphStorage<T> {
    async fn begin(&self, options: TransactionOptions) -> Result<Box<dyn Transaction<T>>> {
        Ok(Box::new(GraphTransaction::begin(self, options).await?))
    }
}
