//! Conformance suites (to be written).
