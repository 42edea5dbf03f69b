//! The Hermitage isolation tests (G0, G1a, G1b, G1c, OTV, PMP, P4, G-single, G2-item), run with
//! truly concurrent transactions.
//!
//! Each transaction lives on its own task and receives its steps one at a time, interleaved as
//! in Martin Kleppmann's Hermitage scripts. A step that does not answer within a short wait is
//! treated as *blocked* (a lock-based store making it wait for the other transaction): the
//! script goes on with the other transaction and the blocked step's answer is collected later.
//! Transactions begin with a time-out so a store that blocks for good aborts instead of hanging.
//! An error (abort, `VersionConflict`, time-out) is a legitimate way to prevent an anomaly; the
//! check only asserts, for each anomaly the reported isolation level forbids (see
//! [`IsolationLevel`]), that the committed outcome does not exhibit it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use storage_core::{
    IsolationLevel, Storage, StorageError, Transaction, TransactionOptions, TransactionalStorage,
};
use tokio::sync::{mpsc, oneshot};

use crate::check::{CheckResult, Context, Failure};
use crate::harness::{Harness, TransactionalHarness, open};

/// How long a step may take before it counts as blocked.
const BLOCKED_AFTER: Duration = Duration::from_millis(300);
/// The time-out every Hermitage transaction begins with.
const TX_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the script waits, at the end, for blocked steps.
const DRAIN: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
enum Step {
    Get(&'static str),
    Set(&'static str, i64),
    /// Set the key to the value this transaction last read for it, plus one.
    IncrementLastRead(&'static str),
    /// Every entry whose value satisfies the predicate (a predicate read through `entries()`).
    Scan(fn(i64) -> bool),
    Commit,
    Rollback,
}

#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Read(Option<i64>),
    Rows(Vec<String>),
    Done,
}

type Reply = Result<Answer, String>;
/// A reply and the moment the transaction's task produced it (the store had answered by then).
type Timed = (Reply, Instant);

struct Session {
    commands: mpsc::UnboundedSender<(Step, oneshot::Sender<Timed>)>,
    isolation: Arc<std::sync::Mutex<Option<IsolationLevel>>>,
}

fn number(v: Option<Value>) -> Option<i64> {
    v.and_then(|v| v.as_i64())
}

async fn execute(
    tx: &dyn Transaction<Value>,
    step: &Step,
    last_read: &mut BTreeMap<&'static str, i64>,
) -> Result<Answer, StorageError> {
    match step {
        Step::Get(k) => {
            let v = number(tx.get(k).await?);
            if let Some(v) = v {
                last_read.insert(k, v);
            }
            Ok(Answer::Read(v))
        }
        Step::Set(k, v) => tx.set(k, &json!(v)).await.map(|()| Answer::Done),
        Step::IncrementLastRead(k) => {
            let base = last_read.get(k).copied().unwrap_or(0);
            tx.set(k, &json!(base + 1)).await.map(|()| Answer::Done)
        }
        Step::Scan(pred) => {
            use futures::TryStreamExt;
            let rows: Vec<(String, Value)> = tx.entries().try_collect().await?;
            Ok(Answer::Rows(
                rows.into_iter()
                    .filter(|(_, v)| v.as_i64().is_some_and(pred))
                    .map(|(k, _)| k)
                    .collect(),
            ))
        }
        Step::Commit => tx.commit().await.map(|()| Answer::Done),
        Step::Rollback => tx.rollback().await.map(|()| Answer::Done),
    }
}

impl Session {
    /// A transaction on its own task; it begins on its first step.
    fn start<S: TransactionalStorage<Value> + 'static>(
        store: Arc<S>,
        level: IsolationLevel,
    ) -> Self {
        let (commands, mut rx) = mpsc::unbounded_channel::<(Step, oneshot::Sender<Timed>)>();
        let isolation = Arc::new(std::sync::Mutex::new(None));
        let reported = Arc::clone(&isolation);
        tokio::spawn(async move {
            let mut tx: Option<Box<dyn Transaction<Value>>> = None;
            let mut failed: Option<String> = None;
            let mut last_read = BTreeMap::new();
            while let Some((step, reply)) = rx.recv().await {
                if let Some(why) = &failed {
                    let _ = reply.send((
                        Err(format!("skipped: the transaction already failed ({why})")),
                        Instant::now(),
                    ));
                    continue;
                }
                if tx.is_none() {
                    let options = TransactionOptions::new()
                        .isolation(level)
                        .timeout(TX_TIMEOUT);
                    match store.begin(options).await {
                        Ok(t) => {
                            if let Ok(mut slot) = reported.lock() {
                                *slot = Some(t.isolation());
                            }
                            tx = Some(t);
                        }
                        Err(e) => {
                            let why = format!("begin failed: {e}");
                            failed = Some(why.clone());
                            let _ = reply.send((Err(why), Instant::now()));
                            continue;
                        }
                    }
                }
                let Some(t) = tx.as_deref() else { continue };
                let result = execute(t, &step, &mut last_read).await;
                if let Err(e) = &result {
                    failed = Some(e.code().to_string());
                    // Dropping rolls back whatever the failed transaction holds.
                    tx = None;
                }
                let _ = reply.send((result.map_err(|e| e.to_string()), Instant::now()));
            }
        });
        Self {
            commands,
            isolation,
        }
    }

    fn isolation(&self) -> Option<IsolationLevel> {
        self.isolation.lock().ok().and_then(|g| *g)
    }
}

/// One interleaved run: what each labelled step answered (after blocked steps drained).
struct Script {
    pending: Vec<(String, oneshot::Receiver<Timed>)>,
    answers: BTreeMap<String, Reply>,
    /// When each answered step's reply was produced, to order a read against another's commit.
    answered_at: BTreeMap<String, Instant>,
    trace: String,
}

impl Script {
    fn new() -> Self {
        Self {
            pending: Vec::new(),
            answers: BTreeMap::new(),
            answered_at: BTreeMap::new(),
            trace: String::new(),
        }
    }

