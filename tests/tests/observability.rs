//! End-to-end tests of observability: the Istio TCP metrics of both reporters against
//! transfers of known sizes, the scrape checked by promtool, `mesh-node flows --follow`,
//! readiness, and the admin surfaces' refusal of pods.
mod common;

use std::time::Duration;

use common::*;
use mesh_tests::{
    mesh::{admin_socket, MeshSpec},
    mesh_node_bin,
    observe::{follow_flows, http_get, promtool_check, sample, scrape, scrape_until},
    require_privileges, Lab, LabChild,
};

const HEALTH_PORT: u16 = mesh_node::config::DEFAULT_HEALTH_PORT;
const ADMIN_PORT: u16 = mesh_node::config::DEFAULT_ADMIN_PORT;

/// The JSON events `flows` printed from line `from` on that satisfy `pred`, waiting until
/// there are `n` of them.
#[track_caller]
fn wait_events(
    flows: &LabChild,
    n: usize,
    mut pred: impl FnMut(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    let mut from = 0;
    while found.len() < n {
        let (i, line) = flows
            .stdout()
            .wait_for_line_from(
                from,
                |l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| pred(&v)),
                T,
            )
            .unwrap_or_else(|e| panic!("{} of {n} flow events: {e}", found.len()));
        found.push(serde_json::from_str(&line).unwrap());
        from = i + 1;
    }
    found
}

fn is(kind: &'static str, destination: &'static str) -> impl FnMut(&serde_json::Value) -> bool {
    move |v| v["kind"] == kind && v["destination"] == destination
}

#[test]
fn counters_of_both_reporters_equal_what_the_applications_sent() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("obs-exact");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let near = lab.add_pod(&n1, "near");
    let server = lab.add_pod(&n2, "server");
    let _daemons = MeshSpec::new(&[&n1, &n2], &[&client, &near, &server]).start(&lab);
    let _far_echo = serve(&lab, &server, "echo", 7001);
    let _near_echo = serve(&lab, &near, "echo", 7001);
    // Followers see every close, so the scrape below waits on events, not on time.
    let (flows1, flows2) = (
        follow_flows(&lab, &n1, &["-o", "json", "--kind", "close"]),
        follow_flows(&lab, &n2, &["-o", "json", "--kind", "close"]),
    );

    const FAR: (u64, u64) = (4, 300_007); // connections, bytes each way
    const NEAR: (u64, u64) = (3, 65_536 + 3);
    let out = echo(
        &lab,
        &client,
        sock(server.ipv4(), 7001),
        FAR.1 as usize,
        FAR.0 as usize,
    );
    assert!(out.success(), "{out}");
    let out = echo(
        &lab,
        &client,
        sock(near.ipv4(), 7001),
        NEAR.1 as usize,
        NEAR.0 as usize,
    );
    assert!(out.success(), "{out}");
    for e in wait_events(&flows1, FAR.0 as usize, is("close", "default/server"))
        .iter()
        .chain(&wait_events(
            &flows2,
            FAR.0 as usize,
            is("close", "default/server"),
        ))
        .chain(&wait_events(
            &flows1,
            NEAR.0 as usize,
            is("close", "default/near"),
        ))
    {
        assert!(e["reason"].is_null(), "{e}");
    }

    let (m1, m2) = (scrape(&lab, &n1), scrape(&lab, &n2));
    let check = |text: &str, reporter: &str, dst: &str, security: &str, (n, bytes): (u64, u64)| {
        let labels = [
            ("reporter", reporter),
            ("source_workload", "client"),
            ("source_workload_namespace", "default"),
            ("source_principal", "spiffe://cluster.local/ns/default/sa/client"),
            ("destination_workload", dst),
            ("destination_workload_namespace", "default"),
            ("connection_security_policy", security),
            ("response_flags", "-"),
        ];
        let get = |name: &str| {
            sample(text, name, &labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
        };
        let what = format!("{reporter} -> {dst}");
        assert_eq!(get("istio_tcp_connections_opened_total"), n, "{what}");
        assert_eq!(get("istio_tcp_connections_closed_total"), n, "{what}");
        // Istio: received = request bytes (source to destination), sent = response bytes.
        assert_eq!(get("istio_tcp_received_bytes_total"), n * bytes, "{what}");
        assert_eq!(get("istio_tcp_sent_bytes_total"), n * bytes, "{what}");
    };
    // The kernel's own count of the same transfers, from the client's sockets.
    let kernel = |text: &str, peer: &str, (n, bytes): (u64, u64)| {
        let labels = [
            ("direction", "outbound"),
            ("workload", "client"),
            ("peer_workload", peer),
        ];
        let get = |name: &str| sample(text, name, &labels).unwrap_or(0);
        assert_eq!(
            get("mesh_kernel_flow_connections_opened_total"),
            n,
            "{peer}\n{text}"
        );
        assert_eq!(
            get("mesh_kernel_flow_sent_bytes_total"),
            n * bytes,
            "{peer}\n{text}"
        );
        assert_eq!(
            get("mesh_kernel_flow_received_bytes_total"),
            n * bytes,
            "{peer}\n{text}"
        );
        assert_eq!(get("mesh_kernel_flow_denied_total"), 0, "{peer}\n{text}");
    };
    let closed = |text: &str, peer: &str| {
        sample(
            text,
            "mesh_kernel_flow_connections_closed_total",
            &[("workload", "client"), ("peer_workload", peer)],
        )
    };
    let k1 = scrape_until(&lab, &n1, "the kernel saw every close", |t| {
        closed(t, "server") == Some(FAR.0) && closed(t, "near") == Some(NEAR.0)
    });
    kernel(&k1, "server", FAR);
    kernel(&k1, "near", NEAR);
    check(&m1, "source", "server", "mutual_tls", FAR);
    check(&m2, "destination", "server", "mutual_tls", FAR);
    // Same node: this daemon is both ends, and reports both.
    check(&m1, "source", "near", "none", NEAR);
    check(&m1, "destination", "near", "none", NEAR);
    assert_eq!(
        sample(
            &m1,
            "istio_tcp_connections_opened_total",
            &[("reporter", "destination")]
        ),
        Some(NEAR.0),
        "node1 is the destination of the same-node connections only:\n{m1}"
    );
    assert_eq!(
        sample(
            &m2,
            "istio_tcp_connections_opened_total",
            &[("reporter", "source")]
        ),
        None,
        "node2 was the source of nothing:\n{m2}"
    );
    // Internals: handshakes on both sides, an SVID expiry per local identity.
    assert!(
        sample(
            &m1,
            "mesh_tls_handshakes_total",
            &[("side", "client"), ("result", "ok")]
        ) >= Some(1)
    );
    assert!(
        sample(
            &m2,
            "mesh_tls_handshakes_total",
            &[("side", "server"), ("result", "ok")]
        ) >= Some(1)
    );
    let client_id = "spiffe://cluster.local/ns/default/sa/client";
    assert!(sample(
        &m1,
        "mesh_svid_expiry_timestamp_seconds",
        &[("identity", client_id)]
    )
    .is_some());
    for text in [&m1, &m2] {
        promtool_check(text).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !text.contains(&client.ipv4().to_string()),
            "a label holds an address: unbounded series"
        );
    }
}

