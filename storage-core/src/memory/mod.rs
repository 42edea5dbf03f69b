//! `MemoryStorage`: the in-memory reference store.

use std::marker::PhantomData;

/// The in-memory reference store: every tier but Distributed.
pub struct MemoryStorage<T> {
    _marker: PhantomData<T>,
}

impl<T> MemoryStorage<T> {
    /// An empty store.
    pub fn new() -> Self {
        todo!("memory helper")
    }
}
