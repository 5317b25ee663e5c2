//! Carrying a captured connection to its destination: a workload of another node goes
//! through an HBONE tunnel to that node (mutual TLS, the source workload's SVID); a
//! workload of this node and a non-mesh destination get a plain TCP connection from the
//! daemon (whose cgroup is never enrolled, so it is not captured again).
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::net::TcpStream;

use super::{ProxyError, ProxyInputs};
use crate::{
    hbone::client::Tunnel,
    identity::Identity,
    state::{Route, Workload},
};

pub enum Upstream {
    Tcp(TcpStream),
    Tunnel(Tunnel),
}

pub async fn connect(
    inputs: &ProxyInputs,
    src: &Workload,
    route: Route<'_>,
    dst: SocketAddr,
    source_ip: IpAddr,
) -> Result<Upstream, ProxyError> {
    match route {
        Route::Remote { workload, node_addrs } => {
            let td = &inputs.trust_domain;
            let src_id = identity_of(td, src)?;
            let dst_id = identity_of(td, workload)?;
            let svid = inputs
                .secrets
                .svid(&src_id)
                .ok_or(ProxyError::NoSvid { identity: src_id })?;
            let node = SocketAddr::new(pick_node_addr(node_addrs, dst.ip()), inputs.hbone_port);
            let tunnel = inputs
                .pool
                .connect(&svid, node, &dst_id, dst, Some(source_ip))
                .await?;
            Ok(Upstream::Tunnel(tunnel))
        }
        Route::Local(_) | Route::Passthrough => {
            Ok(Upstream::Tcp(connect_plain(dst, inputs.connect_timeout).await?))
        }
    }
}

pub(super) fn identity_of(trust_domain: &str, w: &Workload) -> Result<Identity, ProxyError> {
    w.identity(trust_domain).map_err(|e| ProxyError::BadIdentity {
        workload: format!("{}/{}", w.namespace, w.name),
        message: e.to_string(),
    })
}

/// The node address of the destination's family when there is one.
fn pick_node_addr(addrs: &[IpAddr], dst: IpAddr) -> IpAddr {
    addrs
        .iter()
        .copied()
        .find(|a| a.is_ipv4() == dst.is_ipv4())
        .unwrap_or(addrs[0])
}

async fn connect_plain(dst: SocketAddr, timeout: Duration) -> Result<TcpStream, ProxyError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(dst))
        .await
        .map_err(|_| ProxyError::ConnectTimeout { dst, timeout })?
        .map_err(|source| ProxyError::Connect { dst, source })?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
