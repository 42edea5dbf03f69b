//! The observable suite: change events describe committed changes only, in commit order;
//! hooks veto; watches filter; slow subscribers lag instead of blocking writers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use storage_core::{
    AfterEvent, BatchStorage, BeforeEvent, ChangeBatch, ChangeKind, ErrorCode, ObservableStorage,
    Operation, Storage, StorageError, Subscription, Tier, TransactionOptions, TransactionalStorage,
    WatchEvent, WatchPattern,
};

use crate::check::{CheckResult, Context, Failure, expect_error};
use crate::harness::{Harness, ObservableHarness, open};
use crate::support::{capabilities_agree, snapshot, within};

/// How long a change may take to arrive.
const ARRIVAL: Duration = Duration::from_secs(10);

/// The declared capabilities and the accessors agree, observable tier included.
pub async fn capabilities_agree_with_tier_accessors<H: ObservableHarness>(h: &H) -> CheckResult {
    let (_, store) = open::<Value, _>(h).await?;
    capabilities_agree(store, Tier::Observable)
}

/// The next change batch, failing on lag, resync, a closed stream or a time-out.
async fn next_batch(
    sub: &mut Subscription<Value>,
    what: &str,
) -> Result<ChangeBatch<Value>, Failure> {
    match within(ARRIVAL, what, sub.next()).await? {
        Some(WatchEvent::Changes(batch)) => Ok(batch),
        Some(WatchEvent::Lagged { missed }) => Err(Failure::new(format!(
            "{what}: lagged by {missed} with room to spare"
        ))),
        Some(WatchEvent::Resync { reason }) => {
            Err(Failure::new(format!("{what}: resync ({reason})")))
        }
        None => Err(Failure::new(format!("{what}: the subscription ended"))),
    }
}

/// The changes of a batch as `(kind, key, new value)`.
fn described(batch: &ChangeBatch<Value>) -> Vec<(ChangeKind, String, Option<Value>)> {
    batch
        .changes
        .iter()
        .map(|c| (c.kind, c.key.clone(), c.new_value.as_deref().cloned()))
        .collect()
}

fn by_key(
    mut changes: Vec<(ChangeKind, String, Option<Value>)>,
) -> Vec<(ChangeKind, String, Option<Value>)> {
    changes.sort_by(|a, b| a.1.cmp(&b.1));
    changes
}

fn set(key: &str, v: Value) -> (ChangeKind, String, Option<Value>) {
    (ChangeKind::Set, key.to_owned(), Some(v))
}

fn del(key: &str) -> (ChangeKind, String, Option<Value>) {
    (ChangeKind::Delete, key.to_owned(), None)
}

/// Writes a sentinel and checks it is the next thing the subscription delivers: whatever
/// happened before it announced nothing.
async fn expect_sentinel_next<S: Storage<Value> + ?Sized>(
    store: &S,
    sub: &mut Subscription<Value>,
    after: &str,
) -> CheckResult {
    store
        .set("zz-sentinel", &json!(after))
        .await
        .ctx("write the sentinel")?;
    let batch = next_batch(sub, "the sentinel").await?;
    ensure_eq!(
        described(&batch),
        vec![set("zz-sentinel", json!(after))],
        "the first batch after {after} (anything before the sentinel was announced wrongly)"
    );
    Ok(())
}

/// Single writes arrive one batch each, in commit order, with strictly increasing sequences.
pub async fn committed_writes_arrive_in_commit_order<H: ObservableHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    let mut sub = s.watch(WatchPattern::All, 1000).ctx("watch")?;
    s.set("b", &json!(1)).await.ctx("set")?;
    s.set("a", &json!(2)).await.ctx("set")?;
    s.set("b", &json!(3)).await.ctx("overwrite")?;
    s.delete("b").await.ctx("delete")?;
    let missing = s.delete("never").await.ctx("delete missing")?;
    ensure!(!missing, "delete of a missing key");
    s.set("c", &json!({"deep": [1]})).await.ctx("set")?;
    let expected = [
        vec![set("b", json!(1))],
        vec![set("a", json!(2))],
        vec![set("b", json!(3))],
        vec![del("b")],
        vec![set("c", json!({"deep": [1]}))],
    ];
    let mut last = None;
    for (i, want) in expected.iter().enumerate() {
        let batch = next_batch(&mut sub, &format!("batch {i}")).await?;
        ensure_eq!(&described(&batch), want, "batch {i}");
        if let Some(prev) = last {
            ensure!(
                batch.sequence > prev,
                "sequence {} after {prev}",
                batch.sequence
            );
        }
        last = Some(batch.sequence);
    }
    expect_sentinel_next(&s, &mut sub, "the single writes").await
}