    async fn step(&mut self, session: &Session, label: &str, step: Step) {
        let (tx, mut rx) = oneshot::channel();
        let _ = write!(self.trace, "\n  {label} {step:?}: ");
        if session.commands.send((step, tx)).is_err() {
            self.trace.push_str("session gone");
            self.answers
                .insert(label.to_owned(), Err("session gone".into()));
            return;
        }
        if let Ok(reply) = tokio::time::timeout(BLOCKED_AFTER, &mut rx).await {
            let (reply, at) =
                reply.unwrap_or_else(|_| (Err("session gone".into()), Instant::now()));
            let _ = write!(self.trace, "{reply:?}");
            self.record(label.to_owned(), reply, at);
        } else {
            self.trace.push_str("blocked");
            self.pending.push((label.to_owned(), rx));
        }
    }

    async fn drain(&mut self) -> Result<(), Failure> {
        for (label, rx) in std::mem::take(&mut self.pending) {
            let reply = tokio::time::timeout(DRAIN, rx).await.map_err(|_| {
                Failure::new(format!(
                    "step {label} was still blocked {DRAIN:?} after the script ended, though every \
                     transaction began with a {TX_TIMEOUT:?} time-out (a hang){}",
                    self.trace
                ))
            })?;
            let (reply, at) =
                reply.unwrap_or_else(|_| (Err("session gone".into()), Instant::now()));
            let _ = write!(self.trace, "\n  {label} (was blocked): {reply:?}");
            self.record(label, reply, at);
        }
        Ok(())
    }

    fn record(&mut self, label: String, reply: Reply, at: Instant) {
        self.answered_at.insert(label.clone(), at);
        self.answers.insert(label, reply);
    }

