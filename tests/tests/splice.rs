//! End-to-end tests of the same-node splice (`bpf.splice`): a client pod and a server pod
//! on one node, the daemon carrying their connection with splice(2). Each test checks one
//! piece of TCP semantics the applications must keep; the key ones run with the switch
//! off too, so that both paths stay equal.
mod common;

use std::{io::Write as _, net::SocketAddr, time::Duration};

use common::*;
use mesh_tests::{labtool_bin, mesh::MeshSpec, require_privileges, ChildOutput, Daemon, Lab, Node, Pod};

/// One node, a meshed client and server pod, the daemon with `bpf.splice` = `splice`.
struct World {
    lab: Lab,
    node: Node,
    client: Pod,
    server: Pod,
    mesh: MeshSpec,
    daemons: Vec<Daemon>,
}

fn world(name: &str, splice: bool, configure: impl FnOnce(&mut MeshSpec)) -> World {
    let lab = Lab::new(name);
    let node = lab.add_node();
    let client = lab.add_pod(&node, "client");
    let server = lab.add_pod(&node, "server");
    let mut mesh = MeshSpec::new(&[&node], &[&client, &server]);
    mesh.splice = splice;
    configure(&mut mesh);
    let daemons = mesh.start(&lab);
    World {
        lab,
        node,
        client,
        server,
        mesh,
        daemons,
    }
}

impl World {
    fn serve(&self, args: &[&str], port: u16) -> mesh_tests::LabChild {
        let child = self.lab.spawn(
            self.server
                .command(labtool_bin())
                .args(["serve", "--listen", &format!("[::]:{port}")])
                .args(args),
        );
        child.wait_stdout("listening", T);
        child
    }

    fn session_command(&self, port: u16, args: &[&str]) -> std::process::Command {
        let mut cmd = self.client.command(labtool_bin());
        cmd.args(["session", "--to", &sock(self.server.ipv4(), port).to_string()])
            .args(args);
        cmd
    }

    /// Runs `labtool session` from the client pod; returns its output and JSON line.
    fn session(&self, port: u16, args: &[&str]) -> (ChildOutput, serde_json::Value) {
        let out = self
            .lab
            .run(&mut self.session_command(port, args), Duration::from_secs(120));
        let line = out
            .stdout
            .lines()
            .rfind(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no JSON line from labtool session: {out}"));
        let v = serde_json::from_str(line).expect("json line");
        (out, v)
    }

    fn target(&self, port: u16) -> SocketAddr {
        sock(self.server.ipv4(), port)
    }

    /// The daemon's Prometheus exposition.
    fn metrics(&self) -> String {
        let out = self.lab.run(
            self.node
                .command("curl")
                .args(["-sS", &format!("http://{}:15020/metrics", self.node.ipv4())]),
            T,
        );
        assert!(out.success(), "{out}");
        out.stdout
    }
}

/// The value of the series `name` (with its labels, as printed) in an exposition; 0 when
/// absent.
fn series(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().expect("a counter value"))
}

/// Two tests of `check`, in a module named after the semantic: `with_splice` and
/// `without_splice` (`bpf.splice` off: the copy path must behave the same).
macro_rules! with_and_without_splice {
    ($semantic:ident, $check:ident) => {
        mod $semantic {
            #[test]
            fn with_splice() {
                if mesh_tests::require_privileges() {
                    super::$check(true);
                }
            }

            #[test]
            fn without_splice() {
                if mesh_tests::require_privileges() {
                    super::$check(false);
                }
            }
        }
    };
}

const SPLICED: &str = "mesh_spliced_connections_total{route=\"local\"}";
const REQUEST_BYTES: &str = "mesh_spliced_bytes_total{direction=\"request\"}";
const RESPONSE_BYTES: &str = "mesh_spliced_bytes_total{direction=\"response\"}";

