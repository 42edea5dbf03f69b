//! Hooks, change subscriptions and the event hub adapters share.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::task::{Context, Poll, Waker};

use regex::{Regex, RegexBuilder};

use crate::error::{ErrorCode, Result, StorageError};
use crate::types::{ChangeBatch, WatchEvent};

/// Identifies a registered hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookId(pub u64);

/// What a before-hook sees; returning an error vetoes the operation.
#[derive(Debug)]
pub enum BeforeEvent<'a, T> {
    /// A read.
    Get {
        /// The key.
        key: &'a str,
    },
    /// A write.
    Set {
        /// The key.
        key: &'a str,
        /// The new value.
        value: &'a T,
    },
    /// A delete.
    Delete {
        /// The key.
        key: &'a str,
    },
    /// A clear.
    Clear,
}

/// What an after-hook sees: reads, and committed writes in commit order.
#[derive(Debug)]
pub enum AfterEvent<'a, T> {
    /// A read.
    Get {
        /// The key.
        key: &'a str,
        /// Whether the key existed.
        found: bool,
    },
    /// A committed write.
    Set {
        /// The key.
        key: &'a str,
        /// The new value.
        value: &'a T,
    },
    /// A committed delete.
    Delete {
        /// The key.
        key: &'a str,
        /// Whether the key existed.
        existed: bool,
    },
    /// A committed clear.
    Clear {
        /// Entries removed.
        removed: u64,
    },
}

/// A before-hook.
pub type BeforeHook<T> = Arc<dyn Fn(&BeforeEvent<'_, T>) -> Result<()> + Send + Sync>;

/// An after-hook.
pub type AfterHook<T> = Arc<dyn Fn(&AfterEvent<'_, T>) + Send + Sync>;

/// Which keys a watch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchPattern {
    /// Every key.
    All,
    /// A glob: `*` any run of characters, `?` one character, `\` escapes.
    Glob(String),
    /// A regular expression (the `regex` crate's syntax), matched against the whole key.
    Regex(String),
}

/// The longest watch pattern accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 4096;

/// Compiled-program size limit for watch regexes: generous for any sane key
/// pattern, small enough that a hostile pattern cannot eat the heap.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl WatchPattern {
    /// A glob pattern.
    pub fn glob(pattern: impl Into<String>) -> Self {
        Self::Glob(pattern.into())
    }

    /// A regular-expression pattern.
    pub fn regex(pattern: impl Into<String>) -> Self {
        Self::Regex(pattern.into())
    }

    /// Compiles the pattern.
    ///
    /// # Behavior
    /// - a glob matches the whole key: `*` any run of characters (including none, and
    ///   including `/` or newlines), `?` exactly one character, `\x` the character `x`,
    ///   everything else itself;
    /// - a regex must match the whole key (it is anchored at both ends).
    ///
    /// # Errors
    /// `InvalidQuery` for a malformed or oversized pattern (a glob ending in a lone `\`,
    /// a regex the `regex` crate rejects, a pattern over [`MAX_PATTERN_LEN`] bytes).
    ///
    /// # Example
    /// ```
    /// use storage_core::WatchPattern;
    /// let m = WatchPattern::glob("user:*").compile()?;
    /// assert!(m.matches("user:1"));
    /// assert!(!m.matches("order:1"));
    /// # Ok::<(), storage_core::StorageError>(())
    /// ```
    pub fn compile(&self) -> Result<KeyMatcher> {
        let (source, regex) = match self {
            Self::All => return Ok(KeyMatcher { regex: None }),
            Self::Glob(glob) => (glob, glob_to_regex(glob)?),
            Self::Regex(re) => (re, format!("^(?:{re})$")),
        };
        if source.len() > MAX_PATTERN_LEN {
            return Err(StorageError::new(
                ErrorCode::InvalidQuery,
                format!(
                    "watch pattern is {} bytes, the limit is {MAX_PATTERN_LEN}",
                    source.len()
                ),
            ));
        }
        let compiled = RegexBuilder::new(&regex)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| {
                StorageError::new(ErrorCode::InvalidQuery, "invalid watch pattern")
                    .with_context("pattern", source)
                    .with_source(e)
            })?;
        Ok(KeyMatcher {
            regex: Some(compiled),
        })
    }
}

