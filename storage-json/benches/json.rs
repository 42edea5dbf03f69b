//! The JSON-file store on the shared workload, next to a raw JSON file.
//!
//! `cargo bench -p storage-json` prints one Markdown report: sets at 1k, 10k and
//! 100k existing entries under fsync-per-write, group commit and `atomic: false`;
//! open time; gets; queries with and without indexes; compaction; and the raw
//! baselines (rewrite the whole file per write, append one fsync'd line, a raw group
//! commit of 64 writers).
//! `STORAGE_JSON_BENCH_QUICK=1` shrinks the run for a smoke test;
//! `STORAGE_JSON_BENCH_SIZES=100000` picks the store sizes;
//! `STORAGE_JSON_BENCH_GROUP=ROUNDS` measures only group commit, the adapter and the
//! raw group commit alternated for ROUNDS rounds per size, with the CPU time per set
//! of each (`STORAGE_JSON_BENCH_SIDE=adapter` or `raw` runs one side, for profiling).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use storage_core::query::field;
use storage_core::{
    BatchStorage, IndexDefinition, IndexKind, IndexedStorage, Query, QueryableStorage, Storage,
};
use storage_json::{Durability, JsonConfig, JsonConfigExt, JsonStorage};

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// The shared workload's value: a user record of about 150 bytes of JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    email: String,
    age: u32,
    city: String,
    tags: Vec<String>,
    active: bool,
}

const CITIES: [&str; 8] = [
    "Paris", "Lyon", "Berlin", "Madrid", "Rome", "Oslo", "Lisbon", "Vienna",
];

fn user(id: u64) -> User {
    User {
        id,
        name: format!("User Number {id}"),
        email: format!("user{id}@example.com"),
        age: u32::try_from(18 + id % 60).unwrap_or(18),
        city: CITIES[usize::try_from(id % 8).unwrap_or(0)].to_owned(),
        tags: vec!["alpha".to_owned(), format!("group{}", id % 100)],
        active: !id.is_multiple_of(3),
    }
}

fn key(id: u64) -> String {
    format!("user:{id:08}")
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn micros(d: Duration, ops: u64) -> f64 {
    d.as_secs_f64() * 1e6 / f64::from(u32::try_from(ops).unwrap_or(u32::MAX))
}

async fn prefill(path: &Path, n: u64) -> BenchResult {
    let store = JsonStorage::<User>::open(JsonConfig::new(path)).await?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        store
            .set_many(chunk.iter().map(|i| (key(*i), user(*i))).collect())
            .await?;
    }
    store.close().await?;
    Ok(())
}

/// Sequential overwrites of random existing keys, one `set` awaited at a time.
async fn sequential_sets(config: JsonConfig, n: u64, ops: u64, indexed: bool) -> BenchResult<f64> {
    let store = JsonStorage::<User>::open(config).await?;
    if indexed {
        for definition in bench_indexes() {
            store.create_index(definition).await?;
        }
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let start = Instant::now();
    for _ in 0..ops {
        let id = rng.below(n);
        store.set(&key(id), &user(id)).await?;
    }
    let took = start.elapsed();
    if indexed {
        // Index definitions persist; the later measurements start without them.
        for definition in bench_indexes() {
            store.drop_index(&definition.name).await?;
        }
    }
    store.close().await?;
    Ok(micros(took, ops))
}

/// The four indexes the query measurements create.
fn bench_indexes() -> [IndexDefinition; 4] {
    [
        IndexDefinition::new("email", "email", IndexKind::Hash).unique(),
        IndexDefinition::new("tags", "tags", IndexKind::Hash),
        IndexDefinition::new("age", "age", IndexKind::Btree),
        IndexDefinition::new("id", "id", IndexKind::Btree),
    ]
}

/// The floor of a durable append on this disk: one line written into space that was
/// zero-filled and fsync'd beforehand, then `fdatasync` (no size change, no block
/// allocation, so the file system has only the data to flush). The adapter's journal
/// appends the same way.
struct Floor {
    file: File,
    at: u64,
}

impl Floor {
    fn new(path: &Path, bytes: u64) -> BenchResult<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        file.write_all(&vec![0u8; usize::try_from(bytes)?])?;
        file.sync_all()?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Self { file, at: 0 })
    }

    fn append(&mut self, line: &[u8]) -> BenchResult {
        self.file.write_all(line)?;
        self.file.sync_data()?;
        self.at += u64::try_from(line.len())?;
        Ok(())
    }
}

