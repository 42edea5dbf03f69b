//! Capabilities as data: what a store supports, readable at run time.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::{IndexKind, IsolationLevel};

/// One capability tier, from the lowest to the highest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// [`crate::Storage`]: get, set, delete, iteration.
    Storage,
    /// [`crate::BatchStorage`]: many keys at once, atomically.
    Batch,
    /// [`crate::QueryableStorage`]: queries and aggregates.
    Queryable,
    /// [`crate::IndexedStorage`]: indexes and query plans.
    Indexed,
    /// [`crate::TransactionalStorage`]: transactions and savepoints.
    Transactional,
    /// [`crate::ObservableStorage`]: hooks, change events, watches.
    Observable,
    /// [`crate::DistributedStorage`]: nodes, replication, consistency levels.
    Distributed,
}

impl Tier {
    /// Every tier, lowest first.
    pub const ALL: [Tier; 7] = [
        Tier::Storage,
        Tier::Batch,
        Tier::Queryable,
        Tier::Indexed,
        Tier::Transactional,
        Tier::Observable,
        Tier::Distributed,
    ];

    /// The trait's name (`QueryableStorage`, …).
    pub const fn trait_name(self) -> &'static str {
        match self {
            Tier::Storage => "Storage",
            Tier::Batch => "BatchStorage",
            Tier::Queryable => "QueryableStorage",
            Tier::Indexed => "IndexedStorage",
            Tier::Transactional => "TransactionalStorage",
            Tier::Observable => "ObservableStorage",
            Tier::Distributed => "DistributedStorage",
        }
    }

    /// Every tier up to and including this one.
    pub fn up_to(self) -> Vec<Tier> {
        Tier::ALL.into_iter().filter(|t| *t <= self).collect()
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.trait_name())
    }
}

/// What a store supports. Every adapter returns one from
/// [`crate::Storage::capabilities`]; the conformance suite checks that it agrees
/// with the tier accessors (`as_batch()`, `as_queryable()`, …).
///
/// # Example
/// ```
/// use storage_core::{Capabilities, Tier};
/// let caps = Capabilities::new("example", Tier::Batch);
/// assert!(caps.supports(Tier::Storage));
/// assert!(caps.supports(Tier::Batch));
/// assert!(!caps.supports(Tier::Queryable));
/// ```
// A flat record of flags is the point: callers read them by name, and the
// conformance suite compares them with the accessors one by one.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// The backend's name (`memory`, `json`, `sqlite`, `graph`).
    pub backend: String,
    /// The tiers the store implements, lowest first.
    pub tiers: Vec<Tier>,
    /// Isolation levels a transaction can request and get (at least) — empty without transactions.
    pub isolation_levels: Vec<IsolationLevel>,
    /// Index kinds the store builds — empty without indexes.
    pub index_kinds: Vec<IndexKind>,
    /// Whether unique indexes are enforced.
    pub unique_indexes: bool,
    /// Whether transactions support savepoints.
    pub savepoints: bool,
    /// Whether a watcher sees changes made through another handle or process.
    pub cross_process_watch: bool,
    /// Whether acknowledged data survives closing and reopening.
    pub persistent: bool,
    /// Whether `batch`, `set_many` and `delete_many` are all-or-nothing.
    pub atomic_batch: bool,
    /// The largest number of operations one batch may hold, if limited.
    pub max_batch_operations: Option<usize>,
    /// The longest key in bytes.
    pub max_key_len: usize,
    /// The largest encoded value in bytes, if limited.
    pub max_value_len: Option<usize>,
}

impl Capabilities {
    /// Capabilities with every tier up to `highest`, atomic batches, and nothing else.
    pub fn new(backend: impl Into<String>, highest: Tier) -> Self {
        Self {
            backend: backend.into(),
            tiers: highest.up_to(),
            isolation_levels: Vec::new(),
            index_kinds: Vec::new(),
            unique_indexes: false,
            savepoints: false,
            cross_process_watch: false,
            persistent: false,
            atomic_batch: true,
            max_batch_operations: None,
            max_key_len: crate::MAX_KEY_LEN,
            max_value_len: None,
        }
    }

    /// Whether the store implements `tier`.
    pub fn supports(&self, tier: Tier) -> bool {
        self.tiers.contains(&tier)
    }

    /// Whether a transaction can be started at `level` (some supported level is at least as strong).
    pub fn supports_isolation(&self, level: IsolationLevel) -> bool {
        self.isolation_levels.iter().any(|l| *l >= level)
    }

    /// Whether the store builds indexes of `kind`.
    pub fn supports_index(&self, kind: IndexKind) -> bool {
        self.index_kinds.contains(&kind)
    }

    /// The highest tier supported.
    pub fn highest_tier(&self) -> Tier {
        self.tiers.iter().copied().max().unwrap_or(Tier::Storage)
    }

    /// Sets the isolation levels.
    #[must_use]
    pub fn with_isolation_levels(
        mut self,
        levels: impl IntoIterator<Item = IsolationLevel>,
    ) -> Self {
        self.isolation_levels = levels.into_iter().collect();
        self
    }

    /// Sets the index kinds.
    #[must_use]
    pub fn with_index_kinds(mut self, kinds: impl IntoIterator<Item = IndexKind>) -> Self {
        self.index_kinds = kinds.into_iter().collect();
        self
    }

    /// Sets whether unique indexes are enforced.
    #[must_use]
    pub fn with_unique_indexes(mut self, yes: bool) -> Self {
        self.unique_indexes = yes;
        self
    }

    /// Sets savepoint support.
    #[must_use]
    pub fn with_savepoints(mut self, yes: bool) -> Self {
        self.savepoints = yes;
        self
    }

    /// Sets cross-process watch support.
    #[must_use]
    pub fn with_cross_process_watch(mut self, yes: bool) -> Self {
        self.cross_process_watch = yes;
        self
    }

    /// Sets persistence.
    #[must_use]
    pub fn with_persistent(mut self, yes: bool) -> Self {
        self.persistent = yes;
        self
    }

    /// Sets the largest batch.
    #[must_use]
    pub fn with_max_batch_operations(mut self, max: Option<usize>) -> Self {
        self.max_batch_operations = max;
        self
    }

    /// Sets the largest encoded value.
    #[must_use]
    pub fn with_max_value_len(mut self, max: Option<usize>) -> Self {
        self.max_value_len = max;
        self
    }
}
