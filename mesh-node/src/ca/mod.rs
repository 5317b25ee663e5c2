//! The mesh CA as a network service (`mesh-node ca serve`, design §3): a gRPC service
//! (`proto/ca.proto`, tonic) over mutual TLS 1.3 on port 15012 that signs workload SVIDs
//! for node daemons, and the daemons' client of it.
//!
//! - `auth`: who may get what: [`MeshAuth`], built from the mesh config, places workload
//!   identities on nodes.
//! - `server`: the service; a caller is a node, proven by its node credential.
//! - `client`: [`CaClient`], what a node daemon uses.
//! - `node`: [`issue_node`], the offline issuance of a node credential
//!   (`mesh-node ca issue-node`).
//!
//! Signing itself (CSR checks, names, lifetimes) is `identity::ca::CaRoot`'s job.
use std::time::Duration;

pub mod auth;
pub mod client;
pub mod node;
pub mod server;
mod serving;
#[cfg(test)]
mod tests;

pub use auth::{AuthError, MeshAuth};
pub use client::{CaClient, CaClientError};
pub use node::{issue_node, IssueNodeError, IssuedNode};
pub use server::{CaServer, CaServerError, NodePeer, ServerOptions};

/// The generated messages, client (`mesh_ca_client`) and server (`mesh_ca_server`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("mesh.ca.v1");
}

/// Where `mesh-node ca serve` listens by default (design §7).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:15012";
/// Lifetime of an SVID when the request leaves it to the CA (design §3).
pub const DEFAULT_SVID_TTL: Duration = crate::identity::ca::DEFAULT_SVID_TTL;
/// The longest SVID the CA signs, whatever was requested.
pub const DEFAULT_MAX_SVID_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Lifetime of a node credential from `issue-node`, and the longest a renewal gets.
pub const DEFAULT_NODE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Files of a node credential directory, as `issue-node` writes them.
pub const NODE_CERT_FILE: &str = "node.pem";
pub const NODE_KEY_FILE: &str = "node-key.pem";
pub const ROOT_CERT_FILE: &str = "root.pem";

/// "90s", "15m", "24h", "365d": a TTL on the command line (config durations, not zero).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = crate::config::parse_duration(text)?;
    if ttl.is_zero() {
        return Err(format!("ttl {text:?} must be more than zero"));
    }
    Ok(ttl)
}

/// The URI SANs of a certificate, for messages and sanity checks (not verification).
fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::prelude::GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_ttl("365d"), Ok(DEFAULT_NODE_TTL));
        assert!(parse_ttl("0s").unwrap_err().contains("more than zero"));
        assert!(parse_ttl("10").unwrap_err().contains("no unit"));
        assert!(parse_ttl("10w").unwrap_err().contains("unknown unit"));
        assert!(parse_ttl("h").unwrap_err().contains("number"));
    }
}
