//! The Observable tier: hooks in this process, change batches from the Redis stream.
//!
//! Every commit appends its change batch to the label's stream inside the same
//! `MULTI`/`EXEC` as the graph write, so the stream holds exactly the committed
//! batches, in commit order, for every handle and process. Each subscription reads it
//! with its own `XREAD BLOCK` task, starting right after the last entry that existed
//! when `watch` was called (or after a resume token), and feeds its own bounded queue:
//! a slow subscriber loses its oldest batches (reported as `Lagged`), never slowing
//! writers. Hooks are local: before-hooks run (and may veto) before a write is sent,
//! after-hooks run once it committed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::Value;
use storage_core::events::{
    AfterEvent, AfterHook, BeforeEvent, BeforeHook, HookId, Subscription, WatchPattern,
};
use storage_core::{
    Change, ChangeBatch, ChangeKind, ErrorCode, EventHub, ObservableStorage, Result, StorageError,
    StorageValue,
};

use crate::backend::{
    AfterItem, Applied, GraphStorage, StreamChange, StreamChangeRef, cell_str, decode,
};
use crate::error::{BACKEND, redis_err};

/// The stream entry field holding a commit's changes, framed by [`frame_changes_into`].
pub(crate) const FRAMED_FIELD: &str = "b";
/// The field that held them as a JSON array in earlier builds (still read, so that a
/// watcher resuming across an upgrade misses nothing).
const JSON_FIELD: &str = "c";

