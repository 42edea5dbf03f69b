//! The storage suite: every rule of ARCHITECTURE §3 "Storage" and "Keys".

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use storage_core::{ErrorCode, Storage, Tier};

use crate::check::{CheckResult, Context, expect_error};
use crate::harness::{Harness, StorageHarness, open};
use crate::support::{all_keys, all_values, capabilities_agree, snapshot, within};
use crate::values::{Doc, Reading, bad_keys, edge_values, hostile_keys};

/// The declared capabilities and the `as_*`/`into_*` accessors agree.
pub async fn capabilities_agree_with_tier_accessors<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, store) = open::<Value, _>(h).await?;
    capabilities_agree(store, Tier::Storage)
}

/// Reading a key that was never written returns `None`.
pub async fn get_of_missing_key_returns_none<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    ensure_eq!(
        s.get("missing").await.ctx("get")?,
        None,
        "get of a missing key"
    );
    s.set("present", &json!(1)).await.ctx("set")?;
    ensure_eq!(
        s.get("missing").await.ctx("get")?,
        None,
        "get of a missing key next to another"
    );
    ensure_eq!(
        s.has("missing").await.ctx("has")?,
        false,
        "has of a missing key"
    );
    Ok(())
}

/// A value written with `set` is read back equal with `get`.
pub async fn set_then_get_returns_the_value<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    let v = json!({"name": "Alice", "age": 31, "tags": ["a", "b"], "address": {"city": "Paris"}});
    s.set("user:1", &v).await.ctx("set")?;
    ensure_eq!(s.get("user:1").await.ctx("get")?, Some(v), "get after set");
    Ok(())
}

/// A typed struct (nested, optional, maps, integer extremes) round-trips.
pub async fn typed_values_round_trip<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Doc, _>(h).await?;
    for n in [0, 1, -7, i64::MAX, i64::MIN + 1] {
        let doc = Doc::sample(n);
        let key = format!("doc:{n}");
        s.set(&key, &doc).await.ctx("set")?;
        ensure_eq!(s.get(&key).await.ctx("get")?, Some(doc), "typed value {n}");
    }
    Ok(())
}

/// `set` on an existing key replaces its value and does not add an entry.
pub async fn set_overwrites_the_previous_value<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    s.set("k", &json!({"v": 1, "old": true}))
        .await
        .ctx("first set")?;
    s.set("k", &json!({"v": 2})).await.ctx("second set")?;
    ensure_eq!(
        s.get("k").await.ctx("get")?,
        Some(json!({"v": 2})),
        "value after overwrite"
    );
    ensure_eq!(s.size().await.ctx("size")?, 1, "size after overwrite");
    s.set("k", &json!("a different type"))
        .await
        .ctx("third set")?;
    ensure_eq!(
        s.get("k").await.ctx("get")?,
        Some(json!("a different type")),
        "value after a type change"
    );
    Ok(())
}

/// Deleting a key that does not exist returns `false` and changes nothing.
pub async fn delete_of_missing_key_returns_false<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    ensure_eq!(
        s.delete("nope").await.ctx("delete")?,
        false,
        "delete of a missing key"
    );
    s.set("a", &json!(1)).await.ctx("set")?;
    ensure_eq!(
        s.delete("nope").await.ctx("delete")?,
        false,
        "delete of a missing key"
    );
    ensure_eq!(
        s.size().await.ctx("size")?,
        1,
        "size after deleting a missing key"
    );
    Ok(())
}

/// Deleting an existing key returns `true`, removes it, and a second delete returns `false`.
pub async fn delete_of_existing_key_returns_true_and_removes_it<H: StorageHarness>(
    h: &H,
) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    s.set("a", &json!(1)).await.ctx("set a")?;
    s.set("b", &json!(2)).await.ctx("set b")?;
    ensure_eq!(
        s.delete("a").await.ctx("delete")?,
        true,
        "delete of an existing key"
    );
    ensure_eq!(s.get("a").await.ctx("get")?, None, "get after delete");
    ensure_eq!(s.has("a").await.ctx("has")?, false, "has after delete");
    ensure_eq!(
        s.delete("a").await.ctx("delete again")?,
        false,
        "second delete"
    );
    ensure_eq!(
        s.get("b").await.ctx("get b")?,
        Some(json!(2)),
        "the other key after delete"
    );
    Ok(())
}

