//! Every suite against the in-memory reference store: it must pass them all.

use storage_conformance::{
    MemoryHarness, batch_suite, indexed_suite, observable_suite, queryable_suite, storage_suite,
    transactional_suite,
};

storage_suite!(MemoryHarness::new());
batch_suite!(MemoryHarness::new());
queryable_suite!(MemoryHarness::new());
indexed_suite!(MemoryHarness::new());
transactional_suite!(MemoryHarness::new());
observable_suite!(MemoryHarness::new());
