//! Behaviour of the JSON-file store that only a real file shows: reopening,
//! the journal, corruption, compaction, group commit, transactions, events.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use storage_core::query::field;
use storage_core::{
    BatchStorage, ErrorCode, IndexDefinition, IndexKind, IndexedStorage, IsolationLevel,
    ObservableStorage, Operation, Query, QueryableStorage, Storage, StorageError, Transaction,
    TransactionOptions, TransactionState, TransactionalStorage, WatchEvent, WatchPattern,
};
use storage_json::{Durability, JsonConfig, JsonConfigExt, JsonStorage, LockMode};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn temp() -> std::io::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store.json");
    Ok((dir, path))
}

async fn open(path: &Path) -> Result<JsonStorage<Value>, StorageError> {
    JsonStorage::open(JsonConfig::new(path)).await
}

/// Copies the store's files as they are now, which is what a killed process leaves,
/// into a new directory that lives as long as the returned handle.
fn copy_as_crashed(path: &Path) -> std::io::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let target = dir.path().join("store.json");
    copy_files(path, &target)?;
    Ok((dir, target))
}

fn copy_files(path: &Path, target: &Path) -> std::io::Result<()> {
    // Journal first: a compaction replaces the main file before the journal, so a
    // journal copied earlier than the main file always pairs with a main file at
    // least as new, which is a state a crash can leave.
    let [main, journal, ..] = storage_json::files_of(path);
    let [main_to, journal_to, ..] = storage_json::files_of(target);
    for (from, to) in [(journal, journal_to), (main, main_to)] {
        if from.exists() {
            std::fs::copy(&from, &to)?;
        }
    }
    Ok(())
}

/// The files a process leaves when it is killed right after `entries` were set, one
/// acknowledged write each, in order; the original store is closed and gone. Returns the
/// directory's handle, the copied store's path and its journal's path.
async fn killed_after(
    entries: &[(&str, Value)],
) -> Result<(tempfile::TempDir, PathBuf, PathBuf), Box<dyn std::error::Error>> {
    let (_dir, path) = temp()?;
    let store = open(&path).await?;
    for (key, value) in entries {
        store.set(key, value).await?;
    }
    let (crashed_dir, crashed) = copy_as_crashed(&path)?;
    let journal = journal_of(&crashed);
    Ok((crashed_dir, crashed, journal))
}

fn journal_of(path: &Path) -> PathBuf {
    storage_json::files_of(path)[1].clone()
}

/// Sets `key` on `store`, drops it, reopens `path` and checks that the keys are
/// `expected`: after what it recovered from, the store still appends cleanly.
async fn append_survives_reopen(
    store: JsonStorage<Value>,
    path: &Path,
    key: &str,
    expected: &[&str],
) -> TestResult {
    store.set(key, &json!(key)).await?;
    drop(store);
    let store = open(path).await?;
    assert_eq!(store.keys().try_collect::<Vec<_>>().await?, expected);
    Ok(())
}

/// Acknowledged writes, deletes and batches survive closing and reopening.
#[tokio::test]
async fn writes_survive_reopening() -> TestResult {
    let (_dir, path) = temp()?;
    {
        let store = open(&path).await?;
        store.set("b", &json!({"n": 2})).await?;
        store.set("a", &json!({"n": 1})).await?;
        store.set("c", &json!([1, 2, 3])).await?;
        assert!(store.delete("c").await?);
        assert!(!store.delete("c").await?);
        store
            .batch(vec![
                Operation::set("d", json!("four")),
                Operation::delete("a"),
            ])
            .await?;
    }
    let store = open(&path).await?;
    let entries: Vec<(String, Value)> = store.entries().try_collect().await?;
    assert_eq!(
        entries,
        vec![
            ("b".to_owned(), json!({"n": 2})),
            ("d".to_owned(), json!("four"))
        ]
    );
    Ok(())
}

/// After close, the main file is pretty JSON any parser reads, keys ascending, journal empty.
#[tokio::test]
async fn closed_file_is_readable_json_in_key_order() -> TestResult {
    let (_dir, path) = temp()?;
    let store = open(&path).await?;
    for k in ["zeta", "alpha", "Mu", "é"] {
        store.set(k, &json!({"k": k})).await?;
    }
    store.close().await?;
    assert_eq!(
        store.get("alpha").await.expect_err("closed").code(),
        ErrorCode::ConnectionLost
    );
    let text = std::fs::read_to_string(&path)?;
    let doc: Value = serde_json::from_str(&text)?;
    assert_eq!(doc["format"], "storage-json/1");
    let keys: Vec<&String> = doc["entries"]
        .as_object()
        .ok_or("entries")?
        .keys()
        .collect();
    assert_eq!(keys, ["Mu", "alpha", "zeta", "é"]);
    assert!(text.contains("\n  \"entries\": {\n"), "{text}");
    assert_eq!(std::fs::metadata(journal_of(&path))?.len(), 0);
    Ok(())
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct User {
    name: String,
    age: u32,
}

fn user(name: &str, age: u32) -> User {
    User {
        name: name.to_owned(),
        age,
    }
}

/// A struct value is journaled and written as its document, fields in ascending
/// order (the line the crate docs show), and gets, queries and indexes see the same
/// value whether it was written since open (kept as its text) or loaded from the
/// file (kept as a document).
#[tokio::test]
async fn struct_values_are_journaled_and_read_as_their_documents() -> TestResult {
    let (_dir, path) = temp()?;
    let config = JsonConfig::new(&path).pretty(false);
    let store = JsonStorage::<User>::open(config.clone()).await?;
    store.set("user:3", &user("Carol", 40)).await?;
    let journal = std::fs::read(journal_of(&path))?;
    let line = std::str::from_utf8(&journal[..records_end(&journal)])?;
    assert!(
        line.starts_with(
            r#"{"seq":1,"ops":[{"op":"set","key":"user:3","value":{"age":40,"name":"Carol"}}],"crc":""#
        ),
        "{line}"
    );
    assert_eq!(store.get("user:3").await?, Some(user("Carol", 40)));
    let over_30 = || Query::filter(field("age").gt(30));
    let found = store.find_many(&over_30()).await?;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].value, user("Carol", 40));
    store
        .create_index(IndexDefinition::new("age", "age", IndexKind::Btree))
        .await?;
    store.set("user:4", &user("Dan", 41)).await?;
    // An indexed overwrite of a value held as text: the index drops its old age.
    store.set("user:3", &user("Carol", 20)).await?;
    let keys = |found: Vec<storage_core::QueryResult<User>>| {
        found.into_iter().map(|r| r.key).collect::<Vec<_>>()
    };
    assert_eq!(keys(store.find_many(&over_30()).await?), ["user:4"]);
    store.close().await?;
    let main = std::fs::read_to_string(&path)?;
    assert!(
        main.contains(r#""user:3":{"age":20,"name":"Carol"}"#),
        "{main}"
    );
    let store = JsonStorage::<User>::open(config).await?;
    assert_eq!(store.get("user:3").await?, Some(user("Carol", 20)));
    assert_eq!(keys(store.find_many(&over_30()).await?), ["user:4"]);
    store.close().await?;
    Ok(())
}

