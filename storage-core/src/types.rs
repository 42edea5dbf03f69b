//! Plain data types the tiers exchange: batch operations, index definitions,
//! transaction options, change events and distribution status.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// A JSON document: the form the query evaluator and index builders work on.
pub type Document = serde_json::Value;

/// One operation of a [`crate::BatchStorage::batch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Operation<T> {
    /// Store `value` under `key`, overwriting.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: T,
    },
    /// Remove `key` if present.
    Delete {
        /// The key.
        key: String,
    },
    /// Remove every entry of the namespace.
    Clear,
}

impl<T> Operation<T> {
    /// A set operation.
    pub fn set(key: impl Into<String>, value: T) -> Self {
        Self::Set {
            key: key.into(),
            value,
        }
    }

    /// A delete operation.
    pub fn delete(key: impl Into<String>) -> Self {
        Self::Delete { key: key.into() }
    }

    /// The operation's key, if it has one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Set { key, .. } | Self::Delete { key } => Some(key),
            Self::Clear => None,
        }
    }
}

/// What an applied batch did. A batch that fails returns an error instead and applies nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    /// Operations applied.
    pub operations: usize,
    /// `Delete` operations whose key existed at that point of the batch.
    pub deleted: usize,
    /// Entries removed by `Clear` operations.
    pub cleared: usize,
}

/// One result of a query.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult<T> {
    /// The entry's key.
    pub key: String,
    /// The entry's full value.
    pub value: T,
    /// Relevance score, when the query has a full-text clause.
    pub score: Option<f64>,
    /// With `select`: the selected field paths that exist in the value, keyed by path.
    pub projection: Option<BTreeMap<String, Document>>,
}

/// Kinds of index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexKind {
    /// Ordered index: equality and ranges.
    #[serde(alias = "b_tree")]
    Btree,
    /// Equality index.
    Hash,
    /// Word index with relevance scores.
    #[serde(alias = "full_text")]
    Fulltext,
    /// Points inside a box.
    Spatial,
}

impl fmt::Display for IndexKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Btree => "btree",
            Self::Hash => "hash",
            Self::Fulltext => "fulltext",
            Self::Spatial => "spatial",
        })
    }
}

/// Sort direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Ascending.
    #[default]
    Asc,
    /// Descending.
    Desc,
}

/// One field of an index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IndexField {
    /// Dotted field path.
    pub path: String,
    /// Index kind.
    #[serde(default = "default_kind")]
    pub kind: IndexKind,
    /// Direction (ordered kinds only).
    #[serde(default)]
    pub direction: Direction,
}

fn default_kind() -> IndexKind {
    IndexKind::Btree
}

impl IndexField {
    /// A field of the given kind, ascending.
    pub fn new(path: impl Into<String>, kind: IndexKind) -> Self {
        Self {
            path: path.into(),
            kind,
            direction: Direction::Asc,
        }
    }
}

/// An index definition, as passed to [`crate::IndexedStorage::create_index`].
///
/// # Example
/// ```
/// use storage_core::{IndexDefinition, IndexKind};
/// let by_email = IndexDefinition::new("by_email", "email", IndexKind::Hash).unique();
/// assert!(by_email.unique);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IndexDefinition {
    /// The index's name, unique within a store.
    pub name: String,
    /// Indexed fields (most adapters support one).
    pub fields: Vec<IndexField>,
    /// Reject writes that would give two entries the same indexed value.
    #[serde(default)]
    pub unique: bool,
    /// Skip entries where the field is missing.
    #[serde(default)]
    pub sparse: bool,
}

impl IndexDefinition {
    /// A single-field index.
    pub fn new(name: impl Into<String>, path: impl Into<String>, kind: IndexKind) -> Self {
        Self {
            name: name.into(),
            fields: vec![IndexField::new(path, kind)],
            unique: false,
            sparse: false,
        }
    }

    /// Marks the index unique.
    #[must_use]
    pub fn unique(mut self) -> Self {
        self.unique = true;
        self
    }

