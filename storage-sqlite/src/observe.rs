//! Change events across handles and processes, through the change-log table.
//!
//! With `change_log` on, every commit appends its changes to `_storage_changes` in the
//! same SQLite transaction, numbered by `seq`; the commit's sequence number is the `seq`
//! of its first change. Each handle publishes the log to its subscribers in log order:
//! right after its own commits (on the thread that committed) and from a poller thread
//! every [`POLL_INTERVAL`], which picks up commits of other handles and processes.
//!
//! A handle's cursor is a log position (`seq`), not a commit number: every read is the
//! rowid range after it, so a poll costs what was logged since the last one, however
//! large the last commit was.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, params};
use storage_core::{
    AfterHook, BeforeHook, Change, ChangeBatch, ChangeKind, EventHub, HookId, ObservableStorage,
    Result, StorageValue, Subscription, WatchPattern,
};

use crate::backend::{
    Database, Effect, Logged, POLL_INTERVAL, SqliteStorage, Table, change_list, decode,
};
use crate::error::sql_err;
use crate::worker::open_connection;

/// Publishes the change log of one table to one event hub.
pub(crate) struct Observer<T> {
    db: Arc<Database>,
    table: Arc<Table>,
    hub: Arc<EventHub<T>>,
    /// What was read of the log; `None` until started.
    cursor: Mutex<Option<Cursor>>,
    stopped: AtomicBool,
}

/// A position in the change log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// Every row with `seq` up to this one was read.
    row: u64,
    /// Rows of commits up to this one are skipped (a resumed watch starts after a
    /// commit, whose later rows lie past `row`).
    commit: u64,
}

impl Cursor {
    /// The position after commit `seq` (its rows are skipped however many they are).
    pub(crate) fn after_commit(seq: u64) -> Self {
        Self {
            row: seq,
            commit: seq,
        }
    }
}

/// The latest commit sequence of `table` in the log (0 when empty).
pub(crate) fn last_seq(conn: &Connection, table: &str) -> Result<u64> {
    // Newest first along the rowid: stops at this table's latest row.
    let seq: Option<i64> = conn
        .prepare_cached(
            "SELECT commit_seq FROM _storage_changes WHERE tbl = ?1 ORDER BY seq DESC LIMIT 1",
        )
        .and_then(|mut s| s.query_row(params![table], |r| r.get(0)).optional())
        .map_err(sql_err("watch"))?;
    Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
}

/// [`log_end`] as a connection-thread job.
pub(crate) fn log_end_of(conn: &mut Connection) -> Result<Cursor> {
    log_end(conn)
}

/// The end of the whole log: the position of a watch that starts now.
pub(crate) fn log_end(conn: &Connection) -> Result<Cursor> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT MAX(seq) FROM _storage_changes")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(sql_err("watch"))?;
    Ok(Cursor::after_commit(
        seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
    ))
}

/// The sequence through which `table`'s log was trimmed (0 when never).
fn trimmed_through(conn: &Connection, table: &str) -> Result<u64> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT trimmed_through FROM _storage_log_horizon WHERE tbl = ?1")
        .and_then(|mut s| s.query_row(params![table], |r| r.get(0)).optional())
        .map_err(sql_err("watch"))?;
    Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
}

impl<T: StorageValue> Observer<T> {
    pub(crate) fn new(db: Arc<Database>, table: Arc<Table>, hub: Arc<EventHub<T>>) -> Self {
        Self {
            db,
            table,
            hub,
            cursor: Mutex::new(None),
            stopped: AtomicBool::new(false),
        }
    }

    /// Starts publishing commits after `cursor`, with a poller that lives as long as the
    /// handles do.
    pub(crate) fn start_at(self: &Arc<Self>, cursor: Cursor) {
        *self.cursor.lock().unwrap_or_else(PoisonError::into_inner) = Some(cursor);
        spawn_poller(Poller::Weak(Arc::downgrade(self)), self);
    }

    /// Called on the committing connection right after a commit logged at `logged`:
    /// with subscribers, publishes everything logged up to it (other handles' and
    /// processes' commits included), in log order; without, only moves the cursor.
    pub(crate) fn after_commit(&self, conn: &Connection, logged: Option<Logged>) {
        if self.hub.has_subscribers() {
            self.drain(conn);
        } else if let Some(logged) = logged {
            let mut cursor = self.cursor.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = cursor.as_mut() {
                // Commits are numbered in commit order under the write lock: everything
                // before this one is older and, with no subscriber, of no interest.
                c.row = c.row.max(logged.last);
                c.commit = c.commit.max(logged.commit);
            }
        }
    }

