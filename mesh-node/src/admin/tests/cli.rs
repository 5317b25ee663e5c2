//! What the CLI prints.
use super::*;
use crate::admin::cli::{
    flow_line, render_certificates, render_connections, render_status, render_workloads, OutputFormat,
};

#[test]
fn status_table_and_json() {
    let source = FakeSource::new();
    let text = render_status(&source.status(), OutputFormat::Table);
    assert_eq!(
        text,
        "node:        node-a\n\
         version:     0.1.0\n\
         uptime:      1h2m\n\
         ready:       yes\n\
         workloads:   2 (1 on this node)\n\
         connections: 1\n"
    );
    *source.readiness.lock().unwrap() = Readiness {
        draining: true,
        ..READY
    };
    assert!(render_status(&source.status(), OutputFormat::Table).contains("ready:       no (draining)\n"));
    let json = render_status(&source.status(), OutputFormat::Json);
    assert_eq!(json.lines().count(), 1);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["readiness"]["ready"], false);
    assert_eq!(value["uptimeSeconds"], 3725);
}

#[test]
fn workloads_table_is_aligned() {
    let text = render_workloads(&workloads(), OutputFormat::Table);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0]
        .starts_with("NAMESPACE  NAME     NODE    IPS               LOCAL  CGROUP  INBOUND     IDENTITY"));
    assert!(lines[1]
        .starts_with("default    sleep    node-a  10.0.0.1,fd00::1  yes    4242    strict      spiffe://"));
    assert!(lines[2]
        .starts_with("web        httpbin  node-b  10.0.1.7          no     -       permissive  spiffe://"));
    // Every column starts at the same offset on every line.
    let col = lines[0].find("IDENTITY").unwrap();
    assert!(lines.iter().skip(1).all(|l| l[col..].starts_with("spiffe://")));
    assert!(lines.iter().all(|l| l == &l.trim_end()));

    let json = render_workloads(&workloads(), OutputFormat::Json);
    let objects: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(objects.len(), 2);
    assert_eq!(objects[1]["name"], "httpbin");
}

#[test]
fn connections_and_certificates() {
    let now_ms = connections()[0].started_unix_ms + 90_000;
    let text = render_connections(&connections(), OutputFormat::Table, now_ms);
    let row = text.lines().nth(1).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..7],
        [
            "17",
            "outbound",
            "default/sleep",
            "web/httpbin",
            "1m30s",
            "1200",
            "34"
        ]
    );

    let text = render_certificates(&certificates(), OutputFormat::Table, 1_714_564_800 + 3600);
    let row = text.lines().nth(1).unwrap();
    assert!(
        row.contains("2024-05-01T12:00:00Z  2024-05-02T12:00:00Z  23h0m"),
        "{row}"
    );
    let text = render_certificates(&certificates(), OutputFormat::Table, 1_800_000_000);
    assert!(text.lines().nth(1).unwrap().ends_with("expired"));
}

#[test]
fn flow_lines() {
    assert_eq!(
        flow_line(&flow(FlowKind::Open, "sleep", "web/httpbin")),
        "2024-05-01T12:00:00.123Z  OPEN   outbound  sleep (spiffe://cluster.local/ns/default/sa/sleep) -> web/httpbin\n"
    );
    let close = flow_line(&flow(FlowKind::Close, "sleep", "10.0.1.7:80"));
    assert!(
        close.ends_with("-> 10.0.1.7:80  sent=10 received=20 duration=30ms\n"),
        "{close}"
    );
    let deny = flow_line(&flow(FlowKind::Deny, "sleep", "x"));
    assert!(deny.contains("  DENY   outbound  "), "{deny}");
    assert!(deny.ends_with("  reason: policy deny-all\n"), "{deny}");
}

/// What main.rs embeds: the commands at the top level of `mesh-node`.
#[test]
fn command_line() {
    use clap::{CommandFactory as _, Parser as _};

    use crate::admin::cli::AdminCommand;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }
    #[derive(clap::Subcommand)]
    enum Command {
        Run,
        #[command(flatten)]
        Admin(AdminCommand),
    }
    Cli::command().debug_assert();

    let parse = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
        Command::Admin(c) => c,
        Command::Run => panic!("not an admin command"),
    };
    let AdminCommand::Flows(flows) = parse(&[
        "mesh-node",
        "flows",
        "--follow",
        "--kind",
        "deny",
        "--source",
        "sleep",
        "-o",
        "json",
        "--socket",
        "/tmp/a.sock",
    ]) else {
        panic!("not flows")
    };
    assert_eq!(flows.client.output, OutputFormat::Json);
    assert_eq!(flows.client.socket, std::path::Path::new("/tmp/a.sock"));
    assert_eq!(
        flows.filter(),
        FlowFilter {
            source: Some("sleep".into()),
            destination: None,
            kind: Some(FlowKind::Deny),
        }
    );
    let AdminCommand::Status(status) = parse(&["mesh-node", "status"]) else {
        panic!("not status")
    };
    if std::env::var_os("MESH_ADMIN_SOCKET").is_none() {
        assert_eq!(status.socket, std::path::Path::new(DEFAULT_SOCKET));
    }
    assert_eq!(status.output, OutputFormat::Table);
    assert!(matches!(
        parse(&["mesh-node", "workloads", "-o", "text"]),
        AdminCommand::Workloads(a) if a.output == OutputFormat::Table
    ));
    assert!(matches!(
        parse(&["mesh-node", "connections"]),
        AdminCommand::Connections(_)
    ));
    assert!(matches!(
        parse(&["mesh-node", "certificates"]),
        AdminCommand::Certificates(_)
    ));
}
