//! [`GraphStorage`]: the store, its connection, and the Storage and Batch tiers.
//!
//! Every write — a `set`, a batch, a committed transaction — is one Redis
//! `MULTI`/`EXEC` holding one `GRAPH.QUERY` (a single `UNWIND` query, which FalkorDB
//! applies atomically), one `XADD` of the change batch to the label's change stream,
//! and one `INCR` of the graph's write version. Writes that must know what existed
//! before (deletes, clears) first `WATCH` the graph on a dedicated connection and
//! read, so what they report and publish is exactly what they changed; so do large
//! batches of sets, to learn whether any of their keys may exist (see [`BULK_MIN`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisWrite as _, Value};
use serde::Deserialize;
use storage_core::codec::{Codec, Header, to_document};
use storage_core::events::BeforeEvent;
use storage_core::{
    BatchResult, BatchStorage, Capabilities, Document, ErrorCode, EventHub, IndexKind,
    IsolationLevel, Operation, Result, ResultStream, Storage, StorageError, StorageValue, Tier,
    validate_key, validate_keys,
};

use crate::config::{GraphConfig, STREAM_MAX_LEN, redact_url};
use crate::cypher::{
    Cypher, KEY_INDEX_PROP, Leaf, OBJECT_PROP, OPAQUE_PROP, OPAQUE_SLOTS, VALUE_PROP, key_from_hex,
    key_hex, path_id, path_tag, push_key_hex, split_opaque, write_str_list, write_str_literal,
};
use crate::embedded::EmbeddedServer;
use crate::error::{BACKEND, corrupt, is_missing_graph, redis_err, reply_err};
use crate::keyrange::KnownKeys;
use crate::leaves::{Leaves, WalkScratch};
use crate::unique::{EPOCH_PROP, Stamp, op_terms};

/// How often a write that lost a `WATCH` race is retried before `VersionConflict`.
const WRITE_RETRIES: usize = 16;
/// Batches of at least this many operations are encoded, and their commits' change
/// entries framed, on a second thread beside the first (see `encode_ops`, `commit`):
/// below it a thread costs more than it saves.
const PARALLEL_MIN: usize = 2048;
/// A batch of at least this many sets (and nothing else) first asks, under `WATCH`,
/// whether the label holds a node whose key lies between the batch's least and
/// greatest key, when the label's key range hint says none may (see
/// [`crate::keyrange`]). If none does (a first load, or new keys between or beyond
/// the stored ones), the query creates every row without the index lookup of all the
/// batch's keys that otherwise decides between creating and upserting; a write in
/// between makes `EXEC` fail and the batch retries. Smaller batches skip the round
/// trips. A batch that found its key range empty records that range as a run of the
/// hint.
pub(crate) const BULK_MIN: usize = 2048;
/// Entries fetched per round trip when iterating.
const PAGE: usize = 5000;
/// How long `create_index` waits, by default, for FalkorDB to build a new index.
const DEFAULT_INDEX_BUILD_TIMEOUT_MS: u64 = 10_000;

/// A FalkorDB-backed store of `T` values under one label of one graph.
///
/// See the [crate docs](crate) for the data model, what runs where and the tiers.
pub struct GraphStorage<T> {
    pub(crate) inner: Arc<Inner>,
    pub(crate) codec: Arc<Codec<T>>,
    pub(crate) hub: Arc<EventHub<T>>,
    _marker: PhantomData<fn() -> T>,
}

impl<T: Send + Sync + 'static> Clone for GraphStorage<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            codec: Arc::clone(&self.codec),
            hub: Arc::clone(&self.hub),
            _marker: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for GraphStorage<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphStorage")
            .field("url", &redact_url(&self.inner.url))
            .field("graph", &self.inner.graph)
            .field("label", &self.inner.label_name)
            .finish_non_exhaustive()
    }
}

/// The state every handle and transaction of one store shares.
pub(crate) struct Inner {
    pub(crate) url: String,
    pub(crate) client: redis::Client,
    /// The connection every operation without `WATCH` shares; replaced when it drops.
    conn: Mutex<MultiplexedConnection>,
    spare: Mutex<Vec<MultiplexedConnection>>,
    pub(crate) graph: String,
    /// The label, backtick-quoted for the query body.
    pub(crate) label: String,
    pub(crate) label_name: String,
    pub(crate) stream: String,
    pub(crate) version_key: String,
    pub(crate) stream_max_len: usize,
    pub(crate) index_key: String,
    /// Counter bumped whenever the label's unique indexes change (see `crate::unique`).
    pub(crate) epoch_key: String,
    /// The span of the label's key range hint: a sorted set of the least and greatest
    /// key of small commits (see [`crate::keyrange`]).
    pub(crate) key_span_key: String,
    /// The runs of the label's key range hint: a set of one range per large batch
    /// that found its key range empty.
    pub(crate) key_runs_key: String,
    /// What this store knows is recorded in the hint.
    pub(crate) known_keys: Mutex<KnownKeys>,
    pub(crate) indexes: crate::query::IndexRegistry,
    /// How long `create_index` waits for FalkorDB to build an index, in milliseconds.
    pub(crate) index_build_timeout_ms: std::sync::atomic::AtomicU64,
    // Declared last: dropped after the connections above.
    server: Option<EmbeddedServer>,
}

/// A value encoded for the graph: the exact stored form, its leaves (the promoted
/// properties and opaque paths, see `cypher::visit_leaves`), and its document, which
/// only unique index checks need: it is built when the store knows unique indexes, or
/// later from the stored form ([`Encoded::ensure_doc`]) when one appeared since.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    pub(crate) stored: String,
    pub(crate) leaves: Leaves,
    doc: OnceLock<Arc<Document>>,
}

impl Encoded {
    /// The value's document; an error when it was not built (see [`Encoded::ensure_doc`]).
    pub(crate) fn doc(&self) -> Result<&Document> {
        self.doc.get().map(AsRef::as_ref).ok_or_else(|| {
            StorageError::new(ErrorCode::Backend, "a write's document was not built")
                .with_backend(BACKEND)
        })
    }

    /// Builds the document from the stored form if it was not built at encoding.
    pub(crate) fn ensure_doc<T: StorageValue>(&self, codec: &Codec<T>) -> Result<()> {
        if self.doc.get().is_none() {
            let value: T = decode(codec, &self.stored, "commit")?;
            let _ = self.doc.set(Arc::new(to_document(&value)?));
        }
        Ok(())
    }
}

/// What a watched commit read about the keys it deletes or clears.
enum Existed {
    Keys(BTreeSet<String>),
    Values(BTreeMap<String, String>),
}

/// A write with its value already encoded.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Set { key: String, value: Encoded },
    Delete { key: String },
    Clear,
}

impl Op {
    fn key(&self) -> Option<&str> {
        match self {
            Op::Set { key, .. } | Op::Delete { key } => Some(key),
            Op::Clear => None,
        }
    }
}

/// One change as read from the change stream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct StreamChange {
    /// `s` for a set, `d` for a delete.
    pub(crate) k: String,
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) v: Option<String>,
    /// The stored value a delete removed, when the commit read it.
    #[serde(default)]
    pub(crate) o: Option<String>,
}

/// A change to write to the stream, borrowed from the ops (a batch of 10,000 sets
/// should not copy every value again before it is framed).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamChangeRef<'a> {
    /// `s` for a set, `d` for a delete.
    pub(crate) k: &'static str,
    pub(crate) key: &'a str,
    pub(crate) v: Option<&'a str>,
    pub(crate) o: Option<&'a str>,
}

/// An after-hook event of a commit, kept until the commit succeeded.
#[derive(Debug, Clone)]
pub(crate) enum AfterItem {
    Set { key: String, stored: String },
    Delete { key: String, existed: bool },
    Clear { removed: u64 },
}

/// What a write did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub(crate) result: BatchResult,
    /// The after-hook events, collected only when the caller asked for them.
    pub(crate) after: Vec<AfterItem>,
    /// The change stream id of the commit (none when nothing changed).
    pub(crate) stream_id: Option<String>,
}

/// Encodes a value for the graph.
///
/// The codec's bytes (header and payload) are stored in one string property, since
/// FalkorDB strings are C strings that end at the first NUL: `t` + the base64 header +
/// `|` + the payload when the payload is UTF-8 without NUL (uncompressed JSON, which
/// stays readable in the graph), `b` + base64 of everything otherwise.
pub(crate) fn encode<T: StorageValue>(
    codec: &Codec<T>,
    value: &T,
    with_doc: bool,
) -> Result<Encoded> {
    encode_with(codec, value, &mut EncodeScratch::default(), with_doc)
}

/// Buffers one encoding leaves to the next (see [`encode_with`]).
#[derive(Debug, Default)]
pub(crate) struct EncodeScratch {
    /// The codec's output.
    bytes: Vec<u8>,
    /// The leaf walk's buffers and size hints.
    walk: WalkScratch,
}

/// [`encode`], with `scratch` as the codec's buffer (a batch reuses one for every
/// value, and each stored form is then allocated once, at its exact size). `with_doc`:
/// build the document too (for unique index checks).
pub(crate) fn encode_with<T: StorageValue>(
    codec: &Codec<T>,
    value: &T,
    scratch: &mut EncodeScratch,
    with_doc: bool,
) -> Result<Encoded> {
    scratch.bytes.clear();
    codec.encode_into(value, &mut scratch.bytes)?;
    let bytes = scratch.bytes.as_slice();
    let doc = OnceLock::new();
    let walked = if with_doc {
        None
    } else {
        Leaves::of_value_in(value, &mut scratch.walk)
    };
    let leaves = if let Some(leaves) = walked {
        leaves
    } else {
        let built = to_document(value)?;
        let leaves = Leaves::of_document(&built);
        let _ = doc.set(Arc::new(built));
        leaves
    };
    let (_, payload) = Header::parse(bytes)?;
    let header_len = bytes.len() - payload.len();
    let stored = match std::str::from_utf8(payload) {
        Ok(text) if !text.contains('\0') => {
            let mut stored = String::with_capacity(text.len() + 2 + header_len.div_ceil(3) * 4);
            stored.push('t');
            base64_push(&mut stored, &bytes[..header_len]);
            stored.push('|');
            stored.push_str(text);
            stored
        }
        _ => format!("b{}", base64_encode(bytes)),
    };
    Ok(Encoded {
        stored,
        leaves,
        doc,
    })
}

