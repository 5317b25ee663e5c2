//! End-to-end tests of L4 authorization: Istio AuthorizationPolicies enforced by the
//! destination's daemon with the source's verified identity (cross node, through HBONE) or
//! with the identity the kernel gave the source (same node).
mod common;

use std::{net::SocketAddr, time::Duration};

use common::*;
use mesh_tests::{
    mesh::{to_yaml, MeshSpec, MeshWorkload},
    mesh_node_bin, require_privileges, Daemon, Lab, LabChild, Pod,
};

/// One connection with a few bytes; the echo must come back whole.
#[track_caller]
fn assert_allowed(lab: &Lab, pod: &Pod, target: SocketAddr) {
    let out = echo(lab, pod, target, 1000, 1);
    assert!(out.success(), "{} -> {target} should be allowed: {out}", pod.name);
    assert!(results(&out).iter().all(|r| r["received"] == 1000), "{out}");
}

/// The client's connection fails with zero bytes from the server, the server application
/// never accepted a connection, and `daemon` logs the denial naming `needle` (the deciding
/// policy, or the reason).
#[track_caller]
fn assert_denied(lab: &Lab, pod: &Pod, target: SocketAddr, server: &LabChild, daemon: &Daemon, needle: &str) {
    let out = echo(lab, pod, target, 1000, 1);
    assert!(!out.success(), "{} -> {target} should be denied: {out}", pod.name);
    let r = results(&out);
    assert!(!r.is_empty() && r.iter().all(|r| r["received"] == 0), "{out}");
    let line = daemon.wait_for_log("connection denied by policy", T);
    assert!(line.contains(needle), "denial log should name {needle:?}: {line}");
    assert!(
        server
            .stdout()
            .wait_for("accepted", Duration::from_millis(500))
            .is_err(),
        "the server application accepted a denied connection"
    );
}

#[test]
fn allow_by_principal_admits_it_and_denies_others() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("policy-allow");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let other = lab.add_pod(&n1, "other");
    let server = lab.add_pod(&n2, "server");
    let mut mesh = MeshSpec::new(&[&n1, &n2], &[&client, &other, &server]);
    mesh.policy_fast_path = false;
    mesh.policies = policies(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-client, namespace: default }
spec:
  selector: { matchLabels: { app: server } }
  action: ALLOW
  rules:
    - from: [{ source: { principals: [cluster.local/ns/default/sa/client] } }]
"#,
    );
    let daemons = mesh.start(&lab);
    let srv = serve(&lab, &server, "echo", 7001);
    let target = sock(server.ipv4(), 7001);
    // Denied first, so that the server's "accepted" lines all come from the allowed one.
    assert_denied(&lab, &other, target, &srv, &daemons[1], "no ALLOW rule matched");
    assert_allowed(&lab, &client, target);
}

#[test]
fn deny_by_principal() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("policy-deny-principal");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let other = lab.add_pod(&n1, "other");
    let server = lab.add_pod(&n2, "server");
    let mut mesh = MeshSpec::new(&[&n1, &n2], &[&client, &other, &server]);
    mesh.policy_fast_path = false;
    mesh.policies = policies(DENY_CLIENT);
    let daemons = mesh.start(&lab);
    let srv = serve(&lab, &server, "echo", 7001);
    let target = sock(server.ipv4(), 7001);
    assert_denied(
        &lab,
        &client,
        target,
        &srv,
        &daemons[1],
        "policy=default/deny-client rule=0",
    );
    assert_allowed(&lab, &other, target);
    // Both decisions are counted by the destination's daemon.
    let out = lab.run(
        n2.command("curl")
            .args(["-sS", &format!("http://{}:15020/metrics", n2.ipv4())]),
        T,
    );
    assert!(out.success(), "{out}");
    for line in [
        "mesh_policy_decisions_total{verdict=\"deny\"} 1",
        "mesh_policy_decisions_total{verdict=\"allow\"} 1",
    ] {
        assert!(
            out.stdout.contains(line),
            "metrics should show {line}:\n{}",
            out.stdout
        );
    }
}

#[test]
fn deny_by_namespace() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("policy-deny-ns");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let server = lab.add_pod(&n2, "server");
    let mut mesh = MeshSpec::new(&[&n1, &n2], &[&client, &server]);
    mesh.policy_fast_path = false;
    mesh.workloads[0] = MeshWorkload::new(&client).namespace("team-a");
    mesh.policies = policies(
        r#"
metadata: { name: no-team-a, namespace: default }
spec:
  action: DENY
  rules:
    - from: [{ source: { namespaces: [team-a] } }]
"#,
    );
    let daemons = mesh.start(&lab);
    let srv = serve(&lab, &server, "echo", 7001);
    assert_denied(
        &lab,
        &client,
        sock(server.ipv4(), 7001),
        &srv,
        &daemons[1],
        "policy=default/no-team-a",
    );
}