    /// Whether `read` saw `value` written by a transaction that had not yet committed: its
    /// `commit` step failed, or succeeded only after the read was answered. A read that waited
    /// on a lock and then returned the writer's *committed* value is legitimate.
    fn read_uncommitted(&self, read: &str, value: i64, commit: &str) -> bool {
        if self.read(read) != Some(value) {
            return false;
        }
        let committed_before_read = self.ok(commit)
            && matches!(
                (self.answered_at.get(commit), self.answered_at.get(read)),
                (Some(c), Some(r)) if c < r
            );
        !committed_before_read
    }

    fn read(&self, label: &str) -> Option<i64> {
        match self.answers.get(label) {
            Some(Ok(Answer::Read(v))) => *v,
            _ => None,
        }
    }

    fn rows(&self, label: &str) -> Option<&[String]> {
        match self.answers.get(label) {
            Some(Ok(Answer::Rows(r))) => Some(r),
            _ => None,
        }
    }

    fn ok(&self, label: &str) -> bool {
        matches!(self.answers.get(label), Some(Ok(_)))
    }
}

/// The anomalies, with the weakest level that forbids each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anomaly {
    /// Write cycles (dirty writes).
    G0,
    /// Aborted reads.
    G1a,
    /// Intermediate reads.
    G1b,
    /// Circular information flow.
    G1c,
    /// Observed transaction vanishes.
    Otv,
    /// Predicate-many-preceders.
    Pmp,
    /// Lost update.
    P4,
    /// Read skew.
    GSingle,
    /// Write skew.
    G2Item,
}

impl Anomaly {
    /// The weakest isolation level that forbids the anomaly (the `IsolationLevel` docs).
    pub fn forbidden_from(self) -> IsolationLevel {
        match self {
            Self::G0 => IsolationLevel::ReadUncommitted,
            Self::G1a | Self::G1b | Self::G1c => IsolationLevel::ReadCommitted,
            Self::Otv | Self::P4 | Self::GSingle => IsolationLevel::RepeatableRead,
            Self::Pmp => IsolationLevel::Snapshot,
            Self::G2Item => IsolationLevel::Serializable,
        }
    }
}

