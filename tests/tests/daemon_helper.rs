//! Tests of how the lab runs a daemon, with a shell script standing in for
//! `mesh-node` (through `MESH_NODE_BIN`): config and log files, the ready
//! line, stop, kill, restart and a daemon that dies before it is ready.
//! One test only: it sets an environment variable for the whole process.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use mesh_tests::{require_privileges, Lab};

const FAKE_DAEMON: &str = r#"#!/bin/sh
echo "args: $*"
echo "RUST_LOG=$RUST_LOG cwd=$(pwd)"
if grep -q crash "$3"; then echo "bad config: crash" >&2; exit 3; fi
trap 'echo "got SIGTERM" >&2; exit 0' TERM
echo "addr: $(ip -br addr show dev eth0)"
echo "mesh-node ready" >&2
while :; do sleep 0.1 & wait $!; done
"#;

#[test]
fn daemons_start_stop_restart_and_fail_with_their_log() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::new("daemon_helper");
    let fake = lab.write_file("fake-mesh-node", FAKE_DAEMON);
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    // set_var races with threads reading the environment; this binary has
    // one test, so there are none.
    std::env::set_var("MESH_NODE_BIN", &fake);
    let node = lab.add_node();

    let d1 = lab.start_daemon(&node, "node: node1\n");
    assert_eq!(d1.generation(), 1);
    assert_eq!(d1.config_path(), lab.dir().join("node1.yaml"));
    assert_eq!(
        std::fs::read_to_string(d1.config_path()).unwrap(),
        "node: node1\n"
    );
    assert_eq!(d1.log_path(), lab.dir().join("node1-daemon.log"));
    let args = d1.wait_for_log("args:", Duration::from_secs(5));
    assert_eq!(args, format!("args: run --config {}", d1.config_path().display()));
    let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    d1.wait_for_log(
        &format!("RUST_LOG={rust_log} cwd={}", lab.dir().display()),
        Duration::from_secs(5),
    );
    d1.wait_for_log("10.200.0.1/24", Duration::from_secs(5));
    let status = d1.stop();
    assert!(status.success(), "{status}");
    // The log is read by a thread: wait for the line rather than race it.
    d1.wait_for_log("got SIGTERM", Duration::from_secs(5));
    assert!(std::fs::read_to_string(d1.log_path())
        .unwrap()
        .contains("mesh-node ready"));

    let d2 = lab.restart_daemon(d1);
    assert_eq!(d2.generation(), 2);
    assert_eq!(d2.log_path(), lab.dir().join("node1-daemon-2.log"));
    assert!(d2.is_running());
    assert_eq!(d2.kill().signal(), Some(libc::SIGKILL));
    assert!(!d2.is_running());

    let crash = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        lab.start_daemon(&node, "crash\n");
    }));
    let message = crash.unwrap_err();
    let message = message.downcast_ref::<String>().unwrap();
    assert!(message.contains("did not become ready"), "{message}");
    assert!(message.contains("bad config: crash"), "{message}");
    assert!(message.contains("exit status: 3"), "{message}");
}