    /// Publishes every logged commit after the cursor, in order. Errors are left for the
    /// next poll: the cursor only moves past what was published.
    pub(crate) fn drain(&self, conn: &Connection) {
        let mut cursor = self.cursor.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(at) = *cursor else { return };
        if !self.hub.has_subscribers() {
            // Nobody listens: skip to the end of the log (one rowid lookup).
            if let Ok(end) = log_end(conn) {
                *cursor = Some(Cursor {
                    row: at.row.max(end.row),
                    commit: at.commit.max(end.commit),
                });
            }
            return;
        }
        let Ok((batches, end)) = self.read_batches(conn, at) else {
            return;
        };
        for batch in batches {
            self.hub.publish(&batch);
        }
        *cursor = Some(end);
    }

    /// The commits of this table logged after `at`, and the log position read up to.
    fn read_batches(&self, conn: &Connection, at: Cursor) -> Result<(Vec<ChangeBatch<T>>, Cursor)> {
        let err = sql_err("watch");
        let (Ok(row), Ok(commit)) = (i64::try_from(at.row), i64::try_from(at.commit)) else {
            return Ok((Vec::new(), at));
        };
        // One read transaction: the end of the log and the rows before it agree.
        let tx = conn.unchecked_transaction().map_err(&err)?;
        let end = log_end(&tx)?;
        let Ok(end_row) = i64::try_from(end.row) else {
            return Ok((Vec::new(), at));
        };
        let mut batches: Vec<ChangeBatch<T>> = Vec::new();
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT commit_seq, kind, key, value, at_ms FROM _storage_changes \
                     WHERE seq > ?2 AND seq <= ?4 AND tbl = ?1 AND commit_seq > ?3 ORDER BY seq",
                )
                .map_err(&err)?;
            let mut rows = stmt
                .query(params![self.table.name, row, commit, end_row])
                .map_err(&err)?;
            while let Some(row) = rows.next().map_err(&err)? {
                let commit_seq: i64 = row.get(0).map_err(&err)?;
                let kind: i64 = row.get(1).map_err(&err)?;
                let key: String = row.get(2).map_err(&err)?;
                let value: Option<String> = row.get(3).map_err(&err)?;
                let at_ms: i64 = row.get(4).map_err(&err)?;
                let sequence = u64::try_from(commit_seq).unwrap_or(0);
                let timestamp = u64::try_from(at_ms)
                    .ok()
                    .and_then(|ms| {
                        SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(ms))
                    })
                    .unwrap_or_else(SystemTime::now);
                let change = Change {
                    kind: if kind == 0 {
                        ChangeKind::Set
                    } else {
                        ChangeKind::Delete
                    },
                    key,
                    old_value: None,
                    new_value: value.and_then(|v| decode::<T>(&v).ok()).map(Arc::new),
                    timestamp,
                };
                match batches.last_mut() {
                    Some(b) if b.sequence == sequence => b.changes.push(change),
                    _ => batches.push(ChangeBatch {
                        sequence,
                        resume_token: Some(sequence.to_string()),
                        changes: vec![change],
                    }),
                }
            }
        }
        tx.finish().map_err(&err)?;
        let end = Cursor {
            row: at.row.max(end.row),
            commit: batches
                .last()
                .map_or(at.commit, |b| at.commit.max(b.sequence)),
        };
        Ok((batches, end))
    }
}

enum Poller<T> {
    /// Polls while any handle lives.
    Weak(Weak<Observer<T>>),
    /// Polls while its subscriber lives (a resumed watch).
    Owned(Arc<Observer<T>>),
}

fn spawn_poller<T: StorageValue>(poller: Poller<T>, observer: &Observer<T>) {
    let path = observer.db.path.clone();
    let config = observer.db.config.clone();
    // Without a thread, commits of this handle are still published; only other
    // handles' commits would go unseen, so a failed spawn is logged, not fatal.
    let spawned = std::thread::Builder::new()
        .name("sqlite-watch".to_owned())
        .spawn(move || {
            let Ok(conn) = open_connection(&path, &config, true) else {
                tracing::warn!("sqlite change-log poller could not open the database");
                return;
            };
            loop {
                std::thread::sleep(POLL_INTERVAL);
                let observer = match &poller {
                    Poller::Weak(w) => match w.upgrade() {
                        Some(o) => o,
                        None => return,
                    },
                    Poller::Owned(o) => {
                        if !o.hub.has_subscribers() {
                            return;
                        }
                        Arc::clone(o)
                    }
                };
                if observer.stopped.load(Ordering::Relaxed) {
                    return;
                }
                observer.drain(&conn);
            }
        });
    if spawned.is_err() {
        tracing::warn!("sqlite change-log poller thread could not start");
    }
}