// The nine scripts read best side by side, as in Hermitage.
#[allow(clippy::too_many_lines)]
/// Runs `anomaly`'s script once at `level`; `Ok(Some(why))` when the anomaly occurred.
async fn run_once<S: TransactionalStorage<Value> + 'static>(
    store: Arc<S>,
    anomaly: Anomaly,
    level: IsolationLevel,
) -> Result<(Option<String>, Option<IsolationLevel>, String), Failure> {
    store.set("1", &json!(10)).await.ctx("seed 1")?;
    store.set("2", &json!(20)).await.ctx("seed 2")?;
    let t1 = Session::start(Arc::clone(&store), level);
    let t2 = Session::start(Arc::clone(&store), level);
    let t3 = Session::start(Arc::clone(&store), level);
    let mut s = Script::new();
    match anomaly {
        Anomaly::G0 => {
            s.step(&t1, "T1 set 1=11", Step::Set("1", 11)).await;
            s.step(&t2, "T2 set 1=12", Step::Set("1", 12)).await;
            s.step(&t1, "T1 set 2=21", Step::Set("2", 21)).await;
            s.step(&t1, "T1 commit", Step::Commit).await;
            s.step(&t2, "T2 set 2=22", Step::Set("2", 22)).await;
            s.step(&t2, "T2 commit", Step::Commit).await;
        }
        Anomaly::G1a => {
            s.step(&t1, "T1 set 1=101", Step::Set("1", 101)).await;
            s.step(&t2, "T2 get 1 (a)", Step::Get("1")).await;
            s.step(&t1, "T1 rollback", Step::Rollback).await;
            s.step(&t2, "T2 get 1 (b)", Step::Get("1")).await;
            s.step(&t2, "T2 commit", Step::Commit).await;
        }
        Anomaly::G1b => {
            s.step(&t1, "T1 set 1=101", Step::Set("1", 101)).await;
            s.step(&t2, "T2 get 1 (a)", Step::Get("1")).await;
            s.step(&t1, "T1 set 1=11", Step::Set("1", 11)).await;
            s.step(&t1, "T1 commit", Step::Commit).await;
            s.step(&t2, "T2 get 1 (b)", Step::Get("1")).await;
            s.step(&t2, "T2 commit", Step::Commit).await;
        }
        Anomaly::G1c => {
            s.step(&t1, "T1 set 1=11", Step::Set("1", 11)).await;
            s.step(&t2, "T2 set 2=22", Step::Set("2", 22)).await;
            s.step(&t1, "T1 get 2", Step::Get("2")).await;
            s.step(&t2, "T2 get 1", Step::Get("1")).await;
            s.step(&t1, "T1 commit", Step::Commit).await;
            s.step(&t2, "T2 commit", Step::Commit).await;
        }
        Anomaly::Otv => {
            s.step(&t1, "T1 set 1=11", Step::Set("1", 11)).await;
            s.step(&t1, "T1 set 2=19", Step::Set("2", 19)).await;
            s.step(&t2, "T2 set 1=12", Step::Set("1", 12)).await;
            s.step(&t1, "T1 commit", Step::Commit).await;
            s.step(&t3, "T3 get 1 (a)", Step::Get("1")).await;
            s.step(&t2, "T2 set 2=18", Step::Set("2", 18)).await;
            s.step(&t3, "T3 get 2 (a)", Step::Get("2")).await;
            s.step(&t2, "T2 commit", Step::Commit).await;
            s.step(&t3, "T3 get 2 (b)", Step::Get("2")).await;
            s.step(&t3, "T3 get 1 (b)", Step::Get("1")).await;
            s.step(&t3, "T3 commit", Step::Commit).await;
        }
        Anomaly::Pmp => {
            s.step(&t1, "T1 scan value=30 (a)", Step::Scan(|v| v == 30))
                .await;
            s.step(&t2, "T2 set 3=30", Step::Set("3", 30)).await;
            s.step(&t2, "T2 commit", Step::Commit).await;
            s.step(&t1, "T1 scan value%3=0 (b)", Step::Scan(|v| v % 3 == 0))
                .await;
            s.step(&t1, "T1 commit", Step::Commit).await;
        }
        Anomaly::P4 => {
            s.step(&t1, "T1 get 1", Step::Get("1")).await;
            s.step(&t2, "T2 get 1", Step::Get("1")).await;
            s.step(&t1, "T1 set 1=read+1", Step::IncrementLastRead("1"))
                .await;
            s.step(&t2, "T2 set 1=read+1", Step::IncrementLastRead("1"))
                .await;
            s.step(&t1, "T1 commit", Step::Commit).await;
            s.step(&t2, "T2 commit", Step::Commit).await;
        }
        Anomaly::GSingle => {
            s.step(&t1, "T1 get 1", Step::Get("1")).await;
            s.step(&t2, "T2 get 1", Step::Get("1")).await;
            s.step(&t2, "T2 get 2", Step::Get("2")).await;
            s.step(&t2, "T2 set 1=12", Step::Set("1", 12)).await;
            s.step(&t2, "T2 set 2=18", Step::Set("2", 18)).await;
            s.step(&t2, "T2 commit", Step::Commit).await;
            s.step(&t1, "T1 get 2", Step::Get("2")).await;
            s.step(&t1, "T1 commit", Step::Commit).await;
        }
        Anomaly::G2Item => {
            s.step(&t1, "T1 get 1", Step::Get("1")).await;
            s.step(&t1, "T1 get 2", Step::Get("2")).await;
            s.step(&t2, "T2 get 1", Step::Get("1")).await;
            s.step(&t2, "T2 get 2", Step::Get("2")).await;
            s.step(&t1, "T1 set 1=11", Step::Set("1", 11)).await;
            s.step(&t2, "T2 set 2=21", Step::Set("2", 21)).await;
            s.step(&t1, "T1 commit", Step::Commit).await;
            s.step(&t2, "T2 commit", Step::Commit).await;
        }
    }
    s.drain().await?;
    let final1 = number(store.get("1").await.ctx("read 1 after the script")?);
    let final2 = number(store.get("2").await.ctx("read 2 after the script")?);
    let _ = write!(s.trace, "\n  final: 1={final1:?} 2={final2:?}");
    let reported = [t1.isolation(), t2.isolation(), t3.isolation()]
        .into_iter()
        .flatten()
        .min();
    let found = judge(anomaly, &s, final1, final2);
    Ok((found, reported, s.trace))
}

