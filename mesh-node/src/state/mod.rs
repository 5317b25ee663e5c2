//! The state store: the checked view of the mesh (nodes, workloads, identities) that the
//! proxy and the datapath read. Only the config sources build it; a new `MeshState`
//! replaces the old one whole.
pub mod cgroup;

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use ipnet::IpNet;
use serde::Serialize;

pub use cgroup::CgroupId;

use crate::config::{Config, ConfigError, InboundMode, MESH_PORTS};
use crate::policy::PolicySet;

/// Index of a workload in [`MeshState::workloads`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct WorkloadId(pub u32);

#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: String,
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// For workloads of this node: the cgroup directory and its id.
    pub cgroup: Option<(PathBuf, CgroupId)>,
    pub inbound_mode: InboundMode,
}

impl Workload {
    /// The workload's SPIFFE identity. Config validation checks the names, so this only
    /// fails for a state built around validation.
    pub fn identity(
        &self,
        trust_domain: &str,
    ) -> Result<crate::identity::Identity, crate::identity::IdentityError> {
        crate::identity::Identity::new(trust_domain, &self.namespace, &self.service_account)
    }
}

/// Where a captured connection goes, decided from its original destination.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// A workload on this node.
    Local(&'a Workload),
    /// A workload on another node, reached through that node's daemon.
    Remote {
        workload: &'a Workload,
        node_addrs: &'a [IpAddr],
    },
    /// Not a mesh workload: plain TCP to the original destination.
    Passthrough,
}

#[derive(Debug, Clone, Serialize)]
pub struct MeshState {
    pub node: String,
    pub trust_domain: String,
    pub workloads: Vec<Workload>,
    pub nodes: BTreeMap<String, Vec<IpAddr>>,
    /// cgroup v2 directory the programs attach to.
    pub attach_cgroup: PathBuf,
    pub capture: Vec<SocketAddr>,
    pub excluded_cidrs: Vec<IpNet>,
    /// Excluded destination ports, including the mesh's own.
    pub excluded_ports: Vec<u16>,
    /// Captured sockets go into the kernel socket map (and `sk_msg` counts their bytes).
    pub socket_map: bool,
    /// Write policy verdicts for the kernel fast path.
    pub policy_fast_path: bool,
    /// Splice plain TCP connections in the kernel (`bpf.splice`).
    pub splice: bool,
    /// Sources treated as this node's daemon by STRICT workloads: every address of the
    /// node's network namespace, plus `inbound.trustedSources`.
    pub trusted_sources: Vec<IpAddr>,
    /// The compiled authorization policies.
    #[serde(skip)]
    pub policies: PolicySet,
    #[serde(skip)]
    by_ip: HashMap<IpAddr, WorkloadId>,
    #[serde(skip)]
    by_cgroup: HashMap<CgroupId, WorkloadId>,
}