/// Concurrent writers' changes arrive in one order with strictly increasing sequences, none lost.
pub async fn concurrent_writes_arrive_once_each_in_sequence_order<H: ObservableHarness>(
    h: &H,
) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    let s = Arc::new(s);
    let mut sub = s.watch(WatchPattern::All, 10_000).ctx("watch")?;
    let mut tasks = Vec::new();
    for w in 0..3 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            for i in 0..30 {
                s.set(&format!("w{w}-{i:02}"), &json!(i)).await?;
            }
            Ok::<(), StorageError>(())
        }));
    }
    for t in tasks {
        within(Duration::from_secs(60), "writer", t)
            .await?
            .map_err(|e| Failure::new(format!("writer panicked: {e}")))?
            .ctx("writer")?;
    }
    let mut seen = Vec::new();
    let mut last: Option<u64> = None;
    while seen.len() < 90 {
        let batch = next_batch(&mut sub, &format!("change {}", seen.len())).await?;
        if let Some(prev) = last {
            ensure!(
                batch.sequence > prev,
                "sequence {} after {prev}",
                batch.sequence
            );
        }
        last = Some(batch.sequence);
        seen.extend(batch.changes.iter().map(|c| c.key.clone()));
    }
    // Per writer, its own writes keep their order.
    for w in 0..3 {
        let mine: Vec<&String> = seen
            .iter()
            .filter(|k| k.starts_with(&format!("w{w}-")))
            .collect();
        let mut sorted = mine.clone();
        sorted.sort();
        ensure_eq!(mine.len(), 30, "changes of writer {w}");
        ensure_eq!(mine, sorted, "order of writer {w}'s changes");
    }
    expect_sentinel_next(s.as_ref(), &mut sub, "the concurrent writes").await
}

/// A committed transaction arrives as one batch holding its changes in order.
pub async fn a_transaction_arrives_as_one_batch<H: ObservableHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    s.set("a", &json!(0)).await.ctx("seed")?;
    let mut sub = s.watch(WatchPattern::All, 1000).ctx("watch")?;
    let tx = s.begin(TransactionOptions::new()).await.ctx("begin")?;
    tx.set("x", &json!(1)).await.ctx("set")?;
    tx.set("y", &json!(2)).await.ctx("set")?;
    tx.delete("a").await.ctx("delete")?;
    tx.commit().await.ctx("commit")?;
    let batch = next_batch(&mut sub, "the transaction").await?;
    // A transaction's writes touch distinct keys here, so the set of changes is what counts;
    // a store that buffers writes may apply them in key order at commit.
    ensure_eq!(
        by_key(described(&batch)),
        vec![del("a"), set("x", json!(1)), set("y", json!(2))],
        "the transaction's batch"
    );
    expect_sentinel_next(&s, &mut sub, "the transaction").await
}

/// Rolled-back, dropped and read-only transactions, and failed writes, announce nothing.
pub async fn only_committed_changes_are_announced<H: ObservableHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    s.set("a", &json!(0)).await.ctx("seed")?;
    let mut sub = s.watch(WatchPattern::All, 1000).ctx("watch")?;
    let tx = s.begin(TransactionOptions::new()).await.ctx("begin")?;
    tx.set("rolled-back", &json!(1)).await.ctx("set")?;
    tx.delete("a").await.ctx("delete")?;
    tx.rollback().await.ctx("rollback")?;
    {
        let tx = s.begin(TransactionOptions::new()).await.ctx("begin")?;
        tx.set("dropped", &json!(1)).await.ctx("set")?;
    }
    let ro = s
        .begin(TransactionOptions::new().read_only())
        .await
        .ctx("begin read-only")?;
    let _ = ro.set("read-only", &json!(1)).await;
    let _ = ro.commit().await;
    let _ = s.set("", &json!("bad key")).await;
    let _ = s
        .batch(vec![
            Operation::set("in-failed-batch", json!(1)),
            Operation::delete("\0"),
        ])
        .await;
    expect_sentinel_next(&s, &mut sub, "rollback, drop, read-only and failed writes").await
}

