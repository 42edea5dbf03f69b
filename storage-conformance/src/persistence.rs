//! The persistence suite, for stores that declare `persistent`: acknowledged data survives
//! closing and reopening the namespace.

use serde_json::{Value, json};
use storage_core::{Operation, Storage, TransactionOptions};

use crate::check::{CheckResult, Context};
use crate::harness::{Harness, StorageHarness, open};
use crate::support::snapshot;
use crate::values::{Doc, edge_values, hostile_keys};

async fn reopen<T: storage_core::StorageValue, H: Harness<T>>(
    h: &H,
    ns: &str,
    store: H::Store,
) -> Result<H::Store, crate::Failure> {
    h.close(store).await.ctx("close")?;
    h.open(ns).await.ctx(format_args!("reopen namespace {ns}"))
}

/// A store run through this suite declares `persistent`.
pub async fn capabilities_declare_persistence<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    ensure!(
        s.capabilities().persistent,
        "the persistence suite runs on a store that does not declare `persistent`"
    );
    Ok(())
}

/// Sets, overwrites, deletes and a clear, with hostile keys and edge values, read back the same
/// after closing and reopening.
pub async fn acknowledged_writes_survive_reopening<H: StorageHarness>(h: &H) -> CheckResult {
    let (ns, s) = open::<Value, _>(h).await?;
    s.set("gone", &json!("cleared")).await.ctx("set")?;
    s.clear().await.ctx("clear")?;
    for (class, key) in hostile_keys() {
        s.set(&key, &json!({ "class": class })).await.ctx("set")?;
    }
    for (class, value) in edge_values() {
        s.set(&format!("v:{class}"), &value).await.ctx("set")?;
    }
    s.set("over", &json!(1)).await.ctx("set")?;
    s.set("over", &json!(2)).await.ctx("overwrite")?;
    s.set("deleted", &json!(0)).await.ctx("set")?;
    s.delete("deleted").await.ctx("delete")?;
    let before = snapshot(&s).await?;
    let s = reopen::<Value, _>(h, &ns, s).await?;
    ensure!(
        snapshot(&s).await? == before,
        "entries differ after reopening"
    );
    ensure_eq!(
        s.get("over").await.ctx("get")?,
        Some(json!(2)),
        "an overwritten key after reopening"
    );
    ensure_eq!(
        s.has("deleted").await.ctx("has")?,
        false,
        "a deleted key after reopening"
    );
    ensure_eq!(
        s.has("gone").await.ctx("has")?,
        false,
        "a cleared key after reopening"
    );
    let s = reopen::<Value, _>(h, &ns, s).await?;
    ensure!(
        snapshot(&s).await? == before,
        "entries differ after a second reopening without writes"
    );
    Ok(())
}

/// Typed values survive reopening.
pub async fn typed_values_survive_reopening<H: StorageHarness>(h: &H) -> CheckResult {
    let (ns, s) = open::<Doc, _>(h).await?;
    for n in [0, 7, i64::MAX] {
        s.set(&format!("d{n}"), &Doc::sample(n)).await.ctx("set")?;
    }
    let s = reopen::<Doc, _>(h, &ns, s).await?;
    for n in [0, 7, i64::MAX] {
        ensure_eq!(
            s.get(&format!("d{n}")).await.ctx("get")?,
            Some(Doc::sample(n)),
            "typed value {n} after reopening"
        );
    }
    Ok(())
}

/// Committed batches and transactions survive reopening; rolled-back ones leave no trace.
pub async fn batches_and_transactions_survive_reopening<H: StorageHarness>(h: &H) -> CheckResult {
    let (ns, s) = open::<Value, _>(h).await?;
    if let Some(b) = s.as_batch() {
        b.batch(vec![
            Operation::set("b1", json!(1)),
            Operation::set("b2", json!(2)),
            Operation::delete("b1"),
        ])
        .await
        .ctx("batch")?;
        b.set_many(vec![("m1".into(), json!("m"))])
            .await
            .ctx("set_many")?;
    }
    if let Some(t) = s.as_transactional() {
        let tx = t.begin(TransactionOptions::new()).await.ctx("begin")?;
        tx.set("t1", &json!("committed")).await.ctx("set")?;
        tx.commit().await.ctx("commit")?;
        let tx = t.begin(TransactionOptions::new()).await.ctx("begin")?;
        tx.set("t2", &json!("rolled back")).await.ctx("set")?;
        tx.rollback().await.ctx("rollback")?;
    }
    let before = snapshot(&s).await?;
    let s = reopen::<Value, _>(h, &ns, s).await?;
    ensure_eq!(snapshot(&s).await?, before, "entries after reopening");
    ensure!(
        !s.has("t2").await.ctx("has")?,
        "a rolled-back write after reopening"
    );
    Ok(())
}

/// A reopened store keeps accepting writes, and those survive the next reopening too.
pub async fn a_reopened_store_keeps_working<H: StorageHarness>(h: &H) -> CheckResult {
    let (ns, s) = open::<Value, _>(h).await?;
    let mut expected = Vec::new();
    let mut s = s;
    for round in 0..4 {
        let key = format!("round{round}");
        s.set(&key, &json!(round)).await.ctx("set")?;
        expected.push((key, json!(round)));
        s = reopen::<Value, _>(h, &ns, s).await?;
        ensure_eq!(
            snapshot(&s).await?,
            expected,
            "entries after reopening {round}"
        );
    }
    Ok(())
}
