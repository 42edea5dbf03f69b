//! The conformance suites, run against `JsonStorage`: every namespace the suites ask
//! for is one JSON file in the harness's temporary directory.

use std::path::PathBuf;

use storage_conformance::{
    Harness, batch_suite, indexed_suite, observable_suite, queryable_suite, storage_suite,
    transactional_suite,
};
use storage_core::{ErrorCode, Result, StorageError, StorageValue};
use storage_json::{JsonConfig, JsonStorage};

/// Opens files of one temporary directory.
struct JsonHarness {
    dir: tempfile::TempDir,
}

impl JsonHarness {
    fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("json-conformance-")
                .tempdir()
                .unwrap_or_else(|e| panic!("temp dir: {e}")),
        }
    }

    fn path(&self, namespace: &str) -> PathBuf {
        self.dir.path().join(format!("{namespace}.json"))
    }
}

impl<T: StorageValue> Harness<T> for JsonHarness {
    type Store = JsonStorage<T>;

    async fn open(&self, namespace: &str) -> Result<JsonStorage<T>> {
        JsonStorage::open(JsonConfig::new(self.path(namespace))).await
    }

    async fn close(&self, store: JsonStorage<T>) -> Result<()> {
        store.close().await
    }

    /// Cuts the value of `key` short in the main file, as a bad disk or a careless edit would.
    async fn corrupt(&self, namespace: &str, key: &str) -> Result<bool> {
        let path = self.path(namespace);
        let io = |e: std::io::Error| StorageError::new(ErrorCode::Io, e.to_string());
        let text = std::fs::read_to_string(&path).map_err(io)?;
        let needle = format!("{}: ", serde_json::Value::from(key));
        let Some(at) = text.find(&needle) else {
            return Ok(false);
        };
        let start = at + needle.len();
        let damaged = format!("{}{{\"ok\": tru{}", &text[..start], &text[start..]);
        std::fs::write(&path, damaged).map_err(io)?;
        Ok(true)
    }
}

storage_suite!(JsonHarness::new());
batch_suite!(JsonHarness::new());
queryable_suite!(JsonHarness::new());
indexed_suite!(JsonHarness::new());
transactional_suite!(JsonHarness::new());
observable_suite!(JsonHarness::new());