/// `has` is true exactly for the keys that hold a value, including a stored `null`.
pub async fn has_reports_presence<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    s.set("null", &Value::Null).await.ctx("set null")?;
    s.set("zero", &json!(0)).await.ctx("set zero")?;
    ensure!(s.has("null").await.ctx("has")?, "a stored null is present");
    ensure!(s.has("zero").await.ctx("has")?, "a stored 0 is present");
    ensure!(!s.has("other").await.ctx("has")?, "a missing key is absent");
    ensure_eq!(
        s.get("null").await.ctx("get")?,
        Some(Value::Null),
        "a stored null reads as Some(null)"
    );
    Ok(())
}

/// `size` counts entries through sets, overwrites, deletes and clears.
pub async fn size_counts_entries<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    ensure_eq!(s.size().await.ctx("size")?, 0, "size of a new store");
    for i in 0..25 {
        s.set(&format!("k{i}"), &json!(i)).await.ctx("set")?;
    }
    ensure_eq!(s.size().await.ctx("size")?, 25, "size after 25 sets");
    s.set("k3", &json!("again")).await.ctx("overwrite")?;
    ensure_eq!(s.size().await.ctx("size")?, 25, "size after an overwrite");
    s.delete("k4").await.ctx("delete")?;
    ensure_eq!(s.size().await.ctx("size")?, 24, "size after a delete");
    s.clear().await.ctx("clear")?;
    ensure_eq!(s.size().await.ctx("size")?, 0, "size after clear");
    Ok(())
}

/// `clear` removes every entry, and the store stays usable.
pub async fn clear_empties_the_store<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    for i in 0..10 {
        s.set(&format!("k{i}"), &json!(i)).await.ctx("set")?;
    }
    s.clear().await.ctx("clear")?;
    ensure_eq!(
        snapshot(&s).await?,
        Vec::<(String, Value)>::new(),
        "entries after clear"
    );
    ensure_eq!(s.get("k1").await.ctx("get")?, None, "get after clear");
    s.clear().await.ctx("clear of an empty store")?;
    s.set("after", &json!(1)).await.ctx("set after clear")?;
    ensure_eq!(
        all_keys(&s).await?,
        vec!["after".to_owned()],
        "keys after clear and set"
    );
    Ok(())
}

/// `clear` on one namespace leaves another namespace's entries untouched.
pub async fn clear_leaves_other_namespaces_untouched<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, a) = open::<Value, _>(h).await?;
    let (_, b) = open::<Value, _>(h).await?;
    a.set("shared", &json!("a")).await.ctx("set in a")?;
    a.set("only-a", &json!(1)).await.ctx("set in a")?;
    b.set("shared", &json!("b")).await.ctx("set in b")?;
    b.set("only-b", &json!(2)).await.ctx("set in b")?;
    ensure_eq!(
        a.get("shared").await.ctx("get")?,
        Some(json!("a")),
        "namespaces are separate"
    );
    a.clear().await.ctx("clear a")?;
    ensure_eq!(a.size().await.ctx("size")?, 0, "cleared namespace");
    ensure_eq!(
        snapshot(&b).await?,
        vec![
            ("only-b".to_owned(), json!(2)),
            ("shared".to_owned(), json!("b"))
        ],
        "the other namespace after clear"
    );
    Ok(())
}

