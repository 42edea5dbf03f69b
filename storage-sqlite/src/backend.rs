//! `SqliteStorage<T>`: the store, its connection threads, and its tier impls.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use storage_core::codec::{Codec, Header};
use storage_core::{
    AfterEvent, BatchResult, BatchStorage, BeforeEvent, Capabilities, Change, ChangeKind,
    ErrorCode, EventHub, IndexKind, IsolationLevel, Operation, Result, ResultStream, Storage,
    StorageError, StorageValue, Tier, validate_key,
};

use crate::config::{SqliteConfig, validate_config};
use crate::error::sql_err;
use crate::index::IndexCatalog;
use crate::observe::TableBus;
use crate::rows::{RowText, decode_stored};
use crate::sql::{PAGE_ROWS, SHARED_SCHEMA, TableSql};
use crate::worker::{
    InlineReaders, Workers, Writer, answer, is_busy, is_busy_error, open_connection,
};

/// The largest value SQLite stores by default (`SQLITE_MAX_LENGTH`).
pub(crate) const MAX_VALUE_LEN: usize = 1_000_000_000;

/// One database file: its connection threads, shared by every table handle on it.
pub(crate) struct Database {
    pub(crate) config: SqliteConfig,
    pub(crate) path: PathBuf,
    pub(crate) writer: Writer,
    pub(crate) readers: Workers,
    /// Connections for bounded point reads on the calling thread (none without WAL).
    pub(crate) inline: Arc<InlineReaders>,
    /// Connections of finished transactions, kept for the next ones.
    pub(crate) idle_tx: Mutex<Vec<Connection>>,
    /// Whether the file's change log is the older `AUTOINCREMENT` table.
    pub(crate) legacy_log: bool,
    /// The file's canonical path: handles on one file and table in this process share
    /// a [`TableBus`] under it.
    pub(crate) canonical: PathBuf,
    /// Keeps the private file of a `:memory:` database; dropped after the threads.
    _temp: Option<tempfile::TempDir>,
}

impl Database {
    /// Opens (creating if needed) the file and starts its threads. Blocking: run on a
    /// thread of its own.
    fn open_blocking(config: SqliteConfig) -> Result<Self> {
        let (path, temp) = if config.is_memory() {
            let dir = tempfile::Builder::new()
                .prefix("storage-sqlite-")
                .tempdir()
                .map_err(|e| {
                    StorageError::from(e)
                        .with_operation("open")
                        .with_backend("sqlite")
                })?;
            (dir.path().join("memory.sqlite"), Some(dir))
        } else {
            (PathBuf::from(&config.database), None)
        };
        let writer = open_connection(&path, &config, false)?;
        let err = |e| sql_err("open")(e).with_context("database", path.display());
        let mode = if config.wal { "WAL" } else { "DELETE" };
        let _: String = writer
            .query_row(&format!("PRAGMA journal_mode = {mode}"), [], |r| r.get(0))
            .map_err(err)?;
        if config.integrity_check_on_open {
            integrity_check(&writer).map_err(|e| e.with_context("database", path.display()))?;
        }
        writer.execute_batch(SHARED_SCHEMA).map_err(err)?;
        let legacy_log = writer
            .prepare(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_storage_changes' \
                 AND sql LIKE '%AUTOINCREMENT%'",
            )
            .and_then(|mut s| s.exists([]))
            .map_err(err)?;
        let mut readers = Vec::with_capacity(config.read_pool_size);
        for _ in 0..config.read_pool_size {
            readers.push(open_connection(&path, &config, true)?);
        }
        Ok(Self {
            writer: Writer::spawn(writer, &path, &config)?,
            readers: Workers::spawn("sqlite-reader", readers, config.common.debug)?,
            // Without WAL a reader waits for the writer: every read then goes to a thread.
            inline: Arc::new(InlineReaders::new(if config.wal {
                config.read_pool_size
            } else {
                0
            })),
            idle_tx: Mutex::new(Vec::new()),
            legacy_log,
            canonical: std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone()),
            config,
            path,
            _temp: temp,
        })
    }

    /// A connection for a transaction: an idle one, or a new one.
    pub(crate) fn take_tx_connection(&self) -> Result<Connection> {
        let idle = self
            .idle_tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => open_connection(&self.path, &self.config, false),
        }
    }

    /// Returns a transaction's connection (rolled back, writable) for reuse.
    pub(crate) fn return_tx_connection(&self, conn: Connection) {
        let mut idle = self.idle_tx.lock().unwrap_or_else(PoisonError::into_inner);
        // A few idle connections cover bursts; more would only hold file descriptors.
        if idle.len() < 8 {
            idle.push(conn);
        }
    }
}

/// Runs `PRAGMA integrity_check`, `Corrupted` unless it answers `ok`.
pub(crate) fn integrity_check(conn: &Connection) -> Result<()> {
    let answer: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(sql_err("integrity_check"))?;
    if answer == "ok" {
        Ok(())
    } else {
        Err(
            StorageError::new(ErrorCode::Corrupted, "integrity check failed")
                .with_operation("integrity_check")
                .with_backend("sqlite")
                .with_context("detail", answer),
        )
    }
}

