//! The daemon's operator surfaces (design §5), all fed by one [`AdminSource`] that the
//! daemon implements over its state, connections and certificates:
//!
//! - `http`: the admin endpoints on 127.0.0.1:15000 (`/config_dump`, `/workloads`,
//!   `/connections`, `/certificates`, `/logging`), `/metrics` on :15020 and
//!   `/healthz/ready` on :15021;
//! - `logging`: [`LogControl`], the run-time log filter behind `/logging`;
//! - `grpc`: the admin API (`proto/admin.proto`) on a Unix socket, for callers in the
//!   daemon's network namespace only;
//! - `cli`: the client side, `mesh-node status | workloads | connections | certificates |
//!   flows`.
//!
//! The admin surfaces only read: nothing here changes the mesh's state.
pub mod cli;
pub mod daemon;
pub mod grpc;
pub mod http;
pub mod logging;
pub mod serving;
#[cfg(test)]
mod tests;
mod time;
mod wire;

use std::net::IpAddr;

use serde::{ser::SerializeStruct as _, Serialize, Serializer};

pub use logging::{init_tracing, LogControl, LogError};

/// Where the daemon serves the gRPC admin API, and where the CLI looks for it.
pub const DEFAULT_SOCKET: &str = "/run/mesh/admin.sock";

/// What the admin surfaces show, implemented by the daemon. Calls must be cheap and must
/// not block: they run on the async runtime, once per request.
pub trait AdminSource: Send + Sync + 'static {
    fn ready(&self) -> Readiness;
    /// The running config (as `/config_dump` serves it).
    fn config_dump(&self) -> serde_json::Value;
    fn workloads(&self) -> Vec<WorkloadInfo>;
    fn connections(&self) -> Vec<ConnectionInfo>;
    fn certificates(&self) -> Vec<CertificateInfo>;
    /// A new subscription to the live connection events.
    fn flows(&self) -> tokio::sync::broadcast::Receiver<FlowEvent>;
    fn status(&self) -> StatusInfo;
}

/// The daemon is ready once its programs are attached, its state loaded and its
/// certificates issued, and until it starts draining.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    pub programs_attached: bool,
    pub state_loaded: bool,
    pub certificates_present: bool,
    pub draining: bool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.not_ready_reasons().is_empty()
    }

    /// Why the daemon is not ready; empty when it is.
    pub fn not_ready_reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if !self.programs_attached {
            reasons.push("programs not attached");
        }
        if !self.state_loaded {
            reasons.push("state not loaded");
        }
        if !self.certificates_present {
            reasons.push("certificates missing or expired");
        }
        if self.draining {
            reasons.push("draining");
        }
        reasons
    }
}

/// With the verdict and its reasons, so that JSON readers need not recompute them.
impl Serialize for Readiness {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Readiness", 6)?;
        s.serialize_field("ready", &self.is_ready())?;
        s.serialize_field("notReadyReasons", &self.not_ready_reasons())?;
        s.serialize_field("programsAttached", &self.programs_attached)?;
        s.serialize_field("stateLoaded", &self.state_loaded)?;
        s.serialize_field("certificatesPresent", &self.certificates_present)?;
        s.serialize_field("draining", &self.draining)?;
        s.end()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusInfo {
    pub node: String,
    pub version: String,
    pub uptime_seconds: u64,
    /// Workloads in the mesh, and those on this node.
    pub workloads: u64,
    pub local_workloads: u64,
    /// Connections carried now.
    pub connections: u64,
    pub readiness: Readiness,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadInfo {
    pub name: String,
    pub namespace: String,
    /// SPIFFE ID.
    pub identity: String,
    pub node: String,
    pub ips: Vec<IpAddr>,
    /// On this node.
    pub local: bool,
    /// The enrolled cgroup, for a workload of this node.
    pub cgroup_id: Option<u64>,
    /// `permissive` or `strict`.
    pub inbound_mode: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    pub fn as_str(&self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionInfo {
    pub id: u64,
    pub direction: Direction,
    /// `namespace/name` of a workload, or an address.
    pub source: String,
    pub destination: String,
    pub source_principal: Option<String>,
    pub destination_principal: Option<String>,
    pub started_unix_ms: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInfo {
    pub identity: String,
    /// Hex.
    pub serial: String,
    /// Seconds since the epoch; shown in JSON as RFC 3339.
    #[serde(serialize_with = "time::serialize_rfc3339")]
    pub not_before: i64,
    #[serde(serialize_with = "time::serialize_rfc3339")]
    pub not_after: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FlowKind {
    Open,
    Close,
    /// Refused by policy or by the datapath.
    Deny,
}

impl FlowKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            FlowKind::Open => "open",
            FlowKind::Close => "close",
            FlowKind::Deny => "deny",
        }
    }
}

/// One connection event, as `mesh-node flows` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowEvent {
    pub time_unix_ms: u64,
    pub kind: FlowKind,
    pub direction: Direction,
    /// `namespace/name` of a workload, or an address.
    pub source: String,
    pub destination: String,
    pub source_principal: Option<String>,
    pub destination_principal: Option<String>,
    /// Totals at the time of the event (so far, for `open`: usually 0).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub duration_ms: u64,
    /// Why a connection was denied or closed abnormally.
    pub reason: Option<String>,
}

/// Which flow events a `flows` subscriber wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// Substring of the source or of the source principal.
    pub source: Option<String>,
    /// Substring of the destination or of the destination principal.
    pub destination: Option<String>,
    pub kind: Option<FlowKind>,
}

impl FlowFilter {
    pub fn matches(&self, event: &FlowEvent) -> bool {
        let contains = |want: &Option<String>, value: &str, principal: &Option<String>| match want {
            None => true,
            Some(w) => {
                value.contains(w.as_str()) || principal.as_deref().is_some_and(|p| p.contains(w.as_str()))
            }
        };
        self.kind.is_none_or(|k| k == event.kind)
            && contains(&self.source, &event.source, &event.source_principal)
            && contains(
                &self.destination,
                &event.destination,
                &event.destination_principal,
            )
    }
}

/// The admin API's generated messages, client (`mesh_admin_client`) and server
/// (`mesh_admin_server`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("mesh.admin.v1");
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot create the admin socket directory {dir}: {source}")]
    SocketDir { dir: String, source: std::io::Error },
    #[error("another process is serving the admin api on {path}: stop it, or give this daemon another socket path")]
    SocketInUse { path: String },
    #[error("{path} exists and is not a socket: remove it, or give another admin socket path")]
    NotASocket { path: String },
    #[error("cannot listen on the admin socket {path}: {source}")]
    Bind { path: String, source: std::io::Error },
    #[error(transparent)]
    Listen(#[from] crate::proxy::ProxyError),
    #[error("admin grpc server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot reach the daemon on {path}: {reason} (is mesh-node running on this node? another socket can be given with --socket)")]
    Connect { path: String, reason: String },
    #[error("the daemon refused the request: {0}")]
    PermissionDenied(String),
    #[error("the daemon sent an answer this mesh-node cannot read ({0}): are the daemon and the cli the same version?")]
    BadResponse(String),
    #[error("admin request failed ({code:?}): {message}")]
    Rpc { code: tonic::Code, message: String },
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

impl From<tonic::Status> for AdminError {
    fn from(status: tonic::Status) -> AdminError {
        match status.code() {
            tonic::Code::PermissionDenied => AdminError::PermissionDenied(status.message().to_owned()),
            code => AdminError::Rpc {
                code,
                message: status.message().to_owned(),
            },
        }
    }
}