/// Whether the script's outcome shows the anomaly.
fn judge(anomaly: Anomaly, s: &Script, final1: Option<i64>, final2: Option<i64>) -> Option<String> {
    let c1 = s.ok("T1 commit");
    let c2 = s.ok("T2 commit");
    match anomaly {
        Anomaly::G0 => {
            let allowed: Vec<(Option<i64>, Option<i64>)> = match (c1, c2) {
                (true, true) => vec![(Some(11), Some(21)), (Some(12), Some(22))],
                (true, false) => vec![(Some(11), Some(21))],
                (false, true) => vec![(Some(12), Some(22))],
                (false, false) => vec![(Some(10), Some(20))],
            };
            (!allowed.contains(&(final1, final2))).then(|| {
                format!("the final state mixes the two writers: 1={final1:?} 2={final2:?}")
            })
        }
        Anomaly::G1a => ["T2 get 1 (a)", "T2 get 1 (b)"]
            .into_iter()
            .find(|l| s.read(l) == Some(101))
            .map(|l| format!("{l} read 101, written by a transaction that rolled back")),
        Anomaly::G1b => ["T2 get 1 (a)", "T2 get 1 (b)"]
            .into_iter()
            .find(|l| s.read(l) == Some(101))
            .map(|l| format!("{l} read 101, an intermediate value T1 overwrote before committing")),
        Anomaly::G1c => {
            if s.read_uncommitted("T1 get 2", 22, "T2 commit")
                || s.read_uncommitted("T2 get 1", 11, "T1 commit")
            {
                Some(
                    "a transaction read the other's uncommitted write (circular information flow)"
                        .into(),
                )
            } else {
                None
            }
        }
        Anomaly::Otv => {
            let seen: Vec<(&str, i64)> = [
                ("1", "T3 get 1 (a)"),
                ("2", "T3 get 2 (a)"),
                ("2", "T3 get 2 (b)"),
                ("1", "T3 get 1 (b)"),
            ]
            .into_iter()
            .filter_map(|(k, l)| s.read(l).map(|v| (k, v)))
            .collect();
            let states = [[10, 20], [11, 19], [12, 18]];
            let consistent = states.iter().any(|st| {
                seen.iter()
                    .all(|(k, v)| if *k == "1" { *v == st[0] } else { *v == st[1] })
            });
            (!consistent).then(|| format!("T3 observed {seen:?}, which no committed state holds"))
        }
        Anomaly::Pmp => {
            let later = s.rows("T1 scan value%3=0 (b)")?;
            let first = s.rows("T1 scan value=30 (a)")?;
            (first.is_empty() && later.iter().any(|k| k == "3")).then(|| {
                "T1's second predicate read saw a row T2 inserted after T1's first read".into()
            })
        }
        Anomaly::P4 => {
            let committed = i64::from(u8::from(c1)) + i64::from(u8::from(c2));
            (c1 && c2 && s.read("T1 get 1") == Some(10) && s.read("T2 get 1") == Some(10)
                || final1 != Some(10 + committed))
            .then(|| format!("{committed} increments committed but 1={final1:?} (a lost update)"))
        }
        Anomaly::GSingle => {
            (s.read("T1 get 1") == Some(10) && s.read("T1 get 2") == Some(18) && c1)
                .then(|| "T1 read 1 before T2 and 2 after T2 (read skew)".into())
        }
        Anomaly::G2Item => {
            let t1_saw_old = s.read("T1 get 2") == Some(20);
            let t2_saw_old = s.read("T2 get 1") == Some(10);
            (c1 && c2 && t1_saw_old && t2_saw_old).then(|| {
                "both transactions committed though each read what the other wrote (write skew)"
                    .into()
            })
        }
    }
}

