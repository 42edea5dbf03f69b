//! Connection threads: every SQLite call that can take long runs on a thread that owns
//! its connection, never on the async executor. Callers send a job and await a oneshot
//! reply. The one exception, bounded point reads under WAL, borrows a connection from
//! [`InlineReaders`] on the calling thread (see there for why).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use storage_core::{ErrorCode, Result, StorageError};

use crate::config::SqliteConfig;
use crate::error::{SqliteError, sql_err};

/// Work for a connection thread. It returns its reply (sending the answer), which the
/// pool's threads call only once they are ready for the next job: a caller that
/// answers with another job at once then finds the same thread, and its connection's
/// page cache, free.
pub(crate) type Job<C = Connection> = Box<dyn FnOnce(&mut C) -> Reply + Send>;

/// The second half of a [`Job`]: delivers its answer.
pub(crate) type Reply = Box<dyn FnOnce() + Send>;

/// How many prepared statements each connection keeps compiled.
const STATEMENT_CACHE: usize = 64;

/// Opens a connection with this crate's per-connection settings.
pub(crate) fn open_connection(
    path: &Path,
    config: &SqliteConfig,
    read_only: bool,
) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| sql_err("open")(e).with_context("database", path.display()))?;
    configure(&conn, config, read_only).map_err(|e| e.with_context("database", path.display()))?;
    Ok(conn)
}

fn configure(conn: &Connection, config: &SqliteConfig, read_only: bool) -> Result<()> {
    let err = sql_err("open");
    conn.busy_timeout(Duration::from_millis(config.busy_timeout_ms))
        .map_err(&err)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "synchronous", config.synchronous.as_pragma())
        .map_err(&err)?;
    conn.pragma_update(None, "foreign_keys", config.foreign_keys)
        .map_err(&err)?;
    if read_only {
        conn.pragma_update(None, "query_only", true).map_err(&err)?;
    }
    Ok(())
}

/// Read-only connections lent to the calling task for bounded point reads: a get, a
/// `has`, or a `get_many` of a few keys by primary key.
///
/// Handing such a read to a reader thread and waking the task when it answers costs
/// several times the read itself (a B-tree lookup of a few microseconds, about what
/// decoding the value costs), so these reads run where they are asked. They cannot
/// wait on other connections: under WAL a reader never waits for the writer, and these
/// connections have no busy timeout, so a lock SQLite cannot take at once (a WAL
/// recovery in progress, a rollback-journal database) fails at once and the caller
/// falls back to a reader thread. A page not in SQLite's cache is read from the file
/// (the operating system's page cache, usually), as decoding a value touches memory.
/// Scans, queries and writes, whose length depends on the data, stay on threads.
///
/// Connections are opened lazily by reader threads (never on the executor), up to a
/// bound; a read that finds none idle goes to a reader thread.
pub(crate) struct InlineReaders {
    idle: Mutex<Vec<Connection>>,
    /// Connections opened so far (idle or lent).
    opened: AtomicUsize,
    max: usize,
}