fn raw_line(id: u64) -> BenchResult<Vec<u8>> {
    let mut line = serde_json::to_vec(&(key(id), user(id)))?;
    line.push(b'\n');
    Ok(line)
}

/// Per-set times of the store's fsync'd sets, of the floor (append + `fdatasync`
/// into a preallocated file) and of a plain append + `fdatasync` growing the file.
struct Sequential {
    store: f64,
    floor: f64,
    growing: f64,
}

/// Sequential fsync'd sets and the two raw appends, alternated in rounds so all three
/// see the same disk (its fsync latency drifts with other load on the machine).
async fn fsync_vs_raw(dir: &Path, path: &Path, n: u64, ops: u64) -> BenchResult<Sequential> {
    let store = JsonStorage::<User>::open(JsonConfig::new(path)).await?;
    let mut floor = Floor::new(&dir.join("floor.log"), ops * 1024)?;
    let growing_path = dir.join("raw.log");
    let _ = std::fs::remove_file(&growing_path);
    let mut growing = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&growing_path)?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let rounds = 10;
    let (mut in_store, mut in_floor, mut in_growing) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..ops / rounds {
            let id = rng.below(n);
            store.set(&key(id), &user(id)).await?;
        }
        in_store += start.elapsed();
        let start = Instant::now();
        for _ in 0..ops / rounds {
            let id = rng.below(n);
            floor.append(&raw_line(id)?)?;
        }
        in_floor += start.elapsed();
        let start = Instant::now();
        for _ in 0..ops / rounds {
            let id = rng.below(n);
            growing.write_all(&raw_line(id)?)?;
            growing.sync_data()?;
        }
        in_growing += start.elapsed();
    }
    store.close().await?;
    Ok(Sequential {
        store: micros(in_store, ops),
        floor: micros(in_floor, ops),
        growing: micros(in_growing, ops),
    })
}

/// Overwrites from `writers` concurrent tasks; group commit shares fsyncs between them.
async fn concurrent_sets(config: JsonConfig, n: u64, ops: u64, writers: u64) -> BenchResult<f64> {
    Ok(concurrent_sets_timed(config, n, ops, writers).await?.wall)
}

/// Per-set wall time and CPU time (all threads) of one side.
struct Timed {
    wall: f64,
    cpu: Option<f64>,
}

impl Timed {
    fn new(took: Duration, cpu: Option<u64>, ops: u64) -> Self {
        Self {
            wall: micros(took, ops),
            cpu: cpu.map(|ns| micros(Duration::from_nanos(ns), ops)),
        }
    }
}

/// [`concurrent_sets`], with the CPU time the sets took.
async fn concurrent_sets_timed(
    config: JsonConfig,
    n: u64,
    ops: u64,
    writers: u64,
) -> BenchResult<Timed> {
    let store = JsonStorage::<User>::open(config).await?;
    let cpu = cpu_ns();
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ (w + 1));
                for _ in 0..ops / writers {
                    let id = rng.below(n);
                    store.set(&key(id), &user(id)).await?;
                }
                Ok::<_, storage_core::StorageError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let took = start.elapsed();
    let cpu = cpu.zip(cpu_ns()).map(|(a, b)| b.saturating_sub(a));
    store.close().await?;
    Ok(Timed::new(took, cpu, ops))
}

/// What the raw group commit shares between its writer tasks and its sync thread.
struct RawGroupState {
    /// Lines appended since the last flush, in append order.
    buf: Vec<u8>,
    /// The typed entries, as a hand-written store keeps them.
    map: std::collections::BTreeMap<String, User>,
    /// The number of the last line appended.
    appended: u64,
    /// Lines in `buf`.
    lines: u64,
    /// When the last line was appended.
    last: Instant,
    stop: bool,
}

/// The least a hand-written group commit needs, for the same workload and the same
/// durability: each writer encodes its `["key", {...}]` line outside the lock,
/// appends it to a shared buffer and inserts the value into a typed map under one
/// mutex, then waits until a shared "synced up to line N" signal covers its line.
/// A sync thread waits until every writer has appended (it is told how many there
/// are, where the adapter has to estimate it) or none has for 50 µs (the last
/// writers finishing), writes the lines with one `write` into a preallocated,
/// zero-filled file, `fdatasync`s, and publishes the new synced mark (which wakes
/// every waiting task: all of them are in that group).
struct RawGroup {
    state: std::sync::Mutex<RawGroupState>,
    wake: std::sync::Condvar,
    synced: tokio::sync::watch::Sender<u64>,
    writers: u64,
}

