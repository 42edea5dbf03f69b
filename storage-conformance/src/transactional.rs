//! The transactional suite: commit, rollback, savepoints, read-only, time-outs, retries and
//! the isolation level a transaction reports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use storage_core::{
    ErrorCode, IsolationLevel, Storage, StorageError, Tier, Transaction, TransactionOptions,
    TransactionState, TransactionalExt, TransactionalStorage,
};

use crate::check::{CheckResult, Context, Failure, expect_error};
use crate::harness::{TransactionalHarness, open};
use crate::prop::{Regressions, run_async};
use crate::support::{all_keys, capabilities_agree, snapshot, within};
use crate::values::key_strategy;

/// Every isolation level, weakest first.
pub const LEVELS: [IsolationLevel; 5] = [
    IsolationLevel::ReadUncommitted,
    IsolationLevel::ReadCommitted,
    IsolationLevel::RepeatableRead,
    IsolationLevel::Snapshot,
    IsolationLevel::Serializable,
];

/// The declared capabilities and the accessors agree, transactional tier included.
pub async fn capabilities_agree_with_tier_accessors<H: TransactionalHarness>(h: &H) -> CheckResult {
    let (_, store) = open::<Value, _>(h).await?;
    capabilities_agree(store, Tier::Transactional)
}

async fn seeded<H: TransactionalHarness>(
    h: &H,
) -> Result<<H as crate::Harness<Value>>::Store, Failure> {
    let (_, s) = open::<Value, _>(h).await?;
    s.set("a", &json!(1)).await.ctx("seed a")?;
    s.set("b", &json!(2)).await.ctx("seed b")?;
    Ok(s)
}

fn default_options<S: Storage<Value> + ?Sized>(s: &S) -> TransactionOptions {
    // The weakest level that hides uncommitted writes, or the strongest the store has.
    let caps = s.capabilities();
    let level = if caps.supports_isolation(IsolationLevel::ReadCommitted) {
        IsolationLevel::ReadCommitted
    } else {
        caps.isolation_levels
            .iter()
            .copied()
            .max()
            .unwrap_or(IsolationLevel::ReadUncommitted)
    };
    TransactionOptions::new().isolation(level)
}

/// A committed transaction's writes (set, overwrite, delete) all become visible, and its state is `Committed`.
pub async fn committed_writes_become_visible<H: TransactionalHarness>(h: &H) -> CheckResult {
    let s = seeded(h).await?;
    let tx = s.begin(default_options(&s)).await.ctx("begin")?;
    ensure_eq!(
        tx.state(),
        TransactionState::Active,
        "state of a new transaction"
    );
    tx.set("c", &json!(3)).await.ctx("set c")?;
    tx.set("a", &json!(10)).await.ctx("overwrite a")?;
    ensure!(
        tx.delete("b").await.ctx("delete b")?,
        "delete of an existing key in a transaction"
    );
    tx.commit().await.ctx("commit")?;
    ensure_eq!(
        tx.state(),
        TransactionState::Committed,
        "state after commit"
    );
    ensure_eq!(
        snapshot(&s).await?,
        vec![("a".to_owned(), json!(10)), ("c".to_owned(), json!(3))],
        "entries after commit"
    );
    Ok(())
}

/// A transaction reads its own writes: get, has, size and keys reflect them before commit.
pub async fn a_transaction_sees_its_own_writes<H: TransactionalHarness>(h: &H) -> CheckResult {
    let s = seeded(h).await?;
    let tx = s.begin(default_options(&s)).await.ctx("begin")?;
    tx.set("c", &json!(3)).await.ctx("set")?;
    tx.delete("a").await.ctx("delete")?;
    ensure_eq!(tx.get("c").await.ctx("get")?, Some(json!(3)), "own write");
    ensure_eq!(tx.get("a").await.ctx("get")?, None, "own delete");
    ensure!(!tx.has("a").await.ctx("has")?, "has after own delete");
    ensure_eq!(
        tx.size().await.ctx("size")?,
        2,
        "size inside the transaction"
    );
    ensure_eq!(
        all_keys(tx.as_ref()).await?,
        vec!["b".to_owned(), "c".to_owned()],
        "keys inside the transaction"
    );
    ensure_eq!(
        snapshot(tx.as_ref()).await?,
        vec![("b".to_owned(), json!(2)), ("c".to_owned(), json!(3))],
        "entries inside the transaction"
    );
    tx.rollback().await.ctx("rollback")?;
    Ok(())
}