impl InlineReaders {
    /// A pool of at most `max` connections; `max == 0` turns inline reads off.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::with_capacity(max)),
            opened: AtomicUsize::new(0),
            max,
        }
    }

    /// An idle connection, if one is free right now (never waits for the pool's lock).
    pub(crate) fn take(&self) -> Option<Connection> {
        match self.idle.try_lock() {
            Ok(mut idle) => idle.pop(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().pop(),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Returns a connection taken with [`InlineReaders::take`].
    pub(crate) fn give(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(conn);
    }

    /// Whether the pool would take another connection.
    pub(crate) fn wants_more(&self) -> bool {
        self.opened.load(Ordering::Relaxed) < self.max
    }

    /// Opens one more connection when the pool is not full. Blocking: call it on a
    /// connection thread. A failure only means reads keep going to threads.
    pub(crate) fn grow(&self, path: &Path, config: &SqliteConfig) {
        if self
            .opened
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_err()
        {
            return;
        }
        let opened = open_connection(path, config, true).and_then(|conn| {
            // No waiting on the executor: a busy lock fails at once and the read moves
            // to a thread, which waits as configured.
            conn.busy_timeout(Duration::ZERO).map_err(sql_err("open"))?;
            Ok(conn)
        });
        match opened {
            Ok(conn) => self.give(conn),
            Err(e) => {
                self.opened.fetch_sub(1, Ordering::SeqCst);
                tracing::debug!("sqlite inline read connection not opened: {e}");
            }
        }
    }
}

/// Whether `err` says a lock was not free (the read should move to a thread).
pub(crate) fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Threads serving one job queue, each owning a connection.
///
/// A job goes straight to an idle thread's own channel, waking that thread only; when
/// every thread is busy it waits in the shared queue, which a thread empties before it
/// goes idle. (Threads taking turns at one shared receiver would wake a second thread
/// for every job, which on a small machine costs as much as the job.)
pub(crate) struct Workers<C: Send + 'static = Connection> {
    /// Whether jobs run inside a `tracing` span (the `debug` setting).
    debug: bool,
    shared: Arc<Shared<C>>,
    /// One channel per thread; `None` once closing.
    senders: Option<Vec<Sender<Job<C>>>>,
    threads: Vec<JoinHandle<()>>,
}

/// What the threads of a [`Workers`] share.
struct Shared<C> {
    state: Mutex<Queue<C>>,
}

/// Jobs no thread was free for, and the threads free for jobs.
struct Queue<C> {
    waiting: std::collections::VecDeque<Job<C>>,
    idle: Vec<usize>,
}

impl<C> Shared<C> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<C>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<C: Send + 'static> Workers<C> {
    /// Starts `connections.len()` threads, one per connection.
    pub(crate) fn spawn(name: &str, connections: Vec<C>, debug: bool) -> Result<Self> {
        let spin = if connections.len() == 1 {
            WRITER_SPIN
        } else {
            Duration::ZERO
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(Queue {
                waiting: std::collections::VecDeque::new(),
                idle: Vec::with_capacity(connections.len()),
            }),
        });
        let mut threads = Vec::with_capacity(connections.len());
        let mut senders = Vec::with_capacity(connections.len());
        for (i, conn) in connections.into_iter().enumerate() {
            let (sender, receiver) = channel::<Job<C>>();
            let thread_shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || serve(conn, i, &receiver, &thread_shared, spin))
                .map_err(|e| {
                    StorageError::from(e)
                        .with_operation("open")
                        .with_backend("sqlite")
                })?;
            senders.push(sender);
            threads.push(handle);
        }
        Ok(Self {
            debug,
            shared,
            senders: Some(senders),
            threads,
        })
    }

    /// Runs `f` on one of the threads and awaits its answer.
    pub(crate) async fn run<R, F>(&self, operation: &'static str, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut C) -> Result<R> + Send + 'static,
    {
        answer(operation, self.send(operation, f)?).await
    }

    /// Queues `f` for one of the threads now; its answer arrives on the receiver.
    pub(crate) fn send<R, F>(
        &self,
        operation: &'static str,
        f: F,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<R>>>
    where
        R: Send + 'static,
        F: FnOnce(&mut C) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let debug = self.debug;
        self.submit(Box::new(move |conn| {
            let span = storage_core::trace::op_span(debug, "sqlite", operation);
            let answer = span.in_scope(|| f(conn));
            Box::new(move || {
                // The caller may have stopped waiting (its future was dropped); nothing
                // to do then.
                let _ = tx.send(answer);
            })
        }))
        .map_err(|e| e.into_storage(operation))?;
        Ok(rx)
    }

    /// Queues a job without waiting for it.
    pub(crate) fn submit(&self, job: Job<C>) -> std::result::Result<(), SqliteError> {
        let senders = self.senders.as_ref().ok_or(SqliteError::WorkerGone)?;
        let idle = {
            let mut queue = self.shared.lock();
            let Some(i) = queue.idle.pop() else {
                queue.waiting.push_back(job);
                return Ok(());
            };
            i
        };
        senders
            .get(idle)
            .ok_or(SqliteError::WorkerGone)?
            .send(job)
            .map_err(|_| SqliteError::WorkerGone)
    }
}

