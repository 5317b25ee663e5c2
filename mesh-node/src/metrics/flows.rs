//! `mesh_kernel_flow_*`: the kernel's per-flow counters (`MESH_FLOWS`), aggregated by
//! the daemon per (direction, workload, peer) so that the label set stays bounded by
//! the config, not by connections, addresses or ports.
use std::sync::{atomic::Ordering, Arc};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// The kernel's counts of one flow aggregate, in the order the families are registered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTotals {
    pub opened: u64,
    pub closed: u64,
    pub sent: u64,
    pub received: u64,
    pub denied: u64,
}

impl FlowTotals {
    pub fn add(&mut self, other: &FlowTotals) {
        self.opened += other.opened;
        self.closed += other.closed;
        self.sent += other.sent;
        self.received += other.received;
        self.denied += other.denied;
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct FlowLabels {
    /// `outbound` (the workload connected) or `inbound` (a connection attempt to it).
    pub direction: &'static str,
    pub workload: String,
    pub workload_namespace: String,
    /// The other end's workload, or `unknown` outside the mesh's config.
    pub peer_workload: String,
    pub peer_workload_namespace: String,
}

type Families = [Family<FlowLabels, Counter<u64>>; 5];

#[derive(Clone, Debug)]
pub(super) struct FlowFamilies {
    families: Arc<Families>,
    keys: Gauge,
}

impl FlowFamilies {
    pub(super) fn register(registry: &mut Registry) -> FlowFamilies {
        let families: Families = Default::default();
        let help = [
            (
                "mesh_kernel_flow_connections_opened",
                "Connections captured by the kernel programs",
            ),
            (
                "mesh_kernel_flow_connections_closed",
                "Captured connections whose workload socket the kernel saw close",
            ),
            (
                "mesh_kernel_flow_sent_bytes",
                "Payload bytes the workload sent on captured connections, by the kernel's TCP accounting",
            ),
            (
                "mesh_kernel_flow_received_bytes",
                "Payload bytes the workload received on captured connections, by the kernel's TCP accounting",
            ),
            (
                "mesh_kernel_flow_denied",
                "Connections refused in the kernel (policy fast path, uncapturable, STRICT bypass)",
            ),
        ];
        for ((name, help), family) in help.into_iter().zip(&families) {
            registry.register(name, help, family.clone());
        }
        let keys = Gauge::default();
        registry.register(
            "mesh_kernel_flow_keys",
            "Flows in the kernel's per-flow map after the daemon's last harvest",
            keys.clone(),
        );
        FlowFamilies {
            families: Arc::new(families),
            keys,
        }
    }

    pub(super) fn set_keys(&self, n: usize) {
        self.keys.set(n as i64);
    }

    /// Sets the series of `labels` to the kernel's running totals (set, not added: reading
    /// twice never double counts).
    pub(super) fn set(&self, labels: &FlowLabels, totals: &FlowTotals) {
        let values = [
            totals.opened,
            totals.closed,
            totals.sent,
            totals.received,
            totals.denied,
        ];
        for (family, value) in self.families.iter().zip(values) {
            family
                .get_or_create(labels)
                .inner()
                .store(value, Ordering::Relaxed);
        }
    }
}