fn request_response(splice: bool) {
    let w = world("splice-rr", splice, |_| {});
    let _echo = w.serve(&["--mode", "echo"], 7001);
    // Small requests, several at once, then 64 MiB each way; the echo is checked byte by
    // byte against the pattern.
    let mut expected = 0u64;
    for (size, count) in [(64usize, 20usize), (1024, 20), (64 << 20, 1)] {
        let out = echo(&w.lab, &w.client, w.target(7001), size, count);
        assert!(out.success(), "echo {size} B x{count}: {out}");
        let r = results(&out);
        assert_eq!(r.len(), count, "{out}");
        assert!(
            r.iter().all(|r| r["sent"] == size && r["received"] == size),
            "{out}"
        );
        expected += (size * count) as u64;
    }
    let m = w.metrics();
    if splice {
        assert_eq!(series(&m, SPLICED), 41, "{m}");
        // Exact: what the applications sent, each byte once.
        assert_eq!(series(&m, REQUEST_BYTES), expected, "{m}");
        assert_eq!(series(&m, RESPONSE_BYTES), expected, "{m}");
    } else {
        assert_eq!(
            series(&m, SPLICED),
            0,
            "nothing is spliced with the switch off: {m}"
        );
    }
}

with_and_without_splice!(request_response_and_64_mib_each_way_are_exact, request_response);

fn half_close(splice: bool) {
    let w = world("splice-half", splice, |_| {});
    // The client half-closes, then waits in a blocking recv with SO_RCVTIMEO while the
    // server reads to EOF and only then answers: the recv must wait for the answer (a
    // socket in a socket map returned EAGAIN here).
    let discard = w.serve(&["--mode", "discard"], 7001);
    let (out, r) = w.session(7001, &["--send", "1M", "--half-close"]);
    assert!(out.success(), "{out}");
    assert_eq!(r["received"], "1048576\n".len(), "{out}");
    discard.wait_stdout(&format!("in={} out=8", 1 << 20), T);

    // The server closes first: it sends 1 MiB and shuts down writing; the client reads to
    // EOF, then still sends 1 MiB, which the server reads whole.
    let greet = w.serve(&["--mode", "greet", "--bytes", "1M"], 7002);
    let (out, r) = w.session(7002, &["--read-first", "--check", "--send", "1M", "--half-close"]);
    assert!(out.success(), "{out}");
    assert_eq!(
        (r["received"].as_u64(), r["sent"].as_u64()),
        (Some(1 << 20), Some(1 << 20))
    );
    greet.wait_stdout(&format!("in={} out={}", 1 << 20, 1 << 20), T);
}

with_and_without_splice!(half_close_in_both_directions, half_close);