/// One table on a database: its statements and index catalog.
pub(crate) struct Table {
    pub(crate) name: String,
    pub(crate) sql: TableSql,
    pub(crate) change_log: bool,
    pub(crate) indexes: IndexCatalog,
    /// Publishes commits to the handles in this process that watch without the log.
    pub(crate) bus: Arc<TableBus>,
}

/// A store on one table of a SQLite database.
///
/// Cloning is cheap and gives another handle on the same table, sharing threads and hooks.
pub struct SqliteStorage<T> {
    pub(crate) db: Arc<Database>,
    pub(crate) table: Arc<Table>,
    pub(crate) hub: Arc<EventHub<T>>,
    pub(crate) observer: Arc<crate::observe::Observer<T>>,
    pub(crate) codec: Arc<Codec<T>>,
}

impl<T> Clone for SqliteStorage<T> {
    fn clone(&self) -> Self {
        Self {
            codec: Arc::clone(&self.codec),
            db: Arc::clone(&self.db),
            table: Arc::clone(&self.table),
            hub: Arc::clone(&self.hub),
            observer: Arc::clone(&self.observer),
        }
    }
}

impl<T> std::fmt::Debug for SqliteStorage<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage")
            .field("database", &self.db.config.database)
            .field("table", &self.table.name)
            .finish_non_exhaustive()
    }
}

/// A write, encoded and validated, ready for a connection thread.
#[derive(Clone)]
pub(crate) enum WriteOp {
    Set { key: String, json: String },
    Delete { key: String },
    Clear,
}

/// What a write did, as change events and the change log need it.
pub(crate) enum Effect {
    Set { key: String, json: String },
    Delete { key: String, old: Option<String> },
    Clear { removed: Vec<(String, String)> },
}

/// Encodes a value as the JSON text stored in the `value` column, through the
/// codec's strict JSON writer (no intermediate document; NaN, infinities and 128-bit
/// integers out of range are refused with `InvalidValue`).
pub(crate) fn encode<T: StorageValue>(codec: &Codec<T>, value: &T) -> Result<String> {
    encode_with(codec, value, &mut Vec::with_capacity(512))
}

/// [`encode`] through a scratch buffer the caller reuses from value to value, so each
/// value costs one allocation of its exact size.
pub(crate) fn encode_with<T: StorageValue>(
    codec: &Codec<T>,
    value: &T,
    scratch: &mut Vec<u8>,
) -> Result<String> {
    scratch.clear();
    codec.encode_into(value, scratch)?;
    let body = Header::parse(scratch)?.1;
    if body.len() > MAX_VALUE_LEN {
        return Err(StorageError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "encoded value is {} bytes, the limit is {MAX_VALUE_LEN}",
                body.len()
            ),
        ));
    }
    std::str::from_utf8(body).map(str::to_owned).map_err(|e| {
        StorageError::new(ErrorCode::SerializationFailed, "json encoding is not utf-8")
            .with_source(e)
    })
}

/// Decodes the stored JSON text of a value.
pub(crate) fn decode<T: StorageValue>(json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| {
        StorageError::new(
            ErrorCode::SerializationFailed,
            format!("stored value does not fit the value type: {e}"),
        )
        .with_backend("sqlite")
        .with_context("type", std::any::type_name::<T>())
        .with_source(e)
    })
}

/// Runs `ops` on `conn` inside whatever transaction the caller opened.
///
/// With `track`, the returned effects carry what change events need (old values,
/// the keys a clear removed); without it they carry only what counting needs.
pub(crate) fn apply_ops(
    conn: &Connection,
    sql: &TableSql,
    ops: Vec<WriteOp>,
    track: bool,
) -> Result<(BatchResult, Vec<Effect>)> {
    let mut result = BatchResult::default();
    let mut effects = Vec::with_capacity(if track { ops.len() } else { 0 });
    // Taken from the cache once per batch rather than once per entry.
    let mut upsert: Option<rusqlite::CachedStatement<'_>> = None;
    for op in ops {
        match op {
            WriteOp::Set { key, json } => {
                let stmt = match &mut upsert {
                    Some(stmt) => stmt,
                    None => {
                        upsert.insert(conn.prepare_cached(&sql.upsert).map_err(sql_err("set"))?)
                    }
                };
                stmt.execute(params![key, json])
                    .map_err(|e| sql_err("set")(e).with_context("key", key.escape_debug()))?;
                if track {
                    effects.push(Effect::Set { key, json });
                }
            }
            WriteOp::Delete { key } => {
                let existed = if track {
                    let old: Option<String> = conn
                        .prepare_cached(&sql.delete_returning)
                        .and_then(|mut s| s.query_row(params![key], |r| r.get(0)).optional())
                        .map_err(sql_err("delete"))?;
                    let existed = old.is_some();
                    effects.push(Effect::Delete { key, old });
                    existed
                } else {
                    conn.prepare_cached(&sql.delete)
                        .and_then(|mut s| s.execute(params![key]))
                        .map_err(sql_err("delete"))?
                        > 0
                };
                result.deleted += usize::from(existed);
            }
            WriteOp::Clear => {
                if track {
                    let mut stmt = conn
                        .prepare_cached(&sql.clear_returning)
                        .map_err(sql_err("clear"))?;
                    let removed = stmt
                        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                        .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
                        .map_err(sql_err("clear"))?;
                    result.cleared += removed.len();
                    effects.push(Effect::Clear { removed });
                } else {
                    result.cleared += conn
                        .prepare_cached(&sql.clear)
                        .and_then(|mut s| s.execute([]))
                        .map_err(sql_err("clear"))?;
                }
            }
        }
        result.operations += 1;
    }
    Ok((result, effects))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// Where a commit landed in the change log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Logged {
    /// The commit's sequence number: the `seq` of its first change.
    pub(crate) commit: u64,
    /// The `seq` of its last change.
    pub(crate) last: u64,
}