/// Decodes a stored value.
pub(crate) fn decode<T: StorageValue>(
    codec: &Codec<T>,
    stored: &str,
    operation: &'static str,
) -> Result<T> {
    let bytes: Vec<u8> = match stored.split_at_checked(1) {
        Some(("t", rest)) => {
            let (header, text) = rest
                .split_once('|')
                .ok_or_else(|| corrupt(operation, "stored value has no header separator"))?;
            let mut bytes = base64_decode(header)
                .ok_or_else(|| corrupt(operation, "bad base64 in stored header"))?;
            bytes.extend_from_slice(text.as_bytes());
            bytes
        }
        Some(("b", b64)) => {
            base64_decode(b64).ok_or_else(|| corrupt(operation, "bad base64 in stored value"))?
        }
        _ => return Err(corrupt(operation, "stored value has no known tag")),
    };
    codec
        .decode(&bytes)
        .map_err(|e| e.with_operation(operation).with_backend(BACKEND))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    base64_push(&mut out, bytes);
    out
}

fn base64_push(out: &mut String, bytes: &[u8]) {
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        let v = u32::try_from(B64.iter().position(|&x| x == c)?).ok()?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xFF).ok()?);
        }
    }
    Some(out)
}

/// A string cell of a result row.
pub(crate) fn cell_str(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => Some(s.clone()),
        _ => None,
    }
}

/// An integer cell of a result row.
pub(crate) fn cell_int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        other => cell_str(other).and_then(|s| s.parse().ok()),
    }
}

/// The rows of a verbose `GRAPH.QUERY` reply (`[header, rows, stats]`; `[stats]` without `RETURN`).
pub(crate) fn rows_of(reply: Value, operation: &'static str) -> Result<Vec<Vec<Value>>> {
    let Value::Array(mut parts) = reply else {
        return Err(reply_err(operation, "graph reply is not an array"));
    };
    if parts.len() < 3 {
        return Ok(Vec::new());
    }
    let Value::Array(rows) = parts.swap_remove(1) else {
        return Err(reply_err(operation, "graph rows are not an array"));
    };
    rows.into_iter()
        .map(|row| match row {
            Value::Array(cells) => Ok(cells),
            _ => Err(reply_err(operation, "graph row is not an array")),
        })
        .collect()
}

/// A key cell of a result row: the node's hex key ([`KEY_INDEX_PROP`]), decoded.
pub(crate) fn cell_key(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => std::str::from_utf8(b).ok().and_then(key_from_hex),
        Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => key_from_hex(s),
        _ => None,
    }
}

/// `(key, stored)` pairs from rows of `n.kh, n.v`.
pub(crate) fn key_value_rows(
    rows: Vec<Vec<Value>>,
    operation: &'static str,
) -> Result<Vec<(String, String)>> {
    rows.into_iter()
        .map(|row| {
            match (
                row.first().and_then(cell_key),
                row.get(1).and_then(cell_str),
            ) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err(corrupt(operation, "node without key or value")),
            }
        })
        .collect()
}

