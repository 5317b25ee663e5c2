//! In-process tests of the admin surfaces, against a fake [`AdminSource`].
mod cli;
mod grpc;
mod http;

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::*;

/// Fixed answers, a settable readiness, and a flow channel the test publishes on.
pub(super) struct FakeSource {
    pub readiness: Mutex<Readiness>,
    pub flows: broadcast::Sender<FlowEvent>,
}

pub(super) const READY: Readiness = Readiness {
    programs_attached: true,
    state_loaded: true,
    certificates_present: true,
    draining: false,
};

impl FakeSource {
    pub fn new() -> Arc<FakeSource> {
        Arc::new(FakeSource {
            readiness: Mutex::new(READY),
            flows: broadcast::channel(64).0,
        })
    }
}

pub(super) fn workloads() -> Vec<WorkloadInfo> {
    vec![
        WorkloadInfo {
            name: "sleep".into(),
            namespace: "default".into(),
            identity: "spiffe://cluster.local/ns/default/sa/sleep".into(),
            node: "node-a".into(),
            ips: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            local: true,
            cgroup_id: Some(4242),
            inbound_mode: "strict".into(),
        },
        WorkloadInfo {
            name: "httpbin".into(),
            namespace: "web".into(),
            identity: "spiffe://cluster.local/ns/web/sa/httpbin".into(),
            node: "node-b".into(),
            ips: vec!["10.0.1.7".parse().unwrap()],
            local: false,
            cgroup_id: None,
            inbound_mode: "permissive".into(),
        },
    ]
}

pub(super) fn connections() -> Vec<ConnectionInfo> {
    vec![ConnectionInfo {
        id: 17,
        direction: Direction::Outbound,
        source: "default/sleep".into(),
        destination: "web/httpbin".into(),
        source_principal: Some("spiffe://cluster.local/ns/default/sa/sleep".into()),
        destination_principal: Some("spiffe://cluster.local/ns/web/sa/httpbin".into()),
        started_unix_ms: 1_714_564_800_000,
        bytes_sent: 1200,
        bytes_received: 34,
    }]
}

pub(super) fn certificates() -> Vec<CertificateInfo> {
    vec![CertificateInfo {
        identity: "spiffe://cluster.local/ns/default/sa/sleep".into(),
        serial: "0a1b2c".into(),
        not_before: 1_714_564_800,
        not_after: 1_714_651_200,
    }]
}

pub(super) fn flow(kind: FlowKind, source: &str, destination: &str) -> FlowEvent {
    FlowEvent {
        time_unix_ms: 1_714_564_800_123,
        kind,
        direction: Direction::Outbound,
        source: source.into(),
        destination: destination.into(),
        source_principal: Some(format!("spiffe://cluster.local/ns/default/sa/{source}")),
        destination_principal: None,
        bytes_sent: 10,
        bytes_received: 20,
        duration_ms: 30,
        reason: (kind == FlowKind::Deny).then(|| "policy deny-all".into()),
    }
}

impl AdminSource for FakeSource {
    fn ready(&self) -> Readiness {
        *self.readiness.lock().unwrap()
    }
    fn config_dump(&self) -> serde_json::Value {
        serde_json::json!({"node": "node-a", "trustDomain": "cluster.local"})
    }
    fn workloads(&self) -> Vec<WorkloadInfo> {
        workloads()
    }
    fn connections(&self) -> Vec<ConnectionInfo> {
        connections()
    }
    fn certificates(&self) -> Vec<CertificateInfo> {
        certificates()
    }
    fn flows(&self) -> broadcast::Receiver<FlowEvent> {
        self.flows.subscribe()
    }
    fn status(&self) -> StatusInfo {
        StatusInfo {
            node: "node-a".into(),
            version: "0.1.0".into(),
            uptime_seconds: 3725,
            workloads: 2,
            local_workloads: 1,
            connections: 1,
            readiness: self.ready(),
        }
    }
}

#[test]
fn readiness_reasons() {
    assert!(READY.is_ready());
    let r = Readiness {
        programs_attached: false,
        draining: true,
        ..READY
    };
    assert!(!r.is_ready());
    assert_eq!(r.not_ready_reasons(), ["programs not attached", "draining"]);
    assert_eq!(Readiness::default().not_ready_reasons().len(), 3);
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["ready"], false);
    assert_eq!(json["notReadyReasons"][1], "draining");
}

#[test]
fn flow_filter() {
    let f = FlowFilter {
        source: Some("sleep".into()),
        destination: None,
        kind: Some(FlowKind::Deny),
    };
    assert!(f.matches(&flow(FlowKind::Deny, "sleep", "httpbin")));
    assert!(!f.matches(&flow(FlowKind::Open, "sleep", "httpbin")));
    assert!(!f.matches(&flow(FlowKind::Deny, "curl", "httpbin")));
    // The principal counts too.
    let by_principal = FlowFilter {
        source: Some("sa/sleep".into()),
        ..FlowFilter::default()
    };
    assert!(by_principal.matches(&flow(FlowKind::Open, "sleep", "x")));
    assert!(FlowFilter::default().matches(&flow(FlowKind::Close, "a", "b")));
}

#[test]
fn json_shapes() {
    let c = serde_json::to_value(&certificates()[0]).unwrap();
    assert_eq!(c["notBefore"], "2024-05-01T12:00:00Z");
    assert_eq!(c["notAfter"], "2024-05-02T12:00:00Z");
    let w = serde_json::to_value(&workloads()[0]).unwrap();
    assert_eq!(w["ips"][1], "fd00::1");
    assert_eq!(w["cgroupId"], 4242);
    let f = serde_json::to_value(flow(FlowKind::Deny, "a", "b")).unwrap();
    assert_eq!(f["kind"], "deny");
    assert_eq!(f["direction"], "outbound");
    assert_eq!(f["reason"], "policy deny-all");
}