/// `pretty: false` writes the main file on one line.
#[tokio::test]
async fn compact_format_is_one_line() -> TestResult {
    let (_dir, path) = temp()?;
    let store = JsonStorage::<Value>::open(JsonConfig::new(&path).pretty(false)).await?;
    store.set("a", &json!({"x": 1})).await?;
    store.close().await?;
    let text = std::fs::read_to_string(&path)?;
    assert_eq!(text.trim_end().lines().count(), 1);
    Ok(())
}

/// A value JSON cannot hold is refused with `InvalidValue` and nothing is written.
#[tokio::test]
async fn nan_is_invalid_value_and_nothing_is_stored() -> TestResult {
    let (_dir, path) = temp()?;
    let store = JsonStorage::<f64>::open(JsonConfig::new(&path)).await?;
    let err = store.set("x", &f64::NAN).await.expect_err("nan");
    assert_eq!(err.code(), ErrorCode::InvalidValue);
    assert_eq!(store.size().await?, 0);
    assert_eq!(std::fs::metadata(journal_of(&path))?.len(), 0);
    Ok(())
}

/// Bad keys are `InvalidKey` everywhere, and a batch with one applies nothing.
#[tokio::test]
async fn bad_keys_are_rejected() -> TestResult {
    let (_dir, path) = temp()?;
    let store = open(&path).await?;
    assert_eq!(
        store.set("", &json!(1)).await.expect_err("empty").code(),
        ErrorCode::InvalidKey
    );
    assert_eq!(
        store.get("a\0b").await.expect_err("nul").code(),
        ErrorCode::InvalidKey
    );
    let long = "k".repeat(1025);
    assert_eq!(
        store.delete(&long).await.expect_err("long").code(),
        ErrorCode::InvalidKey
    );
    let err = store
        .batch(vec![
            Operation::set("ok", json!(1)),
            Operation::set("", json!(2)),
        ])
        .await
        .expect_err("bad batch");
    assert_eq!(err.code(), ErrorCode::InvalidKey);
    assert_eq!(store.size().await?, 0);
    Ok(())
}

/// Any encoding but UTF-8 is a typed config error naming what is supported.
#[tokio::test]
async fn other_encodings_are_invalid_config() -> TestResult {
    let (_dir, path) = temp()?;
    let mut config = JsonConfig::new(&path);
    config.encoding = "utf-16".to_owned();
    let err = JsonStorage::<Value>::open(config)
        .await
        .expect_err("utf-16");
    assert_eq!(err.code(), ErrorCode::InvalidConfig);
    assert!(err.message().contains("utf-8"), "{err}");
    assert!(!path.exists());
    Ok(())
}

/// Where the journal's records end: the journal is preallocated, so zeros follow.
fn records_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
}

/// A journal line torn by a crash is dropped on open, and later writes append
/// cleanly: torn into the zero-filled space (what a crash leaves in a preallocated
/// journal) or cut short (a journal that was not preallocated).
#[tokio::test]
async fn torn_last_journal_line_is_dropped() -> TestResult {
    for zero_filled in [true, false] {
        let (_crashed_dir, crashed, journal) =
            killed_after(&[("a", json!(1)), ("b", json!(2))]).await?;
        // Tear the last record in half.
        let mut bytes = std::fs::read(&journal)?;
        let end = records_end(&bytes);
        assert!(
            bytes[end..].iter().all(|b| *b == 0),
            "zeros follow the records"
        );
        if zero_filled {
            bytes[end - 10..end].fill(0);
        } else {
            bytes.truncate(end - 10);
        }
        std::fs::write(&journal, &bytes)?;

        let store = open(&crashed).await?;
        assert_eq!(store.get("a").await?, Some(json!(1)));
        assert_eq!(store.get("b").await?, None);
        append_survives_reopen(store, &crashed, "c", &["a", "c"]).await?;
    }
    Ok(())
}