impl Inner {
    async fn connect(config: &GraphConfig) -> Result<Self> {
        config.validate().map_err(|e| e.with_backend(BACKEND))?;
        let (url, server) = if let Some(url) = &config.url {
            (normalize_url(url, config.tls.is_some()), None)
        } else {
            let server = tokio::task::spawn_blocking(EmbeddedServer::start)
                .await
                .map_err(|e| {
                    StorageError::new(
                        ErrorCode::ConnectionFailed,
                        "embedded server start panicked",
                    )
                    .with_backend(BACKEND)
                    .with_source(e)
                })??;
            (server.url().to_owned(), Some(server))
        };
        if cfg!(not(feature = "tls")) && (config.tls.is_some() || url.starts_with("rediss://")) {
            return Err(StorageError::new(
                ErrorCode::InvalidConfig,
                "tls needs storage-graph's `tls` feature (rustls)",
            )
            .with_backend(BACKEND));
        }
        let mut info = url.as_str().into_connection_info().map_err(|e| {
            StorageError::new(ErrorCode::InvalidConfig, format!("bad url: {e}"))
                .with_backend(BACKEND)
                .with_context("url", redact_url(&url))
        })?;
        let mut redis_info = info.redis_settings().clone();
        if let Some(user) = &config.username {
            redis_info = redis_info.set_username(user);
        }
        if let Some(password) = &config.password {
            redis_info = redis_info.set_password(password.expose());
        }
        info = info.set_redis_settings(redis_info);
        let client = make_client(info, config)?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&conn_config())
            .await
            .map_err(|e| {
                let err = redis_err("open")(e);
                StorageError::new(ErrorCode::ConnectionFailed, err.message().to_owned())
                    .with_backend(BACKEND)
                    .with_context("url", redact_url(&url))
                    .with_source(err)
            })?;
        let label = crate::cypher::quote_name(&config.label)
            .ok_or_else(|| StorageError::new(ErrorCode::InvalidConfig, "bad label"))?;
        let inner = Self {
            url,
            client,
            conn: Mutex::new(conn),
            spare: Mutex::new(Vec::new()),
            graph: config.database.clone(),
            label,
            label_name: config.label.clone(),
            stream: format!("{}::{}::changes", config.database, config.label),
            version_key: format!("{}::version", config.database),
            stream_max_len: STREAM_MAX_LEN,
            index_key: format!("{}::{}::indexes", config.database, config.label),
            epoch_key: format!("{}::{}::indexes::epoch", config.database, config.label),
            key_span_key: format!("{}::{}::keys::span", config.database, config.label),
            key_runs_key: format!("{}::{}::keys::runs", config.database, config.label),
            known_keys: Mutex::new(KnownKeys::Unknown),
            indexes: crate::query::IndexRegistry::default(),
            index_build_timeout_ms: std::sync::atomic::AtomicU64::new(
                DEFAULT_INDEX_BUILD_TIMEOUT_MS,
            ),
            server,
        };
        inner.ensure_schema().await?;
        inner.load_known_keys(&mut inner.shared()).await;
        Ok(inner)
    }

    /// The exact-match index on the hex key (see [`KEY_INDEX_PROP`]).
    ///
    /// Keys stay unique because every write looks its keys up in this index before it
    /// creates a node, and FalkorDB runs writes one at a time. No FalkorDB unique constraint is added: FalkorDB 4.16.3 crashes
    /// (the whole server) when a node whose constrained property is empty or only
    /// whitespace is created under a unique constraint, and `"   "` is a valid key.
    ///
    /// Queries also find the nodes holding opaque values or objects on their paths
    /// through indexes on `_o1`, `_o2`, `_o` and `_x` (FalkorDB indexes each element of
    /// a list), so that an indexed query never scans the label; nodes without such
    /// values hold none of them and cost those indexes nothing.
    async fn ensure_schema(&self) -> Result<()> {
        let mut conn = self.shared();
        for prop in [
            KEY_INDEX_PROP,
            OPAQUE_SLOTS[0],
            OPAQUE_SLOTS[1],
            OPAQUE_PROP,
            OBJECT_PROP,
        ] {
            let index = format!("CREATE INDEX FOR (n:{}) ON (n.{prop})", self.label);
            if let Err(e) = redis::cmd("GRAPH.QUERY")
                .arg(&self.graph)
                .arg(&index)
                .query_async::<Value>(&mut conn)
                .await
                && !e.to_string().contains("already indexed")
                // A replica (read by `DistributedGraphStorage`) has the indexes from its
                // primary.
                && !e.to_string().to_lowercase().contains("readonly")
            {
                return Err(redis_err("open")(e));
            }
        }
        Ok(())
    }

    pub(crate) fn shared(&self) -> MultiplexedConnection {
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// After a failure that dropped the connection, connects again so the next
    /// operation works; the failed one still reports `ConnectionLost` (retryable).
    pub(crate) async fn recover(&self, e: &redis::RedisError) {
        if !(e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error()) {
            return;
        }
        if let Ok(fresh) = self
            .client
            .get_multiplexed_async_connection_with_config(&conn_config())
            .await
        {
            *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        }
    }

    /// A connection no other operation uses, as `WATCH` needs.
    pub(crate) async fn dedicated(&self) -> Result<MultiplexedConnection> {
        let spare = self
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match spare {
            Some(conn) => Ok(conn),
            None => self
                .client
                .get_multiplexed_async_connection_with_config(&conn_config())
                .await
                .map_err(redis_err("connect")),
        }
    }

    /// Returns a dedicated connection that holds no `WATCH`.
    pub(crate) fn give_back(&self, conn: MultiplexedConnection) {
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.len() < 8 {
            spare.push(conn);
        }
    }

    /// Runs a read-only query; a graph that does not exist yet reads as empty.
    pub(crate) async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        q: &Cypher,
        operation: &'static str,
    ) -> Result<Vec<Vec<Value>>> {
        match redis::cmd("GRAPH.RO_QUERY")
            .arg(&self.graph)
            .arg(q.text())
            .query_async::<Value>(conn)
            .await
        {
            Ok(reply) => rows_of(reply, operation),
            Err(e) if is_missing_graph(&e) => Ok(Vec::new()),
            Err(e) => {
                self.recover(&e).await;
                Err(redis_err(operation)(e))
            }
        }
    }

    /// Runs a write query outside `MULTI` (schema changes, graph extension writes).
    pub(crate) async fn write_query(
        &self,
        q: &Cypher,
        operation: &'static str,
    ) -> Result<Vec<Vec<Value>>> {
        let reply = redis::cmd("GRAPH.QUERY")
            .arg(&self.graph)
            .arg(q.text())
            .query_async::<Value>(&mut self.shared())
            .await
            .map_err(redis_err(operation))?;
        rows_of(reply, operation)
    }

    /// The write version, bumped by every write of this adapter to the graph.
    pub(crate) async fn version(&self, conn: &mut MultiplexedConnection) -> Result<i64> {
        let v: Option<i64> = redis::cmd("GET")
            .arg(&self.version_key)
            .query_async(conn)
            .await
            .map_err(redis_err("version"))?;
        Ok(v.unwrap_or(0))
    }

    pub(crate) async fn get_stored(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
    ) -> Result<Option<String>> {
        let mut q = Cypher::new();
        let k = q.param(&key_hex(key))?;
        q.push(&format!(
            "MATCH (n:{} {{{KEY_INDEX_PROP}: {k}}}) RETURN n.{VALUE_PROP} LIMIT 1",
            self.label
        ));
        let rows = self.read(conn, &q, "get").await?;
        match rows.first().and_then(|row| row.first()) {
            None => Ok(None),
            Some(cell) => cell_str(cell)
                .map(Some)
                .ok_or_else(|| corrupt("get", "node without value")),
        }
    }

    /// Which of `keys` exist.
    pub(crate) async fn existing(
        &self,
        conn: &mut MultiplexedConnection,
        keys: &[&str],
    ) -> Result<BTreeSet<String>> {
        let rows = self
            .match_keys(conn, keys, &format!("n.{KEY_INDEX_PROP}"))
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.first().and_then(cell_key))
            .collect())
    }

    /// Which of `keys` exist, with their stored values.
    pub(crate) async fn existing_values(
        &self,
        conn: &mut MultiplexedConnection,
        keys: &[&str],
    ) -> Result<BTreeMap<String, String>> {
        let rows = self
            .match_keys(conn, keys, &format!("n.{KEY_INDEX_PROP}, n.{VALUE_PROP}"))
            .await?;
        Ok(key_value_rows(rows, "read")?.into_iter().collect())
    }

    /// The `returns` columns of the nodes of `keys` that exist, found through the key index.
    async fn match_keys(
        &self,
        conn: &mut MultiplexedConnection,
        keys: &[&str],
        returns: &str,
    ) -> Result<Vec<Vec<Value>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = Cypher::new();
        let hex: Vec<String> = keys.iter().map(|k| key_hex(k)).collect();
        let ks = q.param(&hex)?;
        q.push(&format!(
            "UNWIND {ks} AS k MATCH (n:{} {{{KEY_INDEX_PROP}: k}}) RETURN {returns}",
            self.label
        ));
        self.read(conn, &q, "read").await
    }

    /// Every key of the label.
    pub(crate) async fn all_keys(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<BTreeSet<String>> {
        let q = {
            let mut q = Cypher::new();
            q.push(&format!(
                "MATCH (n:{}) RETURN n.{KEY_INDEX_PROP}",
                self.label
            ));
            q
        };
        let rows = self.read(conn, &q, "read").await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.first().and_then(cell_key))
            .collect())
    }

    /// Up to `limit` entries with keys after `after`, in byte order of the key.
    pub(crate) async fn page(
        &self,
        after: Option<&str>,
        limit: usize,
        with_values: bool,
    ) -> Result<Vec<(String, Option<String>)>> {
        let mut q = Cypher::new();
        let filter = match after {
            // `toString` keeps the key index out: FalkorDB's range index answers string
            // ranges in its own collation (verified: `n.key > 'n1'` through an index
            // returned 'Z' and 'a'), while a plain comparison is strcmp, which on hex
            // digits is the byte order of the keys.
            Some(after) => format!(
                "WHERE toString(n.{KEY_INDEX_PROP}) > {} ",
                q.param(&key_hex(after))?
            ),
            None => String::new(),
        };
        let value = if with_values {
            format!(", n.{VALUE_PROP}")
        } else {
            String::new()
        };
        // FalkorDB compares strings with strcmp, which is UTF-8 byte order.
        q.push(&format!(
            "MATCH (n:{}) {filter}RETURN n.{KEY_INDEX_PROP}{value} ORDER BY n.{KEY_INDEX_PROP} LIMIT {limit}",
            self.label
        ));
        let rows = self.read(&mut self.shared(), &q, "iterate").await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let key = row
                .first()
                .and_then(cell_key)
                .ok_or_else(|| corrupt("iterate", "node without key"))?;
            let value = if with_values {
                Some(
                    row.get(1)
                        .and_then(cell_str)
                        .ok_or_else(|| corrupt("iterate", "node without value"))?,
                )
            } else {
                None
            };
            out.push((key, value));
        }
        // Defensive: the contract is byte order whatever the server's collation, and a
        // page must move forward or iteration would never end.
        out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        if let Some(after) = after {
            out.retain(|(k, _)| k.as_bytes() > after.as_bytes());
        }
        Ok(out)
    }

    /// Applies `ops` as one commit. `existed` must hold, for every key a delete or clear
    /// touches, whether it existed before (read under the caller's `WATCH`), or be
    /// `None` when `ops` holds only sets. `old` holds the stored values read with it
    /// (those of the keys deletes remove), which the change record carries.
    /// `options`: whether to collect the after-hook events, and whether the label was
    /// found empty. Returns `None` when `EXEC` was aborted by a concurrent write.
    #[allow(clippy::too_many_lines)] // one commit's bookkeeping reads best in one place
    pub(crate) async fn commit(
        &self,
        conn: &mut MultiplexedConnection,
        ops: &[Op],
        existed: Option<&BTreeSet<String>>,
        old: &BTreeMap<String, String>,
        stamp: &Stamp,
        options: CommitOptions,
    ) -> Result<Option<Applied>> {
        let CommitOptions {
            after_hooks,
            absent,
        } = options;
        let mut applied = Applied::default();
        let has_clear = ops.iter().any(|op| matches!(op, Op::Clear));
        // Only deletes and clears ask whether a key exists at their point in the commit.
        let only_sets = ops.iter().all(|op| matches!(op, Op::Set { .. }));
        let mut state: HashMap<&str, bool> = HashMap::new();
        // Only a clear needs every key that may exist at its point in the commit.
        let mut all_known: BTreeSet<&str> = match existed {
            Some(e) if has_clear => e.iter().map(String::as_str).collect(),
            _ => BTreeSet::new(),
        };
        let exists = |key: &str, state: &HashMap<&str, bool>| {
            state
                .get(key)
                .copied()
                .unwrap_or_else(|| existed.is_some_and(|e| e.contains(key)))
        };
        let mut changes: Vec<StreamChangeRef<'_>> = Vec::with_capacity(ops.len());
        let mut clear = false;
        let mut sets: BTreeMap<&str, &Encoded> = BTreeMap::new();
        let mut deletes: BTreeSet<&str> = BTreeSet::new();
        // What a delete removes: the value set earlier in this commit, or the stored
        // one read under the watch (none for a key this commit deleted or cleared).
        let mut current: HashMap<&str, Option<&str>> = HashMap::new();
        for op in ops {
            applied.result.operations += 1;
            match op {
                Op::Set { key, value } => {
                    if !only_sets {
                        sets.insert(key, value);
                    }
                    if !deletes.is_empty() {
                        deletes.remove(key.as_str());
                    }
                    if !only_sets {
                        state.insert(key, true);
                    }
                    if has_clear {
                        all_known.insert(key);
                    }
                    if after_hooks {
                        applied.after.push(AfterItem::Set {
                            key: key.clone(),
                            stored: value.stored.clone(),
                        });
                    }
                    changes.push(StreamChangeRef {
                        k: "s",
                        key,
                        v: Some(&value.stored),
                        o: None,
                    });
                    if !deletes.is_empty() || !old.is_empty() {
                        current.insert(key, Some(&value.stored));
                    }
                }
                Op::Delete { key } => {
                    let existed = exists(key, &state);
                    if after_hooks {
                        applied.after.push(AfterItem::Delete {
                            key: key.clone(),
                            existed,
                        });
                    }
                    if existed {
                        applied.result.deleted += 1;
                        let removed = match current.get(key.as_str()) {
                            Some(value) => *value,
                            None => old.get(key).map(String::as_str),
                        };
                        changes.push(StreamChangeRef {
                            k: "d",
                            key,
                            v: None,
                            o: removed,
                        });
                    }
                    current.insert(key, None);
                    sets.remove(key.as_str());
                    deletes.insert(key);
                    state.insert(key, false);
                }
                Op::Clear => {
                    let present: Vec<&str> = all_known
                        .iter()
                        .copied()
                        .filter(|k| exists(k, &state))
                        .collect();
                    let removed = present.len();
                    for key in present {
                        applied.result.cleared += 1;
                        changes.push(StreamChangeRef {
                            k: "d",
                            key,
                            v: None,
                            o: None,
                        });
                        state.insert(key, false);
                        current.insert(key, None);
                    }
                    if after_hooks {
                        applied.after.push(AfterItem::Clear {
                            removed: u64::try_from(removed).unwrap_or(u64::MAX),
                        });
                    }
                    clear = true;
                    sets.clear();
                    deletes.clear();
                }
            }
        }
        if only_sets {
            sets = sorted_sets(ops);
        }
        if changes.is_empty() {
            // Nothing to write (deletes of missing keys): the after-hooks still see them.
            return Ok(Some(applied));
        }
        // The stream entry and the query are independent: a large commit frames the
        // entry on a second thread while this one writes the query's rows.
        let (q, xadd) = if changes.len() >= PARALLEL_MIN {
            std::thread::scope(|scope| {
                let framer = scope.spawn(|| self.change_entry(&changes));
                let q = self.write_plan(clear, &sets, &deletes, stamp, absent);
                let xadd = framer.join().map_err(|_| {
                    StorageError::new(ErrorCode::Backend, "framing the change entry panicked")
                        .with_backend(BACKEND)
                });
                Ok::<_, StorageError>((q?, xadd?))
            })?
        } else {
            (
                self.write_plan(clear, &sets, &deletes, stamp, absent)?,
                self.change_entry(&changes),
            )
        };
        drop(changes);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .ignore_errors()
            .cmd("GRAPH.QUERY")
            .arg(&self.graph)
            .arg(q.into_text())
            .add_command(xadd)
            .cmd("INCR")
            .arg(&self.version_key);
        let recorded = self.record_keys(&mut pipe, clear, absent, &sets);
        let reply: Value = match pipe.query_async(conn).await {
            Ok(reply) => reply,
            Err(e) => {
                self.recover(&e).await;
                return Err(redis_err("commit")(e));
            }
        };
        let results = match reply {
            Value::Nil => return Ok(None),
            Value::Array(results) => results,
            other => return Err(reply_err("commit", format!("exec answered {other:?}"))),
        };
        let stream_id = results.get(1).and_then(cell_str);
        if let Some(Value::ServerError(e)) = results.first() {
            // Redis transactions do not roll back: take the change record back out,
            // so watchers never see a write that was not applied.
            if let Some(id) = &stream_id {
                let _: std::result::Result<Value, _> = redis::cmd("XDEL")
                    .arg(&self.stream)
                    .arg(id)
                    .query_async(conn)
                    .await;
            }
            let err: redis::RedisError = e.clone().into();
            return Err(redis_err("commit")(err));
        }
        if let Some(recorded) = recorded {
            self.recorded(recorded);
        }
        applied.stream_id = stream_id;
        Ok(Some(applied))
    }

    /// The `XADD` of a commit's change entry to the label's stream.
    fn change_entry(&self, changes: &[StreamChangeRef<'_>]) -> redis::Cmd {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&self.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.stream_max_len)
            .arg("*")
            .arg(crate::observable::FRAMED_FIELD);
        xadd.reserve_space_for_args([crate::observable::framed_len(changes)]);
        crate::observable::frame_changes_into(
            &mut crate::observable::ArgSink(xadd.writer_for_next_arg()),
            changes,
        );
        xadd
    }

    /// Writes the rows of `sets` as parameters of `q` (columns when the rows share
    /// their promoted names, maps otherwise) and says how the query walks them.
    fn rows(&self, q: &mut Cypher, sets: &BTreeMap<&str, &Encoded>, stamp: &Stamp) -> Result<Rows> {
        let label = &self.label;
        if let Some(columns) = Columns::of(sets, stamp) {
            // One allocation for the parameters and the body: the columns are
            // megabytes, and every reallocation copies them.
            q.reserve(columns.estimate + 4096);
            let cols = columns.write_columns(q, sets, stamp)?;
            let props = columns.map_of(&cols, stamp);
            let kh = &cols[0];
            Ok(Rows {
                source: format!("range(0, size({kh}) - 1)"),
                var: "i",
                // A subscript of a parameter inside the index lookup is evaluated
                // with a copy of the whole list, once per row (quadratic in
                // FalkorDB 4.16.3); projected first, it is read once.
                find: format!(
                    "WITH i, {kh}[i] AS k OPTIONAL MATCH (n:{label} {{{KEY_INDEX_PROP}: k}})"
                ),
                create: format!("CREATE (:{label} {props})"),
                props,
                keys: Some(kh.clone()),
            })
        } else {
            let estimate: usize = sets
                .iter()
                .map(|(k, v)| v.stored.len() * 2 + k.len() * 4 + 64)
                .sum();
            q.reserve(estimate + 4096);
            let rows = q.param_with(estimate, |out| {
                out.push('[');
                for (i, (key, value)) in sets.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_node_literal(out, key, value, stamp)?;
                }
                out.push(']');
                Ok(())
            })?;
            Ok(Rows {
                source: rows,
                var: "r",
                find: format!(
                    "OPTIONAL MATCH (n:{label} {{{KEY_INDEX_PROP}: r.{KEY_INDEX_PROP}}})"
                ),
                create: format!("CREATE (m:{label}) SET m = r"),
                props: "r".to_owned(),
                keys: None,
            })
        }
    }

    /// One query for a whole commit: deletes (or the clear), then the sets.
    ///
    /// Sets are an upsert written as `OPTIONAL MATCH`, a `FOREACH` that creates the node
    /// when none matched, then `SET n = {…}`, which does nothing when `n` is null (for a
    /// lone set that `SET` costs FalkorDB about 10 µs less than a second `FOREACH` for
    /// the update branch: 63 against 73 µs inside `MULTI`/`EXEC`), rather than `MERGE`,
    /// which FalkorDB runs several times slower. It is exact because each key
    /// appears once in `sets` (an `OPTIONAL MATCH` does not see nodes created earlier
    /// in the same query) and FalkorDB runs write queries one at a time. (Do not
    /// replace the `CREATE` branch's `FOREACH` with `… WITH n WHERE n IS NULL CREATE`:
    /// FalkorDB 4.16.3 drops that filter after a `FOREACH` — `GRAPH.EXPLAIN` shows no
    /// `Filter` — so it creates a second node for an existing key, and the `SET` is
    /// lost. The conformance suites catch it.)
    ///
    /// A batch of sets alone first asks the key index, in one lookup for the whole
    /// batch (`kh IN $list`, which FalkorDB answers from the index several times
    /// faster than one lookup per row; in column form the list is the `kh` column),
    /// whether any of its keys exists. When none does (loading new entries, the common
    /// case for a large batch), every row is a plain `CREATE`, which costs FalkorDB
    /// about half the per-row upsert; otherwise nothing was created (`created = 0`, a
    /// batch is never empty) and the same query upserts row by row. Both branches are
    /// in the one query, so the check and the writes are atomic together. (A `CASE`
    /// choosing between map rows and `[]` costs FalkorDB a copy of the rows, so it
    /// only runs on the upsert branch; columns choose between row numbers and `[]`.)
    /// When the commit found no node in the range of its keys under its `WATCH`
    /// (`absent`, see [`BULK_MIN`]), the rows are plain `CREATE`s without that lookup.
    fn write_plan(
        &self,
        clear: bool,
        sets: &BTreeMap<&str, &Encoded>,
        deletes: &BTreeSet<&str>,
        stamp: &Stamp,
        absent: bool,
    ) -> Result<Cypher> {
        let mut q = Cypher::new();
        let label = &self.label;
        let mut body = String::new();
        if clear {
            let keep: Vec<String> = sets.keys().map(|k| key_hex(k)).collect();
            let keep = q.param(&keep)?;
            let _ = write!(
                body,
                "OPTIONAL MATCH (d:{label}) WHERE NOT d.{KEY_INDEX_PROP} IN {keep} DETACH DELETE d WITH count(*) AS _c "
            );
        } else if !deletes.is_empty() {
            let del: Vec<String> = deletes.iter().map(|k| key_hex(k)).collect();
            let del = q.param(&del)?;
            let _ = write!(
                body,
                "UNWIND {del} AS k OPTIONAL MATCH (d:{label} {{{KEY_INDEX_PROP}: k}}) DETACH DELETE d WITH count(*) AS _c "
            );
        }
        if let (true, Some((key, value))) = (body.is_empty() && sets.len() == 1, sets.iter().next())
        {
            // A lone set skips UNWIND, which costs FalkorDB about three times more
            // than the same upsert on plain parameters, and names its properties in the
            // body, one parameter each: a third faster to create than `SET m = $map`.
            let k = q.param(&key_hex(key))?;
            let props = lone_props(&mut q, &k, value, stamp)?;
            let _ = write!(
                body,
                "OPTIONAL MATCH (n:{label} {{{KEY_INDEX_PROP}: {k}}}) \
                 FOREACH (_ IN CASE WHEN n IS NULL THEN [1] ELSE [] END | CREATE (:{label} {props})) \
                 SET n = {props}"
            );
        } else if !sets.is_empty() {
            let only_sets = body.is_empty();
            let Rows {
                source,
                var,
                find,
                create,
                props,
                keys,
            } = self.rows(&mut q, sets, stamp)?;
            let upsert = format!(
                "{find} FOREACH (_ IN CASE WHEN n IS NULL THEN [1] ELSE [] END | {create}) \
                 SET n = {props}"
            );
            if only_sets && absent {
                // No key of the batch's range existed under the commit's WATCH (a write
                // since makes EXEC fail): every key is new, and each appears once in
                // `sets`.
                let _ = write!(body, "UNWIND {source} AS {var} {create}");
            } else if only_sets {
                let khs = match keys {
                    Some(khs) => khs,
                    None => q.param_with(sets.keys().map(|k| 2 * k.len() + 4).sum(), |out| {
                        push_hex_key_list(out, sets.keys());
                        Ok(())
                    })?,
                };
                let _ = write!(
                    body,
                    "OPTIONAL MATCH (e:{label}) WHERE e.{KEY_INDEX_PROP} IN {khs} \
                     WITH count(e) AS c WHERE c = 0 UNWIND {source} AS {var} {create} \
                     WITH count(*) AS created \
                     UNWIND CASE WHEN created = 0 THEN {source} ELSE [] END AS {var} {upsert}"
                );
            } else {
                let _ = write!(body, "UNWIND {source} AS {var} {upsert}");
            }
        } else if body.is_empty() {
            body.push_str("RETURN 0");
        } else {
            body.push_str("RETURN _c");
        }
        q.push(&body);
        Ok(q)
    }
}