/// Bad keys inside a transaction give `InvalidKey`, and rolling back leaves the store unchanged.
pub async fn invalid_keys_in_a_transaction_are_rejected<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    let s = seeded(h).await?;
    let before = snapshot(&s).await?;
    let tx = s.begin(default_options(&s)).await.ctx("begin")?;
    tx.set("fine", &json!(1)).await.ctx("set")?;
    let invalid = [ErrorCode::InvalidKey];
    for (class, key) in crate::values::bad_keys() {
        expect_error(
            tx.set(&key, &json!(1)).await,
            &invalid,
            format_args!("set in a transaction with {class}"),
        )?;
        expect_error(
            tx.get(&key).await,
            &invalid,
            format_args!("get in a transaction with {class}"),
        )?;
        expect_error(
            tx.delete(&key).await,
            &invalid,
            format_args!("delete in a transaction with {class}"),
        )?;
    }
    if tx.state() == TransactionState::Active {
        tx.rollback().await.ctx("rollback")?;
    }
    ensure_eq!(
        snapshot(&s).await?,
        before,
        "entries after a transaction with refused keys"
    );
    Ok(())
}

/// Writes of an open transaction are invisible to others (at read committed and above).
pub async fn uncommitted_writes_are_invisible_to_others<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    let s = seeded(h).await?;
    let options = default_options(&s);
    let tx = s.begin(options).await.ctx("begin")?;
    if tx.isolation() < IsolationLevel::ReadCommitted {
        // A read-uncommitted store may show them; nothing is promised.
        return tx.rollback().await.ctx("rollback");
    }
    tx.set("a", &json!("dirty")).await.ctx("set")?;
    tx.set("new", &json!(1)).await.ctx("set")?;
    tx.delete("b").await.ctx("delete")?;
    ensure_eq!(
        s.get("a").await.ctx("get")?,
        Some(json!(1)),
        "another reader during the transaction"
    );
    ensure_eq!(
        s.has("new").await.ctx("has")?,
        false,
        "a key created by an open transaction"
    );
    ensure_eq!(
        s.get("b").await.ctx("get")?,
        Some(json!(2)),
        "a key deleted by an open transaction"
    );
    ensure_eq!(
        s.size().await.ctx("size")?,
        2,
        "size during the transaction"
    );
    tx.rollback().await.ctx("rollback")?;
    Ok(())
}

/// A rolled-back transaction leaves the store as it was, and then refuses further use with
/// `TransactionAborted`.
pub async fn rolled_back_writes_vanish<H: TransactionalHarness>(h: &H) -> CheckResult {
    let s = seeded(h).await?;
    let before = snapshot(&s).await?;
    let tx = s.begin(default_options(&s)).await.ctx("begin")?;
    tx.set("a", &json!("changed")).await.ctx("set")?;
    tx.set("c", &json!(3)).await.ctx("set")?;
    tx.delete("b").await.ctx("delete")?;
    tx.clear().await.ctx("clear")?;
    tx.set("d", &json!(4)).await.ctx("set after clear")?;
    tx.rollback().await.ctx("rollback")?;
    ensure_eq!(
        tx.state(),
        TransactionState::Aborted,
        "state after rollback"
    );
    ensure_eq!(snapshot(&s).await?, before, "entries after rollback");
    let aborted = [ErrorCode::TransactionAborted];
    expect_error(tx.set("x", &json!(1)).await, &aborted, "set after rollback")?;
    expect_error(tx.commit().await, &aborted, "commit after rollback")?;
    expect_error(tx.rollback().await, &aborted, "rollback after rollback")?;
    ensure_eq!(
        snapshot(&s).await?,
        before,
        "entries after use of a rolled-back transaction"
    );
    Ok(())
}