/// Appends `effects` to the change log in the caller's transaction (which holds the
/// write lock); `None` when nothing changed.
/// With `legacy`, the file's log is the older `AUTOINCREMENT` one.
pub(crate) fn write_log(
    conn: &Connection,
    table: &str,
    effects: &[Effect],
    legacy: bool,
) -> Result<Option<Logged>> {
    let err = sql_err("change_log");
    let mut commit: Option<i64> = None;
    let at = now_ms();
    let mut last: Option<i64> = None;
    let mut insert = |kind: i64, key: &str, value: Option<&str>| -> Result<()> {
        let seq = if let Some(last) = last {
            last + 1
        } else {
            // The write lock is held, so the next number is known and stays so. Trims
            // leave the largest number they removed under the name '' in the horizon
            // table; files with the older `AUTOINCREMENT` log keep one in
            // `sqlite_sequence`.
            let next: i64 = conn
                .prepare_cached(
                    "SELECT max(IFNULL((SELECT MAX(seq) FROM _storage_changes), 0), \
                     IFNULL((SELECT trimmed_through FROM _storage_log_horizon WHERE tbl = ''), 0)) + 1",
                )
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(&err)?;
            let seq = if legacy {
                let mark: i64 = conn
                    .prepare_cached(
                        "SELECT IFNULL((SELECT seq FROM sqlite_sequence \
                         WHERE name = '_storage_changes'), 0) + 1",
                    )
                    .and_then(|mut s| s.query_row([], |r| r.get(0)))
                    .map_err(&err)?;
                next.max(mark)
            } else {
                next
            };
            commit = Some(seq);
            seq
        };
        last = Some(seq);
        let cs = commit.unwrap_or(seq);
        conn.prepare_cached(
            "INSERT INTO _storage_changes (seq, commit_seq, tbl, kind, key, value, at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut s| s.execute(params![seq, cs, table, kind, key, value, at]))
        .map_err(&err)?;
        Ok(())
    };
    for effect in effects {
        match effect {
            Effect::Set { key, json } => insert(0, key, Some(json))?,
            Effect::Delete { key, old } => {
                if old.is_some() {
                    insert(1, key, None)?;
                }
            }
            Effect::Clear { removed } => {
                for (key, _) in removed {
                    insert(1, key, None)?;
                }
            }
        }
    }
    let (Some(cs), Some(last)) = (commit, last) else {
        return Ok(None);
    };
    let to_u64 = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Some(Logged {
        commit: to_u64(cs),
        last: to_u64(last),
    }))
}

/// Runs the after-hooks of committed `effects`.
pub(crate) fn run_after_hooks<T: StorageValue>(hub: &EventHub<T>, effects: &[Effect]) {
    if !hub.has_after_hooks() {
        return;
    }
    for effect in effects {
        match effect {
            Effect::Set { key, json } => {
                if let Ok(value) = decode::<T>(json) {
                    hub.after(&AfterEvent::Set { key, value: &value });
                }
            }
            Effect::Delete { key, old } => hub.after(&AfterEvent::Delete {
                key,
                existed: old.is_some(),
            }),
            Effect::Clear { removed } => hub.after(&AfterEvent::Clear {
                removed: u64::try_from(removed.len()).unwrap_or(u64::MAX),
            }),
        }
    }
}

/// The changes of committed `effects`, values decoded as `T`.
pub(crate) fn change_list<T: StorageValue>(effects: &[Effect]) -> Vec<Change<T>> {
    let timestamp = SystemTime::now();
    let value_of = |json: &str| decode::<T>(json).ok().map(Arc::new);
    let mut changes = Vec::new();
    for effect in effects {
        match effect {
            Effect::Set { key, json } => changes.push(Change {
                kind: ChangeKind::Set,
                key: key.clone(),
                old_value: None,
                new_value: value_of(json),
                timestamp,
            }),
            Effect::Delete { key, old } => {
                if let Some(old) = old {
                    changes.push(Change {
                        kind: ChangeKind::Delete,
                        key: key.clone(),
                        old_value: value_of(old),
                        new_value: None,
                        timestamp,
                    });
                }
            }
            Effect::Clear { removed } => {
                for (key, old) in removed {
                    changes.push(Change {
                        kind: ChangeKind::Delete,
                        key: key.clone(),
                        old_value: value_of(old),
                        new_value: None,
                        timestamp,
                    });
                }
            }
        }
    }
    changes
}

/// The most operations a write runs on the calling thread (see [`Writer`]): a write's
/// cost grows with its operations, and only bounded ones run there.
const INLINE_WRITE_OPS: usize = 16;