/// A batch arrives as one change batch with every change; a clear announces a delete per entry.
pub async fn batches_and_clears_announce_every_change<H: ObservableHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    s.set("old", &json!(0)).await.ctx("seed")?;
    let mut sub = s.watch(WatchPattern::All, 1000).ctx("watch")?;
    s.batch(vec![
        Operation::set("a", json!(1)),
        Operation::set("b", json!(2)),
        Operation::delete("old"),
        Operation::set("a", json!(3)),
    ])
    .await
    .ctx("batch")?;
    let batch = next_batch(&mut sub, "the batch").await?;
    ensure_eq!(
        described(&batch),
        vec![
            set("a", json!(1)),
            set("b", json!(2)),
            del("old"),
            set("a", json!(3))
        ],
        "the batch's changes"
    );
    s.set_many(vec![("c".into(), json!(4)), ("d".into(), json!(5))])
        .await
        .ctx("set_many")?;
    let batch = next_batch(&mut sub, "set_many").await?;
    ensure_eq!(
        described(&batch),
        vec![set("c", json!(4)), set("d", json!(5))],
        "set_many's changes"
    );
    s.clear().await.ctx("clear")?;
    let batch = next_batch(&mut sub, "clear").await?;
    ensure_eq!(
        by_key(described(&batch)),
        vec![del("a"), del("b"), del("c"), del("d")],
        "clear's changes (one delete per entry)"
    );
    expect_sentinel_next(&s, &mut sub, "the batch and the clear").await
}

fn veto(event: &BeforeEvent<'_, Value>) -> storage_core::Result<()> {
    let denied = match event {
        BeforeEvent::Set { key, .. } | BeforeEvent::Delete { key } => key.starts_with("deny"),
        BeforeEvent::Clear => true,
        BeforeEvent::Get { .. } => false,
    };
    if denied {
        Err(StorageError::new(
            ErrorCode::InvalidValue,
            "vetoed by a before-hook",
        ))
    } else {
        Ok(())
    }
}

/// A vetoing before-hook makes set, delete, clear, batch and transaction writes fail with its
/// error and leaves the store (and the change stream) unchanged; `off` removes it.
pub async fn a_vetoing_before_hook_leaves_the_store_unchanged<H: ObservableHarness>(
    h: &H,
) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    s.set("deny-me", &json!("existing")).await.ctx("seed")?;
    s.set("keep", &json!(1)).await.ctx("seed")?;
    let before = snapshot(&s).await?;
    let id = s.on_before(Arc::new(veto));
    let mut sub = s.watch(WatchPattern::All, 1000).ctx("watch")?;
    let vetoed = [ErrorCode::InvalidValue];
    expect_error(s.set("deny-new", &json!(1)).await, &vetoed, "vetoed set")?;
    expect_error(s.delete("deny-me").await, &vetoed, "vetoed delete")?;
    expect_error(s.clear().await, &vetoed, "vetoed clear")?;
    expect_error(
        s.batch(vec![
            Operation::set("fine", json!(1)),
            Operation::set("deny-x", json!(2)),
        ])
        .await,
        &vetoed,
        "batch with a vetoed operation",
    )?;
    let tx = s.begin(TransactionOptions::new()).await.ctx("begin")?;
    let in_tx = tx
        .set("fine-in-tx", &json!(1))
        .await
        .and(tx.set("deny-in-tx", &json!(1)).await);
    let committed = match in_tx {
        Err(e) => {
            ensure_eq!(
                e.code(),
                ErrorCode::InvalidValue,
                "vetoed write in a transaction ({e})"
            );
            drop(tx);
            false
        }
        Ok(()) => tx.commit().await.is_ok(),
    };
    ensure!(!committed, "a transaction holding a vetoed write committed");
    ensure_eq!(
        snapshot(&s).await?,
        before,
        "entries after vetoed operations"
    );
    expect_sentinel_next(&s, &mut sub, "vetoed operations").await?;
    ensure!(s.off(id), "off of a registered hook");
    ensure!(!s.off(id), "off of a removed hook");
    s.set("deny-later", &json!(1)).await.ctx("set after off")?;
    Ok(())
}

/// A before-hook sees reads too and can veto them with its error.
pub async fn a_before_hook_can_veto_reads<H: ObservableHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    s.set("secret", &json!("hidden")).await.ctx("seed")?;
    s.set("open", &json!("visible")).await.ctx("seed")?;
    let id = s.on_before(Arc::new(|event: &BeforeEvent<'_, Value>| match event {
        BeforeEvent::Get { key } if *key == "secret" => Err(StorageError::new(
            ErrorCode::Unsupported,
            "reads of this key are vetoed",
        )),
        _ => Ok(()),
    }));
    expect_error(
        s.get("secret").await,
        &[ErrorCode::Unsupported],
        "a vetoed read",
    )?;
    ensure_eq!(
        s.get("open").await.ctx("get")?,
        Some(json!("visible")),
        "a read the hook allows"
    );
    ensure!(s.off(id), "off");
    ensure_eq!(
        s.get("secret").await.ctx("get after off")?,
        Some(json!("hidden")),
        "the read after off"
    );
    Ok(())
}

