//! Nodes and pods of a lab and how they are wired.
//!
//! ```text
//!  switch netns <p>-sw: bridge br0 ── veth n<n> ──┐
//!  node n, netns <p>-n<n>: eth0 10.200.0.<n>/24, fd00:200::<n>/64
//!      bridge pods 10.201.<n>.1/24, fd00:201:<n>::1/64 ── veth p<m> ──┐
//!  pod m, netns <p>-n<n>-<name>: eth0 10.201.<n>.<m>/24, fd00:201:<n>::<m>/64
//! ```
//! Nodes forward, and route every other node's pod subnets via that node's
//! address, so pods reach each other without NAT. Indices go into IPv6
//! segments as numbers (node 10 is `fd00:200::a`).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cgroup;
use crate::cmd::ip_in;
use crate::lab::Lab;
use crate::netns::Netns;

/// Most nodes (and pods per node) a lab can hold: addresses end in one byte.
const MAX_INDEX: usize = 254;

/// A node: a network namespace on the switch, with a bridge for its pods
/// and a cgroup for its daemon to attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// 1, 2, ...
    pub index: usize,
    /// `node<index>`.
    pub name: String,
    pub netns: Netns,
    cgroup: PathBuf,
}

impl Node {
    /// `10.200.0.<index>`, on `eth0`.
    pub fn ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, 0, self.index as u8)
    }

    /// `fd00:200::<index>`, on `eth0`.
    pub fn ipv6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, self.index as u16)
    }

    /// `10.201.<index>.1`: the node's address on its pod bridge.
    pub fn pod_gateway_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 201, self.index as u8, 1)
    }

    /// `fd00:201:<index>::1`.
    pub fn pod_gateway_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x201, self.index as u16, 0, 0, 0, 0, 1)
    }

    /// `10.201.<index>.0/24`.
    pub fn pod_cidr_v4(&self) -> String {
        format!("10.201.{}.0/24", self.index)
    }

    /// `fd00:201:<index>::/64`.
    pub fn pod_cidr_v6(&self) -> String {
        format!(
            "{}/64",
            Ipv6Addr::new(0xfd00, 0x201, self.index as u16, 0, 0, 0, 0, 0)
        )
    }

    /// `<lab cgroup>/node<index>`; the pods' cgroups are below it.
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup
    }

    /// A command running `program` in the node's namespace (its cgroup is
    /// unchanged: the node's programs are not the pods').
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.netns.command(program)
    }
}

/// A pod: a network namespace behind its node's `pods` bridge, and a cgroup
/// below the node's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    /// 2, 3, ... within its node: the last byte of its addresses.
    pub index: usize,
    /// Index of the node it runs on.
    pub node_index: usize,
    pub netns: Netns,
    cgroup: PathBuf,
}

impl Pod {
    /// `10.201.<node>.<index>`.
    pub fn ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 201, self.node_index as u8, self.index as u8)
    }

    /// `fd00:201:<node>::<index>`.
    pub fn ipv6(&self) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            0x201,
            self.node_index as u16,
            0,
            0,
            0,
            0,
            self.index as u16,
        )
    }

    /// `<lab cgroup>/node<n>/<name>`.
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup
    }

    /// The cgroup id that `bpf_get_current_cgroup_id` reports for the pod's
    /// processes (the inode number of its cgroup directory).
    pub fn cgroup_id(&self) -> u64 {
        std::fs::metadata(&self.cgroup)
            .unwrap_or_else(|e| panic!("{}: {e}", self.cgroup.display()))
            .ino()
    }

    /// A command running `program` in the pod: in its network namespace and,
    /// from before exec, in its cgroup.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = self.netns.command(program);
        cgroup::enter_on_exec(&mut cmd, &self.cgroup);
        cmd
    }
}