/// How long the writer thread, having finished a job, polls for the next one before
/// sleeping: back-to-back writes then skip a thread wake-up. Reader pools do not spin
/// (several spinning readers would take the CPU from the tasks that feed them).
const WRITER_SPIN: Duration = Duration::from_micros(50);

fn serve<C>(
    mut conn: C,
    me: usize,
    receiver: &Receiver<Job<C>>,
    shared: &Shared<C>,
    spin: Duration,
) {
    let mut reply: Option<Reply> = None;
    loop {
        let job = {
            let mut queue = shared.lock();
            let job = queue.waiting.pop_front();
            if job.is_none() {
                queue.idle.push(me);
            }
            job
        };
        // Idle (or holding the next job) before answering: see `Job`.
        if let Some(reply) = reply.take() {
            reply();
        }
        let job = match job {
            Some(job) => job,
            None => match next_job(receiver, spin) {
                Some(job) => job,
                None => break,
            },
        };
        reply = Some(job(&mut conn));
    }
    // Closing: finish what is still queued, then close the connection.
    loop {
        let job = shared.lock().waiting.pop_front();
        match job {
            Some(job) => job(&mut conn)(),
            None => return,
        }
    }
}

/// The next job sent to this thread (polling for `spin` first); `None` once closing.
fn next_job<C>(receiver: &Receiver<Job<C>>, spin: Duration) -> Option<Job<C>> {
    let spin_start = Instant::now();
    while spin_start.elapsed() < spin {
        match receiver.try_recv() {
            Ok(job) => return Some(job),
            Err(TryRecvError::Empty) => std::hint::spin_loop(),
            Err(TryRecvError::Disconnected) => return None,
        }
    }
    receiver.recv().ok()
}

impl<C: Send + 'static> Drop for Workers<C> {
    fn drop(&mut self) {
        // Closing the channels lets each thread finish the queued jobs and close its
        // connection; joining makes "the handle is dropped" mean "the file is closed".
        self.senders = None;
        let me = std::thread::current().id();
        for handle in self.threads.drain(..) {
            if handle.thread().id() != me {
                let _ = handle.join();
            }
        }
    }
}

/// The writer connection, shared by its thread and the callers that find it free.
pub(crate) type SharedConnection = Arc<Mutex<Connection>>;

/// WAL frames not yet copied into the database past which a checkpoint is started:
/// SQLite's own auto-checkpoint default.
const CHECKPOINT_PAGES: i32 = 1000;

/// WAL length past which the checkpoint runs on the writer connection instead.
///
/// A checkpoint on its own connection copies the frames committed before it started;
/// the log restarts from its beginning only when a write begins with every frame
/// copied, which a steady stream of writes landing during each checkpoint can put off
/// indefinitely. On the writer connection nothing of ours commits meanwhile, so the
/// next write restarts the log: this bounds its length, at the cost of one wait.
const WAL_LIMIT_PAGES: i32 = 4 * CHECKPOINT_PAGES;