/// How a batch's query walks its rows (see [`Inner::write_plan`]).
struct Rows {
    /// What the query `UNWIND`s: row numbers (columns) or the rows (maps).
    source: String,
    /// The variable each row is bound to.
    var: &'static str,
    /// Binds `n` to the row's node, or to null when its key has none.
    find: String,
    /// Creates the row's node.
    create: String,
    /// The row's properties, for `SET n = …`.
    props: String,
    /// The placeholder of the list of the rows' key index values, when the rows
    /// already carry it (columns).
    keys: Option<String>,
}

/// The columns of a batch written column-wise: one list parameter per property —
/// `kh`, `v`, `_o1`, `_o2`, `_o`, `_x`, the promoted names, the unique terms — and
/// the query walks row numbers, reading row `i` as `$p0[i]`, `$p1[i]`, …. A row as a
/// map costs FalkorDB more to parse and to apply through `SET m = r` than a row as a
/// list, and a list per row more than one list per column: 10,000 small rows
/// written column-wise cost FalkorDB about a tenth less time than as lists of
/// cells (and the column of keys doubles as the list an existence check looks up).
/// `_o1`, `_o2`, `_o` and `_x` are columns only when some row lists a path in them,
/// and the index epoch is a constant of the query body rather than a cell. A
/// property a row lacks is `null`, which `CREATE` and `SET n = {…}` both leave unset.
struct Columns {
    /// Promoted property names, in column order.
    names: Vec<String>,
    /// Column of each promoted name (after the fixed ones).
    position: HashMap<String, usize>,
    /// Whether some row fills each opaque slot (`_o1`, `_o2` are columns).
    slots: [bool; 2],
    /// Whether some row has more opaque paths than slots (`_o` is a column).
    opaque: bool,
    /// Whether some row lists object paths (`_x` is a column).
    objects: bool,
    /// About how many bytes the rows take as a literal.
    estimate: usize,
}

