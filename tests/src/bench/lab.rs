//! The benchmark's world: four lab nodes, their pods and daemons, the echo and iperf3
//! servers, and the baseline proxies.
//!
//! ```text
//! node1  daemon (pooled tunnels, splice off)   pods mc ms (meshed)  bc bs (not enrolled)
//!        + 98 idle enrolled workloads (S6: 100 workloads on the node)
//!        + socat, haproxy, stunnel client: plain/TLS hops for bc
//! node2  daemon                                pods ms (meshed)  bs (not enrolled)
//!        + stunnel server
//! node3  daemon (one handshake per connection, splice on when the daemon has it)
//!                                              pods mc ms (meshed)
//! node4  no daemon, no programs                pods bc bs (S7)
//! ```
//! Every server pod runs `loadgen serve` on [`ECHO_PORT`] and `iperf3 -s` on
//! [`IPERF_PORT`].
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context as _, Result};
use mesh_node::config::{Config, WorkloadConfig};
use mesh_node::policy::AuthorizationPolicy;

use super::baselines::Baselines;
use crate::mesh::{to_yaml, MeshSpec};
use crate::{Daemon, Lab, LabChild, Node, Pod};

pub const ECHO_PORT: u16 = 7000;
pub const IPERF_PORT: u16 = 5201;
/// Enrolled workloads on node1 in total (S6).
pub const NODE1_WORKLOADS: usize = 100;
const READY: Duration = Duration::from_secs(30);

/// Every namespace of the bench lab gets these: tens of thousands of short connections
/// per run would otherwise exhaust the ephemeral ports with TIME_WAIT sockets. The same
/// for every configuration, so no figure is favoured.
const SYSCTLS: &[(&str, &str)] = &[
    ("/proc/sys/net/ipv4/tcp_tw_reuse", "1"),
    ("/proc/sys/net/ipv4/ip_local_port_range", "1024 65000"),
    ("/proc/sys/net/core/somaxconn", "4096"),
];

pub struct BenchLab {
    pub lab: Lab,
    pub nodes: [Node; 4],
    /// node1: meshed client and server, unenrolled client and server.
    pub mc1: Pod,
    pub ms1: Pod,
    pub bc1: Pod,
    pub bs1: Pod,
    pub ms2: Pod,
    pub bs2: Pod,
    pub mc3: Pod,
    pub ms3: Pod,
    pub bc4: Pod,
    pub bs4: Pod,
    pub spec: MeshSpec,
    /// Daemons of node1, node2, node3.
    pub daemons: Vec<Daemon>,
    pub baselines: Baselines,
    /// Whether this mesh-node has the same-node splice switch (`bpf.splice`).
    pub splice: bool,
    idle: Vec<WorkloadConfig>,
    _servers: Vec<LabChild>,
}

impl BenchLab {
    pub fn build() -> Result<BenchLab> {
        let lab = Lab::new("bench");
        let nodes = [lab.add_node(), lab.add_node(), lab.add_node(), lab.add_node()];
        let pod = |n: usize, name: &str| lab.add_pod(&nodes[n], name);
        let (mc1, ms1, bc1, bs1) = (pod(0, "mc"), pod(0, "ms"), pod(0, "bc"), pod(0, "bs"));
        // Workload names are unique in the mesh (namespace/name), so each node's pods
        // carry the node's number.
        let (ms2, bs2) = (pod(1, "ms2"), pod(1, "bs2"));
        let (mc3, ms3) = (pod(2, "mc3"), pod(2, "ms3"));
        let (bc4, bs4) = (pod(3, "bc4"), pod(3, "bs4"));
        for ns in lab
            .nodes()
            .iter()
            .map(|n| &n.netns)
            .chain(lab.pods().iter().map(|p| &p.netns))
        {
            ns.run(|| {
                for (path, value) in SYSCTLS {
                    std::fs::write(path, value).unwrap_or_else(|e| panic!("{path} in {ns}: {e}"));
                }
            });
        }
        let mut servers = Vec::new();
        for server in [&ms1, &bs1, &ms2, &bs2, &ms3, &bs4] {
            servers.push(start_echo(&lab, server));
            servers.push(start_iperf(&lab, server));
        }
        let spec = MeshSpec::new(
            &[&nodes[0], &nodes[1], &nodes[2]],
            &[&mc1, &ms1, &ms2, &mc3, &ms3],
        );
        let splice = splice_switch_exists();
        let idle = idle_workloads(&nodes[0], NODE1_WORKLOADS - 2)?;
        let mut bench = BenchLab {
            baselines: Baselines::start(&lab, &nodes, &bs1, &bs2)?,
            lab,
            nodes,
            mc1,
            ms1,
            bc1,
            bs1,
            ms2,
            bs2,
            mc3,
            ms3,
            bc4,
            bs4,
            spec,
            daemons: Vec::new(),
            splice,
            idle,
            _servers: servers,
        };
        for i in 0..3 {
            let yaml = bench.node_yaml(i, &[])?;
            bench.daemons.push(bench.lab.start_daemon(&bench.nodes[i], &yaml));
        }
        Ok(bench)
    }

