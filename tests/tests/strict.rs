//! Inbound strictness in the kernel (cgroup skb ingress): a STRICT workload accepts TCP
//! only from its node's daemon; a PERMISSIVE one accepts anyone and counts the bypass.
mod common;

use common::*;
use mesh_node::config::InboundMode;
use mesh_tests::{labtool_bin, mesh::MeshSpec, require_privileges, Lab};

#[test]
fn strict_drops_plaintext_from_outside_and_permissive_counts_it() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("strict");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let outsider = lab.add_pod(&n1, "outsider");
    let strict = lab.add_pod(&n2, "strict");
    let open = lab.add_pod(&n2, "open");
    let remote_outsider = lab.add_pod(&n2, "stranger");
    let mut mesh = MeshSpec::new(&[&n1, &n2], &[&client, &strict, &open]);
    mesh.workloads[1].inbound_mode = Some(InboundMode::Strict);
    mesh.workloads[2].inbound_mode = Some(InboundMode::Permissive);
    let _daemons = mesh.start(&lab);
    let strict_srv = serve(&lab, &strict, "whoami", 7000);
    let _open_srv = serve(&lab, &open, "whoami", 7000);

    // Plaintext from a pod outside the mesh, on another node and on the same node: the
    // SYN is dropped, the connect times out, the server never sees it.
    for (who, pod) in [("other node", &outsider), ("same node", &remote_outsider)] {
        let out = lab.run(
            pod.command(labtool_bin()).args([
                "whoami",
                "--to",
                &sock(strict.ipv4(), 7000).to_string(),
                "--timeout-ms",
                "1500",
            ]),
            T,
        );
        assert!(
            !out.success(),
            "{who}: a plaintext client reached a STRICT workload: {out}"
        );
        assert!(
            out.stderr.contains("timed out") || out.stdout.contains("timed out"),
            "{who}: {out}"
        );
    }
    assert!(
        !strict_srv.stdout().text().contains("accepted"),
        "the STRICT server accepted a bypass"
    );
    let c = counters(&lab, &n2);
    assert!(c["bypass_dropped"].as_u64().unwrap() >= 2, "{c}");

    // The mesh itself gets through: the client's connection arrives from node2's daemon.
    assert_eq!(
        whoami(&lab, &client, sock(strict.ipv4(), 7000)).unwrap(),
        n2.pod_gateway_v4()
    );
    assert_eq!(
        whoami(&lab, &client, sock(strict.ipv6(), 7000)).unwrap(),
        n2.pod_gateway_v6()
    );

    // PERMISSIVE lets the outsider through and counts it, once per connection.
    assert_eq!(
        whoami(&lab, &outsider, sock(open.ipv4(), 7000)).unwrap(),
        outsider.ipv4()
    );
    assert_eq!(
        whoami(&lab, &outsider, sock(open.ipv6(), 7000)).unwrap(),
        outsider.ipv6()
    );
    assert_eq!(counters(&lab, &n2)["bypass_allowed"], 2);
}