/// The journal is preallocated in zero-filled chunks: its records end where the
/// zeros start, reopening keeps that space (nothing to cut off), and appends
/// continue in it.
#[tokio::test]
async fn zero_filled_journal_space_is_its_end_not_damage() -> TestResult {
    let (_crashed_dir, crashed, journal) = killed_after(&[("a", json!(1))]).await?;
    let before = std::fs::read(&journal)?;
    let end = records_end(&before);
    assert!(before.len() >= 1 << 20, "a megabyte is preallocated");
    assert!(before[end..].iter().all(|b| *b == 0));

    let store = open(&crashed).await?;
    assert_eq!(std::fs::read(&journal)?, before, "open changed the journal");
    store.set("b", &json!(2)).await?;
    let after = std::fs::read(&journal)?;
    assert_eq!(
        after.len(),
        before.len(),
        "the append used the preallocated space"
    );
    assert_eq!(&after[..end], &before[..end]);
    let (_copy_dir, copy) = copy_as_crashed(&crashed)?;
    drop(store);
    let store = open(&copy).await?;
    assert_eq!(store.keys().try_collect::<Vec<_>>().await?, ["a", "b"]);
    Ok(())
}

/// An operating-system crash between an append and its fsync can leave a later
/// page of the journal on disk but not an earlier one: a record running into
/// zeros up to a page boundary, then more records. Nothing from the torn record on
/// was acknowledged (fsyncs come in append order), so it is dropped, not `Corrupted`.
#[tokio::test]
async fn records_after_a_page_that_never_reached_the_disk_are_dropped() -> TestResult {
    let long = json!("x".repeat(5000));
    let (_crashed_dir, crashed, journal) = killed_after(&[
        ("a", json!(1)),
        ("b", long.clone()),
        ("c", long.clone()),
        ("d", long),
    ])
    .await?;
    let mut bytes = std::fs::read(&journal)?;
    // "b"'s record spans the first page boundary: lose that page (4096..8192).
    let first_end = bytes.iter().position(|b| *b == b'\n').ok_or("no line")? + 1;
    assert!(first_end < 4096 && records_end(&bytes) > 8192);
    bytes[4096..8192].fill(0);
    std::fs::write(&journal, &bytes)?;

    let store = open(&crashed).await?;
    assert_eq!(store.keys().try_collect::<Vec<_>>().await?, ["a"]);
    append_survives_reopen(store, &crashed, "e", &["a", "e"]).await?;

    // A single NUL byte in a middle record is not a missing page: still `Corrupted`.
    let (_crashed_dir, crashed, journal) = killed_after(&[
        ("a", json!("value")),
        ("b", json!("value")),
        ("c", json!("value")),
    ])
    .await?;
    let mut bytes = std::fs::read(&journal)?;
    let second_line = bytes.iter().position(|b| *b == b'\n').ok_or("no line")? + 1;
    bytes[second_line + 3] = 0;
    std::fs::write(&journal, &bytes)?;
    let err = open(&crashed).await.expect_err("corrupt");
    assert_eq!(err.code(), ErrorCode::Corrupted);
    assert_eq!(
        err.context_value("position"),
        Some(second_line.to_string().as_str())
    );
    Ok(())
}

/// A damaged line followed by good ones is `Corrupted` naming the journal and
/// the line's offset, and the open changes nothing.
#[tokio::test]
async fn garbled_middle_journal_line_is_corrupted() -> TestResult {
    let (_crashed_dir, crashed, journal) = killed_after(&[
        ("a", json!("first")),
        ("b", json!("second")),
        ("c", json!("third")),
    ])
    .await?;
    let mut bytes = std::fs::read(&journal)?;
    let second_line = bytes.iter().position(|b| *b == b'\n').ok_or("no line")? + 1;
    let at = second_line
        + bytes[second_line..]
            .windows(6)
            .position(|w| w == b"second")
            .ok_or("no value")?;
    bytes[at] = b'S';
    std::fs::write(&journal, &bytes)?;

    let err = open(&crashed).await.expect_err("corrupt");
    assert_eq!(err.code(), ErrorCode::Corrupted);
    assert_eq!(
        err.context_value("file"),
        Some(journal.display().to_string().as_str())
    );
    assert_eq!(
        err.context_value("position"),
        Some(second_line.to_string().as_str())
    );
    assert_eq!(std::fs::read(&journal)?, bytes);
    Ok(())
}

/// Truncated, garbled, empty and BOM-prefixed main files are `Corrupted` with a
/// position, and the file is left byte for byte as it was.
#[tokio::test]
async fn damaged_main_files_are_corrupted_and_untouched() -> TestResult {
    let good = "{\n  \"format\": \"storage-json/1\",\n  \"seq\": 0,\n  \"entries\": {\n    \"a\": 1\n  }\n}\n";
    let mut bom = vec![0xEF, 0xBB, 0xBF];
    bom.extend_from_slice(good.as_bytes());
    let cases: Vec<(&str, Vec<u8>, u64)> = vec![
        ("truncated", good.as_bytes()[..40].to_vec(), 40),
        (
            "garbled",
            good.replace("\"a\": 1", "\"a\": 1x").into_bytes(),
            69,
        ),
        ("empty", Vec::new(), 0),
        ("bom", bom, 0),
        ("not an object", b"[1, 2]".to_vec(), 0),
        (
            "wrong format",
            good.replace("storage-json/1", "other/9").into_bytes(),
            4,
        ),
        (
            "bad key",
            good.replace("\"a\": 1", "\"\": 1").into_bytes(),
            63,
        ),
    ];
    for (name, bytes, position) in cases {
        let (_dir, path) = temp()?;
        std::fs::write(&path, &bytes)?;
        let err = open(&path).await.expect_err(name);
        assert_eq!(err.code(), ErrorCode::Corrupted, "{name}: {err}");
        assert_eq!(
            err.context_value("file"),
            Some(path.display().to_string().as_str()),
            "{name}"
        );
        assert_eq!(
            err.context_value("position"),
            Some(position.to_string().as_str()),
            "{name}: {err}"
        );
        assert_eq!(std::fs::read(&path)?, bytes, "{name}: file changed");
        assert!(!journal_of(&path).exists(), "{name}: journal created");
    }
    Ok(())
}