/// After-hooks see committed writes in order (and nothing from a rollback); `off` stops them.
pub async fn after_hooks_see_committed_writes<H: ObservableHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    let seen: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let id = s.on_after(Arc::new(move |event: &AfterEvent<'_, Value>| {
        let line = match event {
            AfterEvent::Get { .. } => return,
            AfterEvent::Set { key, value } => format!("set {key} {value}"),
            AfterEvent::Delete { key, existed } => format!("delete {key} {existed}"),
            AfterEvent::Clear { removed } => format!("clear {removed}"),
        };
        if let Ok(mut v) = sink.lock() {
            v.push(line);
        }
    }));
    s.set("a", &json!(1)).await.ctx("set")?;
    let tx = s.begin(TransactionOptions::new()).await.ctx("begin")?;
    tx.set("rolled", &json!(1)).await.ctx("set")?;
    tx.rollback().await.ctx("rollback")?;
    s.set("b", &json!(2)).await.ctx("set")?;
    s.delete("a").await.ctx("delete")?;
    s.clear().await.ctx("clear")?;
    let expected = vec!["set a 1", "set b 2", "delete a true", "clear 1"];
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    loop {
        let got = seen.lock().map(|v| v.clone()).unwrap_or_default();
        if got.len() >= expected.len() || tokio::time::Instant::now() > deadline {
            ensure_eq!(got, expected, "after-events");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ensure!(s.off(id), "off of an after-hook");
    s.set("c", &json!(3)).await.ctx("set after off")?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    ensure_eq!(
        seen.lock().map(|v| v.len()).unwrap_or_default(),
        expected.len(),
        "after-events after off"
    );
    Ok(())
}

/// A glob watch delivers only the changes whose keys match (`*`, `?`, `\` escapes), filtering
/// inside batches too.
pub async fn watch_by_glob_delivers_matching_keys_only<H: ObservableHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    let mut sub = s
        .watch(WatchPattern::Glob("user:*".into()), 1000)
        .ctx("watch")?;
    let mut one = s
        .watch(WatchPattern::Glob("k?".into()), 1000)
        .ctx("watch")?;
    let mut star = s
        .watch(WatchPattern::Glob("a\\*b".into()), 1000)
        .ctx("watch")?;
    for key in [
        "user:1", "order:1", "xuser:2", "user:", "k1", "k12", "a*b", "aXb",
    ] {
        s.set(key, &json!(key)).await.ctx("set")?;
    }
    s.batch(vec![
        Operation::set("order:2", json!(0)),
        Operation::set("user:2", json!(1)),
        Operation::set("k2", json!(2)),
    ])
    .await
    .ctx("batch")?;
    s.set("user:end", &json!(0)).await.ctx("set")?;
    s.set("k3", &json!(0)).await.ctx("set")?;
    s.set("a*b", &json!("end")).await.ctx("set")?;
    let mut keys = Vec::new();
    for i in 0..4 {
        keys.extend(
            next_batch(&mut sub, &format!("user:* batch {i}"))
                .await?
                .changes
                .into_iter()
                .map(|c| c.key),
        );
    }
    ensure_eq!(
        keys,
        vec!["user:1", "user:", "user:2", "user:end"],
        "keys delivered to user:*"
    );
    let mut keys = Vec::new();
    for i in 0..3 {
        keys.extend(
            next_batch(&mut one, &format!("k? batch {i}"))
                .await?
                .changes
                .into_iter()
                .map(|c| c.key),
        );
    }
    ensure_eq!(keys, vec!["k1", "k2", "k3"], "keys delivered to k?");
    let first = next_batch(&mut star, "a\\*b").await?;
    ensure_eq!(
        described(&first),
        vec![set("a*b", json!("a*b"))],
        "an escaped star matches itself only"
    );
    let second = next_batch(&mut star, "a\\*b").await?;
    ensure_eq!(
        described(&second),
        vec![set("a*b", json!("end"))],
        "the next a*b change"
    );
    Ok(())
}

/// A regex watch matches the whole key; a malformed pattern is `InvalidQuery`.
pub async fn watch_by_regex_matches_whole_keys<H: ObservableHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    expect_error(
        s.watch(WatchPattern::Regex("(".into()), 10).map(|_| ()),
        &[ErrorCode::InvalidQuery],
        "watch with a malformed regex",
    )?;
    let mut sub = s
        .watch(WatchPattern::Regex("k[0-9]+".into()), 1000)
        .ctx("watch")?;
    for key in ["xk1", "k1x", "k12", "k", "K1", "k7"] {
        s.set(key, &json!(0)).await.ctx("set")?;
    }
    let a = next_batch(&mut sub, "first match").await?;
    let b = next_batch(&mut sub, "second match").await?;
    ensure_eq!(
        (a.changes[0].key.as_str(), b.changes[0].key.as_str()),
        ("k12", "k7"),
        "keys matching ^k[0-9]+$"
    );
    Ok(())
}

