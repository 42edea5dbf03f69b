//! Quick start: a typed store on the embedded default, no server.
//!
//! Run with `cargo run -p examples --example quickstart`.

use serde::{Deserialize, Serialize};
use storage_core::query::field;
use storage_core::{
    BatchStorage, Direction, MemoryStorage, Operation, Query, QueryableStorage, Storage,
    StorageError, TransactionOptions, TransactionalExt,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    age: u32,
    city: String,
}

fn user(name: &str, age: u32, city: &str) -> User {
    User {
        name: name.to_owned(),
        age,
        city: city.to_owned(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), StorageError> {
    let store = MemoryStorage::<User>::new();
    println!(
        "opened an in-memory store: {:?}",
        store.capabilities().tiers
    );

    store.set("user:1", &user("Alice", 31, "Paris")).await?;
    println!("set user:1");
    let alice = store.get("user:1").await?;
    println!("get user:1 -> {alice:?}");

    let result = store
        .batch(vec![
            Operation::set("user:2", user("Bob", 27, "Lyon")),
            Operation::set("user:3", user("Carol", 45, "Paris")),
        ])
        .await?;
    println!("batch applied {} operations atomically", result.operations);

    let query = Query::filter(field("city").eq("Paris")).order_by("age", Direction::Desc);
    for hit in store.find_many(&query).await? {
        println!(
            "query city == Paris, oldest first -> {} {:?}",
            hit.key, hit.value
        );
    }

    store
        .transaction(TransactionOptions::new().retries(3), |tx| async move {
            let mut bob = tx
                .get("user:2")
                .await?
                .unwrap_or_else(|| user("Bob", 0, "?"));
            bob.age += 1;
            tx.set("user:2", &bob).await?;
            Ok(())
        })
        .await?;
    println!(
        "transaction: Bob is now {:?}",
        store.get("user:2").await?.map(|u| u.age)
    );

    let existed = store.delete("user:3").await?;
    println!(
        "delete user:3 -> existed = {existed}; size = {}",
        store.size().await?
    );
    Ok(())
}
