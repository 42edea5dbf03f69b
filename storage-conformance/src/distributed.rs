//! The distributed suite, for stores on FalkorDB/Redis replication: node health and
//! replication status as the servers see them, `sync`, consistency levels that never
//! claim more acknowledgements than the servers hold, replica loss, and failover.
//!
//! Every check starts its own deployment with [`crate::server`] (a primary, two
//! replicas, and three Sentinels where the check needs failover) on loopback ports,
//! pauses servers with `SIGSTOP` and kills them. A first full sync takes a few
//! seconds, so each check runs many properties on one deployment.

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use storage_core::{
    ConsistencyLevel, DistributedStorage, ErrorCode, Node, NodeRole, NodeStatus, ObservableStorage,
    Result, Storage,
};

use crate::check::{CheckResult, Context, Failure};
use crate::server::{FalkorCluster, FalkorServer};

/// How the distributed suite opens a store on a deployment.
pub trait DistributedHarness: Send + Sync + 'static {
    /// The store type.
    type Store: DistributedStorage<Value> + 'static;

    /// Opens a store on `cluster` (a handle that reads the primary and waits for no
    /// replica; the checks ask for levels with `with_consistency`) — on its Sentinels when it
    /// has any, else on its primary and replicas — whose writes wait at most
    /// `wait_timeout` for acknowledgements. Data-centre tags: the primary and replica 0
    /// in `a`, replica 1 in `b`.
    fn open(
        &self,
        cluster: &FalkorCluster,
        namespace: &str,
        wait_timeout: Duration,
    ) -> impl Future<Output = Result<Self::Store>> + Send;
}

/// How long writes wait for acknowledgements in the checks.
const WAIT: Duration = Duration::from_secs(1);

/// Starts a deployment off the async workers (starting servers blocks).
async fn deploy(sentinels: usize) -> Result<FalkorCluster, Failure> {
    tokio::task::spawn_blocking(move || {
        if sentinels == 0 {
            FalkorCluster::start(2)
        } else {
            FalkorCluster::start_with_sentinels(2, sentinels)
        }
    })
    .await
    .map_err(|e| Failure::new(format!("starting the deployment failed: {e}")))
}

fn port_of(node: &Node) -> Option<u16> {
    node.address.rsplit(':').next()?.parse().ok()
}

fn node_on<'a>(nodes: &'a [Node], server: &FalkorServer) -> Option<&'a Node> {
    nodes.iter().find(|n| port_of(n) == Some(server.port()))
}

/// `(primary offset, offsets each replica acknowledged)` as the primary reports them.
fn acknowledged(primary: &FalkorServer) -> (u64, Vec<(u16, u64)>) {
    let text = primary.info("replication").unwrap_or_default();
    let mut offset = 0;
    let mut replicas = Vec::new();
    for line in text.lines() {
        let Some((name, value)) = line.trim().split_once(':') else {
            continue;
        };
        if name == "master_repl_offset" {
            offset = value.parse().unwrap_or(0);
        } else if name.starts_with("slave") && name[5..].bytes().all(|b| b.is_ascii_digit()) {
            let field = |k: &str| {
                value
                    .split(',')
                    .find_map(|p| p.strip_prefix(k)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            if let (Some(port), Some(acked)) = (field("port"), field("offset")) {
                replicas.push((u16::try_from(port).unwrap_or(0), acked));
            }
        }
    }
    (offset, replicas)
}

/// Replicas the level needs in a deployment of `nodes` nodes.
fn needed(level: ConsistencyLevel, nodes: usize) -> usize {
    match level {
        ConsistencyLevel::One | ConsistencyLevel::Local | ConsistencyLevel::Each => 0,
        ConsistencyLevel::Quorum => nodes / 2,
        ConsistencyLevel::All => nodes - 1,
    }
}

/// Writes `key` at `level` and, when the store says it succeeded, checks against the
/// primary's own acknowledged offsets that enough replicas acknowledged past the
/// offset the primary had before the write. Returns the store's answer and how long
/// it took.
async fn write_checked(
    store: &dyn DistributedStorage<Value>,
    primary: &FalkorServer,
    level: ConsistencyLevel,
    key: &str,
) -> Result<(Result<()>, Duration), Failure> {
    let handle = store
        .with_consistency(level)
        .ctx(format!("with_consistency({level:?})"))?;
    let (before, _) = acknowledged(primary);
    let start = Instant::now();
    let outcome = handle
        .set(key, &json!({ "level": format!("{level:?}") }))
        .await;
    let took = start.elapsed();
    if outcome.is_ok() {
        let (_, replicas) = acknowledged(primary);
        let holding = replicas.iter().filter(|(_, o)| *o > before).count();
        let want = needed(level, 3);
        ensure!(
            holding >= want,
            "{level:?} write of {key} succeeded but only {holding} replicas acknowledged past \
             offset {before} ({replicas:?}); the level needs {want}"
        );
    }
    Ok((outcome, took))
}

/// `fut`'s output, or a failure when it takes longer than `limit`.
async fn within_limit<F: Future>(limit: Duration, fut: F) -> Result<F::Output, Failure> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Failure::new(format!("did not answer within {limit:?}")))
}