/// How long the raw group commit waits for a missing writer.
const RAW_QUIET: Duration = Duration::from_micros(50);

impl RawGroup {
    fn sync_loop(&self, mut file: File) -> BenchResult {
        loop {
            let (buf, target) = {
                let mut st = self.state.lock().map_err(|_| "raw group: poisoned")?;
                while st.buf.is_empty() && !st.stop {
                    st = self.wake.wait(st).map_err(|_| "raw group: poisoned")?;
                }
                if st.buf.is_empty() {
                    return Ok(());
                }
                while st.lines < self.writers && !st.stop {
                    let close_at = st.last + RAW_QUIET;
                    let now = Instant::now();
                    if now >= close_at {
                        break;
                    }
                    st = self
                        .wake
                        .wait_timeout(st, close_at - now)
                        .map_err(|_| "raw group: poisoned")?
                        .0;
                }
                st.lines = 0;
                (std::mem::take(&mut st.buf), st.appended)
            };
            file.write_all(&buf)?;
            file.sync_data()?;
            self.synced.send_replace(target);
        }
    }

    async fn set(
        &self,
        synced: &mut tokio::sync::watch::Receiver<u64>,
        k: String,
        u: User,
    ) -> BenchResult {
        let mut line = serde_json::to_vec(&(&k, &u))?;
        line.push(b'\n');
        let (seq, notify) = {
            let mut st = self.state.lock().map_err(|_| "raw group: poisoned")?;
            st.buf.extend_from_slice(&line);
            st.map.insert(k, u);
            st.appended += 1;
            st.lines += 1;
            st.last = Instant::now();
            (st.appended, st.lines == 1 || st.lines == self.writers)
        };
        if notify {
            self.wake.notify_one();
        }
        synced
            .wait_for(|s| *s >= seq)
            .await
            .map_err(|_| "raw group: sync thread stopped")?;
        Ok(())
    }
}

