//! The kernel fast path of policy: the verdicts the source node can decide before any
//! packet leaves. For every local source workload and every address of every mesh
//! workload, policy is evaluated exactly as the destination will (the source's identity,
//! namespace and address of the destination's family; the destination's namespace,
//! labels and port). Ports matter only where a policy names them, so each destination
//! gets an any-port entry (port 0) for "every port no policy names" plus an entry for
//! each named port whose verdict differs. `connect4`/`connect6` refuse a denied connect
//! with EPERM. The destination daemon still enforces every connection: this only makes
//! denials cheap and visible at `connect()`.
use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use mesh_common::{VerdictKey, AF_INET, AF_INET6, MAX_VERDICTS, VERDICT_ALLOW, VERDICT_DENY};

use crate::{
    policy::Request,
    state::{CgroupId, MeshState},
};

/// Every port some policy names in `ports` or `notPorts`.
fn named_ports(state: &MeshState) -> BTreeSet<u16> {
    state
        .policies
        .policies()
        .iter()
        .flat_map(|p| &p.spec.rules)
        .flat_map(|r| r.to.iter().flatten())
        .filter_map(|t| t.operation.as_ref())
        .flat_map(|op| op.ports.iter().chain(&op.not_ports))
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn key(cgroup: CgroupId, ip: IpAddr, port: u16) -> VerdictKey {
    let (addr, family) = match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            (
                std::array::from_fn(|i| {
                    u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
                }),
                AF_INET6,
            )
        }
    };
    VerdictKey {
        cgroup_id: cgroup.0,
        addr,
        port,
        family,
        _pad: 0,
    }
}

/// The verdict map's wanted content, or `None` when it would not fit (then the fast path
/// is off and only the destinations enforce).
pub fn compute(state: &MeshState) -> Option<HashMap<VerdictKey, u8>> {
    let mut out = HashMap::new();
    if state.policies.is_empty() || !state.policy_fast_path {
        return Some(out);
    }
    let ports = named_ports(state);
    let other = (1..=u16::MAX).find(|p| !ports.contains(p)).unwrap_or(1);
    for (cgroup, id) in state.local_cgroups() {
        let src = state.workload(id);
        let principal = format!(
            "{}/ns/{}/sa/{}",
            state.trust_domain, src.namespace, src.service_account
        );
        for dst in &state.workloads {
            for dst_ip in &dst.ips {
                let Some(src_ip) = src.ips.iter().find(|ip| ip.is_ipv4() == dst_ip.is_ipv4()) else {
                    continue;
                };
                let allowed = |port| {
                    state
                        .policies
                        .evaluate(&Request {
                            source_principal: Some(&principal),
                            source_namespace: Some(&src.namespace),
                            source_ip: *src_ip,
                            destination_namespace: &dst.namespace,
                            destination_labels: &dst.labels,
                            destination_port: port,
                        })
                        .allowed
                };
                let default = allowed(other);
                if !default {
                    out.insert(key(cgroup, *dst_ip, 0), VERDICT_DENY);
                }
                for &port in &ports {
                    let verdict = allowed(port);
                    if verdict != default {
                        out.insert(
                            key(cgroup, *dst_ip, port),
                            if verdict { VERDICT_ALLOW } else { VERDICT_DENY },
                        );
                    }
                }
                if out.len() > MAX_VERDICTS as usize {
                    return None;
                }
            }
        }
    }
    Some(out)
}
