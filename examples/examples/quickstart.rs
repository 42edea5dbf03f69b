//! Quick start: a typed store on the embedded default — one JSON file, no server.
//!
//! Run with `cargo run -p examples --example quickstart`. The file lives in a
//! temporary directory that is removed at the end; point `JsonConfig::new` at a path
//! of your own to keep it.

use serde::{Deserialize, Serialize};
use storage_core::query::field;
use storage_core::{
    BatchStorage, Direction, Operation, Query, QueryableStorage, Storage, TransactionOptions,
    TransactionalExt,
};
use storage_json::{JsonConfig, JsonStorage};

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
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("users.json");
    let store = JsonStorage::<User>::open(JsonConfig::new(&path)).await?;
    println!(
        "opened {} (backend {}, tiers {:?})",
        path.display(),
        store.capabilities().backend,
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

    // Closing compacts the journal into the main file, which stays readable by people.
    store.close().await?;
    println!(
        "closed; {} now reads:\n{}",
        path.display(),
        std::fs::read_to_string(&path)?
    );

    let reopened = JsonStorage::<User>::open(JsonConfig::new(&path)).await?;
    println!(
        "reopened: size = {}, user:2 = {:?}",
        reopened.size().await?,
        reopened.get("user:2").await?
    );
    reopened.close().await?;
    Ok(())
}