impl Lab {
    /// Adds node `n` (1, 2, ...): see the module doc for its wiring. Routes
    /// between the new node and every existing one are added both ways.
    pub fn add_node(&self) -> Node {
        let mut state = self.lock();
        let n = state.nodes.len() + 1;
        assert!(n <= MAX_INDEX, "a lab holds at most {MAX_INDEX} nodes");
        let ns = self.create_netns(&mut state, &format!("{}-n{n}", self.prefix));
        let node = Node {
            index: n,
            name: format!("node{n}"),
            netns: ns.clone(),
            cgroup: self.cgroup.join(format!("node{n}")),
        };
        let (name, sw) = (ns.name(), self.switch.name());
        enable_forwarding(&ns);
        ip_in(name, &["link", "set", "lo", "up"]);
        let uplink = format!("n{n}");
        ip_in(
            name,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", &uplink, "netns", sw,
            ],
        );
        ip_in(sw, &["link", "set", &uplink, "master", "br0", "up"]);
        add_addresses(
            name,
            "eth0",
            &format!("{}/24", node.ipv4()),
            &format!("{}/64", node.ipv6()),
        );
        ip_in(name, &["link", "set", "eth0", "up"]);
        ip_in(
            name,
            &["link", "add", "pods", "type", "bridge", "mcast_snooping", "0"],
        );
        let (gw4, gw6) = (node.pod_gateway_v4(), node.pod_gateway_v6());
        add_addresses(name, "pods", &format!("{gw4}/24"), &format!("{gw6}/64"));
        ip_in(name, &["link", "set", "pods", "up"]);
        for other in &state.nodes {
            route_pods_via(&node, other);
            route_pods_via(other, &node);
        }
        cgroup::create(&node.cgroup)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", node.cgroup.display()));
        state.nodes.push(node.clone());
        node
    }

    /// Adds a pod called `name` (lowercase letters, digits and `-`, unique
    /// on its node) to `node`: see the module doc for its wiring.
    pub fn add_pod(&self, node: &Node, name: &str) -> Pod {
        assert!(
            !name.is_empty()
                && name.len() <= 40
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "pod name {name:?}: use 1 to 40 of a-z, 0-9 and -"
        );
        let mut state = self.lock();
        assert!(
            state.nodes.iter().any(|n| n == node),
            "{} is not a node of lab {}",
            node.name,
            self.prefix
        );
        let on_node: Vec<&Pod> = state.pods.iter().filter(|p| p.node_index == node.index).collect();
        assert!(
            on_node.iter().all(|p| p.name != name),
            "{} already has a pod called {name}",
            node.name
        );
        let m = on_node.len() + 2;
        assert!(m <= MAX_INDEX, "a node holds at most {} pods", MAX_INDEX - 1);
        let ns = self.create_netns(&mut state, &format!("{}-n{}-{name}", self.prefix, node.index));
        let pod = Pod {
            name: name.to_string(),
            index: m,
            node_index: node.index,
            netns: ns.clone(),
            cgroup: node.cgroup.join(name),
        };
        let (pod_ns, node_ns) = (ns.name(), node.netns.name());
        ip_in(pod_ns, &["link", "set", "lo", "up"]);
        let port = format!("p{m}");
        ip_in(
            pod_ns,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", node_ns,
            ],
        );
        ip_in(node_ns, &["link", "set", &port, "master", "pods", "up"]);
        add_addresses(
            pod_ns,
            "eth0",
            &format!("{}/24", pod.ipv4()),
            &format!("{}/64", pod.ipv6()),
        );
        ip_in(pod_ns, &["link", "set", "eth0", "up"]);
        ip_in(
            pod_ns,
            &[
                "route",
                "add",
                "default",
                "via",
                &node.pod_gateway_v4().to_string(),
            ],
        );
        ip_in(
            pod_ns,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &node.pod_gateway_v6().to_string(),
            ],
        );
        cgroup::create(&pod.cgroup)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", pod.cgroup.display()));
        state.pods.push(pod.clone());
        pod
    }
}

/// An IPv4 and an IPv6 address on `dev`; `nodad` so the IPv6 one is usable
/// at once instead of after duplicate address detection.
fn add_addresses(netns: &str, dev: &str, v4: &str, v6: &str) {
    ip_in(netns, &["addr", "add", v4, "dev", dev]);
    ip_in(netns, &["addr", "add", v6, "dev", dev, "nodad"]);
}

/// On `from`, routes `to`'s pod subnets via `to`'s node address.
fn route_pods_via(from: &Node, to: &Node) {
    let ns = from.netns.name();
    ip_in(
        ns,
        &["route", "add", &to.pod_cidr_v4(), "via", &to.ipv4().to_string()],
    );
    ip_in(
        ns,
        &[
            "-6",
            "route",
            "add",
            &to.pod_cidr_v6(),
            "via",
            &to.ipv6().to_string(),
        ],
    );
}

/// Turns on IPv4 and IPv6 forwarding in `ns`. `/proc/sys/net` shows the
/// namespace of the thread that opens it, so this writes from inside.
fn enable_forwarding(ns: &Netns) {
    ns.run(|| {
        for path in [
            "/proc/sys/net/ipv4/ip_forward",
            "/proc/sys/net/ipv6/conf/all/forwarding",
        ] {
            std::fs::write(path, "1").unwrap_or_else(|e| panic!("{path} in netns {ns}: {e}"));
        }
    });
}
