//! Talking to single servers: `INFO replication`, `WAIT`, Sentinel queries.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo};
use storage_core::{ErrorCode, Result, StorageError};

use crate::config::GraphConfig;

use super::config::{host_port, node_id};
use crate::error::{BACKEND, redis_err};

/// How long a probe waits for a server to connect or answer: a paused server must not
/// stall a status report.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// One replica as its primary reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplicaLink {
    pub(crate) id: String,
    /// The replication offset the replica last acknowledged.
    pub(crate) offset: u64,
    /// Seconds since its last acknowledgement.
    pub(crate) lag: u64,
}

/// `INFO replication`, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ReplicationInfo {
    pub(crate) is_primary: bool,
    pub(crate) offset: u64,
    pub(crate) replicas: Vec<ReplicaLink>,
    /// For a replica: whether its link to the primary is up.
    pub(crate) link_up: bool,
}

impl ReplicationInfo {
    pub(crate) fn parse(text: &str) -> Self {
        let fields: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.trim().split_once(':'))
            .collect();
        let mut replicas = Vec::new();
        for (name, value) in &fields {
            if !(name.starts_with("slave") && name[5..].bytes().all(|b| b.is_ascii_digit())) {
                continue;
            }
            let parts: BTreeMap<&str, &str> =
                value.split(',').filter_map(|p| p.split_once('=')).collect();
            let (Some(ip), Some(port)) = (
                parts.get("ip"),
                parts.get("port").and_then(|p| p.parse::<u16>().ok()),
            ) else {
                continue;
            };
            replicas.push(ReplicaLink {
                id: node_id(ip, port),
                offset: parts
                    .get("offset")
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(0),
                lag: parts.get("lag").and_then(|o| o.parse().ok()).unwrap_or(0),
            });
        }
        Self {
            is_primary: fields.get("role") == Some(&"master"),
            offset: fields
                .get("master_repl_offset")
                .and_then(|o| o.parse().ok())
                .unwrap_or(0),
            replicas,
            link_up: fields.get("master_link_status") == Some(&"up"),
        }
    }

    pub(crate) fn link(&self, id: &str) -> Option<&ReplicaLink> {
        self.replicas.iter().find(|r| r.id == id)
    }
}

/// Connects to the server `id` (`host:port`) with the store's credentials.
pub(crate) async fn connect(
    id: &str,
    config: &GraphConfig,
    timeout: Option<Duration>,
) -> Result<MultiplexedConnection> {
    let mut info = format!("redis://{id}")
        .as_str()
        .into_connection_info()
        .map_err(|e| {
            StorageError::new(ErrorCode::InvalidConfig, format!("bad address {id}: {e}"))
                .with_backend(BACKEND)
        })?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password.expose());
    }
    info = info.set_redis_settings(settings);
    let client = redis::Client::open(info).map_err(redis_err("connect"))?;
    let conn_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(PROBE_TIMEOUT))
        .set_response_timeout(timeout);
    client
        .get_multiplexed_async_connection_with_config(&conn_config)
        .await
        .map_err(|e| {
            StorageError::new(ErrorCode::ConnectionFailed, format!("{id}: {e}"))
                .with_backend(BACKEND)
                .with_context("node", id)
        })
}

/// `INFO replication` on an open connection; errors are tagged with `operation`.
pub(crate) async fn info_on(
    conn: &mut MultiplexedConnection,
    operation: &'static str,
) -> Result<ReplicationInfo> {
    let text: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await
        .map_err(redis_err(operation))?;
    Ok(ReplicationInfo::parse(&text))
}

/// `INFO replication` of the server `id`, or an error when it does not answer in time.
pub(crate) async fn replication_info(id: &str, config: &GraphConfig) -> Result<ReplicationInfo> {
    let work = async {
        let mut conn = connect(id, config, Some(PROBE_TIMEOUT)).await?;
        info_on(&mut conn, "info").await
    };
    match tokio::time::timeout(PROBE_TIMEOUT * 2, work).await {
        Ok(result) => result,
        Err(_) => Err(StorageError::new(
            ErrorCode::Timeout,
            format!("{id} did not answer within {:?}", PROBE_TIMEOUT * 2),
        )
        .with_backend(BACKEND)),
    }
}

/// The primary's address as the Sentinels know it: the first Sentinel that answers.
pub(crate) async fn sentinel_primary(sentinels: &[String], master: &str) -> Result<String> {
    let mut last = None;
    for sentinel in sentinels {
        let Some((host, port)) = host_port(sentinel) else {
            continue;
        };
        let answer = async {
            let mut conn = connect(
                &node_id(&host, port),
                &GraphConfig::default(),
                Some(PROBE_TIMEOUT),
            )
            .await?;
            let reply: Option<(String, String)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master)
                .query_async(&mut conn)
                .await
                .map_err(redis_err("sentinel"))?;
            reply
                .and_then(|(h, p)| Some(node_id(&h, p.parse().ok()?)))
                .ok_or_else(|| {
                    StorageError::new(
                        ErrorCode::ConnectionFailed,
                        format!("sentinel {sentinel} does not know {master:?}"),
                    )
                })
        };
        match tokio::time::timeout(PROBE_TIMEOUT * 2, answer).await {
            Ok(Ok(id)) => return Ok(id),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {}
        }
    }
    Err(last
        .unwrap_or_else(|| StorageError::new(ErrorCode::ConnectionFailed, "no sentinel answered"))
        .with_backend(BACKEND))
}

/// The replicas the Sentinels know for `master` (including those they see as down).
pub(crate) async fn sentinel_replicas(sentinels: &[String], master: &str) -> Vec<String> {
    for sentinel in sentinels {
        let Some((host, port)) = host_port(sentinel) else {
            continue;
        };
        let answer = async {
            let mut conn = connect(
                &node_id(&host, port),
                &GraphConfig::default(),
                Some(PROBE_TIMEOUT),
            )
            .await
            .ok()?;
            let reply: Vec<Vec<String>> = redis::cmd("SENTINEL")
                .arg("replicas")
                .arg(master)
                .query_async(&mut conn)
                .await
                .ok()?;
            Some(
                reply
                    .iter()
                    .filter_map(|flat| {
                        let get = |k: &str| {
                            flat.chunks(2)
                                .find(|p| p.first().map(String::as_str) == Some(k))
                                .and_then(|p| p.get(1).cloned())
                        };
                        Some(node_id(&get("ip")?, get("port")?.parse().ok()?))
                    })
                    .collect::<Vec<_>>(),
            )
        };
        if let Ok(Some(ids)) = tokio::time::timeout(PROBE_TIMEOUT * 2, answer).await {
            return ids;
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_replication_parses() {
        let text = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
            slave0:ip=127.0.0.1,port=7001,state=online,offset=120,lag=0\r\n\
            slave1:ip=127.0.0.1,port=7002,state=online,offset=98,lag=3\r\n\
            master_repl_offset:120\r\nslave_read_only:1\r\n";
        let info = ReplicationInfo::parse(text);
        assert!(info.is_primary);
        assert_eq!(info.offset, 120);
        assert_eq!(info.replicas.len(), 2);
        assert_eq!(
            info.link("127.0.0.1:7002").map(|l| (l.offset, l.lag)),
            Some((98, 3))
        );
        let replica = ReplicationInfo::parse("role:slave\nmaster_link_status:up\n");
        assert!(!replica.is_primary && replica.link_up && replica.replicas.is_empty());
    }
}
