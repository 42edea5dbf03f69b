//! [`DistributedGraphStorage`]: a [`GraphStorage`] on a replicated FalkorDB deployment.
//!
//! The replication is FalkorDB's own (Redis replication; Sentinel for failover). Node
//! health comes from the servers: each replica's acknowledged offset and the age of
//! its last acknowledgement as the primary reports them (`INFO replication`), and
//! whether the replica itself answers. A write at a consistency level is followed, on
//! a connection of its own, by a marker write and `WAIT` for the acknowledgements the
//! level needs: replication is ordered, so a replica that acknowledged the marker
//! holds the write.

pub mod config;
mod probe;
mod store;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use storage_core::{
    ConsistencyLevel, ErrorCode, Node, NodeRole, NodeStatus, ReplicationStatus, Result,
    StorageError, StorageValue, SyncResult,
};

use self::config::{ReplicationConfig, host_port, node_id};
use self::probe::{connect, info_on, replication_info, sentinel_primary, sentinel_replicas};
use crate::backend::GraphStorage;
use crate::config::GraphConfig;
use crate::error::{BACKEND, redis_err};

/// A graph store on a primary with replicas: every tier of [`GraphStorage`] plus
/// [`storage_core::DistributedStorage`].
///
/// Writes go to the primary; at a consistency level they then wait for the
/// acknowledgements the level needs ([`DistributedGraphStorage::with_level`]). With
/// Sentinels configured, a failed operation asks them for the primary and follows a
/// failover; the operation itself fails with a retryable `ConnectionLost`.
pub struct DistributedGraphStorage<T> {
    pub(crate) shared: Arc<Shared<T>>,
    /// None: the handle `open` returns, which reads the primary and waits for nothing.
    pub(crate) level: Option<ConsistencyLevel>,
}

impl<T> Clone for DistributedGraphStorage<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            level: self.level,
        }
    }
}

impl<T: StorageValue> std::fmt::Debug for DistributedGraphStorage<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistributedGraphStorage")
            .field("primary", &self.shared.primary_id())
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

/// What every handle of one deployment shares.
pub(crate) struct Shared<T> {
    pub(crate) graph: GraphConfig,
    pub(crate) replication: ReplicationConfig,
    primary: RwLock<(String, GraphStorage<T>)>,
    /// Every replica ever configured, discovered or demoted, by id.
    replicas: Mutex<BTreeSet<String>>,
    last_seen: Mutex<std::collections::HashMap<String, SystemTime>>,
    readers: tokio::sync::Mutex<std::collections::HashMap<String, GraphStorage<T>>>,
    switching: tokio::sync::Mutex<()>,
    /// When the Sentinels were last asked for the primary.
    asked: Mutex<Option<Instant>>,
}

/// How often writes ask the Sentinels whether the primary moved: a primary cut off
/// from the Sentinels keeps accepting writes until they demote it, and every write it
/// acknowledges meanwhile is lost.
const SENTINEL_CHECK: Duration = Duration::from_millis(250);

/// The key the acknowledgement marker increments, beside the graph's own keys.
fn marker_key(graph: &str) -> String {
    format!("{graph}::replication::marker")
}

impl<T: StorageValue> DistributedGraphStorage<T> {
    /// Opens the store on the primary that `replication` names (asking the Sentinels
    /// when configured); `graph`'s `url` is ignored, its credentials are used for
    /// every node. The handle it returns reads the primary (so it reads its own
    /// writes) and waits for no replica; [`DistributedGraphStorage::with_level`] gives
    /// handles at a consistency level.
    ///
    /// # Errors
    /// `InvalidConfig`; `ConnectionFailed` when the primary cannot be reached or the
    /// named server is not a primary; as [`GraphStorage::open`].
    pub async fn open(graph: GraphConfig, replication: ReplicationConfig) -> Result<Self> {
        replication.validate()?;
        let primary_id = match &replication.primary {
            Some(p) => host_port(&p.address)
                .map(|(h, port)| node_id(&h, port))
                .ok_or_else(|| StorageError::new(ErrorCode::InvalidConfig, "bad primary"))?,
            None => sentinel_primary(&replication.sentinels, master_name(&replication)).await?,
        };
        let mut replicas: BTreeSet<String> = replication
            .replicas
            .iter()
            .filter_map(|r| host_port(&r.address).map(|(h, p)| node_id(&h, p)))
            .collect();
        if !replication.sentinels.is_empty() {
            replicas
                .extend(sentinel_replicas(&replication.sentinels, master_name(&replication)).await);
        }
        if let Ok(info) = replication_info(&primary_id, &graph).await {
            if !info.is_primary {
                return Err(StorageError::new(
                    ErrorCode::ConnectionFailed,
                    format!("{primary_id} is not a primary"),
                )
                .with_backend(BACKEND));
            }
            replicas.extend(info.replicas.iter().map(|r| r.id.clone()));
        }
        replicas.remove(&primary_id);
        let store = open_node(&graph, &primary_id).await?;
        Ok(Self {
            shared: Arc::new(Shared {
                graph,
                replication,
                primary: RwLock::new((primary_id, store)),
                replicas: Mutex::new(replicas),
                last_seen: Mutex::new(std::collections::HashMap::new()),
                readers: tokio::sync::Mutex::new(std::collections::HashMap::new()),
                switching: tokio::sync::Mutex::new(()),
                asked: Mutex::new(Some(Instant::now())),
            }),
            level: None,
        })
    }