const DENY_7002: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-7002, namespace: default }
spec:
  selector: { matchLabels: { app: near } }
  action: DENY
  rules:
    - to: [{ operation: { ports: ["7002"] } }]
"#;

#[test]
fn flows_follow_shows_open_close_and_deny_of_connections_made_after_it_started() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("obs-flows");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let near = lab.add_pod(&n1, "near");
    let server = lab.add_pod(&n2, "server");
    let mut mesh = MeshSpec::new(&[&n1, &n2], &[&client, &near, &server]);
    // The daemon decides the denial (the kernel fast path would refuse it in connect()).
    mesh.policy_fast_path = false;
    mesh.policies = mesh_node::policy::parse_yaml(DENY_7002).unwrap();
    let _daemons = mesh.start(&lab);
    let _echo = serve(&lab, &server, "echo", 7001);
    let _denied = serve(&lab, &near, "echo", 7002);
    let json = follow_flows(&lab, &n1, &["-o", "json"]);
    let table = follow_flows(&lab, &n1, &["--destination", "server"]);

    let out = echo(&lab, &client, sock(server.ipv4(), 7001), 5000, 1);
    assert!(out.success(), "{out}");
    let open = &wait_events(&json, 1, is("open", "default/server"))[0];
    assert_eq!(open["source"], "default/client");
    assert_eq!(open["direction"], "outbound");
    assert_eq!(
        open["destinationPrincipal"],
        "spiffe://cluster.local/ns/default/sa/server"
    );
    let close = &wait_events(&json, 1, is("close", "default/server"))[0];
    assert_eq!(
        (close["bytesSent"].as_u64(), close["bytesReceived"].as_u64()),
        (Some(5000), Some(5000))
    );
    assert!(close["durationMs"].is_u64(), "{close}");
    let line = table
        .stdout()
        .wait_for("CLOSE", T)
        .expect("the table shows the close");
    assert!(line.contains("sent=5000 received=5000 duration="), "{line}");

    let out = echo(&lab, &client, sock(near.ipv4(), 7002), 100, 1);
    assert!(!out.success(), "port 7002 should be denied: {out}");
    let deny = &wait_events(&json, 1, is("deny", "default/near"))[0];
    let reason = deny["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("default/deny-7002"), "{deny}");
    assert!(
        table.stdout().lines().iter().all(|l| !l.contains("near")),
        "the --destination filter let another destination through"
    );
}

