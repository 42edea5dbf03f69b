//! Seed 003, "Basic Usage": users by key on the JSON file adapter.
//!
//! Run with `cargo run -p examples --example users_json`.

use serde::{Deserialize, Serialize};
use storage_core::{Storage, StorageExt};
use storage_json::{JsonConfig, JsonStorage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: String,
    name: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("data").join("users.json");
    std::fs::create_dir_all(dir.path().join("data"))?;

    // `const storage: Storage<User> = new JSONStorageAdapter({ filePath: './data/users.json' })`
    let storage = JsonStorage::<User>::open(JsonConfig::new(&path)).await?;

    storage
        .set(
            "user:123",
            &User {
                id: "123".into(),
                name: "Alice".into(),
            },
        )
        .await?;
    let user = storage.get("user:123").await?;
    println!("get user:123 -> {user:?}");

    // A missing key is `None`; `get_required` turns it into a typed `KeyNotFound`.
    println!("get user:999 -> {:?}", storage.get("user:999").await?);
    match storage.get_required("user:999").await {
        Err(e) => println!("get_required user:999 -> {e}"),
        Ok(u) => println!("get_required user:999 -> {u:?}"),
    }

    storage.close().await?;
    let reopened = JsonStorage::<User>::open(JsonConfig::new(&path)).await?;
    println!(
        "after reopening {}: user:123 -> {:?}",
        path.display(),
        reopened.get("user:123").await?
    );
    reopened.close().await?;
    Ok(())
}