/// A hand-written main file without the optional `seq` opens fine.
#[tokio::test]
async fn hand_written_file_opens() -> TestResult {
    let (_dir, path) = temp()?;
    std::fs::write(
        &path,
        r#"{"format": "storage-json/1", "entries": {"x": {"name": "hand"}}}"#,
    )?;
    let store = open(&path).await?;
    assert_eq!(store.get("x").await?, Some(json!({"name": "hand"})));
    Ok(())
}

/// A second open of the same file in this process is refused while the first is open.
#[tokio::test]
async fn second_open_is_locked_until_the_first_closes() -> TestResult {
    let (_dir, path) = temp()?;
    let first = open(&path).await?;
    let err = open(&path).await.expect_err("locked");
    assert_eq!(err.code(), ErrorCode::ConnectionFailed);
    assert!(err.is_retryable());
    assert!(err.message().contains("locked by another process"), "{err}");
    let waiting = JsonStorage::<Value>::open(
        JsonConfig::new(&path).lock(LockMode::Wait { timeout_ms: 5_000 }),
    );
    let closer = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        first.set("k", &json!(1)).await?;
        first.close().await
    };
    let (second, close_result) = tokio::join!(waiting, closer);
    close_result?;
    let second = second?;
    assert_eq!(second.get("k").await?, Some(json!(1)));
    let err =
        JsonStorage::<Value>::open(JsonConfig::new(&path).lock(LockMode::Wait { timeout_ms: 30 }))
            .await
            .expect_err("timeout");
    assert_eq!(err.code(), ErrorCode::Timeout);
    drop(second);
    Ok(())
}