/// The one writer connection of a database, and the thread that serves the writes
/// queued to it.
///
/// A bounded write (a set, a delete, a small batch: no `clear`) runs on the calling
/// thread when the connection is free at once, as bounded reads do on
/// [`InlineReaders`]: under WAL with `synchronous = NORMAL` a commit appends to the log
/// and does not sync, so it costs microseconds, while handing it to the thread and
/// waking the caller on the answer costs as much again. Everything else, and any write
/// that finds the connection taken (the thread, or another caller, is writing), is
/// queued to the thread, which takes the connection's lock for each job. Holding the
/// lock from the first statement to the last event published keeps writes serial and
/// their events in commit order, wherever they run.
///
/// Two things could make an inline write wait, and neither may: another connection
/// (a transaction's, another process's) holding SQLite's write lock, and a WAL
/// checkpoint, which syncs the file. Inline writes run with no busy timeout, so a lock
/// that is not free fails at once, before anything is written, and the write is queued
/// to the thread, which waits as configured. Automatic checkpointing is off on this
/// connection (a WAL hook replaces it and only counts the log's pages); once more than
/// [`CHECKPOINT_PAGES`] of the log are not yet copied, a `PASSIVE` checkpoint runs on a
/// [`Checkpointer`], a thread with a connection of its own, so writes go on while it
/// syncs (a checkpoint on the writer connection would hold it for milliseconds, and
/// every write in the meantime would queue behind it). Past [`WAL_LIMIT_PAGES`] the
/// checkpoint is queued to the writer thread instead, so the log stays bounded.
pub(crate) struct Writer {
    /// Declared first so it is dropped (its last checkpoint finished) before the
    /// writer thread closes its connection, the last one, which then checkpoints.
    checkpointer: Option<Checkpointer>,
    conn: SharedConnection,
    thread: Workers<SharedConnection>,
    /// Frames in the WAL after the last commit on this connection (from the WAL hook).
    wal_pages: Arc<AtomicI32>,
    /// Frames of the current WAL the last checkpoint copied (0 once the log restarts).
    copied: Arc<AtomicI32>,
    /// Whether a checkpoint is queued to or running on the [`Checkpointer`].
    checkpoint_queued: Arc<AtomicBool>,
    /// Whether a checkpoint is queued to or running on the writer thread.
    limit_queued: Arc<AtomicBool>,
    /// Whether writes may run on the calling thread (WAL only).
    inline: bool,
    busy_timeout: Duration,
}

impl Writer {
    /// Starts the writer thread on `conn`, the connection of the database at `path`,
    /// taking over its checkpoints under WAL.
    pub(crate) fn spawn(mut conn: Connection, path: &Path, config: &SqliteConfig) -> Result<Self> {
        let wal_pages = Arc::new(AtomicI32::new(0));
        let copied = Arc::new(AtomicI32::new(0));
        let checkpoint_queued = Arc::new(AtomicBool::new(false));
        let mut checkpointer = None;
        if config.wal {
            let pages = Arc::clone(&wal_pages);
            let restarted = Arc::clone(&copied);
            // Replaces SQLite's auto-checkpoint (itself a WAL hook) on this connection.
            conn.wal_hook(Some(
                move |_: &mut rusqlite::hooks::Wal, n: std::os::raw::c_int| {
                    if n < pages.swap(n, Ordering::Relaxed) {
                        restarted.store(0, Ordering::Relaxed);
                    }
                    Ok(())
                },
            ))
            .map_err(sql_err("open"))?;
            checkpointer = Some(Checkpointer::spawn(
                path.to_path_buf(),
                config.clone(),
                Arc::clone(&wal_pages),
                Arc::clone(&copied),
                Arc::clone(&checkpoint_queued),
            )?);
        }
        let conn = Arc::new(Mutex::new(conn));
        Ok(Self {
            checkpointer,
            thread: Workers::spawn(
                "sqlite-writer",
                vec![Arc::clone(&conn)],
                config.common.debug,
            )?,
            conn,
            wal_pages,
            copied,
            checkpoint_queued,
            limit_queued: Arc::new(AtomicBool::new(false)),
            inline: config.wal,
            busy_timeout: Duration::from_millis(config.busy_timeout_ms),
        })
    }

    /// Runs `f` on the writer thread and awaits its answer.
    pub(crate) async fn run<R, F>(&self, operation: &'static str, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        let out = answer(operation, self.send(operation, f)?).await;
        self.checkpoint_if_due();
        out
    }

    /// Queues `f` for the writer thread now; its answer arrives on the receiver (then
    /// call [`Writer::finished`]).
    pub(crate) fn send<R, F>(
        &self,
        operation: &'static str,
        f: F,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<R>>>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        self.thread
            .send(operation, move |shared| f(&mut lock_connection(shared)))
    }

    /// Awaits the answer of a job queued with [`Writer::send`].
    pub(crate) async fn finished<R>(
        &self,
        operation: &'static str,
        rx: tokio::sync::oneshot::Receiver<Result<R>>,
    ) -> Result<R> {
        let out = answer(operation, rx).await;
        self.checkpoint_if_due();
        out
    }