    /// The config of node `i` (0-based) with `policies`: node3 opens one tunnel per
    /// connection and (when the daemon has it) splices same-node connections in the
    /// kernel; node1 and node2 pool tunnels and do not splice.
    pub fn node_yaml(&self, i: usize, policies: &[AuthorizationPolicy]) -> Result<String> {
        let mut config: Config = self.spec.config(&self.lab, &self.nodes[i]);
        config.policies = policies.to_vec();
        config.workloads.extend(self.idle.iter().cloned().map(|mut w| {
            if i != 0 {
                w.cgroup = None;
            }
            w
        }));
        config.hbone.reuse_connections = i != 2;
        if !self.splice {
            return Ok(to_yaml(&config));
        }
        let mut value = serde_json::to_value(&config).context("config to JSON")?;
        value["bpf"]["splice"] = serde_json::Value::Bool(i == 2);
        serde_norway::to_string(&value).context("config to YAML")
    }

    /// Writes new configs with `policies` for node1 and node2 and waits until both
    /// daemons have loaded them (their `config reloaded` log line).
    pub fn reload_policies(&self, policies: &[AuthorizationPolicy]) -> Result<Duration> {
        let started = std::time::Instant::now();
        let marks: Vec<usize> = self.daemons[..2]
            .iter()
            .map(|d| d.output().line_count())
            .collect();
        let mut changed = Vec::new();
        for i in 0..2 {
            let path = self.daemons[i].config_path();
            let yaml = self.node_yaml(i, policies)?;
            // An unchanged file is not reloaded, so there is nothing to wait for.
            if std::fs::read_to_string(path).ok().as_deref() != Some(yaml.as_str()) {
                std::fs::write(path, yaml)?;
                changed.push(i);
            }
        }
        let expected = format!("policies={}", policies.len());
        for (i, (d, from)) in self.daemons[..2].iter().zip(marks).enumerate() {
            if !changed.contains(&i) {
                continue;
            }
            d.output()
                .wait_for_line_from(
                    from,
                    |l| l.contains("config reloaded") && l.contains(&expected),
                    READY,
                )
                .map_err(|e| anyhow::anyhow!("{}: reload with {expected}: {e}", d.node().name))?;
        }
        Ok(started.elapsed())
    }
}

/// Detects the splice engineer's `bpf.splice` switch in the daemon's own config types,
/// so this harness builds against mesh-node with or without it.
pub fn splice_switch_exists() -> bool {
    serde_json::to_value(mesh_node::config::BpfConfig::default())
        .ok()
        .and_then(|v| v.get("splice").map(|_| ()))
        .is_some()
}

pub fn echo_addr(pod: &Pod) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(pod.ipv4(), ECHO_PORT))
}

fn start_echo(lab: &Lab, pod: &Pod) -> LabChild {
    let child = lab.spawn_named(
        &format!("echo-{}-{}", pod.node_index, pod.name),
        pod.command(super::loadgen_bin())
            .args(["serve", "--listen", &format!("0.0.0.0:{ECHO_PORT}")]),
    );
    child.wait_stdout("listening", READY);
    child
}

fn start_iperf(lab: &Lab, pod: &Pod) -> LabChild {
    let child = lab.spawn_named(
        &format!("iperf3-{}-{}", pod.node_index, pod.name),
        pod.command("iperf3")
            .args(["-s", "-p", &IPERF_PORT.to_string(), "--forceflush"]),
    );
    child.wait_stdout("Server listening", READY);
    child
}

/// `count` enrolled workloads without traffic on `node`: a cgroup each (removed with
/// the lab's cgroup tree) and an address of the node's pod subnet that no pod uses.
fn idle_workloads(node: &Node, count: usize) -> Result<Vec<WorkloadConfig>> {
    anyhow::ensure!(count <= 100, "at most 100 idle workloads fit the address plan");
    (0..count)
        .map(|i| {
            let name = format!("idle-{i:03}");
            let cgroup = node.cgroup_path().join(&name);
            crate::cgroup::create(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
            let ip = Ipv4Addr::new(10, 201, node.index as u8, 150 + i as u8);
            Ok(WorkloadConfig {
                name: name.clone(),
                namespace: format!("idle-{}", i % 10),
                service_account: name.clone(),
                node: node.name.clone(),
                ips: vec![ip.into()],
                cgroup: Some(cgroup),
                labels: [("app".to_string(), name)].into(),
                inbound_mode: None,
            })
        })
        .collect()
}

/// The node's address on its pod bridge, where the baseline proxies listen.
pub fn gateway(node: &Node, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(node.pod_gateway_v4(), port))
}

pub fn node_addr(node: &Node, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(node.ipv4(), port))
}

pub fn v4(pod: &Pod, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(pod.ipv4(), port))
}
