//! End-to-end tests of the cross-node tunnel: HBONE (HTTP/2 CONNECT over mutual TLS 1.3
//! with SPIFFE SVIDs) between real daemons in lab nodes.
mod common;

use std::time::Duration;

use common::*;
use mesh_tests::{mesh::MeshSpec, require_privileges, Lab, LabChild, Node};

const MARKER: &str = "MESH-PLAINTEXT-MARKER-4f1c";

/// tcpdump on a node's uplink, writing a pcap and printing one line per packet; ready
/// once it says it is listening.
fn capture(lab: &Lab, node: &Node, name: &str) -> (LabChild, std::path::PathBuf) {
    let file = lab.dir().join(format!("{}-{name}.pcap", node.name));
    let child = lab.spawn(
        node.command("tcpdump")
            .args([
                "-i",
                "eth0",
                "-U",
                "--immediate-mode",
                "-n",
                "-l",
                "-s",
                "0",
                "--print",
                "-w",
            ])
            .arg(&file)
            .arg("tcp or udp port 9"),
    );
    child
        .stderr()
        .wait_for("listening on", T)
        .expect("tcpdump did not start");
    (child, file)
}

/// Sends a UDP datagram to `to`:9 and waits until tcpdump has printed it: every packet
/// before it is then in the pcap. Then stops tcpdump and returns the pcap's bytes.
fn finish(child: LabChild, file: &std::path::Path, node: &Node, to: &Node) -> Vec<u8> {
    let target = sock(to.ipv4(), 9);
    node.netns.run(move || {
        let udp = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
        udp.send_to(b"end-of-capture", target).expect("send sentinel");
    });
    child
        .stdout()
        .wait_for(&format!("{}.9: UDP", to.ipv4()), T)
        .expect("tcpdump saw the sentinel");
    child.signal(libc::SIGINT);
    child.wait_timeout(T).expect("tcpdump did not stop");
    std::fs::read(file).expect("pcap written")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn cross_node_bytes_are_tls_on_the_wire_and_plaintext_is_visible_without_the_mesh() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("mtls-wire");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let outsider = lab.add_pod(&n1, "outsider");
    let server = lab.add_pod(&n2, "server");
    let _daemons = MeshSpec::new(&[&n1, &n2], &[&client, &server]).start(&lab);
    let echo_srv = serve(&lab, &server, "echo", 7001);
    let marker_file = lab.write_file("marker.txt", &MARKER.repeat(64));

    // Meshed: only TLS to port 15008 crosses the link, never the marker.
    let (dump, pcap) = capture(&lab, &n1, "meshed");
    let out = lab.run(
        client
            .command("socat")
            .args(["-t", "5", "-u"])
            .arg(format!("OPEN:{}", marker_file.display()))
            .arg(format!("TCP:{}", sock(server.ipv4(), 7001))),
        T,
    );
    assert!(out.success(), "{out}");
    echo_srv.wait_stdout(&format!("in={}", MARKER.len() * 64), T);
    let bytes = finish(dump, &pcap, &n1, &n2);
    assert!(
        !contains(&bytes, MARKER.as_bytes()),
        "the marker crossed the link in plaintext"
    );
    // A TLS 1.3 application-data record header (0x17 0x03 0x03) was seen.
    assert!(
        contains(&bytes, &[0x17, 0x03, 0x03]),
        "no TLS records captured on the link"
    );

    // Control: the same bytes from a pod outside the mesh are visible, so the capture
    // itself would have seen a plaintext leak.
    let (dump, pcap) = capture(&lab, &n1, "plain");
    let out = lab.run(
        outsider
            .command("socat")
            .args(["-t", "5", "-u"])
            .arg(format!("OPEN:{}", marker_file.display()))
            .arg(format!("TCP:{}", sock(server.ipv4(), 7001))),
        T,
    );
    assert!(out.success(), "{out}");
    let bytes = finish(dump, &pcap, &n1, &n2);
    assert!(
        contains(&bytes, MARKER.as_bytes()),
        "control capture should see the plaintext marker"
    );
}