    /// This handle at another consistency level (the typed form of
    /// [`storage_core::DistributedStorage::with_consistency`]).
    ///
    /// # Errors
    /// `Unsupported` for EACH when the configuration names no data centre.
    pub fn with_level(&self, level: ConsistencyLevel) -> Result<Self> {
        if level == ConsistencyLevel::Each && self.shared.replication.named_datacenters().is_empty()
        {
            return Err(StorageError::unsupported(
                "consistency EACH needs data-centre tags in the replication config",
            )
            .with_backend(BACKEND));
        }
        Ok(Self {
            shared: Arc::clone(&self.shared),
            level: Some(level),
        })
    }

    /// The consistency level of this handle (none for the handle `open` returns).
    pub fn level(&self) -> Option<ConsistencyLevel> {
        self.level
    }

    /// The id (`host:port`) of the node the store currently writes to.
    pub fn primary_id(&self) -> String {
        self.shared.primary_id()
    }

    /// The store on the current primary.
    pub(crate) fn primary(&self) -> GraphStorage<T> {
        self.shared.primary_store()
    }
}

fn master_name(replication: &ReplicationConfig) -> &str {
    replication.master_name.as_deref().unwrap_or_default()
}

/// Opens a [`GraphStorage`] on the node `id`.
async fn open_node<T: StorageValue>(graph: &GraphConfig, id: &str) -> Result<GraphStorage<T>> {
    GraphStorage::open(GraphConfig {
        url: Some(format!("redis://{id}")),
        ..graph.clone()
    })
    .await
}