/// Dropping a transaction without commit rolls it back.
pub async fn a_dropped_transaction_rolls_back<H: TransactionalHarness>(h: &H) -> CheckResult {
    let s = seeded(h).await?;
    let before = snapshot(&s).await?;
    {
        let tx = s.begin(default_options(&s)).await.ctx("begin")?;
        tx.set("a", &json!("changed")).await.ctx("set")?;
        tx.delete("b").await.ctx("delete")?;
        tx.set("c", &json!(3)).await.ctx("set")?;
    }
    ensure_eq!(
        snapshot(&s).await?,
        before,
        "entries after dropping an open transaction"
    );
    // The dropped transaction must not hold anything that blocks the next one.
    let tx = within(
        Duration::from_secs(10),
        "begin after a dropped transaction",
        s.begin(default_options(&s)),
    )
    .await?
    .ctx("begin")?;
    tx.set("a", &json!(5)).await.ctx("set")?;
    within(
        Duration::from_secs(10),
        "commit after a dropped transaction",
        tx.commit(),
    )
    .await?
    .ctx("commit")?;
    ensure_eq!(
        s.get("a").await.ctx("get")?,
        Some(json!(5)),
        "a write after the dropped transaction"
    );
    Ok(())
}

/// Committing twice fails with `TransactionAborted` and changes nothing more.
pub async fn a_committed_transaction_cannot_be_reused<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    let s = seeded(h).await?;
    let tx = s.begin(default_options(&s)).await.ctx("begin")?;
    tx.set("c", &json!(3)).await.ctx("set")?;
    tx.commit().await.ctx("commit")?;
    let after = snapshot(&s).await?;
    let aborted = [ErrorCode::TransactionAborted];
    expect_error(tx.commit().await, &aborted, "second commit")?;
    expect_error(tx.set("d", &json!(4)).await, &aborted, "set after commit")?;
    expect_error(tx.rollback().await, &aborted, "rollback after commit")?;
    ensure_eq!(snapshot(&s).await?, after, "entries after reuse attempts");
    Ok(())
}

/// A clear inside a transaction empties the store at commit, and only then.
pub async fn a_clear_in_a_transaction_applies_at_commit<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    let s = seeded(h).await?;
    let tx = s.begin(default_options(&s)).await.ctx("begin")?;
    tx.clear().await.ctx("clear")?;
    tx.set("z", &json!(26)).await.ctx("set")?;
    ensure_eq!(tx.size().await.ctx("size")?, 1, "size inside after clear");
    if tx.isolation() >= IsolationLevel::ReadCommitted {
        ensure_eq!(s.size().await.ctx("size")?, 2, "size outside before commit");
    }
    tx.commit().await.ctx("commit")?;
    ensure_eq!(
        snapshot(&s).await?,
        vec![("z".to_owned(), json!(26))],
        "entries after commit"
    );
    Ok(())
}

/// Savepoints nest, `rollback_to` undoes everything after one (later savepoints go, it stays);
/// a store without savepoints answers `Unsupported`.
pub async fn savepoints_nest_and_rollback_to_undoes_later_writes<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    let s = seeded(h).await?;
    let tx = s.begin(default_options(&s)).await.ctx("begin")?;
    if !s.capabilities().savepoints {
        expect_error(
            tx.savepoint("sp").await,
            &[ErrorCode::Unsupported],
            "savepoint without savepoints",
        )?;
        return tx.rollback().await.ctx("rollback");
    }
    tx.set("a", &json!(10)).await.ctx("set")?;
    tx.savepoint("one").await.ctx("savepoint one")?;
    tx.set("b", &json!(20)).await.ctx("set")?;
    tx.savepoint("two").await.ctx("savepoint two")?;
    tx.delete("a").await.ctx("delete")?;
    tx.set("c", &json!(30)).await.ctx("set")?;
    tx.rollback_to("two").await.ctx("rollback_to two")?;
    ensure_eq!(
        snapshot(tx.as_ref()).await?,
        vec![("a".to_owned(), json!(10)), ("b".to_owned(), json!(20))],
        "after rollback_to two"
    );
    tx.set("d", &json!(40)).await.ctx("set")?;
    tx.rollback_to("one").await.ctx("rollback_to one")?;
    ensure_eq!(
        snapshot(tx.as_ref()).await?,
        vec![("a".to_owned(), json!(10)), ("b".to_owned(), json!(2))],
        "after rollback_to one"
    );
    expect_error(
        tx.rollback_to("two").await,
        &[ErrorCode::KeyNotFound],
        "rollback_to a savepoint released by an earlier one",
    )?;
    tx.rollback_to("one")
        .await
        .ctx("rollback_to one again (it stays)")?;
    expect_error(
        tx.rollback_to("never").await,
        &[ErrorCode::KeyNotFound],
        "rollback_to an unknown savepoint",
    )?;
    tx.commit().await.ctx("commit")?;
    ensure_eq!(
        snapshot(&s).await?,
        vec![("a".to_owned(), json!(10)), ("b".to_owned(), json!(2))],
        "entries after commit"
    );
    Ok(())
}

