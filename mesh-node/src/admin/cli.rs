//! The client side of the admin API: `mesh-node status | workloads | connections |
//! certificates | flows`, which ask the daemon on this node over its Unix socket and print
//! aligned tables, or one JSON object per line with `-o json`.
use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use super::{
    proto::{self, mesh_admin_client::MeshAdminClient},
    time::{rfc3339, rfc3339_ms},
    AdminError, CertificateInfo, ConnectionInfo, FlowEvent, FlowFilter, FlowKind, StatusInfo, WorkloadInfo,
    DEFAULT_SOCKET,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    #[value(alias = "text")]
    Table,
    /// One JSON object per line.
    Json,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    /// The daemon's admin socket.
    #[arg(long, env = "MESH_ADMIN_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Clone, Debug, clap::Args)]
pub struct FlowsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Follow live events until interrupted (always so: the daemon keeps no history).
    #[arg(short, long)]
    pub follow: bool,
    /// Only events whose source or source identity contains this.
    #[arg(long)]
    pub source: Option<String>,
    /// Only events whose destination or destination identity contains this.
    #[arg(long)]
    pub destination: Option<String>,
    /// Only events of this kind.
    #[arg(long, value_enum)]
    pub kind: Option<FlowKind>,
    /// Exit after this many events.
    #[arg(long)]
    pub max: Option<u64>,
}

impl FlowsArgs {
    pub fn filter(&self) -> FlowFilter {
        FlowFilter {
            source: self.source.clone(),
            destination: self.destination.clone(),
            kind: self.kind,
        }
    }
}

/// The operator commands, to embed in the `mesh-node` command line with
/// `#[command(flatten)]`.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Ask the daemon on this node for its node, version, uptime and readiness.
    Status(ClientArgs),
    /// The workloads the daemon knows (this node's and the others').
    Workloads(ClientArgs),
    /// The connections the daemon is carrying now.
    Connections(ClientArgs),
    /// The SVIDs the daemon holds.
    Certificates(ClientArgs),
    /// Live connection events (open, close, deny), like `hubble observe`.
    Flows(FlowsArgs),
}

/// Runs one operator command against the daemon's socket.
pub async fn run(command: AdminCommand) -> Result<(), AdminError> {
    match command {
        AdminCommand::Status(a) => status(&a.socket, a.output).await,
        AdminCommand::Workloads(a) => workloads(&a.socket, a.output).await,
        AdminCommand::Connections(a) => connections(&a.socket, a.output).await,
        AdminCommand::Certificates(a) => certificates(&a.socket, a.output).await,
        AdminCommand::Flows(a) => flows(&a.client.socket, a.client.output, &a.filter(), a.max).await,
    }
}

/// A client of the admin API on `socket`. Fails fast when nothing listens there.
pub async fn connect(socket: &Path) -> Result<MeshAdminClient<Channel>, AdminError> {
    let path = socket.to_owned();
    let channel = Endpoint::from_static("http://mesh-admin.invalid")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| AdminError::Connect {
            path: socket.display().to_string(),
            reason: innermost(&e),
        })?;
    Ok(MeshAdminClient::new(channel))
}

/// The root cause's message: tonic's own ("transport error") says nothing.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

pub async fn status(socket: &Path, format: OutputFormat) -> Result<(), AdminError> {
    emit(&render_status(&fetch_status(socket).await?, format))
}

pub async fn workloads(socket: &Path, format: OutputFormat) -> Result<(), AdminError> {
    emit(&render_workloads(&fetch_workloads(socket).await?, format))
}

pub async fn connections(socket: &Path, format: OutputFormat) -> Result<(), AdminError> {
    emit(&render_connections(
        &fetch_connections(socket).await?,
        format,
        now_ms(),
    ))
}

pub async fn certificates(socket: &Path, format: OutputFormat) -> Result<(), AdminError> {
    let now = (now_ms() / 1000) as i64;
    emit(&render_certificates(
        &fetch_certificates(socket).await?,
        format,
        now,
    ))
}