#[test]
fn deny_by_port_denies_only_that_port() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("policy-deny-port");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let server = lab.add_pod(&n2, "server");
    let mut mesh = MeshSpec::new(&[&n1, &n2], &[&client, &server]);
    mesh.policy_fast_path = false;
    mesh.policies = policies(
        r#"
metadata: { name: no-7001, namespace: default }
spec:
  selector: { matchLabels: { app: server } }
  action: DENY
  rules:
    - to: [{ operation: { ports: ["7001"] } }]
"#,
    );
    let daemons = mesh.start(&lab);
    let denied = serve(&lab, &server, "echo", 7001);
    let _allowed = serve(&lab, &server, "echo", 7002);
    assert_denied(
        &lab,
        &client,
        sock(server.ipv4(), 7001),
        &denied,
        &daemons[1],
        "policy=default/no-7001",
    );
    assert_allowed(&lab, &client, sock(server.ipv4(), 7002));
}

#[test]
fn deny_by_ip_block_uses_the_source_pod_address() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("policy-deny-ip");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let other = lab.add_pod(&n1, "other");
    let server = lab.add_pod(&n2, "server");
    let mut mesh = MeshSpec::new(&[&n1, &n2], &[&client, &other, &server]);
    mesh.policy_fast_path = false;
    mesh.policies = policies(&format!(
        r#"
metadata: {{ name: no-client-ip, namespace: default }}
spec:
  action: DENY
  rules:
    - from: [{{ source: {{ ipBlocks: ["{}/32"] }} }}]
"#,
        client.ipv4()
    ));
    let daemons = mesh.start(&lab);
    let srv = serve(&lab, &server, "echo", 7001);
    let target = sock(server.ipv4(), 7001);
    assert_denied(
        &lab,
        &client,
        target,
        &srv,
        &daemons[1],
        "policy=default/no-client-ip",
    );
    // Another pod of the same node (same tunnel peer address) is not denied.
    assert_allowed(&lab, &other, target);
}

#[test]
fn allow_policy_without_a_matching_rule_denies_by_default() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("policy-default-deny");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let server = lab.add_pod(&n2, "server");
    let mut mesh = MeshSpec::new(&[&n1, &n2], &[&client, &server]);
    mesh.policy_fast_path = false;
    mesh.policies = policies(
        r#"
metadata: { name: only-admin, namespace: default }
spec:
  selector: { matchLabels: { app: server } }
  rules:
    - from: [{ source: { principals: [cluster.local/ns/default/sa/admin] } }]
"#,
    );
    let daemons = mesh.start(&lab);
    let srv = serve(&lab, &server, "echo", 7001);
    assert_denied(
        &lab,
        &client,
        sock(server.ipv4(), 7001),
        &srv,
        &daemons[1],
        "no ALLOW rule matched",
    );
}

#[test]
fn root_namespace_policy_applies_mesh_wide() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("policy-root-ns");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let server = lab.add_pod(&n2, "server");
    let mut mesh = MeshSpec::new(&[&n1, &n2], &[&client, &server]);
    mesh.policy_fast_path = false;
    mesh.workloads[1] = MeshWorkload::new(&server).namespace("shop");
    mesh.policies = policies(
        r#"
metadata: { name: mesh-deny-client, namespace: istio-system }
spec:
  action: DENY
  rules:
    - from: [{ source: { principals: [cluster.local/ns/default/sa/client] } }]
"#,
    );
    let daemons = mesh.start(&lab);
    let srv = serve(&lab, &server, "echo", 7001);
    assert_denied(
        &lab,
        &client,
        sock(server.ipv4(), 7001),
        &srv,
        &daemons[1],
        "policy=istio-system/mesh-deny-client",
    );
}

#[test]
fn same_node_deny_is_enforced_by_the_local_daemon() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("policy-same-node");
    let n1 = lab.add_node();
    let client = lab.add_pod(&n1, "client");
    let other = lab.add_pod(&n1, "other");
    let server = lab.add_pod(&n1, "server");
    let mut mesh = MeshSpec::new(&[&n1], &[&client, &other, &server]);
    mesh.policy_fast_path = false;
    mesh.policies = policies(DENY_CLIENT);
    let daemons = mesh.start(&lab);
    let srv = serve(&lab, &server, "echo", 7001);
    let target = sock(server.ipv4(), 7001);
    assert_denied(
        &lab,
        &client,
        target,
        &srv,
        &daemons[0],
        "policy=default/deny-client rule=0",
    );
    assert_allowed(&lab, &other, target);
}

