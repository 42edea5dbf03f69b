//! Crash safety: a child process writing with acknowledgements is killed with SIGKILL at
//! random moments; every acknowledged write must be there afterwards and SQLite's
//! integrity check must answer `ok`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use storage_core::{
    BatchStorage, Result, Storage, StorageError, TransactionOptions, TransactionalStorage,
};
use storage_sqlite::{SqliteConfig, SqliteStorage};

const CHILD_ENV: &str = "STORAGE_SQLITE_CRASH_CHILD";
const TRIALS: u64 = 200;

fn config(path: &str) -> SqliteConfig {
    SqliteConfig::new(path).table_name("crash")
}

async fn open(config: SqliteConfig) -> Result<SqliteStorage<u64>> {
    SqliteStorage::open(config.change_log(true)).await
}

/// Writes until killed, printing `ack <key> <value>` after each acknowledged write.
async fn child(path: &str, trial: u64) -> Result<()> {
    let store = open(config(path)).await?;
    let mut i = 0u64;
    loop {
        match i % 10 {
            3 => {
                let entries: Vec<(String, u64)> = (0..4)
                    .map(|j| (format!("t{trial}:b{i}:{j}"), i + j))
                    .collect();
                store.set_many(entries.clone()).await?;
                for (k, v) in entries {
                    println!("ack {k} {v}");
                }
            }
            7 => {
                let tx = store.begin(TransactionOptions::new()).await?;
                tx.set(&format!("t{trial}:x{i}"), &i).await?;
                tx.set(&format!("t{trial}:y{i}"), &(i + 1)).await?;
                tx.commit().await?;
                println!("ack t{trial}:x{i} {i}");
                println!("ack t{trial}:y{i} {}", i + 1);
            }
            _ => {
                let key = format!("t{trial}:k{i}");
                store.set(&key, &i).await?;
                println!("ack {key} {i}");
            }
        }
        i += 1;
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::new(storage_core::ErrorCode::Backend, e.to_string())
}

/// One trial: spawn the child of the test `test` (told what to do through `env`), kill
/// it after `kill_after` acknowledgements, collect every acknowledgement it printed.
fn trial_of(
    test: &str,
    env: &str,
    path: &str,
    trial: u64,
    kill_after: u64,
) -> Result<BTreeMap<String, u64>> {
    let exe = std::env::current_exe().map_err(backend)?;
    let mut child = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(env, format!("{path}|{trial}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(backend)?;
    let stdout = child.stdout.take().ok_or_else(|| backend("no stdout"))?;
    let (tx, rx) = mpsc::channel::<(String, u64)>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
        {
            let mut parts = line.split(' ');
            if parts.next() == Some("ack")
                && let (Some(k), Some(v)) = (parts.next(), parts.next())
                && let Ok(v) = v.parse()
                && tx.send((k.to_owned(), v)).is_err()
            {
                return;
            }
        }
    });
    let mut acked = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while u64::try_from(acked.len()).unwrap_or(u64::MAX) < kill_after && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((k, v)) => {
                acked.insert(k, v);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    child.kill().map_err(backend)?;
    child.wait().map_err(backend)?;
    reader
        .join()
        .map_err(|_| backend("reader thread panicked"))?;
    // Acknowledgements already in the pipe when the child died count too.
    acked.extend(rx.try_iter());
    Ok(acked)
}

/// One SIGKILL test: as the child (`env` set) it runs `child`; as the parent it runs
/// `trials` trials of the test `test` on one database file named `file`, each killed
/// after `kill_after(r)` acknowledgements (`r` random, seeded from the clock), then
/// reopens the file with an integrity check and asserts that `intact` holds for every
/// acknowledged key's value and its acknowledgement number. Returns how many writes
/// were acknowledged, `None` in the child.
fn sigkill_trials<V, F>(
    test: &str,
    env: &str,
    child: impl FnOnce(String, u64) -> F,
    file: &str,
    trials: u64,
    kill_after: impl Fn(u64) -> u64,
    intact: impl Fn(&V, u64) -> bool,
) -> Result<Option<usize>>
where
    V: storage_core::StorageValue,
    F: std::future::Future<Output = Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(backend)?;
    if let Ok(spec) = std::env::var(env) {
        let (path, trial) = spec
            .split_once('|')
            .ok_or_else(|| backend("bad child spec"))?;
        let trial = trial.parse().map_err(backend)?;
        runtime.block_on(child(path.to_owned(), trial))?;
        return Ok(None);
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(file).to_string_lossy().into_owned();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0x9e37_79b9, |d| u64::from(d.subsec_nanos()) ^ d.as_secs())
        | 1;
    let mut total_acked = 0usize;
    for trial in 0..trials {
        let acked = trial_of(test, env, &path, trial, kill_after(xorshift(&mut seed)))?;
        total_acked += acked.len();
        runtime.block_on(async {
            let store =
                SqliteStorage::<V>::open(config(&path).integrity_check_on_open(true)).await?;
            let keys: Vec<String> = acked.keys().cloned().collect();
            let found = store.get_many(&keys).await?;
            for (k, i) in &acked {
                assert!(
                    found.get(k).is_some_and(|v| intact(v, *i)),
                    "trial {trial}: acknowledged {k} lost or changed"
                );
            }
            store.integrity_check().await
        })?;
    }
    Ok(Some(total_acked))
}

/// SIGKILL during writes loses no acknowledged write and never corrupts the file.
#[test]
fn acknowledged_writes_survive_sigkill() -> Result<()> {
    let Some(total_acked) = sigkill_trials(
        "acknowledged_writes_survive_sigkill",
        CHILD_ENV,
        |path, trial| async move { child(&path, trial).await },
        "crash.sqlite",
        TRIALS,
        // Mostly mid-stream kills; some right after the first write.
        |r| 1 + r % 60,
        |v: &u64, i| *v == i,
    )?
    else {
        return Ok(());
    };
    eprintln!("{TRIALS} trials, {total_acked} acknowledged writes, all present");
    assert!(
        u64::try_from(total_acked).unwrap_or(u64::MAX) >= TRIALS,
        "the children acknowledged too little: {total_acked}"
    );
    Ok(())
}

const BIG_CHILD_ENV: &str = "STORAGE_SQLITE_CRASH_BIG_CHILD";

/// Bytes of padding per value of [`big_child`]: each write appends at least one page
/// to the WAL, so a trial's log passes the 1000 pages past which a checkpoint runs on
/// its own connection, and some pass the 4000 past which the writer runs one.
const BIG_VALUE: usize = 4000;

/// Writes values of [`BIG_VALUE`] bytes one by one until killed, printing
/// `ack <key> <i>` after each, the value starting with `i`.
async fn big_child(path: &str, trial: u64) -> Result<()> {
    let store = SqliteStorage::<String>::open(config(path)).await?;
    let padding = "x".repeat(BIG_VALUE);
    for i in 0u64.. {
        let key = format!("t{trial}:big{i}");
        store.set(&key, &format!("{i:020}{padding}")).await?;
        println!("ack {key} {i}");
    }
    Ok(())
}

/// SIGKILL while WAL checkpoints run (on their own connection and on the writer's)
/// loses no acknowledged write and never corrupts the file.
#[test]
fn acknowledged_writes_survive_sigkill_during_checkpoints() -> Result<()> {
    let Some(total_acked) = sigkill_trials(
        "acknowledged_writes_survive_sigkill_during_checkpoints",
        BIG_CHILD_ENV,
        |path, trial| async move { big_child(&path, trial).await },
        "checkpoints.sqlite",
        20,
        |r| 300 + r % 2000,
        |v: &String, i| {
            v.len() == 20 + BIG_VALUE && v.get(..20).and_then(|n| n.parse::<u64>().ok()) == Some(i)
        },
    )?
    else {
        return Ok(());
    };
    eprintln!("20 trials of large values, {total_acked} acknowledged writes, all present");
    assert!(
        total_acked >= 20 * 300,
        "the children acknowledged too little: {total_acked}"
    );
    Ok(())
}
