//! Transactions: each open transaction owns a connection on a dedicated thread.
//!
//! A transaction starts with `BEGIN` and one read, which takes its WAL snapshot; its
//! first write takes the database's single write lock. Writers are therefore serial, and
//! a transaction whose snapshot another commit has overtaken (or whose write lock another
//! transaction holds) cannot write: SQLite answers `SQLITE_BUSY_SNAPSHOT` (or
//! `SQLITE_BUSY`), reported as a retryable `VersionConflict`. Reads from one snapshot
//! plus serial writes that must start from the latest state make every transaction
//! serializable, and that is the level reported, whatever was asked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use futures::StreamExt;
use rusqlite::{Connection, OptionalExtension, params};
use storage_core::{
    BeforeEvent, Capabilities, ErrorCode, IsolationLevel, Result, ResultStream, Storage,
    StorageError, StorageValue, Transaction, TransactionOptions, TransactionState,
    TransactionalStorage, validate_key,
};

use crate::backend::{
    Effect, SqliteStorage, WriteOp, apply_ops, capabilities, decode, run_after_hooks, write_log,
};
use crate::error::sql_err;
use crate::worker::Dedicated;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Savepoint {
    name: String,
    sql_name: String,
    effects_len: usize,
}

struct TxState {
    state: TransactionState,
    effects: Vec<Effect>,
    savepoints: Vec<Savepoint>,
    next_savepoint: u64,
}

/// An open SQLite transaction.
pub(crate) struct SqliteTransaction<T> {
    id: String,
    store: SqliteStorage<T>,
    worker: Dedicated,
    options: TransactionOptions,
    deadline: Option<Instant>,
    inner: Mutex<TxState>,
}

fn aborted(message: &'static str, operation: &'static str) -> StorageError {
    StorageError::new(ErrorCode::TransactionAborted, message)
        .with_operation(operation)
        .with_backend("sqlite")
}

impl<T: StorageValue> SqliteTransaction<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, TxState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fails unless the transaction is active and within its time-out; a time-out
    /// rolls it back first.
    async fn check(&self, operation: &'static str) -> Result<()> {
        if self.lock().state != TransactionState::Active {
            return Err(aborted("the transaction is no longer active", operation)
                .with_context("transaction", &self.id));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.finish_rollback().await;
            return Err(
                aborted("the transaction timed out and was rolled back", operation)
                    .with_context("transaction", &self.id),
            );
        }
        Ok(())
    }

    fn check_writable(&self, operation: &'static str) -> Result<()> {
        if self.options.read_only {
            return Err(StorageError::unsupported("the transaction is read-only")
                .with_operation(operation)
                .with_backend("sqlite")
                .with_context("transaction", &self.id));
        }
        Ok(())
    }

    /// Rolls back and marks the transaction aborted (errors only mean it is already gone).
    async fn finish_rollback(&self) {
        self.lock().state = TransactionState::Aborted;
        let _ = self
            .worker
            .run("rollback", |conn| {
                if !conn.is_autocommit() {
                    conn.execute_batch("ROLLBACK")
                        .map_err(sql_err("rollback"))?;
                }
                Ok(())
            })
            .await;
    }

    /// Runs a job on the transaction's connection; a conflict dooms the transaction.
    async fn run<R, F>(&self, operation: &'static str, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        self.check(operation).await?;
        let result = self.worker.run(operation, f).await.map_err(|e| {
            // The thread stops at the deadline (rolling back): a job that missed it
            // finds the thread gone.
            if e.code() == ErrorCode::ConnectionLost
                && self.deadline.is_some_and(|d| Instant::now() >= d)
            {
                self.lock().state = TransactionState::Aborted;
                aborted("the transaction timed out and was rolled back", operation)
            } else {
                e
            }
        });
        if let Err(e) = &result
            && e.code() == ErrorCode::VersionConflict
        {
            self.finish_rollback().await;
        }
        result.map_err(|e| e.with_context("transaction", &self.id))
    }

    async fn write(
        &self,
        operation: &'static str,
        ops: Vec<WriteOp>,
    ) -> Result<storage_core::BatchResult> {
        self.check_writable(operation)?;
        let table = Arc::clone(&self.store.table);
        let (result, effects) = self
            .run(operation, move |conn| {
                apply_ops(conn, &table.sql, ops, true).map_err(|e| {
                    // SQLite does not wait for the write lock when a transaction that
                    // already reads a snapshot wants to write (waiting could deadlock,
                    // and the snapshot will be stale once the other writer commits):
                    // that is a conflict with a concurrent writer, worth a retry.
                    if e.code() == ErrorCode::Backend && e.is_retryable() && !conn.is_autocommit() {
                        StorageError::new(
                            ErrorCode::VersionConflict,
                            "another transaction holds the write lock and this one already reads a snapshot",
                        )
                        .with_operation(operation)
                        .with_backend("sqlite")
                        .set_retryable(true)
                        .with_source(e)
                    } else {
                        e
                    }
                })
            })
            .await?;
        self.lock().effects.extend(effects);
        Ok(result)
    }

    fn collect_rows<I: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Connection, &crate::sql::TableSql) -> Result<Vec<I>> + Send + 'static,
    ) -> ResultStream<'_, I> {
        let table = Arc::clone(&self.store.table);
        futures::stream::once(self.run(operation, move |conn| f(conn, &table.sql)))
            .flat_map(|r| match r {
                Ok(rows) => futures::stream::iter(rows.into_iter().map(Ok)).boxed(),
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            })
            .boxed()
    }
}