/// Polls `get_nodes` until `accept` holds or `limit` passes; returns the last nodes.
async fn nodes_until(
    store: &dyn DistributedStorage<Value>,
    limit: Duration,
    accept: impl Fn(&[Node]) -> bool,
) -> Result<(bool, Vec<Node>), Failure> {
    let start = Instant::now();
    loop {
        let nodes = store.get_nodes().await.ctx("get_nodes")?;
        if accept(&nodes) {
            return Ok((true, nodes));
        }
        if start.elapsed() >= limit {
            return Ok((false, nodes));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With every node up: three nodes with the right roles, all healthy; the status
/// counts them synced; `sync` reports every node; writes at ONE, QUORUM, ALL and EACH
/// succeed and are acknowledged as claimed. With replica 1 paused: reported degraded
/// within 2 s; QUORUM still succeeds; ALL and EACH fail with `ConsistencyViolation`
/// within the wait + 200 ms, saying the write is applied on the primary (and it is);
/// `sync` names the paused replica. Resumed: synced again. Replica 0 killed: offline;
/// restarted: synced again.
pub async fn replica_loss_is_reported_and_levels_hold<H: DistributedHarness>(h: &H) -> CheckResult {
    let mut cluster = deploy(0).await?;
    let store = h
        .open(&cluster, &crate::harness::fresh_namespace(), WAIT)
        .await
        .ctx("open")?;
    let store: &dyn DistributedStorage<Value> = &store;

    all_up(store, &cluster).await?;
    // Replica 1 (the only one in data centre b) stops answering.
    cluster.replicas[1]
        .pause()
        .map_err(|e| Failure::new(format!("pause: {e}")))?;
    let paused_port = cluster.replicas[1].port();
    let outcome = async {
        let (seen, nodes) = nodes_until(store, Duration::from_secs(2), |nodes| {
            nodes
                .iter()
                .any(|n| port_of(n) == Some(paused_port) && n.status != NodeStatus::Healthy)
        })
        .await?;
        ensure!(seen, "a paused replica still healthy after 2 s: {nodes:?}");
        let status = store.get_replication_status().await.ctx("status, paused")?;
        ensure!(
            status.lagging + status.offline >= 1 && status.synced <= 2,
            "status with a paused replica: {status:?}"
        );
        let (outcome, _) = write_checked(
            store,
            &cluster.primary,
            ConsistencyLevel::Quorum,
            "paused:q",
        )
        .await?;
        outcome.ctx("QUORUM write with one replica paused")?;
        let one = store
            .with_consistency(ConsistencyLevel::One)
            .ctx("with_consistency(ONE)")?;
        let read = within_limit(WAIT + Duration::from_secs(1), one.get("paused:q")).await?;
        ensure!(
            read.is_ok(),
            "a ONE read with a replica paused answers (from another node): {read:?}"
        );
        levels_above_the_live_nodes_fail(store, &cluster.primary).await?;
        let sync = store
            .sync(Duration::from_millis(300))
            .await
            .ctx("sync, paused")?;
        ensure!(
            sync.not_in_sync
                .iter()
                .any(|id| id.ends_with(&format!(":{paused_port}"))),
            "sync names the paused replica as not in sync: {sync:?}"
        );
        Ok(())
    }
    .await;
    cluster.replicas[1]
        .resume()
        .map_err(|e| Failure::new(format!("resume: {e}")))?;
    outcome?;
    let sync = store
        .sync(Duration::from_secs(5))
        .await
        .ctx("sync, resumed")?;
    ensure_eq!(
        sync.in_sync.len(),
        3,
        "nodes in sync after resuming ({sync:?})"
    );

    killed_replica(store, &mut cluster).await
}

/// With replica 1 paused: ALL and EACH fail with a `ConsistencyViolation` in time that
/// names the counts, and the write is applied on the primary.
async fn levels_above_the_live_nodes_fail(
    store: &dyn DistributedStorage<Value>,
    primary: &FalkorServer,
) -> CheckResult {
    for (level, key) in [
        (ConsistencyLevel::All, "paused:all"),
        (ConsistencyLevel::Each, "paused:each"),
    ] {
        let (outcome, took) = write_checked(store, primary, level, key).await?;
        match outcome {
            Err(e) if e.code() == ErrorCode::ConsistencyViolation => {
                ensure!(
                    took <= WAIT + Duration::from_millis(200),
                    "{level:?} took {took:?} to fail, more than the wait + 200 ms"
                );
                ensure!(
                    e.message().contains("applied on the primary"),
                    "the violation says where the write is: {e}"
                );
                ensure!(
                    e.context_value("requested").is_some() && e.context_value("achieved").is_some(),
                    "the violation names requested and achieved counts: {e}"
                );
            }
            other => {
                return Err(Failure::new(format!(
                    "{level:?} write with a replica paused: expected ConsistencyViolation, \
                     got {other:?}"
                )));
            }
        }
        let stored = store.get(key).await.ctx("read after a violation")?;
        ensure!(
            stored.is_some(),
            "a violated {level:?} write is applied on the primary"
        );
    }
    Ok(())
}

/// The checks with every node up.
async fn all_up(store: &dyn DistributedStorage<Value>, cluster: &FalkorCluster) -> CheckResult {
    let caps = store.capabilities();
    ensure!(
        caps.tiers.contains(&storage_core::Tier::Distributed) && store.as_distributed().is_some(),
        "the distributed tier is declared and reachable: {:?}",
        caps.tiers
    );
    let sync = store
        .sync(Duration::from_secs(5))
        .await
        .ctx("sync, all up")?;
    ensure_eq!(
        sync.in_sync.len(),
        3,
        "nodes in sync with all up ({sync:?})"
    );
    let nodes = store.get_nodes().await.ctx("get_nodes, all up")?;
    ensure_eq!(nodes.len(), 3, "nodes ({nodes:?})");
    let primary = node_on(&nodes, &cluster.primary)
        .ok_or_else(|| Failure::new(format!("the primary is not listed: {nodes:?}")))?;
    ensure_eq!(primary.role, NodeRole::Primary, "role of the primary");
    for replica in &cluster.replicas {
        let node = node_on(&nodes, replica)
            .ok_or_else(|| Failure::new(format!("a replica is not listed: {nodes:?}")))?;
        ensure_eq!(node.role, NodeRole::Replica, "role of replica {}", node.id);
        ensure!(node.last_seen.is_some(), "replica {} never seen", node.id);
    }
    ensure!(
        nodes.iter().all(|n| n.status == NodeStatus::Healthy),
        "every node healthy with all up: {nodes:?}"
    );
    let status = store.get_replication_status().await.ctx("status, all up")?;
    ensure_eq!(
        (status.factor, status.synced, status.lagging, status.offline),
        (3, 3, 0, 0),
        "replication status with all up"
    );
    for level in [
        ConsistencyLevel::One,
        ConsistencyLevel::Local,
        ConsistencyLevel::Quorum,
        ConsistencyLevel::All,
        ConsistencyLevel::Each,
    ] {
        let (outcome, _) =
            write_checked(store, &cluster.primary, level, &format!("up:{level:?}")).await?;
        outcome.ctx(format!("{level:?} write with all up"))?;
    }
    for level in [
        ConsistencyLevel::One,
        ConsistencyLevel::Local,
        ConsistencyLevel::Quorum,
    ] {
        let handle = store
            .with_consistency(level)
            .ctx(format!("with_consistency({level:?})"))?;
        ensure_eq!(
            handle.get("up:All").await.ctx(format!("{level:?} read"))?,
            Some(json!({ "level": "All" })),
            "a {level:?} read of a write every replica acknowledged"
        );
    }

    Ok(())
}

/// Replica 0 dies, then comes back.
async fn killed_replica(
    store: &dyn DistributedStorage<Value>,
    cluster: &mut FalkorCluster,
) -> CheckResult {
    // Replica 0 dies, then comes back.
    cluster.replicas[0].kill();
    let killed = &cluster.replicas[0];
    let (seen, nodes) = nodes_until(store, Duration::from_secs(5), |nodes| {
        node_on(nodes, killed).is_some_and(|n| n.status == NodeStatus::Offline)
    })
    .await?;
    ensure!(seen, "a killed replica is not reported offline: {nodes:?}");
    let status = store.get_replication_status().await.ctx("status, killed")?;
    ensure_eq!(
        status.offline,
        1,
        "offline count with a replica killed ({status:?})"
    );
    ensure_eq!(
        status.factor,
        3,
        "a killed replica still counts in the factor"
    );
    let (outcome, _) =
        write_checked(store, &cluster.primary, ConsistencyLevel::All, "killed:all").await?;
    ensure!(
        outcome
            .as_ref()
            .is_err_and(|e| e.code() == ErrorCode::ConsistencyViolation),
        "ALL with a replica dead: {outcome:?}"
    );
    tokio::task::block_in_place(|| cluster.replicas[0].restart())
        .map_err(|e| Failure::new(format!("restart: {e}")))?;
    let restarted = &cluster.replicas[0];
    let (seen, nodes) = nodes_until(store, Duration::from_secs(30), |nodes| {
        node_on(nodes, restarted).is_some_and(|n| n.status == NodeStatus::Healthy)
    })
    .await?;
    ensure!(seen, "a restarted replica is not synced again: {nodes:?}");
    let sync = store
        .sync(Duration::from_secs(5))
        .await
        .ctx("sync, restarted")?;
    ensure_eq!(
        sync.in_sync.len(),
        3,
        "nodes in sync after the restart ({sync:?})"
    );
    let (outcome, _) =
        write_checked(store, &cluster.primary, ConsistencyLevel::All, "back:all").await?;
    outcome.ctx("ALL write after the restart")?;
    Ok(())
}

/// Holds the process-wide lock that lets one distributed check at a time run its
/// cluster: the checks bound failover and lag times, and two clusters (seven servers
/// each, one of them writing flat out) on a 2-core machine push those past their bounds.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static CLUSTERS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A failed check poisons the lock; the next check still needs its turn.
    CLUSTERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// With Sentinels: the primary killed, writes fail with retryable errors only and
/// reach the new primary within 10 s; a watcher started before receives
/// `WatchEvent::Resync`; the nodes then name the new primary.
pub async fn writes_follow_a_failover<H: DistributedHarness>(h: &H) -> CheckResult {
    let mut cluster = deploy(3).await?;
    let store = h
        .open(&cluster, &crate::harness::fresh_namespace(), WAIT)
        .await
        .ctx("open")?;
    let mut watcher = store
        .watch(storage_core::WatchPattern::All, 1024)
        .ctx("watch before the failover")?;
    store.set("before", &json!(1)).await.ctx("write before")?;
    store
        .sync(Duration::from_secs(5))
        .await
        .ctx("sync before the failover")?;
    let old_port = cluster.primary.port();
    cluster.primary.kill();
    let killed = Instant::now();
    let mut failures = Vec::new();
    loop {
        match store.set("after", &json!(2)).await {
            Ok(()) => break,
            Err(e) => {
                ensure!(
                    e.is_retryable(),
                    "a write during the failover failed with a non-retryable error: {e}"
                );
                failures.push(e.code());
            }
        }
        ensure!(
            killed.elapsed() < Duration::from_secs(10),
            "no write reached a new primary within 10 s ({} retryable failures)",
            failures.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure_eq!(
        store.get("before").await.ctx("read after the failover")?,
        Some(json!(1)),
        "a replicated write survives the failover"
    );
    // A watcher of the old primary is told it lost track, never left silent.
    let told = tokio::time::timeout(Duration::from_secs(5), async {
        use futures::StreamExt;
        while let Some(event) = watcher.next().await {
            if matches!(event, storage_core::WatchEvent::Resync { .. }) {
                return true;
            }
        }
        false
    })
    .await;
    ensure!(
        matches!(told, Ok(true)),
        "a watcher across the failover received no Resync ({told:?})"
    );
    let nodes = store
        .get_nodes()
        .await
        .ctx("get_nodes after the failover")?;
    let primary = nodes
        .iter()
        .find(|n| n.role == NodeRole::Primary)
        .ok_or_else(|| Failure::new(format!("no primary listed: {nodes:?}")))?;
    ensure!(
        port_of(primary) != Some(old_port) && primary.status == NodeStatus::Healthy,
        "the new primary is listed and healthy: {nodes:?}"
    );
    ensure!(
        nodes
            .iter()
            .any(|n| port_of(n) == Some(old_port) && n.status == NodeStatus::Offline),
        "the killed primary is listed offline: {nodes:?}"
    );
    Ok(())
}

/// What [`loss_window_of_a_partitioned_primary`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossWindow {
    /// Writes at ONE the store acknowledged while the primary was frozen and failed over.
    pub store_acknowledged: usize,
    /// Of those, writes missing once the deployment settled.
    pub store_lost: usize,
    /// When the first and the last lost write of the store were acknowledged, in
    /// milliseconds after the pause (negative: before it).
    pub store_lost_between_ms: Option<(i64, i64)>,
    /// Plain `SET`s the old primary acknowledged after it came back, to a client that
    /// kept writing to it (as one on its side of a partition would).
    pub stale_acknowledged: usize,
    /// Of those, writes missing once the deployment settled.
    pub stale_lost: usize,
    /// From the old primary's return to its last acknowledged write.
    pub stale_window: Duration,
}

/// Plain `SET`s to the old primary, as a client cut off with it would send, until it
/// refuses them (demoted) or 8 s pass; returns the acknowledged keys and when the last
/// was acknowledged.
async fn write_to_old_primary(old: &FalkorServer) -> (Vec<String>, Duration) {
    let back = Instant::now();
    let mut stale = Vec::new();
    let mut stale_window = Duration::ZERO;
    let mut n = 0_u32;
    while back.elapsed() < Duration::from_secs(8) {
        n += 1;
        let key = format!("raw:{n:06}");
        let reply = tokio::task::block_in_place(|| old.command(&["SET", &key, "1"]));
        match reply {
            Ok(crate::server::Reply::Status(ok)) if ok == "OK" => {
                stale_window = back.elapsed();
                stale.push(key);
            }
            // Demoted: the old primary refuses writes from now on.
            Ok(crate::server::Reply::Error(_)) => break,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (stale, stale_window)
}

/// How many of the `acked` writes `store` no longer holds, and when the first and last
/// of them were acknowledged, in milliseconds after `paused` (negative: before).
async fn lost_among(
    quorum: &dyn DistributedStorage<Value>,
    acked: &[(String, Instant)],
    paused: Instant,
) -> Result<(usize, Option<(i64, i64)>), Failure> {
    let mut store_lost = 0;
    let mut lost_between: Option<(i64, i64)> = None;
    for (key, at) in acked {
        if quorum.get(key).await.ctx("read back")?.is_none() {
            store_lost += 1;
            let ms = if *at >= paused {
                i64::try_from(at.duration_since(paused).as_millis()).unwrap_or(i64::MAX)
            } else {
                -i64::try_from(paused.duration_since(*at).as_millis()).unwrap_or(i64::MAX)
            };
            lost_between = Some(lost_between.map_or((ms, ms), |(a, b)| (a.min(ms), b.max(ms))));
        }
    }
    Ok((store_lost, lost_between))
}

/// How many of `keys` the server does not hold.
fn missing_on(server: &FalkorServer, keys: &[String]) -> usize {
    keys.iter()
        .filter(|key| {
            !matches!(
                server.command(&["EXISTS", key.as_str()]),
                Ok(crate::server::Reply::Integer(1))
            )
        })
        .count()
}

/// The port of the primary the Sentinels name, if any answers.
fn sentinel_primary_port(cluster: &FalkorCluster) -> Option<u16> {
    cluster.sentinels.iter().find_map(|s| {
        match s
            .command(&["SENTINEL", "get-master-addr-by-name", "mymaster"])
            .ok()?
        {
            crate::server::Reply::Array(Some(parts)) => parts.get(1)?.text()?.parse().ok(),
            _ => None,
        }
    })
}

/// With Sentinels: while the store writes at ONE in a loop, the primary is frozen
/// with `SIGSTOP` (a partition: it neither answers nor learns of the failover) until
/// the Sentinels promote a replica, then resumed; a plain client keeps writing to the
/// old primary as one on its side of the partition would. The check prints how many
/// acknowledged writes each lost and over how long (the measured loss window, never
/// assumed to be zero), and fails if a write acknowledged at ALL is lost.
pub async fn loss_window_of_a_partitioned_primary<H: DistributedHarness>(h: &H) -> CheckResult {
    measure_loss_window(h).await.map(|w| {
        println!("distributed loss window: {w:?}");
    })
}

/// Runs the partition of [`loss_window_of_a_partitioned_primary`] and returns the numbers.
///
/// # Errors
/// A [`Failure`] when a write acknowledged at ALL is lost or the Sentinels never fail over.
pub async fn measure_loss_window<H: DistributedHarness>(h: &H) -> Result<LossWindow, Failure> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let cluster = deploy(3).await?;
    let store: Arc<dyn DistributedStorage<Value>> = Arc::new(
        h.open(&cluster, &crate::harness::fresh_namespace(), WAIT)
            .await
            .ctx("open")?,
    );
    let quorum = store
        .with_consistency(ConsistencyLevel::Quorum)
        .ctx("with_consistency(QUORUM)")?;
    store
        .with_consistency(ConsistencyLevel::All)
        .ctx("with_consistency(ALL)")?
        .set("base", &json!(0))
        .await
        .ctx("write at ALL before the partition")?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let store = store
            .with_consistency(ConsistencyLevel::One)
            .ctx("with_consistency(ONE)")?;
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0_u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("s:{n:06}");
                let value = json!(n);
                let write = store.set(&key, &value);
                if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(300), write).await {
                    acked.push((key, Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old_port = cluster.primary.port();
    cluster
        .primary
        .pause()
        .map_err(|e| Failure::new(format!("pause: {e}")))?;
    let paused = Instant::now();
    while sentinel_primary_port(&cluster).is_none_or(|p| p == old_port) {
        if paused.elapsed() > Duration::from_secs(20) {
            let _ = cluster.primary.resume();
            stop.store(true, Ordering::Relaxed);
            return Err(Failure::new("the Sentinels did not fail over within 20 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster
        .primary
        .resume()
        .map_err(|e| Failure::new(format!("resume: {e}")))?;
    let (stale, stale_window) = write_to_old_primary(&cluster.primary).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer
        .await
        .map_err(|e| Failure::new(format!("writer task: {e}")))?;
    // The old primary rejoins as a replica with a full sync.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let new_port = sentinel_primary_port(&cluster)
        .ok_or_else(|| Failure::new("no Sentinel names a primary"))?;
    let new_primary = cluster
        .replicas
        .iter()
        .find(|r| r.port() == new_port)
        .ok_or_else(|| Failure::new(format!("the new primary {new_port} is not a replica")))?;
    let (store_lost, lost_between) = lost_among(&*quorum, &acked, paused).await?;
    let stale_lost = tokio::task::block_in_place(|| missing_on(new_primary, &stale));
    ensure_eq!(
        quorum.get("base").await.ctx("read back")?,
        Some(json!(0)),
        "a write acknowledged at ALL before the partition"
    );
    Ok(LossWindow {
        store_acknowledged: acked.len(),
        store_lost,
        store_lost_between_ms: lost_between,
        stale_acknowledged: stale.len(),
        stale_lost,
        stale_window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_need_a_majority_or_every_replica() {
        assert_eq!(needed(ConsistencyLevel::One, 3), 0);
        assert_eq!(needed(ConsistencyLevel::Quorum, 3), 1);
        assert_eq!(needed(ConsistencyLevel::Quorum, 5), 2);
        assert_eq!(needed(ConsistencyLevel::All, 3), 2);
    }
}
