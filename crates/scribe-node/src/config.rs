//! [`NodeConfig`]: everything a node needs to start, validated once by whoever builds it (the
//! CLI merges flags, environment and a TOML file) and passed in.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A node's configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name, unique in its cluster.
    pub name: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_request_bytes: usize,
    /// Read connections in the pool.
    pub readers: usize,
    /// Most transactions in one group-commit batch.
    pub max_batch: usize,
    /// Size at which a change-log segment is closed, in bytes.
    pub segment_bytes: u64,
}

impl NodeConfig {
    /// A configuration with defaults for everything but the name, directory and address.
    pub fn new(
        name: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        http_addr: SocketAddr,
    ) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            data_dir: data_dir.into(),
            http_addr,
            max_request_bytes: 16 << 20,
            readers: 4,
            max_batch: 1024,
            segment_bytes: 64 << 20,
        }
    }

    /// Checks the values that can be wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 64 {
            return Err("the node name must be 1 to 64 characters".into());
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "node name {:?} may only hold letters, digits, '-' and '_'",
                self.name
            ));
        }
        if self.max_request_bytes < 1024 {
            return Err("the request size limit must be at least 1 KiB".into());
        }
        if self.readers == 0 || self.readers > 256 {
            return Err("readers must be between 1 and 256".into());
        }
        if self.max_batch == 0 {
            return Err("the batch limit must be at least 1".into());
        }
        if self.segment_bytes < 4096 {
            return Err("log segments must be at least 4 KiB".into());
        }
        Ok(())
    }
}