/// Runs `anomaly` at every declared isolation level and fails when a level that forbids it lets it happen.
///
/// # Errors
/// A [`Failure`] naming the anomaly, the level and the interleaving that exhibited it.
pub async fn check_anomaly<H: TransactionalHarness>(h: &H, anomaly: Anomaly) -> CheckResult {
    let (_, probe) = open::<Value, _>(h).await?;
    let levels = probe.capabilities().isolation_levels;
    Harness::<Value>::close(h, probe).await.ctx("close")?;
    for level in levels {
        let (_, store) = open::<Value, _>(h).await?;
        let (found, reported, trace) = run_once(Arc::new(store), anomaly, level).await?;
        let reported = reported.unwrap_or(level);
        ensure!(
            reported >= level,
            "{anomaly:?}: requested {level}, a transaction reported {reported}"
        );
        if reported >= anomaly.forbidden_from()
            && let Some(why) = found
        {
            return Err(Failure::new(format!(
                "{anomaly:?} occurred at {reported} (requested {level}), which forbids it: {why}\ninterleaving:{trace}"
            )));
        }
    }
    Ok(())
}

/// G0 (write cycles): two writers of the same keys never leave a mix of their writes.
pub async fn hermitage_g0_write_cycles_are_prevented<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    check_anomaly(h, Anomaly::G0).await
}

/// G1a (aborted reads): nobody reads a value written by a transaction that rolled back.
pub async fn hermitage_g1a_aborted_reads_are_prevented<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    check_anomaly(h, Anomaly::G1a).await
}

/// G1b (intermediate reads): nobody reads a value its writer overwrote before committing.
pub async fn hermitage_g1b_intermediate_reads_are_prevented<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    check_anomaly(h, Anomaly::G1b).await
}

/// G1c (circular information flow): two transactions never read each other's uncommitted writes.
pub async fn hermitage_g1c_circular_information_flow_is_prevented<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    check_anomaly(h, Anomaly::G1c).await
}

/// OTV (observed transaction vanishes): a reader never sees part of one committed transaction and part of another.
pub async fn hermitage_otv_observed_transaction_vanishes_is_prevented<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    check_anomaly(h, Anomaly::Otv).await
}

/// PMP (predicate-many-preceders): a predicate read does not change within a transaction.
pub async fn hermitage_pmp_predicate_many_preceders_is_prevented<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    check_anomaly(h, Anomaly::Pmp).await
}

/// P4 (lost update): two concurrent read-modify-write increments never lose one.
pub async fn hermitage_p4_lost_update_is_prevented<H: TransactionalHarness>(h: &H) -> CheckResult {
    check_anomaly(h, Anomaly::P4).await
}

/// G-single (read skew): a transaction never reads one key before and another after a concurrent commit.
pub async fn hermitage_g_single_read_skew_is_prevented<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    check_anomaly(h, Anomaly::GSingle).await
}

