//! The HBONE client of the source node: one pool of HTTP/2-over-mTLS connections per
//! (source identity, destination node, destination identity), each carrying a bounded
//! number of `CONNECT` streams.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use h2::{client::SendRequest, RecvStream, SendStream};
use http::{Method, Request, StatusCode};
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

use super::{HboneError, DEFAULT_MAX_STREAMS, HANDSHAKE_TIMEOUT};
use crate::identity::{tls::SharedBundle, Identity, Svid};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    src: Identity,
    node: SocketAddr,
    dst: Identity,
    /// A renewed SVID opens new connections; old ones drain.
    svid_not_after: std::time::SystemTime,
}

struct Conn {
    send: SendRequest<Bytes>,
    streams: AtomicU32,
    dead: Arc<AtomicBool>,
}

/// Decrements the stream count of its connection when the stream ends.
pub struct StreamGuard(Arc<Conn>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Tunnel {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
    pub guard: StreamGuard,
}

pub struct Pool {
    conns: Mutex<HashMap<PoolKey, Vec<Arc<Conn>>>>,
    bundle: SharedBundle,
    trust_domain: String,
    max_streams: u32,
    reuse: bool,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Pool {
    /// `reuse: false` opens a new TLS connection for every stream (for comparison).
    pub fn new(bundle: SharedBundle, trust_domain: String, reuse: bool) -> Pool {
        Pool {
            conns: Mutex::default(),
            bundle,
            trust_domain,
            max_streams: DEFAULT_MAX_STREAMS,
            reuse,
            metrics: None,
        }
    }

    /// Counts this pool's handshakes in `mesh_tls_handshakes_total{side="client"}`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Pool {
        self.metrics = Some(metrics);
        self
    }

    /// Opens a `CONNECT target` stream to `node` as `svid`, expecting the server to prove
    /// `dst`. `source` is the address of the source workload, sent in a `Forwarded` header
    /// for the destination's policy (`ipBlocks`). No application byte is sent before the server's identity is verified (the
    /// TLS verifier checks it during the handshake) and the server has answered 200.
    pub async fn connect(
        &self,
        svid: &Svid,
        node: SocketAddr,
        dst: &Identity,
        target: SocketAddr,
        source: Option<IpAddr>,
    ) -> Result<Tunnel, HboneError> {
        let key = PoolKey {
            src: svid.identity.clone(),
            node,
            dst: dst.clone(),
            svid_not_after: svid.not_after,
        };
        let conn = match self.pick(&key) {
            Some(c) => c,
            None => {
                let c = self.dial(svid, node, dst).await?;
                c.streams.fetch_add(1, Ordering::AcqRel);
                if self.reuse {
                    self.conns
                        .lock()
                        .expect("pool lock")
                        .entry(key)
                        .or_default()
                        .push(c.clone());
                }
                c
            }
        };
        let guard = StreamGuard(conn.clone());
        let mut request = Request::builder().method(Method::CONNECT).uri(target.to_string());
        if let Some(ip) = source {
            request = request.header(http::header::FORWARDED, forwarded_for(ip));
        }
        let request = request.body(()).expect("valid CONNECT request");
        let mut send = conn.send.clone();
        let h2err = |source| HboneError::H2 { node, source };
        send = send.ready().await.map_err(|e| {
            conn.dead.store(true, Ordering::Release);
            h2err(e)
        })?;
        let (response, send_stream) = send.send_request(request, false).map_err(h2err)?;
        let response = response.await.map_err(h2err)?;
        if response.status() != StatusCode::OK {
            return Err(HboneError::Status {
                node,
                target,
                status: response.status(),
            });
        }
        Ok(Tunnel {
            send: send_stream,
            recv: response.into_body(),
            guard,
        })
    }

    /// A live pooled connection with room for one more stream (counted as taken).
    fn pick(&self, key: &PoolKey) -> Option<Arc<Conn>> {
        let mut conns = self.conns.lock().expect("pool lock");
        let list = conns.get_mut(key)?;
        list.retain(|c| !c.dead.load(Ordering::Acquire));
        list.iter()
            .find(|c| {
                c.streams
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < self.max_streams).then_some(n + 1)
                    })
                    .is_ok()
            })
            .cloned()
    }

    async fn dial(&self, svid: &Svid, node: SocketAddr, dst: &Identity) -> Result<Arc<Conn>, HboneError> {
        let config = crate::identity::tls::client_config(
            svid,
            self.bundle.clone(),
            self.trust_domain.clone(),
            dst.clone(),
        )
        .map_err(|e| HboneError::Config(e.to_string()))?;
        let tcp = tokio::net::TcpStream::connect(node)
            .await
            .map_err(|source| HboneError::Connect { node, source })?;
        let _ = tcp.set_nodelay(true);
        let server_name = crate::identity::tls::server_name(dst);
        let tls = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            TlsConnector::from(config).connect(server_name, tcp),
        )
        .await
        .map_err(|_| HboneError::Timeout { node })
        .and_then(|r| r.map_err(|source| HboneError::Tls { node, source }));
        if let Some(metrics) = &self.metrics {
            metrics.tls_handshake("client", tls.is_ok());
        }
        let tls = tls?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|source| HboneError::H2 { node, source })?;
        let dead = Arc::new(AtomicBool::new(false));
        let flag = dead.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                warn!(%node, error = %e, "hbone connection ended");
            } else {
                debug!(%node, "hbone connection closed");
            }
            flag.store(true, Ordering::Release);
        });
        info!(%node, src = %svid.identity, %dst, "tunnel opened");
        Ok(Arc::new(Conn {
            send,
            streams: AtomicU32::new(0),
            dead,
        }))
    }
}

/// `for="<ip>"` (RFC 7239; IPv6 in brackets).
pub fn forwarded_for(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("for=\"{v4}\""),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    }
}

/// The first `for=` address of a `Forwarded` header value, if it is an IP address.
pub fn parse_forwarded_for(value: &str) -> Option<IpAddr> {
    value.split([',', ';']).find_map(|part| {
        let (key, v) = part.trim().split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        let v = v
            .strip_prefix('[')
            .and_then(|v| v.split_once(']'))
            .map_or(v, |(ip, _)| ip);
        v.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_round_trips() {
        for ip in ["10.1.2.3", "fd00::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(parse_forwarded_for(&forwarded_for(ip)), Some(ip));
        }
        assert_eq!(
            parse_forwarded_for("proto=https; for=\"10.0.0.9\""),
            Some("10.0.0.9".parse().unwrap())
        );
        assert_eq!(parse_forwarded_for("for=unknown"), None);
    }
}