/// The journal is compacted once it passes `compact_after`, and the result reopens intact.
#[tokio::test]
async fn journal_is_compacted_past_the_threshold() -> TestResult {
    let (_dir, path) = temp()?;
    let store = JsonStorage::<Value>::open(JsonConfig::new(&path).compact_after(8)).await?;
    for i in 0..50 {
        store.set(&format!("k{i:02}"), &json!(i)).await?;
        if i % 7 == 0 {
            store.delete(&format!("k{:02}", i / 2)).await?;
        }
    }
    // Compaction runs in the background; it has carried the journal over once the
    // journal holds fewer records than were written. A compaction that started early
    // may finish after the last write with most records still to carry over, and only
    // a write starts the next one: keep writing while waiting.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut extra = 0;
    while store.journal_records() >= 40 {
        assert!(std::time::Instant::now() < deadline, "never compacted");
        store.set("k00", &json!(extra)).await?;
        extra += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(std::fs::metadata(&path)?.len() > 0);
    let expected: Vec<(String, Value)> = store.entries().try_collect().await?;
    // Reopen from the files as a crash would leave them.
    let (_crashed_dir, crashed) = copy_as_crashed(&path)?;
    let reopened = open(&crashed).await?;
    assert_eq!(reopened.entries().try_collect::<Vec<_>>().await?, expected);
    Ok(())
}

/// A crash between compaction's rename and the journal's truncation loses and
/// duplicates nothing: replay skips records the main file holds.
#[tokio::test]
async fn stale_journal_after_compaction_is_skipped() -> TestResult {
    let (_dir, path) = temp()?;
    let store = open(&path).await?;
    store.set("a", &json!(1)).await?;
    store.set("b", &json!(2)).await?;
    store.delete("a").await?;
    let old_journal = std::fs::read(journal_of(&path))?;
    store.compact().await?;
    std::fs::write(journal_of(&path), &old_journal)?;
    let (_crashed_dir, crashed) = copy_as_crashed(&path)?;
    drop(store);
    let store = open(&crashed).await?;
    assert_eq!(store.keys().try_collect::<Vec<_>>().await?, ["b"]);
    append_survives_reopen(store, &crashed, "c", &["b", "c"]).await
}

/// A leftover compaction temp file is removed on open.
#[tokio::test]
async fn leftover_temp_file_is_removed() -> TestResult {
    let (_dir, path) = temp()?;
    let temp_file = storage_json::files_of(&path)[3].clone();
    std::fs::write(&temp_file, b"{\"format\": \"storage-json/1\", \"ent")?;
    let store = open(&path).await?;
    assert!(!temp_file.exists());
    assert_eq!(store.size().await?, 0);
    Ok(())
}

/// With group commit, concurrent writers share fsyncs and every acknowledged write survives.
#[tokio::test]
async fn group_commit_acknowledges_and_keeps_concurrent_writes() -> TestResult {
    let (_dir, path) = temp()?;
    let config = JsonConfig::new(&path).durability(Durability::Group {
        max_writes: 16,
        max_delay_ms: 2,
    });
    let store = JsonStorage::<Value>::open(config).await?;
    let writes = (0..200).map(|i| {
        let store = store.clone();
        async move { store.set(&format!("k{i:03}"), &json!(i)).await }
    });
    futures::future::try_join_all(writes).await?;
    // A lone writer is acknowledged after at most the group delay.
    store.set("alone", &json!(true)).await?;
    let (_crashed_dir, crashed) = copy_as_crashed(&path)?;
    let reopened = open(&crashed).await?;
    assert_eq!(reopened.size().await?, 201);
    assert_eq!(reopened.get("k123").await?, Some(json!(123)));
    Ok(())
}

/// `atomic: false` still keeps every write across a normal reopen.
#[tokio::test]
async fn non_atomic_mode_keeps_writes_across_reopen() -> TestResult {
    let (_dir, path) = temp()?;
    let store = JsonStorage::<Value>::open(JsonConfig::new(&path).atomic(false)).await?;
    store.set("a", &json!(1)).await?;
    let (_crashed_dir, crashed) = copy_as_crashed(&path)?;
    assert_eq!(open(&crashed).await?.get("a").await?, Some(json!(1)));
    Ok(())
}

fn people() -> Vec<(String, Value)> {
    (0..40)
        .map(|i| {
            (
                format!("p{i:02}"),
                json!({
                    "age": i % 17,
                    "name": format!("person {i}"),
                    "tags": if i % 3 == 0 { json!(["red", "blue"]) } else { json!(["green"]) },
                    "bio": if i % 5 == 0 { "likes quick brown foxes" } else { "likes slow dogs" },
                }),
            )
        })
        .collect()
}

/// Queries give the reference evaluator's answer with and without indexes, and
/// `explain` says which index is used.
#[tokio::test]
async fn indexed_queries_match_the_reference_evaluator() -> TestResult {
    let (_dir, path) = temp()?;
    let store = open(&path).await?;
    store.set_many(people()).await?;
    let queries = vec![
        Query::filter(field("age").gt(10)),
        Query::filter(field("age").eq(3)),
        Query::filter(field("tags").eq("red")),
        Query::filter(field("age").is_in([1, 2, 16])),
        Query::filter(field("bio").text("quick FOX")),
        Query::filter(field("bio").text("quick foxes")),
        Query::filter(storage_core::query::and(vec![
            field("age").lte(5),
            field("tags").eq("green"),
        ])),
    ];
    let docs: Vec<(String, Value)> = people();
    let mut before = Vec::new();
    for q in &queries {
        let got: Vec<_> = store
            .find_many(q)
            .await?
            .into_iter()
            .map(|r| (r.key, r.score))
            .collect();
        let expected: Vec<_> =
            storage_core::query::evaluate(q, docs.iter().map(|(k, v)| (k.as_str(), v)))?
                .into_iter()
                .map(|m| (m.key, m.score))
                .collect();
        assert_eq!(got, expected, "{q:?}");
        before.push(got);
    }
    store
        .create_index(IndexDefinition::new("age", "age", IndexKind::Btree))
        .await?;
    store
        .create_index(IndexDefinition::new("tags", "tags", IndexKind::Hash))
        .await?;
    store
        .create_index(IndexDefinition::new("bio", "bio", IndexKind::Fulltext))
        .await?;
    // Creating the identical index again is a no-op; another definition under the name is not.
    store
        .create_index(IndexDefinition::new("age", "age", IndexKind::Btree))
        .await?;
    let err = store
        .create_index(IndexDefinition::new("age", "name", IndexKind::Btree))
        .await
        .expect_err("taken");
    assert_eq!(err.code(), ErrorCode::DuplicateKey);
    let err = store
        .create_index(IndexDefinition::new("geo", "loc", IndexKind::Spatial))
        .await
        .expect_err("spatial");
    assert_eq!(err.code(), ErrorCode::Unsupported);
    for (q, expected) in queries.iter().zip(&before) {
        let got: Vec<_> = store
            .find_many(q)
            .await?
            .into_iter()
            .map(|r| (r.key, r.score))
            .collect();
        assert_eq!(&got, expected, "{q:?}");
        assert_eq!(store.count(q).await?, expected.len() as u64);
        assert!(store.explain(q).await?.uses_index(), "{q:?}");
    }
    assert!(
        !store
            .explain(&Query::filter(field("name").eq("x")))
            .await?
            .uses_index()
    );
    let stats = store.list_indexes().await?;
    assert!(stats.iter().all(|i| i.stats.hits + i.stats.misses > 0));
    assert!(store.drop_index("bio").await?);
    assert!(!store.drop_index("bio").await?);
    Ok(())
}

/// Index definitions are persisted: journaled when created or dropped (so a crash
/// keeps them), listed in the main file after compaction, and rebuilt on open.
#[tokio::test]
async fn index_definitions_survive_reopening_and_crashes() -> TestResult {
    let (_dir, path) = temp()?;
    let email = IndexDefinition::new("email", "email", IndexKind::Hash).unique();
    let age = IndexDefinition::new("age", "age", IndexKind::Btree);
    let store = open(&path).await?;
    store.set("a", &json!({"email": "a@x", "age": 31})).await?;
    store.create_index(email.clone()).await?;
    store.create_index(age.clone()).await?;
    store
        .create_index(IndexDefinition::new("tmp", "x", IndexKind::Hash))
        .await?;
    assert!(store.drop_index("tmp").await?);
    store.set("b", &json!({"email": "b@x", "age": 27})).await?;

    // Killed now: the journal alone carries the definitions.
    let (_crashed_dir, crashed) = copy_as_crashed(&path)?;
    let names = |infos: Vec<storage_core::IndexInfo>| -> Vec<_> {
        infos.into_iter().map(|i| i.definition).collect()
    };
    {
        let reopened = open(&crashed).await?;
        assert_eq!(
            names(reopened.list_indexes().await?),
            [email.clone(), age.clone()]
        );
        let stats = reopened.list_indexes().await?;
        assert_eq!(stats[0].stats.entries, 2, "rebuilt over every entry");
        let err = reopened
            .set("c", &json!({"email": "a@x"}))
            .await
            .expect_err("unique after reopening");
        assert_eq!(err.code(), ErrorCode::DuplicateKey);
        let plan = reopened
            .explain(&Query::filter(storage_core::query::and(vec![
                field("age").gte(30),
                field("age").lt(40),
            ])))
            .await?;
        assert_eq!(plan.index.as_deref(), Some("age"));
    }

    // Closed: the main file lists them, readable by a person.
    store.close().await?;
    let text = std::fs::read_to_string(&path)?;
    let doc: Value = serde_json::from_str(&text)?;
    assert_eq!(
        doc["indexes"],
        json!([
            {"name": "email", "fields": [{"path": "email", "kind": "hash", "direction": "asc"}], "unique": true, "sparse": false},
            {"name": "age", "fields": [{"path": "age", "kind": "btree", "direction": "asc"}], "unique": false, "sparse": false}
        ])
    );
    let reopened = open(&path).await?;
    assert_eq!(names(reopened.list_indexes().await?), [email, age]);
    assert!(reopened.drop_index("age").await?);
    reopened.close().await?;
    let reopened = open(&path).await?;
    assert_eq!(reopened.list_indexes().await?.len(), 1);
    reopened.close().await?;
    // A store without indexes writes no `indexes` member.
    let (_dir, plain) = temp()?;
    let store = open(&plain).await?;
    store.set("a", &json!(1)).await?;
    store.close().await?;
    assert!(!std::fs::read_to_string(&plain)?.contains("indexes"));
    Ok(())
}

/// A main file edited by hand so that it breaks one of its unique indexes does not
/// open (`DuplicateKey` naming the index and the file), and is left untouched.
#[tokio::test]
async fn a_hand_edit_breaking_a_persisted_unique_index_fails_the_open() -> TestResult {
    let (_dir, path) = temp()?;
    let store = open(&path).await?;
    store
        .create_index(IndexDefinition::new("email", "email", IndexKind::Hash).unique())
        .await?;
    store.set("a", &json!({"email": "a@x"})).await?;
    store.set("b", &json!({"email": "b@x"})).await?;
    store.close().await?;
    let edited = std::fs::read_to_string(&path)?.replace("b@x", "a@x");
    std::fs::write(&path, &edited)?;
    let err = open(&path).await.expect_err("duplicate");
    assert_eq!(err.code(), ErrorCode::DuplicateKey);
    assert_eq!(err.context_value("index"), Some("email"));
    assert_eq!(std::fs::read_to_string(&path)?, edited);
    Ok(())
}

/// A unique index rejects a conflicting write or batch and leaves nothing changed.
#[tokio::test]
async fn unique_index_rejects_conflicts() -> TestResult {
    let (_dir, path) = temp()?;
    let store = open(&path).await?;
    store.set("u1", &json!({"email": "a@x"})).await?;
    store
        .create_index(IndexDefinition::new("email", "email", IndexKind::Hash).unique())
        .await?;
    let err = store
        .set("u2", &json!({"email": "a@x"}))
        .await
        .expect_err("dup");
    assert_eq!(err.code(), ErrorCode::DuplicateKey);
    let err = store
        .batch(vec![
            Operation::set("u3", json!({"email": "b@x"})),
            Operation::set("u4", json!({"email": "b@x"})),
        ])
        .await
        .expect_err("dup in batch");
    assert_eq!(err.code(), ErrorCode::DuplicateKey);
    assert_eq!(store.size().await?, 1);
    // Moving the value from one key to another within one batch is fine.
    store
        .batch(vec![
            Operation::delete("u1"),
            Operation::set("u2", json!({"email": "a@x"})),
        ])
        .await?;
    store.set("u2", &json!({"email": "a@x", "v": 2})).await?;
    assert_eq!(store.keys().try_collect::<Vec<_>>().await?, ["u2"]);
    Ok(())
}

/// Aggregates run over every entry.
#[tokio::test]
async fn aggregate_counts_groups() -> TestResult {
    use storage_core::AggregateStage;
    use storage_core::query::Accumulator;
    let (_dir, path) = temp()?;
    let store = open(&path).await?;
    store.set_many(people()).await?;
    let out = store
        .aggregate(&[AggregateStage::Group {
            by: None,
            accumulators: vec![("n".to_owned(), Accumulator::Count)],
        }])
        .await?;
    assert_eq!(out[0]["n"], json!(40));
    Ok(())
}

/// Transactions read a snapshot, see their own writes, and commit as one journal record.
#[tokio::test]
async fn transaction_commits_atomically_as_one_record() -> TestResult {
    let (_dir, path) = temp()?;
    let store = open(&path).await?;
    store.set("a", &json!(100)).await?;
    let before = store.journal_records();
    let tx = store.begin(TransactionOptions::new()).await?;
    assert_eq!(tx.isolation(), IsolationLevel::Serializable);
    tx.set("a", &json!(60)).await?;
    tx.set("b", &json!(40)).await?;
    assert_eq!(tx.get("a").await?, Some(json!(60)));
    assert_eq!(store.get("b").await?, None, "uncommitted write visible");
    tx.commit().await?;
    assert_eq!(tx.state(), TransactionState::Committed);
    assert_eq!(store.journal_records(), before + 1);
    assert_eq!(store.get("b").await?, Some(json!(40)));
    Ok(())
}

/// Write skew between two concurrent transactions is prevented (G2-item).
#[tokio::test]
async fn write_skew_is_prevented() -> TestResult {
    let (_dir, path) = temp()?;
    let store = open(&path).await?;
    store.set("x", &json!(1)).await?;
    store.set("y", &json!(1)).await?;
    let t1 = store.begin(TransactionOptions::new()).await?;
    let t2 = store.begin(TransactionOptions::new()).await?;
    let sum1 = t1.get("x").await?.and_then(|v| v.as_i64()).unwrap_or(0)
        + t1.get("y").await?.and_then(|v| v.as_i64()).unwrap_or(0);
    let sum2 = t2.get("x").await?.and_then(|v| v.as_i64()).unwrap_or(0)
        + t2.get("y").await?.and_then(|v| v.as_i64()).unwrap_or(0);
    assert_eq!((sum1, sum2), (2, 2));
    t1.set("x", &json!(0)).await?;
    t2.set("y", &json!(0)).await?;
    t1.commit().await?;
    let err = t2.commit().await.expect_err("write skew");
    assert_eq!(err.code(), ErrorCode::VersionConflict);
    assert!(err.is_retryable());
    assert_eq!(t2.state(), TransactionState::Aborted);
    assert_eq!(store.get("y").await?, Some(json!(1)));
    Ok(())
}

/// A transaction keeps reading its snapshot after another commit (no read skew),
/// and a read-only one commits.
#[tokio::test]
async fn reads_come_from_the_snapshot() -> TestResult {
    let (_dir, path) = temp()?;
    let store = open(&path).await?;
    store.set("x", &json!(1)).await?;
    store.set("y", &json!(1)).await?;
    let reader = store.begin(TransactionOptions::new().read_only()).await?;
    assert_eq!(reader.get("x").await?, Some(json!(1)));
    store
        .batch(vec![
            Operation::set("x", json!(2)),
            Operation::set("y", json!(2)),
        ])
        .await?;
    store.clear().await?;
    store.set("z", &json!(3)).await?;
    assert_eq!(reader.get("y").await?, Some(json!(1)));
    assert_eq!(reader.keys().try_collect::<Vec<_>>().await?, ["x", "y"]);
    assert_eq!(reader.size().await?, 2);
    let err = reader.set("x", &json!(9)).await.expect_err("read-only");
    assert_eq!(err.code(), ErrorCode::Unsupported);
    reader.commit().await?;
    Ok(())
}

/// Savepoints undo later writes; time-outs abort; dropping rolls back.
#[tokio::test]
async fn savepoints_timeouts_and_drop() -> TestResult {
    let (_dir, path) = temp()?;
    let store = open(&path).await?;
    let tx = store.begin(TransactionOptions::new()).await?;
    tx.set("a", &json!(1)).await?;
    tx.savepoint("s1").await?;
    tx.set("b", &json!(2)).await?;
    tx.savepoint("s2").await?;
    tx.delete("a").await?;
    tx.rollback_to("s1").await?;
    assert_eq!(tx.keys().try_collect::<Vec<_>>().await?, ["a"]);
    assert_eq!(
        tx.rollback_to("s2").await.expect_err("gone").code(),
        ErrorCode::KeyNotFound
    );
    tx.commit().await?;
    assert_eq!(store.keys().try_collect::<Vec<_>>().await?, ["a"]);

    let slow = store
        .begin(TransactionOptions::new().timeout(Duration::from_millis(20)))
        .await?;
    slow.set("late", &json!(1)).await?;
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert_eq!(
        slow.commit().await.expect_err("late").code(),
        ErrorCode::TransactionAborted
    );
    assert_eq!(store.get("late").await?, None);

    {
        let dropped = store.begin(TransactionOptions::new()).await?;
        dropped.set("dropped", &json!(1)).await?;
    }
    assert_eq!(store.get("dropped").await?, None);
    Ok(())
}

/// Watchers get one batch per commit, in commit order; before-hooks veto.
#[tokio::test]
async fn events_follow_commits() -> TestResult {
    let (_dir, path) = temp()?;
    let store = open(&path).await?;
    let mut sub = store.watch(WatchPattern::All, 16)?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    store.on_after(Arc::new(move |e| {
        if let storage_core::AfterEvent::Set { key, .. } = e {
            log.lock().map(|mut l| l.push((*key).to_owned())).ok();
        }
    }));
    store.on_before(Arc::new(|e| match e {
        storage_core::BeforeEvent::Set { key, .. } if key.starts_with("forbidden") => {
            Err(StorageError::new(ErrorCode::InvalidValue, "vetoed"))
        }
        _ => Ok(()),
    }));
    store.set("a", &json!(1)).await?;
    assert!(store.set("forbidden", &json!(1)).await.is_err());
    assert_eq!(store.get("forbidden").await?, None);
    let tx = store.begin(TransactionOptions::new()).await?;
    tx.set("b", &json!(2)).await?;
    tx.delete("a").await?;
    tx.commit().await?;
    let Some(WatchEvent::Changes(first)) = sub.next().await else {
        return Err("no first batch".into());
    };
    let Some(WatchEvent::Changes(second)) = sub.next().await else {
        return Err("no second batch".into());
    };
    assert_eq!(first.changes.len(), 1);
    assert_eq!(second.changes.len(), 2);
    assert!(second.sequence > first.sequence);
    assert_eq!(
        seen.lock().map(|l| l.clone()).unwrap_or_default(),
        ["a", "b"]
    );
    Ok(())
}

/// An edit made to the file outside the store is announced by `reload`.
#[tokio::test]
async fn reload_announces_changes_made_on_disk() -> TestResult {
    let (_dir, path) = temp()?;
    let store = open(&path).await?;
    store.set("a", &json!(1)).await?;
    store.set("b", &json!(2)).await?;
    store.compact().await?;
    let mut sub = store.watch(WatchPattern::All, 16)?;
    let text = std::fs::read_to_string(&path)?.replace("\"b\": 2", "\"b\": 20,\n    \"c\": 3");
    std::fs::write(&path, text)?;
    assert_eq!(store.reload().await?, 2);
    assert_eq!(store.get("b").await?, Some(json!(20)));
    let Some(WatchEvent::Changes(batch)) = sub.next().await else {
        return Err("no batch".into());
    };
    let keys: Vec<&str> = batch.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["b", "c"]);
    assert_eq!(store.reload().await?, 0);
    append_survives_reopen(store, &path, "d", &["a", "b", "c", "d"]).await
}

