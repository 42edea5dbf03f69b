//! The replication section of a graph store: which servers hold the data, and where.
//!
//! Either a fixed topology (`primary` and `replicas`) or Sentinels (`sentinels` and
//! `master_name`), which name the primary and follow a failover. Every address may
//! carry a data-centre tag, which consistency level EACH and reads at LOCAL use.
//!
//! ```toml
//! [replication]
//! primary = { address = "10.0.0.1:6379", datacenter = "east" }
//! replicas = [
//!   { address = "10.0.0.2:6379", datacenter = "east" },
//!   { address = "10.0.1.1:6379", datacenter = "west" },
//! ]
//! local_datacenter = "west"
//! wait_timeout_ms = 1000
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use storage_core::{ErrorCode, Result, StorageError};

use crate::error::BACKEND;

/// One server of the deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAddress {
    /// `host:port`, or a `redis://` / `falkor://` URL of the server.
    pub address: String,
    /// The data centre the server runs in. Default: none.
    #[serde(default)]
    pub datacenter: Option<String>,
}

impl NodeAddress {
    /// An untagged address.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            datacenter: None,
        }
    }

    /// The address tagged with a data centre.
    #[must_use]
    pub fn in_datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.datacenter = Some(datacenter.into());
        self
    }
}

/// The replication section of a graph configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// The primary of a fixed topology. Default: none (then Sentinels name it).
    #[serde(default)]
    pub primary: Option<NodeAddress>,
    /// The replicas. With Sentinels, replicas are also discovered; listing them here
    /// tags them with a data centre and counts them before they are first seen.
    #[serde(default)]
    pub replicas: Vec<NodeAddress>,
    /// Sentinel addresses (`host:port`). Default: none.
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// The name the Sentinels monitor the primary under. Required with Sentinels.
    #[serde(default)]
    pub master_name: Option<String>,
    /// Data-centre tags of the primary and of discovered nodes, by `host:port`
    /// (with Sentinels the primary changes, so its tag goes here). Default: none.
    #[serde(default)]
    pub datacenters: Vec<NodeAddress>,
    /// The client's data centre: reads at LOCAL go to a node there. Default: none
    /// (LOCAL reads go to the primary).
    #[serde(default)]
    pub local_datacenter: Option<String>,
    /// How long a write at a consistency level waits for acknowledgements. Default: 1000.
    #[serde(default = "default_wait_timeout_ms")]
    pub wait_timeout_ms: u64,
    /// A replica whose last acknowledgement is older than this is reported degraded.
    /// Default: 1000 (replicas acknowledge every second).
    #[serde(default = "default_max_lag_ms")]
    pub max_lag_ms: u64,
}

fn default_wait_timeout_ms() -> u64 {
    1000
}

fn default_max_lag_ms() -> u64 {
    1000
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            primary: None,
            replicas: Vec::new(),
            sentinels: Vec::new(),
            master_name: None,
            datacenters: Vec::new(),
            local_datacenter: None,
            wait_timeout_ms: default_wait_timeout_ms(),
            max_lag_ms: default_max_lag_ms(),
        }
    }
}

impl ReplicationConfig {
    /// A fixed topology: `primary` and its `replicas`.
    pub fn fixed(primary: NodeAddress, replicas: Vec<NodeAddress>) -> Self {
        Self {
            primary: Some(primary),
            replicas,
            ..Self::default()
        }
    }

    /// A topology the Sentinels at `sentinels` know as `master_name`.
    pub fn sentinel(sentinels: Vec<String>, master_name: impl Into<String>) -> Self {
        Self {
            sentinels,
            master_name: Some(master_name.into()),
            ..Self::default()
        }
    }

    /// The wait for acknowledgements.
    pub fn wait_timeout(&self) -> Duration {
        Duration::from_millis(self.wait_timeout_ms)
    }

    /// The acknowledgement age past which a replica is degraded.
    pub fn max_lag(&self) -> Duration {
        Duration::from_millis(self.max_lag_ms)
    }