#[test]
fn kernel_denials_reach_flows_and_idle_flows_leave_the_map_without_losing_counts() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("obs-kflows");
    let n1 = lab.add_node();
    let client = lab.add_pod(&n1, "client");
    let near = lab.add_pod(&n1, "near");
    let mut mesh = MeshSpec::new(&[&n1], &[&client, &near]);
    // Decided in connect() by the kernel: the daemon never sees this connection.
    mesh.policies = mesh_node::policy::parse_yaml(DENY_7002).unwrap();
    let _daemons = mesh.start(&lab);
    let _echo = serve(&lab, &near, "echo", 7001);
    let flows = follow_flows(&lab, &n1, &["-o", "json", "--kind", "deny"]);

    let out = echo(&lab, &client, sock(near.ipv4(), 7002), 100, 1);
    assert!(!out.success(), "port 7002 should be denied: {out}");
    let deny = &wait_events(&flows, 1, is("deny", "default/near"))[0];
    assert_eq!(deny["source"], "default/client", "{deny}");
    let reason = deny["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("kernel by the policy fast path") && reason.contains("7002"),
        "{deny}"
    );
    assert!(echo(&lab, &client, sock(near.ipv4(), 7001), 1234, 2).success());

    let labels = [("workload", "client"), ("peer_workload", "near")];
    let get = |text: &str, name: &str| sample(text, name, &labels);
    let before = scrape_until(&lab, &n1, "the kernel's counts", |t| {
        get(t, "mesh_kernel_flow_connections_closed_total") == Some(2)
            && get(t, "mesh_kernel_flow_denied_total") == Some(1)
    });
    let keys = |t: &str| sample(t, "mesh_kernel_flow_keys", &[]).expect("mesh_kernel_flow_keys");
    assert!(keys(&before) > 0, "the flows are in the map:\n{before}");
    // Idle flows are harvested into the daemon's totals: the map empties, the series stay.
    let after = scrape_until(&lab, &n1, "the idle flows harvested", |t| keys(t) == 0);
    for name in [
        "mesh_kernel_flow_connections_opened_total",
        "mesh_kernel_flow_connections_closed_total",
        "mesh_kernel_flow_sent_bytes_total",
        "mesh_kernel_flow_received_bytes_total",
        "mesh_kernel_flow_denied_total",
    ] {
        assert_eq!(
            get(&after, name),
            get(&before, name),
            "{name} changed by the harvest"
        );
    }
    assert_eq!(get(&after, "mesh_kernel_flow_sent_bytes_total"), Some(2 * 1234));
    promtool_check(&after).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn readiness_turns_false_when_the_programs_are_removed() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("obs-ready");
    let n1 = lab.add_node();
    let client = lab.add_pod(&n1, "client");
    let daemons = MeshSpec::new(&[&n1], &[&client]).start(&lab);
    daemons[0].wait_for_log("readiness: ready", T);
    assert_eq!(
        http_get(&lab, &n1, HEALTH_PORT, "/healthz/ready"),
        (200, "ready\n".into())
    );
    let from = daemons[0].output().line_count();
    lab.run(
        std::process::Command::new(mesh_node_bin())
            .arg("uninstall")
            .arg("--pin-dir")
            .arg(lab.bpf_pin_dir(&n1)),
        T,
    )
    .assert_success();
    daemons[0]
        .output()
        .wait_for_line_from(from, |l| l.contains("readiness: not ready"), T)
        .expect("the daemon noticed");
    let (status, body) = http_get(&lab, &n1, HEALTH_PORT, "/healthz/ready");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("programs not attached"), "{body}");
}

