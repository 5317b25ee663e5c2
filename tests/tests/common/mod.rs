//! Helpers shared by the end-to-end test files: running labtool in pods and reading the
//! daemon's kernel counters.
#![allow(dead_code)]

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

use mesh_tests::{labtool_bin, mesh_node_bin, ChildOutput, Lab, LabChild, Node, Pod};

pub const T: Duration = Duration::from_secs(30);

/// Starts `labtool serve` in `pod` on all addresses (IPv4 and IPv6) and waits until it
/// listens.
pub fn serve(lab: &Lab, pod: &Pod, mode: &str, port: u16) -> LabChild {
    let child = lab.spawn(pod.command(labtool_bin()).args([
        "serve",
        "--listen",
        &format!("[::]:{port}"),
        "--mode",
        mode,
    ]));
    child.wait_stdout("listening", T);
    child
}

/// The source address that a `whoami` server at `target` saw for a connection from `pod`.
pub fn whoami(lab: &Lab, pod: &Pod, target: SocketAddr) -> Result<IpAddr, ChildOutput> {
    let out = lab.run(
        pod.command(labtool_bin())
            .args(["whoami", "--to", &target.to_string()]),
        T,
    );
    if !out.success() {
        return Err(out);
    }
    let seen: SocketAddr = out
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("whoami output {out}: {e}"));
    Ok(seen.ip().to_canonical())
}

/// `count` concurrent connections from `pod` to an echo server at `target`, `send` bytes each.
pub fn echo(lab: &Lab, pod: &Pod, target: SocketAddr, send: usize, count: usize) -> ChildOutput {
    lab.run(
        pod.command(labtool_bin()).args([
            "connect",
            "--to",
            &target.to_string(),
            "--send",
            &send.to_string(),
            "--count",
            &count.to_string(),
        ]),
        Duration::from_secs(120),
    )
}

/// Parsed JSON lines of `labtool connect`.
pub fn results(out: &ChildOutput) -> Vec<serde_json::Value> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// The kernel counters of `node`'s daemon, read from its pinned maps.
pub fn counters(lab: &Lab, node: &Node) -> serde_json::Value {
    let out = lab.run(
        Command::new(mesh_node_bin())
            .arg("datapath")
            .arg("--pin-dir")
            .arg(lab.bpf_pin_dir(node))
            .args(["-o", "json"]),
        T,
    );
    out.assert_success();
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("datapath json");
    v["counters"].clone()
}

pub fn captured(lab: &Lab, node: &Node) -> u64 {
    let c = counters(lab, node);
    c["captured_v4"].as_u64().unwrap() + c["captured_v6"].as_u64().unwrap()
}

pub fn sock(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

pub fn policies(yaml: &str) -> Vec<mesh_node::policy::AuthorizationPolicy> {
    mesh_node::policy::parse_yaml(yaml).expect("test policy parses")
}

/// Denies the `client` workload's identity towards the `server` workload.
pub const DENY_CLIENT: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-client, namespace: default }
spec:
  selector: { matchLabels: { app: server } }
  action: DENY
  rules:
    - from: [{ source: { principals: [cluster.local/ns/default/sa/client] } }]
"#;

/// A client that holds its connection open after one echo, and says how it ended.
pub const LIVE_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
s.sendall(b"ping")
print("connected", s.recv(4).decode(), flush=True)
try:
    print("closed", "eof" if not s.recv(1) else "data", flush=True)
except OSError as e:
    print("closed", e, flush=True)
"#;