pub async fn fetch_status(socket: &Path) -> Result<StatusInfo, AdminError> {
    let response = connect(socket).await?.status(proto::StatusRequest {}).await?;
    Ok(response.into_inner().into())
}

pub async fn fetch_workloads(socket: &Path) -> Result<Vec<WorkloadInfo>, AdminError> {
    let response = connect(socket)
        .await?
        .workloads(proto::WorkloadsRequest {})
        .await?;
    let workloads = response.into_inner().workloads.into_iter();
    workloads
        .map(WorkloadInfo::try_from)
        .collect::<Result<_, _>>()
        .map_err(AdminError::BadResponse)
}

pub async fn fetch_connections(socket: &Path) -> Result<Vec<ConnectionInfo>, AdminError> {
    let response = connect(socket)
        .await?
        .connections(proto::ConnectionsRequest {})
        .await?;
    let connections = response.into_inner().connections.into_iter();
    connections
        .map(ConnectionInfo::try_from)
        .collect::<Result<_, _>>()
        .map_err(AdminError::BadResponse)
}

pub async fn fetch_certificates(socket: &Path) -> Result<Vec<CertificateInfo>, AdminError> {
    let response = connect(socket)
        .await?
        .certificates(proto::CertificatesRequest {})
        .await?;
    Ok(response
        .into_inner()
        .certificates
        .into_iter()
        .map(Into::into)
        .collect())
}

/// Prints the events that pass `filter` as they come, until ctrl-c, `max` events, or the
/// daemon ending the stream (it is stopping).
pub async fn flows(
    socket: &Path,
    format: OutputFormat,
    filter: &FlowFilter,
    max: Option<u64>,
) -> Result<(), AdminError> {
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    follow_flows(socket, format, filter, max, &mut std::io::stdout(), interrupted).await
}