/// The raw group commit ([`RawGroup`]) with `writers` concurrent tasks: per-set wall time.
async fn raw_group_sets(dir: &Path, n: u64, ops: u64, writers: u64) -> BenchResult<Timed> {
    let path = dir.join("raw-group.log");
    let file = Floor::new(&path, ops * 1024)?.file;
    let (synced, _) = tokio::sync::watch::channel(0u64);
    let raw = std::sync::Arc::new(RawGroup {
        state: std::sync::Mutex::new(RawGroupState {
            buf: Vec::new(),
            map: (0..n).map(|i| (key(i), user(i))).collect(),
            appended: 0,
            lines: 0,
            last: Instant::now(),
            stop: false,
        }),
        wake: std::sync::Condvar::new(),
        synced,
        writers,
    });
    let sync_thread = {
        let raw = std::sync::Arc::clone(&raw);
        std::thread::spawn(move || raw.sync_loop(file).map_err(|e| e.to_string()))
    };
    let cpu = cpu_ns();
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let raw = std::sync::Arc::clone(&raw);
            let mut synced = raw.synced.subscribe();
            tokio::spawn(async move {
                let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ (w + 1));
                for _ in 0..ops / writers {
                    let id = rng.below(n);
                    raw.set(&mut synced, key(id), user(id))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let took = start.elapsed();
    let cpu = cpu.zip(cpu_ns()).map(|(a, b)| b.saturating_sub(a));
    raw.state.lock().map_err(|_| "raw group: poisoned")?.stop = true;
    raw.wake.notify_one();
    sync_thread
        .join()
        .map_err(|_| "raw group: sync thread panicked")??;
    std::fs::remove_file(&path)?;
    Ok(Timed::new(took, cpu, ops))
}

/// The adapter's group commit and the raw one, `WRITERS` writers each, alternated in
/// four rounds (the first side alternating too) so both see the same disk; per-set
/// wall times over all rounds.
async fn group_vs_raw(config: JsonConfig, dir: &Path, n: u64, ops: u64) -> BenchResult<(f64, f64)> {
    const ROUNDS: u64 = 4;
    let (mut adapter, mut raw) = (0.0, 0.0);
    for round in 0..ROUNDS {
        let per_round = ops / ROUNDS;
        if round % 2 == 0 {
            adapter += concurrent_sets(config.clone(), n, per_round, WRITERS).await?;
            raw += raw_group_sets(dir, n, per_round, WRITERS).await?.wall;
        } else {
            raw += raw_group_sets(dir, n, per_round, WRITERS).await?.wall;
            adapter += concurrent_sets(config.clone(), n, per_round, WRITERS).await?;
        }
    }
    let rounds = f64::from(u32::try_from(ROUNDS)?);
    Ok((adapter / rounds, raw / rounds))
}

/// `STORAGE_JSON_BENCH_GROUP=ROUNDS`: group commit only, the adapter and the raw group
/// commit alternated for ROUNDS rounds at each size (64 writers), one line per round.
async fn group_only(root: &Path, rounds: u32) -> BenchResult {
    let sizes: Vec<u64> = match std::env::var("STORAGE_JSON_BENCH_SIZES") {
        Ok(list) => list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
        Err(_) => vec![1_000, 10_000, 100_000],
    };
    let ops = 20_000;
    let group = Durability::Group {
        max_writes: 64,
        max_delay_ms: 1,
    };
    println!(
        "| entries | round | set, group commit ({WRITERS} writers) | raw group commit ({WRITERS} writers) | adapter / raw | adapter CPU / set | raw CPU / set |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let show = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.1} µs"));
    for &n in &sizes {
        let path = root.join(format!("users-{n}.json"));
        prefill(&path, n).await?;
        let (mut adapter, mut raw, mut adapter_cpu, mut raw_cpu) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            // `STORAGE_JSON_BENCH_SIDE=adapter` or `raw` runs one side only (for profiling).
            let side = std::env::var("STORAGE_JSON_BENCH_SIDE").unwrap_or_default();
            let skipped = || Timed {
                wall: f64::NAN,
                cpu: None,
            };
            // The side that goes first alternates, as the disk's pace drifts.
            let (a, r) = if round % 2 == 0 {
                let a = if side == "raw" {
                    skipped()
                } else {
                    concurrent_sets_timed(JsonConfig::new(&path).durability(group), n, ops, WRITERS)
                        .await?
                };
                let r = if side == "adapter" {
                    skipped()
                } else {
                    raw_group_sets(root, n, ops, WRITERS).await?
                };
                (a, r)
            } else {
                let r = if side == "adapter" {
                    skipped()
                } else {
                    raw_group_sets(root, n, ops, WRITERS).await?
                };
                let a = if side == "raw" {
                    skipped()
                } else {
                    concurrent_sets_timed(JsonConfig::new(&path).durability(group), n, ops, WRITERS)
                        .await?
                };
                (a, r)
            };
            println!(
                "| {n} | {round} | {:.1} µs | {:.1} µs | {:.2} | {} | {} |",
                a.wall,
                r.wall,
                a.wall / r.wall,
                show(a.cpu),
                show(r.cpu)
            );
            adapter.push(a.wall);
            raw.push(r.wall);
            adapter_cpu.extend(a.cpu);
            raw_cpu.extend(r.cpu);
        }
        let (a, r) = (median_of(&mut adapter), median_of(&mut raw));
        let (ac, rc) = (median_of(&mut adapter_cpu), median_of(&mut raw_cpu));
        println!(
            "| {n} | median | {a:.1} µs | {r:.1} µs | {:.2} | {ac:.1} µs | {rc:.1} µs |",
            a / r
        );
    }
    Ok(())
}

