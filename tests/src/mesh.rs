//! Mesh configurations for lab nodes, written with mesh-node's own config types so the
//! tests and the daemon can never disagree about the file format.
use std::{collections::BTreeMap, net::IpAddr};

use mesh_node::config::{
    BpfConfig, CaptureConfig, Config, Exclusions, HboneConfig, IdentityConfig, InboundConfig, InboundMode,
    NodeConfig, RemoteCaConfig, WorkloadConfig,
};

use crate::{Daemon, Lab, Node, Pod};

/// A pod taking part in the mesh, with its identity.
#[derive(Clone, Debug)]
pub struct MeshWorkload {
    pub pod: Pod,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub inbound_mode: Option<InboundMode>,
}

impl MeshWorkload {
    /// Namespace `default`, service account named after the pod.
    pub fn new(pod: &Pod) -> MeshWorkload {
        MeshWorkload {
            pod: pod.clone(),
            namespace: "default".into(),
            service_account: pod.name.clone(),
            labels: BTreeMap::from([("app".to_string(), pod.name.clone())]),
            inbound_mode: None,
        }
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.into();
        self
    }

    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_account = sa.into();
        self
    }
}

/// The mesh of a lab: its nodes and workloads, and how each node's config is written.
#[derive(Clone, Debug)]
pub struct MeshSpec {
    pub nodes: Vec<Node>,
    pub workloads: Vec<MeshWorkload>,
    pub exclusions: Exclusions,
    pub svid_ttl: Option<std::time::Duration>,
    /// Use `mesh-node ca serve` (see [`MeshSpec::start_ca`]) instead of a root shared by
    /// the nodes' in-process CAs.
    pub remote_ca: bool,
    /// Authorization policies, written into every node's config.
    pub policies: Vec<mesh_node::policy::AuthorizationPolicy>,
    /// The kernel's policy fast path (on by default, as in the daemon); tests of the
    /// destination's enforcement turn it off so that denied connections reach it.
    pub policy_fast_path: bool,
    /// `bpf.splice` (on by default, as in the daemon).
    pub splice: bool,
}

impl MeshSpec {
    pub fn new(nodes: &[&Node], pods: &[&Pod]) -> MeshSpec {
        MeshSpec {
            nodes: nodes.iter().map(|n| (*n).clone()).collect(),
            workloads: pods.iter().map(|p| MeshWorkload::new(p)).collect(),
            exclusions: Exclusions::default(),
            svid_ttl: None,
            remote_ca: false,
            policy_fast_path: true,
            splice: true,
            policies: Vec::new(),
        }
    }

    /// Where `start_ca` serves: node1's address, port 15012.
    pub fn ca_address(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.nodes[0].ipv4().into(), mesh_node::config::DEFAULT_CA_PORT)
    }

    fn credential_dir(lab: &Lab, node: &Node) -> std::path::PathBuf {
        lab.dir().join(format!("credential-{}", node.name))
    }

    /// Creates the mesh root (once), a node credential per node, and runs
    /// `mesh-node ca serve` in node1's namespace; returns when it is ready.
    pub fn start_ca(&self, lab: &Lab) -> crate::LabChild {
        let dir = lab.dir().join("ca");
        let bin = crate::mesh_node_bin();
        if !dir.join("root-key.pem").exists() {
            lab.run(
                std::process::Command::new(&bin)
                    .args(["ca", "init", "--dir"])
                    .arg(&dir),
                CA_TIMEOUT,
            )
            .assert_success();
        }
        for node in &self.nodes {
            let out = Self::credential_dir(lab, node);
            if !out.join("node.pem").exists() {
                lab.run(
                    std::process::Command::new(&bin)
                        .args(["ca", "issue-node", "--dir"])
                        .arg(&dir)
                        .args(["--node", &node.name, "--out"])
                        .arg(&out),
                    CA_TIMEOUT,
                )
                .assert_success();
            }
        }
        let config = lab.write_file("ca-mesh.yaml", &self.yaml(lab, &self.nodes[0]));
        let ca = lab.spawn_named(
            "mesh-ca",
            self.nodes[0]
                .command(&bin)
                .args(["ca", "serve", "--dir"])
                .arg(&dir)
                .arg("--config")
                .arg(&config)
                .args(["--listen", &self.ca_address().to_string()]),
        );
        ca.stderr()
            .wait_for("mesh-ca ready", CA_TIMEOUT)
            .expect("mesh-ca did not become ready");
        ca
    }

    /// The config of `node`'s daemon: capture on the node's addresses, programs attached
    /// to the node's cgroup, pins in a lab-private directory.
    pub fn config(&self, lab: &Lab, node: &Node) -> Config {
        Config {
            node: node.name.clone(),
            trust_domain: mesh_node::config::DEFAULT_TRUST_DOMAIN.into(),
            capture: CaptureConfig {
                ipv4: Some(node.ipv4()),
                ipv6: Some(node.ipv6()),
                port: None,
            },
            bpf: BpfConfig {
                pin_dir: Some(lab.bpf_pin_dir(node)),
                cgroup: Some(node.cgroup_path().to_path_buf()),
                socket_map: false,
                policy_fast_path: self.policy_fast_path,
                splice: self.splice,
            },
            exclusions: self.exclusions.clone(),
            // Either the remote CA, or one root shared by the lab's nodes' in-process CAs
            // (the first daemon creates it).
            identity: IdentityConfig {
                ca_dir: (!self.remote_ca).then(|| lab.dir().join("ca")),
                ca: self.remote_ca.then(|| RemoteCaConfig {
                    address: self.ca_address().to_string(),
                    credential_dir: Self::credential_dir(lab, node),
                }),
                svid_ttl: self.svid_ttl,
            },
            hbone: HboneConfig::default(),
            inbound: InboundConfig::default(),
            drain_timeout: None,
            connect_timeout: None,
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeConfig {
                    name: n.name.clone(),
                    addresses: vec![n.ipv4().into(), n.ipv6().into()],
                })
                .collect(),
            workloads: self
                .workloads
                .iter()
                .map(|w| {
                    let node_name = &self
                        .nodes
                        .iter()
                        .find(|n| n.index == w.pod.node_index)
                        .expect("pod's node is in the mesh")
                        .name;
                    WorkloadConfig {
                        name: w.pod.name.clone(),
                        namespace: w.namespace.clone(),
                        service_account: w.service_account.clone(),
                        node: node_name.clone(),
                        ips: vec![IpAddr::from(w.pod.ipv4()), IpAddr::from(w.pod.ipv6())],
                        cgroup: (w.pod.node_index == node.index).then(|| w.pod.cgroup_path().to_path_buf()),
                        labels: w.labels.clone(),
                        inbound_mode: w.inbound_mode,
                    }
                })
                .collect(),
            policies: self.policies.clone(),
            root_namespace: mesh_node::config::DEFAULT_ROOT_NAMESPACE.into(),
        }
    }

    pub fn yaml(&self, lab: &Lab, node: &Node) -> String {
        to_yaml(&self.config(lab, node))
    }

    /// Starts a daemon on every node and waits until each is ready.
    pub fn start(&self, lab: &Lab) -> Vec<Daemon> {
        self.nodes
            .iter()
            .map(|n| lab.start_daemon(n, &self.yaml(lab, n)))
            .collect()
    }
}

const CA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub fn to_yaml(config: &Config) -> String {
    serde_norway::to_string(config).expect("config serializes")
}
