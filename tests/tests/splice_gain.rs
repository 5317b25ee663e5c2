//! A quick measurement of what the same-node splice gains, not a test: ignored, and it
//! asserts nothing about time. The benchmark harness (`cargo xtask bench`, scenario S1)
//! is where performance is measured; this is the switch owner's own check, reproducible
//! with
//!
//! ```sh
//! cargo build --release -p mesh-node
//! MESH_NODE_BIN=target/release/mesh-node \
//!   cargo test --release -p mesh-tests --test splice_gain -- --ignored --nocapture
//! ```
//!
//! One node, a sockperf (ping-pong) and an iperf3 server in a meshed pod; clients in an
//! unenrolled pod (no mesh: the baseline) and in a meshed pod, whose daemon runs with
//! `bpf.splice` off, then on. Prints p50/p99 latency of 64 B and 1 KB request/response
//! and bulk throughput, each with its ratio to the baseline measured in the same run.
mod common;

use std::time::Duration;

use common::*;
use mesh_tests::{mesh::MeshSpec, require_privileges, Lab, Pod};

const SECONDS: &str = "5";

/// (p50, p99) latency in microseconds, from sockperf's summary.
fn latency(lab: &Lab, pod: &Pod, server: &str, size: usize) -> (f64, f64) {
    let out = lab.run(
        pod.command("sockperf").args([
            "ping-pong",
            "--tcp",
            "-i",
            server,
            "-p",
            "11111",
            "-m",
            &size.to_string(),
            "-t",
            SECONDS,
        ]),
        Duration::from_secs(60),
    );
    assert!(out.success(), "{out}");
    let pct = |p: &str| -> f64 {
        out.stdout
            .lines()
            .find_map(|l| l.split_once(&format!("percentile {p} ="))?.1.trim().parse().ok())
            .unwrap_or_else(|| panic!("no percentile {p} in {out}"))
    };
    (pct("50.000"), pct("99.000"))
}

/// Gbit/s received by an iperf3 server.
fn throughput(lab: &Lab, pod: &Pod, server: &str) -> f64 {
    let out = lab.run(
        pod.command("iperf3")
            .args(["-c", server, "-p", "5201", "-t", SECONDS, "-J"]),
        Duration::from_secs(60),
    );
    assert!(out.success(), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("iperf3 json");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e9
}

struct Row {
    name: &'static str,
    lat: Vec<(f64, f64)>,
    gbps: f64,
}

fn measure(lab: &Lab, pod: &Pod, server: &str, name: &'static str) -> Row {
    let lat = [64, 1024].iter().map(|s| latency(lab, pod, server, *s)).collect();
    Row {
        name,
        lat,
        gbps: throughput(lab, pod, server),
    }
}

#[test]
#[ignore = "a measurement, run by hand (see the module doc)"]
fn splice_gain() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("splice-gain");
    let node = lab.add_node();
    let client = lab.add_pod(&node, "client");
    let outsider = lab.add_pod(&node, "outsider");
    let server = lab.add_pod(&node, "server");
    let mut mesh = MeshSpec::new(&[&node], &[&client, &server]);
    let target = server.ipv4().to_string();
    let sockperf = lab.spawn(server.command("stdbuf").args([
        "-oL", "sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", "11111",
    ]));
    sockperf.wait_stdout("listen on", T);
    let iperf = lab.spawn(
        server
            .command("stdbuf")
            .args(["-oL", "iperf3", "-s", "-p", "5201"]),
    );
    iperf.wait_stdout("Server listening", T);

    let mut rows = vec![measure(&lab, &outsider, &target, "no mesh")];
    for (splice, name) in [(false, "mesh, splice off"), (true, "mesh, splice on")] {
        mesh.splice = splice;
        let daemon = lab.start_daemon(&node, &mesh.yaml(&lab, &node));
        rows.push(measure(&lab, &client, &target, name));
        daemon.stop();
    }
    let base = &rows[0];
    println!("\nsame node, {SECONDS} s each (sockperf ping-pong p50/p99 in us; iperf3 Gbit/s)");
    println!(
        "{:<18} {:>22} {:>22} {:>16}",
        "path", "64 B p50 / p99", "1 KB p50 / p99", "bulk"
    );
    for r in &rows {
        println!(
            "{:<18} {:>8.1}/{:>6.1} ({:.2}x) {:>8.1}/{:>6.1} ({:.2}x) {:>6.2} ({:.2}x)",
            r.name,
            r.lat[0].0,
            r.lat[0].1,
            r.lat[0].0 / base.lat[0].0,
            r.lat[1].0,
            r.lat[1].1,
            r.lat[1].0 / base.lat[1].0,
            r.gbps,
            r.gbps / base.gbps,
        );
    }
}
