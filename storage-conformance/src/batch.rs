//! The batch suite: many keys at once, all or nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use storage_core::{BatchResult, BatchStorage, ErrorCode, Operation, Storage, Tier};

use crate::check::{CheckResult, Context, Failure, expect_error};
use crate::harness::{BatchHarness, open};
use crate::support::{capabilities_agree, snapshot, within};
use crate::values::Reading;

/// The declared capabilities and the `as_*`/`into_*` accessors agree, batch tier included.
pub async fn capabilities_agree_with_tier_accessors<H: BatchHarness>(h: &H) -> CheckResult {
    let (_, store) = open::<Value, _>(h).await?;
    ensure!(
        store.capabilities().atomic_batch,
        "a BatchStorage must declare atomic_batch (ARCHITECTURE §3)"
    );
    capabilities_agree(store, Tier::Batch)
}

/// `get_many` returns the present keys only, with their values.
pub async fn get_many_returns_only_present_keys<H: BatchHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    s.set("a", &json!(1)).await.ctx("set")?;
    s.set("c", &json!({"x": [3]})).await.ctx("set")?;
    let got = s
        .get_many(&["c".into(), "b".into(), "a".into(), "a".into()])
        .await
        .ctx("get_many")?;
    let expected = BTreeMap::from([
        ("a".to_owned(), json!(1)),
        ("c".to_owned(), json!({"x": [3]})),
    ]);
    ensure_eq!(got, expected, "get_many");
    ensure!(
        s.get_many(&[]).await.ctx("get_many of nothing")?.is_empty(),
        "get_many of nothing"
    );
    Ok(())
}

/// `set_many` stores every entry, later duplicates winning.
pub async fn set_many_stores_every_entry<H: BatchHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    s.set("old", &json!("old")).await.ctx("set")?;
    s.set_many(vec![
        ("b".into(), json!(2)),
        ("a".into(), json!(1)),
        ("b".into(), json!(3)),
        ("old".into(), json!("new")),
    ])
    .await
    .ctx("set_many")?;
    ensure_eq!(
        snapshot(&s).await?,
        vec![
            ("a".to_owned(), json!(1)),
            ("b".to_owned(), json!(3)),
            ("old".to_owned(), json!("new"))
        ],
        "entries after set_many"
    );
    s.set_many(Vec::new()).await.ctx("empty set_many")?;
    ensure_eq!(
        s.size().await.ctx("size")?,
        3,
        "size after an empty set_many"
    );
    Ok(())
}

/// `delete_many` removes the keys and counts those that existed.
pub async fn delete_many_counts_existing_keys<H: BatchHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    for k in ["a", "b", "c"] {
        s.set(k, &json!(k)).await.ctx("set")?;
    }
    let n = s
        .delete_many(&["a".into(), "x".into(), "c".into(), "a".into()])
        .await
        .ctx("delete_many")?;
    ensure_eq!(
        n,
        2,
        "delete_many count (a missing key and a repeated key do not count)"
    );
    ensure_eq!(
        snapshot(&s).await?,
        vec![("b".to_owned(), json!("b"))],
        "entries after delete_many"
    );
    Ok(())
}

/// `batch` applies operations in order (a clear removes earlier writes of the batch) and
/// reports what it did.
pub async fn batch_applies_operations_in_order<H: BatchHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    s.set("pre", &json!(0)).await.ctx("set")?;
    let result = s
        .batch(vec![
            Operation::set("a", json!(1)),
            Operation::delete("pre"),
            Operation::delete("pre"),
            Operation::Clear,
            Operation::set("b", json!(2)),
            Operation::set("b", json!(3)),
            Operation::delete("missing"),
        ])
        .await
        .ctx("batch")?;
    ensure_eq!(
        result,
        BatchResult {
            operations: 7,
            deleted: 1,
            cleared: 1
        },
        "batch result (one delete found its key, the clear removed `a`)"
    );
    ensure_eq!(
        snapshot(&s).await?,
        vec![("b".to_owned(), json!(3))],
        "entries after the batch"
    );
    ensure_eq!(
        s.batch(Vec::new()).await.ctx("empty batch")?,
        BatchResult::default(),
        "empty batch"
    );
    Ok(())
}

