//! HBONE: HTTP/2 `CONNECT` over mutual TLS 1.3 on port 15008, the wire protocol of Istio
//! ambient. `client` opens (pooled) tunnels from the source node, `server` terminates
//! them on the destination node, `copy` moves the bytes.
pub mod client;
pub mod copy;
pub mod server;

use std::{net::SocketAddr, time::Duration};

pub const DEFAULT_MAX_STREAMS: u32 = 100;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connecting to {node} failed (maybe port 15008 is blocked or the node daemon is down)")]
    Connect {
        node: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {node} failed")]
    Tls {
        node: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {node} timed out")]
    Timeout { node: SocketAddr },
    #[error("HTTP/2 with {node} failed")]
    H2 {
        node: SocketAddr,
        #[source]
        source: h2::Error,
    },
    #[error("{node} answered {status} to CONNECT {target}")]
    Status {
        node: SocketAddr,
        target: SocketAddr,
        status: http::StatusCode,
    },
    #[error("no SVID for {0}: cannot open a tunnel for it")]
    NoSvid(String),
    #[error("tls configuration: {0}")]
    Config(String),
}