#[derive(Debug, Clone)]
enum TxOp {
    Set(String, i64),
    Delete(String),
    Get(String),
    Savepoint(&'static str),
    RollbackTo(&'static str),
}

fn tx_op() -> BoxedStrategy<TxOp> {
    let name = prop::sample::select(vec!["s1", "s2", "s3"]);
    prop_oneof![
        4 => (key_strategy(), any::<i64>()).prop_map(|(k, v)| TxOp::Set(k, v)),
        2 => key_strategy().prop_map(TxOp::Delete),
        2 => key_strategy().prop_map(TxOp::Get),
        2 => name.clone().prop_map(TxOp::Savepoint),
        2 => name.prop_map(TxOp::RollbackTo),
    ]
    .boxed()
}

/// Random sequences of writes, savepoints and rollbacks inside a transaction match a model
/// (a stack of named snapshots), and the commit (or rollback) leaves what the model says.
// Async like every other check, so macros and self-tests call all checks alike.
#[allow(clippy::unused_async)]
pub async fn random_savepoint_sequences_match_a_model<H: TransactionalHarness>(
    h: &H,
    regressions: Regressions,
) -> CheckResult {
    let strategy = (prop::collection::vec(tx_op(), 1..25), any::<bool>());
    run_async(&strategy, regressions, |(ops, commit)| async move {
        let (_, s) = open::<Value, _>(h).await?;
        s.set("a", &json!(0)).await.ctx("seed")?;
        let initial: BTreeMap<String, Value> = snapshot(&s).await?.into_iter().collect();
        let savepoints = s.capabilities().savepoints;
        let tx = s.begin(default_options(&s)).await.ctx("begin")?;
        let mut state = initial.clone();
        let mut stack: Vec<(&'static str, BTreeMap<String, Value>)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let step = format!("step {i} {op:?}");
            match op {
                TxOp::Set(k, v) => {
                    tx.set(k, &json!(v)).await.ctx(&step)?;
                    state.insert(k.clone(), json!(v));
                }
                TxOp::Delete(k) => {
                    ensure_eq!(
                        tx.delete(k).await.ctx(&step)?,
                        state.remove(k).is_some(),
                        "{step}"
                    );
                }
                TxOp::Get(k) => {
                    ensure_eq!(tx.get(k).await.ctx(&step)?, state.get(k).cloned(), "{step}");
                }
                TxOp::Savepoint(name) if !savepoints => {
                    expect_error(tx.savepoint(name).await, &[ErrorCode::Unsupported], &step)?;
                }
                TxOp::RollbackTo(name) if !savepoints => {
                    expect_error(
                        tx.rollback_to(name).await,
                        &[ErrorCode::Unsupported, ErrorCode::KeyNotFound],
                        &step,
                    )?;
                }
                TxOp::Savepoint(name) => {
                    tx.savepoint(name).await.ctx(&step)?;
                    stack.retain(|(n, _)| n != name);
                    stack.push((name, state.clone()));
                }
                TxOp::RollbackTo(name) => match stack.iter().position(|(n, _)| n == name) {
                    None => {
                        expect_error(tx.rollback_to(name).await, &[ErrorCode::KeyNotFound], &step)?;
                    }
                    Some(pos) => {
                        tx.rollback_to(name).await.ctx(&step)?;
                        stack.truncate(pos + 1);
                        state = stack[pos].1.clone();
                    }
                },
            }
            let inside: BTreeMap<String, Value> =
                snapshot(tx.as_ref()).await?.into_iter().collect();
            ensure!(
                inside == state,
                "after {step}: the transaction holds {inside:?}, the model {state:?}"
            );
        }
        let expected = if commit {
            tx.commit().await.ctx("commit")?;
            state
        } else {
            tx.rollback().await.ctx("rollback")?;
            initial
        };
        let after: BTreeMap<String, Value> = snapshot(&s).await?.into_iter().collect();
        ensure!(
            after == expected,
            "after {}: the store holds {after:?}, the model {expected:?}",
            if commit { "commit" } else { "rollback" }
        );
        Ok(())
    })
}

/// A read-only transaction rejects set, delete and clear with `Unsupported`, still reads, and changes nothing.
pub async fn read_only_transactions_reject_writes<H: TransactionalHarness>(h: &H) -> CheckResult {
    let s = seeded(h).await?;
    let before = snapshot(&s).await?;
    let tx = s
        .begin(default_options(&s).read_only())
        .await
        .ctx("begin read-only")?;
    let unsupported = [ErrorCode::Unsupported];
    expect_error(
        tx.set("c", &json!(3)).await,
        &unsupported,
        "set in a read-only transaction",
    )?;
    expect_error(
        tx.delete("a").await,
        &unsupported,
        "delete in a read-only transaction",
    )?;
    expect_error(
        tx.clear().await,
        &unsupported,
        "clear in a read-only transaction",
    )?;
    ensure_eq!(
        tx.get("a").await.ctx("get")?,
        Some(json!(1)),
        "a read in a read-only transaction after refused writes"
    );
    ensure_eq!(
        tx.size().await.ctx("size")?,
        2,
        "size in a read-only transaction"
    );
    tx.commit().await.ctx("commit of a read-only transaction")?;
    ensure_eq!(
        snapshot(&s).await?,
        before,
        "entries after a read-only transaction"
    );
    Ok(())
}

/// Past its time-out a transaction fails with `TransactionAborted` and applies nothing.
pub async fn a_timed_out_transaction_aborts_and_applies_nothing<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    let s = seeded(h).await?;
    let before = snapshot(&s).await?;
    let tx = s
        .begin(default_options(&s).timeout(Duration::from_millis(200)))
        .await
        .ctx("begin")?;
    tx.set("a", &json!("in time"))
        .await
        .ctx("a write before the time-out")?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let late = tx.set("c", &json!("late")).await;
    let commit = tx.commit().await;
    ensure!(
        late.as_ref()
            .err()
            .is_some_and(|e| e.code() == ErrorCode::TransactionAborted)
            || commit
                .as_ref()
                .err()
                .is_some_and(|e| e.code() == ErrorCode::TransactionAborted),
        "neither the late write ({late:?}) nor the commit ({commit:?}) failed with TRANSACTION_ABORTED"
    );
    expect_error(
        commit,
        &[ErrorCode::TransactionAborted],
        "commit after the time-out",
    )?;
    ensure_eq!(
        snapshot(&s).await?,
        before,
        "entries after a timed-out transaction"
    );
    ensure!(
        tx.state() != TransactionState::Committed,
        "a timed-out transaction reports Committed"
    );
    Ok(())
}

/// Each declared isolation level can be requested and the transaction reports a level at least
/// as strong; a level above every declared one is `Unsupported`.
pub async fn reported_isolation_is_at_least_the_requested_level<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    let caps = s.capabilities();
    for level in LEVELS {
        let result = s.begin(TransactionOptions::new().isolation(level)).await;
        if caps.supports_isolation(level) {
            let tx = result.ctx(format_args!("begin at {level}"))?;
            ensure!(
                tx.isolation() >= level,
                "requested {level}, the transaction reports {}",
                tx.isolation()
            );
            ensure!(
                caps.isolation_levels.contains(&tx.isolation()),
                "the transaction reports {}, which capabilities do not list ({:?})",
                tx.isolation(),
                caps.isolation_levels
            );
            tx.rollback().await.ctx("rollback")?;
        } else {
            expect_error(
                result.map(|_| ()),
                &[ErrorCode::Unsupported],
                format_args!("begin at undeclared {level}"),
            )?;
        }
    }
    Ok(())
}