impl<T: StorageValue> Shared<T> {
    pub(crate) fn primary_id(&self) -> String {
        self.primary
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    pub(crate) fn primary_store(&self) -> GraphStorage<T> {
        self.primary
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    fn replica_ids(&self) -> Vec<String> {
        let primary = self.primary_id();
        self.replicas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|r| **r != primary)
            .cloned()
            .collect()
    }

    fn remember(&self, ids: impl IntoIterator<Item = String>) {
        let primary = self.primary_id();
        let mut known = self.replicas.lock().unwrap_or_else(PoisonError::into_inner);
        known.extend(ids.into_iter().filter(|id| *id != primary));
    }

    fn seen(&self, id: &str, at: SystemTime) {
        self.last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), at);
    }

    fn last_seen(&self, id: &str) -> Option<SystemTime> {
        self.last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
    }

    /// With Sentinels, at most every [`SENTINEL_CHECK`]: follows a failover before a
    /// write goes to a primary the Sentinels no longer name.
    pub(crate) async fn follow_if_due(&self) {
        if self.replication.sentinels.is_empty() {
            return;
        }
        {
            let mut asked = self.asked.lock().unwrap_or_else(PoisonError::into_inner);
            if asked.is_some_and(|at| at.elapsed() < SENTINEL_CHECK) {
                return;
            }
            *asked = Some(Instant::now());
        }
        self.follow_failover().await;
    }

    /// With Sentinels: asks them for the primary and, when it moved, switches every
    /// handle to it. Returns whether the primary changed.
    pub(crate) async fn follow_failover(&self) -> bool {
        if self.replication.sentinels.is_empty() {
            return false;
        }
        let _one_at_a_time = self.switching.lock().await;
        let Ok(current) =
            sentinel_primary(&self.replication.sentinels, master_name(&self.replication)).await
        else {
            return false;
        };
        let old = self.primary_id();
        if current == old {
            return false;
        }
        let Ok(mut store) = open_node::<T>(&self.graph, &current).await else {
            return false;
        };
        let previous = self.primary_store();
        // Hooks and in-process watchers registered on the old primary's store carry over.
        store.hub = Arc::clone(&previous.hub);
        tracing::warn!(from = %old, to = %current, "storage-graph: following a failover");
        *self.primary.write().unwrap_or_else(PoisonError::into_inner) = (current.clone(), store);
        {
            let mut known = self.replicas.lock().unwrap_or_else(PoisonError::into_inner);
            known.insert(old);
            known.remove(&current);
        }
        self.readers.lock().await.remove(&current);
        true
    }

    /// Turns a failed operation's error into what the caller sees: a connection
    /// failure with Sentinels configured makes the store look for a new primary, and
    /// the error is retryable.
    pub(crate) async fn check(&self, error: StorageError) -> StorageError {
        let lost = matches!(
            error.code(),
            ErrorCode::ConnectionLost | ErrorCode::ConnectionFailed | ErrorCode::Timeout
        ) || error.message().contains("readonly");
        if !lost || self.replication.sentinels.is_empty() {
            return error;
        }
        let moved = self.follow_failover().await;
        let message = if moved {
            format!("the primary failed over to {}; retry", self.primary_id())
        } else {
            format!("the primary is unreachable ({}); retry", error.message())
        };
        StorageError::new(ErrorCode::ConnectionLost, message)
            .with_backend(BACKEND)
            .set_retryable(true)
            .with_source(error)
    }

    /// The store to read from at `level`: a replica for ONE and LOCAL when one fits
    /// (opened on first use), the primary otherwise.
    pub(crate) async fn reader(
        &self,
        level: Option<ConsistencyLevel>,
    ) -> (Option<String>, GraphStorage<T>) {
        let target = match level {
            Some(ConsistencyLevel::Local) => {
                self.replication.local_datacenter.as_ref().and_then(|dc| {
                    let primary = self.primary_id();
                    if self.replication.datacenter_of(&primary).as_ref() == Some(dc) {
                        return None;
                    }
                    self.replica_ids()
                        .into_iter()
                        .find(|r| self.replication.datacenter_of(r).as_ref() == Some(dc))
                })
            }
            Some(ConsistencyLevel::One) => {
                let local = self.replication.local_datacenter.as_ref();
                let replicas = self.replica_ids();
                replicas
                    .iter()
                    .find(|r| {
                        local.is_some() && self.replication.datacenter_of(r).as_ref() == local
                    })
                    .or_else(|| replicas.first())
                    .cloned()
            }
            _ => None,
        };
        let Some(id) = target else {
            return (None, self.primary_store());
        };
        let mut readers = self.readers.lock().await;
        if let Some(store) = readers.get(&id) {
            return (Some(id), store.clone());
        }
        let opened =
            tokio::time::timeout(probe::PROBE_TIMEOUT * 2, open_node::<T>(&self.graph, &id)).await;
        match opened {
            Ok(Ok(mut store)) => {
                store.hub = Arc::clone(&self.primary_store().hub);
                readers.insert(id.clone(), store.clone());
                (Some(id), store)
            }
            _ => (None, self.primary_store()),
        }
    }

    /// Drops the cached store on a replica that failed a read, so the next read
    /// connects again (and falls back to the primary at once if it cannot).
    pub(crate) async fn forget_reader(&self, id: &str) {
        self.readers.lock().await.remove(id);
    }

    /// Waits until the write just made through the primary is acknowledged as `level`
    /// needs, within the configured time-out.
    ///
    /// A marker write on a connection of its own, then `WAIT`: replication is ordered,
    /// so a replica that acknowledged the marker holds every earlier write.
    pub(crate) async fn confirm(&self, level: Option<ConsistencyLevel>) -> Result<()> {
        let Some(level) = level else {
            return Ok(());
        };
        let replicas = self.replica_ids();
        let total = replicas.len() + 1;
        let needed = match level {
            ConsistencyLevel::One | ConsistencyLevel::Local => return Ok(()),
            ConsistencyLevel::Quorum => total / 2,
            ConsistencyLevel::All => total - 1,
            ConsistencyLevel::Each => return self.confirm_each().await,
        };
        if needed == 0 {
            return Ok(());
        }
        let timeout = self.replication.wait_timeout();
        let mut conn = self.marker_write(&self.primary_id(), "wait").await?;
        let acked: i64 = redis::cmd("WAIT")
            .arg(needed)
            .arg(millis(timeout))
            .query_async(&mut conn)
            .await
            .map_err(redis_err("wait"))?;
        let acked = usize::try_from(acked).unwrap_or(0);
        if acked >= needed {
            return Ok(());
        }
        // Replicas missing may mean this primary was demoted behind our back.
        self.follow_failover().await;
        Err(violation(level, needed + 1, acked + 1, total, timeout))
    }

    /// EACH: one node in every named data centre holds the write.
    /// Writes the marker key on the primary, on a connection of its own, so the
    /// primary's replication offset moves past every write made so far; returns that
    /// connection for the `WAIT` or offset reads that follow.
    async fn marker_write(
        &self,
        primary: &str,
        operation: &'static str,
    ) -> Result<redis::aio::MultiplexedConnection> {
        let mut conn = connect(primary, &self.graph, None).await?;
        let _: i64 = redis::cmd("INCR")
            .arg(marker_key(&self.graph.database))
            .query_async(&mut conn)
            .await
            .map_err(redis_err(operation))?;
        Ok(conn)
    }

    async fn confirm_each(&self) -> Result<()> {
        let timeout = self.replication.wait_timeout();
        let deadline = Instant::now() + timeout;
        let primary = self.primary_id();
        let replicas = self.replica_ids();
        let mut conn = self.marker_write(&primary, "wait").await?;
        let target = primary_offset(&mut conn).await?;
        let wanted = self.replication.named_datacenters();
        loop {
            let info = info_on(&mut conn, "wait").await?;
            let mut covered: BTreeSet<String> = self
                .replication
                .datacenter_of(&primary)
                .into_iter()
                .collect();
            for link in info.replicas.iter().filter(|l| l.offset >= target) {
                covered.extend(self.replication.datacenter_of(&link.id));
            }
            let achieved = wanted.iter().filter(|dc| covered.contains(*dc)).count();
            if achieved == wanted.len() {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StorageError::new(
                    ErrorCode::ConsistencyViolation,
                    format!(
                        "consistency EACH not reached within {timeout:?}: {achieved} of {} data \
                         centres acknowledged; the write is applied on the primary but not \
                         confirmed in every data centre",
                        wanted.len()
                    ),
                )
                .with_backend(BACKEND)
                .with_context("requested", wanted.len().to_string())
                .with_context("achieved", achieved.to_string()));
            }
            // WAIT asks every replica for an acknowledgement now instead of at its next
            // one-second report.
            let slice = left.min(Duration::from_millis(100));
            let _: i64 = redis::cmd("WAIT")
                .arg(replicas.len())
                .arg(millis(slice).max(1))
                .query_async(&mut conn)
                .await
                .map_err(redis_err("wait"))?;
        }
    }

    pub(crate) async fn nodes(&self) -> Result<Vec<Node>> {
        if !self.replication.sentinels.is_empty() {
            self.follow_failover().await;
        }
        let primary = self.primary_id();
        let max_lag = self.replication.max_lag();
        let first = replication_info(&primary, &self.graph).await;
        if let Ok(info) = &first {
            self.remember(info.replicas.iter().map(|r| r.id.clone()));
        }
        let replicas = self.replica_ids();
        let direct = futures::future::join_all(
            replicas
                .iter()
                .map(|id| async move { replication_info(id, &self.graph).await.ok() }),
        )
        .await;
        let now = SystemTime::now();
        let mut nodes = Vec::with_capacity(replicas.len() + 1);
        let Ok(mut info) = first else {
            nodes.push(self.node(&primary, NodeRole::Primary, NodeStatus::Offline));
            for (id, answer) in replicas.iter().zip(direct) {
                // Without the primary nothing says whether a replica is current.
                let status = if answer.is_some() {
                    self.seen(id, now);
                    NodeStatus::Degraded
                } else {
                    NodeStatus::Offline
                };
                nodes.push(self.node(id, NodeRole::Replica, status));
            }
            return Ok(nodes);
        };
        self.seen(&primary, now);
        nodes.push(self.node(&primary, NodeRole::Primary, NodeStatus::Healthy));
        // A replica that keeps up acknowledges the primary's current offset within its
        // next one-second report: look again until then before calling it behind.
        let target = info.offset;
        let deadline = Instant::now() + max_lag + Duration::from_millis(150);
        loop {
            let behind = info
                .replicas
                .iter()
                .any(|l| l.offset < target && Duration::from_secs(l.lag) <= max_lag);
            if !behind || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            match replication_info(&primary, &self.graph).await {
                Ok(again) => info = again,
                Err(_) => break,
            }
        }
        for (id, answer) in replicas.iter().zip(direct) {
            let link = info.link(id);
            if answer.is_some() {
                self.seen(id, now);
            } else if let Some(link) = link {
                self.seen(id, now - Duration::from_secs(link.lag));
            }
            let status = match (link, answer) {
                (Some(link), Some(_))
                    if link.offset >= target && Duration::from_secs(link.lag) <= max_lag =>
                {
                    NodeStatus::Healthy
                }
                (Some(_), _) | (None, Some(_)) => NodeStatus::Degraded,
                (None, None) => NodeStatus::Offline,
            };
            nodes.push(self.node(id, NodeRole::Replica, status));
        }
        Ok(nodes)
    }

    fn node(&self, id: &str, role: NodeRole, status: NodeStatus) -> Node {
        Node {
            id: id.to_owned(),
            address: id.to_owned(),
            role,
            status,
            last_seen: self.last_seen(id),
            datacenter: self.replication.datacenter_of(id),
        }
    }

    pub(crate) async fn status(&self) -> Result<ReplicationStatus> {
        let nodes = self.nodes().await?;
        let count = |s: NodeStatus| nodes.iter().filter(|n| n.status == s).count();
        Ok(ReplicationStatus {
            factor: nodes.len(),
            synced: count(NodeStatus::Healthy),
            lagging: count(NodeStatus::Degraded),
            offline: count(NodeStatus::Offline),
        })
    }

    pub(crate) async fn sync(&self, timeout: Duration) -> Result<SyncResult> {
        let deadline = Instant::now() + timeout;
        let primary = self.primary_id();
        let mut conn = self.marker_write(&primary, "sync").await?;
        let target = primary_offset(&mut conn).await?;
        let replicas = self.replica_ids();
        loop {
            let info = info_on(&mut conn, "sync").await?;
            self.remember(info.replicas.iter().map(|r| r.id.clone()));
            let synced = |id: &String| info.link(id).is_some_and(|l| l.offset >= target);
            let left = deadline.saturating_duration_since(Instant::now());
            // Replicas the primary does not list are unreachable: nothing to wait for.
            let reachable_synced = replicas
                .iter()
                .filter(|id| info.link(id).is_some())
                .all(synced);
            if reachable_synced || left.is_zero() {
                let (mut in_sync, not_in_sync): (Vec<String>, Vec<String>) =
                    replicas.iter().cloned().partition(synced);
                in_sync.insert(0, primary);
                return Ok(SyncResult {
                    in_sync,
                    not_in_sync,
                });
            }
            let slice = left.min(Duration::from_millis(100));
            let _: i64 = redis::cmd("WAIT")
                .arg(replicas.len())
                .arg(millis(slice).max(1))
                .query_async(&mut conn)
                .await
                .map_err(redis_err("sync"))?;
        }
    }
}

