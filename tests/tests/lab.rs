//! Tests of the lab itself (no daemon): pods reach each other directly,
//! commands land in the right namespace and cgroup, and nothing is left
//! behind, also when a test panics.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use mesh_tests::{cgroup2_mount, labtool_bin, require_privileges, Lab, LabChild, Pod};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);
const MIB: u64 = 1 << 20;

/// Starts `labtool serve` in `pod` and returns it with the address it
/// reported on its `listening` line.
fn serve(lab: &Lab, pod: &Pod, listen: SocketAddr, mode: &str) -> (LabChild, SocketAddr) {
    let server = lab.spawn(pod.command(labtool_bin()).args([
        "serve",
        "--listen",
        &listen.to_string(),
        "--mode",
        mode,
    ]));
    let line = server.wait_stdout("listening ", T);
    let addr = line["listening ".len()..]
        .parse()
        .expect("listening line has an address");
    (server, addr)
}

/// Runs `labtool connect` in `pod`, checks it succeeded and returns its
/// per-connection reports.
fn connect(lab: &Lab, pod: &Pod, to: SocketAddr, bytes: u64, count: usize) -> Vec<Value> {
    let out = lab.run(
        pod.command(labtool_bin()).args([
            "connect",
            "--to",
            &to.to_string(),
            "--send",
            &bytes.to_string(),
            "--count",
            &count.to_string(),
        ]),
        T,
    );
    out.assert_success();
    let reports: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), count, "{out}");
    reports
}

/// The address a `serve --mode whoami` server at `to` sees `pod` connect from.
fn whoami(lab: &Lab, pod: &Pod, to: SocketAddr) -> SocketAddr {
    let out = lab.run(
        pod.command(labtool_bin())
            .args(["whoami", "--to", &to.to_string()]),
        T,
    );
    out.assert_success();
    out.stdout.trim().parse().unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Echoes 1 MiB on two connections from `client` to `server` over IPv4 and
/// IPv6, and checks the server sees the client's own address.
fn check_direct_path(lab: &Lab, client: &Pod, server: &Pod) {
    let families = [
        (IpAddr::from(server.ipv4()), IpAddr::from(client.ipv4())),
        (IpAddr::from(server.ipv6()), IpAddr::from(client.ipv6())),
    ];
    for (server_ip, client_ip) in families {
        let (echo, addr) = serve(lab, server, SocketAddr::new(server_ip, 0), "echo");
        assert_eq!(addr.ip(), server_ip);
        for r in connect(lab, client, addr, MIB, 2) {
            assert_eq!(r["ok"], true, "{r}");
            assert_eq!(r["sent"], MIB, "{r}");
            assert_eq!(r["received"], MIB, "{r}");
            assert_eq!(r["error"], Value::Null, "{r}");
            let local: SocketAddr = r["local"].as_str().unwrap().parse().unwrap();
            assert_eq!(local.ip(), client_ip, "{r}");
        }
        echo.wait_stdout(&format!("in={MIB} out={MIB}"), T);

        let (_who, addr) = serve(lab, server, SocketAddr::new(server_ip, 0), "whoami");
        assert_eq!(
            whoami(lab, client, addr).ip(),
            client_ip,
            "the server must see the pod's own address"
        );
    }
}

#[test]
fn pods_on_different_nodes_talk_directly_over_ipv4_and_ipv6() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("pods_on_different_nodes");
    let (n1, n2) = (lab.add_node(), lab.add_node());
    let a = lab.add_pod(&n1, "client");
    let b = lab.add_pod(&n2, "server");
    check_direct_path(&lab, &a, &b);
    check_direct_path(&lab, &b, &a);
}

#[test]
fn routes_reach_every_node_whatever_the_order_nodes_were_added() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("three_nodes");
    let n1 = lab.add_node();
    let a = lab.add_pod(&n1, "a");
    let n2 = lab.add_node();
    let n3 = lab.add_node();
    let c = lab.add_pod(&n3, "c");
    let b = lab.add_pod(&n2, "b");
    let (_srv, addr) = serve(&lab, &a, SocketAddr::new(a.ipv4().into(), 7000), "echo");
    assert_eq!(connect(&lab, &c, addr, 1000, 1)[0]["ok"], true);
    assert_eq!(connect(&lab, &b, addr, 1000, 1)[0]["ok"], true);
    let (_srv6, addr6) = serve(&lab, &c, SocketAddr::new(c.ipv6().into(), 7000), "echo");
    assert_eq!(connect(&lab, &a, addr6, 1000, 1)[0]["ok"], true);
}

#[test]
fn pods_on_the_same_node_talk_directly() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("pods_on_the_same_node");
    let n1 = lab.add_node();
    let a = lab.add_pod(&n1, "a");
    let b = lab.add_pod(&n1, "b");
    assert_eq!((a.index, b.index), (2, 3));
    check_direct_path(&lab, &a, &b);
}

