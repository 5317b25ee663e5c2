//! The demo behind `cargo xtask demo` (run as `mesh-lab demo`): two nodes, a client pod and a web pod, real daemons in the
//! standalone (embedded default) mode. curl in the client pod talks to python's
//! http.server in the web pod; the mesh captures the connection in the kernel and the
//! node daemon carries it. Then the client's node daemon is killed to show that the mesh
//! fails closed. It ends with what the operator sees of it: the nodes' metrics for the
//! request and an excerpt of `mesh-node flows`. Everything is torn down at the end.
use std::time::Duration;

use crate::{
    labtool_bin,
    mesh::MeshSpec,
    mesh_node_bin,
    observe::{follow_flows, scrape},
    require_privileges, Lab,
};
use anyhow::{bail, Result};

const TIMEOUT: Duration = Duration::from_secs(20);

pub fn run() -> Result<()> {
    if !require_privileges() {
        bail!("the demo builds network namespaces, cgroups and BPF programs: run it as root");
    }
    let _ = labtool_bin();
    let lab = Lab::new("demo");
    let node1 = lab.add_node();
    let node2 = lab.add_node();
    let client = lab.add_pod(&node1, "client");
    let web = lab.add_pod(&node2, "web");
    let mesh = MeshSpec::new(&[&node1, &node2], &[&client, &web]);
    println!(
        "== lab: {} ({}) and {} ({})",
        node1.name,
        node1.ipv4(),
        node2.name,
        node2.ipv4()
    );
    println!(
        "   pod client {} on {}, pod web {} on {}",
        client.ipv4(),
        node1.name,
        web.ipv4(),
        node2.name
    );
    println!(
        "\n== config of {} (standalone mode):\n{}",
        node1.name,
        mesh.yaml(&lab, &node1)
    );

    let daemons = mesh.start(&lab);
    println!(
        "== mesh-node running on both nodes (logs in {})",
        lab.dir().display()
    );

    let site = lab.dir().join("site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(
        site.join("index.html"),
        "hello from the web pod, through the mesh\n",
    )?;
    let server = lab.spawn(
        web.command("python3")
            .args(["-u", "-m", "http.server", "8080", "--bind", "::", "--directory"])
            .arg(&site),
    );
    server.wait_stdout("Serving HTTP", TIMEOUT);
    let flows = follow_flows(&lab, &node1, &[]);

    let mut seen_lines = 0;
    for url in [
        format!("http://{}:8080/", web.ipv4()),
        format!("http://[{}]:8080/", web.ipv6()),
    ] {
        println!("\n== client$ curl -sS {url}");
        let out = lab.run(
            client.command("curl").args(["-sS", "--max-time", "10", &url]),
            TIMEOUT,
        );
        print!("{}", out.stdout);
        if !out.success() {
            bail!("curl failed through the mesh: {out}");
        }
        let (index, seen) = server
            .stderr()
            .wait_for_line_from(seen_lines, |l| l.contains("GET /"), TIMEOUT)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        seen_lines = index + 1;
        println!("   web pod's access log: {seen}");
    }
    println!(
        "   the web pod saw its node's daemon ({}, {}), not the client pod ({}): the connections were captured in the kernel\n   and carried from node1's daemon to node2's through an HBONE tunnel (HTTP/2 CONNECT over mutual TLS 1.3)",
        node2.pod_gateway_v4(),
        node2.pod_gateway_v6(),
        client.ipv4()
    );

    let accepted = daemons[1].wait_for_log("tunnel accepted", TIMEOUT);
    println!("   {}'s daemon: {}", node2.name, accepted.trim());
    println!("\n== kernel counters on {} (mesh-node datapath):", node1.name);
    let pin_dir = lab.bpf_pin_dir(&node1);
    let out = lab.run(
        std::process::Command::new(mesh_node_bin())
            .arg("datapath")
            .arg("--pin-dir")
            .arg(&pin_dir),
        TIMEOUT,
    );
    print!("{}", out.stdout);

    // Both connections closed (the flow stream says so) before the metrics are read.
    flows
        .stdout()
        .wait_for_line_from(0, |l| l.contains("CLOSE"), TIMEOUT)
        .and_then(|(i, _)| {
            flows
                .stdout()
                .wait_for_line_from(i + 1, |l| l.contains("CLOSE"), TIMEOUT)
        })
        .map_err(|e| anyhow::anyhow!("flows showed no close: {e}"))?;
    let metrics = [&node1, &node2].map(|n| (n.name.clone(), scrape(&lab, n)));

    println!("\n== killing {}'s daemon: the mesh must fail closed", node1.name);
    daemons[0].kill();
    let url = format!("http://{}:8080/", web.ipv4());
    let out = lab.run(
        client.command("curl").args(["-sS", "--max-time", "5", &url]),
        TIMEOUT,
    );
    if out.success() {
        bail!("curl succeeded with the daemon down: traffic bypassed the mesh");
    }
    println!("   client$ curl {url} -> {}", out.stderr.trim());

    for (node, text) in &metrics {
        println!("\n== {node}'s metrics for the request (curl -s 127.0.0.1:15020/metrics | grep web):");
        text.lines()
            .filter(|l| l.starts_with("istio_tcp_") && l.contains("destination_workload=\"web\""))
            .for_each(|l| println!("   {l}"));
    }
    println!("\n== {}$ mesh-node flows --follow (excerpt):", node1.name);
    flows.stdout().lines().iter().for_each(|l| println!("   {l}"));
    println!("\n== demo done; tearing the lab down");
    drop(flows);
    drop(daemons);
    drop(server);
    drop(lab);
    Ok(())
}