/// [`flows`] into `out`, until `stop` completes.
pub async fn follow_flows(
    socket: &Path,
    format: OutputFormat,
    filter: &FlowFilter,
    max: Option<u64>,
    out: &mut impl Write,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AdminError> {
    let mut stream = connect(socket)
        .await?
        .flows(proto::FlowsRequest::from(filter))
        .await?
        .into_inner();
    // The daemon subscribes before it answers: every event from now on will be shown.
    eprintln!("following flows from {}", socket.display());
    tokio::pin!(stop);
    let mut shown = 0;
    while max.is_none_or(|max| shown < max) {
        let message = tokio::select! {
            _ = &mut stop => return Ok(()),
            message = stream.message() => message?,
        };
        let Some(message) = message else {
            eprintln!("the daemon ended the stream (is it stopping?)");
            return Ok(());
        };
        let event = FlowEvent::try_from(message).map_err(AdminError::BadResponse)?;
        // The daemon filters already; checking here too keeps an older daemon's answer right.
        if !filter.matches(&event) {
            continue;
        }
        let line = match format {
            OutputFormat::Json => json_line(&event),
            OutputFormat::Table => flow_line(&event),
        };
        match out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            result => result?,
        }
        shown += 1;
    }
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly.
fn emit(text: &str) -> Result<(), AdminError> {
    let mut out = std::io::stdout();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

fn json_line(value: &impl serde::Serialize) -> String {
    let mut line = serde_json::to_string(value).expect("admin types serialize");
    line.push('\n');
    line
}

fn json_lines<T: serde::Serialize>(items: &[T]) -> String {
    items.iter().map(json_line).collect()
}

/// Columns padded to their widest cell, two spaces apart.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (cell, width) in cells.zip(&widths) {
            out.push_str(&format!("{cell:<width$}  "));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// `3d4h`, `1h2m`, `5m3s`, `42s`.
fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

fn or_dash(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("-")
}

pub fn render_status(info: &StatusInfo, format: OutputFormat) -> String {
    if format == OutputFormat::Json {
        return json_line(info);
    }
    let reasons = info.readiness.not_ready_reasons();
    let ready = if reasons.is_empty() {
        "yes".to_owned()
    } else {
        format!("no ({})", reasons.join(", "))
    };
    let rows = [
        ("node", info.node.clone()),
        ("version", info.version.clone()),
        ("uptime", human_duration(info.uptime_seconds)),
        ("ready", ready),
        (
            "workloads",
            format!("{} ({} on this node)", info.workloads, info.local_workloads),
        ),
        ("connections", info.connections.to_string()),
    ];
    rows.iter()
        .map(|(k, v)| format!("{:<13}{v}\n", format!("{k}:")))
        .collect()
}

pub fn render_workloads(workloads: &[WorkloadInfo], format: OutputFormat) -> String {
    if format == OutputFormat::Json {
        return json_lines(workloads);
    }
    let rows: Vec<Vec<String>> = workloads
        .iter()
        .map(|w| {
            vec![
                w.namespace.clone(),
                w.name.clone(),
                w.node.clone(),
                w.ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                if w.local { "yes" } else { "no" }.into(),
                w.cgroup_id.map_or("-".into(), |c| c.to_string()),
                w.inbound_mode.clone(),
                w.identity.clone(),
            ]
        })
        .collect();
    table(
        &[
            "NAMESPACE",
            "NAME",
            "NODE",
            "IPS",
            "LOCAL",
            "CGROUP",
            "INBOUND",
            "IDENTITY",
        ],
        &rows,
    )
}

pub fn render_connections(connections: &[ConnectionInfo], format: OutputFormat, now_ms: u64) -> String {
    if format == OutputFormat::Json {
        return json_lines(connections);
    }
    let rows: Vec<Vec<String>> = connections
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.direction.as_str().into(),
                c.source.clone(),
                c.destination.clone(),
                human_duration(now_ms.saturating_sub(c.started_unix_ms) / 1000),
                c.bytes_sent.to_string(),
                c.bytes_received.to_string(),
                or_dash(&c.source_principal).into(),
                or_dash(&c.destination_principal).into(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "DIRECTION",
            "SOURCE",
            "DESTINATION",
            "AGE",
            "SENT",
            "RECEIVED",
            "SOURCE IDENTITY",
            "DESTINATION IDENTITY",
        ],
        &rows,
    )
}

pub fn render_certificates(certificates: &[CertificateInfo], format: OutputFormat, now: i64) -> String {
    if format == OutputFormat::Json {
        return json_lines(certificates);
    }
    let rows: Vec<Vec<String>> = certificates
        .iter()
        .map(|c| {
            let left = c.not_after - now;
            vec![
                c.identity.clone(),
                c.serial.clone(),
                rfc3339(c.not_before),
                rfc3339(c.not_after),
                if left > 0 {
                    human_duration(left as u64)
                } else {
                    "expired".into()
                },
            ]
        })
        .collect();
    table(
        &["IDENTITY", "SERIAL", "NOT BEFORE", "NOT AFTER", "EXPIRES IN"],
        &rows,
    )
}

/// `TIME KIND DIRECTION SOURCE (identity) -> DESTINATION (identity) bytes duration reason`.
pub fn flow_line(e: &FlowEvent) -> String {
    let who = |name: &str, principal: &Option<String>| match principal {
        Some(p) => format!("{name} ({p})"),
        None => name.to_owned(),
    };
    let mut line = format!(
        "{}  {:<5}  {:<8}  {} -> {}",
        rfc3339_ms(e.time_unix_ms),
        e.kind.as_str().to_ascii_uppercase(),
        e.direction.as_str(),
        who(&e.source, &e.source_principal),
        who(&e.destination, &e.destination_principal),
    );
    if e.kind == FlowKind::Close {
        line.push_str(&format!(
            "  sent={} received={} duration={}ms",
            e.bytes_sent, e.bytes_received, e.duration_ms
        ));
    }
    if let Some(reason) = &e.reason {
        line.push_str(&format!("  reason: {reason}"));
    }
    line.push('\n');
    line
}
