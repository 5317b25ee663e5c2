use std::{io::Write as _, process::Stdio};

use super::*;

fn labels() -> TcpLabels {
    TcpLabels {
        source_workload: "sleep".into(),
        source_workload_namespace: "default".into(),
        source_principal: "spiffe://cluster.local/ns/default/sa/sleep".into(),
        destination_workload: "httpbin".into(),
        destination_workload_namespace: "default".into(),
        destination_principal: "spiffe://cluster.local/ns/default/sa/httpbin".into(),
        destination_service: "httpbin.default.svc.cluster.local".into(),
        connection_security_policy: SecurityPolicy::MutualTls,
        ..TcpLabels::unknown(Reporter::Source)
    }
}

const LABELS: &str = "reporter=\"source\",source_workload=\"sleep\",source_workload_namespace=\"default\",\
    source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\",destination_workload=\"httpbin\",\
    destination_workload_namespace=\"default\",\
    destination_principal=\"spiffe://cluster.local/ns/default/sa/httpbin\",\
    destination_service=\"httpbin.default.svc.cluster.local\",connection_security_policy=\"mutual_tls\",\
    response_flags=\"-\"";

/// The sample lines of `text`, without the descriptors.
fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

/// Every kind of series, with values.
pub(crate) fn populated() -> Arc<Metrics> {
    let m = Metrics::new();
    let c = m.tcp(&labels());
    c.opened();
    c.opened();
    c.sent(1000);
    c.received(20);
    c.closed();
    let failed = m.tcp(&TcpLabels {
        response_flags: "UF".into(),
        ..labels()
    });
    failed.failed();
    let denied = m.tcp(&TcpLabels {
        reporter: Reporter::Destination,
        response_flags: "DENY".into(),
        ..TcpLabels::unknown(Reporter::Destination)
    });
    denied.failed();
    m.policy_decision(true);
    m.policy_decision(false);
    m.policy_decision(false);
    m.tls_handshake("client", true);
    m.tls_handshake("server", false);
    m.set_svid_expiry("spiffe://cluster.local/ns/default/sa/sleep", 1_900_000_000);
    m.set_bpf_map_fill("MESH_ORIG_BY_TUPLE", 0.25);
    m.set_kernel_counter("captured_v4", 42);
    m.set_kernel_counter("bypass_dropped", 3);
    m
}

#[test]
fn istio_tcp_names_labels_and_values() {
    let text = populated().encode();
    let lines = samples(&text);
    for expected in [
        format!("istio_tcp_connections_opened_total{{{LABELS}}} 2"),
        format!("istio_tcp_connections_closed_total{{{LABELS}}} 1"),
        format!("istio_tcp_sent_bytes_total{{{LABELS}}} 1000"),
        format!("istio_tcp_received_bytes_total{{{LABELS}}} 20"),
        format!(
            "istio_tcp_connections_failed_total{{{}}} 1",
            LABELS.replace("response_flags=\"-\"", "response_flags=\"UF\"")
        ),
    ] {
        assert!(lines.contains(&expected.as_str()), "{expected}\nnot in\n{text}");
    }
    assert!(text
        .contains("istio_tcp_connections_failed_total{reporter=\"destination\",source_workload=\"unknown\""));
    assert!(text.contains("connection_security_policy=\"none\",response_flags=\"DENY\"} 1"));
    assert!(text.contains("# TYPE istio_tcp_connections_opened_total counter"));
}

#[test]
fn openmetrics_exposition() {
    let text = populated().encode_openmetrics();
    assert!(text.contains("# TYPE istio_tcp_connections_opened counter"));
    assert!(samples(&text).contains(&format!("istio_tcp_connections_opened_total{{{LABELS}}} 2").as_str()));
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn series_appear_on_first_use() {
    let m = Metrics::new();
    let c = m.tcp(&labels());
    // Only the gauge of the kernel's flow map is there from the start.
    assert_eq!(samples(&m.encode()), ["mesh_kernel_flow_keys 0"]);
    c.opened();
    c.sent(0);
    let text = m.encode();
    assert_eq!(samples(&text).len(), 2, "{text}");
    assert!(!text.contains("istio_tcp_connections_failed_total{"));
}

#[test]
fn handles_with_the_same_labels_share_series() {
    let m = Metrics::new();
    m.tcp(&labels()).opened();
    m.tcp(&labels()).opened();
    let text = m.encode();
    assert!(samples(&text).contains(&format!("istio_tcp_connections_opened_total{{{LABELS}}} 2").as_str()));
}

#[test]
fn mesh_internals() {
    let m = populated();
    let text = m.encode();
    let lines = samples(&text);
    for expected in [
        "mesh_policy_decisions_total{verdict=\"allow\"} 1",
        "mesh_policy_decisions_total{verdict=\"deny\"} 2",
        "mesh_tls_handshakes_total{side=\"client\",result=\"ok\"} 1",
        "mesh_tls_handshakes_total{side=\"server\",result=\"error\"} 1",
        "mesh_svid_expiry_timestamp_seconds{identity=\"spiffe://cluster.local/ns/default/sa/sleep\"} 1900000000",
        "mesh_bpf_map_fill_ratio{map=\"MESH_ORIG_BY_TUPLE\"} 0.25",
        "mesh_datapath_total{counter=\"captured_v4\"} 42",
        "mesh_datapath_total{counter=\"bypass_dropped\"} 3",
    ] {
        assert!(lines.contains(&expected), "{expected}\nnot in\n{text}");
    }
    m.remove_svid("spiffe://cluster.local/ns/default/sa/sleep");
    assert!(!m.encode().contains("mesh_svid_expiry_timestamp_seconds{"));
}

#[test]
fn kernel_counters_are_set_not_added() {
    let m = Metrics::new();
    m.set_kernel_counter("captured_v4", 10);
    m.set_kernel_counter("captured_v4", 10);
    m.set_kernel_counter("captured_v4", 15);
    let text = m.encode();
    assert!(
        samples(&text).contains(&"mesh_datapath_total{counter=\"captured_v4\"} 15"),
        "{text}"
    );
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new();
    m.tcp(&TcpLabels {
        destination_service: "a\"b\\c\nd".into(),
        ..labels()
    })
    .opened();
    assert!(m.encode().contains(r#"destination_service="a\"b\\c\nd""#));
}

/// `promtool check metrics` on the exposition, or a printed skip without promtool.
#[test]
fn promtool_accepts_the_exposition() {
    if let Err(e) = promtool_check(&populated().encode()) {
        panic!("{e}");
    }
}

/// Runs `promtool check metrics` on `text`; without promtool, prints a skip and passes.
pub(crate) fn promtool_check(text: &str) -> Result<(), String> {
    let Some(promtool) = promtool() else {
        println!("skipped the promtool check: promtool not installed (Debian package `prometheus`)");
        return Ok(());
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool: {e}"))?;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
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

fn promtool() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join("promtool"))
        .find(|p| p.is_file())
}