    /// Runs the bounded write `f` on the calling thread if the connection is free at
    /// once and its write lock can be taken without waiting; `None` when the write must
    /// be queued to the thread (nothing was written then). `f` must fail before writing
    /// anything when the lock is busy: one autocommit statement, or statements inside a
    /// `BEGIN IMMEDIATE` transaction.
    pub(crate) fn try_inline<R>(
        &self,
        debug: bool,
        operation: &'static str,
        f: impl FnOnce(&mut Connection) -> Result<R>,
    ) -> Option<Result<R>> {
        if !self.inline {
            return None;
        }
        let mut conn = match self.conn.try_lock() {
            Ok(conn) => conn,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        // No waiting on the caller's thread: a busy lock fails at once.
        if conn.busy_timeout(Duration::ZERO).is_err() {
            return None;
        }
        let span = storage_core::trace::op_span(debug, "sqlite", operation);
        let out = span.in_scope(|| f(&mut conn));
        let restored = conn.busy_timeout(self.busy_timeout);
        drop(conn);
        self.checkpoint_if_due();
        if let Err(e) = restored {
            return Some(Err(sql_err(operation)(e)));
        }
        match out {
            Err(e) if is_busy_error(&e) => None,
            out => Some(out),
        }
    }

    /// Starts a `PASSIVE` checkpoint once more than [`CHECKPOINT_PAGES`] of the WAL are
    /// not yet copied (at most one queued or running at a time): on the
    /// [`Checkpointer`], or on the writer thread past [`WAL_LIMIT_PAGES`].
    ///
    /// The writer thread's checkpoint is queued even while the checkpointer's still
    /// runs (a slow sync under load let thousands of commits land meanwhile, and the
    /// log grew to 10,000 pages): it waits for that one to finish, since a `PASSIVE`
    /// checkpoint gives up at once while another holds SQLite's checkpoint lock, and
    /// writes queue behind it meanwhile, which is what bounds the log.
    fn checkpoint_if_due(&self) {
        let pages = self.wal_pages.load(Ordering::Relaxed);
        let pending = pages - self.copied.load(Ordering::Relaxed).min(pages);
        if pending < CHECKPOINT_PAGES {
            return;
        }
        if pages < WAL_LIMIT_PAGES
            && let Some(checkpointer) = &self.checkpointer
        {
            if self.checkpoint_queued.swap(true, Ordering::AcqRel) || checkpointer.signal() {
                return;
            }
            // The thread is gone: the writer thread checkpoints instead.
            self.checkpoint_queued.store(false, Ordering::Release);
        }
        if self.limit_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let background = Arc::clone(&self.checkpoint_queued);
        let queued = Arc::clone(&self.limit_queued);
        let pages = Arc::clone(&self.wal_pages);
        let copied = Arc::clone(&self.copied);
        let wait = self.busy_timeout;
        let submitted = self.thread.submit(Box::new(move |shared| {
            // Held while waiting too, so that no write lands on the calling thread either.
            let conn = lock_connection(shared);
            let deadline = Instant::now() + wait;
            while background.load(Ordering::Acquire) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            checkpoint(&conn, &pages, &copied);
            drop(conn);
            queued.store(false, Ordering::Release);
            Box::new(|| {})
        }));
        if submitted.is_err() {
            self.limit_queued.store(false, Ordering::Release);
        }
    }
}

/// Runs a `PASSIVE` checkpoint on `conn` and records how much of the log it copied.
/// PASSIVE never waits for readers or writers; frames it could not copy are copied by a
/// later one. A failure only delays the checkpoint.
fn checkpoint(conn: &Connection, pages: &AtomicI32, copied: &AtomicI32) {
    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i32>(2));
    match done {
        // The log may have grown since the hook last counted it.
        Ok(n) => {
            copied.store(n.max(0), Ordering::Relaxed);
            pages.fetch_max(n, Ordering::Relaxed);
        }
        Err(e) => tracing::debug!("sqlite checkpoint failed: {e}"),
    }
}

