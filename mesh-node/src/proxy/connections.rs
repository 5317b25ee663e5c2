//! The live-connection registry: every connection the daemon carries is registered here
//! for its lifetime, so that `/connections` and `mesh-node connections` can list it, its
//! `istio_tcp_*` series are counted as bytes flow, and `mesh-node flows` sees it open and
//! close. Refusals (policy, a missing SVID, an unreachable upstream) are published as
//! `deny` events.
//!
//! Byte directions, everywhere in this module: **request** bytes go from the source
//! workload towards the destination, **response** bytes the other way. Istio's
//! `istio_tcp_received_bytes_total` counts request bytes and `istio_tcp_sent_bytes_total`
//! response bytes ("received during request" / "sent during response", as Envoy counts
//! them at the proxy); the admin API's `bytes_sent` / `bytes_received` are the source's
//! view (what the source sent / received).
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::broadcast,
};

use crate::{
    admin::{ConnectionInfo, Direction, FlowEvent, FlowKind},
    metrics::{Metrics, Reporter, SecurityPolicy, TcpCounters, TcpLabels, UNKNOWN},
    state::Workload,
};

/// How many flow events a slow `flows` subscriber may fall behind before it misses some.
const FLOW_BACKLOG: usize = 4096;

/// One end of a connection.
#[derive(Clone, Debug)]
pub struct Party {
    /// `(namespace, name)` of the workload, when the address is one.
    pub workload: Option<(String, String)>,
    /// `spiffe://` identity: verified (mTLS) or known from the kernel (the source's cgroup).
    pub principal: Option<String>,
    pub addr: SocketAddr,
}

impl Party {
    pub fn workload(w: &Workload, principal: Option<String>, addr: SocketAddr) -> Party {
        Party {
            workload: Some((w.namespace.clone(), w.name.clone())),
            principal,
            addr,
        }
    }

    pub fn address(addr: SocketAddr) -> Party {
        Party {
            workload: None,
            principal: None,
            addr,
        }
    }

    /// `namespace/name`, or the address (just the IP when the port is not known: 0).
    pub fn display(&self) -> String {
        match &self.workload {
            Some((ns, name)) => format!("{ns}/{name}"),
            None if self.addr.port() == 0 => self.addr.ip().to_string(),
            None => self.addr.to_string(),
        }
    }

    /// The namespace for metrics: the workload's, else the identity's.
    fn namespace(&self) -> String {
        self.workload
            .as_ref()
            .map(|(ns, _)| ns.clone())
            .or_else(|| {
                let p = self.principal.as_deref()?;
                let rest = p.split_once("/ns/")?.1;
                Some(rest.split('/').next()?.to_owned())
            })
            .unwrap_or_else(|| UNKNOWN.into())
    }
}

/// Who talks to whom, as seen by the reporting daemon.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub direction: Direction,
    pub source: Party,
    pub destination: Party,
}

impl Endpoints {
    /// The `istio_tcp_*` labels of this connection for one reporter. Only bounded values:
    /// workload names, namespaces and identities, never an address or a port.
    pub fn labels(&self, reporter: Reporter, security: SecurityPolicy, flags: &str) -> TcpLabels {
        let name = |p: &Party| p.workload.as_ref().map_or(UNKNOWN.into(), |(_, n)| n.clone());
        let principal = |p: &Party| p.principal.clone().unwrap_or_else(|| UNKNOWN.into());
        TcpLabels {
            reporter,
            source_workload: name(&self.source),
            source_workload_namespace: self.source.namespace(),
            source_principal: principal(&self.source),
            destination_workload: name(&self.destination),
            destination_workload_namespace: self.destination.namespace(),
            destination_principal: principal(&self.destination),
            // No service registry in standalone mode: Istio's value for "not known".
            destination_service: UNKNOWN.into(),
            connection_security_policy: security,
            response_flags: flags.into(),
        }
    }

    fn event(&self, kind: FlowKind) -> FlowEvent {
        FlowEvent {
            time_unix_ms: now_ms(),
            kind,
            direction: self.direction,
            source: self.source.display(),
            destination: self.destination.display(),
            source_principal: self.source.principal.clone(),
            destination_principal: self.destination.principal.clone(),
            bytes_sent: 0,
            bytes_received: 0,
            duration_ms: 0,
            reason: None,
        }
    }
}

/// Which reporters count a connection: each daemon reports its own end, and the daemon
/// of a same-node connection is both ends.
#[derive(Clone, Copy, Debug)]
pub struct Reporting {
    pub reporters: &'static [Reporter],
    pub security: SecurityPolicy,
}

