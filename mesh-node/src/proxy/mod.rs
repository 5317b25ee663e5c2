//! The daemon's listeners. `outbound` accepts the connections that the kernel
//! redirected and carries them to their destination through `forward`; `splice` moves
//! the bytes of plain TCP connections inside the kernel.
pub mod forward;
pub mod outbound;
pub mod splice;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;

use crate::{
    ebpf::Maps,
    hbone::{client::Pool, HboneError},
    identity::Identity,
    secrets::SecretManager,
    state::MeshState,
};

/// What the outbound listener reads: the state store, the datapath's maps, the
/// certificates and the tunnel pool.
pub struct ProxyInputs {
    pub state: watch::Receiver<Arc<MeshState>>,
    pub maps: Arc<Mutex<Maps>>,
    pub connect_timeout: Duration,
    pub trust_domain: String,
    pub secrets: Arc<SecretManager>,
    pub pool: Pool,
    pub hbone_port: u16,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Move plain TCP connections' bytes with `splice(2)` (`bpf.splice`).
    pub splice: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("no original destination recorded for {client}: not a captured connection, closing it")]
    NoOrigDst { client: SocketAddr },
    #[error("connection from cgroup {cgroup} which is not an enrolled workload of this node, refusing it")]
    UnknownSource { cgroup: u64 },
    #[error("connecting to {dst} failed: {source}")]
    Connect { dst: SocketAddr, source: std::io::Error },
    #[error("connecting to {dst} timed out after {timeout:?}")]
    ConnectTimeout { dst: SocketAddr, timeout: Duration },
    #[error("no valid SVID for {identity} (expired or never issued): refusing its meshed traffic")]
    NoSvid { identity: Identity },
    #[error("workload {workload} has no valid identity: {message}")]
    BadIdentity { workload: String, message: String },
    #[error("tunnel: {0}")]
    Hbone(#[from] HboneError),
    #[error("copying bytes: {0}")]
    Io(#[from] std::io::Error),
}

/// A listening socket with SO_REUSEADDR (and IPV6_V6ONLY for IPv6), so that a port
/// conflict fails at start-up with a clear error.
pub fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ProxyError> {
    let fail = |source: std::io::Error| {
        let hint = if source.kind() == std::io::ErrorKind::AddrInUse {
            " (is another mesh-node or another program using this port on this node?)"
        } else if source.kind() == std::io::ErrorKind::AddrNotAvailable {
            " (is this address configured on this node?)"
        } else {
            ""
        };
        ProxyError::Bind { addr, source, hint }
    };
    let domain = socket2::Domain::for_address(addr);
    let socket =
        socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP)).map_err(fail)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(fail)?;
    }
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(1024).map_err(fail)?;
    tokio::net::TcpListener::from_std(socket.into()).map_err(fail)
}

/// The one log line of a connection a policy denied, at the destination or (same node) the
/// source's daemon.
pub fn log_denied(
    src: &str,
    src_ip: std::net::IpAddr,
    dst: &crate::state::Workload,
    target: SocketAddr,
    decision: &crate::policy::Decision,
) {
    tracing::info!(
        src = %src,
        dst = %target,
        policy = %decision.policy.as_deref().unwrap_or("-"),
        rule = %decision.rule.map_or_else(|| "-".to_string(), |r| r.to_string()),
        reason = %decision.reason,
        %src_ip,
        dst_workload = %format_args!("{}/{}", dst.namespace, dst.name),
        "connection denied by policy"
    );
}

/// What policy needs to know about a connection, kept for its lifetime so that it can be
/// judged again when the config changes.
pub struct Flow {
    /// `spiffe://` URI of the verified source identity.
    pub source: String,
    pub source_namespace: String,
    pub source_ip: std::net::IpAddr,
    pub target: SocketAddr,
}

impl Flow {
    /// The decision for this connection under `state`; a target that is no longer a
    /// workload of this node is denied.
    pub fn decide(&self, state: &MeshState) -> crate::policy::Decision {
        let Some((_, workload)) = state
            .workload_by_ip(self.target.ip())
            .filter(|(_, w)| w.node == state.node)
        else {
            return crate::policy::Decision {
                allowed: false,
                policy: None,
                rule: None,
                reason: "the destination is no longer a workload of this node".into(),
            };
        };
        let decision = state.policies.evaluate(&crate::policy::Request {
            source_principal: Some(self.source.strip_prefix("spiffe://").unwrap_or(&self.source)),
            source_namespace: Some(&self.source_namespace),
            source_ip: self.source_ip,
            destination_namespace: &workload.namespace,
            destination_labels: &workload.labels,
            destination_port: self.target.port(),
        });
        if !decision.allowed {
            log_denied(&self.source, self.source_ip, workload, self.target, &decision);
        }
        decision
    }

    /// Resolves once a new state denies this live connection (then the caller closes it);
    /// never resolves while every new state allows it.
    pub async fn revoked(&self, mut state: watch::Receiver<Arc<MeshState>>) {
        loop {
            if state.changed().await.is_err() {
                return std::future::pending().await;
            }
            let current = state.borrow_and_update().clone();
            if !self.decide(&current).allowed {
                tracing::info!(src = %self.source, dst = %self.target, "live connection closed: the new config denies it");
                return;
            }
        }
    }
}