#[test]
fn cross_node_echo_is_exact_over_the_tunnel_both_families() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("mtls-echo");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let server = lab.add_pod(&n2, "server");
    let daemons = MeshSpec::new(&[&n1, &n2], &[&client, &server]).start(&lab);
    let _who = serve(&lab, &server, "whoami", 7000);
    let _echo = serve(&lab, &server, "echo", 7001);
    // The server sees its own node's daemon: the connection arrived through the tunnel.
    assert_eq!(
        whoami(&lab, &client, sock(server.ipv4(), 7000)).unwrap(),
        n2.pod_gateway_v4()
    );
    assert_eq!(
        whoami(&lab, &client, sock(server.ipv6(), 7000)).unwrap(),
        n2.pod_gateway_v6()
    );
    for target in [sock(server.ipv4(), 7001), sock(server.ipv6(), 7001)] {
        let out = echo(&lab, &client, target, 4 << 20, 4);
        assert!(out.success(), "{out}");
        assert!(results(&out).iter().all(|r| r["received"] == 4 << 20), "{out}");
    }
    // Both daemons name the peer identities they authenticated.
    daemons[1].wait_for_log("spiffe://cluster.local/ns/default/sa/client", T);
}

#[test]
fn connect_to_an_address_the_destination_node_does_not_host_gets_400() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("mtls-400");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let server = lab.add_pod(&n2, "server");
    let stray = lab.add_pod(&n2, "stray");
    let mesh = MeshSpec::new(&[&n1, &n2], &[&client, &server]);
    // node1 is told (wrongly) that the server also owns the stray pod's address.
    let mut c1 = mesh.config(&lab, &n1);
    c1.workloads[1].ips.push(stray.ipv4().into());
    let _d1 = lab.start_daemon(&n1, &mesh_tests::mesh::to_yaml(&c1));
    let d2 = lab.start_daemon(&n2, &mesh.yaml(&lab, &n2));
    let stray_srv = serve(&lab, &stray, "whoami", 7000);
    let err =
        whoami(&lab, &client, sock(stray.ipv4(), 7000)).expect_err("reached a pod the node does not host");
    assert!(
        err.stdout.contains("reset") || err.stderr.contains("reset") || !err.success(),
        "{err}"
    );
    d2.wait_for_log("not a workload of this node: 400", T);
    assert!(
        !stray_srv.stdout().text().contains("accepted"),
        "the stray pod was reached"
    );
}

#[test]
fn a_server_without_the_expected_identity_gets_no_byte() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("mtls-identity");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let server = lab.add_pod(&n2, "server");
    let mesh = MeshSpec::new(&[&n1, &n2], &[&client, &server]);
    // node2 runs the server under another service account than node1 expects.
    let mut c2 = mesh.config(&lab, &n2);
    c2.workloads[1].service_account = "impostor".into();
    let _d1 = lab.start_daemon(&n1, &mesh.yaml(&lab, &n1));
    let _d2 = lab.start_daemon(&n2, &mesh_tests::mesh::to_yaml(&c2));
    let echo_srv = serve(&lab, &server, "echo", 7001);
    let out = echo(&lab, &client, sock(server.ipv4(), 7001), 1024, 1);
    assert!(
        !out.success(),
        "the client got through to a server with the wrong identity: {out}"
    );
    assert_eq!(results(&out)[0]["received"], 0);
    assert!(
        !echo_srv.stdout().text().contains("accepted"),
        "the server application was reached"
    );
}

#[test]
fn svids_rotate_during_a_long_transfer() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("mtls-rotate");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let server = lab.add_pod(&n2, "server");
    let mut mesh = MeshSpec::new(&[&n1, &n2], &[&client, &server]);
    mesh.svid_ttl = Some(Duration::from_secs(2));
    let daemons = mesh.start(&lab);
    let _echo = serve(&lab, &server, "echo", 7001);
    // Renewal at half life: over five seconds (2.5 lifetimes) each daemon renews several
    // times while connections keep being made; every one must succeed.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut rounds = 0;
    while std::time::Instant::now() < deadline {
        let out = echo(&lab, &client, sock(server.ipv4(), 7001), 1 << 20, 2);
        assert!(out.success(), "round {rounds}: {out}");
        rounds += 1;
    }
    for d in &daemons {
        let issued = d.logs().matches("SVID issued").count();
        assert!(
            issued >= 3,
            "expected several renewals, saw {issued} issues in {rounds} rounds:\n{}",
            d.logs()
        );
    }
}