/// The store reports every tier but Distributed, and the accessors agree.
#[tokio::test]
async fn capabilities_agree_with_accessors() -> TestResult {
    let (_dir, path) = temp()?;
    let store: Arc<dyn Storage<Value>> = Arc::new(open(&path).await?);
    let caps = store.capabilities();
    assert!(caps.persistent && caps.savepoints && caps.unique_indexes);
    assert!(caps.supports(storage_core::Tier::Observable));
    assert!(!caps.supports(storage_core::Tier::Distributed));
    assert!(store.as_observable().is_some());
    assert!(store.as_distributed().is_none());
    assert!(caps.supports_isolation(IsolationLevel::Serializable));
    let tx_store = store.as_transactional().ok_or("tx")?;
    let tx: Box<dyn Transaction<Value>> = tx_store.begin(TransactionOptions::new()).await?;
    tx.rollback().await?;
    Ok(())
}

/// A read-only handle opens while a writer holds the file, sees acknowledged writes
/// (later ones through `reload`), refuses writes, and changes no file.
#[tokio::test]
async fn read_only_handle_reads_beside_a_writer() -> TestResult {
    let (_dir, path) = temp()?;
    let writer = open(&path).await?;
    writer.set("a", &json!(1)).await?;
    writer.compact().await?;
    writer.set("b", &json!(2)).await?;
    let reader = JsonStorage::<Value>::open_read_only(JsonConfig::new(&path)).await?;
    assert_eq!(reader.keys().try_collect::<Vec<_>>().await?, ["a", "b"]);
    let err = reader.set("c", &json!(3)).await.expect_err("read-only");
    assert_eq!(err.code(), ErrorCode::Unsupported);
    assert_eq!(
        reader.compact().await.expect_err("read-only").code(),
        ErrorCode::Unsupported
    );
    let tx = reader.begin(TransactionOptions::new()).await?;
    tx.set("c", &json!(3)).await?;
    assert_eq!(
        tx.commit().await.expect_err("read-only").code(),
        ErrorCode::Unsupported
    );

    let mut sub = reader.watch(WatchPattern::All, 8)?;
    writer.set("c", &json!(3)).await?;
    writer.delete("a").await?;
    writer.compact().await?;
    writer.set("d", &json!(4)).await?;
    assert_eq!(reader.reload().await?, 3);
    assert_eq!(
        reader.keys().try_collect::<Vec<_>>().await?,
        ["b", "c", "d"]
    );
    let Some(WatchEvent::Changes(batch)) = sub.next().await else {
        return Err("no batch".into());
    };
    assert_eq!(batch.changes.len(), 3);

    // A record being appended (torn) is left out and left alone.
    let journal = journal_of(&path);
    let mut bytes = std::fs::read(&journal)?;
    bytes.extend_from_slice(b"{\"seq\":99,\"ops\":[{\"op\":\"set\",\"key\":\"e\"");
    std::fs::write(&journal, &bytes)?;
    let reader2 = JsonStorage::<Value>::open_read_only(JsonConfig::new(&path)).await?;
    assert_eq!(reader2.get("e").await?, None);
    assert_eq!(reader2.get("d").await?, Some(json!(4)));
    assert_eq!(std::fs::read(&journal)?, bytes);
    drop(reader2);
    assert_eq!(std::fs::read(&journal)?, bytes);
    Ok(())
}