/// Keys that sort differently by bytes, by characters, by case or by length.
fn ordering_keys() -> Vec<String> {
    let long = "x".repeat(1001);
    let mut keys: Vec<String> = [
        "b",
        "a",
        "B",
        "A",
        "aa",
        "a b",
        "a-b",
        "a~",
        "é",
        "e",
        "z",
        "ü",
        "日本",
        "🦀",
        "\u{7f}",
        "~",
        "0",
        "10",
        "9",
        "1",
        "\u{ffff}",
        "\u{10000}",
        "\u{10ffff}",
        "e\u{301}",
        "Z",
        "user:10",
        "user:2",
        "user:1",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // Keys equal in their first 1001 bytes: an adapter that compares prefixes would tie them.
    keys.push(format!("{long}b"));
    keys.push(format!("{long}a"));
    keys.push(format!("{long}ab"));
    keys.push(format!("{}{}", "x".repeat(1020), "\u{1f980}"));
    keys.push("k".repeat(1024));
    keys
}

/// `keys()` streams in ascending byte order, whatever the write order.
pub async fn keys_stream_in_ascending_byte_order<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    let keys = ordering_keys();
    // Write in a scrambled but fixed order so insertion order cannot pass for key order.
    let n = keys.len();
    for i in 0..n {
        let key = &keys[(i * 7 + 3) % n];
        s.set(key, &json!(key.len())).await.ctx("set")?;
    }
    let mut expected = keys.clone();
    expected.sort_unstable();
    expected.dedup();
    ensure_eq!(all_keys(&s).await?, expected, "keys() order");
    Ok(())
}

/// `values()` and `entries()` stream in the byte order of their keys.
pub async fn values_and_entries_follow_key_order<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    let keys = ordering_keys();
    for (i, key) in keys.iter().enumerate() {
        s.set(key, &json!({"i": i, "key": key})).await.ctx("set")?;
    }
    let mut expected: Vec<(String, Value)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), json!({"i": i, "key": k})))
        .collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    ensure_eq!(snapshot(&s).await?, expected, "entries() order");
    let values: Vec<Value> = expected.into_iter().map(|(_, v)| v).collect();
    ensure_eq!(all_values(&s).await?, values, "values() order");
    Ok(())
}

/// An empty store streams no keys, values or entries and has size 0.
pub async fn empty_store_streams_nothing<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    ensure!(all_keys(&s).await?.is_empty(), "keys() of an empty store");
    ensure!(
        all_values(&s).await?.is_empty(),
        "values() of an empty store"
    );
    ensure!(
        snapshot(&s).await?.is_empty(),
        "entries() of an empty store"
    );
    ensure_eq!(s.size().await.ctx("size")?, 0, "size of an empty store");
    Ok(())
}

/// Every class of bad key gives `InvalidKey` on get, set, delete and has, and changes nothing.
pub async fn invalid_keys_are_rejected_and_change_nothing<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    s.set("keep", &json!("kept")).await.ctx("set")?;
    let before = snapshot(&s).await?;
    let invalid = [ErrorCode::InvalidKey];
    for (class, key) in bad_keys() {
        expect_error(
            s.set(&key, &json!(1)).await,
            &invalid,
            format_args!("set with {class}"),
        )?;
        expect_error(
            s.get(&key).await,
            &invalid,
            format_args!("get with {class}"),
        )?;
        expect_error(
            s.delete(&key).await,
            &invalid,
            format_args!("delete with {class}"),
        )?;
        expect_error(
            s.has(&key).await,
            &invalid,
            format_args!("has with {class}"),
        )?;
        ensure_eq!(
            snapshot(&s).await?,
            before,
            "entries after refused calls with {class}"
        );
    }
    Ok(())
}

/// Keys that look like SQL, Cypher, globs or protocol text are ordinary keys and round-trip exactly.
pub async fn hostile_keys_are_ordinary_keys<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    s.set("canary", &json!("still here"))
        .await
        .ctx("set canary")?;
    let mut expected = vec![("canary".to_owned(), json!("still here"))];
    for (class, key) in hostile_keys() {
        let v = json!({ "class": class });
        s.set(&key, &v)
            .await
            .ctx(format_args!("set with {class}"))?;
        ensure_eq!(
            s.get(&key).await.ctx("get")?,
            Some(v.clone()),
            "get with {class}"
        );
        ensure!(s.has(&key).await.ctx("has")?, "has with {class}");
        expected.push((key, v));
    }
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    ensure_eq!(
        snapshot(&s).await?,
        expected,
        "entries with hostile keys (and the canary)"
    );
    for (class, key) in hostile_keys() {
        ensure!(s.delete(&key).await.ctx("delete")?, "delete with {class}");
    }
    ensure_eq!(
        snapshot(&s).await?,
        vec![("canary".to_owned(), json!("still here"))],
        "only the canary is left"
    );
    Ok(())
}

