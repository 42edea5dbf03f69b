//! Generic helpers that would break object safety, in sealed extension traits
//! with blanket impls: every store, and every `dyn` tier, has them.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::capabilities::Tier;
use crate::codec::{from_document, to_document};
use crate::error::{ErrorCode, Result, StorageError};
use crate::tiers::{
    BatchStorage, DistributedStorage, IndexedStorage, ObservableStorage, QueryableStorage, Storage,
    StorageValue, Transaction, TransactionalStorage,
};
use crate::types::TransactionOptions;

mod sealed {
    pub trait Sealed<T> {}
    impl<T, S: ?Sized> Sealed<T> for S {}
}

fn missing_tier(tier: Tier, backend: &str) -> StorageError {
    StorageError::new(
        ErrorCode::Unsupported,
        format!("backend '{backend}' does not implement {tier}"),
    )
    .with_backend(backend.to_owned())
    .with_context("tier", tier)
}

/// Helpers on every [`Storage`], including `dyn Storage<T>`.
///
/// # Example
/// ```
/// use std::sync::Arc;
/// use storage_core::{ErrorCode, MemoryStorage, Storage, StorageExt};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store: Arc<dyn Storage<u32>> = Arc::new(MemoryStorage::<u32>::new());
/// // Ask for a higher tier at run time: it is there, or a typed error says which is missing.
/// let queryable = store.require_queryable()?;
/// assert_eq!(queryable.size().await?, 0);
/// assert_eq!(store.get_required("nope").await.unwrap_err().code(), ErrorCode::KeyNotFound);
/// # Ok::<(), storage_core::StorageError>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait StorageExt<T: StorageValue>: Storage<T> + sealed::Sealed<T> {
    /// The value under `key`, or `KeyNotFound`.
    ///
    /// # Errors
    /// `KeyNotFound`, and the errors of [`Storage::get`].
    async fn get_required(&self, key: &str) -> Result<T> {
        self.get(key).await?.ok_or_else(|| {
            StorageError::new(ErrorCode::KeyNotFound, "key not found")
                .with_operation("get")
                .with_backend(self.capabilities().backend)
                .with_context("key", key)
        })
    }

    /// The value under `key`, read as another type `U` through its JSON document form.
    ///
    /// # Errors
    /// `SerializationFailed` when the value does not fit `U`; the errors of [`Storage::get`].
    async fn get_as<U: DeserializeOwned + Send + 'static>(&self, key: &str) -> Result<Option<U>> {
        match self.get(key).await? {
            Some(value) => Ok(Some(from_document(to_document(&value)?)?)),
            None => Ok(None),
        }
    }

    /// This store as a [`BatchStorage`], or `Unsupported` naming the tier and backend.
    ///
    /// # Errors
    /// `Unsupported`.
    fn require_batch(&self) -> Result<&dyn BatchStorage<T>> {
        self.as_batch()
            .ok_or_else(|| missing_tier(Tier::Batch, &self.capabilities().backend))
    }

    /// This store as a [`QueryableStorage`], or `Unsupported`.
    ///
    /// # Errors
    /// `Unsupported`.
    fn require_queryable(&self) -> Result<&dyn QueryableStorage<T>> {
        self.as_queryable()
            .ok_or_else(|| missing_tier(Tier::Queryable, &self.capabilities().backend))
    }

    /// This store as an [`IndexedStorage`], or `Unsupported`.
    ///
    /// # Errors
    /// `Unsupported`.
    fn require_indexed(&self) -> Result<&dyn IndexedStorage<T>> {
        self.as_indexed()
            .ok_or_else(|| missing_tier(Tier::Indexed, &self.capabilities().backend))
    }

    /// This store as a [`TransactionalStorage`], or `Unsupported`.
    ///
    /// # Errors
    /// `Unsupported`.
    fn require_transactional(&self) -> Result<&dyn TransactionalStorage<T>> {
        self.as_transactional()
            .ok_or_else(|| missing_tier(Tier::Transactional, &self.capabilities().backend))
    }

    /// This store as an [`ObservableStorage`], or `Unsupported`.
    ///
    /// # Errors
    /// `Unsupported`.
    fn require_observable(&self) -> Result<&dyn ObservableStorage<T>> {
        self.as_observable()
            .ok_or_else(|| missing_tier(Tier::Observable, &self.capabilities().backend))
    }

    /// This store as a [`DistributedStorage`], or `Unsupported`.
    ///
    /// # Errors
    /// `Unsupported`.
    fn require_distributed(&self) -> Result<&dyn DistributedStorage<T>> {
        self.as_distributed()
            .ok_or_else(|| missing_tier(Tier::Distributed, &self.capabilities().backend))
    }
}

impl<T: StorageValue, S: Storage<T> + ?Sized> StorageExt<T> for S {}

