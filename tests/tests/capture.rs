//! End-to-end tests of the capture path: real daemons in lab nodes, real kernel hooks,
//! labtool clients and servers in pods.
mod common;

use common::*;
use mesh_tests::{mesh::MeshSpec, mesh_node_bin, require_privileges, Lab};

/// Two nodes with a client pod on node1 and a server pod on node2, both meshed.
#[test]
fn cross_node_ipv4_and_ipv6_are_captured_and_carried() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("cross-node");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let server = lab.add_pod(&n2, "server");
    let _daemons = MeshSpec::new(&[&n1, &n2], &[&client, &server]).start(&lab);
    let _who = serve(&lab, &server, "whoami", 7000);
    let echo_srv = serve(&lab, &server, "echo", 7001);

    // The server sees its node's daemon, not the client pod: the connect was redirected
    // and carried through the tunnel between the two daemons.
    assert_eq!(
        whoami(&lab, &client, sock(server.ipv4(), 7000)).unwrap(),
        n2.pod_gateway_v4()
    );
    assert_eq!(
        whoami(&lab, &client, sock(server.ipv6(), 7000)).unwrap(),
        n2.pod_gateway_v6()
    );

    // 2 MiB each way, with the client's half-close carried through.
    for target in [sock(server.ipv4(), 7001), sock(server.ipv6(), 7001)] {
        let out = echo(&lab, &client, target, 2 << 20, 1);
        assert!(out.success(), "echo through the mesh to {target}: {out}");
        let r = &results(&out)[0];
        assert_eq!(
            (r["sent"].as_u64(), r["received"].as_u64()),
            (Some(2 << 20), Some(2 << 20)),
            "{out}"
        );
    }
    echo_srv.wait_stdout(&format!("in={} out={}", 2 << 20, 2 << 20), T);

    // Exactly one capture per connection: the daemon's own connections are not captured.
    let c = counters(&lab, &n1);
    assert_eq!(c["captured_v4"], 2, "{c}");
    assert_eq!(c["captured_v6"], 2, "{c}");
    assert_eq!(c["established"], 4, "{c}");
    assert_eq!(c["refused"], 0, "{c}");
    // node2's daemon captured nothing: the server only accepts.
    assert_eq!(captured(&lab, &n2), 0);
}

#[test]
fn same_node_connection_is_captured() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("same-node");
    let n1 = lab.add_node();
    let client = lab.add_pod(&n1, "client");
    let server = lab.add_pod(&n1, "server");
    let _daemons = MeshSpec::new(&[&n1], &[&client, &server]).start(&lab);
    let _who = serve(&lab, &server, "whoami", 7000);
    let _echo = serve(&lab, &server, "echo", 7001);
    // The daemon reaches the local pod from the node's pod bridge address.
    assert_eq!(
        whoami(&lab, &client, sock(server.ipv4(), 7000)).unwrap(),
        n1.pod_gateway_v4()
    );
    let out = echo(&lab, &client, sock(server.ipv6(), 7001), 256 << 10, 1);
    assert!(out.success(), "{out}");
    assert_eq!(captured(&lab, &n1), 2);
}

#[test]
fn unenrolled_pod_is_not_captured() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("unenrolled");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let outsider = lab.add_pod(&n1, "outsider");
    let server = lab.add_pod(&n2, "server");
    let _daemons = MeshSpec::new(&[&n1, &n2], &[&client, &server]).start(&lab);
    let _who = serve(&lab, &server, "whoami", 7000);
    // The outsider's cgroup is below the node's, where the programs are attached, but it
    // is not enrolled: it goes direct and keeps its own source address.
    assert_eq!(
        whoami(&lab, &outsider, sock(server.ipv4(), 7000)).unwrap(),
        outsider.ipv4()
    );
    assert_eq!(captured(&lab, &n1), 0);
    assert_eq!(
        whoami(&lab, &client, sock(server.ipv4(), 7000)).unwrap(),
        n2.pod_gateway_v4()
    );
    assert_eq!(captured(&lab, &n1), 1);
}

#[test]
fn two_hundred_concurrent_connections() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("concurrent");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let server = lab.add_pod(&n2, "server");
    let _daemons = MeshSpec::new(&[&n1, &n2], &[&client, &server]).start(&lab);
    let _echo = serve(&lab, &server, "echo", 7001);
    let out = echo(&lab, &client, sock(server.ipv4(), 7001), 64 << 10, 200);
    assert!(out.success(), "{out}");
    let r = results(&out);
    assert_eq!(r.len(), 200);
    assert!(
        r.iter().all(|r| r["ok"] == true && r["received"] == 64 << 10),
        "{out}"
    );
    assert_eq!(captured(&lab, &n1), 200);
}

