//! Small helpers the checks share: snapshots, stream collection, the capability agreement.

use std::future::Future;
use std::time::Duration;

use futures::TryStreamExt;
use storage_core::{Capabilities, Storage, StorageValue, Tier};

use crate::check::{CheckResult, Context, Failure};

/// Every entry of a store, in the order `entries()` streams them.
///
/// # Errors
/// A [`Failure`] when the stream fails.
pub async fn snapshot<T: StorageValue>(
    store: &(impl Storage<T> + ?Sized),
) -> Result<Vec<(String, T)>, Failure> {
    store.entries().try_collect().await.ctx("entries()")
}

/// Every key, in the order `keys()` streams them.
///
/// # Errors
/// A [`Failure`] when the stream fails.
pub async fn all_keys<T: StorageValue>(
    store: &(impl Storage<T> + ?Sized),
) -> Result<Vec<String>, Failure> {
    store.keys().try_collect().await.ctx("keys()")
}

/// Every value, in the order `values()` streams them.
///
/// # Errors
/// A [`Failure`] when the stream fails.
pub async fn all_values<T: StorageValue>(
    store: &(impl Storage<T> + ?Sized),
) -> Result<Vec<T>, Failure> {
    store.values().try_collect().await.ctx("values()")
}

/// Runs `fut`, failing the check when it takes longer than `limit` (a hang is a failure, not a wait).
///
/// # Errors
/// A [`Failure`] naming `what` on time-out.
pub async fn within<F: Future>(
    limit: Duration,
    what: impl std::fmt::Display,
    fut: F,
) -> Result<F::Output, Failure> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Failure::new(format!("{what}: did not finish within {limit:?}")))
}

/// Checks that the declared capabilities and the `as_*` / `into_*` accessors agree, and that
/// `tier` (the suite's tier) is among them.
///
/// # Errors
/// A [`Failure`] naming the first disagreement.
pub fn capabilities_agree<T: StorageValue, S: Storage<T>>(store: S, tier: Tier) -> CheckResult {
    let caps = store.capabilities();
    agree_as(&store, &caps)?;
    ensure!(
        caps.supports(tier),
        "the store runs the {tier} suite but its capabilities list only {:?}",
        caps.tiers
    );
    ensure!(!caps.backend.is_empty(), "capabilities name no backend");
    for t in Tier::ALL {
        if caps.supports(t) {
            for lower in t.up_to() {
                ensure!(
                    caps.supports(lower),
                    "capabilities list {t} but not the lower tier {lower}"
                );
            }
        }
    }
    ensure_eq!(
        caps.max_key_len,
        storage_core::MAX_KEY_LEN,
        "max_key_len (every adapter accepts keys up to 1024 bytes)"
    );
    ensure_eq!(
        caps.supports(Tier::Transactional),
        !caps.isolation_levels.is_empty(),
        "a transactional store lists its isolation levels, others list none"
    );
    if !caps.supports(Tier::Indexed) {
        ensure!(
            caps.index_kinds.is_empty(),
            "a store without indexes lists index kinds"
        );
        ensure!(
            !caps.unique_indexes,
            "a store without indexes claims unique indexes"
        );
    }
    if !caps.supports(Tier::Transactional) {
        ensure!(
            !caps.savepoints,
            "a store without transactions claims savepoints"
        );
    }
    let shared = std::sync::Arc::new(store);
    agree_into(&shared, &caps)
}

fn agree_as<T: StorageValue, S: Storage<T>>(store: &S, caps: &Capabilities) -> CheckResult {
    let pairs = [
        (Tier::Batch, store.as_batch().is_some()),
        (Tier::Queryable, store.as_queryable().is_some()),
        (Tier::Indexed, store.as_indexed().is_some()),
        (Tier::Transactional, store.as_transactional().is_some()),
        (Tier::Observable, store.as_observable().is_some()),
        (Tier::Distributed, store.as_distributed().is_some()),
    ];
    for (tier, present) in pairs {
        ensure_eq!(
            present,
            caps.supports(tier),
            "as_{} agrees with capabilities().tiers",
            tier.to_string().trim_end_matches("Storage").to_lowercase()
        );
    }
    Ok(())
}

fn agree_into<T: StorageValue, S: Storage<T>>(
    store: &std::sync::Arc<S>,
    caps: &Capabilities,
) -> CheckResult {
    use std::sync::Arc;
    let pairs = [
        (
            Tier::Batch,
            Storage::into_batch(Arc::clone(store)).is_some(),
        ),
        (
            Tier::Queryable,
            Storage::into_queryable(Arc::clone(store)).is_some(),
        ),
        (
            Tier::Indexed,
            Storage::into_indexed(Arc::clone(store)).is_some(),
        ),
        (
            Tier::Transactional,
            Storage::into_transactional(Arc::clone(store)).is_some(),
        ),
        (
            Tier::Observable,
            Storage::into_observable(Arc::clone(store)).is_some(),
        ),
        (
            Tier::Distributed,
            Storage::into_distributed(Arc::clone(store)).is_some(),
        ),
    ];
    for (tier, present) in pairs {
        ensure_eq!(
            present,
            caps.supports(tier),
            "into_{} agrees with capabilities().tiers",
            tier.to_string().trim_end_matches("Storage").to_lowercase()
        );
    }
    Ok(())
}
