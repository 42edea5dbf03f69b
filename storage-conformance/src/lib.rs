//! # storage-conformance
//!
//! One conformance suite per capability tier. An adapter writes a [`Harness`] (how to open
//! an isolated store) and invokes one macro per tier it implements; each macro expands into a
//! module of individually named `#[test]`s, so a failure names the broken property
//! (`batch_conformance::failed_batch_applies_nothing`).
//!
//! ## Quick start
//! ```ignore
//! // tests/conformance.rs of an adapter crate
//! use storage_conformance::{MemoryHarness, batch_suite, storage_suite};
//!
//! storage_suite!(MemoryHarness::new());
//! batch_suite!(MemoryHarness::new());
//! ```
//!
//! Invoking a tier's macro for a store that lacks the tier does not compile: every check is
//! bounded on the tier's harness trait ([`BatchHarness`], [`QueryableHarness`], …).
//!
//! ## What the suites contain
//! - hand-written checks, one per rule of ARCHITECTURE §3, named as sentences;
//! - model-based property tests: random operation sequences against a `BTreeMap` model,
//!   compared after every step and shrunk on failure; case counts follow `PROPTEST_CASES`
//!   (default 32) and failing seeds land in `proptest-regressions/` of the calling crate;
//! - bad inputs: invalid and hostile keys, unencodable and edge values.
//!
//! ## Crate features
//! None.
//!
//! ## Modules
//! - [`harness`]: the [`Harness`] trait, per-tier harness traits, [`MemoryHarness`];
//! - [`storage`], [`batch`], [`model`]: the checks, as plain async functions;
//! - [`check`], [`support`], [`prop`], [`runner`]: what checks are built from;
//! - [`values`]: the value types and edge cases the checks draw from.

#![forbid(unsafe_code)]

#[macro_use]
pub mod check;
pub mod bad_input;
pub mod batch;
pub mod corpus;
pub mod harness;
pub mod hermitage;
pub mod indexed;
mod macros;
pub mod model;
pub mod observable;
pub mod prop;
pub mod query;
pub mod runner;
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