impl Columns {
    /// The columns of `sets`, or `None` when the rows differ so much in their promoted
    /// names that columns would be mostly nulls (map rows are then cheaper).
    fn of(sets: &BTreeMap<&str, &Encoded>, stamp: &Stamp) -> Option<Self> {
        let mut columns = Self {
            names: Vec::new(),
            position: HashMap::new(),
            slots: [false; 2],
            opaque: false,
            objects: false,
            estimate: 2,
        };
        let mut filled = 0usize;
        let mut bytes = 0usize;
        for (key, value) in sets {
            // Quotes, separators, and room for a few escapes.
            bytes += key.len() * 2 + value.stored.len() + value.stored.len() / 64 + 24;
            let mut next = 0;
            let mut opaque = 0;
            value.leaves.visit(&mut |name, leaf| {
                let literal = match leaf {
                    Leaf::Opaque => {
                        opaque += 1;
                        bytes += name.len() * 2 + 6;
                        return;
                    }
                    Leaf::Object => {
                        columns.objects = true;
                        bytes += name.len() * 2 + 6;
                        return;
                    }
                    Leaf::Str(s) => s.len() + s.len() / 16 + 2,
                    Leaf::Bool(_) => 5,
                    Leaf::Int(_) | Leaf::Float(_) => 24,
                };
                bytes += literal + 2;
                filled += 1;
                next = columns.column(name, next) + 1;
            });
            columns.slots[0] |= opaque > 0;
            columns.slots[1] |= opaque > 1;
            columns.opaque |= opaque > OPAQUE_SLOTS.len();
            if columns.names.len() > 256 {
                return None;
            }
        }
        let rows = sets.len();
        bytes += rows * (6 * (columns.first_promoted() - 1) + 8);
        // Unique terms: room for a short list per index and row.
        bytes += rows * stamp.uniques.len() * 48;
        let cells = columns.names.len().saturating_mul(rows);
        // Absent cells are written as `null`.
        columns.estimate = bytes + cells.saturating_sub(filled) * 6;
        (cells <= filled.saturating_mul(2) + rows * 4).then_some(columns)
    }

    /// The column of promoted `name`, added if new. Documents of one type list their
    /// fields in the same order, so the column after the previous one (`guess`) is
    /// tried before the map.
    fn column(&mut self, name: &str, guess: usize) -> usize {
        if self.names.get(guess).is_some_and(|n| n == name) {
            return guess;
        }
        if let Some(&at) = self.position.get(name) {
            return at;
        }
        self.position.insert(name.to_owned(), self.names.len());
        self.names.push(name.to_owned());
        self.names.len() - 1
    }

    /// The column of promoted `name` (every name was seen by [`Columns::of`]).
    fn find(&self, name: &str, guess: usize) -> Option<usize> {
        if self.names.get(guess).is_some_and(|n| n == name) {
            return Some(guess);
        }
        self.position.get(name).copied()
    }

    /// Index of the first promoted column.
    fn first_promoted(&self) -> usize {
        2 + self.slots.iter().filter(|s| **s).count()
            + usize::from(self.opaque)
            + usize::from(self.objects)
    }

    /// How many columns the batch has: `kh`, `v`, the opaque and object columns in
    /// use, the promoted names and one per unique index.
    fn width(&self, stamp: &Stamp) -> usize {
        self.first_promoted() + self.names.len() + stamp.uniques.len()
    }

    /// Writes each column of `sets` as a list parameter of `q` and returns their
    /// placeholders, in column order. [`PARALLEL_MIN`] rows or more are written in two
    /// halves, the second on a thread of its own (writing the cells, mostly escaping
    /// the stored values, is the longest step of a batch before it is sent; the rows
    /// are independent of each other).
    fn write_columns(
        &self,
        q: &mut Cypher,
        sets: &BTreeMap<&str, &Encoded>,
        stamp: &Stamp,
    ) -> Result<Vec<String>> {
        let rows: Vec<(&str, &Encoded)> = sets.iter().map(|(k, v)| (*k, *v)).collect();
        let parts = if rows.len() < PARALLEL_MIN {
            vec![self.write_cells(&rows, stamp)?]
        } else {
            let (first, second) = rows.split_at(rows.len() / 2);
            std::thread::scope(|scope| {
                let later = scope.spawn(|| self.write_cells(second, stamp));
                // The first half's error comes first, as in a sequential write.
                let first = self.write_cells(first, stamp)?;
                let second = later.join().map_err(|_| {
                    StorageError::new(ErrorCode::Backend, "writing a batch's rows panicked")
                        .with_backend(BACKEND)
                })??;
                Ok::<_, StorageError>(vec![first, second])
            })?
        };
        (0..self.width(stamp))
            .map(|c| {
                let len = parts.iter().map(|part| part[c].len() + 2).sum();
                q.param_with(len, |out| {
                    out.push('[');
                    for (j, part) in parts.iter().enumerate() {
                        if j > 0 {
                            out.push_str(", ");
                        }
                        out.push_str(&part[c]);
                    }
                    out.push(']');
                    Ok(())
                })
            })
            .collect()
    }

    /// The cells of `rows`, one string per column, cells separated by commas.
    fn write_cells(&self, rows: &[(&str, &Encoded)], stamp: &Stamp) -> Result<Vec<String>> {
        let mut columns: Vec<String> = vec![String::new(); self.width(stamp)];
        // Keys as hex and stored values are most of the bytes: sized up front.
        columns[0].reserve(rows.iter().map(|(k, _)| 2 * k.len() + 4).sum());
        columns[1].reserve(
            rows.iter()
                .map(|(_, v)| v.stored.len() + v.stored.len() / 64 + 4)
                .sum(),
        );
        let mut cells: Vec<Option<Leaf<'_>>> = vec![None; self.names.len()];
        // Paths (without the promoted name's leading dot), written as tags in place.
        let mut tags: Vec<&str> = Vec::new();
        let mut objects: Vec<&str> = Vec::new();
        for (i, (key, value)) in rows.iter().enumerate() {
            if i > 0 {
                for column in &mut columns {
                    column.push_str(", ");
                }
            }
            let mut out = columns.iter_mut();
            let mut next_column = || {
                out.next().ok_or_else(|| {
                    StorageError::new(
                        ErrorCode::Backend,
                        "a batch row has more cells than columns",
                    )
                    .with_backend(BACKEND)
                })
            };
            let kh = next_column()?;
            // Hex digits need no escaping.
            kh.push('\'');
            push_key_hex(kh, key);
            kh.push('\'');
            write_str_literal(next_column()?, &value.stored)?;
            cells.fill(None);
            tags.clear();
            objects.clear();
            let mut next = 0;
            value.leaves.visit(&mut |name, leaf| match leaf {
                Leaf::Opaque => tags.push(&name[1..]),
                Leaf::Object => objects.push(&name[1..]),
                _ => {
                    if let Some(at) = self.find(name, next) {
                        cells[at] = Some(leaf);
                        next = at + 1;
                    }
                }
            });
            let (slots, rest) = split_opaque(&tags);
            for (used, tag) in self.slots.iter().zip(slots) {
                if *used {
                    let column = next_column()?;
                    match tag {
                        Some(path) => {
                            let _ = write!(column, "{}", path_id(path));
                        }
                        None => column.push_str("null"),
                    }
                }
            }
            if self.opaque {
                push_path_tags(next_column()?, rest);
            }
            if self.objects {
                push_path_tags(next_column()?, &objects);
            }
            for cell in &cells {
                let column = next_column()?;
                match cell {
                    Some(leaf) => leaf.write(column)?,
                    None => column.push_str("null"),
                }
            }
            stamp.write_term_cells(value, &mut out)?;
        }
        Ok(columns)
    }

    /// The property map of row `i`, for `CREATE (:L {…})` and `SET n = {…}`:
    /// `columns` are the columns' placeholders (see [`Columns::write_columns`]).
    fn map_of(&self, columns: &[String], stamp: &Stamp) -> String {
        let mut column = columns.iter();
        let mut cell = || {
            column
                .next()
                .map_or_else(String::new, |c| format!("{c}[i]"))
        };
        let mut out = format!("{{{KEY_INDEX_PROP}: {}, {VALUE_PROP}: {}", cell(), cell());
        stamp.write_epoch(&mut out);
        for (used, prop) in [
            (self.slots[0], OPAQUE_SLOTS[0]),
            (self.slots[1], OPAQUE_SLOTS[1]),
            (self.opaque, OPAQUE_PROP),
            (self.objects, OBJECT_PROP),
        ] {
            if used {
                let _ = write!(out, ", {prop}: {}", cell());
            }
        }
        for name in &self.names {
            // Promoted names hold no backtick or NUL (see `cypher::visit_leaves`).
            let _ = write!(out, ", `{name}`: {}", cell());
        }
        for (prop, _, _) in &stamp.uniques {
            // Term property names are `u:` and hex digits.
            let _ = write!(out, ", `{prop}`: {}", cell());
        }
        out.push('}');
        out
    }
}