/// A batch, `set_many` or `delete_many` with a bad key in the middle fails with `InvalidKey`
/// and applies nothing.
pub async fn failed_batch_applies_nothing<H: BatchHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    s.set_many(vec![("a".into(), json!(1)), ("b".into(), json!(2))])
        .await
        .ctx("set_many")?;
    let before = snapshot(&s).await?;
    let invalid = [ErrorCode::InvalidKey];
    expect_error(
        s.batch(vec![
            Operation::set("a", json!("changed")),
            Operation::delete("b"),
            Operation::set("c", json!(3)),
            Operation::set("", json!("bad")),
            Operation::set("d", json!(4)),
        ])
        .await,
        &invalid,
        "batch with an empty key in the middle",
    )?;
    ensure_eq!(snapshot(&s).await?, before, "entries after a failed batch");
    expect_error(
        s.batch(vec![Operation::Clear, Operation::delete("x\0y")])
            .await,
        &invalid,
        "batch of clear and a nul key",
    )?;
    ensure_eq!(
        snapshot(&s).await?,
        before,
        "entries after a failed clearing batch"
    );
    expect_error(
        s.set_many(vec![
            ("c".into(), json!(3)),
            ("k".repeat(1025), json!(0)),
            ("d".into(), json!(4)),
        ])
        .await,
        &invalid,
        "set_many with a 1025-byte key in the middle",
    )?;
    ensure_eq!(
        snapshot(&s).await?,
        before,
        "entries after a failed set_many"
    );
    expect_error(
        s.delete_many(&["a".into(), String::new(), "b".into()])
            .await,
        &invalid,
        "delete_many with an empty key in the middle",
    )?;
    ensure_eq!(
        snapshot(&s).await?,
        before,
        "entries after a failed delete_many"
    );
    expect_error(
        s.get_many(&["a".into(), "\0".into()]).await,
        &invalid,
        "get_many with a nul key",
    )?;
    Ok(())
}

/// A batch holding a value the format cannot encode fails and applies nothing.
pub async fn batch_with_an_unencodable_value_applies_nothing<H: BatchHarness>(
    h: &H,
) -> CheckResult {
    let (_, s) = open::<Reading, _>(h).await?;
    s.set("a", &Reading { value: 1.0 }).await.ctx("set")?;
    let result = s
        .batch(vec![
            Operation::set("a", Reading { value: 2.0 }),
            Operation::set("b", Reading { value: f64::NAN }),
            Operation::set("c", Reading { value: 3.0 }),
        ])
        .await;
    if let Err(e) = result {
        ensure!(
            matches!(
                e.code(),
                ErrorCode::InvalidValue | ErrorCode::SerializationFailed
            ),
            "a batch with NaN failed with {e}"
        );
        let after = snapshot(&s).await?;
        ensure!(
            after.len() == 1 && after[0].0 == "a" && after[0].1.value.to_bits() == 1.0f64.to_bits(),
            "a failed batch changed the store: {after:?}"
        );
    } else {
        // The format holds NaN; then every value must read back exactly.
        let b = s.get("b").await.ctx("get")?;
        ensure!(
            b.is_some_and(|r| r.value.is_nan()),
            "NaN was accepted but reads back as {b:?}"
        );
    }
    Ok(())
}

/// A batch above the declared `max_batch_operations` is refused with `QuotaExceeded` and applies
/// nothing; one at the limit succeeds.
pub async fn batch_over_the_declared_limit_is_refused<H: BatchHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    let limit = s.capabilities().max_batch_operations;
    let n = limit.unwrap_or(2000);
    let ops: Vec<Operation<Value>> = (0..n)
        .map(|i| Operation::set(format!("k{i:05}"), json!(i)))
        .collect();
    let result = s
        .batch(ops)
        .await
        .ctx(format_args!("batch of {n} operations"))?;
    ensure_eq!(result.operations, n, "operations applied");
    ensure_eq!(
        s.size().await.ctx("size")?,
        u64::try_from(n).unwrap_or(u64::MAX),
        "size after a batch at the limit"
    );
    if let Some(limit) = limit {
        s.clear().await.ctx("clear")?;
        let ops: Vec<Operation<Value>> = (0..=limit)
            .map(|i| Operation::set(format!("k{i:05}"), json!(i)))
            .collect();
        expect_error(
            s.batch(ops).await,
            &[ErrorCode::QuotaExceeded],
            "a batch over the limit",
        )?;
        ensure_eq!(s.size().await.ctx("size")?, 0, "size after a refused batch");
    }
    Ok(())
}

/// `get_many` never sees half of a concurrent batch: every key a batch writes shows the same generation.
pub async fn concurrent_readers_never_see_half_a_batch<H: BatchHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    let s = Arc::new(s);
    let keys: Vec<String> = (0..8).map(|i| format!("g{i}")).collect();
    s.set_many(keys.iter().map(|k| (k.clone(), json!(0))).collect())
        .await
        .ctx("seed")?;
    let writer = {
        let s = Arc::clone(&s);
        let keys = keys.clone();
        tokio::spawn(async move {
            for generation in 1..=60 {
                s.batch(
                    keys.iter()
                        .map(|k| Operation::set(k.clone(), json!(generation)))
                        .collect(),
                )
                .await?;
                tokio::task::yield_now().await;
            }
            Ok::<(), storage_core::StorageError>(())
        })
    };
    let mut torn = None;
    while !writer.is_finished() {
        let seen = s.get_many(&keys).await.ctx("get_many")?;
        let generations: Vec<&Value> = seen.values().collect();
        if seen.len() != keys.len() || generations.windows(2).any(|w| w[0] != w[1]) {
            torn = Some(format!("{seen:?}"));
            break;
        }
        tokio::task::yield_now().await;
    }
    within(Duration::from_secs(60), "writer", writer)
        .await?
        .map_err(|e| Failure::new(format!("writer panicked: {e}")))?
        .ctx("writer")?;
    if let Some(seen) = torn {
        return Err(Failure::new(format!("a reader saw half a batch: {seen}")));
    }
    Ok(())
}