async fn primary_offset(conn: &mut redis::aio::MultiplexedConnection) -> Result<u64> {
    Ok(info_on(conn, "wait").await?.offset)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The error of a level not reached in time: the write stays applied on the primary.
fn violation(
    level: ConsistencyLevel,
    requested: usize,
    achieved: usize,
    total: usize,
    timeout: Duration,
) -> StorageError {
    StorageError::new(
        ErrorCode::ConsistencyViolation,
        format!(
            "consistency {level:?} not reached within {timeout:?}: {achieved} of {requested} \
             required nodes (of {total}) acknowledged; the write is applied on the primary \
             but not confirmed on enough replicas"
        ),
    )
    .with_backend(BACKEND)
    .with_context("requested", requested.to_string())
    .with_context("achieved", achieved.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_violation_names_the_counts_and_where_the_write_is() {
        let e = violation(ConsistencyLevel::All, 3, 2, 3, Duration::from_millis(500));
        assert_eq!(e.code(), ErrorCode::ConsistencyViolation);
        assert_eq!(e.context_value("requested"), Some("3"));
        assert_eq!(e.context_value("achieved"), Some("2"));
        assert!(e.message().contains("applied on the primary"), "{e}");
        assert!(!e.is_retryable());
    }

    #[test]
    fn the_marker_lives_beside_the_graph() {
        assert_eq!(marker_key("g"), "g::replication::marker");
    }
}
