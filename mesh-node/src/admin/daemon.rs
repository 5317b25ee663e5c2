//! The daemon's [`AdminSource`]: what the admin surfaces show, read from the state
//! store, the connection registry and the certificates, plus the readiness the daemon
//! keeps up to date (programs attached, state loaded, draining).
use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, watch};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::{AdminSource, CertificateInfo, ConnectionInfo, FlowEvent, Readiness, StatusInfo, WorkloadInfo};
use crate::{
    config::{Config, InboundMode},
    identity::{Identity, Svid},
    metrics::Metrics,
    proxy::connections::Connections,
    secrets::SecretManager,
    state::MeshState,
};

pub struct DaemonAdmin {
    started: Instant,
    config: ArcSwap<Config>,
    state: watch::Receiver<Arc<MeshState>>,
    connections: Arc<Connections>,
    secrets: Arc<SecretManager>,
    programs_attached: AtomicBool,
    state_loaded: AtomicBool,
    draining: AtomicBool,
}

impl DaemonAdmin {
    pub fn new(
        config: Config,
        state: watch::Receiver<Arc<MeshState>>,
        connections: Arc<Connections>,
        secrets: Arc<SecretManager>,
    ) -> Arc<DaemonAdmin> {
        Arc::new(DaemonAdmin {
            started: Instant::now(),
            config: ArcSwap::from_pointee(config),
            state,
            connections,
            secrets,
            programs_attached: AtomicBool::new(false),
            state_loaded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        })
    }

    /// The config now in force (after a reload).
    /// The state in force.
    pub fn state(&self) -> Arc<MeshState> {
        self.state.borrow().clone()
    }

    pub fn set_config(&self, config: Config) {
        self.config.store(Arc::new(config));
    }

    pub fn set_programs_attached(&self, attached: bool) {
        self.programs_attached.store(attached, Ordering::Release);
    }

    pub fn set_state_loaded(&self) {
        self.state_loaded.store(true, Ordering::Release);
    }

    /// From SIGTERM on: not ready, so that load balancers and probes move away.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Every local workload has a valid (unexpired) SVID.
    fn certificates_present(&self) -> bool {
        let state = self.state.borrow().clone();
        local_identities(&state)
            .iter()
            .all(|identity| self.secrets.svid(identity).is_some())
    }

    /// Copies what the metrics show of the certificates: each SVID's expiry, and no
    /// series for identities the node no longer holds.
    pub fn export_certificates(&self, metrics: &Metrics, previous: &mut BTreeSet<String>) {
        let held: BTreeSet<String> = self
            .secrets
            .held()
            .iter()
            .map(|svid| {
                let identity = svid.identity.uri();
                metrics.set_svid_expiry(&identity, unix_seconds(svid.not_after));
                identity
            })
            .collect();
        for gone in previous.difference(&held) {
            metrics.remove_svid(gone);
        }
        *previous = held;
    }
}

fn local_identities(state: &MeshState) -> BTreeSet<Identity> {
    state
        .workloads
        .iter()
        .filter(|w| w.node == state.node)
        .filter_map(|w| w.identity(&state.trust_domain).ok())
        .collect()
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn certificate_info(svid: &Svid) -> CertificateInfo {
    let serial = svid
        .chain
        .first()
        .and_then(|leaf| X509Certificate::from_der(leaf).ok())
        .map(|(_, cert)| cert.raw_serial_as_string().replace(':', ""))
        .unwrap_or_default();
    CertificateInfo {
        identity: svid.identity.uri(),
        serial,
        not_before: unix_seconds(svid.not_before),
        not_after: unix_seconds(svid.not_after),
    }
}

impl AdminSource for DaemonAdmin {
    fn ready(&self) -> Readiness {
        Readiness {
            programs_attached: self.programs_attached.load(Ordering::Acquire),
            state_loaded: self.state_loaded.load(Ordering::Acquire),
            certificates_present: self.certificates_present(),
            draining: self.draining.load(Ordering::Acquire),
        }
    }

    fn config_dump(&self) -> serde_json::Value {
        serde_json::to_value(&**self.config.load())
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }

    fn workloads(&self) -> Vec<WorkloadInfo> {
        let state = self.state.borrow().clone();
        state
            .workloads
            .iter()
            .map(|w| WorkloadInfo {
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                identity: w
                    .identity(&state.trust_domain)
                    .map(|i| i.uri())
                    .unwrap_or_default(),
                node: w.node.clone(),
                ips: w.ips.clone(),
                local: w.node == state.node,
                cgroup_id: w.cgroup.as_ref().map(|(_, id)| id.0),
                inbound_mode: match w.inbound_mode {
                    InboundMode::Permissive => "permissive".into(),
                    InboundMode::Strict => "strict".into(),
                },
            })
            .collect()
    }

    fn connections(&self) -> Vec<ConnectionInfo> {
        self.connections.list()
    }

    fn certificates(&self) -> Vec<CertificateInfo> {
        let mut certs: Vec<CertificateInfo> = self.secrets.held().iter().map(certificate_info).collect();
        certs.sort_by(|a, b| a.identity.cmp(&b.identity));
        certs
    }

    fn flows(&self) -> broadcast::Receiver<FlowEvent> {
        self.connections.subscribe()
    }

    fn status(&self) -> StatusInfo {
        let state = self.state.borrow().clone();
        StatusInfo {
            node: state.node.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.started.elapsed().as_secs(),
            workloads: state.workloads.len() as u64,
            local_workloads: state.local_cgroups().count() as u64,
            connections: self.connections.len() as u64,
            readiness: self.ready(),
        }
    }
}
