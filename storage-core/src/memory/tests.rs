//! Behaviour tests of the memory store.
