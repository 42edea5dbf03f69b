//! Hooks, change subscriptions and the event hub adapters share.

use std::sync::Arc;

use crate::error::Result;
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

impl WatchPattern {
    /// Compiles the pattern.
    ///
    /// # Errors
    /// `InvalidQuery` for a malformed or oversized pattern.
    pub fn compile(&self) -> Result<KeyMatcher> {
        todo!("events helper")
    }
}

/// A compiled [`WatchPattern`].
#[derive(Debug, Clone)]
pub struct KeyMatcher {
    _private: (),
}

impl KeyMatcher {
    /// Whether `key` matches.
    pub fn matches(&self, key: &str) -> bool {
        let _ = key;
        todo!("events helper")
    }
}

/// A live subscription: a stream of [`WatchEvent`]s. Dropping it stops delivery.
pub struct Subscription<T> {
    _marker: std::marker::PhantomData<T>,
}

impl<T> Subscription<T> {
    /// Batches dropped for this subscriber so far because it fell behind.
    pub fn lagged(&self) -> u64 {
        todo!("events helper")
    }

    /// Events waiting to be read.
    pub fn pending(&self) -> usize {
        todo!("events helper")
    }

    /// Stops delivery (same as dropping).
    pub fn unsubscribe(self) {}
}

impl<T> futures::Stream for Subscription<T> {
    type Item = WatchEvent<T>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let _ = cx;
        todo!("events helper")
    }
}

/// The registry of hooks and subscribers an adapter embeds: it runs hooks,
/// filters change batches per watch pattern and keeps bounded queues.
pub struct EventHub<T> {
    _marker: std::marker::PhantomData<T>,
}

impl<T: Send + Sync + 'static> EventHub<T> {
    /// An empty hub.
    pub fn new() -> Self {
        todo!("events helper")
    }

    /// Registers a before-hook.
    pub fn on_before(&self, hook: BeforeHook<T>) -> HookId {
        let _ = hook;
        todo!("events helper")
    }

    /// Registers an after-hook.
    pub fn on_after(&self, hook: AfterHook<T>) -> HookId {
        let _ = hook;
        todo!("events helper")
    }

    /// Removes a hook.
    pub fn off(&self, id: HookId) -> bool {
        let _ = id;
        todo!("events helper")
    }

    /// Runs the before-hooks; the first error vetoes.
    ///
    /// # Errors
    /// The vetoing hook's error.
    pub fn before(&self, event: &BeforeEvent<'_, T>) -> Result<()> {
        let _ = event;
        todo!("events helper")
    }

    /// Runs the after-hooks.
    pub fn after(&self, event: &AfterEvent<'_, T>) {
        let _ = event;
        todo!("events helper")
    }

    /// Whether any before-hook is registered (to skip work when none is).
    pub fn has_before_hooks(&self) -> bool {
        todo!("events helper")
    }

    /// Whether any after-hook or subscriber is registered (to skip decoding when none is).
    pub fn has_listeners(&self) -> bool {
        todo!("events helper")
    }

    /// Adds a subscriber.
    ///
    /// # Errors
    /// `InvalidQuery` for a bad pattern; `InvalidValue` for a zero capacity.
    pub fn watch(&self, pattern: WatchPattern, capacity: usize) -> Result<Subscription<T>> {
        let _ = (pattern, capacity);
        todo!("events helper")
    }

    /// Delivers a committed batch to every subscriber whose pattern matches some
    /// of its keys (each receives only the matching changes). Never blocks:
    /// a full queue drops its oldest batch and counts the loss.
    pub fn publish(&self, batch: &ChangeBatch<T>) {
        let _ = batch;
        todo!("events helper")
    }

    /// Sends [`WatchEvent::Resync`] to every subscriber.
    pub fn resync(&self, reason: &str) {
        let _ = reason;
        todo!("events helper")
    }
}