/// A thread with a connection of its own that runs the WAL checkpoints a [`Writer`]
/// asks for, so that writes on the writer connection go on while the checkpoint copies
/// and syncs (a `PASSIVE` checkpoint takes no lock a writer needs). The connection is
/// opened on the thread, at the first checkpoint. Dropping it finishes a checkpoint
/// under way, then closes the connection and joins the thread.
struct Checkpointer {
    sender: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn spawn(
        path: std::path::PathBuf,
        config: SqliteConfig,
        pages: Arc<AtomicI32>,
        copied: Arc<AtomicI32>,
        queued: Arc<AtomicBool>,
    ) -> Result<Self> {
        let (sender, receiver) = channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                let mut conn: Option<Connection> = None;
                while receiver.recv().is_ok() {
                    if conn.is_none() {
                        match open_connection(&path, &config, false) {
                            Ok(c) => conn = Some(c),
                            Err(e) => tracing::debug!("sqlite checkpoint connection: {e}"),
                        }
                    }
                    if let Some(conn) = &conn {
                        checkpoint(conn, &pages, &copied);
                    }
                    queued.store(false, Ordering::Release);
                }
            })
            .map_err(|e| {
                StorageError::from(e)
                    .with_operation("open")
                    .with_backend("sqlite")
            })?;
        Ok(Self {
            sender: Some(sender),
            thread: Some(thread),
        })
    }

    /// Asks for a checkpoint; `false` when the thread is gone.
    fn signal(&self) -> bool {
        self.sender.as_ref().is_some_and(|s| s.send(()).is_ok())
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

/// Awaits a job's answer.
pub(crate) async fn answer<R>(
    operation: &'static str,
    rx: tokio::sync::oneshot::Receiver<Result<R>>,
) -> Result<R> {
    rx.await
        .map_err(|_| SqliteError::WorkerGone.into_storage(operation))?
}

/// The writer connection, also when a panic poisoned its lock (SQLite's state does not
/// depend on the panicking Rust frame: an open transaction is rolled back when its
/// guard drops).
fn lock_connection(shared: &SharedConnection) -> std::sync::MutexGuard<'_, Connection> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a call failed because a SQLite lock was not free.
pub(crate) fn is_busy_error(err: &StorageError) -> bool {
    err.code() == ErrorCode::Backend && err.is_retryable()
}

/// A dedicated thread owning one connection for the life of a transaction.
pub(crate) struct Dedicated {
    debug: bool,
    sender: Sender<Job>,
}

impl Dedicated {
    /// Starts a thread, opens its connection there with `open`, and serves jobs until
    /// the handle is dropped; `on_exit` then gets the connection back (to roll back
    /// and return it to a pool).
    pub(crate) async fn start(
        debug: bool,
        deadline: Option<Instant>,
        open: impl FnOnce() -> Result<Connection> + Send + 'static,
        on_exit: impl FnOnce(Connection) + Send + 'static,
    ) -> Result<Self> {
        let (sender, receiver) = channel::<Job>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<()>>();
        std::thread::Builder::new()
            .name("sqlite-tx".to_owned())
            .spawn(move || {
                let mut conn = match open() {
                    Ok(conn) => conn,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                // Past the deadline the thread stops serving and `on_exit` rolls back, so
                // an abandoned transaction never holds the write lock beyond its time-out.
                loop {
                    let job = match deadline {
                        Some(d) => receiver
                            .recv_timeout(d.saturating_duration_since(Instant::now()))
                            .ok(),
                        None => receiver.recv().ok(),
                    };
                    match job {
                        Some(job) => job(&mut conn)(),
                        None => break,
                    }
                }
                drop(receiver);
                on_exit(conn);
            })
            .map_err(|e| {
                StorageError::from(e)
                    .with_operation("begin")
                    .with_backend("sqlite")
            })?;
        ready_rx
            .await
            .map_err(|_| SqliteError::WorkerGone.into_storage("begin"))??;
        Ok(Self { debug, sender })
    }

    /// Runs `f` on the thread and awaits its answer.
    pub(crate) async fn run<R, F>(&self, operation: &'static str, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let debug = self.debug;
        self.sender
            .send(Box::new(move |conn| {
                let span = storage_core::trace::op_span(debug, "sqlite", operation);
                let answer = span.in_scope(|| f(conn));
                Box::new(move || {
                    let _ = tx.send(answer);
                })
            }))
            .map_err(|_| SqliteError::WorkerGone.into_storage(operation))?;
        rx.await
            .map_err(|_| SqliteError::WorkerGone.into_storage(operation))?
    }
}

/// The error of a closed store.
pub(crate) fn closed(operation: &'static str) -> StorageError {
    StorageError::new(ErrorCode::ConnectionLost, "the store is closed")
        .with_operation(operation)
        .with_backend("sqlite")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inline_pool_grows_to_its_bound_and_lends_each_connection_once() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("db.sqlite");
        let config = SqliteConfig::new(path.to_string_lossy());
        let pool = InlineReaders::new(2);
        assert!(pool.take().is_none(), "nothing is opened before asked");
        for _ in 0..3 {
            pool.grow(&path, &config);
        }
        assert!(!pool.wants_more());
        let a = pool.take().ok_or_else(|| closed("test"))?;
        let b = pool.take().ok_or_else(|| closed("test"))?;
        assert!(pool.take().is_none(), "two connections, both lent");
        // Inline connections never wait for a lock.
        let timeout: i64 = a
            .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
            .map_err(sql_err("test"))?;
        assert_eq!(timeout, 0);
        pool.give(a);
        pool.give(b);
        assert!(pool.take().is_some());
        assert!(!InlineReaders::new(0).wants_more(), "a pool of 0 stays off");
        Ok(())
    }

    #[tokio::test]
    async fn jobs_queued_behind_busy_threads_all_run() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("db.sqlite");
        let config = SqliteConfig::new(path.to_string_lossy());
        let conns = (0..2)
            .map(|_| open_connection(&path, &config, true))
            .collect::<Result<Vec<_>>>()?;
        let workers = Arc::new(Workers::spawn("test", conns, false)?);
        let runs = (0..50).map(|i| {
            let workers = Arc::clone(&workers);
            async move {
                workers
                    .run("test", move |conn| {
                        conn.query_row("SELECT ?1 * 2", [i], |r| r.get::<_, i64>(0))
                            .map_err(sql_err("test"))
                    })
                    .await
            }
        });
        let answers = futures::future::try_join_all(runs).await?;
        assert_eq!(answers, (0..50).map(|i| i * 2).collect::<Vec<i64>>());
        Ok(())
    }

    /// A checkpoint copies the log while the writer connection is held: it runs on a
    /// connection of its own, so writes need not queue behind its sync.
    #[test]
    fn checkpoints_run_while_the_writer_connection_is_held() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("db.sqlite");
        let config = SqliteConfig::new(path.to_string_lossy());
        let conn = open_connection(&path, &config, false)?;
        let _: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(sql_err("test"))?;
        conn.execute_batch("CREATE TABLE t (v BLOB)")
            .map_err(sql_err("test"))?;
        let writer = Writer::spawn(conn, &path, &config)?;
        {
            let held = lock_connection(&writer.conn);
            // One commit of about 1200 pages: past the threshold, short of the limit
            // past which the writer itself would checkpoint.
            held.execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1200) \
                 INSERT INTO t SELECT zeroblob(4000) FROM n",
            )
            .map_err(sql_err("test"))?;
            let pages = writer.wal_pages.load(Ordering::Relaxed);
            assert!(
                (CHECKPOINT_PAGES..WAL_LIMIT_PAGES).contains(&pages),
                "{pages}"
            );
            writer.checkpoint_if_due();
            let deadline = Instant::now() + Duration::from_secs(30);
            while writer.checkpoint_queued.load(Ordering::Acquire) {
                assert!(Instant::now() < deadline, "the checkpoint did not finish");
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(writer.copied.load(Ordering::Relaxed), pages);
        }
        Ok(())
    }
}