/// G2-item (write skew): two transactions that read both keys and write one each do not both commit.
pub async fn hermitage_g2_item_write_skew_is_prevented<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    check_anomaly(h, Anomaly::G2Item).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage_core::ErrorCode;

    /// A script whose steps were answered in the order given.
    fn script(answers: &[(&str, Reply)]) -> Script {
        let mut s = Script::new();
        let start = Instant::now();
        for (i, (l, r)) in (0u64..).zip(answers) {
            s.record((*l).to_owned(), r.clone(), start + Duration::from_millis(i));
        }
        s
    }

    #[test]
    fn g1c_flags_a_dirty_read_but_not_a_read_that_waited_for_the_commit() {
        let dirty = script(&[
            ("T1 get 2", Ok(Answer::Read(Some(22)))),
            ("T2 get 1", Ok(Answer::Read(Some(10)))),
            ("T1 commit", Ok(Answer::Done)),
            ("T2 commit", Ok(Answer::Done)),
        ]);
        assert!(judge(Anomaly::G1c, &dirty, Some(11), Some(22)).is_some());
        // A lock-based store: T1's read blocked on T2's write lock, then saw T2's committed value.
        let waited = script(&[
            ("T2 get 1", Ok(Answer::Read(Some(10)))),
            ("T2 commit", Ok(Answer::Done)),
            ("T1 get 2", Ok(Answer::Read(Some(22)))),
            ("T1 commit", Ok(Answer::Done)),
        ]);
        assert!(judge(Anomaly::G1c, &waited, Some(11), Some(22)).is_none());
        // The writer never committed: whatever T1 read of it was uncommitted.
        let aborted = script(&[
            ("T2 get 1", Ok(Answer::Read(Some(10)))),
            ("T2 commit", Err(ErrorCode::VersionConflict.to_string())),
            ("T1 get 2", Ok(Answer::Read(Some(22)))),
            ("T1 commit", Ok(Answer::Done)),
        ]);
        assert!(judge(Anomaly::G1c, &aborted, Some(11), Some(20)).is_some());
    }

    #[test]
    fn a_lost_update_is_recognised() {
        let s = script(&[
            ("T1 get 1", Ok(Answer::Read(Some(10)))),
            ("T2 get 1", Ok(Answer::Read(Some(10)))),
            ("T1 commit", Ok(Answer::Done)),
            ("T2 commit", Ok(Answer::Done)),
        ]);
        assert!(judge(Anomaly::P4, &s, Some(11), Some(20)).is_some());
        let s = script(&[
            ("T1 get 1", Ok(Answer::Read(Some(10)))),
            ("T2 get 1", Ok(Answer::Read(Some(10)))),
            ("T1 commit", Ok(Answer::Done)),
            ("T2 commit", Err("VERSION_CONFLICT".into())),
        ]);
        assert!(judge(Anomaly::P4, &s, Some(11), Some(20)).is_none());
    }

    #[test]
    fn write_skew_needs_both_commits() {
        let both = script(&[
            ("T1 get 2", Ok(Answer::Read(Some(20)))),
            ("T2 get 1", Ok(Answer::Read(Some(10)))),
            ("T1 commit", Ok(Answer::Done)),
            ("T2 commit", Ok(Answer::Done)),
        ]);
        assert!(judge(Anomaly::G2Item, &both, Some(11), Some(21)).is_some());
        let one = script(&[
            ("T1 get 2", Ok(Answer::Read(Some(20)))),
            ("T2 get 1", Ok(Answer::Read(Some(10)))),
            ("T1 commit", Ok(Answer::Done)),
            ("T2 commit", Err(ErrorCode::VersionConflict.to_string())),
        ]);
        assert!(judge(Anomaly::G2Item, &one, Some(11), Some(20)).is_none());
    }

    #[test]
    fn every_anomaly_is_forbidden_at_serializable() {
        for a in [
            Anomaly::G0,
            Anomaly::G1a,
            Anomaly::G1b,
            Anomaly::G1c,
            Anomaly::Otv,
            Anomaly::Pmp,
            Anomaly::P4,
            Anomaly::GSingle,
            Anomaly::G2Item,
        ] {
            assert!(a.forbidden_from() <= IsolationLevel::Serializable);
        }
        assert_eq!(
            Anomaly::G2Item.forbidden_from(),
            IsolationLevel::Serializable
        );
    }
}
