//! Reading a lab daemon's observability surfaces from the test: its Prometheus scrape
//! (curl inside the node's namespace), its `mesh-node flows --follow` stream, and
//! `promtool check metrics`.
use std::{io::Write as _, process::Stdio, time::Duration};

use crate::{mesh::admin_socket, mesh_node_bin, Lab, LabChild, Node};

const TIMEOUT: Duration = Duration::from_secs(30);

/// `GET http://127.0.0.1:<port><path>` from inside `node`'s namespace: (HTTP status,
/// body). Panics if curl cannot connect.
#[track_caller]
pub fn http_get(lab: &Lab, node: &Node, port: u16, path: &str) -> (u16, String) {
    let out = lab.run(
        node.command("curl").args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:{port}{path}"),
        ]),
        TIMEOUT,
    );
    assert!(out.success(), "curl {path} on {}: {out}", node.name);
    let (body, status) = out
        .stdout
        .trim_end()
        .rsplit_once('\n')
        .expect("curl printed the status");
    (status.trim().parse().expect("an http status"), body.to_owned())
}

/// The node daemon's `/metrics` (Prometheus text format) on port 15020.
#[track_caller]
pub fn scrape(lab: &Lab, node: &Node) -> String {
    let (status, body) = http_get(lab, node, mesh_node::config::DEFAULT_METRICS_PORT, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The sum of the samples of `name` whose labels include every `(label, value)` of
/// `labels`; `None` when no sample matches.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (set, value) = match rest.strip_prefix('{') {
            Some(r) => r.rsplit_once("} ").expect("a sample line"),
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        if labels.iter().all(|(k, v)| set.contains(&format!("{k}=\"{v}\""))) {
            let v: f64 = value.trim().parse().expect("a sample value");
            *found.get_or_insert(0) += v as u64;
        }
    }
    found
}

/// Runs `promtool check metrics` on `text`. Without promtool: an error under `CI=true`
/// (CI must really check), else a printed skip.
pub fn promtool_check(text: &str) -> Result<(), String> {
    let installed = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            return Err(
                "promtool is not installed (Debian package `prometheus`, see cargo xtask setup)".into(),
            );
        }
        eprintln!("SKIP: promtool not installed, the scrape is not checked");
        return Ok(());
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .map_err(|e| format!("writing to promtool: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("promtool: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics failed:\n{}{}\non:\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `mesh-node flows --follow <args>` against `node`'s daemon, run in the node's
/// namespace; returns once it is subscribed, so it sees every event from then on.
#[track_caller]
pub fn follow_flows(lab: &Lab, node: &Node, args: &[&str]) -> LabChild {
    let child = lab.spawn(
        node.command(mesh_node_bin())
            .args(["flows", "--follow", "--socket"])
            .arg(admin_socket(lab, node))
            .args(args),
    );
    child
        .stderr()
        .wait_for("following flows", TIMEOUT)
        .unwrap_or_else(|e| panic!("mesh-node flows on {}: {e}", node.name));
    child
}

/// Scrapes `node` until `ready` holds for the scrape (the daemon exports the kernel's
/// counters once a second), and returns that scrape. Panics after 30 s with the last one.
#[track_caller]
pub fn scrape_until(lab: &Lab, node: &Node, what: &str, mut ready: impl FnMut(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let text = scrape(lab, node);
        if ready(&text) {
            return text;
        }
        if std::time::Instant::now() > deadline {
            panic!("{what}: not seen on {} within {TIMEOUT:?}:\n{text}", node.name);
        }
        // Each scrape is a process run in the node's namespace: this loop waits on the
        // daemon's next export, it does not time anything.
        std::thread::yield_now();
    }
}