/// A journal whose records skip a number lost records: `Corrupted`, file untouched.
#[tokio::test]
async fn a_gap_in_the_journal_is_corrupted() -> TestResult {
    let (_crashed_dir, crashed, journal) =
        killed_after(&[("a", json!("a")), ("b", json!("b")), ("c", json!("c"))]).await?;
    let text = std::fs::read_to_string(&journal)?;
    let mut without_second = String::new();
    for (i, line) in text.lines().enumerate() {
        if i != 1 {
            without_second.push_str(line);
            without_second.push('\n');
        }
    }
    std::fs::write(&journal, &without_second)?;
    let err = open(&crashed).await.expect_err("gap");
    assert_eq!(err.code(), ErrorCode::Corrupted);
    assert!(err.message().contains("missing"), "{err}");
    assert_eq!(std::fs::read_to_string(&journal)?, without_second);
    Ok(())
}

/// Writes, overwrites, deletes and clears keep flowing while background compactions
/// run, and the files hold exactly the acknowledged state at every moment: copies
/// taken mid-way reopen to what the store held when they were taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_background_compaction_are_kept() -> TestResult {
    let (_dir, path) = temp()?;
    let store = JsonStorage::<Value>::open(JsonConfig::new(&path).compact_after(20)).await?;
    let copies = tempfile::tempdir()?;
    let mut checks = 0;
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let (mut last_records, mut compactions) = (0, 0);
    for i in 0..1500u32 {
        let records = store.journal_records();
        if records < last_records {
            compactions += 1;
        }
        last_records = records;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let key = format!("k{:03}", seed % 400);
        match seed % 100 {
            0 => store.clear().await?,
            1..=24 => {
                store.delete(&key).await?;
            }
            _ => {
                store
                    .set(&key, &json!({"i": i, "pad": "p".repeat(64)}))
                    .await?;
            }
        }
        if i % 37 == 0 {
            let expected: Vec<(String, Value)> = store.entries().try_collect().await?;
            let dir = copies.path().join(format!("c{i}"));
            std::fs::create_dir(&dir)?;
            let copy = dir.join("store.json");
            copy_files(&path, &copy)?;
            let reopened = open(&copy).await?;
            let got: Vec<(String, Value)> = reopened.entries().try_collect().await?;
            assert_eq!(got, expected, "copy at {i}");
            checks += 1;
        }
    }
    let expected: Vec<(String, Value)> = store.entries().try_collect().await?;
    store.close().await?;
    let reopened = open(&path).await?;
    assert_eq!(reopened.entries().try_collect::<Vec<_>>().await?, expected);
    assert_eq!(std::fs::metadata(journal_of(&path))?.len(), 0);
    assert!(checks > 30);
    assert!(compactions > 3, "only {compactions} background compactions");
    Ok(())
}