/// Applies `ops` atomically on the writer connection, then runs after-hooks and
/// publishes the change batch (in commit order: the caller holds the connection).
/// A single untracked operation is one autocommit statement; anything else runs in a
/// `BEGIN IMMEDIATE` transaction, so a busy write lock fails before anything is
/// written.
fn apply_write<T: StorageValue>(
    conn: &mut Connection,
    to: &WriteTarget<'_, T>,
    operation: &'static str,
    ops: Vec<WriteOp>,
) -> Result<BatchResult> {
    let single = ops.len() == 1 && !matches!(ops[0], WriteOp::Clear);
    let publish = to.table.bus.listening();
    let track = publish || to.table.change_log || to.hub.has_after_hooks();
    if single && !track {
        // One statement is its own transaction: no BEGIN/COMMIT round trip.
        return apply_ops(conn, &to.table.sql, ops, false).map(|(result, _)| result);
    }
    apply_chunks(conn, to, operation, std::iter::once(Ok(ops)))
}

/// Where a write goes besides the writer connection: the table, the hooks and
/// subscriptions told of it, the observer of other handles' changes, and the change
/// log's layout.
struct WriteTarget<'a, T> {
    table: &'a Table,
    hub: &'a EventHub<T>,
    observer: &'a crate::observe::Observer<T>,
    /// Whether the file's change log is the older `AUTOINCREMENT` table.
    legacy_log: bool,
}

/// Applies the operations of `chunks`, in order, in one `BEGIN IMMEDIATE`
/// transaction, then runs after-hooks and publishes the change batch (see
/// [`apply_write`]). A chunk that is an error rolls everything back.
fn apply_chunks<T: StorageValue>(
    conn: &mut Connection,
    to: &WriteTarget<'_, T>,
    operation: &'static str,
    chunks: impl Iterator<Item = Result<Vec<WriteOp>>>,
) -> Result<BatchResult> {
    let (table, hub, observer, legacy_log) = (to.table, to.hub, to.observer, to.legacy_log);
    let publish = table.bus.listening();
    let track = publish || table.change_log || hub.has_after_hooks();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_err(operation))?;
    let mut result = BatchResult::default();
    let mut effects = Vec::new();
    for chunk in chunks {
        let (done, mut applied) = apply_ops(&tx, &table.sql, chunk?, track)?;
        result.operations += done.operations;
        result.deleted += done.deleted;
        result.cleared += done.cleared;
        effects.append(&mut applied);
    }
    let logged = if table.change_log {
        write_log(&tx, &table.name, &effects, legacy_log)?
    } else {
        None
    };
    let mut order = publish.then(|| table.bus.order());
    tx.commit().map_err(sql_err(operation))?;
    if table.change_log {
        observer.after_commit(conn, logged);
    }
    run_after_hooks(hub, &effects);
    if let Some(order) = order.as_mut() {
        table.bus.publish(order, &effects);
    }
    Ok(result)
}

/// Batches of at least this many entries are encoded while the writer thread applies
/// them (see `set_many`).
const PIPELINE_ENTRIES: usize = 4096;

/// Entries per chunk sent to the writer thread by a pipelined `set_many`.
const PIPELINE_CHUNK: usize = 1024;

/// A chunk of a pipelined write, or its end.
enum Chunk {
    Ops(Vec<WriteOp>),
    Done,
}

/// The most keys a `get_many` reads on the calling thread (see [`InlineReaders`]).
const INLINE_GET_MANY: usize = 32;

/// Reads and decodes the value under `key`: `Ok(None)` when absent; the inner result
/// is the decoding's.
fn read_one<T: StorageValue>(
    conn: &Connection,
    sql: &TableSql,
    key: &str,
) -> rusqlite::Result<Option<Result<T>>> {
    let mut stmt = conn.prepare_cached(&sql.get)?;
    let mut rows = stmt.query(params![key])?;
    match rows.next()? {
        Some(row) => {
            let json = row.get_ref(0)?.as_str()?;
            Ok(Some(decode::<T>(json)))
        }
        None => Ok(None),
    }
}

/// Reads and decodes the values under `keys` from one snapshot; the inner result is the
/// decoding's.
fn read_many<T: StorageValue>(
    conn: &Connection,
    sql: &TableSql,
    keys: &[String],
) -> rusqlite::Result<Result<BTreeMap<String, T>>> {
    // One read transaction: every key is read from the same snapshot.
    let tx = conn.unchecked_transaction()?;
    let mut out = BTreeMap::new();
    {
        let mut stmt = tx.prepare_cached(&sql.get)?;
        for key in keys {
            let mut rows = stmt.query(params![key])?;
            if let Some(row) = rows.next()? {
                let json = row.get_ref(0)?.as_str()?;
                match decode::<T>(json) {
                    Ok(value) => {
                        out.insert(key.clone(), value);
                    }
                    Err(e) => return Ok(Err(e.with_context("key", key.escape_debug()))),
                }
            }
        }
    }
    tx.finish()?;
    Ok(Ok(out))
}

impl<T: StorageValue> SqliteStorage<T> {
    /// Runs the bounded point read `f` on the calling thread with an idle inline
    /// connection; `None` when the read must go to a reader thread (none idle, or a
    /// lock was not free). When none was idle the pool is asked to grow, on a reader
    /// thread.
    fn read_inline<R>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Option<Result<R>> {
        match self.with_inline_reader(operation, f)? {
            Err(e) if is_busy(&e) => None,
            out => Some(out.map_err(sql_err(operation))),
        }
    }