/// The property map of a lone set's node, each value a parameter of `q` (`kh` is the
/// placeholder `kh` already holds): `{kh: $p0, v: $p1, …}`. A missing list
/// or unique term is `null`, which `CREATE` skips and `SET n = {…}` removes.
fn lone_props(q: &mut Cypher, kh: &str, value: &Encoded, stamp: &Stamp) -> Result<String> {
    let mut out = format!("{{{KEY_INDEX_PROP}: {kh}");
    let mut cell = String::new();
    write_str_literal(&mut cell, &value.stored)?;
    let _ = write!(out, ", {VALUE_PROP}: {}", q.param_literal(&cell));
    let (mut paths, mut objects) = (Vec::new(), Vec::new());
    let mut leaves = Vec::new();
    value.leaves.visit(&mut |name, leaf| match leaf {
        Leaf::Opaque => paths.push(&name[1..]),
        Leaf::Object => objects.push(path_tag(&name[1..])),
        _ => leaves.push((name.to_owned(), leaf)),
    });
    let (slots, rest) = split_opaque(&paths);
    for (prop, path) in OPAQUE_SLOTS.iter().zip(slots) {
        if let Some(path) = path {
            let _ = write!(out, ", {prop}: {}", q.param(&path_id(path))?);
        }
    }
    let rest: Vec<String> = rest.iter().map(|path| path_tag(path)).collect();
    for (prop, list) in [
        (OPAQUE_PROP, rest.as_slice()),
        (OBJECT_PROP, objects.as_slice()),
    ] {
        if !list.is_empty() {
            let _ = write!(out, ", {prop}: {}", q.param(list)?);
        }
    }
    for (name, leaf) in leaves {
        cell.clear();
        leaf.write(&mut cell)?;
        // Promoted names hold no backtick or NUL (see `cypher::visit_leaves`).
        let _ = write!(out, ", `{name}`: {}", q.param_literal(&cell));
    }
    stamp.write_epoch(&mut out);
    for (prop, terms) in stamp.term_literals(value)? {
        // Term property names are `u:` and hex digits.
        let _ = write!(out, ", `{prop}`: {}", q.param_literal(&terms));
    }
    out.push('}');
    Ok(out)
}

/// Every property of an entry's node, as a Cypher map literal appended to `out` (the
/// row of a batch whose promoted names differ too much for columns).
///
/// Every name is fixed or a promoted path (no backtick, no NUL: see
/// `cypher::visit_leaves`) in backticks; every value goes through the `falkordb` encoder.
fn write_node_literal(out: &mut String, key: &str, value: &Encoded, stamp: &Stamp) -> Result<()> {
    let _ = write!(out, "{{{KEY_INDEX_PROP}: '");
    push_key_hex(out, key);
    let _ = write!(out, "', {VALUE_PROP}: ");
    write_str_literal(out, &value.stored)?;
    let (mut paths, mut objects) = (Vec::new(), Vec::new());
    let mut result = Ok(());
    value.leaves.visit(&mut |name, leaf| {
        if result.is_err() {
            return;
        }
        match leaf {
            Leaf::Opaque => paths.push(&name[1..]),
            Leaf::Object => objects.push(path_tag(&name[1..])),
            _ => {
                let _ = write!(out, ", `{name}`: ");
                result = leaf.write(out);
            }
        }
    });
    result?;
    let (slots, rest) = split_opaque(&paths);
    for (prop, path) in OPAQUE_SLOTS.iter().zip(slots) {
        if let Some(path) = path {
            let _ = write!(out, ", {prop}: {}", path_id(path));
        }
    }
    let rest: Vec<String> = rest.iter().map(|path| path_tag(path)).collect();
    for (prop, list) in [
        (OPAQUE_PROP, rest.as_slice()),
        (OBJECT_PROP, objects.as_slice()),
    ] {
        if !list.is_empty() {
            let _ = write!(out, ", {prop}: ");
            write_str_list(out, list)?;
        }
    }
    if stamp.uniques.is_empty() {
        stamp.write_epoch(out);
    } else {
        stamp.write_props(value.doc()?, out)?;
    }
    out.push('}');
    Ok(())
}

/// Appends [`path_tag`] of `path` as a string literal (hex digits after a letter need
/// no escaping), without building the tag apart (the paths listed in `_o` and `_x`).
fn push_path_tag(out: &mut String, path: &str) {
    out.push_str("'h");
    push_key_hex(out, path);
    out.push('\'');
}

/// Appends the [`path_tag`]s of `paths` as a list literal, or `null` (which `CREATE`
/// skips and `SET n = {…}` removes) when there are none.
fn push_path_tags(out: &mut String, paths: &[&str]) {
    if paths.is_empty() {
        out.push_str("null");
        return;
    }
    out.push('[');
    for (i, path) in paths.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_path_tag(out, path);
    }
    out.push(']');
}

fn conn_config() -> AsyncConnectionConfig {
    // Large batches legitimately take longer than a default response time-out.
    AsyncConnectionConfig::new().set_response_timeout(None)
}

/// `falkor://` is the falkordb client's spelling of `redis://`; `tls` upgrades to `rediss://`.
fn normalize_url(url: &str, tls: bool) -> String {
    let url = if let Some(rest) = url.strip_prefix("falkor://") {
        format!("redis://{rest}")
    } else if let Some(rest) = url.strip_prefix("falkors://") {
        format!("rediss://{rest}")
    } else {
        url.to_owned()
    };
    match (tls, url.strip_prefix("redis://")) {
        (true, Some(rest)) => format!("rediss://{rest}"),
        _ => url,
    }
}

#[cfg(not(feature = "tls"))]
fn make_client(info: redis::ConnectionInfo, config: &GraphConfig) -> Result<redis::Client> {
    if config.tls.is_some() || matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        return Err(StorageError::new(
            ErrorCode::InvalidConfig,
            "tls needs storage-graph's `tls` feature (rustls)",
        )
        .with_backend(BACKEND));
    }
    redis::Client::open(info).map_err(redis_err("open"))
}

#[cfg(feature = "tls")]
fn make_client(info: redis::ConnectionInfo, config: &GraphConfig) -> Result<redis::Client> {
    let uses_tls =
        config.tls.is_some() || matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    if uses_tls && rustls::crypto::CryptoProvider::get_default().is_none() {
        // rustls would panic while building its client configuration.
        return Err(StorageError::new(
            ErrorCode::InvalidConfig,
            "tls needs a rustls CryptoProvider installed by the application (for example rustls::crypto::ring::default_provider().install_default())",
        )
        .with_backend(BACKEND));
    }
    let Some(tls) = &config.tls else {
        return redis::Client::open(info).map_err(redis_err("open"));
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            StorageError::new(
                ErrorCode::InvalidConfig,
                format!("tls.ca_file {}: {e}", path.display()),
            )
            .with_backend(BACKEND)
        })
    };
    let client_tls = None;
    let root_cert = tls.ca_file.as_deref().map(read).transpose()?;
    let mut info = info;
    if tls.insecure_skip_verify
        && let redis::ConnectionAddr::TcpTls { host, port, .. } = info.addr().clone()
    {
        info = info.set_addr(redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure: true,
            tls_params: None,
        });
    }
    redis::Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    // Building the client only parses the certificates: any failure is the configuration's.
    .map_err(|e| {
        let message = match &tls.ca_file {
            Some(path) => format!("tls.ca_file {}: {e}", path.display()),
            None => format!("tls configuration refused: {e}"),
        };
        StorageError::new(ErrorCode::InvalidConfig, message)
            .with_operation("open")
            .with_backend(BACKEND)
    })
}

impl<T: StorageValue> GraphStorage<T> {
    /// Opens the store: connects (or starts an embedded server when `url` is none),
    /// and creates the key index and unique constraint of the label if missing.
    ///
    /// # Errors
    /// `InvalidConfig`; `ConnectionFailed` (for the embedded server: saying how to
    /// install the binaries); backend errors.
    pub async fn open(config: GraphConfig) -> Result<Self> {
        let codec = Codec::new(&config.common.serialization)
            .map_err(|e| e.with_operation("open").with_backend(BACKEND))?;
        Self::open_with_codec(config, codec).await
    }

    /// Opens the store with a codec of your own (for example a custom serializer).
    ///
    /// # Errors
    /// As [`GraphStorage::open`].
    pub async fn open_with_codec(config: GraphConfig, codec: Codec<T>) -> Result<Self> {
        let store = Self::from_parts(Arc::new(Inner::connect(&config).await?), Arc::new(codec));
        store.load_indexes().await?;
        Ok(store)
    }

    pub(crate) fn from_parts(inner: Arc<Inner>, codec: Arc<Codec<T>>) -> Self {
        Self {
            inner,
            codec,
            hub: Arc::new(EventHub::new()),
            _marker: PhantomData,
        }
    }

    /// The graph's name.
    pub fn graph_name(&self) -> &str {
        &self.inner.graph
    }

    /// The label of this handle's nodes.
    pub fn label_name(&self) -> &str {
        &self.inner.label_name
    }

    /// The Redis key of the change stream of this label.
    pub fn stream_key(&self) -> &str {
        &self.inner.stream
    }

    /// The server URL (password redacted).
    pub fn url(&self) -> String {
        redact_url(&self.inner.url)
    }

