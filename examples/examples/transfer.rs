//! Seed 003, "Transaction Usage": atomic funds transfers on SQLite, run concurrently
//! from many tasks; the total balance is checked to be conserved.
//!
//! Each transfer reads both accounts and writes both inside one serializable
//! transaction. When two transfers overlap, SQLite lets one commit and the other fails
//! with a retryable `VersionConflict`; `TransactionalExt::transaction` then runs the
//! body again on fresh data. Run with `cargo run -p examples --example transfer`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use storage_core::{
    BatchStorage, ErrorCode, IsolationLevel, StorageError, TransactionOptions, TransactionalExt,
};
use storage_sqlite::{SqliteConfig, SqliteStorage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Account {
    owner: String,
    balance: i64,
}

const ACCOUNTS: u64 = 8;
const OPENING_BALANCE: i64 = 1_000;
const TASKS: u64 = 16;
const TRANSFERS_PER_TASK: u64 = 25;

fn account_key(i: u64) -> String {
    format!("account:{i}")
}

/// Moves `amount` from one account to another, or does nothing when the sender lacks
/// the funds. Returns whether money moved.
async fn transfer(
    store: &SqliteStorage<Account>,
    from: &str,
    to: &str,
    amount: i64,
    attempts: &AtomicU64,
) -> storage_core::Result<bool> {
    let options = TransactionOptions::new()
        .isolation(IsolationLevel::Serializable)
        .retries(1_000);
    store
        .transaction(options, |tx| async move {
            attempts.fetch_add(1, Ordering::Relaxed);
            let missing = |key: &str| {
                StorageError::new(ErrorCode::KeyNotFound, "no such account")
                    .with_context("key", key)
            };
            let mut sender = tx.get(from).await?.ok_or_else(|| missing(from))?;
            let mut receiver = tx.get(to).await?.ok_or_else(|| missing(to))?;
            if sender.balance < amount {
                return Ok(false);
            }
            sender.balance -= amount;
            receiver.balance += amount;
            tx.set(from, &sender).await?;
            tx.set(to, &receiver).await?;
            Ok(true)
        })
        .await
}

async fn total(store: &SqliteStorage<Account>) -> storage_core::Result<i64> {
    let keys: Vec<String> = (0..ACCOUNTS).map(account_key).collect();
    Ok(store
        .get_many(&keys)
        .await?
        .values()
        .map(|a| a.balance)
        .sum())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("accounts.db");
    let store = Arc::new(
        SqliteStorage::<Account>::open(
            SqliteConfig::new(path.to_string_lossy()).table_name("accounts"),
        )
        .await?,
    );
    let opening: Vec<(String, Account)> = (0..ACCOUNTS)
        .map(|i| {
            (
                account_key(i),
                Account {
                    owner: format!("owner {i}"),
                    balance: OPENING_BALANCE,
                },
            )
        })
        .collect();
    store.set_many(opening).await?;
    let before = total(&store).await?;
    println!(
        "{ACCOUNTS} accounts of {OPENING_BALANCE} each in {}: total {before}",
        path.display()
    );

    let attempts = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = Arc::clone(&store);
        let attempts = Arc::clone(&attempts);
        tasks.push(tokio::spawn(async move {
            let mut moved = 0u64;
            for n in 0..TRANSFERS_PER_TASK {
                // A fixed pattern, so every run does the same transfers.
                let from = (task * 7 + n * 3) % ACCOUNTS;
                let to = (from + 1 + (task + n) % (ACCOUNTS - 1)) % ACCOUNTS;
                let amount = i64::try_from(10 + (task * 13 + n * 17) % 190).unwrap_or(10);
                if transfer(
                    &store,
                    &account_key(from),
                    &account_key(to),
                    amount,
                    &attempts,
                )
                .await?
                {
                    moved += 1;
                }
            }
            Ok::<u64, StorageError>(moved)
        }));
    }
    let mut moved = 0;
    for task in tasks {
        moved += task.await??;
    }
    let requested = TASKS * TRANSFERS_PER_TASK;
    let attempts = attempts.load(Ordering::Relaxed);
    println!(
        "{TASKS} tasks ran {requested} transfers: {moved} moved money, {} found too little; \
         {attempts} attempts ({} re-run after a conflict)",
        requested - moved,
        attempts - requested
    );

    let after = total(&store).await?;
    for (key, account) in store
        .get_many(&(0..ACCOUNTS).map(account_key).collect::<Vec<_>>())
        .await?
    {
        println!("  {key}: {}", account.balance);
    }
    println!("total after: {after}");
    if after != before {
        return Err(format!("total balance changed from {before} to {after}").into());
    }
    println!("the total balance is conserved");
    Ok(())
}