/// `TransactionalExt::transaction` re-runs a body that fails with a retryable error and
/// commits exactly once.
pub async fn the_transaction_helper_retries_a_conflicting_body<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    let s = seeded(h).await?;
    let attempts = AtomicU32::new(0);
    let options = default_options(&s).retries(3);
    let out = s
        .transaction(options, |tx| {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                let a = tx.get("a").await?.and_then(|v| v.as_i64()).unwrap_or(0);
                tx.set("a", &json!(a + 1)).await?;
                if n == 0 {
                    return Err(StorageError::new(
                        ErrorCode::VersionConflict,
                        "injected conflict",
                    ));
                }
                Ok(a + 1)
            }
        })
        .await
        .ctx("transaction")?;
    ensure_eq!(out, 2, "the body's result");
    ensure_eq!(attempts.load(Ordering::SeqCst), 2, "attempts");
    ensure_eq!(
        s.get("a").await.ctx("get")?,
        Some(json!(2)),
        "a after one failed and one committed attempt"
    );
    let failing = s
        .transaction(default_options(&s).retries(5), |tx| async move {
            tx.set("b", &json!("never")).await?;
            Err::<(), _>(StorageError::new(ErrorCode::InvalidValue, "not retryable"))
        })
        .await;
    expect_error(
        failing,
        &[ErrorCode::InvalidValue],
        "a body failing with a non-retryable error",
    )?;
    ensure_eq!(
        s.get("b").await.ctx("get")?,
        Some(json!(2)),
        "b after a failed body"
    );
    Ok(())
}