/// JSON values at the edges (NUL in strings, integer extremes, -0.0, deep nesting, odd
/// object keys, injection strings) round-trip exactly.
pub async fn edge_values_round_trip<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    for (class, value) in edge_values() {
        let key = format!("v:{class}");
        s.set(&key, &value).await.ctx(format_args!("set {class}"))?;
        let back = s.get(&key).await.ctx(format_args!("get {class}"))?;
        ensure!(
            back.as_ref() == Some(&value),
            "{class} did not round-trip: got {back:?}"
        );
        if let (Some(Value::Number(a)), Value::Number(b)) = (&back, &value) {
            // serde_json's equality says 1 == 1.0 is false but -0.0 == 0.0 is true; keep the sign.
            ensure_eq!(
                a.as_f64().map(f64::is_sign_negative),
                b.as_f64().map(f64::is_sign_negative),
                "sign of {class}"
            );
            ensure_eq!(a.is_f64(), b.is_f64(), "integer or float kind of {class}");
        }
    }
    Ok(())
}

/// A value JSON cannot hold (NaN, ±infinity) is refused with `InvalidValue` or
/// `SerializationFailed` and nothing is stored — or, if the format holds it, it reads back exactly.
pub async fn unencodable_values_are_refused_or_kept_exactly<H: StorageHarness>(
    h: &H,
) -> CheckResult {
    let (_, s) = open::<Reading, _>(h).await?;
    s.set("old", &Reading { value: 1.5 })
        .await
        .ctx("set a normal reading")?;
    for (class, value) in [
        ("nan", f64::NAN),
        ("+inf", f64::INFINITY),
        ("-inf", f64::NEG_INFINITY),
    ] {
        let before = snapshot(&s).await?;
        for key in ["old", "new"] {
            if let Err(e) = s.set(key, &Reading { value }).await {
                ensure!(
                    matches!(
                        e.code(),
                        ErrorCode::InvalidValue | ErrorCode::SerializationFailed
                    ),
                    "set of {class} failed with {e}, expected INVALID_VALUE or SERIALIZATION_FAILED"
                );
                let after = snapshot(&s).await?;
                ensure!(
                    same_readings(&after, &before),
                    "a refused {class} changed the store: {after:?}, before {before:?}"
                );
            } else {
                let back = s.get(key).await.ctx("get")?;
                ensure!(
                    back.is_some_and(|r| r.same(&Reading { value })),
                    "{class} was accepted but reads back as {back:?}"
                );
                s.set("old", &Reading { value: 1.5 }).await.ctx("restore")?;
                s.delete("new").await.ctx("restore")?;
            }
        }
    }
    Ok(())
}

fn same_readings(a: &[(String, Reading)], b: &[(String, Reading)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0 && x.1.same(&y.1))
}

/// A 1 MiB value round-trips, or is refused with `QuotaExceeded`/`InvalidValue` when the store
/// declares a smaller `max_value_len`; a value over a declared limit is refused and changes nothing.
pub async fn large_values_round_trip<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    let big = json!({ "blob": "é".repeat(1 << 19), "n": 1 });
    let limit = s.capabilities().max_value_len;
    match s.set("big", &big).await {
        Ok(()) => ensure!(
            s.get("big").await.ctx("get")? == Some(big),
            "a 1 MiB value did not round-trip"
        ),
        Err(e) => {
            ensure!(
                limit.is_some_and(|l| l < (1 << 20) + 64)
                    && matches!(e.code(), ErrorCode::QuotaExceeded | ErrorCode::InvalidValue),
                "a 1 MiB value was refused with {e} though max_value_len is {limit:?}"
            );
            ensure_eq!(
                s.has("big").await.ctx("has")?,
                false,
                "a refused value is not stored"
            );
        }
    }
    if let Some(limit) = limit {
        // Incompressible text, twice the limit: over it whatever the format and compression.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let text: String = (0..limit.saturating_mul(2).saturating_add(1024))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(
                    b"abcdefghijklmnopqrstuvwxyz0123456789"[usize::try_from(x % 36).unwrap_or(0)],
                )
            })
            .collect();
        s.set("over", &json!("before")).await.ctx("set")?;
        expect_error(
            s.set("over", &json!(text)).await,
            &[ErrorCode::QuotaExceeded, ErrorCode::InvalidValue],
            format_args!("a value over max_value_len ({limit} bytes)"),
        )?;
        ensure_eq!(
            s.get("over").await.ctx("get")?,
            Some(json!("before")),
            "the value under a refused oversized write"
        );
    }
    Ok(())
}