    /// Runs the bounded read `f` on the calling thread, as [`Self::read_inline`] does;
    /// `f` answers `Ok(None)` when the read turns out not to be bounded (nothing was
    /// returned then), and the caller sends it to a reader thread, as it does when no
    /// connection is idle or a lock was not free.
    pub(crate) fn read_inline_bounded<R>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Connection) -> Result<Option<R>>,
    ) -> Option<Result<R>> {
        match self.with_inline_reader(operation, f)? {
            Ok(None) => None,
            Err(e) if is_busy_error(&e) => None,
            out => out.transpose(),
        }
    }

    /// Runs `f` with an idle inline connection; `None` when none is idle (the pool is
    /// then asked to grow, on a reader thread).
    fn with_inline_reader<R>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Connection) -> R,
    ) -> Option<R> {
        let inline = &self.db.inline;
        let Some(conn) = inline.take() else {
            if inline.wants_more() {
                let inline = Arc::clone(inline);
                let (path, config) = (self.db.path.clone(), self.db.config.clone());
                // Queued behind the read that falls back; a failure to queue only means
                // the pool stays smaller.
                let _ = self.db.readers.submit(Box::new(move |_| {
                    inline.grow(&path, &config);
                    Box::new(|| {})
                }));
            }
            return None;
        };
        let span = storage_core::trace::op_span(self.db.config.common.debug, "sqlite", operation);
        let out = span.in_scope(|| f(&conn));
        inline.give(conn);
        Some(out)
    }
}

impl<T: StorageValue> SqliteStorage<T> {
    /// Opens (creating if needed) the database and the table named in `config`.
    ///
    /// # Errors
    /// `InvalidConfig` for a bad configuration ([`crate::validate_config`]); `Corrupted`
    /// when the file is not a database or fails the integrity check asked for; `Io`
    /// when it cannot be opened.
    pub async fn open(config: SqliteConfig) -> Result<Self> {
        validate_config(&config)?;
        let table_name = config.table_name.clone();
        let change_log = config.change_log;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("sqlite-open".to_owned())
            .spawn(move || {
                let _ = tx.send(Database::open_blocking(config));
            })
            .map_err(|e| {
                StorageError::from(e)
                    .with_operation("open")
                    .with_backend("sqlite")
            })?;
        let db = rx.await.map_err(|_| crate::worker::closed("open"))??;
        Self::on_database(Arc::new(db), table_name, change_log).await
    }

    /// Another handle on the same database (the same file, or the same private
    /// `:memory:` database), on another table and possibly another value type.
    ///
    /// # Errors
    /// `InvalidConfig` for a bad table name; backend errors.
    pub async fn table<U: StorageValue>(&self, table_name: &str) -> Result<SqliteStorage<U>> {
        crate::config::validate_identifier(table_name)?;
        SqliteStorage::<U>::on_database(
            Arc::clone(&self.db),
            table_name.to_owned(),
            self.table.change_log,
        )
        .await
    }

    async fn on_database(db: Arc<Database>, table_name: String, change_log: bool) -> Result<Self> {
        let sql = TableSql::new(&table_name);
        let create = sql.create.clone();
        let name = table_name.clone();
        db.writer
            .run("open", move |conn| {
                conn.execute_batch(&create)
                    .map_err(|e| sql_err("open")(e).with_context("table", name))
            })
            .await?;
        let bus = TableBus::of(&db.canonical, &table_name);
        let table = Arc::new(Table {
            name: table_name,
            sql,
            change_log,
            indexes: IndexCatalog::new(),
            bus,
        });
        let hub = Arc::new(EventHub::new());
        if !change_log {
            table.bus.join(&hub);
        }
        let observer = Arc::new(crate::observe::Observer::new(
            Arc::clone(&db),
            Arc::clone(&table),
            Arc::clone(&hub),
        ));
        if change_log {
            // Start watching from the current end of the log: only changes from now on.
            let start = db.readers.run("open", crate::observe::log_end_of).await?;
            observer.start_at(start);
        }
        let codec = Arc::new(
            Codec::new(&db.config.common.serialization)
                .map_err(|e| e.with_operation("open").with_backend("sqlite"))?,
        );
        Ok(Self {
            db,
            table,
            hub,
            observer,
            codec,
        })
    }

    /// The configuration the database was opened with (for a handle from
    /// [`SqliteStorage::table`], the first handle's, with its table name).
    pub fn config(&self) -> &SqliteConfig {
        &self.db.config
    }

    /// This handle's table name.
    pub fn table_name(&self) -> &str {
        &self.table.name
    }

    /// Runs `PRAGMA integrity_check` now.
    ///
    /// # Errors
    /// `Corrupted` unless SQLite answers `ok`.
    pub async fn integrity_check(&self) -> Result<()> {
        self.db
            .readers
            .run("integrity_check", |conn| integrity_check(conn))
            .await
    }

    fn before(&self, event: &BeforeEvent<'_, T>) -> Result<()> {
        if self.hub.has_before_hooks() {
            self.hub.before(event)?;
        }
        Ok(())
    }

    /// Validates, runs before-hooks on and encodes a set.
    pub(crate) fn prepare_set(&self, key: &str, value: &T) -> Result<WriteOp> {
        validate_key(key)?;
        self.before(&BeforeEvent::Set { key, value })?;
        let json = encode(&self.codec, value).map_err(|e| {
            e.with_operation("set")
                .with_backend("sqlite")
                .with_context("key", key.escape_debug())
        })?;
        Ok(WriteOp::Set {
            key: key.to_owned(),
            json,
        })
    }