/// Dropping one subscription leaves writers and the other subscriptions unaffected.
pub async fn dropping_a_subscription_leaves_others_unaffected<H: ObservableHarness>(
    h: &H,
) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    let dropped = s.watch(WatchPattern::All, 1).ctx("watch")?;
    let unsubscribed = s.watch(WatchPattern::All, 1).ctx("watch")?;
    let mut kept = s.watch(WatchPattern::All, 1000).ctx("watch")?;
    drop(dropped);
    unsubscribed.unsubscribe();
    within(
        Duration::from_secs(10),
        "100 writes after unsubscribing",
        async {
            for i in 0..100 {
                s.set(&format!("k{i:03}"), &json!(i)).await?;
            }
            Ok::<(), StorageError>(())
        },
    )
    .await?
    .ctx("writes")?;
    for i in 0..100 {
        let batch = next_batch(&mut kept, "the kept subscription").await?;
        ensure_eq!(
            described(&batch),
            vec![set(&format!("k{i:03}"), json!(i))],
            "change {i}"
        );
    }
    Ok(())
}

/// A subscriber that never reads does not block writers; its lag is counted and reported as a
/// `Lagged` event, followed by the newest changes.
pub async fn a_stalled_subscriber_lags_without_blocking_writers<H: ObservableHarness>(
    h: &H,
) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    let mut stalled = s.watch(WatchPattern::All, 4).ctx("watch")?;
    within(
        Duration::from_secs(20),
        "300 writes with a stalled subscriber",
        async {
            for i in 0..300 {
                s.set(&format!("k{i:03}"), &json!(i)).await?;
            }
            Ok::<(), StorageError>(())
        },
    )
    .await?
    .ctx("writes")?;
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    while stalled.lagged() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ensure!(
        stalled.lagged() > 0,
        "a subscriber of capacity 4 that read nothing of 300 changes reports no lag"
    );
    let mut lag_reported = false;
    let mut last_key = None;
    for _ in 0..50 {
        match within(Duration::from_secs(1), "draining", stalled.next()).await {
            Ok(Some(WatchEvent::Lagged { missed })) => {
                ensure!(missed > 0, "a Lagged event with missed = 0");
                lag_reported = true;
            }
            Ok(Some(WatchEvent::Changes(b))) => last_key = b.changes.last().map(|c| c.key.clone()),
            Ok(Some(WatchEvent::Resync { .. })) => lag_reported = true,
            Ok(None) | Err(_) => break,
        }
        if last_key.as_deref() == Some("k299") {
            break;
        }
    }
    ensure!(
        lag_reported,
        "no Lagged event reached the stalled subscriber"
    );
    ensure_eq!(
        last_key.as_deref(),
        Some("k299"),
        "the newest change after the lag"
    );
    Ok(())
}

/// With `cross_process_watch`, a watcher on one handle receives changes written through another
/// handle on the same namespace.
pub async fn changes_cross_handles_when_declared<H: ObservableHarness>(h: &H) -> CheckResult {
    let (ns, a) = open::<Value, _>(h).await?;
    if !a.capabilities().cross_process_watch {
        return Ok(());
    }
    let b = Harness::<Value>::open(h, &ns)
        .await
        .ctx("open a second handle")?;
    let mut sub = a.watch(WatchPattern::All, 1000).ctx("watch")?;
    b.set("from-b", &json!(1)).await.ctx("set through b")?;
    let tx = b.begin(TransactionOptions::new()).await.ctx("begin on b")?;
    tx.set("tx-1", &json!(1)).await.ctx("set")?;
    tx.set("tx-2", &json!(2)).await.ctx("set")?;
    tx.commit().await.ctx("commit on b")?;
    let first = next_batch(&mut sub, "a change made through another handle").await?;
    ensure_eq!(
        described(&first),
        vec![set("from-b", json!(1))],
        "the first cross-handle change"
    );
    let second = next_batch(&mut sub, "a transaction made through another handle").await?;
    ensure_eq!(
        by_key(described(&second)),
        vec![set("tx-1", json!(1)), set("tx-2", json!(2))],
        "the cross-handle transaction"
    );
    ensure!(
        second.sequence > first.sequence,
        "cross-handle sequences increase"
    );
    Ok(())
}