impl<T> Drop for Observer<T> {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
    }
}

impl<T: StorageValue> SqliteStorage<T> {
    /// Subscribes to committed changes after commit sequence `after` (a
    /// [`ChangeBatch::sequence`] or resume token seen earlier, possibly by another
    /// process), replaying the logged commits since then before live ones.
    ///
    /// # Behavior
    /// - when the log was trimmed past `after` ([`SqliteStorage::trim_change_log`]), the
    ///   subscription starts with [`WatchEvent::Resync`](storage_core::WatchEvent::Resync)
    ///   and goes on from the oldest commit still logged.
    ///
    /// # Errors
    /// `Unsupported` without the change log ([`SqliteConfig::change_log`](crate::SqliteConfig::change_log));
    /// `InvalidQuery` for a bad pattern; backend errors.
    pub async fn watch_from(
        &self,
        pattern: WatchPattern,
        capacity: usize,
        after: u64,
    ) -> Result<Subscription<T>> {
        if !self.table.change_log {
            return Err(storage_core::StorageError::unsupported(
                "resuming a watch needs the change log (change_log = true)",
            )
            .with_operation("watch")
            .with_backend("sqlite"));
        }
        let hub = Arc::new(EventHub::new());
        let subscription = hub.watch(pattern, capacity)?;
        let table = self.table.name.clone();
        let horizon = self
            .db
            .readers
            .run("watch", move |conn| trimmed_through(conn, &table))
            .await?;
        let start = if after < horizon {
            hub.resync(&format!(
                "the change log was trimmed through sequence {horizon}, after {after} was asked"
            ));
            horizon
        } else {
            after
        };
        let observer = Arc::new(Observer::new(
            Arc::clone(&self.db),
            Arc::clone(&self.table),
            hub,
        ));
        *observer
            .cursor
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Cursor::after_commit(start));
        spawn_poller(Poller::Owned(Arc::clone(&observer)), &observer);
        Ok(subscription)
    }

    /// Deletes this table's logged commits up to and including sequence `through`;
    /// returns how many changes were deleted. The log otherwise grows with every commit.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn trim_change_log(&self, through: u64) -> Result<u64> {
        let table = self.table.name.clone();
        let through = i64::try_from(through).unwrap_or(i64::MAX);
        self.db
            .writer
            .run("trim_change_log", move |conn| {
                let err = sql_err("trim_change_log");
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(&err)?;
                // The row under the name '' (never a table's) keeps the largest `seq`
                // ever handed out, so that numbers never go back once its rows are gone.
                tx.execute(
                    "INSERT INTO _storage_log_horizon (tbl, trimmed_through) \
                     SELECT '', MAX(seq) FROM _storage_changes WHERE true \
                     ON CONFLICT (tbl) DO UPDATE SET trimmed_through = \
                     max(trimmed_through, excluded.trimmed_through)",
                    [],
                )
                .map_err(&err)?;
                let deleted = tx
                    .execute(
                        "DELETE FROM _storage_changes WHERE tbl = ?1 AND commit_seq <= ?2",
                        params![table, through],
                    )
                    .map_err(&err)?;
                tx.execute(
                    "INSERT INTO _storage_log_horizon (tbl, trimmed_through) VALUES (?1, ?2) \
                     ON CONFLICT (tbl) DO UPDATE SET trimmed_through = \
                     max(trimmed_through, excluded.trimmed_through)",
                    params![table, through],
                )
                .map_err(&err)?;
                tx.commit().map_err(&err)?;
                Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
            })
            .await
    }

    /// The latest commit sequence in this table's change log (0 when empty or without
    /// the change log): a starting point for [`SqliteStorage::watch_from`].
    ///
    /// # Errors
    /// Backend errors.
    pub async fn last_sequence(&self) -> Result<u64> {
        if !self.table.change_log {
            return Ok(0);
        }
        let table = self.table.name.clone();
        self.db
            .readers
            .run("watch", move |conn| last_seq(conn, &table))
            .await
    }
}