    /// Validates, runs before-hooks on and encodes one operation.
    pub(crate) fn prepare_op(&self, op: &Operation<T>) -> Result<WriteOp> {
        match op {
            Operation::Set { key, value } => self.prepare_set(key, value),
            Operation::Delete { key } => {
                validate_key(key)?;
                self.before(&BeforeEvent::Delete { key })?;
                Ok(WriteOp::Delete { key: key.clone() })
            }
            Operation::Clear => {
                self.before(&BeforeEvent::Clear)?;
                Ok(WriteOp::Clear)
            }
        }
    }

    /// Runs before-hooks on and encodes entry `i` of a `set_many`.
    fn encode_entry(
        &self,
        i: usize,
        key: String,
        value: &T,
        scratch: &mut Vec<u8>,
    ) -> Result<WriteOp> {
        self.before(&BeforeEvent::Set { key: &key, value })?;
        let json = encode_with(&self.codec, value, scratch).map_err(|e| {
            e.with_operation("set_many")
                .with_context("index", i)
                .with_context("key", key.escape_debug())
        })?;
        Ok(WriteOp::Set { key, json })
    }

    /// A large `set_many`: the writer thread opens the transaction and applies chunks
    /// as this task encodes them, so encoding and writing overlap instead of adding up.
    /// The channel is unbounded, so the caller never waits for the writer (it holds no
    /// more than the unpipelined path, which encodes everything first). A failure to
    /// encode, or this future being dropped, ends the stream without its `Done`, and
    /// the writer rolls the transaction back: nothing is applied.
    async fn set_many_pipelined(&self, entries: Vec<(String, T)>) -> Result<()> {
        let operation = "set_many";
        let (sender, chunks) = std::sync::mpsc::channel::<Chunk>();
        let table = Arc::clone(&self.table);
        let hub = Arc::clone(&self.hub);
        let observer = Arc::clone(&self.observer);
        let legacy_log = self.db.legacy_log;
        let answer = self.db.writer.send(operation, move |conn| {
            let stream = std::iter::from_fn(|| match chunks.recv() {
                Ok(Chunk::Ops(ops)) => Some(Ok(ops)),
                Ok(Chunk::Done) => None,
                Err(_) => Some(Err(StorageError::new(
                    ErrorCode::Backend,
                    "the batch was abandoned before all of it was encoded",
                )
                .with_operation(operation)
                .with_backend("sqlite"))),
            });
            let to = WriteTarget {
                table: &table,
                hub: &hub,
                observer: &observer,
                legacy_log,
            };
            apply_chunks(conn, &to, operation, stream)
        })?;
        let mut scratch = Vec::with_capacity(512);
        let mut chunk = Vec::with_capacity(PIPELINE_CHUNK);
        let mut encoded = Ok(());
        for (i, (key, value)) in entries.into_iter().enumerate() {
            match self.encode_entry(i, key, &value, &mut scratch) {
                Ok(op) => chunk.push(op),
                Err(e) => {
                    encoded = Err(e);
                    break;
                }
            }
            if chunk.len() == PIPELINE_CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(PIPELINE_CHUNK));
                // A closed channel means the writer stopped early: its answer says why.
                if sender.send(Chunk::Ops(full)).is_err() {
                    break;
                }
            }
        }
        if encoded.is_ok() {
            let _ = sender.send(Chunk::Ops(chunk));
            let _ = sender.send(Chunk::Done);
        }
        drop(sender);
        let written = self.db.writer.finished(operation, answer).await;
        encoded?;
        written.map(|_| ())
    }

    /// Where this handle's writes go (see [`apply_write`]).
    fn write_target(&self) -> WriteTarget<'_, T> {
        WriteTarget {
            table: &self.table,
            hub: &self.hub,
            observer: &self.observer,
            legacy_log: self.db.legacy_log,
        }
    }

    /// Applies encoded writes atomically with the writer connection (on the calling
    /// thread when it is free and the write is bounded, see [`Writer`], else on the
    /// writer thread), then, still holding it, so in commit order, runs after-hooks and
    /// publishes the change batch.
    pub(crate) async fn write(
        &self,
        operation: &'static str,
        ops: Vec<WriteOp>,
    ) -> Result<BatchResult> {
        let bounded =
            ops.len() <= INLINE_WRITE_OPS && !ops.iter().any(|op| matches!(op, WriteOp::Clear));
        if bounded {
            let debug = self.db.config.common.debug;
            // A copy: a write that finds SQLite's lock busy is queued to the thread.
            let inline = self.db.writer.try_inline(debug, operation, |conn| {
                apply_write(conn, &self.write_target(), operation, ops.clone())
            });
            if let Some(out) = inline {
                return out;
            }
        }
        let table = Arc::clone(&self.table);
        let hub = Arc::clone(&self.hub);
        let observer = Arc::clone(&self.observer);
        let legacy_log = self.db.legacy_log;
        self.db
            .writer
            .run(operation, move |conn| {
                let to = WriteTarget {
                    table: &table,
                    hub: &hub,
                    observer: &observer,
                    legacy_log,
                };
                apply_write(conn, &to, operation, ops)
            })
            .await
    }

    /// Pages through the table in key order: `columns` is the page statement (its
    /// parameter: the last key seen); `item` makes an item of each row on the caller's
    /// side, as it is taken.
    ///
    /// As soon as a page arrives the next one is asked for, so a reader thread reads it
    /// while the caller decodes this one: reading and decoding overlap instead of taking
    /// turns. At most one page is read ahead, and a dropped stream leaves at most that
    /// one read to finish.
    fn page_stream<I, F>(
        &self,
        operation: &'static str,
        columns: fn(&TableSql) -> &str,
        item: F,
    ) -> ResultStream<'_, I>
    where
        I: Send + 'static,
        F: Fn(&str, &str) -> Result<I> + Send + Sync + 'static,
    {
        type Pending = tokio::sync::oneshot::Receiver<Result<RowText>>;
        struct State {
            /// The page being read ahead, if any.
            ahead: Option<Pending>,
            /// Whether a page after those asked for may exist.
            more: bool,
            page: RowText,
            next: usize,
        }
        let read_after = move |db: &Database, table: &Arc<Table>, cursor: String| {
            let table = Arc::clone(table);
            db.readers.send(operation, move |conn| {
                read_page(conn, columns(&table.sql), &cursor, operation)
            })
        };
        let db = Arc::clone(&self.db);
        let table = Arc::clone(&self.table);
        let item = Arc::new(item);
        futures::stream::unfold(
            State {
                ahead: None,
                more: true,
                page: RowText::default(),
                next: 0,
            },
            move |mut state| {
                let db = Arc::clone(&db);
                let table = Arc::clone(&table);
                let item = Arc::clone(&item);
                async move {
                    if state.next >= state.page.len() {
                        let pending = match state.ahead.take() {
                            Some(pending) => pending,
                            None if state.more => match read_after(&db, &table, String::new()) {
                                Ok(pending) => pending,
                                Err(e) => {
                                    state.more = false;
                                    return Some((Err(e), state));
                                }
                            },
                            None => return None,
                        };
                        let page = match answer(operation, pending).await {
                            Ok(page) => page,
                            Err(e) => {
                                state.more = false;
                                return Some((Err(e), state));
                            }
                        };
                        state.more = page.len() == PAGE_ROWS;
                        if state.more
                            && let Some(last) = page.last_key()
                        {
                            match read_after(&db, &table, last.to_owned()) {
                                Ok(pending) => state.ahead = Some(pending),
                                Err(e) => {
                                    state.more = false;
                                    return Some((Err(e), state));
                                }
                            }
                        }
                        state.page = page;
                        state.next = 0;
                    }
                    let (key, json) = state.page.get(state.next)?;
                    let out = item(key, json);
                    state.next += 1;
                    Some((out, state))
                }
            },
        )
        .boxed()
    }
}

