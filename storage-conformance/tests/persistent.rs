//! The persistence and crash suites against a small append-only log store written here, and
//! proof that the crash suite catches a store that acknowledges writes it only buffered.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::StreamExt;
use serde_json::{Value, json};
use storage_conformance::{Harness, crash, crash_suite, persistence_suite, runner, storage_suite};
use storage_core::codec::{from_document, to_document};
use storage_core::{
    Capabilities, Document, ErrorCode, Result, ResultStream, Storage, StorageError, StorageValue,
    Tier, async_trait, validate_key,
};

/// The largest encoded value, so the suites' limit checks run here too.
const MAX_VALUE_LEN: usize = 256 * 1024;

struct Inner {
    map: BTreeMap<String, Document>,
    log: BufWriter<File>,
}

/// One JSON line per write; a torn last line (a write cut by a crash) is ignored on open.
struct LogStore<T> {
    inner: Mutex<Inner>,
    /// Whether each write is handed to the OS before it is acknowledged.
    flush: bool,
    _marker: PhantomData<T>,
}

fn io(e: &std::io::Error) -> StorageError {
    StorageError::new(ErrorCode::Io, e.to_string())
}

impl<T: StorageValue> LogStore<T> {
    fn open(path: &Path, flush: bool) -> Result<Self> {
        let mut map = BTreeMap::new();
        let bytes = if path.exists() {
            std::fs::read(path).map_err(|e| io(&e))?
        } else {
            Vec::new()
        };
        // Replay complete records; a kill can cut the last write short (a fatal signal ends a
        // write(2) between pages), so everything from the first bad line on is a torn tail.
        let mut good_end = 0;
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            if !line.ends_with(b"\n") {
                break;
            }
            let Ok(record) = serde_json::from_slice::<Value>(line) else {
                break;
            };
            match (record["op"].as_str(), record["k"].as_str()) {
                (Some("set"), Some(k)) => {
                    map.insert(k.to_owned(), record["v"].clone());
                }
                (Some("del"), Some(k)) => {
                    map.remove(k);
                }
                (Some("clear"), _) => map.clear(),
                _ => break,
            }
            good_end += line.len();
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io(&e))?;
        // Cut the torn tail so the next record starts on a line of its own.
        file.set_len(u64::try_from(good_end).unwrap_or(u64::MAX))
            .map_err(|e| io(&e))?;
        Ok(Self {
            inner: Mutex::new(Inner {
                map,
                log: BufWriter::new(file),
            }),
            flush,
            _marker: PhantomData,
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| StorageError::new(ErrorCode::Backend, "poisoned"))
    }

    fn append(&self, inner: &mut Inner, record: &Value) -> Result<()> {
        // A torn previous line must not swallow this one.
        writeln!(inner.log, "{record}").map_err(|e| io(&e))?;
        if self.flush {
            inner.log.flush().map_err(|e| io(&e))?;
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<(String, T)>> {
        let inner = self.lock()?;
        inner
            .map
            .iter()
            .map(|(k, v)| Ok((k.clone(), from_document(v.clone())?)))
            .collect()
    }
}

#[async_trait]
impl<T: StorageValue> Storage<T> for LogStore<T> {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new("log", Tier::Storage)
            .with_persistent(true)
            .with_max_value_len(Some(MAX_VALUE_LEN))
    }
    async fn get(&self, key: &str) -> Result<Option<T>> {
        validate_key(key)?;
        let doc = self.lock()?.map.get(key).cloned();
        doc.map(from_document).transpose()
    }
    async fn set(&self, key: &str, value: &T) -> Result<()> {
        validate_key(key)?;
        let doc = to_document(value)?;
        let encoded = doc.to_string().len();
        if encoded > MAX_VALUE_LEN {
            return Err(StorageError::new(
                ErrorCode::QuotaExceeded,
                format!("value is {encoded} bytes, the limit is {MAX_VALUE_LEN}"),
            ));
        }
        let mut inner = self.lock()?;
        self.append(&mut inner, &json!({"op": "set", "k": key, "v": doc}))?;
        inner.map.insert(key.to_owned(), doc);
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let mut inner = self.lock()?;
        if !inner.map.contains_key(key) {
            return Ok(false);
        }
        self.append(&mut inner, &json!({"op": "del", "k": key}))?;
        Ok(inner.map.remove(key).is_some())
    }
    async fn has(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        Ok(self.lock()?.map.contains_key(key))
    }
    async fn clear(&self) -> Result<()> {
        let mut inner = self.lock()?;
        self.append(&mut inner, &json!({"op": "clear"}))?;
        inner.map.clear();
        Ok(())
    }
    async fn size(&self) -> Result<u64> {
        Ok(u64::try_from(self.lock()?.map.len()).unwrap_or(u64::MAX))
    }
    fn keys(&self) -> ResultStream<'_, String> {
        let keys: Result<Vec<String>> = self.lock().map(|i| i.map.keys().cloned().collect());
        match keys {
            Ok(k) => futures::stream::iter(k.into_iter().map(Ok)).boxed(),
            Err(e) => futures::stream::once(async { Err(e) }).boxed(),
        }
    }
    fn values(&self) -> ResultStream<'_, T> {
        self.entries().map(|r| r.map(|(_, v)| v)).boxed()
    }
    fn entries(&self) -> ResultStream<'_, (String, T)> {
        match self.snapshot() {
            Ok(all) => futures::stream::iter(all.into_iter().map(Ok)).boxed(),
            Err(e) => futures::stream::once(async { Err(e) }).boxed(),
        }
    }
}

/// One log file per namespace in a temporary directory.
struct LogHarness {
    dir: tempfile::TempDir,
}

impl LogHarness {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}")),
        }
    }

    fn path(&self, namespace: &str) -> PathBuf {
        self.dir.path().join(format!("{namespace}.log"))
    }
}

impl<T: StorageValue> Harness<T> for LogHarness {
    type Store = LogStore<T>;

    async fn open(&self, namespace: &str) -> Result<LogStore<T>> {
        LogStore::open(&self.path(namespace), true)
    }

    async fn corrupt(&self, namespace: &str, key: &str) -> Result<bool> {
        // Rewrites the key's last record with a value of the wrong shape for every test type.
        let mut f = OpenOptions::new()
            .append(true)
            .open(self.path(namespace))
            .map_err(|e| io(&e))?;
        writeln!(
            f,
            "{}",
            json!({"op": "set", "k": key, "v": {"not": ["what", "was", "stored"]}})
        )
        .map_err(|e| io(&e))?;
        Ok(true)
    }
}

storage_suite!(log_kv, LogHarness::new());
persistence_suite!(LogHarness::new());
crash_suite!(|location: String| async move { LogStore::<Value>::open(Path::new(&location), true) });

/// The child of the broken store: acknowledges writes it only buffered.
#[test]
fn buffering_crash_child_entry() {
    runner::run(
        "buffering_crash_child_entry",
        crash::child_entry(|location: String| async move {
            LogStore::<Value>::open(Path::new(&location), false)
        }),
    );
}

#[test]
fn the_crash_suite_catches_acknowledged_writes_that_were_only_buffered() {
    let outcome = runner::block_on_check(crash::acknowledged_writes_survive_sigkill(
        concat!(module_path!(), "::buffering_crash_child_entry"),
        |location: String| async move { LogStore::<Value>::open(Path::new(&location), false) },
    ));
    let failure = outcome.err().map(|f| f.to_string()).unwrap_or_default();
    assert!(
        failure.contains("is missing"),
        "the buffering store was not caught: {failure:?}"
    );
}