    /// Sets how long `create_index` waits for FalkorDB to build a new index over the
    /// existing nodes (10 s by default), for this store and every clone of it.
    ///
    /// FalkorDB builds an index in the background and plans queries without it until it
    /// is ready. When the time runs out, `create_index` fails with a retryable `Timeout`:
    /// the FalkorDB index exists and keeps building, but the definition is not
    /// registered yet; calling `create_index` again waits again and registers it.
    pub fn set_index_build_timeout(&self, timeout: std::time::Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.inner
            .index_build_timeout_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long `create_index` waits for FalkorDB to build a new index.
    pub fn index_build_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.inner
                .index_build_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Every entry as a document (for unique checks), read on `conn`.
    pub(crate) async fn all_documents(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<BTreeMap<String, Document>> {
        let mut q = Cypher::new();
        q.push(&format!(
            "MATCH (n:{}) RETURN n.{KEY_INDEX_PROP}, n.{VALUE_PROP}",
            self.inner.label
        ));
        let rows = self.inner.read(conn, &q, "read").await?;
        key_value_rows(rows, "read")?
            .into_iter()
            .map(|(k, stored)| {
                let value: T = decode(&self.codec, &stored, "read")?;
                Ok((k, to_document(&value)?))
            })
            .collect()
    }

    /// Reads what `ops` need to know (existing keys; every document when unique
    /// indexes must be checked) on a connection that `WATCH`es the graph, then commits.
    /// `None`: a concurrent write aborted `EXEC`.
    pub(crate) async fn commit_watched(
        &self,
        conn: &mut MultiplexedConnection,
        ops: &[Op],
    ) -> Result<Option<Applied>> {
        // The epoch under WATCH: if the unique indexes changed since this handle last
        // looked, read them again (a later change aborts the EXEC).
        let epoch: Option<i64> = redis::cmd("GET")
            .arg(&self.inner.epoch_key)
            .query_async(conn)
            .await
            .map_err(redis_err("commit"))?;
        if epoch.unwrap_or(0) != self.inner.indexes.epoch() {
            self.load_indexes_on(conn, false).await?;
        }
        let stamp = Stamp::new(self.inner.indexes.epoch(), &self.inner.indexes.list())?;
        if !stamp.uniques.is_empty() {
            // Encoded before this handle knew of a unique index: build the documents
            // the checks and the index terms are computed from.
            for op in ops {
                if let Op::Set { value, .. } = op {
                    value.ensure_doc(&self.codec)?;
                }
            }
        }
        if !stamp.uniques.is_empty() && ops.iter().any(|op| matches!(op, Op::Set { .. })) {
            let base = self.unique_candidates(conn, &stamp, ops).await?;
            crate::unique::check_ops(&stamp.definitions(), &base, ops)?;
        }
        let existed = if ops.iter().any(|op| matches!(op, Op::Clear)) {
            // A clear's change record lists every key it removes, without the values
            // (which would copy the whole label into the stream).
            Existed::Keys(self.inner.all_keys(conn).await?)
        } else {
            let keys: BTreeSet<&str> = ops
                .iter()
                .filter(|op| matches!(op, Op::Delete { .. }))
                .filter_map(Op::key)
                .collect();
            let keys: Vec<&str> = keys.into_iter().collect();
            Existed::Values(self.inner.existing_values(conn, &keys).await?)
        };
        let (existed, old): (BTreeSet<String>, BTreeMap<String, String>) = match existed {
            Existed::Keys(keys) => (keys, BTreeMap::new()),
            Existed::Values(values) => (values.keys().cloned().collect(), values),
        };
        let absent = match bulk_load_ends(ops) {
            Some((least, greatest)) => self.inner.keys_are_new(conn, &least, &greatest).await?,
            None => false,
        };
        self.inner
            .commit(
                conn,
                ops,
                Some(&existed),
                &old,
                &stamp,
                CommitOptions {
                    after_hooks: self.hub.has_after_hooks(),
                    absent,
                },
            )
            .await
    }

    /// The documents that could hold a term `ops` claims in a unique index: nodes that
    /// list one of the terms, and nodes stamped with another epoch (their stored terms
    /// may be missing or stale, so their documents are checked).
    async fn unique_candidates(
        &self,
        conn: &mut MultiplexedConnection,
        stamp: &Stamp,
        ops: &[Op],
    ) -> Result<BTreeMap<String, Document>> {
        let mut q = Cypher::new();
        let e = q.param(&stamp.epoch)?;
        // A node without a stamp was written at epoch 0 (see `Stamp::write_epoch`).
        let mut clauses = vec![format!("coalesce(n.{EPOCH_PROP}, 0) <> {e}")];
        for ((prop, _, _), terms) in stamp.uniques.iter().zip(op_terms(stamp, ops)?) {
            if terms.is_empty() {
                continue;
            }
            let t = q.param(&terms)?;
            clauses.push(format!("any(t IN coalesce(n.`{prop}`, []) WHERE t IN {t})"));
        }
        q.push(&format!(
            "MATCH (n:{}) WHERE {} RETURN n.{KEY_INDEX_PROP}, n.{VALUE_PROP}",
            self.inner.label,
            clauses.join(" OR ")
        ));
        let rows = self.inner.read(conn, &q, "commit").await?;
        key_value_rows(rows, "commit")?
            .into_iter()
            .map(|(k, stored)| {
                let value: T = decode(&self.codec, &stored, "commit")?;
                Ok((k, to_document(&value)?))
            })
            .collect()
    }

    /// Applies encoded ops as one commit, reading first (under `WATCH`) when deletes,
    /// clears or unique indexes need to know what exists; retries lost races.
    pub(crate) async fn apply(&self, ops: &[Op]) -> Result<Applied> {
        self.refresh_indexes().await?;
        let needs_read = !self.inner.indexes.unique().is_empty()
            || ops.iter().any(|op| !matches!(op, Op::Set { .. }))
            || is_bulk_load(ops);
        let applied = if needs_read {
            self.apply_watched(ops).await?
        } else {
            let mut conn = self.inner.shared();
            // No unique index known: stamp the cached epoch. If it is already stale, the
            // nodes count as unchecked and later unique checks read their documents.
            let stamp = Stamp {
                epoch: self.inner.indexes.epoch(),
                uniques: Vec::new(),
            };
            self.inner
                .commit(
                    &mut conn,
                    ops,
                    None,
                    &BTreeMap::new(),
                    &stamp,
                    CommitOptions {
                        after_hooks: self.hub.has_after_hooks(),
                        absent: false,
                    },
                )
                .await?
                .ok_or_else(|| reply_err("commit", "exec aborted without watch"))?
        };
        self.after_commit(&applied);
        Ok(applied)
    }

    async fn apply_watched(&self, ops: &[Op]) -> Result<Applied> {
        let mut conn = self.inner.dedicated().await?;
        for attempt in 0..WRITE_RETRIES {
            redis::cmd("WATCH")
                .arg(&self.inner.graph)
                .arg(&self.inner.version_key)
                .arg(&self.inner.epoch_key)
                .query_async::<()>(&mut conn)
                .await
                .map_err(redis_err("watch"))?;
            match self.commit_watched(&mut conn, ops).await {
                Ok(Some(applied)) => {
                    if applied.stream_id.is_none() {
                        // Nothing changed and nothing was executed: release the watch.
                        let _ = redis::cmd("UNWATCH").query_async::<()>(&mut conn).await;
                    }
                    self.inner.give_back(conn);
                    return Ok(applied);
                }
                Ok(None) => {
                    // Lost a race: back off a little (growing, staggered by the clock)
                    // so that a crowd of writers does not retry in lockstep.
                    let jitter = u64::from(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.subsec_nanos() % 1000),
                    );
                    let attempt_us = 200 * (u64::try_from(attempt).unwrap_or(16) + 1);
                    tokio::time::sleep(std::time::Duration::from_micros(attempt_us + jitter)).await;
                }
                Err(e) => {
                    let _ = redis::cmd("UNWATCH").query_async::<()>(&mut conn).await;
                    return Err(e);
                }
            }
        }
        self.inner.give_back(conn);
        Err(StorageError::new(
            ErrorCode::VersionConflict,
            "concurrent writes kept changing the graph",
        )
        .with_backend(BACKEND))
    }

    /// Validates and encodes a batch's operations. A large batch is encoded in two
    /// halves, the second on a thread of its own: the values are independent, and
    /// encoding them is most of what a batch costs the client before it is sent.
    pub(crate) fn encode_ops(&self, operations: &[Operation<T>]) -> Result<Vec<Op>> {
        let with_doc = self.needs_documents();
        if operations.len() < PARALLEL_MIN {
            return encode_chunk(&self.codec, operations, 0, with_doc);
        }
        let (first, second) = operations.split_at(operations.len() / 2);
        let codec = &*self.codec;
        std::thread::scope(|scope| {
            let later = scope.spawn(|| encode_chunk(codec, second, first.len(), with_doc));
            // The first half's error comes first, as in a sequential encoding.
            let mut ops = encode_chunk(codec, first, 0, with_doc)?;
            let rest = later.join().map_err(|_| {
                StorageError::new(ErrorCode::Backend, "encoding a batch panicked")
                    .with_backend(BACKEND)
            })??;
            ops.extend(rest);
            Ok(ops)
        })
    }

    /// Whether writes should build their values' documents: only unique index checks
    /// read them (see [`Encoded`]).
    pub(crate) fn needs_documents(&self) -> bool {
        !self.inner.indexes.unique().is_empty()
    }

    fn iterate(&self, with_values: bool) -> ResultStream<'_, (String, Option<String>)> {
        let inner = Arc::clone(&self.inner);
        futures::stream::try_unfold(
            (inner, None::<String>, false),
            move |(inner, after, done)| async move {
                if done {
                    return Ok::<_, StorageError>(None);
                }
                let page = inner.page(after.as_deref(), PAGE, with_values).await?;
                let done = page.len() < PAGE || page.is_empty();
                let after = page.last().map(|(k, _)| k.clone());
                Ok(Some((page, (inner, after, done))))
            },
        )
        .map_ok(|page| futures::stream::iter(page.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }
}

use futures::TryStreamExt;

#[async_trait]
impl<T: StorageValue> Storage<T> for GraphStorage<T> {
    storage_core::tier_accessors!(T; batch, queryable, indexed, transactional, observable);

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(BACKEND, Tier::Observable)
            .with_isolation_levels([IsolationLevel::Serializable])
            .with_index_kinds([IndexKind::Btree, IndexKind::Hash, IndexKind::Fulltext])
            .with_unique_indexes(true)
            .with_savepoints(true)
            .with_cross_process_watch(true)
            .with_persistent(self.inner.server.is_none())
    }

    async fn get(&self, key: &str) -> Result<Option<T>> {
        validate_key(key).map_err(|e| e.with_operation("get").with_backend(BACKEND))?;
        self.before(&BeforeEvent::Get { key })?;
        let value = match self.inner.get_stored(&mut self.inner.shared(), key).await? {
            Some(stored) => Some(decode(&self.codec, &stored, "get")?),
            None => None,
        };
        self.after_get(key, value.is_some());
        Ok(value)
    }

    async fn set(&self, key: &str, value: &T) -> Result<()> {
        validate_key(key).map_err(|e| e.with_operation("set").with_backend(BACKEND))?;
        self.before(&BeforeEvent::Set { key, value })?;
        let op = Op::Set {
            key: key.to_owned(),
            value: encode(&self.codec, value, self.needs_documents())
                .map_err(|e| e.with_operation("set").with_context("key", key))?,
        };
        self.apply(std::slice::from_ref(&op)).await?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key).map_err(|e| e.with_operation("delete").with_backend(BACKEND))?;
        self.before(&BeforeEvent::Delete { key })?;
        let applied = self
            .apply(&[Op::Delete {
                key: key.to_owned(),
            }])
            .await?;
        Ok(applied.result.deleted > 0)
    }

