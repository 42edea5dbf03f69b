//! Crash trials and the two-process lock, with real child processes.
//!
//! This test target has no libtest harness: `main` runs the trials, and the
//! same binary re-run with `STORAGE_JSON_CHILD` set becomes the child (a
//! writer that prints `ack <i>` after each acknowledged write, or a process
//! that holds the lock). The parent kills writers with SIGKILL at random
//! moments — during appends, group commits and compactions — reopens the
//! files and checks that every acknowledged write is there.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use storage_core::{
    ErrorCode, IndexDefinition, IndexKind, IndexedStorage, Storage, TransactionOptions,
    TransactionalStorage,
};
use storage_json::{Durability, JsonConfig, JsonConfigExt, JsonStorage, LockMode};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CHILD_ENV: &str = "STORAGE_JSON_CHILD";

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn config(path: &Path, mode: &str) -> JsonConfig {
    let config = JsonConfig::new(path).compact_after(1_000_000);
    match mode {
        "group" => config.durability(Durability::Group {
            max_writes: 4,
            max_delay_ms: 1,
        }),
        "group-concurrent" => config.durability(Durability::Group {
            max_writes: 64,
            max_delay_ms: 1,
        }),
        "nonatomic" => config.atomic(false),
        // Compacts in the background every few writes (each trial starts a fresh file,
        // so the journal soon outgrows half the main file).
        "background" => config.compact_after(5),
        _ => config,
    }
}