#[test]
fn killed_or_stopped_daemon_fails_closed_and_restart_recovers() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("fail-closed");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let server = lab.add_pod(&n2, "server");
    let mut daemons = MeshSpec::new(&[&n1, &n2], &[&client, &server]).start(&lab);
    let who = serve(&lab, &server, "whoami", 7000);
    let target = sock(server.ipv4(), 7000);
    assert_eq!(whoami(&lab, &client, target).unwrap(), n2.pod_gateway_v4());
    for how in ["kill", "sigterm"] {
        let old = daemons.remove(0);
        if how == "kill" {
            old.kill();
        } else {
            assert!(
                old.stop().success(),
                "SIGTERM should end the daemon cleanly: {}",
                old.logs()
            );
        }
        // The programs stay attached: the connect is redirected to a port nobody listens
        // on and refused, never sent directly.
        let err = whoami(&lab, &client, target).expect_err("a connection went through with the daemon down");
        assert!(
            err.stdout.contains("refused") || err.stderr.contains("refused"),
            "{how}: {err}"
        );

        let restarted = lab.restart_daemon(old);
        assert_eq!(
            whoami(&lab, &client, target).unwrap(),
            n2.pod_gateway_v4(),
            "{how}: after restart"
        );
        daemons.insert(0, restarted);
    }
    // The server saw exactly the three meshed connections (from its node's daemon), and
    // never one from the client pod itself. The third line arrives after any earlier one.
    let (third, _) = who
        .stdout()
        .wait_for_line_from(
            0,
            {
                let mut n = 0;
                move |l: &str| {
                    n += usize::from(l.starts_with("accepted"));
                    n == 3
                }
            },
            T,
        )
        .expect("three accepted connections");
    let lines = who.stdout().lines();
    assert!(
        lines[..=third]
            .iter()
            .all(|l| !l.contains(&client.ipv4().to_string())),
        "bypass: {lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("accepted")).count(),
        3,
        "{lines:?}"
    );
    // Counters survive restarts (pinned maps): 1 + (1 refused + 1 after restart) × 2.
    assert_eq!(captured(&lab, &n1), 5);
}

#[test]
fn uninstall_detaches_programs_and_removes_pins() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("uninstall");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let server = lab.add_pod(&n2, "server");
    let daemons = MeshSpec::new(&[&n1, &n2], &[&client, &server]).start(&lab);
    let _who = serve(&lab, &server, "whoami", 7000);
    let target = sock(server.ipv4(), 7000);
    assert_eq!(whoami(&lab, &client, target).unwrap(), n2.pod_gateway_v4());
    let d1 = &daemons[0];
    assert!(d1.stop().success());
    let out = lab.run(
        std::process::Command::new(mesh_node_bin())
            .arg("uninstall")
            .arg("--config")
            .arg(d1.config_path()),
        T,
    );
    assert!(out.success(), "{out}");
    assert!(!lab.bpf_pin_dir(&n1).exists(), "pins left after uninstall");
    // Nothing captures any more: the client reaches the server directly.
    assert_eq!(whoami(&lab, &client, target).unwrap(), client.ipv4());
}

#[test]
fn excluded_ports_and_cidrs_are_not_captured() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("exclusions");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let server = lab.add_pod(&n2, "server");
    let other = lab.add_pod(&n2, "other");
    let mut mesh = MeshSpec::new(&[&n1, &n2], &[&client, &server, &other]);
    mesh.exclusions.ports = vec![7002];
    mesh.exclusions.cidrs = vec![format!("{}/32", other.ipv4()), format!("{}/128", other.ipv6())];
    let _daemons = mesh.start(&lab);
    let _a = serve(&lab, &server, "whoami", 7000);
    let _b = serve(&lab, &server, "whoami", 7002);
    let _c = serve(&lab, &other, "whoami", 7000);
    assert_eq!(
        whoami(&lab, &client, sock(server.ipv4(), 7002)).unwrap(),
        client.ipv4()
    );
    assert_eq!(
        whoami(&lab, &client, sock(other.ipv4(), 7000)).unwrap(),
        client.ipv4()
    );
    assert_eq!(
        whoami(&lab, &client, sock(other.ipv6(), 7000)).unwrap(),
        client.ipv6()
    );
    assert_eq!(captured(&lab, &n1), 0);
    assert_eq!(counters(&lab, &n1)["excluded"], 3);
    assert_eq!(
        whoami(&lab, &client, sock(server.ipv4(), 7000)).unwrap(),
        n2.pod_gateway_v4()
    );
}

#[test]
fn curl_reaches_python_http_server_across_nodes() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("curl");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let client = lab.add_pod(&n1, "client");
    let web = lab.add_pod(&n2, "web");
    let _daemons = MeshSpec::new(&[&n1, &n2], &[&client, &web]).start(&lab);
    let site = lab.dir().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hello.txt"), "hello through the mesh\n").unwrap();
    let server = lab.spawn(
        web.command("python3")
            .args(["-u", "-m", "http.server", "8080", "--bind", "::", "--directory"])
            .arg(&site),
    );
    server.wait_stdout("Serving HTTP", T);
    let url = format!("http://{}:8080/hello.txt", web.ipv4());
    let out = lab.run(client.command("curl").args(["-sS", "--max-time", "10", &url]), T);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout, "hello through the mesh\n");
    let line = server.stderr().wait_for("GET /hello.txt", T).unwrap();
    assert!(
        line.contains(&n2.pod_gateway_v4().to_string()),
        "server should see its node's daemon: {line}"
    );
    assert_eq!(captured(&lab, &n1), 1);
}
