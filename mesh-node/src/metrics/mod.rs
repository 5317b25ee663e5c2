//! The daemon's Prometheus metrics (design §5): Istio's `istio_tcp_*` series, so that
//! Istio's dashboards work unchanged, and the daemon's own `mesh_*` internals. One
//! [`Metrics`] per daemon owns the registry; `admin::http::serve_metrics` serves it.
//!
//! Every label value comes from a bounded set (workloads, identities, map and counter
//! names, fixed verdicts): never a connection id, a port or a client address.
mod tcp;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::{atomic::AtomicU64, Arc};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use tcp::TcpFamilies;
pub use tcp::{Reporter, SecurityPolicy, TcpCounters, TcpLabels, NO_FLAGS, UNKNOWN};

/// Content type of [`Metrics::encode`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// Content type of [`Metrics::encode_openmetrics`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    side: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabels {
    identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpliceLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KernelLabels {
    counter: String,
}

/// The registry and every metric in it. Shared as `Arc<Metrics>`; all methods take
/// `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tcp: Arc<TcpFamilies>,
    policy_decisions: Family<VerdictLabels, Counter>,
    tls_handshakes: Family<HandshakeLabels, Counter>,
    svid_expiry: Family<IdentityLabels, Gauge>,
    bpf_map_fill: Family<MapLabels, Gauge<f64, AtomicU64>>,
    datapath: Family<KernelLabels, Counter>,
    spliced_connections: Family<RouteLabels, Counter>,
    spliced_bytes: Family<SpliceLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let tcp = Arc::new(TcpFamilies::default());
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp.opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp.closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent towards the destination over TCP connections",
            tcp.sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the destination over TCP connections",
            tcp.received.clone(),
        );
        registry.register(
            "istio_tcp_connections_failed",
            "TCP connections that could not be set up",
            tcp.failed.clone(),
        );

        let policy_decisions = Family::default();
        registry.register(
            "mesh_policy_decisions",
            "Authorization policy decisions, by verdict (allow or deny)",
            policy_decisions.clone(),
        );
        let tls_handshakes = Family::default();
        registry.register(
            "mesh_tls_handshakes",
            "mTLS handshakes of HBONE tunnels, by side (client or server) and result (ok or error)",
            tls_handshakes.clone(),
        );
        let svid_expiry = Family::default();
        registry.register(
            "mesh_svid_expiry_timestamp_seconds",
            "Expiry (not after) of the SVID the node holds for each identity, in seconds since the epoch",
            svid_expiry.clone(),
        );
        let bpf_map_fill = Family::default();
        registry.register(
            "mesh_bpf_map_fill_ratio",
            "Entries in each BPF map divided by its capacity",
            bpf_map_fill.clone(),
        );
        let datapath = Family::default();
        registry.register(
            "mesh_datapath",
            "Totals of the kernel programs' counters (captured connections, bypass attempts, ...), \
             read from their per-CPU map",
            datapath.clone(),
        );
        let spliced_connections = Family::default();
        registry.register(
            "mesh_spliced_connections",
            "Connections whose bytes the kernel moved between the daemon's sockets with splice(2) \
             (bpf.splice), by route (local: a workload of this node, passthrough: not in the mesh)",
            spliced_connections.clone(),
        );
        let spliced_bytes = Family::default();
        registry.register(
            "mesh_spliced_bytes",
            "Bytes moved by splice(2), by direction (request: from the source workload, response: \
             towards it)",
            spliced_bytes.clone(),
        );
        Arc::new(Metrics {
            registry,
            spliced_connections,
            spliced_bytes,
            tcp,
            policy_decisions,
            tls_handshakes,
            svid_expiry,
            bpf_map_fill,
            datapath,
        })
    }

    /// The `istio_tcp_*` counters of one label set.
    pub fn tcp(&self, labels: &TcpLabels) -> TcpCounters {
        TcpCounters::new(self.tcp.clone(), labels)
    }

    /// `mesh_policy_decisions_total{verdict="allow"|"deny"}`.
    pub fn policy_decision(&self, allowed: bool) {
        let verdict = if allowed { "allow" } else { "deny" };
        self.policy_decisions
            .get_or_create(&VerdictLabels { verdict })
            .inc();
    }

    /// `mesh_spliced_connections_total{route="local"|"passthrough"}`: one more connection
    /// carried by splice(2).
    pub fn spliced_connection(&self, route: &'static str) {
        self.spliced_connections
            .get_or_create(&RouteLabels { route })
            .inc();
    }

    /// `mesh_spliced_bytes_total{direction="request"|"response"}`.
    pub fn spliced_bytes(&self, request: bool, n: u64) {
        let direction = if request { "request" } else { "response" };
        self.spliced_bytes
            .get_or_create(&SpliceLabels { direction })
            .inc_by(n);
    }

    /// `mesh_tls_handshakes_total{side, result="ok"|"error"}`; `side` is `client` or
    /// `server`.
    pub fn tls_handshake(&self, side: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.tls_handshakes
            .get_or_create(&HandshakeLabels { side, result })
            .inc();
    }

    /// `mesh_svid_expiry_timestamp_seconds{identity}`: the not-after of the SVID held for
    /// `identity`.
    pub fn set_svid_expiry(&self, identity: &str, unix_seconds: i64) {
        self.svid_expiry
            .get_or_create(&IdentityLabels {
                identity: identity.to_owned(),
            })
            .set(unix_seconds);
    }

    /// Drops the series of an identity the node no longer serves.
    pub fn remove_svid(&self, identity: &str) {
        self.svid_expiry.remove(&IdentityLabels {
            identity: identity.to_owned(),
        });
    }

    /// `mesh_bpf_map_fill_ratio{map}`, between 0 and 1.
    pub fn set_bpf_map_fill(&self, map: &str, ratio: f64) {
        self.bpf_map_fill
            .get_or_create(&MapLabels { map: map.to_owned() })
            .set(ratio);
    }

    /// `mesh_datapath_total{counter=name}` := `value`, the kernel's own running total
    /// (summed over CPUs), for a counter name of `mesh_common::Counter`. Setting rather
    /// than adding means no double counting however often it is read, and a restarted
    /// daemon carries on from the kernel's totals, since the maps outlive it.
    pub fn set_kernel_counter(&self, name: &str, value: u64) {
        self.datapath
            .get_or_create(&KernelLabels {
                counter: name.to_owned(),
            })
            .inner()
            .store(value, std::sync::atomic::Ordering::Relaxed);
    }

    /// The exposition in the Prometheus text format (version 0.0.4, [`CONTENT_TYPE`]): what
    /// every scraper and `promtool check metrics` read.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The exposition in the OpenMetrics text format ([`OPENMETRICS_CONTENT_TYPE`]), `# EOF`
    /// included, for scrapers that ask for it.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
