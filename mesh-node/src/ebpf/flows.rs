//! The daemon's side of the kernel's per-flow counters (`MESH_FLOWS`): it sums each
//! key's per-CPU values, aggregates keys into bounded metric label sets, and harvests
//! idle keys (moves their counts into user-space totals and deletes them from the map)
//! so that the map never fills.
//!
//! No double counting: a key's live counts are exported as they are (set, not added);
//! a harvested key's counts are added to the totals exactly once, when it is deleted.
//! Across a restart the new daemon exports the keys still in the map; the totals the
//! old daemon had harvested are gone with it (the series restart lower, which Prometheus
//! reads as a counter reset, as for any restarted process), never counted twice.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use mesh_common::{FlowCounters, FlowKey, FLOW_INBOUND};

use super::maps::key_ip;
use crate::{
    metrics::{FlowLabels, FlowTotals},
    state::{CgroupId, MeshState},
};

/// How many unchanged upkeep rounds (one a second) make a key idle enough to harvest.
const IDLE_ROUNDS: u8 = 5;

#[derive(Default)]
pub struct FlowLedger {
    harvested: BTreeMap<FlowLabels, FlowTotals>,
    /// Each key's last counts and how many rounds they have not changed.
    seen: HashMap<FlowKey, (FlowCounters, u8)>,
}

/// What one round decided: the totals to export, the keys to delete.
pub struct Round {
    pub totals: BTreeMap<FlowLabels, FlowTotals>,
    pub harvest: Vec<FlowKey>,
}

impl FlowLedger {
    /// One upkeep round over a snapshot of the map. Keys of cgroups that are no longer
    /// enrolled and keys idle for [`IDLE_ROUNDS`] are harvested: the caller deletes them
    /// and calls [`FlowLedger::harvested`] with the ones it deleted.
    pub fn round(&mut self, state: &MeshState, live: &[(FlowKey, FlowCounters)]) -> Round {
        let mut totals = self.harvested.clone();
        let mut harvest = Vec::new();
        let mut seen = HashMap::with_capacity(live.len());
        for (key, counts) in live {
            totals
                .entry(labels(state, key))
                .or_default()
                .add(&totals_of(counts));
            let idle = match self.seen.get(key) {
                Some((last, rounds)) if last == counts => rounds + 1,
                _ => 0,
            };
            let enrolled = state.workload_by_cgroup(CgroupId(key.cgroup_id)).is_some();
            if !enrolled || idle >= IDLE_ROUNDS {
                harvest.push(*key);
            }
            seen.insert(*key, (*counts, idle));
        }
        self.seen = seen;
        Round { totals, harvest }
    }

    /// `deleted` keys left the map with these counts: they count from now on in the
    /// user-space totals.
    pub fn harvested(&mut self, state: &MeshState, deleted: &[(FlowKey, FlowCounters)]) {
        for (key, counts) in deleted {
            self.seen.remove(key);
            self.harvested
                .entry(labels(state, key))
                .or_default()
                .add(&totals_of(counts));
        }
    }
}

fn totals_of(c: &FlowCounters) -> FlowTotals {
    FlowTotals {
        opened: c.opened,
        closed: c.closed,
        sent: c.bytes_sent,
        received: c.bytes_received,
        denied: c.denied,
    }
}

const UNKNOWN: &str = "unknown";

fn labels(state: &MeshState, key: &FlowKey) -> FlowLabels {
    let name = |w: Option<&crate::state::Workload>| match w {
        Some(w) => (w.name.clone(), w.namespace.clone()),
        None => (UNKNOWN.to_owned(), UNKNOWN.to_owned()),
    };
    let (workload, workload_namespace) =
        name(state.workload_by_cgroup(CgroupId(key.cgroup_id)).map(|(_, w)| w));
    let peer_ip: Option<IpAddr> = key_ip(key.family, key.addr);
    let (peer_workload, peer_workload_namespace) =
        name(peer_ip.and_then(|ip| state.workload_by_ip(ip)).map(|(_, w)| w));
    FlowLabels {
        direction: if key.direction == FLOW_INBOUND {
            "inbound"
        } else {
            "outbound"
        },
        workload,
        workload_namespace,
        peer_workload,
        peer_workload_namespace,
    }
}