    /// Marks the index sparse.
    #[must_use]
    pub fn sparse(mut self) -> Self {
        self.sparse = true;
        self
    }
}

/// Counters of one index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexStats {
    /// Approximate size in bytes, when the backend can say.
    pub size_bytes: Option<u64>,
    /// Indexed entries.
    pub entries: u64,
    /// Index lookups that found at least one entry.
    pub hits: u64,
    /// Index lookups that found nothing.
    pub misses: u64,
}

/// An index as listed by [`crate::IndexedStorage::list_indexes`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexInfo {
    /// The definition as created.
    pub definition: IndexDefinition,
    /// What the backend actually built, when it differs from the requested kind
    /// (for example `"btree"` for a hash index on SQLite).
    pub backend_kind: Option<String>,
    /// Counters.
    pub stats: IndexStats,
}

/// How a query runs, as reported by [`crate::IndexedStorage::explain`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutionPlan {
    /// The index the query uses, if any.
    pub index: Option<String>,
    /// Whether the query scans every entry of the namespace.
    pub full_scan: bool,
    /// Parts of the query the backend runs (for example translated to SQL).
    pub pushed_down: Vec<String>,
    /// Parts evaluated in process by the reference evaluator.
    pub in_process: Vec<String>,
    /// Backend plan lines (`EXPLAIN QUERY PLAN`, `GRAPH.EXPLAIN`, …).
    pub backend_plan: Vec<String>,
}

impl ExecutionPlan {
    /// Whether an index is used.
    pub fn uses_index(&self) -> bool {
        self.index.is_some()
    }
}

/// Transaction isolation levels, weakest first. The order is the order of
/// guarantees: a store may run a transaction at a stronger level than asked.
///
/// Anomalies forbidden (Hermitage names): `ReadUncommitted` — G0;
/// `ReadCommitted` — also G1a, G1b, G1c; `RepeatableRead` — also OTV, P4 (lost
/// update), G-single (read skew); `Snapshot` — also PMP (predicate-many-preceders);
/// `Serializable` — also G2-item (write skew).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IsolationLevel {
    /// May see uncommitted writes of others.
    ReadUncommitted,
    /// Sees only committed data.
    ReadCommitted,
    /// Rereads of an item give the same answer.
    RepeatableRead,
    /// Reads from one snapshot; concurrent writers of the same item conflict.
    Snapshot,
    /// Equivalent to some serial order.
    Serializable,
}

impl fmt::Display for IsolationLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ReadUncommitted => "READ_UNCOMMITTED",
            Self::ReadCommitted => "READ_COMMITTED",
            Self::RepeatableRead => "REPEATABLE_READ",
            Self::Snapshot => "SNAPSHOT",
            Self::Serializable => "SERIALIZABLE",
        })
    }
}

/// Options of a transaction.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use storage_core::{IsolationLevel, TransactionOptions};
/// let opts = TransactionOptions::new()
///     .isolation(IsolationLevel::Serializable)
///     .timeout(Duration::from_secs(2))
///     .retries(5);
/// assert_eq!(opts.retries, 5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransactionOptions {
    /// The weakest isolation level acceptable.
    pub isolation: IsolationLevel,
    /// Abort with `TransactionAborted` when the transaction lives longer than this.
    #[serde(with = "opt_millis")]
    pub timeout: Option<Duration>,
    /// Reject writes.
    pub read_only: bool,
    /// How many times [`crate::TransactionalExt::transaction`] re-runs the body on a retryable error.
    pub retries: u32,
}

impl Default for TransactionOptions {
    fn default() -> Self {
        Self {
            isolation: IsolationLevel::ReadCommitted,
            timeout: None,
            read_only: false,
            retries: 0,
        }
    }
}

impl TransactionOptions {
    /// Default options: read committed, no time-out, read-write, no retries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the isolation level.
    #[must_use]
    pub fn isolation(mut self, level: IsolationLevel) -> Self {
        self.isolation = level;
        self
    }

    /// Sets the time-out.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Makes the transaction read-only.
    #[must_use]
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Sets the number of retries.
    #[must_use]
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }
}

mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)]
    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// The state of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionState {
    /// Open.
    Active,
    /// Committed.
    Committed,
    /// Rolled back or aborted.
    Aborted,
}

/// The kind of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A key was set (created or overwritten).
    Set,
    /// A key was deleted (directly or by a clear).
    Delete,
}

/// One committed change.
#[derive(Debug)]
pub struct Change<T> {
    /// Set or delete.
    pub kind: ChangeKind,
    /// The key.
    pub key: String,
    /// The value before, when the store knows it.
    pub old_value: Option<Arc<T>>,
    /// The value after (sets only).
    pub new_value: Option<Arc<T>>,
    /// When the change was committed.
    pub timestamp: SystemTime,
}

impl<T> Clone for Change<T> {
    fn clone(&self) -> Self {
        Self {
            kind: self.kind,
            key: self.key.clone(),
            old_value: self.old_value.clone(),
            new_value: self.new_value.clone(),
            timestamp: self.timestamp,
        }
    }
}

/// The changes of one commit (one write, one batch, one transaction), in order.
#[derive(Debug)]
pub struct ChangeBatch<T> {
    /// The commit's position in the store's commit order (strictly increasing).
    pub sequence: u64,
    /// A resume token for cross-process watchers (a stream id, a change-log row), if any.
    pub resume_token: Option<String>,
    /// The changes, in the order they were applied.
    pub changes: Vec<Change<T>>,
}

impl<T> Clone for ChangeBatch<T> {
    fn clone(&self) -> Self {
        Self {
            sequence: self.sequence,
            resume_token: self.resume_token.clone(),
            changes: self.changes.clone(),
        }
    }
}

/// What a subscription yields.
#[derive(Debug)]
pub enum WatchEvent<T> {
    /// A committed batch of changes (only those matching the watch pattern).
    Changes(ChangeBatch<T>),
    /// The subscriber fell behind and `missed` batches were dropped for it.
    Lagged {
        /// Dropped batches.
        missed: u64,
    },
    /// The store lost track of changes (for example across a failover);
    /// the subscriber should re-read what it cares about.
    Resync {
        /// Why.
        reason: String,
    },
}

impl<T> Clone for WatchEvent<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Changes(b) => Self::Changes(b.clone()),
            Self::Lagged { missed } => Self::Lagged { missed: *missed },
            Self::Resync { reason } => Self::Resync {
                reason: reason.clone(),
            },
        }
    }
}

/// A role in a replicated deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// Accepts writes.
    Primary,
    /// Follows the primary.
    Replica,
}

/// Health of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Reachable and caught up.
    Healthy,
    /// Reachable but lagging or otherwise impaired.
    Degraded,
    /// Unreachable.
    Offline,
}

/// One node of a distributed store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Stable identifier.
    pub id: String,
    /// Network address.
    pub address: String,
    /// Role.
    pub role: NodeRole,
    /// Health.
    pub status: NodeStatus,
    /// When the node last answered, if ever.
    pub last_seen: Option<SystemTime>,
    /// Data-centre tag from the configuration.
    pub datacenter: Option<String>,
}

/// Replication summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationStatus {
    /// Nodes holding the data (primary included).
    pub factor: usize,
    /// Nodes caught up.
    pub synced: usize,
    /// Reachable nodes behind the primary.
    pub lagging: usize,
    /// Unreachable nodes.
    pub offline: usize,
}

/// Outcome of [`crate::DistributedStorage::sync`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncResult {
    /// Ids of nodes that acknowledged the primary's offset in time.
    pub in_sync: Vec<String>,
    /// Ids of nodes that did not.
    pub not_in_sync: Vec<String>,
}

/// Consistency levels of [`crate::DistributedStorage::with_consistency`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConsistencyLevel {
    /// At least one node.
    One,
    /// A majority of all nodes.
    Quorum,
    /// Every node.
    All,
    /// The local node only.
    Local,
    /// At least one node in each data centre.
    Each,
}
