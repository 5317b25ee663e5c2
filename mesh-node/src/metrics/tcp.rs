//! Istio's TCP metrics: the names and labels that Istio's dashboards query.
use std::sync::{Arc, OnceLock};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family},
};

/// Which end of the connection reports it. Each daemon on the path reports its own end:
/// the source node as `source`, the destination node as `destination`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    Source,
    Destination,
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        })
    }
}

/// `connection_security_policy`: whether the hop between the nodes was mutual TLS.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SecurityPolicy {
    MutualTls,
    None,
}

impl EncodeLabelValue for SecurityPolicy {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(match self {
            SecurityPolicy::MutualTls => "mutual_tls",
            SecurityPolicy::None => "none",
        })
    }
}

/// The value Istio uses for a label it does not know (e.g. the workload behind a
/// passthrough destination).
pub const UNKNOWN: &str = "unknown";
/// `response_flags` of a connection that nothing went wrong with.
pub const NO_FLAGS: &str = "-";

/// Labels of the `istio_tcp_*` series. Every value must come from a bounded set (workload
/// names, identities, service names, flags): never a connection id, a port or a client
/// address, or each connection would make new series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub connection_security_policy: SecurityPolicy,
    /// `-`, or Envoy-style flags such as `DENY` (refused by policy) or `UF` (upstream
    /// connect failure).
    pub response_flags: String,
}

impl TcpLabels {
    /// Labels with every workload field `unknown`, no flags and no mTLS: fill in what is
    /// known.
    pub fn unknown(reporter: Reporter) -> TcpLabels {
        TcpLabels {
            reporter,
            source_workload: UNKNOWN.into(),
            source_workload_namespace: UNKNOWN.into(),
            source_principal: UNKNOWN.into(),
            destination_workload: UNKNOWN.into(),
            destination_workload_namespace: UNKNOWN.into(),
            destination_principal: UNKNOWN.into(),
            destination_service: UNKNOWN.into(),
            connection_security_policy: SecurityPolicy::None,
            response_flags: NO_FLAGS.into(),
        }
    }
}

pub(super) type CounterFamily<L> = Family<L, Counter>;

/// The five `istio_tcp_*` families.
#[derive(Debug, Default)]
pub(super) struct TcpFamilies {
    pub opened: CounterFamily<TcpLabels>,
    pub closed: CounterFamily<TcpLabels>,
    pub sent: CounterFamily<TcpLabels>,
    pub received: CounterFamily<TcpLabels>,
    pub failed: CounterFamily<TcpLabels>,
}

/// The counters of one label set, for one connection (or many with the same labels).
/// Cheap to clone. A series appears on first use, so a connection that never fails makes
/// no `failed` series.
#[derive(Clone, Debug)]
pub struct TcpCounters {
    families: Arc<TcpFamilies>,
    labels: Arc<TcpLabels>,
    opened: OnceLock<Counter>,
    closed: OnceLock<Counter>,
    sent: OnceLock<Counter>,
    received: OnceLock<Counter>,
    failed: OnceLock<Counter>,
}

impl TcpCounters {
    pub(super) fn new(families: Arc<TcpFamilies>, labels: &TcpLabels) -> TcpCounters {
        TcpCounters {
            families,
            labels: Arc::new(labels.clone()),
            opened: OnceLock::new(),
            closed: OnceLock::new(),
            sent: OnceLock::new(),
            received: OnceLock::new(),
            failed: OnceLock::new(),
        }
    }

    fn counter<'a>(
        &self,
        cell: &'a OnceLock<Counter>,
        family: impl Fn(&TcpFamilies) -> &CounterFamily<TcpLabels>,
    ) -> &'a Counter {
        cell.get_or_init(|| family(&self.families).get_or_create_owned(&self.labels))
    }

    pub fn labels(&self) -> &TcpLabels {
        &self.labels
    }

    pub fn opened(&self) {
        self.counter(&self.opened, |f| &f.opened).inc();
    }

    pub fn closed(&self) {
        self.counter(&self.closed, |f| &f.closed).inc();
    }

    /// Response bytes, destination → source (Istio: "bytes sent during response").
    pub fn sent(&self, bytes: u64) {
        if bytes > 0 {
            self.counter(&self.sent, |f| &f.sent).inc_by(bytes);
        }
    }

    /// Request bytes, source → destination (Istio: "bytes received during request").
    pub fn received(&self, bytes: u64) {
        if bytes > 0 {
            self.counter(&self.received, |f| &f.received).inc_by(bytes);
        }
    }

    /// A connection that could not be set up (refused by policy, upstream unreachable):
    /// the labels' `response_flags` should say why.
    pub fn failed(&self) {
        self.counter(&self.failed, |f| &f.failed).inc();
    }
}