/// One page of rows after `cursor`, by `sql` (`key` first, then optionally `value`).
fn read_page(
    conn: &Connection,
    sql: &str,
    cursor: &str,
    operation: &'static str,
) -> Result<RowText> {
    let err = sql_err(operation);
    let mut stmt = conn.prepare_cached(sql).map_err(&err)?;
    let with_value = stmt.column_count() > 1;
    let mut rows = stmt.query(params![cursor]).map_err(&err)?;
    let mut page = RowText::with_capacity(PAGE_ROWS);
    while let Some(row) = rows.next().map_err(&err)? {
        let key = row.get_ref(0).and_then(|v| Ok(v.as_str()?)).map_err(&err)?;
        let json = if with_value {
            row.get_ref(1).and_then(|v| Ok(v.as_str()?)).map_err(&err)?
        } else {
            ""
        };
        page.push(key, json);
    }
    Ok(page)
}

/// The largest encoded value a store over `config` accepts: the codec's
/// `max_decoded_len`, within SQLite's own limit.
pub(crate) fn max_value_len(config: &SqliteConfig) -> usize {
    usize::try_from(config.common.serialization.max_decoded_len)
        .unwrap_or(usize::MAX)
        .min(MAX_VALUE_LEN)
}

/// The capabilities of a store over `config`.
pub(crate) fn capabilities(config: &SqliteConfig, change_log: bool) -> Capabilities {
    Capabilities::new("sqlite", Tier::Observable)
        .with_isolation_levels([
            IsolationLevel::ReadUncommitted,
            IsolationLevel::ReadCommitted,
            IsolationLevel::RepeatableRead,
            IsolationLevel::Snapshot,
            IsolationLevel::Serializable,
        ])
        .with_index_kinds([
            IndexKind::Btree,
            IndexKind::Hash,
            IndexKind::Fulltext,
            IndexKind::Spatial,
        ])
        .with_unique_indexes(true)
        .with_savepoints(true)
        .with_cross_process_watch(change_log)
        .with_persistent(!config.is_memory())
        .with_max_value_len(Some(max_value_len(config)))
}

#[async_trait::async_trait]
impl<T: StorageValue> Storage<T> for SqliteStorage<T> {
    storage_core::tier_accessors!(T; batch, queryable, indexed, transactional, observable);

    fn capabilities(&self) -> Capabilities {
        capabilities(&self.db.config, self.table.change_log)
    }