#[test]
fn readiness_turns_false_when_the_certificates_expire() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("obs-ready-certs");
    let n1 = lab.add_node();
    let client = lab.add_pod(&n1, "client");
    let mut mesh = MeshSpec::new(&[&n1], &[&client]);
    mesh.remote_ca = true;
    mesh.svid_ttl = Some(Duration::from_secs(3));
    let ca = mesh.start_ca(&lab);
    let daemons = mesh.start(&lab);
    daemons[0].wait_for_log("readiness: ready", T);
    ca.kill();
    daemons[0].wait_for_log("certificates missing or expired", T);
    let (status, body) = http_get(&lab, &n1, HEALTH_PORT, "/healthz/ready");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("certificates missing or expired"), "{body}");
}

#[test]
fn admin_serves_the_node_and_refuses_pods() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("obs-admin");
    let n1 = lab.add_node();
    let client = lab.add_pod(&n1, "client");
    let _daemons = MeshSpec::new(&[&n1], &[&client]).start(&lab);

    // From the node: the admin endpoints, and the log level changed at run time.
    let (status, body) = http_get(&lab, &n1, ADMIN_PORT, "/workloads");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"name\": \"client\""), "{body}");
    for path in ["/config_dump", "/connections", "/certificates"] {
        assert_eq!(http_get(&lab, &n1, ADMIN_PORT, path).0, 200, "{path}");
    }
    let out = lab.run(
        n1.command("curl").args([
            "-sS",
            "-X",
            "POST",
            &format!("http://127.0.0.1:{ADMIN_PORT}/logging?level=debug"),
        ]),
        T,
    );
    assert!(out.stdout.contains("log filter set to debug"), "{out}");
    assert_eq!(http_get(&lab, &n1, ADMIN_PORT, "/logging").1.trim(), "debug");
    let socket = admin_socket(&lab, &n1);
    let status = |cmd: &mut std::process::Command| lab.run(cmd.arg("status").arg("--socket").arg(&socket), T);
    let out = status(&mut n1.command(mesh_node_bin()));
    assert!(out.success() && out.stdout.contains("node1"), "{out}");
    let out = lab.run(
        n1.command(mesh_node_bin())
            .args(["workloads", "-o", "json", "--socket"])
            .arg(&socket),
        T,
    );
    assert!(out.success() && out.stdout.contains("\"cgroupId\""), "{out}");

    // From a pod: nothing listens on the node's addresses, and the socket refuses.
    for url in [
        format!("http://{}:{ADMIN_PORT}/workloads", n1.pod_gateway_v4()),
        format!("http://127.0.0.1:{ADMIN_PORT}/workloads"),
    ] {
        let out = lab.run(client.command("curl").args(["-sS", "--max-time", "5", &url]), T);
        assert!(!out.success(), "a pod reached the admin endpoint {url}: {out}");
    }
    let out = status(&mut client.command(mesh_node_bin()));
    assert!(!out.success(), "a pod was served by the admin api: {out}");
    assert!(
        out.stderr.contains("the daemon refused the request") && out.stderr.contains("network namespace"),
        "{out}"
    );
}

#[test]
fn a_restarted_daemon_carries_on_from_the_kernel_counters_without_double_counting() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("obs-restart");
    let n1 = lab.add_node();
    let client = lab.add_pod(&n1, "client");
    let near = lab.add_pod(&n1, "near");
    let mut daemons = MeshSpec::new(&[&n1], &[&client, &near]).start(&lab);
    let _echo = serve(&lab, &near, "echo", 7001);
    assert!(echo(&lab, &client, sock(near.ipv4(), 7001), 1000, 3).success());
    let before = captured(&lab, &n1);
    assert!(before >= 3, "{before}");

    let restarted = lab.restart_daemon(daemons.remove(0));
    restarted.wait_for_log("readiness: ready", T);
    let text = scrape(&lab, &n1);
    let exported = ["captured_v4", "captured_v6"]
        .iter()
        .map(|c| sample(&text, "mesh_datapath_total", &[("counter", c)]).unwrap_or(0))
        .sum::<u64>();
    assert_eq!(exported, before, "kernel totals are copied, never added:\n{text}");
    assert_eq!(captured(&lab, &n1), before, "the pinned counters were kept");
    // User-space counts of connections are not replayed: the new daemon carried none yet.
    assert_eq!(
        sample(&text, "istio_tcp_connections_opened_total", &[]),
        None,
        "{text}"
    );
    assert!(echo(&lab, &client, sock(near.ipv4(), 7001), 1000, 1).success());
    assert_eq!(captured(&lab, &n1), before + 1);
}