impl<T: StorageValue> ObservableStorage<T> for SqliteStorage<T> {
    fn on_before(&self, hook: BeforeHook<T>) -> HookId {
        self.hub.on_before(hook)
    }

    fn on_after(&self, hook: AfterHook<T>) -> HookId {
        self.hub.on_after(hook)
    }

    fn off(&self, id: HookId) -> bool {
        self.hub.off(id)
    }

    fn watch(&self, pattern: WatchPattern, capacity: usize) -> Result<Subscription<T>> {
        self.hub
            .watch(pattern, capacity)
            .map_err(|e| e.with_operation("watch").with_backend("sqlite"))
    }
}

/// Handles of one process on one file and table, whose watches see every commit made
/// through any of them: the way changes travel between handles without the change log.
///
/// A commit is published while the committing thread holds `order`, taken after the
/// commit's writes (so with SQLite's write lock held, and never while waiting for it)
/// and released after publishing: batches therefore reach subscribers in commit order,
/// whichever handle and thread committed.
pub(crate) struct TableBus {
    /// The last sequence number handed out.
    order: Mutex<u64>,
    /// Handles watching through the bus (those without the change log).
    members: Mutex<Vec<Arc<dyn Member>>>,
}

/// A handle's part in a [`TableBus`].
pub(crate) trait Member: Send + Sync {
    /// Whether the handle is gone (its member can be dropped).
    fn gone(&self) -> bool;
    /// Whether anything would be published to it.
    fn listening(&self) -> bool;
    /// Publishes a committed batch.
    fn deliver(&self, sequence: u64, effects: &[Effect]);
}

/// A [`Member`] publishing to one handle's event hub.
struct HubMember<T> {
    hub: Weak<EventHub<T>>,
}

impl<T: StorageValue> Member for HubMember<T> {
    fn gone(&self) -> bool {
        self.hub.strong_count() == 0
    }

    fn listening(&self) -> bool {
        self.hub.upgrade().is_some_and(|h| h.has_subscribers())
    }

    fn deliver(&self, sequence: u64, effects: &[Effect]) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        if !hub.has_subscribers() {
            return;
        }
        let changes = change_list::<T>(effects);
        if !changes.is_empty() {
            hub.publish(&ChangeBatch {
                sequence,
                resume_token: None,
                changes,
            });
        }
    }
}

/// The buses of this process, by canonical database path and table.
type Buses = HashMap<(PathBuf, String), Weak<TableBus>>;

fn buses() -> &'static Mutex<Buses> {
    static BUSES: OnceLock<Mutex<Buses>> = OnceLock::new();
    BUSES.get_or_init(|| Mutex::new(HashMap::new()))
}

impl TableBus {
    /// The bus of `table` in the file at `canonical` (shared by every handle on them in
    /// this process).
    pub(crate) fn of(canonical: &Path, table: &str) -> Arc<Self> {
        let mut all = buses().lock().unwrap_or_else(PoisonError::into_inner);
        let id = (canonical.to_path_buf(), table.to_owned());
        if let Some(bus) = all.get(&id).and_then(Weak::upgrade) {
            return bus;
        }
        all.retain(|_, bus| bus.strong_count() > 0);
        let bus = Arc::new(Self {
            order: Mutex::new(0),
            members: Mutex::new(Vec::new()),
        });
        all.insert(id, Arc::downgrade(&bus));
        bus
    }

    /// Adds a handle's hub as a member.
    pub(crate) fn join<T: StorageValue>(&self, hub: &Arc<EventHub<T>>) {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        members.retain(|m| !m.gone());
        members.push(Arc::new(HubMember {
            hub: Arc::downgrade(hub),
        }));
    }

    /// Whether some member has a subscriber (a commit then has something to publish).
    pub(crate) fn listening(&self) -> bool {
        self.members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|m| m.listening())
    }

    /// Takes the publishing order: hold it from just before the commit until
    /// [`TableBus::publish`].
    pub(crate) fn order(&self) -> MutexGuard<'_, u64> {
        self.order.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes a commit's effects to every member, numbering the batch.
    pub(crate) fn publish(&self, order: &mut MutexGuard<'_, u64>, effects: &[Effect]) {
        if effects.is_empty() {
            return;
        }
        let members: Vec<Arc<dyn Member>> = self
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|m| m.listening())
            .cloned()
            .collect();
        if members.is_empty() {
            return;
        }
        **order += 1;
        for member in members {
            member.deliver(**order, effects);
        }
    }
}
