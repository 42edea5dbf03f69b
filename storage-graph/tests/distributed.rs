//! The distributed suite against real FalkorDB deployments the conformance server
//! harness starts on loopback ports: a primary, two replicas and, for failover, three
//! Sentinels.

use std::time::Duration;

use storage_conformance::distributed::DistributedHarness;
use storage_conformance::distributed_suite;
use storage_conformance::server::FalkorCluster;
use storage_core::Result;
use storage_graph::{DistributedGraphStorage, GraphConfig, NodeAddress, ReplicationConfig};

struct GraphDeployment;

impl DistributedHarness for GraphDeployment {
    type Store = DistributedGraphStorage<serde_json::Value>;

    async fn open(
        &self,
        cluster: &FalkorCluster,
        namespace: &str,
        wait_timeout: Duration,
    ) -> Result<Self::Store> {
        let address = |port: u16| format!("127.0.0.1:{port}");
        let primary = NodeAddress::new(address(cluster.primary.port())).in_datacenter("a");
        let tags = vec![
            NodeAddress::new(address(cluster.replicas[0].port())).in_datacenter("a"),
            NodeAddress::new(address(cluster.replicas[1].port())).in_datacenter("b"),
        ];
        let mut replication = if cluster.sentinels.is_empty() {
            ReplicationConfig::fixed(primary, tags)
        } else {
            let mut config = ReplicationConfig::sentinel(cluster.sentinel_addresses(), "mymaster");
            config.datacenters = std::iter::once(primary).chain(tags).collect();
            config
        };
        replication.wait_timeout_ms = u64::try_from(wait_timeout.as_millis()).unwrap_or(1000);
        let graph = GraphConfig {
            database: namespace.to_owned(),
            ..GraphConfig::default()
        };
        DistributedGraphStorage::open(graph, replication).await
    }
}

distributed_suite!(GraphDeployment);