#[async_trait::async_trait]
impl<T: StorageValue> Storage<T> for SqliteTransaction<T> {
    fn capabilities(&self) -> Capabilities {
        capabilities(&self.store.db.config, self.store.table.change_log)
    }

    async fn get(&self, key: &str) -> Result<Option<T>> {
        validate_key(key)?;
        if self.store.hub.has_before_hooks() {
            self.store.hub.before(&BeforeEvent::Get { key })?;
        }
        let table = Arc::clone(&self.store.table);
        let owned = key.to_owned();
        self.run("get", move |conn| {
            let json: Option<String> = conn
                .prepare_cached(&table.sql.get)
                .and_then(|mut s| s.query_row(params![owned], |r| r.get(0)).optional())
                .map_err(sql_err("get"))?;
            json.map(|j| decode::<T>(&j)).transpose()
        })
        .await
    }

    async fn set(&self, key: &str, value: &T) -> Result<()> {
        self.check_writable("set")?;
        let op = self.store.prepare_set(key, value)?;
        self.write("set", vec![op]).await.map(|_| ())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        self.check_writable("delete")?;
        if self.store.hub.has_before_hooks() {
            self.store.hub.before(&BeforeEvent::Delete { key })?;
        }
        let r = self
            .write(
                "delete",
                vec![WriteOp::Delete {
                    key: key.to_owned(),
                }],
            )
            .await?;
        Ok(r.deleted > 0)
    }

    async fn has(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let table = Arc::clone(&self.store.table);
        let owned = key.to_owned();
        self.run("has", move |conn| {
            conn.prepare_cached(&table.sql.has)
                .and_then(|mut s| s.exists(params![owned]))
                .map_err(sql_err("has"))
        })
        .await
    }

    async fn clear(&self) -> Result<()> {
        self.check_writable("clear")?;
        if self.store.hub.has_before_hooks() {
            self.store.hub.before(&BeforeEvent::Clear)?;
        }
        self.write("clear", vec![WriteOp::Clear]).await.map(|_| ())
    }

    async fn size(&self) -> Result<u64> {
        let table = Arc::clone(&self.store.table);
        self.run("size", move |conn| {
            let n: i64 = conn
                .prepare_cached(&table.sql.count)
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(sql_err("size"))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    fn keys(&self) -> ResultStream<'_, String> {
        self.collect_rows("keys", |conn, sql| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT key FROM {} ORDER BY key", sql.table))
                .map_err(sql_err("keys"))?;
            stmt.query_map([], |r| r.get(0))
                .and_then(Iterator::collect)
                .map_err(sql_err("keys"))
        })
    }

    fn values(&self) -> ResultStream<'_, T> {
        self.entries().map(|r| r.map(|(_, v)| v)).boxed()
    }

    fn entries(&self) -> ResultStream<'_, (String, T)> {
        self.collect_rows("entries", |conn, sql| {
            let mut stmt = conn
                .prepare_cached(&sql.all_entries)
                .map_err(sql_err("entries"))?;
            let rows: Vec<(String, String)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(Iterator::collect)
                .map_err(sql_err("entries"))?;
            rows.into_iter()
                .map(|(k, json)| Ok((k, decode::<T>(&json)?)))
                .collect()
        })
    }
}