/// Concurrent writers on distinct keys all land, and concurrent readers see whole values.
pub async fn concurrent_writers_all_land<H: StorageHarness>(h: &H) -> CheckResult {
    let (_, s) = open::<Value, _>(h).await?;
    let s = Arc::new(s);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let key = format!("w{w}:{i:02}");
                s.set(&key, &json!({"w": w, "i": i, "pad": "p".repeat(100)}))
                    .await?;
                if let Some(v) = s.get(&key).await?
                    && v["w"] != json!(w)
                {
                    return Err(storage_core::StorageError::new(
                        ErrorCode::Corrupted,
                        "torn read",
                    ));
                }
            }
            Ok::<(), storage_core::StorageError>(())
        }));
    }
    for t in tasks {
        within(Duration::from_secs(60), "concurrent writer", t)
            .await?
            .map_err(|e| crate::Failure::new(format!("writer task panicked: {e}")))?
            .ctx("concurrent writer")?;
    }
    ensure_eq!(
        s.size().await.ctx("size")?,
        100,
        "entries after 4 × 25 concurrent writes"
    );
    let keys = all_keys(s.as_ref()).await?;
    let mut sorted = keys.clone();
    sorted.sort();
    ensure_eq!(keys, sorted, "keys() order after concurrent writes");
    Ok(())
}

/// Corrupt stored bytes (planted by the harness) give a typed error, never a wrong value,
/// and the other entries stay readable.
pub async fn corrupted_bytes_give_a_typed_error<H: StorageHarness>(h: &H) -> CheckResult {
    let (ns, s) = open::<Doc, _>(h).await?;
    s.set("good", &Doc::sample(1)).await.ctx("set good")?;
    s.set("bad", &Doc::sample(2)).await.ctx("set bad")?;
    Harness::<Doc>::close(h, s).await.ctx("close")?;
    if !Harness::<Doc>::corrupt(h, &ns, "bad")
        .await
        .ctx("corrupt")?
    {
        // The adapter cannot plant bytes; what is left to check is that closing kept the store usable.
        let s = Harness::<Doc>::open(h, &ns).await.ctx("reopen")?;
        return s.set("after", &Doc::sample(3)).await.ctx("set after close");
    }
    let typed = [ErrorCode::Corrupted, ErrorCode::SerializationFailed];
    let s = match Harness::<Doc>::open(h, &ns).await {
        Err(e) => {
            // A whole-file store may refuse to open a corrupt file; that is a typed answer too.
            ensure!(
                typed.contains(&e.code()),
                "opening a corrupt store failed with {e}"
            );
            return Ok(());
        }
        Ok(s) => s,
    };
    match s.get("bad").await {
        Err(e) => ensure!(
            typed.contains(&e.code()),
            "get of a corrupt value failed with {e}"
        ),
        Ok(v) => {
            return Err(crate::Failure::new(format!(
                "get of a corrupt value answered {v:?} instead of CORRUPTED or SERIALIZATION_FAILED"
            )));
        }
    }
    match s.get("good").await {
        Ok(v) => ensure_eq!(
            v,
            Some(Doc::sample(1)),
            "an intact entry next to a corrupt one"
        ),
        Err(e) => ensure!(
            typed.contains(&e.code()),
            "get of an intact entry failed with {e}"
        ),
    }
    Ok(())
}