/// Translates a glob into an anchored regex; every literal is escaped, so only
/// `*`, `?` and `\` mean anything.
fn glob_to_regex(glob: &str) -> Result<String> {
    let mut out = String::with_capacity(glob.len() * 2 + 8);
    // `(?s)` lets `*` and `?` cross newlines: keys may contain them.
    out.push_str("^(?s:");
    let mut chars = glob.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            '\\' => {
                let Some(escaped) = chars.next() else {
                    return Err(StorageError::new(
                        ErrorCode::InvalidQuery,
                        "glob pattern ends with a lone backslash",
                    )
                    .with_context("pattern", glob));
                };
                out.push_str(&regex::escape(escaped.encode_utf8(&mut [0; 4])));
            }
            other => out.push_str(&regex::escape(other.encode_utf8(&mut [0; 4]))),
        }
    }
    out.push_str(")$");
    Ok(out)
}

/// A compiled [`WatchPattern`].
#[derive(Debug, Clone)]
pub struct KeyMatcher {
    /// `None` matches every key.
    regex: Option<Regex>,
}

impl KeyMatcher {
    /// Whether `key` matches.
    pub fn matches(&self, key: &str) -> bool {
        self.regex.as_ref().is_none_or(|re| re.is_match(key))
    }
}

/// Locks a mutex, recovering from poisoning: every critical section of this
/// module leaves its data consistent even if a hook panicked elsewhere.
fn lock<V>(mutex: &Mutex<V>) -> MutexGuard<'_, V> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One subscriber's queue, shared by the hub (producer) and the subscription (consumer).
struct Queue<T> {
    state: Mutex<QueueState<T>>,
    capacity: usize,
}

struct QueueState<T> {
    events: VecDeque<WatchEvent<T>>,
    /// Batches dropped and not yet reported by a `Lagged` event.
    unreported: u64,
    /// Batches dropped in total.
    lagged: u64,
    waker: Option<Waker>,
    /// Set when the hub is gone: the stream ends once the queue is drained.
    closed: bool,
}

