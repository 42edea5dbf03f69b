//! FalkorDB adapter (docs written below once the tiers are in).

#![forbid(unsafe_code)]

mod backend;
mod config;
mod cypher;
mod embedded;
mod error;
mod observable;
mod query;
mod transaction;
mod unique;

pub use backend::GraphStorage;
pub use config::{GraphConfig, STREAM_MAX_LEN, Secret, TlsConfig};
pub use embedded::{EmbeddedServer, Listen, ServerBinaries};
pub use transaction::GraphTransaction;
