//! The HBONE server (port 15008) of the destination node: terminates mutual TLS with the
//! SVID of the workload the client asked for (by SNI), accepts HTTP/2 `CONNECT` streams,
//! and connects each to its target, a workload of this node, only after checking it.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, info_span, warn, Instrument as _};

use super::{copy, DEFAULT_MAX_STREAMS, HANDSHAKE_TIMEOUT};
use crate::{
    admin::Direction,
    identity::Identity,
    proxy::{
        bind,
        connections::{Endpoints, Facing, Party, Reporting},
        ProxyError,
    },
    state::MeshState,
};

pub struct InboundInputs {
    pub state: watch::Receiver<Arc<MeshState>>,
    pub tls: Arc<rustls::ServerConfig>,
    pub connect_timeout: Duration,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub connections: Arc<crate::proxy::connections::Connections>,
}

pub struct Inbound {
    listeners: Vec<TcpListener>,
}

impl Inbound {
    /// Binds now, so that a port conflict fails at start-up.
    pub fn new(addrs: &[SocketAddr]) -> Result<Inbound, ProxyError> {
        Ok(Inbound {
            listeners: addrs.iter().map(|a| bind(*a)).collect::<Result<_, _>>()?,
        })
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub async fn run(self, inputs: Arc<InboundInputs>, stop: CancellationToken, tasks: TaskTracker) {
        let mut accepting = Vec::new();
        for listener in self.listeners {
            let (inputs, stop, tasks) = (inputs.clone(), stop.clone(), tasks.clone());
            accepting.push(tokio::spawn(async move {
                loop {
                    let (tcp, peer) = tokio::select! {
                        _ = stop.cancelled() => break,
                        a = listener.accept() => match a {
                            Ok(a) => a,
                            Err(e) => { warn!(error = %e, "accept failed on hbone listener"); continue; }
                        },
                    };
                    let inputs = inputs.clone();
                    let conn_tasks = tasks.clone();
                    tasks.spawn(
                        async move {
                            if let Err(e) = serve_connection(inputs, tcp, peer, conn_tasks).await {
                                warn!(error = %e, "hbone connection failed");
                            }
                        }
                        .instrument(info_span!("inbound", %peer)),
                    );
                }
            }));
        }
        for a in accepting {
            let _ = a.await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("TLS handshake timed out")]
    Timeout,
    #[error("client presented no usable certificate")]
    NoIdentity,
    #[error("http/2: {0}")]
    H2(#[from] h2::Error),
}

async fn serve_connection(
    inputs: Arc<InboundInputs>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tasks: TaskTracker,
) -> Result<(), ServeError> {
    let _ = tcp.set_nodelay(true);
    let acceptor = TlsAcceptor::from(inputs.tls.clone());
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| ServeError::Timeout)
        .and_then(|r| r.map_err(ServeError::Tls));
    inputs.metrics.tls_handshake("server", tls.is_ok());
    let tls = tls?;
    let (_, session) = tls.get_ref();
    let sni = session.server_name().unwrap_or_default().to_string();
    let client = crate::identity::tls::peer_identity(session).ok_or(ServeError::NoIdentity)?;
    info!(%client, "tunnel accepted");
    let mut h2 = h2::server::Builder::new()
        .max_concurrent_streams(DEFAULT_MAX_STREAMS)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake::<_, Bytes>(tls)
        .await?;
    while let Some(stream) = h2.accept().await {
        let (request, respond) = stream?;
        let span = info_span!("stream", src = %client);
        let (inputs, client, sni) = (inputs.clone(), client.clone(), sni.clone());
        tasks.spawn(
            async move { serve_stream(&inputs, request, respond, &client, peer, &sni).await }
                .instrument(span),
        );
    }
    Ok(())
}

fn respond(mut respond: SendResponse<Bytes>, status: StatusCode) {
    let response = Response::builder()
        .status(status)
        .body(())
        .expect("static response");
    let _ = respond.send_response(response, true);
}

async fn serve_stream(
    inputs: &InboundInputs,
    request: Request<h2::RecvStream>,
    mut send_response: SendResponse<Bytes>,
    client: &Identity,
    peer: SocketAddr,
    sni: &str,
) {
    if request.method() != Method::CONNECT {
        return respond(send_response, StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(target) = request
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        warn!(uri = %request.uri(), "CONNECT without an ip:port authority");
        return respond(send_response, StatusCode::BAD_REQUEST);
    };
    let state = inputs.state.borrow().clone();
    // Only workloads of this node, and only the one whose identity the client
    // authenticated (by SNI): a tunnel to A is never a way to reach B.
    let Some((_, workload)) = state
        .workload_by_ip(target.ip())
        .filter(|(_, w)| w.node == state.node)
    else {
        warn!(%target, "CONNECT to an address that is not a workload of this node: 400");
        return respond(send_response, StatusCode::BAD_REQUEST);
    };
    let identity = workload.identity(&state.trust_domain);
    if identity.as_ref().map(|i| i.sni()).ok().as_deref() != Some(sni) {
        warn!(%target, "CONNECT target does not match the identity the tunnel was opened for: 400");
        return respond(send_response, StatusCode::BAD_REQUEST);
    }
    // The source workload's address as its node sent it, else the tunnel's peer.
    let source_ip = request
        .headers()
        .get(http::header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(super::client::parse_forwarded_for)
        .unwrap_or(peer.ip());
    let source = match state.workload_by_ip(source_ip) {
        // The address is the source's only if its workload has the verified identity.
        Some((_, w)) if w.identity(&state.trust_domain).ok().as_ref() == Some(client) => {
            Party::workload(w, Some(client.uri()), SocketAddr::new(source_ip, 0))
        }
        _ => Party {
            workload: None,
            principal: Some(client.uri()),
            addr: SocketAddr::new(source_ip, 0),
        },
    };
    let endpoints = Endpoints {
        direction: Direction::Inbound,
        source,
        destination: Party::workload(workload, identity.as_ref().ok().map(|i| i.uri()), target),
    };
    let reporting = Reporting::DESTINATION_MTLS;
    let flow = crate::proxy::Flow {
        source: client.uri(),
        source_namespace: client.namespace.clone(),
        source_ip,
        target,
    };
    let decision = flow.decide(&state);
    inputs.metrics.policy_decision(decision.allowed);
    if !decision.allowed {
        let reason = crate::proxy::denial_reason(&decision);
        inputs.connections.deny(&endpoints, reporting, "DENY", reason);
        return respond(send_response, StatusCode::FORBIDDEN);
    }
    debug!(src = %client, %target, "CONNECT");
    let upstream =
        match tokio::time::timeout(inputs.connect_timeout, tokio::net::TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(%target, error = %e, "workload refused: 503");
                let reason = format!("connecting to {target} failed: {e}");
                inputs.connections.deny(&endpoints, reporting, "UF", reason);
                return respond(send_response, StatusCode::SERVICE_UNAVAILABLE);
            }
            Err(_) => {
                let reason = format!("connecting to {target} timed out");
                inputs.connections.deny(&endpoints, reporting, "UF", reason);
                return respond(send_response, StatusCode::GATEWAY_TIMEOUT);
            }
        };
    let _ = upstream.set_nodelay(true);
    let response = Response::builder()
        .status(StatusCode::OK)
        .body(())
        .expect("static response");
    let send = match send_response.send_response(response, false) {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "client went away before the 200");
            return;
        }
    };
    let mut tracked = inputs.connections.open(endpoints, reporting);
    let mut upstream = tracked.meter(upstream, Facing::Destination);
    let copied = tokio::select! {
        r = copy::bidirectional(&mut upstream, send, request.into_body()) => r,
        // Dropping the stream resets it: the source daemon resets its client.
        _ = flow.revoked(inputs.state.clone()) => Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied by a policy change")),
    };
    match copied {
        Ok((to_client, from_client)) => debug!(%target, from_client, to_client, "stream closed"),
        Err(e) => {
            let _ = socket2::SockRef::from(upstream.get_ref()).set_linger(Some(Duration::ZERO));
            debug!(%target, error = %e, "stream aborted");
            tracked.fail(e.to_string());
        }
    }
}