#[test]
fn commands_run_in_their_namespace_and_pod_commands_in_the_pod_cgroup() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("namespaces_and_cgroups");
    let n1 = lab.add_node();
    let a = lab.add_pod(&n1, "a");
    let b = lab.add_pod(&n1, "b");

    let out = lab.run(a.command("cat").arg("/proc/self/cgroup"), T);
    let rel = a.cgroup_path().strip_prefix(cgroup2_mount()).unwrap();
    let want = format!("0::/{}", rel.display());
    assert!(
        out.assert_success().stdout.lines().any(|l| l == want),
        "want {want}: {out}"
    );
    assert!(a.cgroup_id() > 0);

    let out = lab.run(n1.command("ip").args(["-br", "addr", "show", "dev", "eth0"]), T);
    assert!(out.assert_success().stdout.contains("10.200.0.1/24"), "{out}");
    let forwarding = n1
        .netns
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding"));
    assert_eq!(forwarding.unwrap().trim(), "1");

    // A socket made by the test process inside pod b's namespace.
    let listener = b.netns.run(|| TcpListener::bind((b.ipv4(), 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut data = Vec::new();
        s.read_to_end(&mut data).unwrap();
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        peer
    });
    assert_eq!(connect(&lab, &a, addr, 5000, 1)[0]["ok"], true);
    assert_eq!(echo.join().unwrap().ip(), IpAddr::from(a.ipv4()));
}

#[test]
fn connect_errors_carry_the_os_error() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("connect_errors");
    let n1 = lab.add_node();
    let a = lab.add_pod(&n1, "a");
    let b = lab.add_pod(&n1, "b");
    let to = SocketAddr::new(b.ipv4().into(), 9);
    let out = lab.run(
        a.command(labtool_bin())
            .args(["connect", "--to", &to.to_string()]),
        T,
    );
    assert_eq!(out.status.code(), Some(1), "{out}");
    let r: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(r["ok"], false);
    assert_eq!(r["error"], "connect: Connection refused (os error 111)");
}

/// What must be gone once a lab is: found by name, not through the lab.
struct Leftovers {
    prefix: String,
    dir: PathBuf,
    cgroup: PathBuf,
}

impl Leftovers {
    fn of(lab: &Lab) -> Self {
        Leftovers {
            prefix: lab.prefix().to_string(),
            dir: lab.dir().to_path_buf(),
            cgroup: lab.cgroup_path().to_path_buf(),
        }
    }

    fn assert_gone(&self) {
        let netns: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        let left: Vec<&String> = netns
            .iter()
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .collect();
        assert!(left.is_empty(), "namespaces left: {left:?}");
        assert!(!self.cgroup.exists(), "{} left", self.cgroup.display());
        assert!(!self.dir.exists(), "{} left", self.dir.display());
        let pins = Path::new("/sys/fs/bpf").join(format!("mesh-lab-{}-node1", self.prefix));
        assert!(!pins.exists(), "{} left", pins.display());
    }
}

#[test]
fn dropping_the_lab_removes_everything_and_kills_its_processes() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("drop_cleans_up");
    let n1 = lab.add_node();
    let n2 = lab.add_node();
    let a = lab.add_pod(&n1, "a");
    lab.add_pod(&n2, "b");
    let gone = Leftovers::of(&lab);
    assert!(gone.cgroup.exists() && gone.dir.exists() && n1.netns.exists());

    // A child the lab knows about, leaked by the test...
    let (server, _) = serve(&lab, &a, SocketAddr::new(a.ipv4().into(), 7000), "echo");
    let server_pid = server.pid();
    std::mem::forget(server);
    // ...and one it does not know about, found by its cgroup.
    let mut stray = a
        .command("sleep")
        .arg("1000")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // A pin dir the daemon would have made.
    let pins = lab.bpf_pin_dir(&n1);
    std::fs::create_dir(&pins).unwrap();

    drop(lab);
    gone.assert_gone();
    assert_eq!(stray.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert!(
        !Path::new(&format!("/proc/{server_pid}")).exists(),
        "server still there"
    );
}

#[test]
fn a_panicking_test_still_cleans_up() {
    if !require_privileges() {
        return;
    }
    let seen = Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new("panics");
        let n1 = lab.add_node();
        let a = lab.add_pod(&n1, "a");
        *seen.lock().unwrap() = Some(Leftovers::of(&lab));
        let _server = serve(&lab, &a, SocketAddr::new(a.ipv4().into(), 7000), "echo");
        panic!("deliberate panic with a lab alive");
    }));
    assert!(result.is_err());
    seen.lock()
        .unwrap()
        .take()
        .expect("the lab was built")
        .assert_gone();
}

#[test]
fn sweep_removes_the_leftovers_of_a_dead_owner() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("sweep");
    let n1 = lab.add_node();
    let a = lab.add_pod(&n1, "a");
    let gone = Leftovers::of(&lab);
    let mut in_pod = a.command("sleep").arg("1000").spawn().unwrap();
    let mut in_node = n1.command("sleep").arg("1000").spawn().unwrap();

    // Live labs are left alone.
    assert!(mesh_tests::sweep(Some(&gone.prefix)).is_empty());

    // As if the test binary had been SIGKILLed: no teardown, owner gone.
    std::fs::write(gone.dir.join("owner"), "4194305 1\n").unwrap();
    std::mem::forget(lab);
    let removed = mesh_tests::sweep(Some(&gone.prefix));
    assert!(removed.iter().all(|r| !r.starts_with("FAILED")), "{removed:#?}");
    assert!(removed.iter().any(|r| r.starts_with("process ")), "{removed:#?}");
    assert!(
        removed.iter().any(|r| r == &format!("netns {}-sw", gone.prefix)),
        "{removed:#?}"
    );
    gone.assert_gone();
    assert_eq!(in_pod.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert_eq!(in_node.wait().unwrap().signal(), Some(libc::SIGKILL));
}
