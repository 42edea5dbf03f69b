//! FalkorDB adapter (docs written below once the tiers are in).

#![forbid(unsafe_code)]

mod backend;
mod config;
mod cypher;
mod embedded;
mod error;

pub use backend::GraphStorage;
pub use config::{GraphConfig, Secret, TlsConfig};
pub use embedded::{EmbeddedServer, Listen, ServerBinaries};