    async fn has(&self, key: &str) -> Result<bool> {
        validate_key(key).map_err(|e| e.with_operation("has").with_backend(BACKEND))?;
        Ok(!self
            .inner
            .existing(&mut self.inner.shared(), &[key])
            .await?
            .is_empty())
    }

    async fn clear(&self) -> Result<()> {
        self.before(&BeforeEvent::Clear)?;
        self.apply(&[Op::Clear]).await?;
        Ok(())
    }

    async fn size(&self) -> Result<u64> {
        let mut q = Cypher::new();
        q.push(&format!("MATCH (n:{}) RETURN count(n)", self.inner.label));
        let rows = self
            .inner
            .read(&mut self.inner.shared(), &q, "size")
            .await?;
        let n = rows
            .first()
            .and_then(|r| r.first())
            .and_then(cell_int)
            .unwrap_or(0);
        u64::try_from(n).map_err(|_| reply_err("size", "negative count"))
    }

    fn keys(&self) -> ResultStream<'_, String> {
        self.iterate(false).map_ok(|(k, _)| k).boxed()
    }

    fn values(&self) -> ResultStream<'_, T> {
        self.entries().map_ok(|(_, v)| v).boxed()
    }

    fn entries(&self) -> ResultStream<'_, (String, T)> {
        let codec = Arc::clone(&self.codec);
        self.iterate(true)
            .and_then(move |(k, v)| {
                let codec = Arc::clone(&codec);
                async move {
                    let stored = v.ok_or_else(|| corrupt("iterate", "node without value"))?;
                    Ok((k, decode(&codec, &stored, "iterate")?))
                }
            })
            .boxed()
    }
}

#[async_trait]
impl<T: StorageValue> BatchStorage<T> for GraphStorage<T> {
    async fn get_many(&self, keys: &[String]) -> Result<BTreeMap<String, T>> {
        validate_keys(keys.iter().map(String::as_str))
            .map_err(|e| e.with_operation("get_many").with_backend(BACKEND))?;
        if keys.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut q = Cypher::new();
        let hex: Vec<String> = keys.iter().map(|k| key_hex(k)).collect();
        let ks = q.param(&hex)?;
        q.push(&format!(
            "UNWIND {ks} AS k MATCH (n:{} {{{KEY_INDEX_PROP}: k}}) RETURN n.{KEY_INDEX_PROP}, n.{VALUE_PROP}",
            self.inner.label
        ));
        let rows = self
            .inner
            .read(&mut self.inner.shared(), &q, "get_many")
            .await?;
        key_value_rows(rows, "get_many")?
            .into_iter()
            .map(|(k, v)| Ok((k, decode(&self.codec, &v, "get_many")?)))
            .collect()
    }

    async fn batch(&self, operations: Vec<Operation<T>>) -> Result<BatchResult> {
        let ops = self
            .encode_ops(&operations)
            .map_err(|e| e.with_operation("batch"))?;
        if self.hub.has_before_hooks() {
            for (i, op) in operations.iter().enumerate() {
                let event = match op {
                    Operation::Set { key, value } => BeforeEvent::Set { key, value },
                    Operation::Delete { key } => BeforeEvent::Delete { key },
                    Operation::Clear => BeforeEvent::Clear,
                };
                self.before(&event)
                    .map_err(|e| e.with_context("index", i))?;
            }
        }
        free_later(operations);
        let applied = self.apply(&ops).await;
        free_later(ops);
        Ok(applied?.result)
    }
}

/// The sets of a commit of sets alone, by key, the last set of a key winning. Sorting
/// them (linear for keys already in order, as a load's often are) and building the
/// map from sorted pairs costs a fraction of inserting them one by one.
fn sorted_sets(ops: &[Op]) -> BTreeMap<&str, &Encoded> {
    let mut pairs: Vec<(&str, &Encoded)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Set { key, value } => Some((key.as_str(), value)),
            _ => None,
        })
        .collect();
    // Stable: a key's sets stay in commit order.
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    let last = |i: usize| pairs.get(i + 1).is_none_or(|next| next.0 != pairs[i].0);
    let unique: Vec<(&str, &Encoded)> = (0..pairs.len())
        .filter(|&i| last(i))
        .map(|i| pairs[i])
        .collect();
    unique.into_iter().collect()
}

/// Appends the keys' [`key_hex`] as a list literal (hex digits need no escaping).
fn push_hex_key_list<'k>(out: &mut String, keys: impl Iterator<Item = &'k &'k str>) {
    out.push('[');
    for (i, key) in keys.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('\'');
        push_key_hex(out, key);
        out.push('\'');
    }
    out.push(']');
}

/// How a commit is written beyond its operations.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CommitOptions {
    /// Collect the after-hook events.
    pub(crate) after_hooks: bool,
    /// No node of the label had a key within the batch's keys' range when read under
    /// the commit's `WATCH` (see [`BULK_MIN`]).
    pub(crate) absent: bool,
}

/// Whether `ops` is a batch of [`BULK_MIN`] sets or more, which reads under `WATCH`
/// whether any of its keys may exist before it commits.
fn is_bulk_load(ops: &[Op]) -> bool {
    ops.len() >= BULK_MIN && ops.iter().all(|op| matches!(op, Op::Set { .. }))
}

/// The key index values of the least and greatest key of a bulk load (see
/// [`is_bulk_load`]), or `None` for other commits.
fn bulk_load_ends(ops: &[Op]) -> Option<(String, String)> {
    if !is_bulk_load(ops) {
        return None;
    }
    let least = ops.iter().filter_map(Op::key).min()?;
    let greatest = ops.iter().filter_map(Op::key).max()?;
    Some((key_hex(least), key_hex(greatest)))
}

/// Validates and encodes `operations`, the first of which is the batch's operation
/// number `offset` (for the `index` of an error).
fn encode_chunk<T: StorageValue>(
    codec: &Codec<T>,
    operations: &[Operation<T>],
    offset: usize,
    with_doc: bool,
) -> Result<Vec<Op>> {
    let mut scratch = EncodeScratch::default();
    operations
        .iter()
        .enumerate()
        .map(|(i, op)| {
            let i = offset + i;
            Ok(match op {
                Operation::Set { key, value } => {
                    validate_key(key).map_err(|e| e.with_context("index", i))?;
                    Op::Set {
                        key: key.clone(),
                        value: encode_with(codec, value, &mut scratch, with_doc)
                            .map_err(|e| e.with_context("index", i))?,
                    }
                }
                Operation::Delete { key } => {
                    validate_key(key).map_err(|e| e.with_context("index", i))?;
                    Op::Delete { key: key.clone() }
                }
                Operation::Clear => Op::Clear,
            })
        })
        .collect()
}

/// Batches at least this long are freed by [`free_later`].
const FREE_LATER_MIN: usize = 1024;

/// Drops a batch's values, or its encoded form, on tokio's blocking pool when it is
/// large: freeing 10,000 documents (each a tree of allocations) takes the caller about
/// as long as encoding them, and nothing waits for it, so it runs beside the commit
/// (or after the call returned) instead of in front of it.
fn free_later<V: Send + 'static>(items: Vec<V>) {
    if items.len() >= FREE_LATER_MIN
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        drop(runtime.spawn_blocking(move || drop(items)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for bytes in [&b""[..], b"a", b"ab", b"abc", b"abcd", b"\0\xff\x10"] {
            let text = base64_encode(bytes);
            assert_eq!(base64_decode(&text).as_deref(), Some(bytes));
        }
        assert_eq!(base64_encode(b"Man"), "TWFu");
        assert_eq!(base64_encode(b"Ma"), "TWE=");
    }

    #[test]
    fn stored_values_never_hold_nul() -> Result<()> {
        use storage_core::codec::{Compression, Format, SerializationConfig};
        for config in [
            SerializationConfig::default(),
            SerializationConfig::new(Format::Postcard, Compression::None),
            SerializationConfig::new(Format::Json, Compression::Gzip),
        ] {
            let codec = Codec::<(String, u64, i64)>::new(&config)?;
            let value = ("a\0b".to_owned(), u64::MAX, i64::MIN);
            let enc = encode(&codec, &value, false)?;
            assert!(!enc.stored.contains('\0'));
            assert_eq!(decode(&codec, &enc.stored, "get")?, value);
        }
        let json = encode(&Codec::<String>::default(), &"hi".to_owned(), false)?;
        assert!(json.stored.ends_with("|\"hi\""), "{}", json.stored);
        Ok(())
    }

    #[test]
    fn sorted_sets_keep_each_keys_last_set_in_key_order() -> Result<()> {
        let codec = Codec::<u32>::default();
        let set = |key: &str, n: u32| -> Result<Op> {
            Ok(Op::Set {
                key: key.to_owned(),
                value: encode(&codec, &n, false)?,
            })
        };
        let ops = vec![
            set("b", 1)?,
            set("a", 2)?,
            set("b", 3)?,
            set("c", 4)?,
            set("a", 5)?,
            set("b", 6)?,
        ];
        let sets = sorted_sets(&ops);
        let got: Vec<(&str, u32)> = sets
            .iter()
            .map(|(k, v)| Ok((*k, decode(&codec, &v.stored, "test")?)))
            .collect::<Result<_>>()?;
        assert_eq!(got, [("a", 5), ("b", 6), ("c", 4)]);
        assert!(sorted_sets(&[]).is_empty());
        Ok(())
    }

    #[test]
    fn urls_are_normalized() {
        assert_eq!(normalize_url("falkor://h:1", false), "redis://h:1");
        assert_eq!(normalize_url("redis://h:1", true), "rediss://h:1");
        assert_eq!(normalize_url("redis+unix:///x", false), "redis+unix:///x");
    }
}
