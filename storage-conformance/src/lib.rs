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
//! bounded on the tier's harness trait ([`BatchHarness`], [`QueryableHarness`], …).
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
