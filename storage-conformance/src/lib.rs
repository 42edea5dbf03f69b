//! # storage-conformance
//!
//! One conformance suite per capability tier. An adapter writes a [`Harness`] (how to open an
//! isolated store) and invokes one macro per tier it implements; each macro expands into a
//! module of individually named `#[test]`s, so a failure names the broken property
//! (`batch_conformance::failed_batch_applies_nothing`). `docs/adding-an-adapter.md` lists what a
//! new adapter must pass, in order.
//!
//! ## Quick start
//! ```
//! // tests/conformance.rs of an adapter crate
//! use storage_conformance::{MemoryHarness, batch_suite, storage_suite};
//!
//! storage_suite!(MemoryHarness::new());
//! batch_suite!(MemoryHarness::new());
//! # fn main() {
//! // A check is a plain async function; run one directly to debug it.
//! let outcome = storage_conformance::runner::block_on_check(
//!     storage_conformance::storage::delete_of_missing_key_returns_false(&MemoryHarness::new()),
//! );
//! assert!(outcome.is_ok());
//! # }
//! ```
//!
//! Invoking a tier's macro for a store that lacks the tier does not compile: every check is
//! bounded on the tier's harness trait ([`BatchHarness`], [`QueryableHarness`], …). For a store
//! with the storage tier only, this compiles:
//!
//! ```
//! # use storage_conformance::Harness;
//! # use storage_core::{Capabilities, MemoryStorage, Result, ResultStream, Storage, StorageValue, async_trait};
//! # /// A store with the storage tier only.
//! # struct OnlyKv<T>(MemoryStorage<T>);
//! # #[async_trait]
//! # impl<T: StorageValue> Storage<T> for OnlyKv<T> {
//! #     fn capabilities(&self) -> Capabilities { Capabilities::new("kv", storage_core::Tier::Storage) }
//! #     async fn get(&self, key: &str) -> Result<Option<T>> { self.0.get(key).await }
//! #     async fn set(&self, key: &str, value: &T) -> Result<()> { self.0.set(key, value).await }
//! #     async fn delete(&self, key: &str) -> Result<bool> { self.0.delete(key).await }
//! #     async fn has(&self, key: &str) -> Result<bool> { self.0.has(key).await }
//! #     async fn clear(&self) -> Result<()> { self.0.clear().await }
//! #     async fn size(&self) -> Result<u64> { self.0.size().await }
//! #     fn keys(&self) -> ResultStream<'_, String> { self.0.keys() }
//! #     fn values(&self) -> ResultStream<'_, T> { self.0.values() }
//! #     fn entries(&self) -> ResultStream<'_, (String, T)> { self.0.entries() }
//! # }
//! # struct KvHarness;
//! # impl<T: StorageValue> Harness<T> for KvHarness {
//! #     type Store = OnlyKv<T>;
//! #     async fn open(&self, _: &str) -> Result<OnlyKv<T>> { Ok(OnlyKv(MemoryStorage::new())) }
//! # }
//! storage_conformance::storage_suite!(KvHarness);
//! # fn main() {}
//! ```
//!
//! and the same store under the batch suite does not:
//!
//! ```compile_fail
//! # use storage_conformance::Harness;
//! # use storage_core::{Capabilities, MemoryStorage, Result, ResultStream, Storage, StorageValue, async_trait};
//! # /// A store with the storage tier only.
//! # struct OnlyKv<T>(MemoryStorage<T>);
//! # #[async_trait]
//! # impl<T: StorageValue> Storage<T> for OnlyKv<T> {
//! #     fn capabilities(&self) -> Capabilities { Capabilities::new("kv", storage_core::Tier::Storage) }
//! #     async fn get(&self, key: &str) -> Result<Option<T>> { self.0.get(key).await }
//! #     async fn set(&self, key: &str, value: &T) -> Result<()> { self.0.set(key, value).await }
//! #     async fn delete(&self, key: &str) -> Result<bool> { self.0.delete(key).await }
//! #     async fn has(&self, key: &str) -> Result<bool> { self.0.has(key).await }
//! #     async fn clear(&self) -> Result<()> { self.0.clear().await }
//! #     async fn size(&self) -> Result<u64> { self.0.size().await }
//! #     fn keys(&self) -> ResultStream<'_, String> { self.0.keys() }
//! #     fn values(&self) -> ResultStream<'_, T> { self.0.values() }
//! #     fn entries(&self) -> ResultStream<'_, (String, T)> { self.0.entries() }
//! # }
//! # struct KvHarness;
//! # impl<T: StorageValue> Harness<T> for KvHarness {
//! #     type Store = OnlyKv<T>;
//! #     async fn open(&self, _: &str) -> Result<OnlyKv<T>> { Ok(OnlyKv(MemoryStorage::new())) }
//! # }
//! storage_conformance::batch_suite!(KvHarness);
//! # fn main() {}
//! ```
//!
//! ## What the suites contain
//! - hand-written checks, one per rule of ARCHITECTURE §3, named as sentences, each a
//!   `pub async fn` returning [`CheckResult`];
//! - model-based property tests: random operation sequences against a `BTreeMap` model (and a
//!   savepoint stack for transactions), compared after every step and shrunk on failure;
//! - differential query tests against the reference evaluator, and a hand-written corpus in
//!   `testdata/*.toml` that the evaluator passes too ([`corpus`]);
//! - the Hermitage isolation anomalies on concurrent transactions ([`hermitage`]);
//! - bad inputs: invalid and hostile keys, edge and unencodable values, hostile queries
//!   ([`bad_input`]);
//! - persistence and SIGKILL crash tests for persistent stores ([`persistence`], [`crash`]);
//! - a FalkorDB server harness: primary, replicas, Sentinels on free loopback ports ([`server`]).
//!
//! Property case counts follow `PROPTEST_CASES` (default 32); failing seeds land in
//! `proptest-regressions/` of the crate that runs the suite. `CONFORMANCE_CRASH_TRIALS`
//! (default 200) sets the kills per crash run, `CONFORMANCE_CHECK_TIMEOUT_SECS` (default 300)
//! the longest a check may run.
//!
//! ## Crate features
//! None.
//!
//! ## Modules
//! - [`harness`]: the [`Harness`] trait, the per-tier harness traits, [`MemoryHarness`];
//! - one module of checks per suite: [`storage`], [`batch`], [`model`], [`query`],
//!   [`bad_input`], [`indexed`], [`transactional`], [`hermitage`], [`observable`],
//!   [`persistence`], [`crash`];
//! - what checks are built from: [`check`], [`support`], [`prop`], [`runner`], [`values`],
//!   [`corpus`];
//! - [`server`]: starting FalkorDB for tests.

#![forbid(unsafe_code)]

#[macro_use]
pub mod check;
pub mod bad_input;
pub mod batch;
pub mod corpus;
pub mod crash;
pub mod distributed;
pub mod harness;
pub mod hermitage;
pub mod indexed;
mod macros;
pub mod model;
pub mod observable;
pub mod persistence;
pub mod prop;
pub mod query;
pub mod runner;
pub mod server;
pub mod storage;
pub mod support;
pub mod transactional;
pub mod values;

pub use check::{CheckResult, Context, Failure, expect_error};
pub use harness::{
    BatchHarness, Harness, IndexedHarness, MemoryHarness, ObservableHarness, QueryableHarness,
    StorageHarness, TransactionalHarness, fresh_namespace,
};
pub use prop::Regressions;
pub use values::{Doc, Reading};

/// Compile-time check that the public types can cross threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Failure>();
    assert_send_sync::<MemoryHarness>();
    assert_send_sync::<Regressions>();
    assert_send_sync::<Doc>();
    assert_send_sync::<Reading>();
    assert_send_sync::<corpus::Fixture>();
    assert_send_sync::<server::FalkorServer>();
    assert_send_sync::<server::FalkorCluster>();
};