/// Converting a shared `Arc<dyn Storage<T>>` into a shared higher tier.
///
/// # Example
/// ```
/// use std::sync::Arc;
/// use storage_core::{ArcStorageExt, MemoryStorage, Storage};
///
/// let store: Arc<dyn Storage<String>> = Arc::new(MemoryStorage::<String>::new());
/// let tx_store = store.into_transactional_or_err()?;
/// assert!(tx_store.capabilities().savepoints);
/// # Ok::<(), storage_core::StorageError>(())
/// ```
pub trait ArcStorageExt<T: StorageValue>: sealed::Sealed<T> {
    /// The shared store as a shared [`BatchStorage`], or `Unsupported`.
    ///
    /// # Errors
    /// `Unsupported`.
    fn into_batch_or_err(self) -> Result<Arc<dyn BatchStorage<T>>>;
    /// The shared store as a shared [`QueryableStorage`], or `Unsupported`.
    ///
    /// # Errors
    /// `Unsupported`.
    fn into_queryable_or_err(self) -> Result<Arc<dyn QueryableStorage<T>>>;
    /// The shared store as a shared [`IndexedStorage`], or `Unsupported`.
    ///
    /// # Errors
    /// `Unsupported`.
    fn into_indexed_or_err(self) -> Result<Arc<dyn IndexedStorage<T>>>;
    /// The shared store as a shared [`TransactionalStorage`], or `Unsupported`.
    ///
    /// # Errors
    /// `Unsupported`.
    fn into_transactional_or_err(self) -> Result<Arc<dyn TransactionalStorage<T>>>;
    /// The shared store as a shared [`ObservableStorage`], or `Unsupported`.
    ///
    /// # Errors
    /// `Unsupported`.
    fn into_observable_or_err(self) -> Result<Arc<dyn ObservableStorage<T>>>;
    /// The shared store as a shared [`DistributedStorage`], or `Unsupported`.
    ///
    /// # Errors
    /// `Unsupported`.
    fn into_distributed_or_err(self) -> Result<Arc<dyn DistributedStorage<T>>>;
}

macro_rules! arc_into {
    ($name:ident, $into:ident, $tier:expr, $tr:ident) => {
        fn $name(self) -> Result<Arc<dyn $tr<T>>> {
            let backend = self.capabilities().backend;
            self.$into().ok_or_else(|| missing_tier($tier, &backend))
        }
    };
}

impl<T: StorageValue, S: Storage<T> + ?Sized> ArcStorageExt<T> for Arc<S> {
    arc_into!(into_batch_or_err, into_batch, Tier::Batch, BatchStorage);
    arc_into!(
        into_queryable_or_err,
        into_queryable,
        Tier::Queryable,
        QueryableStorage
    );
    arc_into!(
        into_indexed_or_err,
        into_indexed,
        Tier::Indexed,
        IndexedStorage
    );
    arc_into!(
        into_transactional_or_err,
        into_transactional,
        Tier::Transactional,
        TransactionalStorage
    );
    arc_into!(
        into_observable_or_err,
        into_observable,
        Tier::Observable,
        ObservableStorage
    );
    arc_into!(
        into_distributed_or_err,
        into_distributed,
        Tier::Distributed,
        DistributedStorage
    );
}

/// The closure-taking transaction helper, on every [`TransactionalStorage`].
///
/// # Example
/// ```
/// use storage_core::{MemoryStorage, Storage, TransactionOptions, TransactionalExt};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryStorage::<i64>::new();
/// store.set("a", &100).await?;
/// store.set("b", &0).await?;
/// store
///     .transaction(TransactionOptions::new().retries(3), |tx| async move {
///         let a = tx.get("a").await?.unwrap_or(0);
///         let b = tx.get("b").await?.unwrap_or(0);
///         tx.set("a", &(a - 40)).await?;
///         tx.set("b", &(b + 40)).await?;
///         Ok(())
///     })
///     .await?;
/// assert_eq!(store.get("b").await?, Some(40));
/// # Ok::<(), storage_core::StorageError>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait TransactionalExt<T: StorageValue>: TransactionalStorage<T> + sealed::Sealed<T> {
    /// Runs `body` in a transaction and commits it.
    ///
    /// # Behavior
    /// - if the body or the commit fails with a retryable error (`VersionConflict`,
    ///   `DeadlockDetected`, …), the transaction is rolled back and the body runs again,
    ///   at most `options.retries` more times;
    /// - any other error rolls back and is returned; nothing of that attempt is applied.
    ///
    /// # Errors
    /// The last attempt's error.
    async fn transaction<R, F, Fut>(&self, options: TransactionOptions, mut body: F) -> Result<R>
    where
        R: Send,
        F: FnMut(Arc<dyn Transaction<T>>) -> Fut + Send,
        Fut: Future<Output = Result<R>> + Send,
    {
        let mut attempt = 0u32;
        loop {
            let tx: Arc<dyn Transaction<T>> = Arc::from(self.begin(options).await?);
            let outcome = match body(Arc::clone(&tx)).await {
                Ok(value) => tx.commit().await.map(|()| value),
                Err(err) => Err(err),
            };
            match outcome {
                Ok(value) => return Ok(value),
                Err(err) => {
                    if tx.state() == crate::TransactionState::Active {
                        // The body's error is the one worth returning; a failed rollback
                        // only means the transaction is already gone.
                        let _ = tx.rollback().await;
                    }
                    if err.is_retryable() && attempt < options.retries {
                        attempt += 1;
                        continue;
                    }
                    return Err(err.with_context("attempts", attempt + 1));
                }
            }
        }
    }
}

impl<T: StorageValue, S: TransactionalStorage<T> + ?Sized> TransactionalExt<T> for S {}