impl<T> Queue<T> {
    fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(QueueState {
                events: VecDeque::with_capacity(capacity.min(64)),
                unreported: 0,
                lagged: 0,
                waker: None,
                closed: false,
            }),
            capacity,
        }
    }

    /// Enqueues without ever waiting; a full queue loses its oldest change batch.
    fn push(&self, event: WatchEvent<T>) {
        let waker = {
            let mut state = lock(&self.state);
            if state.events.len() >= self.capacity {
                // Drop the oldest change batch rather than a resync notice: a lost
                // resync would hide that the subscriber must re-read.
                let victim = state
                    .events
                    .iter()
                    .position(|e| matches!(e, WatchEvent::Changes(_)))
                    .unwrap_or(0);
                if let Some(WatchEvent::Changes(_)) = state.events.remove(victim) {
                    state.unreported += 1;
                    state.lagged += 1;
                }
            }
            state.events.push_back(event);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn close(&self) {
        let waker = {
            let mut state = lock(&self.state);
            state.closed = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A live subscription: a stream of [`WatchEvent`]s. Dropping it stops delivery.
///
/// When the subscriber falls more than its capacity behind, the oldest batches are
/// dropped and a [`WatchEvent::Lagged`] event, counting them, is delivered before
/// the batches that follow. The stream ends when the store (its event hub) is dropped.
pub struct Subscription<T> {
    queue: Arc<Queue<T>>,
}

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("capacity", &self.queue.capacity)
            .field("pending", &self.pending())
            .field("lagged", &self.lagged())
            .finish()
    }
}

impl<T> Subscription<T> {
    /// Batches dropped for this subscriber so far because it fell behind.
    pub fn lagged(&self) -> u64 {
        lock(&self.queue.state).lagged
    }

    /// Events waiting to be read (a pending lag report counts as one).
    pub fn pending(&self) -> usize {
        let state = lock(&self.queue.state);
        state.events.len() + usize::from(state.unreported > 0)
    }

    /// The next event if one is waiting, without waiting.
    pub fn try_next(&mut self) -> Option<WatchEvent<T>> {
        let mut state = lock(&self.queue.state);
        Self::take(&mut state)
    }

    fn take(state: &mut QueueState<T>) -> Option<WatchEvent<T>> {
        if state.unreported > 0 {
            let missed = std::mem::take(&mut state.unreported);
            return Some(WatchEvent::Lagged { missed });
        }
        state.events.pop_front()
    }

    /// Stops delivery (same as dropping).
    pub fn unsubscribe(self) {}
}

impl<T> futures::Stream for Subscription<T> {
    type Item = WatchEvent<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = lock(&self.queue.state);
        if let Some(event) = Self::take(&mut state) {
            return Poll::Ready(Some(event));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

struct Subscriber<T> {
    matcher: KeyMatcher,
    /// Weak, so that dropping the [`Subscription`] unregisters it.
    queue: Weak<Queue<T>>,
}

struct Registry<T> {
    before: Vec<(HookId, BeforeHook<T>)>,
    after: Vec<(HookId, AfterHook<T>)>,
    subscribers: Vec<Subscriber<T>>,
}

/// The registry of hooks and subscribers an adapter embeds: it runs hooks,
/// filters change batches per watch pattern and keeps bounded queues.
///
/// Hooks run in registration order and are called without any lock of the hub
/// held, so a hook may register or remove hooks, or use the store, freely.
pub struct EventHub<T> {
    registry: RwLock<Registry<T>>,
    next_id: AtomicU64,
}

impl<T> fmt::Debug for EventHub<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("EventHub")
            .field("before_hooks", &registry.before.len())
            .field("after_hooks", &registry.after.len())
            .field("subscribers", &registry.subscribers.len())
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Default for EventHub<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> EventHub<T> {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry<T>> {
        self.registry.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry<T>> {
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Delivers `event` (built per subscriber from its matcher) to every live
    /// subscriber, pruning the dropped ones.
    fn deliver(&self, mut make: impl FnMut(&KeyMatcher) -> Option<WatchEvent<T>>) {
        let mut dead = false;
        {
            let registry = self.read();
            for sub in &registry.subscribers {
                match sub.queue.upgrade() {
                    Some(queue) => {
                        if let Some(event) = make(&sub.matcher) {
                            queue.push(event);
                        }
                    }
                    None => dead = true,
                }
            }
        }
        if dead {
            self.write()
                .subscribers
                .retain(|s| s.queue.strong_count() > 0);
        }
    }
}

impl<T: Send + Sync + 'static> EventHub<T> {
    /// An empty hub.
    pub fn new() -> Self {
        Self {
            registry: RwLock::new(Registry {
                before: Vec::new(),
                after: Vec::new(),
                subscribers: Vec::new(),
            }),
            next_id: AtomicU64::new(1),
        }
    }

    fn next_id(&self) -> HookId {
        HookId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Registers a before-hook.
    pub fn on_before(&self, hook: BeforeHook<T>) -> HookId {
        let id = self.next_id();
        self.write().before.push((id, hook));
        id
    }

    /// Registers an after-hook.
    pub fn on_after(&self, hook: AfterHook<T>) -> HookId {
        let id = self.next_id();
        self.write().after.push((id, hook));
        id
    }

    /// Removes a hook.
    pub fn off(&self, id: HookId) -> bool {
        let mut registry = self.write();
        let before = registry.before.len();
        registry.before.retain(|(h, _)| *h != id);
        let after = registry.after.len();
        registry.after.retain(|(h, _)| *h != id);
        before != registry.before.len() || after != registry.after.len()
    }

    /// Runs the before-hooks; the first error vetoes.
    ///
    /// # Errors
    /// The vetoing hook's error.
    pub fn before(&self, event: &BeforeEvent<'_, T>) -> Result<()> {
        let hooks: Vec<BeforeHook<T>> = self
            .read()
            .before
            .iter()
            .map(|(_, h)| Arc::clone(h))
            .collect();
        for hook in hooks {
            hook(event)?;
        }
        Ok(())
    }

    /// Runs the after-hooks.
    pub fn after(&self, event: &AfterEvent<'_, T>) {
        let hooks: Vec<AfterHook<T>> = self
            .read()
            .after
            .iter()
            .map(|(_, h)| Arc::clone(h))
            .collect();
        for hook in hooks {
            hook(event);
        }
    }

    /// Whether any before-hook is registered (to skip work when none is).
    pub fn has_before_hooks(&self) -> bool {
        !self.read().before.is_empty()
    }

    /// Whether any after-hook is registered.
    pub fn has_after_hooks(&self) -> bool {
        !self.read().after.is_empty()
    }

    /// Whether any subscriber is alive.
    pub fn has_subscribers(&self) -> bool {
        self.read()
            .subscribers
            .iter()
            .any(|s| s.queue.strong_count() > 0)
    }

    /// Whether any after-hook or subscriber is registered (to skip decoding when none is).
    pub fn has_listeners(&self) -> bool {
        let registry = self.read();
        !registry.after.is_empty()
            || registry
                .subscribers
                .iter()
                .any(|s| s.queue.strong_count() > 0)
    }

    /// Adds a subscriber.
    ///
    /// # Errors
    /// `InvalidQuery` for a bad pattern; `InvalidValue` for a zero capacity.
    // By value to mirror `ObservableStorage::watch`, whose adapters hand the pattern on.
    #[allow(clippy::needless_pass_by_value)]
    pub fn watch(&self, pattern: WatchPattern, capacity: usize) -> Result<Subscription<T>> {
        if capacity == 0 {
            return Err(StorageError::new(
                ErrorCode::InvalidValue,
                "a subscription needs a capacity of at least one batch",
            ));
        }
        let matcher = pattern.compile()?;
        let queue = Arc::new(Queue::new(capacity));
        self.write().subscribers.push(Subscriber {
            matcher,
            queue: Arc::downgrade(&queue),
        });
        Ok(Subscription { queue })
    }

    /// Delivers a committed batch to every subscriber whose pattern matches some
    /// of its keys (each receives only the matching changes). Never blocks:
    /// a full queue drops its oldest batch and counts the loss.
    pub fn publish(&self, batch: &ChangeBatch<T>) {
        if batch.changes.is_empty() {
            return;
        }
        self.deliver(|matcher| {
            let changes: Vec<_> = batch
                .changes
                .iter()
                .filter(|c| matcher.matches(&c.key))
                .cloned()
                .collect();
            (!changes.is_empty()).then(|| {
                WatchEvent::Changes(ChangeBatch {
                    sequence: batch.sequence,
                    resume_token: batch.resume_token.clone(),
                    changes,
                })
            })
        });
    }

    /// Sends [`WatchEvent::Resync`] to every subscriber.
    pub fn resync(&self, reason: &str) {
        self.deliver(|_| {
            Some(WatchEvent::Resync {
                reason: reason.to_owned(),
            })
        });
    }
}

/// Implements [`crate::ObservableStorage`] for a store `Name<T>` that keeps its
/// hooks and subscribers in an [`EventHub`]: each method forwards to the hub, and
/// a refused `watch` is tagged with the operation and the `backend` name.
///
/// The closure-like last argument says where the hub is, given the store.
///
/// ```text
/// storage_core::observable_via_hub!(MyStore, "mine", |store| &store.inner.hub);
/// ```
#[macro_export]
macro_rules! observable_via_hub {
    ($store:ident, $backend:expr, |$this:ident| $hub:expr) => {
        impl<T: $crate::StorageValue> $crate::ObservableStorage<T> for $store<T> {
            fn on_before(&self, hook: $crate::BeforeHook<T>) -> $crate::HookId {
                let $this = self;
                $hub.on_before(hook)
            }

            fn on_after(&self, hook: $crate::AfterHook<T>) -> $crate::HookId {
                let $this = self;
                $hub.on_after(hook)
            }

            fn off(&self, id: $crate::HookId) -> bool {
                let $this = self;
                $hub.off(id)
            }

            fn watch(
                &self,
                pattern: $crate::WatchPattern,
                capacity: usize,
            ) -> $crate::Result<$crate::Subscription<T>> {
                let $this = self;
                $hub.watch(pattern, capacity)
                    .map_err(|e| e.with_operation("watch").with_backend($backend))
            }
        }
    };
}

impl<T> Drop for EventHub<T> {
    fn drop(&mut self) {
        // Ends every subscriber's stream instead of leaving it pending forever.
        let registry = self
            .registry
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for sub in &registry.subscribers {
            if let Some(queue) = sub.queue.upgrade() {
                queue.close();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;
    use std::time::SystemTime;

    use futures::StreamExt;

    use super::*;
    use crate::types::{Change, ChangeKind};

    fn change(key: &str, value: i64) -> Change<i64> {
        Change {
            kind: ChangeKind::Set,
            key: key.to_owned(),
            old_value: None,
            new_value: Some(Arc::new(value)),
            timestamp: SystemTime::now(),
        }
    }

    fn batch(sequence: u64, keys: &[&str]) -> ChangeBatch<i64> {
        ChangeBatch {
            sequence,
            resume_token: None,
            changes: keys.iter().map(|k| change(k, 1)).collect(),
        }
    }

    fn keys_of(event: &WatchEvent<i64>) -> Vec<String> {
        match event {
            WatchEvent::Changes(b) => b.changes.iter().map(|c| c.key.clone()).collect(),
            other => panic!("expected changes, got {other:?}"),
        }
    }

    #[test]
    fn glob_matches_whole_keys_with_star_question_and_escape() -> Result<()> {
        let m = WatchPattern::glob("user:*").compile()?;
        assert!(m.matches("user:"));
        assert!(m.matches("user:1/a\nb"));
        assert!(!m.matches("xuser:1"));
        let m = WatchPattern::glob("a?c").compile()?;
        assert!(m.matches("abc"));
        assert!(m.matches("aéc"));
        assert!(!m.matches("ac"));
        assert!(!m.matches("abcd"));
        let m = WatchPattern::glob(r"a\*b.c[d]").compile()?;
        assert!(m.matches("a*b.c[d]"));
        assert!(!m.matches("axb.c[d]"));
        assert!(!m.matches("a*bxcd"));
        Ok(())
    }

    #[test]
    fn glob_with_trailing_backslash_is_invalid() {
        let err = WatchPattern::glob("abc\\")
            .compile()
            .expect_err("pattern must be rejected");
        assert_eq!(err.code(), ErrorCode::InvalidQuery);
    }

    #[test]
    fn regex_is_anchored_to_the_whole_key() -> Result<()> {
        let m = WatchPattern::regex("user:[0-9]+").compile()?;
        assert!(m.matches("user:42"));
        assert!(!m.matches("user:42x"));
        assert!(!m.matches("xuser:42"));
        // Alternation must not escape the anchors.
        let m = WatchPattern::regex("a|b").compile()?;
        assert!(m.matches("a"));
        assert!(!m.matches("ab"));
        Ok(())
    }

    #[test]
    fn bad_or_oversized_regex_is_invalid_query() {
        for pattern in [
            "(",
            "[a-",
            &"a".repeat(MAX_PATTERN_LEN + 1),
            "(?:a{1000}){1000}",
        ] {
            let err = WatchPattern::regex(pattern)
                .compile()
                .expect_err("pattern must be rejected");
            assert_eq!(err.code(), ErrorCode::InvalidQuery, "{pattern:.20}");
        }
    }

    #[test]
    fn all_matches_everything() -> Result<()> {
        assert!(WatchPattern::All.compile()?.matches("anything"));
        Ok(())
    }

    #[tokio::test]
    async fn subscribers_receive_batches_in_publish_order() -> Result<()> {
        let hub = EventHub::<i64>::new();
        let mut sub = hub.watch(WatchPattern::All, 16)?;
        for seq in 1..=5 {
            hub.publish(&batch(seq, &["k"]));
        }
        for seq in 1..=5 {
            match sub.next().await {
                Some(WatchEvent::Changes(b)) => assert_eq!(b.sequence, seq),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(sub.pending(), 0);
        Ok(())
    }

    #[test]
    fn publish_keeps_only_matching_changes_and_skips_unmatched_batches() -> Result<()> {
        let hub = EventHub::<i64>::new();
        let mut users = hub.watch(WatchPattern::glob("user:*"), 16)?;
        hub.publish(&batch(1, &["user:1", "order:1", "user:2"]));
        hub.publish(&batch(2, &["order:2"]));
        let first = users
            .try_next()
            .ok_or_else(|| StorageError::new(ErrorCode::Backend, "no event"))?;
        assert_eq!(keys_of(&first), ["user:1", "user:2"]);
        assert!(users.try_next().is_none());
        Ok(())
    }

    #[test]
    fn slow_subscriber_loses_oldest_batches_and_is_told() -> Result<()> {
        let hub = EventHub::<i64>::new();
        let mut sub = hub.watch(WatchPattern::All, 2)?;
        for seq in 1..=5 {
            hub.publish(&batch(seq, &["k"]));
        }
        assert_eq!(sub.lagged(), 3);
        assert_eq!(sub.pending(), 3);
        assert!(matches!(
            sub.try_next(),
            Some(WatchEvent::Lagged { missed: 3 })
        ));
        let seqs: Vec<u64> = std::iter::from_fn(|| sub.try_next())
            .map(|e| match e {
                WatchEvent::Changes(b) => b.sequence,
                _ => 0,
            })
            .collect();
        assert_eq!(seqs, [4, 5]);
        assert_eq!(sub.lagged(), 3);
        Ok(())
    }

    #[test]
    fn dropped_subscription_is_unregistered() -> Result<()> {
        let hub = EventHub::<i64>::new();
        let sub = hub.watch(WatchPattern::All, 4)?;
        assert!(hub.has_listeners());
        sub.unsubscribe();
        assert!(!hub.has_listeners());
        hub.publish(&batch(1, &["k"]));
        assert!(hub.read().subscribers.is_empty());
        Ok(())
    }

    #[test]
    fn zero_capacity_is_invalid_value() {
        let hub = EventHub::<i64>::new();
        let err = hub.watch(WatchPattern::All, 0).expect_err("zero capacity");
        assert_eq!(err.code(), ErrorCode::InvalidValue);
    }

    #[test]
    fn hooks_run_in_registration_order_and_first_veto_wins() {
        let hub = EventHub::<i64>::new();
        let log = Arc::new(StdMutex::new(Vec::new()));
        let l1 = Arc::clone(&log);
        let first = hub.on_before(Arc::new(move |_| {
            l1.lock()
                .map_err(|_| StorageError::new(ErrorCode::Backend, "poison"))?
                .push(1);
            Ok(())
        }));
        let l2 = Arc::clone(&log);
        hub.on_before(Arc::new(move |e| {
            l2.lock()
                .map_err(|_| StorageError::new(ErrorCode::Backend, "poison"))?
                .push(2);
            match e {
                BeforeEvent::Delete { .. } => {
                    Err(StorageError::new(ErrorCode::Unsupported, "no deletes"))
                }
                _ => Ok(()),
            }
        }));
        let l3 = Arc::clone(&log);
        hub.on_before(Arc::new(move |_| {
            l3.lock()
                .map_err(|_| StorageError::new(ErrorCode::Backend, "poison"))?
                .push(3);
            Ok(())
        }));
        assert!(hub.has_before_hooks());
        assert!(hub.before(&BeforeEvent::Get { key: "k" }).is_ok());
        let err = hub
            .before(&BeforeEvent::Delete { key: "k" })
            .expect_err("vetoed");
        assert_eq!(err.code(), ErrorCode::Unsupported);
        assert_eq!(*log.lock().expect("log lock"), [1, 2, 3, 1, 2]);
        assert!(hub.off(first));
        assert!(!hub.off(first));
        log.lock().expect("log lock").clear();
        assert!(hub.before(&BeforeEvent::Clear).is_ok());
        assert_eq!(*log.lock().expect("log lock"), [2, 3]);
    }

    #[test]
    fn after_hooks_run_and_can_be_removed() {
        let hub = EventHub::<i64>::new();
        let count = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&count);
        let id = hub.on_after(Arc::new(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        assert!(hub.has_listeners());
        hub.after(&AfterEvent::Clear { removed: 0 });
        assert!(hub.off(id));
        hub.after(&AfterEvent::Clear { removed: 0 });
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(!hub.has_listeners());
    }

    #[test]
    fn hook_ids_are_unique() {
        let hub = EventHub::<i64>::new();
        let a = hub.on_before(Arc::new(|_| Ok(())));
        let b = hub.on_after(Arc::new(|_| {}));
        assert_ne!(a, b);
    }

    #[test]
    fn resync_reaches_every_subscriber() -> Result<()> {
        let hub = EventHub::<i64>::new();
        let mut a = hub.watch(WatchPattern::glob("x"), 1)?;
        hub.resync("failover");
        assert!(
            matches!(a.try_next(), Some(WatchEvent::Resync { reason }) if reason == "failover")
        );
        Ok(())
    }

    #[tokio::test]
    async fn stream_wakes_on_publish_and_ends_when_hub_drops() -> Result<()> {
        let hub = Arc::new(EventHub::<i64>::new());
        let mut sub = hub.watch(WatchPattern::All, 4)?;
        let publisher = Arc::clone(&hub);
        let task = tokio::spawn(async move {
            tokio::task::yield_now().await;
            publisher.publish(&batch(7, &["k"]));
        });
        match sub.next().await {
            Some(WatchEvent::Changes(b)) => assert_eq!(b.sequence, 7),
            other => panic!("unexpected {other:?}"),
        }
        task.await
            .map_err(|e| StorageError::new(ErrorCode::Backend, e.to_string()))?;
        drop(hub);
        assert!(sub.next().await.is_none());
        Ok(())
    }
}