impl MeshState {
    /// Validates `config` and checks it against this host (cgroups exist, the daemon is
    /// not itself a workload). Any error rejects the whole config.
    pub fn build(config: &Config) -> Result<MeshState, ConfigError> {
        config.validate()?;
        let invalid = |field: String, message: String| ConfigError::Invalid { field, message };
        if !crate::config::is_valid_name(&config.root_namespace) {
            return Err(invalid(
                "rootNamespace".into(),
                format!("{:?} is not a valid namespace name", config.root_namespace),
            ));
        }
        let policies = PolicySet::new(config.policies.clone(), &config.root_namespace)
            .map_err(|e| invalid(e.path, e.message))?;
        let mount = cgroup::cgroup2_mount().map_err(|e| invalid("bpf.cgroup".into(), e.to_string()))?;
        let attach_cgroup = match &config.bpf.cgroup {
            Some(p) => cgroup::resolve(&mount, p).map_err(|m| invalid("bpf.cgroup".into(), m))?,
            None => mount.clone(),
        };
        cgroup::cgroup_id(&attach_cgroup)
            .map_err(|e| invalid("bpf.cgroup".into(), format!("{}: {e}", attach_cgroup.display())))?;
        let own = cgroup::own_cgroup(&mount).map_err(|e| invalid("bpf.cgroup".into(), e.to_string()))?;

        let mut workloads = Vec::with_capacity(config.workloads.len());
        let mut by_ip = HashMap::new();
        let mut by_cgroup = HashMap::new();
        for (i, w) in config.workloads.iter().enumerate() {
            let id = WorkloadId(i as u32);
            let cgroup = match &w.cgroup {
                None => None,
                Some(p) => {
                    let field = format!("workloads[{i}].cgroup");
                    let path = cgroup::resolve(&mount, p).map_err(|m| invalid(field.clone(), m))?;
                    let cg = cgroup::cgroup_id(&path).map_err(|e| {
                        invalid(
                            field.clone(),
                            format!("cgroup {} cannot be used: {e}", path.display()),
                        )
                    })?;
                    if !path.starts_with(&attach_cgroup) {
                        return Err(invalid(
                            field,
                            format!(
                                "{} is outside bpf.cgroup {}: its connections would not be captured",
                                path.display(),
                                attach_cgroup.display()
                            ),
                        ));
                    }
                    if own.starts_with(&path) {
                        return Err(invalid(field, format!(
                            "{} contains the daemon itself ({}); the daemon's own connections must never be captured",
                            path.display(),
                            own.display()
                        )));
                    }
                    if let Some(WorkloadId(j)) = by_cgroup.insert(cg, id) {
                        return Err(invalid(field, format!("same cgroup as workloads[{j}]")));
                    }
                    Some((path, cg))
                }
            };
            for ip in &w.ips {
                by_ip.insert(*ip, id);
            }
            workloads.push(Workload {
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                service_account: w.service_account.clone(),
                node: w.node.clone(),
                ips: w.ips.clone(),
                labels: w.labels.clone(),
                cgroup,
                inbound_mode: w
                    .inbound_mode
                    .or_else(|| config.inbound.namespaces.get(&w.namespace).copied())
                    .or(config.inbound.mode)
                    .unwrap_or_default(),
            });
        }
        let mut excluded_ports: Vec<u16> = MESH_PORTS
            .into_iter()
            .chain([config.capture_port(), config.hbone_port()])
            .collect();
        excluded_ports.extend(&config.exclusions.ports);
        excluded_ports.sort_unstable();
        excluded_ports.dedup();
        Ok(MeshState {
            node: config.node.clone(),
            trust_domain: config.trust_domain.clone(),
            nodes: config
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.addresses.clone()))
                .collect(),
            workloads,
            attach_cgroup,
            capture: config.capture_addrs(),
            excluded_cidrs: config
                .exclusions
                .cidrs
                .iter()
                .map(|c| c.parse().expect("validated"))
                .collect(),
            excluded_ports,
            socket_map: config.bpf.socket_map,
            policy_fast_path: config.bpf.policy_fast_path,
            splice: config.bpf.splice,
            trusted_sources: {
                let mut t = netns_addresses().map_err(|e| {
                    invalid(
                        "inbound.trustedSources".into(),
                        format!("listing this node's addresses: {e}"),
                    )
                })?;
                t.extend(&config.inbound.trusted_sources);
                t.sort_unstable();
                t.dedup();
                t
            },
            policies,
            by_ip,
            by_cgroup,
        })
    }

    pub fn workload(&self, id: WorkloadId) -> &Workload {
        &self.workloads[id.0 as usize]
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<(WorkloadId, &Workload)> {
        self.by_ip.get(&ip).map(|id| (*id, self.workload(*id)))
    }

    pub fn workload_by_cgroup(&self, cg: CgroupId) -> Option<(WorkloadId, &Workload)> {
        self.by_cgroup.get(&cg).map(|id| (*id, self.workload(*id)))
    }

    /// Workloads of this node with their cgroup ids (what the kernel enrolls).
    pub fn local_cgroups(&self) -> impl Iterator<Item = (CgroupId, WorkloadId)> + '_ {
        self.by_cgroup.iter().map(|(cg, id)| (*cg, *id))
    }

    pub fn route(&self, dst: IpAddr) -> Route<'_> {
        match self.workload_by_ip(dst) {
            None => Route::Passthrough,
            Some((_, w)) if w.node == self.node => Route::Local(w),
            Some((_, w)) => Route::Remote {
                workload: w,
                node_addrs: &self.nodes[&w.node],
            },
        }
    }
}

/// Every address configured in this network namespace.
fn netns_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says its real type.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    // SAFETY: AF_INET means a sockaddr_in.
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
                }
                libc::AF_INET6 => {
                    // SAFETY: AF_INET6 means a sockaddr_in6.
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: frees the list getifaddrs allocated, once.
    unsafe { libc::freeifaddrs(ifap) };
    Ok(out)
}