/// Concurrent read-modify-write increments through `transaction` with retries all land (at the
/// strongest declared level, when it forbids lost updates).
pub async fn concurrent_increments_with_retries_all_land<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    let level = s
        .capabilities()
        .isolation_levels
        .iter()
        .copied()
        .max()
        .unwrap_or(IsolationLevel::ReadCommitted);
    if level < IsolationLevel::RepeatableRead {
        // Lost updates are allowed at this level; the retry path is covered by the check above.
        return Ok(());
    }
    s.set("counter", &json!(0)).await.ctx("seed")?;
    let s = Arc::new(s);
    let per_task = 5;
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                s.transaction(
                    TransactionOptions::new()
                        .isolation(level)
                        .retries(50)
                        .timeout(Duration::from_secs(20)),
                    |tx| async move {
                        let n = tx
                            .get("counter")
                            .await?
                            .and_then(|v| v.as_i64())
                            .unwrap_or(0);
                        // Give the other task a chance to interleave between read and write.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        tx.set("counter", &json!(n + 1)).await
                    },
                )
                .await?;
            }
            Ok::<(), StorageError>(())
        }));
    }
    for t in tasks {
        within(Duration::from_secs(120), "incrementing task", t)
            .await?
            .map_err(|e| Failure::new(format!("task panicked: {e}")))?
            .ctx("incrementing task")?;
    }
    ensure_eq!(
        s.get("counter").await.ctx("get")?,
        Some(json!(2 * per_task)),
        "counter after 2 × 5 increments"
    );
    Ok(())
}

/// `begin` on a `dyn TransactionalStorage` works like on the concrete store.
pub async fn transactions_work_through_a_trait_object<H: TransactionalHarness>(
    h: &H,
) -> CheckResult {
    let s = seeded(h).await?;
    let dyn_store: &dyn TransactionalStorage<Value> = &s;
    let tx: Box<dyn Transaction<Value>> =
        dyn_store.begin(default_options(&s)).await.ctx("begin")?;
    ensure!(!tx.id().is_empty(), "a transaction id is empty");
    let other = dyn_store.begin(default_options(&s)).await.ctx("begin")?;
    ensure!(
        tx.id() != other.id(),
        "two transactions share the id {}",
        tx.id()
    );
    tx.set("c", &json!(3)).await.ctx("set")?;
    tx.commit().await.ctx("commit")?;
    other.rollback().await.ctx("rollback")?;
    ensure_eq!(
        s.get("c").await.ctx("get")?,
        Some(json!(3)),
        "write through a trait object"
    );
    Ok(())
}
