//! The capture listener (port 15001): accepts connections that `connect4`/`connect6`
//! redirected, recovers each one's original destination from the kernel, and carries it
//! there.
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info_span, warn, Instrument as _};

use super::{
    bind,
    forward::{self, Upstream},
    splice::{self, Way},
    Flow, ProxyError, ProxyInputs,
};
use crate::hbone::copy;
use crate::state::{CgroupId, Route};

pub struct Outbound {
    listeners: Vec<TcpListener>,
}

static CONNECTION_IDS: AtomicU64 = AtomicU64::new(1);

impl Outbound {
    /// Binds every capture address now, so that a port conflict fails at start-up.
    pub fn new(addrs: &[SocketAddr]) -> Result<Outbound, ProxyError> {
        let listeners = addrs.iter().map(|a| bind(*a)).collect::<Result<_, _>>()?;
        Ok(Outbound { listeners })
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Accepts until `stop` is cancelled; connection tasks are spawned on `tasks` so the
    /// caller can drain them.
    pub async fn run(self, inputs: Arc<ProxyInputs>, stop: CancellationToken, tasks: TaskTracker) {
        let mut accepting = Vec::new();
        for listener in self.listeners {
            let (inputs, stop, tasks) = (inputs.clone(), stop.clone(), tasks.clone());
            accepting.push(tokio::spawn(accept_loop(listener, inputs, stop, tasks)));
        }
        for a in accepting {
            let _ = a.await;
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    inputs: Arc<ProxyInputs>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: keep serving the connections we have.
                warn!(error = %e, "accept failed on capture listener");
                continue;
            }
        };
        let id = CONNECTION_IDS.fetch_add(1, Ordering::Relaxed);
        let inputs = inputs.clone();
        tasks.spawn(
            async move {
                if let Err(e) = handle(&inputs, stream, client).await {
                    warn!(error = %e, "connection failed");
                }
            }
            .instrument(info_span!("outbound", id, %client)),
        );
    }
    debug!(?local, "capture listener closed");
}

async fn handle(
    inputs: &ProxyInputs,
    mut downstream: TcpStream,
    client: SocketAddr,
) -> Result<(), ProxyError> {
    let local = downstream.local_addr()?;
    let orig = inputs
        .maps
        .lock()
        .expect("maps lock poisoned")
        .take_orig_dst(client, local);
    let Some((dst, CgroupId(cgroup))) = orig else {
        reset(&downstream);
        return Err(ProxyError::NoOrigDst { client });
    };
    let state = inputs.state.borrow().clone();
    let Some((_, src)) = state.workload_by_cgroup(CgroupId(cgroup)) else {
        reset(&downstream);
        return Err(ProxyError::UnknownSource { cgroup });
    };
    let route = state.route(dst.ip());
    let route_name = match route {
        Route::Local(_) => "local",
        Route::Remote { .. } => "remote",
        Route::Passthrough => "passthrough",
    };
    debug!(src = %format_args!("{}/{}", src.namespace, src.name), %dst, route = route_name, "captured");
    // Same node: no tunnel, so this daemon is the destination's and enforces its policy
    // with the identity it knows from the kernel (the source's cgroup).
    let flow = match route {
        Route::Local(_) => {
            let flow = Flow {
                source: forward::identity_of(&state.trust_domain, src)?.uri(),
                source_namespace: src.namespace.clone(),
                source_ip: client.ip(),
                target: dst,
            };
            let decision = flow.decide(&state);
            inputs.metrics.policy_decision(decision.allowed);
            if !decision.allowed {
                reset(&downstream);
                return Ok(());
            }
            Some(flow)
        }
        _ => None,
    };
    downstream.set_nodelay(true)?;
    let upstream = match forward::connect(inputs, src, route, dst, client.ip()).await {
        Ok(s) => s,
        Err(e) => {
            reset(&downstream);
            return Err(e);
        }
    };
    let copied = match upstream {
        Upstream::Tcp(mut upstream) => {
            let revoked = async {
                match &flow {
                    Some(flow) => flow.revoked(inputs.state.clone()).await,
                    None => std::future::pending().await,
                }
            };
            let carried = async {
                if inputs.splice {
                    splice_plain(inputs, route_name, &downstream, &upstream).await
                } else {
                    tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await
                }
            };
            let r = tokio::select! {
                r = carried => r,
                _ = revoked => Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied by a policy change")),
            };
            if r.is_err() {
                reset(&upstream);
            }
            r
        }
        Upstream::Tunnel(tunnel) => copy::bidirectional(&mut downstream, tunnel.send, tunnel.recv).await,
    };
    match copied {
        Ok((sent, received)) => {
            debug!(%dst, sent, received, "closed");
            Ok(())
        }
        Err(e) => {
            // Propagate an abort as an abort: the client sees a reset, not an EOF.
            reset(&downstream);
            Err(e.into())
        }
    }
}

/// A plain TCP connection carried by splice(2): counted as spliced, its bytes counted as
/// they move.
async fn splice_plain(
    inputs: &ProxyInputs,
    route: &'static str,
    downstream: &TcpStream,
    upstream: &TcpStream,
) -> std::io::Result<(u64, u64)> {
    inputs.metrics.spliced_connection(route);
    let progress = |way: Way, n: u64| inputs.metrics.spliced_bytes(way == Way::Request, n);
    splice::bidirectional(downstream, upstream, &progress).await
}

/// Makes the next close send RST instead of FIN.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}