/// [`frame_changes_into`] as a string.
#[cfg(test)]
pub(crate) fn frame_changes(changes: &[StreamChangeRef<'_>]) -> String {
    let mut out = Vec::with_capacity(framed_len(changes));
    frame_changes_into(&mut out, changes);
    String::from_utf8(out).unwrap_or_default()
}

/// The size of [`frame_changes_into`]'s output, about (to reserve it at once).
pub(crate) fn framed_len(changes: &[StreamChangeRef<'_>]) -> usize {
    changes
        .iter()
        .map(|c| 24 + c.key.len() + c.v.or(c.o).map_or(0, str::len))
        .sum()
}

/// A commit's changes as one stream field: each change is a kind byte, `s` (a set, with
/// its stored value), `d` (a delete) or `o` (a delete, with the stored value it
/// removed), then the key and the value as `<byte length>:<bytes>`. Nothing is
/// escaped: writing it is a copy of the keys and values, where JSON escaped every
/// quote of every stored value (a batch of 10,000 documents spent more time there
/// than in the rest of the record).
///
/// Appended to `out`, the `XADD` argument itself, so a batch's values are copied once
/// into the command instead of into a string first (at 10,000 values that string is
/// megabytes of fresh memory, each page a fault).
pub(crate) fn frame_changes_into(out: &mut impl ByteSink, changes: &[StreamChangeRef<'_>]) {
    let mut digits = [0u8; 20];
    for c in changes {
        let (kind, value) = match (c.k, c.v, c.o) {
            ("s", v, _) => (b's', v),
            (_, _, Some(old)) => (b'o', Some(old)),
            _ => (b'd', None),
        };
        out.put(&[kind]);
        for part in std::iter::once(c.key).chain(value) {
            out.put(decimal(part.len(), &mut digits));
            out.put(b":");
            out.put(part.as_bytes());
        }
    }
}

/// Somewhere bytes are appended: a `Vec` or a Redis command's next argument.
pub(crate) trait ByteSink {
    fn put(&mut self, bytes: &[u8]);
}

impl ByteSink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A command's argument being written (see `redis::RedisWrite::writer_for_next_arg`),
/// which appends to the command's buffer and cannot fail.
pub(crate) struct ArgSink<W>(pub(crate) W);

impl<W: std::io::Write> ByteSink for ArgSink<W> {
    fn put(&mut self, bytes: &[u8]) {
        // The writer appends to a `Vec`, which never fails.
        let _ = self.0.write_all(bytes);
    }
}

/// `n` in decimal, written into `buf`.
fn decimal(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        // `n % 10` is a digit.
        buf[at] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// The changes of a field written by [`frame_changes_into`]; `None` when it is malformed.
fn parse_framed(mut payload: &str) -> Option<Vec<StreamChange>> {
    fn part<'a>(rest: &mut &'a str) -> Option<&'a str> {
        let (len, tail) = rest.split_once(':')?;
        let len: usize = len.parse().ok()?;
        let (part, tail) = tail.split_at_checked(len)?;
        *rest = tail;
        Some(part)
    }
    let mut out = Vec::new();
    while let Some(kind) = payload.chars().next() {
        payload = &payload[kind.len_utf8()..];
        let key = part(&mut payload)?.to_owned();
        let (k, v, o) = match kind {
            's' => ("s", Some(part(&mut payload)?.to_owned()), None),
            'o' => ("d", None, Some(part(&mut payload)?.to_owned())),
            'd' => ("d", None, None),
            _ => return None,
        };
        out.push(StreamChange {
            k: k.to_owned(),
            key,
            v,
            o,
        });
    }
    Some(out)
}

/// How long one `XREAD` blocks before the reader checks whether anyone still listens.
const BLOCK_MS: usize = 500;
/// Entries read per `XREAD`.
const READ_COUNT: usize = 256;

/// `ms-seq` stream ids as one increasing number (`ms * 10^6 + seq`).
fn sequence_of(id: &str) -> u64 {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    let ms: u64 = ms.parse().unwrap_or(0);
    let seq: u64 = seq.parse::<u64>().unwrap_or(0).min(999_999);
    ms.saturating_mul(1_000_000).saturating_add(seq)
}

fn timestamp_of(id: &str) -> SystemTime {
    let ms: u64 = id
        .split('-')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

impl<T: StorageValue> GraphStorage<T> {
    /// Runs the before-hooks for a write (the first error vetoes it).
    pub(crate) fn before(&self, event: &BeforeEvent<'_, T>) -> Result<()> {
        if self.hub.has_before_hooks() {
            self.hub.before(event)?;
        }
        Ok(())
    }

    /// Runs the after-hooks for a read.
    pub(crate) fn after_get(&self, key: &str, found: bool) {
        if self.hub.has_after_hooks() {
            self.hub.after(&AfterEvent::Get { key, found });
        }
    }

    /// Runs the after-hooks of a commit, in the commit's order.
    pub(crate) fn after_commit(&self, applied: &Applied) {
        if !self.hub.has_after_hooks() {
            return;
        }
        for item in &applied.after {
            match item {
                AfterItem::Set { key, stored } => {
                    if let Ok(value) = decode::<T>(&self.codec, stored, "after") {
                        self.hub.after(&AfterEvent::Set { key, value: &value });
                    }
                }
                AfterItem::Delete { key, existed } => {
                    self.hub.after(&AfterEvent::Delete {
                        key,
                        existed: *existed,
                    });
                }
                AfterItem::Clear { removed } => {
                    self.hub.after(&AfterEvent::Clear { removed: *removed });
                }
            }
        }
    }

    /// The id of the newest entry of the change stream (`0-0` when empty), read on a
    /// short-lived synchronous connection: `watch` is not async, and its starting
    /// point must be fixed before it returns.
    fn stream_tip(&self) -> Result<String> {
        let mut conn = self
            .inner
            .client
            .get_connection_with_timeout(Duration::from_secs(5))
            .map_err(redis_err("watch"))?;
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(&self.inner.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(&mut conn)
            .map_err(redis_err("watch"))?;
        let tip = match reply {
            Value::Array(entries) => entries.first().and_then(|e| match e {
                Value::Array(parts) => parts.first().and_then(cell_str),
                _ => None,
            }),
            _ => None,
        };
        Ok(tip.unwrap_or_else(|| "0-0".to_owned()))
    }

    /// Subscribes to the change batches committed after the stream entry `after`
    /// (a [`ChangeBatch::resume_token`]), so a watcher that lost its connection or
    /// restarted resumes without gaps, as far back as the stream is kept
    /// ([`crate::STREAM_MAX_LEN`] batches); further back it receives a `Resync`.
    ///
    /// # Errors
    /// `InvalidQuery` for a bad pattern, `InvalidValue` for a zero capacity,
    /// `Unsupported` outside a tokio runtime; backend errors.
    pub fn watch_from(
        &self,
        pattern: WatchPattern,
        capacity: usize,
        after: &str,
    ) -> Result<Subscription<T>> {
        self.subscribe(pattern, capacity, after.to_owned(), true)
    }

    fn subscribe(
        &self,
        pattern: WatchPattern,
        capacity: usize,
        start: String,
        resuming: bool,
    ) -> Result<Subscription<T>> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            StorageError::unsupported("watch needs a tokio runtime to read the change stream")
                .with_backend(BACKEND)
        })?;
        let hub = Arc::new(EventHub::new());
        let subscription = hub.watch(pattern, capacity)?;
        let store = self.clone();
        runtime.spawn(async move { store.read_stream(hub, start, resuming).await });
        Ok(subscription)
    }

    /// Feeds `hub` from the change stream until its subscriber is gone.
    async fn read_stream(self, hub: Arc<EventHub<T>>, mut last: String, resuming: bool) {
        let Ok(mut conn) = self.inner.dedicated().await else {
            hub.resync("cannot connect to read the change stream");
            return;
        };
        if resuming && last != "0-0" {
            let first: redis::RedisResult<Value> = redis::cmd("XRANGE")
                .arg(&self.inner.stream)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await;
            if let Ok(Value::Array(entries)) = first {
                let oldest = entries.first().and_then(|e| match e {
                    Value::Array(parts) => parts.first().and_then(cell_str),
                    _ => None,
                });
                if oldest.is_some_and(|o| sequence_of(&o) > sequence_of(&last).saturating_add(1)) {
                    hub.resync("the change stream was trimmed past the resume point");
                }
            }
        }
        while hub.has_subscribers() {
            let reply: redis::RedisResult<Value> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(&self.inner.stream)
                .arg(&last)
                .query_async(&mut conn)
                .await;
            let entries = match reply {
                Ok(Value::Array(streams)) => stream_entries(streams),
                Ok(_) => Vec::new(),
                Err(e) => {
                    hub.resync(&format!("change stream read failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    match self.inner.dedicated().await {
                        Ok(fresh) => conn = fresh,
                        Err(_) => return,
                    }
                    continue;
                }
            };
            for (id, payload) in entries {
                last.clone_from(&id);
                let changes = match payload {
                    Payload::Framed(text) => parse_framed(&text),
                    Payload::Json(text) => serde_json::from_str::<Vec<StreamChange>>(&text).ok(),
                };
                let Some(changes) = changes else {
                    hub.resync("a change stream entry could not be read");
                    continue;
                };
                let timestamp = timestamp_of(&id);
                let changes = changes
                    .into_iter()
                    .map(|c| Change {
                        kind: if c.k == "s" {
                            ChangeKind::Set
                        } else {
                            ChangeKind::Delete
                        },
                        new_value: c
                            .v
                            .as_deref()
                            .and_then(|v| decode::<T>(&self.codec, v, "watch").ok())
                            .map(Arc::new),
                        key: c.key,
                        old_value: c
                            .o
                            .as_deref()
                            .and_then(|v| decode::<T>(&self.codec, v, "watch").ok())
                            .map(Arc::new),
                        timestamp,
                    })
                    .collect();
                hub.publish(&ChangeBatch {
                    sequence: sequence_of(&id),
                    resume_token: Some(id),
                    changes,
                });
            }
        }
        // The connection held no WATCH: it can serve others.
        self.inner.give_back(conn);
    }
}

/// A stream entry's changes, in the framing of this build or the JSON of earlier ones.
enum Payload {
    Framed(String),
    Json(String),
}

/// `(id, payload)` of every entry of an `XREAD` reply for one stream.
fn stream_entries(streams: Vec<Value>) -> Vec<(String, Payload)> {
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(mut parts) = stream else {
            continue;
        };
        if parts.len() < 2 {
            continue;
        }
        let Value::Array(entries) = parts.swap_remove(1) else {
            continue;
        };
        for entry in entries {
            let Value::Array(fields) = entry else {
                continue;
            };
            let Some(id) = fields.first().and_then(cell_str) else {
                continue;
            };
            let Some(Value::Array(kv)) = fields.get(1) else {
                continue;
            };
            let payload = kv.chunks(2).find_map(|pair| {
                let field = pair.first().and_then(cell_str)?;
                let text = pair.get(1).and_then(cell_str)?;
                match field.as_str() {
                    FRAMED_FIELD => Some(Payload::Framed(text)),
                    JSON_FIELD => Some(Payload::Json(text)),
                    _ => None,
                }
            });
            if let Some(payload) = payload {
                out.push((id, payload));
            }
        }
    }
    out
}

impl<T: StorageValue> ObservableStorage<T> for GraphStorage<T> {
    fn on_before(&self, hook: BeforeHook<T>) -> HookId {
        self.hub.on_before(hook)
    }

    fn on_after(&self, hook: AfterHook<T>) -> HookId {
        self.hub.on_after(hook)
    }

    fn off(&self, id: HookId) -> bool {
        self.hub.off(id)
    }

    fn watch(&self, pattern: WatchPattern, capacity: usize) -> Result<Subscription<T>> {
        if capacity == 0 {
            return Err(StorageError::new(
                ErrorCode::InvalidValue,
                "a subscription needs a capacity of at least one batch",
            )
            .with_backend(BACKEND));
        }
        pattern.compile()?;
        let tip = self.stream_tip()?;
        self.subscribe(pattern, capacity, tip, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_changes_round_trip() {
        let changes = [
            StreamChangeRef {
                k: "s",
                key: "a:1",
                v: Some("t|{\"x\":\"1:2\"}"),
                o: None,
            },
            StreamChangeRef {
                k: "d",
                key: "\u{e9}t\u{e9} 12:",
                v: None,
                o: Some("b=="),
            },
            StreamChangeRef {
                k: "d",
                key: "gone",
                v: None,
                o: None,
            },
            StreamChangeRef {
                k: "s",
                key: "empty",
                v: Some(""),
                o: None,
            },
        ];
        let framed = frame_changes(&changes);
        let parsed = parse_framed(&framed).unwrap_or_default();
        assert_eq!(parsed.len(), changes.len());
        for (c, p) in changes.iter().zip(&parsed) {
            assert_eq!(
                (c.k, c.key, c.v, c.o),
                (p.k.as_str(), p.key.as_str(), p.v.as_deref(), p.o.as_deref())
            );
        }
        assert_eq!(parse_framed(""), Some(Vec::new()));
        for bad in ["x1:a", "s1:a", "s9:a3:abc", "s1:a1", "d:a"] {
            assert!(parse_framed(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn stream_ids_order_as_sequences() {
        assert!(sequence_of("1700000000000-1") > sequence_of("1700000000000-0"));
        assert!(sequence_of("1700000000001-0") > sequence_of("1700000000000-5"));
        assert_eq!(sequence_of("0-0"), 0);
    }
}