impl Reporting {
    pub const SOURCE_MTLS: Reporting = Reporting {
        reporters: &[Reporter::Source],
        security: SecurityPolicy::MutualTls,
    };
    pub const DESTINATION_MTLS: Reporting = Reporting {
        reporters: &[Reporter::Destination],
        security: SecurityPolicy::MutualTls,
    };
    pub const SAME_NODE: Reporting = Reporting {
        reporters: &[Reporter::Source, Reporter::Destination],
        security: SecurityPolicy::None,
    };
    pub const PASSTHROUGH: Reporting = Reporting {
        reporters: &[Reporter::Source],
        security: SecurityPolicy::None,
    };
}

/// A connection being carried.
struct Live {
    id: u64,
    endpoints: Endpoints,
    started_unix_ms: u64,
    started: Instant,
    request: AtomicU64,
    response: AtomicU64,
    counters: Vec<TcpCounters>,
}

/// The registry. One per daemon, shared by the listeners and the admin surfaces.
pub struct Connections {
    next_id: AtomicU64,
    live: Mutex<BTreeMap<u64, Arc<Live>>>,
    events: broadcast::Sender<FlowEvent>,
    metrics: Arc<Metrics>,
}

impl Connections {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Connections> {
        Arc::new(Connections {
            next_id: AtomicU64::new(1),
            live: Mutex::default(),
            events: broadcast::channel(FLOW_BACKLOG).0,
            metrics,
        })
    }

    /// Registers a connection that is now established end to end: counts it as opened
    /// (per reporter) and publishes its `open` event. Dropping the returned handle closes
    /// it.
    pub fn open(self: &Arc<Self>, endpoints: Endpoints, reporting: Reporting) -> Tracked {
        let counters: Vec<TcpCounters> = reporting
            .reporters
            .iter()
            .map(|r| {
                self.metrics
                    .tcp(&endpoints.labels(*r, reporting.security, crate::metrics::NO_FLAGS))
            })
            .collect();
        counters.iter().for_each(TcpCounters::opened);
        let live = Arc::new(Live {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            started_unix_ms: now_ms(),
            started: Instant::now(),
            request: AtomicU64::new(0),
            response: AtomicU64::new(0),
            counters,
            endpoints,
        });
        self.live
            .lock()
            .expect("connections lock")
            .insert(live.id, live.clone());
        self.publish(live.endpoints.event(FlowKind::Open));
        Tracked {
            registry: self.clone(),
            live,
            reason: None,
        }
    }

    /// A connection the mesh refused: counted as failed (per reporter, with `flags` as
    /// `response_flags`) and published as a `deny` event with its reason.
    pub fn deny(&self, endpoints: &Endpoints, reporting: Reporting, flags: &str, reason: String) {
        for r in reporting.reporters {
            self.metrics
                .tcp(&endpoints.labels(*r, reporting.security, flags))
                .failed();
        }
        let mut event = endpoints.event(FlowKind::Deny);
        event.reason = Some(reason);
        self.publish(event);
    }