    async fn get(&self, key: &str) -> Result<Option<T>> {
        validate_key(key)?;
        self.before(&BeforeEvent::Get { key })?;
        let value = if let Some(read) =
            self.read_inline("get", |conn| read_one::<T>(conn, &self.table.sql, key))
        {
            read.and_then(Option::transpose)
        } else {
            let table = Arc::clone(&self.table);
            let owned = key.to_owned();
            self.db
                .readers
                .run("get", move |conn| {
                    read_one::<T>(conn, &table.sql, &owned)
                        .map_err(sql_err("get"))?
                        .transpose()
                })
                .await
        }
        .map_err(|e| e.with_context("key", key.escape_debug()))?;
        if self.hub.has_after_hooks() {
            self.hub.after(&AfterEvent::Get {
                key,
                found: value.is_some(),
            });
        }
        Ok(value)
    }

    async fn set(&self, key: &str, value: &T) -> Result<()> {
        let op = self.prepare_set(key, value)?;
        self.write("set", vec![op]).await.map(|_| ())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        self.before(&BeforeEvent::Delete { key })?;
        self.write(
            "delete",
            vec![WriteOp::Delete {
                key: key.to_owned(),
            }],
        )
        .await
        .map(|r| r.deleted > 0)
    }

    async fn has(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let exists = |conn: &Connection, sql: &TableSql, key: &str| {
            conn.prepare_cached(&sql.has)
                .and_then(|mut s| s.exists(params![key]))
        };
        if let Some(read) = self.read_inline("has", |conn| exists(conn, &self.table.sql, key)) {
            return read;
        }
        let table = Arc::clone(&self.table);
        let owned = key.to_owned();
        self.db
            .readers
            .run("has", move |conn| {
                exists(conn, &table.sql, &owned).map_err(sql_err("has"))
            })
            .await
    }

    async fn clear(&self) -> Result<()> {
        self.before(&BeforeEvent::Clear)?;
        self.write("clear", vec![WriteOp::Clear]).await.map(|_| ())
    }

    async fn size(&self) -> Result<u64> {
        let table = Arc::clone(&self.table);
        self.db
            .readers
            .run("size", move |conn| {
                let n: i64 = conn
                    .prepare_cached(&table.sql.count)
                    .and_then(|mut s| s.query_row([], |r| r.get(0)))
                    .map_err(sql_err("size"))?;
                Ok(u64::try_from(n).unwrap_or(0))
            })
            .await
    }

    fn keys(&self) -> ResultStream<'_, String> {
        self.page_stream("keys", |sql| &sql.page_keys, |key, _| Ok(key.to_owned()))
    }

    fn values(&self) -> ResultStream<'_, T> {
        self.entries().map(|r| r.map(|(_, v)| v)).boxed()
    }

    fn entries(&self) -> ResultStream<'_, (String, T)> {
        self.page_stream(
            "entries",
            |sql| &sql.page_entries,
            |key, json| Ok((key.to_owned(), decode_stored::<T>(json, key, "entries")?)),
        )
    }
}

#[async_trait::async_trait]
impl<T: StorageValue> BatchStorage<T> for SqliteStorage<T> {
    async fn get_many(&self, keys: &[String]) -> Result<BTreeMap<String, T>> {
        storage_core::validate_keys(keys.iter().map(String::as_str))?;
        if keys.len() <= INLINE_GET_MANY
            && let Some(read) = self.read_inline("get_many", |conn| {
                read_many::<T>(conn, &self.table.sql, keys)
            })
        {
            return read?;
        }
        let table = Arc::clone(&self.table);
        let keys = keys.to_vec();
        self.db
            .readers
            .run("get_many", move |conn| {
                read_many::<T>(conn, &table.sql, &keys).map_err(sql_err("get_many"))?
            })
            .await
    }

    async fn set_many(&self, entries: Vec<(String, T)>) -> Result<()> {
        storage_core::validate_keys(entries.iter().map(|(k, _)| k.as_str()))?;
        if entries.len() >= PIPELINE_ENTRIES {
            return self.set_many_pipelined(entries).await;
        }
        let mut ops = Vec::with_capacity(entries.len());
        let mut scratch = Vec::with_capacity(512);
        for (i, (key, value)) in entries.into_iter().enumerate() {
            ops.push(self.encode_entry(i, key, &value, &mut scratch)?);
        }
        self.write("set_many", ops).await.map(|_| ())
    }

    async fn delete_many(&self, keys: &[String]) -> Result<u64> {
        storage_core::validate_keys(keys.iter().map(String::as_str))?;
        let mut ops = Vec::with_capacity(keys.len());
        for key in keys {
            self.before(&BeforeEvent::Delete { key })?;
            ops.push(WriteOp::Delete { key: key.clone() });
        }
        let result = self.write("delete_many", ops).await?;
        Ok(u64::try_from(result.deleted).unwrap_or(u64::MAX))
    }

    async fn batch(&self, operations: Vec<Operation<T>>) -> Result<BatchResult> {
        let mut ops = Vec::with_capacity(operations.len());
        for (i, op) in operations.iter().enumerate() {
            ops.push(
                self.prepare_op(op)
                    .map_err(|e| e.with_operation("batch").with_context("index", i))?,
            );
        }
        self.write("batch", ops).await
    }
}

/// How often, in milliseconds, a handle with subscribers reads the change log for
/// commits of other handles and processes.
pub const POLL_INTERVAL_MS: u64 = 25;

/// [`POLL_INTERVAL_MS`] as a duration.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(POLL_INTERVAL_MS);
