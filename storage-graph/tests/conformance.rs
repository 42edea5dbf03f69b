//! Every conformance suite, for every tier `GraphStorage` claims, against a FalkorDB
//! server this test binary starts on a private Unix socket (never a server the machine
//! happens to run) and stops when it exits. Each namespace is its own graph.

use std::sync::OnceLock;

use storage_conformance::{
    Harness, batch_suite, indexed_suite, observable_suite, queryable_suite, storage_suite,
    transactional_suite,
};
use storage_core::{Result, StorageValue};
use storage_graph::{EmbeddedServer, GraphConfig, GraphStorage};

fn server() -> &'static EmbeddedServer {
    static SERVER: OnceLock<EmbeddedServer> = OnceLock::new();
    SERVER.get_or_init(|| match EmbeddedServer::start() {
        Ok(server) => server,
        Err(e) => panic!("the graph conformance tests need a FalkorDB server: {e}"),
    })
}

/// Opens each namespace as its own graph on the shared test server.
struct GraphHarness;

impl<T: StorageValue> Harness<T> for GraphHarness {
    type Store = GraphStorage<T>;

    async fn open(&self, namespace: &str) -> Result<GraphStorage<T>> {
        GraphStorage::open(GraphConfig {
            url: Some(server().url().to_owned()),
            database: namespace.to_owned(),
            ..GraphConfig::default()
        })
        .await
    }

    /// Overwrites the stored value of `key` with bytes no codec wrote: a truncated
    /// header followed by text that is not JSON.
    async fn corrupt(&self, namespace: &str, key: &str) -> Result<bool> {
        let fail = |e: redis::RedisError| {
            storage_core::StorageError::new(storage_core::ErrorCode::Backend, e.to_string())
        };
        let client = redis::Client::open(server().url()).map_err(fail)?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(fail)?;
        let hex = key.bytes().fold(String::new(), |mut out, b| {
            use std::fmt::Write as _;
            let _ = write!(out, "{b:02x}");
            out
        });
        let query = format!(
            "CYPHER k={} MATCH (n:Entry {{kh: $k}}) SET n.v = 't9VM|{{not json' RETURN count(n)",
            falkordb::to_cypher_param(&hex).map_err(|e| {
                storage_core::StorageError::new(storage_core::ErrorCode::Backend, e.to_string())
            })?
        );
        redis::cmd("GRAPH.QUERY")
            .arg(namespace)
            .arg(query)
            .query_async::<redis::Value>(&mut conn)
            .await
            .map_err(fail)?;
        Ok(true)
    }
}

storage_suite!(GraphHarness);
batch_suite!(GraphHarness);
queryable_suite!(GraphHarness);
indexed_suite!(GraphHarness);
transactional_suite!(GraphHarness);
observable_suite!(GraphHarness);