    /// Publishes an event that the daemon did not see itself (the kernel's).
    pub fn publish(&self, event: FlowEvent) {
        // No subscriber is not an error: nobody is following.
        let _ = self.events.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<FlowEvent> {
        self.events.subscribe()
    }

    pub fn len(&self) -> usize {
        self.live.lock().expect("connections lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn list(&self) -> Vec<ConnectionInfo> {
        let live = self.live.lock().expect("connections lock");
        live.values()
            .map(|c| ConnectionInfo {
                id: c.id,
                direction: c.endpoints.direction,
                source: c.endpoints.source.display(),
                destination: c.endpoints.destination.display(),
                source_principal: c.endpoints.source.principal.clone(),
                destination_principal: c.endpoints.destination.principal.clone(),
                started_unix_ms: c.started_unix_ms,
                bytes_sent: c.request.load(Ordering::Relaxed),
                bytes_received: c.response.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// A registered connection; dropping it counts it as closed and publishes its `close`
/// event with its byte totals and duration.
pub struct Tracked {
    registry: Arc<Connections>,
    live: Arc<Live>,
    reason: Option<String>,
}

impl Tracked {
    /// The connection ended abnormally (reset, revoked by policy): said in its close event.
    pub fn fail(&mut self, reason: impl Into<String>) {
        self.reason = Some(reason.into());
    }

    /// Wraps the socket of the application at `facing`'s end, so that every byte it reads
    /// or writes is counted on this connection.
    pub fn meter<S>(&self, inner: S, facing: Facing) -> Metered<S> {
        Metered {
            inner,
            live: self.live.clone(),
            facing,
        }
    }

    /// Bytes added to the totals without passing through a [`Metered`] socket: those that
    /// `splice(2)` moved between the daemon's sockets (told as they move, so live series
    /// grow), or that the kernel moved itself.
    pub fn add_unmetered_bytes(&self, request: u64, response: u64) {
        self.live.add_request(request);
        self.live.add_response(response);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let live = &self.live;
        self.registry
            .live
            .lock()
            .expect("connections lock")
            .remove(&live.id);
        live.counters.iter().for_each(TcpCounters::closed);
        let mut event = live.endpoints.event(FlowKind::Close);
        event.bytes_sent = live.request.load(Ordering::Relaxed);
        event.bytes_received = live.response.load(Ordering::Relaxed);
        event.duration_ms = live.started.elapsed().as_millis() as u64;
        event.reason = self.reason.take();
        self.registry.publish(event);
    }
}

impl Live {
    fn add_request(&self, n: u64) {
        if n > 0 {
            self.request.fetch_add(n, Ordering::Relaxed);
            self.counters.iter().for_each(|c| c.received(n));
        }
    }

    fn add_response(&self, n: u64) {
        if n > 0 {
            self.response.fetch_add(n, Ordering::Relaxed);
            self.counters.iter().for_each(|c| c.sent(n));
        }
    }
}

/// Which application a metered socket is connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Facing {
    /// The source workload (the captured client): what it writes is request.
    Source,
    /// The destination workload (the daemon's connection to it): what it writes is
    /// response.
    Destination,
}

/// A socket that counts what passes through it on its connection, as it passes: the
/// totals are exact whatever way the connection ends, and live series grow during long
/// transfers.
pub struct Metered<S> {
    inner: S,
    live: Arc<Live>,
    facing: Facing,
}

impl<S> Metered<S> {
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    fn read(&self, n: usize) {
        match self.facing {
            Facing::Source => self.live.add_request(n as u64),
            Facing::Destination => self.live.add_response(n as u64),
        }
    }

    fn written(&self, n: usize) {
        match self.facing {
            Facing::Source => self.live.add_response(n as u64),
            Facing::Destination => self.live.add_request(n as u64),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            this.read(buf.filled().len() - before);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = result {
            this.written(n);
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn endpoints() -> Endpoints {
        Endpoints {
            direction: Direction::Outbound,
            source: Party {
                workload: Some(("default".into(), "client".into())),
                principal: Some("spiffe://cluster.local/ns/default/sa/client".into()),
                addr: "10.0.0.2:4000".parse().unwrap(),
            },
            destination: Party {
                workload: None,
                principal: Some("spiffe://cluster.local/ns/web/sa/server".into()),
                addr: "10.0.1.2:80".parse().unwrap(),
            },
        }
    }

    #[tokio::test]
    async fn bytes_are_counted_per_direction_and_reported_at_close() {
        let metrics = Metrics::new();
        let registry = Connections::new(metrics.clone());
        let mut events = registry.subscribe();
        let (a, mut b) = tokio::io::duplex(1024);
        let mut tracked = registry.open(endpoints(), Reporting::SAME_NODE);
        assert_eq!(events.recv().await.unwrap().kind, FlowKind::Open);
        let mut source = tracked.meter(a, Facing::Source);
        b.write_all(&[1; 300]).await.unwrap();
        let mut buf = [0; 300];
        source.read_exact(&mut buf).await.unwrap();
        source.write_all(&[2; 7]).await.unwrap();
        let listed = registry.list();
        assert_eq!((listed[0].bytes_sent, listed[0].bytes_received), (300, 7));
        tracked.fail("reset by peer");
        drop(tracked);
        let close = events.recv().await.unwrap();
        assert_eq!(close.kind, FlowKind::Close);
        assert_eq!((close.bytes_sent, close.bytes_received), (300, 7));
        assert_eq!(close.reason.as_deref(), Some("reset by peer"));
        assert!(registry.is_empty());
        let text = metrics.encode();
        for reporter in ["source", "destination"] {
            let line = |name: &str| {
                text.lines()
                    .find(|l| l.starts_with(name) && l.contains(&format!("reporter=\"{reporter}\"")))
                    .unwrap_or_else(|| panic!("{name} {reporter} in\n{text}"))
                    .rsplit(' ')
                    .next()
                    .unwrap()
                    .to_owned()
            };
            assert_eq!(line("istio_tcp_received_bytes_total"), "300");
            assert_eq!(line("istio_tcp_sent_bytes_total"), "7");
            assert_eq!(line("istio_tcp_connections_opened_total"), "1");
            assert_eq!(line("istio_tcp_connections_closed_total"), "1");
        }
        // The destination's namespace comes from its identity when its workload is unknown.
        assert!(text.contains("destination_workload=\"unknown\",destination_workload_namespace=\"web\""));
    }

    #[tokio::test]
    async fn a_denial_is_a_failed_series_and_a_deny_event() {
        let metrics = Metrics::new();
        let registry = Connections::new(metrics.clone());
        let mut events = registry.subscribe();
        registry.deny(
            &endpoints(),
            Reporting::SOURCE_MTLS,
            "DENY",
            "policy deny-all".into(),
        );
        let deny = events.recv().await.unwrap();
        assert_eq!(
            (deny.kind, deny.reason.as_deref()),
            (FlowKind::Deny, Some("policy deny-all"))
        );
        assert!(metrics
            .encode()
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_failed_total")
                && l.contains("response_flags=\"DENY\"")));
    }
}