fn resets(splice: bool) {
    let w = world("splice-reset", splice, |_| {});
    // The client aborts (SO_LINGER 0) after 64 KiB: the server sees a reset, not an EOF.
    let echo_srv = w.serve(&["--mode", "discard"], 7001);
    let (out, _) = w.session(7001, &["--send", "64K", "--reset"]);
    assert!(out.success(), "{out}");
    let closed = echo_srv.wait_stdout("closed", T);
    assert!(closed.contains("error=Connection reset by peer"), "{closed}");

    // The server aborts after reading 64 KiB: the client's recv fails with a reset.
    let reset = w.serve(&["--mode", "reset", "--bytes", "64K"], 7002);
    let (out, r) = w.session(7002, &["--send", "64K"]);
    assert!(!out.success(), "{out}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(error.contains("Connection reset by peer"), "{out}");
    reset.wait_stdout(&format!("in={}", 64 << 10), T);
}

with_and_without_splice!(resets_reach_the_other_side, resets);

fn backpressure(splice: bool) {
    let w = world("splice-bp", splice, |_| {});
    let gate = w.lab.dir().join("gate");
    let c = std::ffi::CString::new(gate.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let server = w.serve(&["--mode", "gated", "--gate", gate.to_str().unwrap()], 7001);
    let total: u64 = 64 << 20;
    // A non-blocking client with edge-triggered epoll: it must hit EAGAIN while the
    // server reads nothing, and be woken when the server drains.
    let client = w.lab.spawn(&mut w.session_command(
        7001,
        &[
            "--send",
            "64M",
            "--nonblocking",
            "--half-close",
            "--timeout-ms",
            "60000",
        ],
    ));
    server.wait_stdout("gate closed", T);
    let line = client.wait_stdout("backpressure at", T);
    let at: u64 = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(at < total, "the sender was stopped: {line}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&gate)
        .and_then(|mut f| f.write_all(b"go\n"))
        .expect("opening the gate");
    let out = client.wait_output(Duration::from_secs(120));
    assert!(out.success(), "{out}");
    // Nothing lost, nothing reordered: the server checked the pattern of every byte.
    server.wait_stdout(&format!("in={total} out=0"), T);
    eprintln!("backpressure stopped the sender after {at} of {total} bytes");
}

with_and_without_splice!(backpressure_stops_the_sender_and_loses_nothing, backpressure);

#[test]
fn readiness_and_peek_behave_as_on_a_plain_socket() {
    if !require_privileges() {
        return;
    }
    let w = world("splice-poll", true, |_| {});
    let _greet = w.serve(&["--mode", "greet", "--bytes", "4M"], 7001);
    // Edge-triggered epoll for every read, MSG_PEEK before each: what peek shows is what
    // the read returns, and no readiness event is lost.
    let (out, r) = w.session(
        7001,
        &[
            "--read-first",
            "--nonblocking",
            "--peek",
            "--check",
            "--send",
            "1K",
            "--half-close",
        ],
    );
    assert!(out.success(), "{out}");
    assert_eq!(r["received"], 4 << 20, "{out}");
    // The same with blocking reads (SO_RCVTIMEO) and peeks.
    let (out, r) = w.session(7001, &["--read-first", "--peek", "--check", "--half-close"]);
    assert!(out.success(), "{out}");
    assert_eq!(r["received"], 4 << 20, "{out}");
}

#[test]
fn a_policy_change_resets_a_live_spliced_connection() {
    if !require_privileges() {
        return;
    }
    let mut w = world("splice-revoke", true, |m| m.policy_fast_path = false);
    let _srv = w.serve(&["--mode", "echo"], 7001);
    let live = w.lab.spawn(
        w.client
            .command("python3")
            .args(["-u", "-c", LIVE_CLIENT])
            .args([w.server.ipv4().to_string(), "7001".to_string()]),
    );
    live.wait_stdout("connected ping", T);
    assert_eq!(series(&w.metrics(), SPLICED), 1);
    w.mesh.policies = policies(DENY_CLIENT);
    std::fs::write(w.daemons[0].config_path(), w.mesh.yaml(&w.lab, &w.node)).unwrap();
    w.daemons[0].wait_for_log("live connection closed: the new config denies it", T);
    let closed = live.wait_stdout("closed", T);
    assert!(closed.contains("reset"), "the client sees a reset: {closed}");
}

#[test]
fn denied_connections_are_never_spliced() {
    if !require_privileges() {
        return;
    }
    let w = world("splice-deny", true, |m| {
        m.policy_fast_path = false;
        m.policies = policies(DENY_CLIENT);
    });
    let srv = w.serve(&["--mode", "echo"], 7001);
    let out = echo(&w.lab, &w.client, w.target(7001), 1000, 1);
    assert!(!out.success() && results(&out)[0]["received"] == 0, "{out}");
    w.daemons[0].wait_for_log("connection denied by policy", T);
    assert!(srv
        .stdout()
        .wait_for("accepted", Duration::from_millis(500))
        .is_err());
    let m = w.metrics();
    assert_eq!(series(&m, SPLICED), 0, "{m}");
    assert_eq!(series(&m, REQUEST_BYTES), 0, "{m}");
}
