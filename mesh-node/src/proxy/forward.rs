//! Carrying a captured connection to its destination.
//!
//! This is the seam that the HBONE tunnel replaces for cross-node workloads: today every
//! route is a plain TCP connection from the daemon (whose cgroup is never enrolled, so it
//! is not captured again) to the original destination.
use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpStream;

use super::ProxyError;
use crate::state::Route;

pub async fn connect(route: Route<'_>, dst: SocketAddr, timeout: Duration) -> Result<TcpStream, ProxyError> {
    match route {
        Route::Local(_) | Route::Remote { .. } | Route::Passthrough => connect_plain(dst, timeout).await,
    }
}

async fn connect_plain(dst: SocketAddr, timeout: Duration) -> Result<TcpStream, ProxyError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(dst))
        .await
        .map_err(|_| ProxyError::ConnectTimeout { dst, timeout })?
        .map_err(|source| ProxyError::Connect { dst, source })?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