#[async_trait::async_trait]
impl<T: StorageValue> Transaction<T> for SqliteTransaction<T> {
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
        self.check("commit").await?;
        let effects = std::mem::take(&mut self.lock().effects);
        let table = Arc::clone(&self.store.table);
        let hub = Arc::clone(&self.store.hub);
        let observer = Arc::clone(&self.store.observer);
        let db = Arc::clone(&self.store.db);
        let outcome = self
            .worker
            .run("commit", move |conn| {
                let mut order = None;
                let committed = (|| {
                    let logged = if table.change_log && !effects.is_empty() {
                        write_log(conn, &table.name, &effects, db.legacy_log)?
                    } else {
                        None
                    };
                    if !effects.is_empty() && table.bus.listening() {
                        order = Some(table.bus.order());
                    }
                    conn.execute_batch("COMMIT").map_err(sql_err("commit"))?;
                    Ok(logged)
                })();
                let logged = match committed {
                    Ok(logged) => logged,
                    Err(e) => {
                        drop(order);
                        if !conn.is_autocommit() {
                            let _ = conn.execute_batch("ROLLBACK");
                        }
                        return Err(e);
                    }
                };
                if table.change_log {
                    observer.after_commit(conn, logged);
                }
                run_after_hooks(&hub, &effects);
                if let Some(order) = order.as_mut() {
                    table.bus.publish(order, &effects);
                }
                Ok(())
            })
            .await;
        let mut inner = self.lock();
        inner.state = if outcome.is_ok() {
            TransactionState::Committed
        } else {
            TransactionState::Aborted
        };
        outcome.map_err(|e| e.with_context("transaction", &self.id))
    }

    async fn rollback(&self) -> Result<()> {
        if self.lock().state != TransactionState::Active {
            return Err(aborted("the transaction is no longer active", "rollback")
                .with_context("transaction", &self.id));
        }
        self.finish_rollback().await;
        Ok(())
    }

    async fn savepoint(&self, name: &str) -> Result<()> {
        self.check("savepoint").await?;
        let (sql_name, effects_len) = {
            let mut inner = self.lock();
            inner.next_savepoint += 1;
            (format!("sp{}", inner.next_savepoint), inner.effects.len())
        };
        let stmt = format!("SAVEPOINT {sql_name}");
        self.run("savepoint", move |conn| {
            conn.execute_batch(&stmt).map_err(sql_err("savepoint"))
        })
        .await?;
        let mut inner = self.lock();
        // Reusing a name moves it: the older mark stops being reachable by name.
        inner.savepoints.retain(|s| s.name != name);
        inner.savepoints.push(Savepoint {
            name: name.to_owned(),
            sql_name,
            effects_len,
        });
        Ok(())
    }

    async fn rollback_to(&self, name: &str) -> Result<()> {
        self.check("rollback_to").await?;
        let Some((pos, sql_name, effects_len)) = ({
            let inner = self.lock();
            inner
                .savepoints
                .iter()
                .rposition(|s| s.name == name)
                .map(|i| {
                    (
                        i,
                        inner.savepoints[i].sql_name.clone(),
                        inner.savepoints[i].effects_len,
                    )
                })
        }) else {
            return Err(
                StorageError::new(ErrorCode::KeyNotFound, "no savepoint by that name")
                    .with_operation("rollback_to")
                    .with_backend("sqlite")
                    .with_context("savepoint", name.escape_debug()),
            );
        };
        let stmt = format!("ROLLBACK TO {sql_name}");
        self.run("rollback_to", move |conn| {
            conn.execute_batch(&stmt).map_err(sql_err("rollback_to"))
        })
        .await?;
        let mut inner = self.lock();
        inner.savepoints.truncate(pos + 1);
        inner.effects.truncate(effects_len);
        Ok(())
    }
}

#[async_trait::async_trait]
impl<T: StorageValue> TransactionalStorage<T> for SqliteStorage<T> {
    async fn begin(&self, options: TransactionOptions) -> Result<Box<dyn Transaction<T>>> {
        let db_open = Arc::clone(&self.db);
        let db_exit = Arc::clone(&self.db);
        let read_only = options.read_only;
        let deadline = options.timeout.map(|t| Instant::now() + t);
        let worker = Dedicated::start(
            self.db.config.common.debug,
            deadline,
            move || {
                let conn = db_open.take_tx_connection()?;
                if read_only {
                    conn.pragma_update(None, "query_only", true)
                        .map_err(sql_err("begin"))?;
                }
                // Reading once takes the WAL snapshot now: the transaction sees the
                // database as of `begin`, and cannot write over a commit made since.
                conn.execute_batch("BEGIN DEFERRED; SELECT 1 FROM sqlite_schema LIMIT 1;")
                    .map_err(sql_err("begin"))?;
                Ok(conn)
            },
            move |conn| {
                let clean = (conn.is_autocommit() || conn.execute_batch("ROLLBACK").is_ok())
                    && conn.pragma_update(None, "query_only", false).is_ok();
                if clean {
                    db_exit.return_tx_connection(conn);
                }
            },
        )
        .await?;
        let id = format!("sqlite-tx-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
        Ok(Box::new(SqliteTransaction {
            id,
            store: self.clone(),
            worker,
            options,
            deadline,
            inner: Mutex::new(TxState {
                state: TransactionState::Active,
                effects: Vec::new(),
                savepoints: Vec::new(),
                next_savepoint: 0,
            }),
        }))
    }
}