fn median_of(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The naive design: rewrite the whole file (temp, fsync, rename) for every write.
fn raw_rewrite(dir: &Path, n: u64, ops: u64) -> BenchResult<f64> {
    let mut map: std::collections::BTreeMap<String, User> =
        (0..n).map(|i| (key(i), user(i))).collect();
    let path = dir.join("raw.json");
    let tmp = dir.join("raw.json.tmp");
    let mut rng = Rng(7);
    let start = Instant::now();
    for _ in 0..ops {
        let id = rng.below(n);
        map.insert(key(id), user(id));
        let mut out = std::io::BufWriter::new(File::create(&tmp)?);
        serde_json::to_writer(&mut out, &map)?;
        let file = out
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(micros(start.elapsed(), ops))
}

/// CPU time used so far by this process's live threads (`/proc/self/task/*/schedstat`,
/// nanoseconds), or `None` where that is not available. Read before a side stops its
/// threads, so their time is counted.
fn cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Concurrent writer tasks for the group-commit column.
const WRITERS: u64 = 64;

/// Write costs at every size; returns the largest size.
async fn write_costs(root: &Path, quick: bool) -> BenchResult<u64> {
    let sizes: Vec<u64> = match std::env::var("STORAGE_JSON_BENCH_SIZES") {
        Ok(list) => list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
        Err(_) if quick => vec![1_000],
        Err(_) => vec![1_000, 10_000, 100_000],
    };
    let seq_ops = if quick { 200 } else { 2_000 };
    let group_ops = if quick { 2_000 } else { 20_000 };
    let group = Durability::Group {
        max_writes: 64,
        max_delay_ms: 1,
    };

    println!(
        "| entries | set, fsync per write | floor: append + fdatasync, preallocated file | adapter / floor | append + fdatasync, growing file | set, group commit ({WRITERS} writers), wall time / sets | raw group commit ({WRITERS} writers) | group commit / raw | set, group commit (4 writers) | set, atomic: false | set, atomic: false, 4 indexes | raw: rewrite the file per write |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &sizes {
        let path = root.join(format!("users-{n}.json"));
        prefill(&path, n).await?;
        let seq = fsync_vs_raw(root, &path, n, seq_ops).await?;
        // Fewer writers than `max_writes`: a group must close without filling up.
        let few = concurrent_sets(JsonConfig::new(&path).durability(group), n, seq_ops, 4).await?;
        let (grouped, raw_grouped) =
            group_vs_raw(JsonConfig::new(&path).durability(group), root, n, group_ops).await?;
        let loose =
            sequential_sets(JsonConfig::new(&path).atomic(false), n, seq_ops, false).await?;
        let loose_indexed =
            sequential_sets(JsonConfig::new(&path).atomic(false), n, seq_ops, true).await?;
        let rewrite_ops = if n >= 100_000 { 5 } else { 50 };
        let rewrite = raw_rewrite(root, n, rewrite_ops)?;
        println!(
            "| {n} | {:.1} µs | {:.1} µs | {:.2} | {:.1} µs | {grouped:.1} µs | {raw_grouped:.1} µs | {:.2} | {few:.1} µs | {loose:.1} µs | {loose_indexed:.1} µs | {rewrite:.0} µs |",
            seq.store,
            seq.floor,
            seq.store / seq.floor,
            seq.growing,
            grouped / raw_grouped,
        );
    }
    Ok(*sizes.last().unwrap_or(&1_000))
}

/// Open, get, query and compaction costs at `n` entries (the file written by `write_costs`).
async fn read_costs(root: &Path, n: u64) -> BenchResult {
    let path = root.join(format!("users-{n}.json"));
    let start = Instant::now();
    let store = JsonStorage::<User>::open(JsonConfig::new(&path)).await?;
    let open_ms = start.elapsed().as_secs_f64() * 1e3;
    let size_kb = std::fs::metadata(&path)?.len() / 1_000;
    let file_mb = f64::from(u32::try_from(size_kb).unwrap_or(u32::MAX)) / 1e3;
    println!("\nAt {n} entries ({file_mb:.1} MB file):\n");
    println!("| operation | time |");
    println!("|---|---:|");
    println!("| open (load and parse the file) | {open_ms:.0} ms |");

    let gets = 100_000u64;
    let mut rng = Rng(11);
    let start = Instant::now();
    for _ in 0..gets {
        let id = rng.below(n);
        if store.get(&key(id)).await?.is_none() {
            return Err("missing key".into());
        }
    }
    println!("| get | {:.2} µs |", micros(start.elapsed(), gets));

    query_costs(&store, n).await?;
    let start = Instant::now();
    let counted = store
        .count(&Query::filter(field("active").eq(true)))
        .await?;
    println!(
        "| count active (full scan) → {counted} | {:.2} ms |",
        start.elapsed().as_secs_f64() * 1e3
    );
    let start = Instant::now();
    store.compact().await?;
    let compact_ms = start.elapsed().as_secs_f64() * 1e3;
    println!(
        "| compaction in the foreground (`compact()`; rewrite the whole file) | {compact_ms:.0} ms |"
    );
    store.close().await?;
    let start = Instant::now();
    let store = JsonStorage::<User>::open(JsonConfig::new(&path)).await?;
    println!(
        "| open, with the 4 index definitions persisted and the indexes rebuilt | {:.0} ms |",
        start.elapsed().as_secs_f64() * 1e3
    );
    // The compaction below runs without indexes, as before they were persisted.
    for definition in bench_indexes() {
        store.drop_index(&definition.name).await?;
    }
    store.close().await?;
    background_compaction(&path, n).await
}

/// Queries with and without indexes (creating four).
async fn query_costs(store: &JsonStorage<User>, n: u64) -> BenchResult {
    let age_range = || {
        Query::filter(storage_core::query::and(vec![
            field("age").gte(30),
            field("age").lt(32),
        ]))
        .order_asc("email")
        .limit(10)
    };
    // A 1 % window of `id`, as the workspace benchmark's `created_at` window.
    let from = n / 2;
    let id_window = || {
        Query::filter(storage_core::query::and(vec![
            field("id").gte(from),
            field("id").lt(from + n / 100),
        ]))
        .order_asc("id")
        .limit(100)
    };
    let time_query = |q: Query| {
        let store = store.clone();
        async move {
            let reps = 20u64;
            let start = Instant::now();
            let mut found = 0usize;
            for _ in 0..reps {
                found = store.find_many(&q).await?.len();
            }
            Ok::<_, storage_core::StorageError>((
                start.elapsed() / u32::try_from(reps).unwrap_or(1),
                found,
            ))
        }
    };
    let show = |name: &str, (t, found): (Duration, usize)| {
        let us = t.as_secs_f64() * 1e6;
        let shown = if us >= 1000.0 {
            format!("{:.2} ms", us / 1e3)
        } else {
            format!("{us:.1} µs")
        };
        println!("| query: {name} → {found} results | {shown} |");
    };
    show(
        "eq on city, no index (full scan)",
        time_query(Query::filter(field("city").eq("Oslo"))).await?,
    );
    show(
        "range age 30..32 + order_by email, limit 10, no index",
        time_query(age_range()).await?,
    );
    show(
        "1 % window of id + order_by id, limit 100, no index",
        time_query(id_window()).await?,
    );
    let start = Instant::now();
    for definition in bench_indexes() {
        store.create_index(definition).await?;
    }
    println!(
        "| create 4 indexes (unique hash on email, hash on tags, btree on age and id) | {:.0} ms |",
        start.elapsed().as_secs_f64() * 1e3
    );
    show(
        "eq on email (unique hash index)",
        time_query(Query::filter(field("email").eq("user77@example.com"))).await?,
    );
    show(
        "eq on tags (hash index, array field)",
        time_query(Query::filter(field("tags").eq("group7"))).await?,
    );
    show(
        "range age 30..32 + order_by email, limit 10, btree index on age",
        time_query(age_range()).await?,
    );
    show(
        "1 % window of id + order_by id, limit 100, btree index on id",
        time_query(id_window()).await?,
    );
    Ok(())
}

/// Automatic compaction runs in the background: the longest set while one starts
/// and runs is what a writer sees of it (`atomic: false` to reach the threshold fast).
async fn background_compaction(path: &Path, n: u64) -> BenchResult {
    let store =
        JsonStorage::<User>::open(JsonConfig::new(path).atomic(false).compact_after(1)).await?;
    let mut rng = Rng(23);
    let mut longest = Duration::ZERO;
    let mut total = Duration::ZERO;
    let mut writes = 0u64;
    let mut peak_records = 0;
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let id = rng.below(n);
        let start = Instant::now();
        store.set(&key(id), &user(id)).await?;
        let took = start.elapsed();
        longest = longest.max(took);
        total += took;
        writes += 1;
        let records = store.journal_records();
        if records < peak_records || Instant::now() > give_up {
            break;
        }
        peak_records = records;
    }
    let finished = if Instant::now() > give_up {
        "still running at the end"
    } else {
        "ran to completion"
    };
    println!(
        "| longest set while a background compaction started and {finished} ({writes} sets, mean {:.1} µs) | {:.2} ms |",
        micros(total, writes),
        longest.as_secs_f64() * 1e3
    );
    store.close().await?;
    Ok(())
}

fn main() -> BenchResult {
    let quick = std::env::var("STORAGE_JSON_BENCH_QUICK").is_ok();
    let root = tempfile::tempdir()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async {
            if let Some(rounds) = std::env::var("STORAGE_JSON_BENCH_GROUP")
                .ok()
                .and_then(|r| r.parse().ok())
            {
                return group_only(root.path(), rounds).await;
            }
            let n = write_costs(root.path(), quick).await?;
            read_costs(root.path(), n).await
        })
}