#[test]
fn an_l7_field_rejects_the_config_naming_its_path() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("policy-bad-config");
    let n1 = lab.add_node();
    let a = lab.add_pod(&n1, "a");
    let mut mesh = MeshSpec::new(&[&n1], &[&a]);
    mesh.policy_fast_path = false;
    mesh.policies = policies(
        r#"
metadata: { name: l7, namespace: default }
spec:
  rules:
    - to: [{ operation: { methods: [GET] } }]
"#,
    );
    let path = lab.write_file("l7.yaml", &to_yaml(&mesh.config(&lab, &n1)));
    let out = lab.run(
        n1.command(mesh_node_bin()).arg("run").arg("--config").arg(&path),
        T,
    );
    assert_eq!(out.status.code(), Some(2), "config errors exit with 2: {out}");
    assert!(
        out.stderr
            .contains("policies[0].spec.rules[0].to[0].operation.methods"),
        "{out}"
    );
    assert!(!lab.bpf_pin_dir(&n1).exists(), "nothing installed");
}

#[test]
fn reload_closes_live_connections_now_denied_and_rejects_an_invalid_file() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("policy-reload");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let server = lab.add_pod(&n2, "server");
    let mut mesh = MeshSpec::new(&[&n1, &n2], &[&client, &server]);
    mesh.policy_fast_path = false;
    let daemons = mesh.start(&lab);
    let _srv = serve(&lab, &server, "echo", 7001);
    let target = sock(server.ipv4(), 7001);
    let live = lab.spawn(
        client
            .command("python3")
            .args(["-u", "-c", LIVE_CLIENT])
            .args([server.ipv4().to_string(), "7001".to_string()]),
    );
    live.wait_stdout("connected ping", T);

    // A valid change: the new DENY policy applies at once and closes the live connection.
    mesh.policies = policies(DENY_CLIENT);
    for d in &daemons {
        std::fs::write(d.config_path(), mesh.yaml(&lab, d.node())).unwrap();
    }
    daemons[1].wait_for_log("config reloaded", T);
    let closed = live.wait_stdout("closed", T);
    assert!(!closed.contains("data"), "{closed}");
    daemons[1].wait_for_log("live connection closed: the new config denies it", T);
    let out = echo(&lab, &client, target, 1000, 1);
    assert!(
        !out.success() && results(&out)[0]["received"] == 0,
        "denied after reload: {out}"
    );

    // An invalid file is rejected whole; the policy in force stays.
    let bad = format!("{}\nbogusField: true\n", mesh.yaml(&lab, &n2));
    std::fs::write(daemons[1].config_path(), bad).unwrap();
    let line = daemons[1].wait_for_log("config change rejected", T);
    assert!(line.contains("bogusField"), "{line}");
    let out = echo(&lab, &client, target, 1000, 1);
    assert!(
        !out.success() && results(&out)[0]["received"] == 0,
        "still denied: {out}"
    );

    // Removing the policy again lets new connections through.
    mesh.policies.clear();
    let from = daemons[1].output().line_count();
    std::fs::write(daemons[1].config_path(), mesh.yaml(&lab, &n2)).unwrap();
    daemons[1]
        .output()
        .wait_for_line_from(from, |l| l.contains("config reloaded"), T)
        .unwrap();
    assert_allowed(&lab, &client, target);
}

#[test]
fn fast_path_refuses_a_denied_connect_with_eperm_before_any_packet() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("policy-fast-path");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let other = lab.add_pod(&n1, "other");
    let server = lab.add_pod(&n2, "server");
    let mut mesh = MeshSpec::new(&[&n1, &n2], &[&client, &other, &server]);
    mesh.policies = policies(DENY_CLIENT);
    let daemons = mesh.start(&lab);
    let srv = serve(&lab, &server, "echo", 7001);
    for target in [sock(server.ipv4(), 7001), sock(server.ipv6(), 7001)] {
        let out = echo(&lab, &client, target, 1000, 1);
        assert!(!out.success(), "{out}");
        let error = results(&out)[0]["error"].as_str().unwrap_or_default().to_string();
        assert!(
            error.contains("connect") && error.contains("os error 1)"),
            "EPERM at connect: {out}"
        );
    }
    let c = counters(&lab, &n1);
    assert_eq!(c["policy_denied"], 2, "{c}");
    // Nothing was captured, so nothing left the client pod towards the mesh.
    assert_eq!(c["captured_v4"], 0, "{c}");
    assert_eq!(c["captured_v6"], 0, "{c}");
    assert!(
        !daemons[1].logs().contains("connection denied by policy"),
        "the denied connect reached node2"
    );
    assert_allowed(&lab, &other, sock(server.ipv4(), 7001));
    assert!(
        srv.stdout().text().matches("accepted").count() == 1,
        "{}",
        srv.stdout().text()
    );

    // The verdict map follows a reload: without the policy, the client gets through.
    mesh.policies.clear();
    for d in &daemons {
        let from = d.output().line_count();
        std::fs::write(d.config_path(), mesh.yaml(&lab, d.node())).unwrap();
        d.output()
            .wait_for_line_from(from, |l| l.contains("config reloaded"), T)
            .unwrap();
    }
    assert_allowed(&lab, &client, sock(server.ipv4(), 7001));
}
