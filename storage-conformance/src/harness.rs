//! The harness an adapter writes once: how to open an isolated store.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use storage_core::{
    BatchStorage, IndexedStorage, MemoryStorage, ObservableStorage, QueryableStorage, Result,
    Storage, StorageValue, TransactionalStorage,
};

use crate::check::{Context, Failure};
use crate::values::{Doc, Reading};

/// How the suites open stores of value type `T` on an adapter.
///
/// Implement it once, generically over `T` (this is [`MemoryHarness`] with the optional hooks
/// spelled out):
///
/// ```
/// use storage_conformance::Harness;
/// use storage_core::{MemoryStorage, Result, StorageValue};
///
/// struct MyHarness;
///
/// impl<T: StorageValue> Harness<T> for MyHarness {
///     type Store = MemoryStorage<T>;
///
///     async fn open(&self, _namespace: &str) -> Result<MemoryStorage<T>> {
///         // A real adapter maps the namespace to a file, a table or a graph name.
///         Ok(MemoryStorage::new())
///     }
///
///     fn expects_index_use(&self) -> bool {
///         true
///     }
/// }
/// ```
///
/// Every generated test builds a fresh harness from the macro's expression and drops it
/// at the end, so the harness owns the clean-up (a temp dir, graphs it created).
/// Within a test the suite asks for namespaces by name: a fresh name gives an empty,
/// isolated store; the same name again gives another handle on the same data when the
/// store is persistent or watches across processes.
pub trait Harness<T: StorageValue>: Send + Sync + 'static {
    /// The store type.
    type Store: Storage<T> + 'static;

    /// Opens a handle on `namespace` (ASCII letters, digits and `_`, at most 40 bytes).
    ///
    /// # Behavior
    /// - a namespace the test has not used yet is empty;
    /// - stores of different namespaces never see each other's entries;
    /// - for persistent stores, opening a namespace after its handles were closed gives
    ///   back the acknowledged data; with `cross_process_watch`, two open handles on one
    ///   namespace see each other's changes.
    fn open(&self, namespace: &str) -> impl Future<Output = Result<Self::Store>> + Send;

    /// Closes a handle; the default drops it. Persistent adapters that flush on close do it here.
    fn close(&self, store: Self::Store) -> impl Future<Output = Result<()>> + Send {
        drop(store);
        async { Ok(()) }
    }

    /// Plants corrupt stored bytes for `key` in `namespace` while no handle is open.
    ///
    /// Returns `Ok(false)` when the adapter cannot (the default); the corruption checks
    /// then verify nothing beyond that.
    fn corrupt(&self, namespace: &str, key: &str) -> impl Future<Output = Result<bool>> + Send {
        let _ = (namespace, key);
        async { Ok(false) }
    }

    /// Whether `explain` should report an index for an equality query on a field with an
    /// index of a kind the store declares (true by default).
    fn expects_index_use(&self) -> bool {
        true
    }
}

/// A harness whose stores cover the storage tier for every value type the suites use.
pub trait StorageHarness: Harness<Value> + Harness<Doc> + Harness<Reading> {}
impl<H: Harness<Value> + Harness<Doc> + Harness<Reading>> StorageHarness for H {}

/// A harness whose stores are [`BatchStorage`].
pub trait BatchHarness:
    StorageHarness
    + Harness<Value, Store: BatchStorage<Value>>
    + Harness<Reading, Store: BatchStorage<Reading>>
{
}
impl<H> BatchHarness for H
where
    H: StorageHarness,
    <H as Harness<Value>>::Store: BatchStorage<Value>,
    <H as Harness<Reading>>::Store: BatchStorage<Reading>,
{
}

/// A harness whose stores are [`QueryableStorage`].
pub trait QueryableHarness: BatchHarness + Harness<Value, Store: QueryableStorage<Value>> {}
impl<H> QueryableHarness for H
where
    H: BatchHarness,
    <H as Harness<Value>>::Store: QueryableStorage<Value>,
{
}

/// A harness whose stores are [`IndexedStorage`].
pub trait IndexedHarness: QueryableHarness + Harness<Value, Store: IndexedStorage<Value>> {}
impl<H> IndexedHarness for H
where
    H: QueryableHarness,
    <H as Harness<Value>>::Store: IndexedStorage<Value>,
{
}

/// A harness whose stores are [`TransactionalStorage`].
pub trait TransactionalHarness:
    IndexedHarness + Harness<Value, Store: TransactionalStorage<Value>>
{
}
impl<H> TransactionalHarness for H
where
    H: IndexedHarness,
    <H as Harness<Value>>::Store: TransactionalStorage<Value>,
{
}

/// A harness whose stores are [`ObservableStorage`].
pub trait ObservableHarness:
    TransactionalHarness + Harness<Value, Store: ObservableStorage<Value>>
{
}
impl<H> ObservableHarness for H
where
    H: TransactionalHarness,
    <H as Harness<Value>>::Store: ObservableStorage<Value>,
{
}

/// A namespace name no other test (in this or another process) uses.
pub fn fresh_namespace() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("cf_{}_{n}_{nanos:x}", std::process::id())
}

/// Opens a fresh namespace of value type `T`, returning its name and the store.
///
/// # Errors
/// A [`Failure`] when the harness cannot open it.
pub async fn open<T: StorageValue, H: Harness<T>>(
    harness: &H,
) -> Result<(String, H::Store), Failure> {
    let ns = fresh_namespace();
    let store = harness
        .open(&ns)
        .await
        .ctx(format_args!("harness could not open namespace {ns}"))?;
    Ok((ns, store))
}

/// The harness of the in-memory reference store: every namespace is a new `MemoryStorage`.
///
/// `MemoryStorage` is neither persistent nor watchable across handles, so the suites never
/// open one namespace twice on it.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryHarness;

impl MemoryHarness {
    /// A harness.
    pub fn new() -> Self {
        Self
    }
}

impl<T: StorageValue> Harness<T> for MemoryHarness {
    type Store = MemoryStorage<T>;

    async fn open(&self, _namespace: &str) -> Result<MemoryStorage<T>> {
        Ok(MemoryStorage::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_namespaces_are_distinct_and_short() {
        let a = fresh_namespace();
        let b = fresh_namespace();
        assert_ne!(a, b);
        assert!(a.len() <= 40, "{a}");
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
    }
}