    /// Checks the section: either a primary or Sentinels with a master name, and
    /// every address a `host:port`.
    ///
    /// # Errors
    /// `InvalidConfig` naming the problem.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |m: String| Err(StorageError::new(ErrorCode::InvalidConfig, m).with_backend(BACKEND));
        match (&self.primary, self.sentinels.is_empty()) {
            (Some(_), false) => {
                return bad("replication: give a primary or sentinels, not both".into());
            }
            (None, true) => {
                return bad("replication: give a primary or sentinels and a master name".into());
            }
            (None, false) if self.master_name.as_deref().is_none_or(str::is_empty) => {
                return bad("replication: sentinels need a master_name".into());
            }
            _ => {}
        }
        let all = self
            .primary
            .iter()
            .chain(&self.replicas)
            .chain(&self.datacenters)
            .map(|n| n.address.as_str())
            .chain(self.sentinels.iter().map(String::as_str));
        for address in all {
            if host_port(address).is_none() {
                return bad(format!(
                    "replication: bad address {address:?} (want host:port)"
                ));
            }
        }
        if self.wait_timeout_ms == 0 {
            return bad("replication: wait_timeout_ms must be positive".into());
        }
        Ok(())
    }

    /// The configured data centre of the node at `id` (`host:port`), if any.
    pub(crate) fn datacenter_of(&self, id: &str) -> Option<String> {
        self.primary
            .iter()
            .chain(&self.replicas)
            .chain(&self.datacenters)
            .find(|n| host_port(&n.address).is_some_and(|(h, p)| node_id(&h, p) == id))
            .and_then(|n| n.datacenter.clone())
    }

    /// Every data centre named in the section.
    pub(crate) fn named_datacenters(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .primary
            .iter()
            .chain(&self.replicas)
            .chain(&self.datacenters)
            .filter_map(|n| n.datacenter.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// `(host, port)` of `host:port` or a `redis://` / `falkor://` URL (user-info dropped).
pub(crate) fn host_port(address: &str) -> Option<(String, u16)> {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let rest = rest.split(['/', '?']).next().unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    (!host.is_empty()).then(|| (host.trim_matches(['[', ']']).to_owned(), port))
}

/// The id of a node: `host:port`, with `localhost` spelled as the loopback address the
/// servers report.
pub(crate) fn node_id(host: &str, port: u16) -> String {
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_in_every_spelling() {
        assert_eq!(
            host_port("127.0.0.1:6379"),
            Some(("127.0.0.1".into(), 6379))
        );
        assert_eq!(
            host_port("redis://u:p@localhost:7000/0"),
            Some(("localhost".into(), 7000))
        );
        assert_eq!(host_port("falkor://h:1"), Some(("h".into(), 1)));
        assert_eq!(host_port("nohost"), None);
        assert_eq!(host_port("h:0"), None);
        assert_eq!(host_port(":1"), None);
        assert_eq!(node_id("localhost", 5), "127.0.0.1:5");
    }

    #[test]
    fn validation_needs_exactly_one_topology() {
        assert!(ReplicationConfig::default().validate().is_err());
        let fixed = ReplicationConfig::fixed(
            NodeAddress::new("127.0.0.1:1").in_datacenter("a"),
            vec![NodeAddress::new("127.0.0.1:2").in_datacenter("b")],
        );
        assert!(fixed.validate().is_ok());
        assert_eq!(fixed.datacenter_of("127.0.0.1:2").as_deref(), Some("b"));
        assert_eq!(
            fixed.named_datacenters(),
            vec!["a".to_owned(), "b".to_owned()]
        );
        let both = ReplicationConfig {
            sentinels: vec!["127.0.0.1:3".into()],
            ..fixed.clone()
        };
        let err = both.validate().err().map(|e| e.code());
        assert_eq!(err, Some(ErrorCode::InvalidConfig));
        let nameless = ReplicationConfig {
            master_name: None,
            ..ReplicationConfig::sentinel(vec!["127.0.0.1:3".into()], "m")
        };
        assert!(nameless.validate().is_err());
        let bad = ReplicationConfig::fixed(NodeAddress::new("nowhere"), Vec::new());
        assert!(bad.validate().is_err());
    }

    #[test]
    fn the_section_reads_from_toml() -> std::result::Result<(), toml::de::Error> {
        let text = r#"
            sentinels = ["127.0.0.1:26379"]
            master_name = "mymaster"
            datacenters = [{ address = "127.0.0.1:6379", datacenter = "east" }]
        "#;
        let config: ReplicationConfig = toml::from_str(text)?;
        assert_eq!(config.wait_timeout_ms, 1000);
        assert!(config.validate().is_ok());
        assert_eq!(
            config.datacenter_of("127.0.0.1:6379").as_deref(),
            Some("east")
        );
        Ok(())
    }
}
