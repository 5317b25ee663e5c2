//! The daemon's listeners. `outbound` accepts the connections that the kernel
//! redirected and carries them to their destination through `forward`.
pub mod forward;
pub mod outbound;

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
