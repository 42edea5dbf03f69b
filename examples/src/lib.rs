//! Shared helpers of the examples: opening any backend from a [`BackendConfig`].
//!
//! An application that reads its backends from a configuration file holds each one as
//! an `Arc<dyn Storage<T>>` and asks it for the tier it needs at start-up
//! ([`storage_core::ArcStorageExt::into_transactional_or_err`] and friends).
//! [`open_backend`] is the one place that knows the concrete adapter types.
//!
//! The examples themselves live in `examples/examples/` (see the crate's `README.md`):
//! `quickstart`, `users_json`, `documents_sqlite`, `transfer`, `library_author`,
//! `config_app` and `graph`, each run with `cargo run -p examples --example <name>`.

#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

use storage_core::config::BackendConfig;
use storage_core::{MemoryStorage, Result, Storage, StorageValue};
use storage_graph::GraphStorage;
use storage_json::JsonStorage;
use storage_sqlite::SqliteStorage;

/// Opens the backend a configuration names, as a `dyn Storage<T>`.
///
/// # Errors
/// `InvalidConfig` when the configuration does not validate; the adapter's errors
/// when it cannot open (a locked JSON file, an unreachable FalkorDB server, …).
pub async fn open_backend<T: StorageValue>(config: &BackendConfig) -> Result<Arc<dyn Storage<T>>> {
    config.validate()?;
    Ok(match config {
        BackendConfig::Memory(c) => Arc::new(MemoryStorage::<T>::from_config(c)?),
        BackendConfig::Json(c) => Arc::new(JsonStorage::<T>::open(c.clone()).await?),
        BackendConfig::Sqlite(c) => Arc::new(SqliteStorage::<T>::open(c.clone()).await?),
        BackendConfig::Graph(c) => Arc::new(GraphStorage::<T>::open(c.clone()).await?),
    })
}

/// Resolves the relative file paths of a configuration (a JSON file, a SQLite
/// database) against `data_dir`, so one configuration file works wherever the
/// application keeps its data. Absolute paths, `:memory:` and servers are left alone.
#[must_use]
pub fn under_data_dir(mut config: BackendConfig, data_dir: &Path) -> BackendConfig {
    match &mut config {
        BackendConfig::Json(c) if c.file_path.is_relative() => {
            c.file_path = data_dir.join(&c.file_path);
        }
        BackendConfig::Sqlite(c) => {
            if let Some(path) = c.path().filter(|p| p.is_relative()) {
                c.database = data_dir.join(path).to_string_lossy().into_owned();
            }
        }
        _ => {}
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage_core::config::{ConfigFormat, JsonConfig, SqliteConfig};

    #[test]
    fn relative_paths_move_under_the_data_dir() -> Result<()> {
        let dir = Path::new("/data");
        let json = under_data_dir(BackendConfig::Json(JsonConfig::new("a.json")), dir);
        let BackendConfig::Json(json) = json else {
            panic!("still json");
        };
        assert_eq!(json.file_path, Path::new("/data/a.json"));
        let memory = under_data_dir(BackendConfig::Sqlite(SqliteConfig::memory()), dir);
        assert_eq!(memory, BackendConfig::Sqlite(SqliteConfig::memory()));
        let cfg = BackendConfig::parse(
            "type = \"sqlite\"\ndatabase = \"/abs/x.db\"\n",
            ConfigFormat::Toml,
        )?;
        assert_eq!(under_data_dir(cfg.clone(), dir), cfg);
        Ok(())
    }

    #[tokio::test]
    async fn memory_config_opens_a_memory_store() -> Result<()> {
        let cfg = BackendConfig::parse("type = \"memory\"\n", ConfigFormat::Toml)?;
        let store = open_backend::<u32>(&cfg).await?;
        store.set("a", &1).await?;
        assert_eq!(store.capabilities().backend, "memory");
        assert_eq!(store.get("a").await?, Some(1));
        Ok(())
    }
}