#[test]
fn remote_ca_outage_keeps_svids_until_expiry_then_fails_closed_and_recovers() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("ca-outage");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let server = lab.add_pod(&n2, "server");
    let mut mesh = MeshSpec::new(&[&n1, &n2], &[&client, &server]);
    mesh.remote_ca = true;
    mesh.svid_ttl = Some(Duration::from_secs(4));
    let ca = mesh.start_ca(&lab);
    let daemons = mesh.start(&lab);
    daemons[0].wait_for_log("using the remote mesh CA", T);
    let _echo = serve(&lab, &server, "echo", 7001);
    let target = sock(server.ipv4(), 7001);
    assert!(echo(&lab, &client, target, 64 << 10, 1).success());

    // CA down: renewals fail, the current SVIDs are kept while valid...
    ca.kill();
    let from = daemons[0].output().line_count();
    daemons[0]
        .output()
        .wait_for_line_from(
            from,
            |l| l.contains("SVID renewal failed, keeping the current one"),
            T,
        )
        .expect("node1 kept its SVID while the CA was down");
    let out = echo(&lab, &client, target, 64 << 10, 1);
    assert!(out.success(), "a still-valid SVID must keep working: {out}");
    // ...and once expired, meshed traffic is refused, never sent in plaintext.
    daemons[0]
        .output()
        .wait_for_line_from(from, |l| l.contains("SVID expired and cannot be renewed"), T)
        .expect("node1's SVID expired");
    let out = echo(&lab, &client, target, 1024, 1);
    assert!(!out.success(), "traffic went through with an expired SVID: {out}");
    daemons[0].wait_for_log("no valid SVID", T);

    // CA back: both nodes renew (their retry backoff is capped at a quarter of the SVID
    // lifetime) and traffic flows again.
    let from: Vec<usize> = daemons.iter().map(|d| d.output().line_count()).collect();
    let _ca = mesh.start_ca(&lab);
    for (d, from) in daemons.iter().zip(from) {
        d.output()
            .wait_for_line_from(from, |l| l.contains("SVID issued"), T)
            .expect("renewed after the CA came back");
    }
    let out = echo(&lab, &client, target, 64 << 10, 1);
    assert!(out.success(), "no recovery after the CA came back: {out}");
}

#[test]
fn remote_ca_refuses_an_svid_for_a_workload_of_another_node() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("ca-authz");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let server = lab.add_pod(&n2, "server");
    let mut mesh = MeshSpec::new(&[&n1, &n2], &[&client, &server]);
    mesh.remote_ca = true;
    let _ca = mesh.start_ca(&lab);
    // node1 claims the server workload (with a cgroup of its own) though the CA's view
    // of the mesh puts it on node2.
    let rogue = lab.add_pod(&n1, "rogue");
    let mut c1 = mesh.config(&lab, &n1);
    c1.workloads[1].node = n1.name.clone();
    c1.workloads[1].cgroup = Some(rogue.cgroup_path().to_path_buf());
    c1.workloads[1].ips = vec![rogue.ipv4().into()];
    let path = lab.write_file("rogue.yaml", &mesh_tests::mesh::to_yaml(&c1));
    let out = lab.run(
        n1.command(mesh_tests::mesh_node_bin())
            .arg("run")
            .arg("--config")
            .arg(&path),
        T,
    );
    assert!(
        !out.success(),
        "node1 got an SVID for another node's workload: {out}"
    );
    assert!(
        out.stderr.contains("sa/server") && out.stderr.contains("node1"),
        "{out}"
    );
}