/// Child: writes until killed, printing `ack <i>` once write `i` is acknowledged.
/// Every 7th write is a transaction over two keys, every 5th a batch of three,
/// every 25th write is followed by an explicit compaction, and every 11th by
/// creating or dropping (in turn) the index `by_i`, announced by `index-start` and
/// acknowledged by `index present` or `index absent`.
fn child_writer(path: &Path, trial: &str, mode: &str) -> TestResult {
    if mode == "group-concurrent" {
        return child_concurrent_writer(path, trial);
    }
    let rt = runtime()?;
    rt.block_on(async {
        let store = JsonStorage::<Value>::open(config(path, mode)).await?;
        let mut out = std::io::stdout().lock();
        let padding = "x".repeat(200);
        for i in 0..100_000u64 {
            write_one(&store, trial, i, &padding).await?;
            writeln!(out, "ack {i}")?;
            out.flush()?;
            if i % 11 == 5 {
                let create = i % 22 == 5;
                writeln!(out, "index-start")?;
                out.flush()?;
                if create {
                    store
                        .create_index(IndexDefinition::new("by_i", "i", IndexKind::Btree))
                        .await?;
                } else {
                    store.drop_index("by_i").await?;
                }
                writeln!(out, "index {}", if create { "present" } else { "absent" })?;
                out.flush()?;
            }
            if i % 25 == 24 {
                writeln!(out, "compacting")?;
                out.flush()?;
                store.compact().await?;
                writeln!(out, "compacted")?;
                out.flush()?;
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// Write `i` of `trial`: a transaction over two keys, a batch of three or one set
/// (the keys [`expected_for`] lists).
async fn write_one(
    store: &JsonStorage<Value>,
    trial: &str,
    i: u64,
    padding: &str,
) -> storage_core::Result<()> {
    let key = format!("t{trial}-{i:05}");
    if i % 7 == 3 {
        let tx = store.begin(TransactionOptions::new()).await?;
        tx.set(&key, &json!({"i": i, "pad": padding})).await?;
        tx.set(&format!("{key}-tx"), &json!(i)).await?;
        tx.commit().await
    } else if i % 5 == 1 {
        storage_core::BatchStorage::batch(
            store,
            vec![
                storage_core::Operation::set(key.clone(), json!({"i": i, "pad": padding})),
                storage_core::Operation::set(format!("{key}-b1"), json!(i)),
                storage_core::Operation::set(format!("{key}-b2"), json!(i)),
            ],
        )
        .await
        .map(|_| ())
    } else {
        store.set(&key, &json!({"i": i, "pad": padding})).await
    }
}

/// Writer tasks of the concurrent child: they share group commits.
const CONCURRENT_WRITERS: u64 = 16;

/// Child: [`CONCURRENT_WRITERS`] tasks on a two-thread runtime write until killed
/// (task `w` writes `w`, `w + 16`, …), each printing `ack <i>` once write `i` is
/// acknowledged, so most acknowledgements come from a group's relayed wake-ups;
/// task 0 also compacts after every 4th of its writes, announced as the
/// sequential child does.
fn child_concurrent_writer(path: &Path, trial: &str) -> TestResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = JsonStorage::<Value>::open(config(path, "group-concurrent")).await?;
        let tasks: Vec<_> = (0..CONCURRENT_WRITERS)
            .map(|w| {
                let store = store.clone();
                let trial = trial.to_owned();
                tokio::spawn(async move {
                    let say = |line: &str| {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "{line}").and_then(|()| out.flush())
                    };
                    let padding = "x".repeat(200);
                    let mut i = w;
                    let mut written = 0u64;
                    while i < 100_000 {
                        write_one(&store, &trial, i, &padding)
                            .await
                            .map_err(|e| e.to_string())?;
                        say(&format!("ack {i}")).map_err(|e| e.to_string())?;
                        written += 1;
                        if w == 0 && written.is_multiple_of(4) {
                            say("compacting").map_err(|e| e.to_string())?;
                            store.compact().await.map_err(|e| e.to_string())?;
                            say("compacted").map_err(|e| e.to_string())?;
                        }
                        i += CONCURRENT_WRITERS;
                    }
                    Ok::<_, String>(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// Child: holds the lock until its stdin closes.
fn child_holder(path: &Path) -> TestResult {
    let rt = runtime()?;
    rt.block_on(async {
        let store = JsonStorage::<Value>::open(JsonConfig::new(path)).await?;
        store.set("held", &json!(true)).await?;
        println!("locked");
        std::io::stdout().flush()?;
        let mut sink = Vec::new();
        std::io::stdin().read_to_end(&mut sink)?;
        store.close().await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// A small xorshift generator: trial timing only needs to vary, not be strong.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(7, |d| d.subsec_nanos());
        Self(u64::from(nanos) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn spawn_child(args: &str) -> std::io::Result<std::process::Child> {
    Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
}

/// The keys write `i` of `trial` stores, with their values.
fn expected_for(trial: u64, i: u64) -> Vec<(String, Value)> {
    let key = format!("t{trial}-{i:05}");
    let padding = "x".repeat(200);
    let mut out = vec![(key.clone(), json!({"i": i, "pad": padding}))];
    if i % 7 == 3 {
        out.push((format!("{key}-tx"), json!(i)));
    } else if i % 5 == 1 {
        out.push((format!("{key}-b1"), json!(i)));
        out.push((format!("{key}-b2"), json!(i)));
    }
    out
}

/// Runs `trials` kill-and-reopen rounds on one file; returns acknowledged writes checked.
#[derive(Default)]
struct TrialStats {
    /// Acknowledged keys checked, summed over the trials.
    key_checks: usize,
    /// Trials after which a main file existed (some compaction had completed).
    with_main_file: u64,
    /// Trials whose child was killed after it announced a compaction and before it finished one.
    during_compaction: u64,
    /// Trials after which the presence of the index `by_i` was known and checked.
    index_checks: u64,
}

fn crash_trials(
    mode: &str,
    trials: u64,
    rng: &mut Rng,
) -> Result<TrialStats, Box<dyn std::error::Error>> {
    let mut stats = TrialStats::default();
    let dir = tempfile::tempdir()?;
    let mut path = dir.path().join("store.json");
    let rt = runtime()?;
    let mut acked: BTreeMap<String, Value> = BTreeMap::new();
    let fresh_file_each_trial = mode == "background";
    // Whether the index `by_i` exists as of the last acknowledged index operation;
    // `None` while one was in flight when the child was killed.
    let mut index_state = Some(false);
    for trial in 0..trials {
        if fresh_file_each_trial {
            let trial_dir = dir.path().join(format!("trial{trial}"));
            std::fs::create_dir(&trial_dir)?;
            path = trial_dir.join("store.json");
            acked.clear();
            index_state = Some(false);
        }
        let mut child = spawn_child(&format!("write\t{}\t{trial}\t{mode}", path.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let kill_after = 1 + rng.below(60);
        let mut seen = 0u64;
        let mut last = String::new();
        let mut record = |line: &str, acked: &mut BTreeMap<String, Value>| {
            line.clone_into(&mut last);
            match line {
                "index-start" => index_state = None,
                "index present" => index_state = Some(true),
                "index absent" => index_state = Some(false),
                _ => {}
            }
            if let Some(i) = line
                .strip_prefix("ack ")
                .and_then(|n| n.parse::<u64>().ok())
            {
                acked.extend(expected_for(trial, i));
                true
            } else {
                false
            }
        };
        // Odd trials aim at a compaction: the kill follows its announcement.
        let aim_at_compaction = trial % 2 == 1;
        for line in lines.by_ref() {
            let line = line?;
            if record(&line, &mut acked) {
                seen += 1;
                if seen >= kill_after && !aim_at_compaction {
                    break;
                }
            } else if aim_at_compaction && line == "compacting" {
                break;
            }
        }
        let spin = Instant::now() + Duration::from_micros(rng.below(3_000));
        while Instant::now() < spin {
            std::hint::spin_loop();
        }
        child.kill()?;
        // Acks printed before the kill are still in the pipe: they count too.
        for line in lines {
            record(&line?, &mut acked);
        }
        child.wait()?;
        if last == "compacting" {
            stats.during_compaction += 1;
        }
        if path.exists() {
            stats.with_main_file += 1;
        }
        stats.key_checks += acked.len();
        // Check a copy, so the next child recovers from the crashed files themselves.
        let check_dir = tempfile::tempdir()?;
        let copy = copy_files(&path, check_dir.path())?;
        if index_state.is_some() {
            stats.index_checks += 1;
        }
        // The next child starts from these files: what they hold is now known.
        index_state = Some(rt.block_on(check_reopened(
            &copy,
            &format!("{mode} trial {trial}"),
            &acked,
            index_state,
        ))?);
    }
    Ok(stats)
}

/// Reopens crashed files and checks every acknowledged write and, when known, the
/// presence of the index `by_i`; returns whether the index is there.
async fn check_reopened(
    copy: &Path,
    trial: &str,
    acked: &BTreeMap<String, Value>,
    index_state: Option<bool>,
) -> Result<bool, Box<dyn std::error::Error>> {
    let store = JsonStorage::<Value>::open(JsonConfig::new(copy))
        .await
        .map_err(|e| format!("{trial}: reopen failed: {e}"))?;
    for (key, value) in acked {
        let got = store.get(key).await?;
        if got.as_ref() != Some(value) {
            return Err(format!("{trial}: acknowledged {key} lost (got {got:?})").into());
        }
    }
    let has_index = store
        .list_indexes()
        .await?
        .iter()
        .any(|i| i.definition.name == "by_i");
    if index_state.is_some_and(|expected| expected != has_index) {
        let [expected, found] = if has_index {
            ["absent", "present"]
        } else {
            ["present", "absent"]
        };
        return Err(format!(
            "{trial}: the acknowledged index operation left by_i {expected} but it is {found}"
        )
        .into());
    }
    Ok(has_index)
}

fn copy_files(path: &Path, to: &Path) -> std::io::Result<PathBuf> {
    let target = to.join("store.json");
    // Journal first: a compaction replaces the main file before the journal, so a
    // journal copied earlier than the main file always pairs with a main file at
    // least as new, which is a state a crash can leave.
    let [main, journal, ..] = storage_json::files_of(path);
    let [main_to, journal_to, ..] = storage_json::files_of(&target);
    for (from, dest) in [(journal, journal_to), (main, main_to)] {
        if from.exists() {
            std::fs::copy(&from, &dest)?;
        }
    }
    Ok(target)
}

/// A second process is refused while the first holds the file, and gets in
/// once it exits when configured to wait.
fn second_process_is_locked_out() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store.json");
    let mut child = spawn_child(&format!("hold\t{}", path.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let Some(line) = lines.next() else {
            return Err("holder exited early".into());
        };
        if line?.trim() == "locked" {
            break;
        }
    }
    let rt = runtime()?;
    rt.block_on(async {
        let err = JsonStorage::<Value>::open(JsonConfig::new(&path))
            .await
            .err()
            .ok_or("second writer was let in")?;
        assert_eq!(err.code(), ErrorCode::ConnectionFailed, "{err}");
        assert!(err.message().contains("locked by another process"), "{err}");
        let err = JsonStorage::<Value>::open(
            JsonConfig::new(&path).lock(LockMode::Wait { timeout_ms: 50 }),
        )
        .await
        .err()
        .ok_or("second writer was let in")?;
        assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
        // Let the holder finish while we wait for it.
        drop(child.stdin.take());
        let store = JsonStorage::<Value>::open(
            JsonConfig::new(&path).lock(LockMode::Wait { timeout_ms: 10_000 }),
        )
        .await?;
        assert_eq!(store.get("held").await?, Some(json!(true)));
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    child.wait()?;
    Ok(())
}

/// Read-only handles opened again and again beside a live writer (which compacts every
/// 25 writes) always load, and always hold every write acknowledged before they opened.
fn reader_beside_a_writer() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store.json");
    let mut child = spawn_child(&format!("write\t{}\t0\tfsync", path.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let acks = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let sink = std::sync::Arc::clone(&acks);
    let pump = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(i) = line.strip_prefix("ack ").and_then(|n| n.parse().ok()) {
                sink.lock().map(|mut a| a.push(i)).ok();
            }
        }
    });
    let rt = runtime()?;
    let outcome = (|| -> TestResult {
        let started = Instant::now();
        while acks.lock().map_or(0, |a| a.len()) < 5 {
            if started.elapsed() > Duration::from_secs(20) {
                return Err("writer acknowledged nothing".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        for round in 0..40 {
            let acked: Vec<u64> = acks.lock().map(|a| a.clone()).unwrap_or_default();
            rt.block_on(async {
                let reader = JsonStorage::<Value>::open_read_only(JsonConfig::new(&path))
                    .await
                    .map_err(|e| format!("read-only open {round} failed: {e}"))?;
                for i in acked {
                    for (key, value) in expected_for(0, i) {
                        if reader.get(&key).await?.as_ref() != Some(&value) {
                            return Err(format!("round {round}: acknowledged {key} missing").into());
                        }
                    }
                }
                Ok::<_, Box<dyn std::error::Error>>(())
            })?;
            std::thread::sleep(Duration::from_millis(3));
        }
        Ok(())
    })();
    child.kill()?;
    child.wait()?;
    pump.join().map_err(|_| "stdout pump panicked")?;
    outcome
}

fn main() -> TestResult {
    if let Ok(args) = std::env::var(CHILD_ENV) {
        let parts: Vec<&str> = args.split('\t').collect();
        return match parts.as_slice() {
            ["write", path, trial, mode] => child_writer(Path::new(path), trial, mode),
            ["hold", path] => child_holder(Path::new(path)),
            _ => Err(format!("unknown child command {args:?}").into()),
        };
    }
    let trials: u64 = std::env::var("STORAGE_JSON_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    second_process_is_locked_out()?;
    println!("test second_process_is_locked_out ... ok");
    reader_beside_a_writer()?;
    println!("test reader_beside_a_writer ... ok");
    let mut rng = Rng::seeded();
    for mode in [
        "fsync",
        "group",
        "group-concurrent",
        "nonatomic",
        "background",
    ] {
        let started = Instant::now();
        let stats = crash_trials(mode, trials, &mut rng)?;
        println!(
            "test crash_trials_{mode} ... ok ({trials} kills, {} during an explicit compaction, {} after some compaction, {} acknowledged-key checks and {} index-definition checks passed, {:.1}s)",
            stats.during_compaction,
            stats.with_main_file,
            stats.key_checks,
            stats.index_checks,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
