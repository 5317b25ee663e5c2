//! Conversions between the admin types and their protobuf messages: the daemon encodes,
//! the CLI decodes (and refuses what it cannot understand).
use super::{
    proto, CertificateInfo, ConnectionInfo, Direction, FlowEvent, FlowFilter, FlowKind, Readiness,
    StatusInfo, WorkloadInfo,
};

impl From<Direction> for proto::Direction {
    fn from(d: Direction) -> proto::Direction {
        match d {
            Direction::Outbound => proto::Direction::Outbound,
            Direction::Inbound => proto::Direction::Inbound,
        }
    }
}

fn direction(value: i32) -> Result<Direction, String> {
    match proto::Direction::try_from(value) {
        Ok(proto::Direction::Outbound) => Ok(Direction::Outbound),
        Ok(proto::Direction::Inbound) => Ok(Direction::Inbound),
        _ => Err(format!("unknown direction {value}")),
    }
}

impl From<FlowKind> for proto::FlowKind {
    fn from(k: FlowKind) -> proto::FlowKind {
        match k {
            FlowKind::Open => proto::FlowKind::Open,
            FlowKind::Close => proto::FlowKind::Close,
            FlowKind::Deny => proto::FlowKind::Deny,
        }
    }
}

fn flow_kind(value: i32) -> Result<Option<FlowKind>, String> {
    match proto::FlowKind::try_from(value) {
        Ok(proto::FlowKind::Unspecified) => Ok(None),
        Ok(proto::FlowKind::Open) => Ok(Some(FlowKind::Open)),
        Ok(proto::FlowKind::Close) => Ok(Some(FlowKind::Close)),
        Ok(proto::FlowKind::Deny) => Ok(Some(FlowKind::Deny)),
        Err(_) => Err(format!("unknown flow kind {value}")),
    }
}

impl From<&Readiness> for proto::Readiness {
    fn from(r: &Readiness) -> proto::Readiness {
        proto::Readiness {
            programs_attached: r.programs_attached,
            state_loaded: r.state_loaded,
            certificates_present: r.certificates_present,
            draining: r.draining,
        }
    }
}

impl From<&StatusInfo> for proto::StatusResponse {
    fn from(s: &StatusInfo) -> proto::StatusResponse {
        proto::StatusResponse {
            node: s.node.clone(),
            version: s.version.clone(),
            uptime_seconds: s.uptime_seconds,
            workloads: s.workloads,
            local_workloads: s.local_workloads,
            connections: s.connections,
            readiness: Some((&s.readiness).into()),
        }
    }
}

impl From<proto::StatusResponse> for StatusInfo {
    fn from(s: proto::StatusResponse) -> StatusInfo {
        let r = s.readiness.unwrap_or_default();
        StatusInfo {
            node: s.node,
            version: s.version,
            uptime_seconds: s.uptime_seconds,
            workloads: s.workloads,
            local_workloads: s.local_workloads,
            connections: s.connections,
            readiness: Readiness {
                programs_attached: r.programs_attached,
                state_loaded: r.state_loaded,
                certificates_present: r.certificates_present,
                draining: r.draining,
            },
        }
    }
}

impl From<&WorkloadInfo> for proto::Workload {
    fn from(w: &WorkloadInfo) -> proto::Workload {
        proto::Workload {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            identity: w.identity.clone(),
            node: w.node.clone(),
            ips: w.ips.iter().map(ToString::to_string).collect(),
            local: w.local,
            cgroup_id: w.cgroup_id,
            inbound_mode: w.inbound_mode.clone(),
        }
    }
}

impl TryFrom<proto::Workload> for WorkloadInfo {
    type Error = String;

    fn try_from(w: proto::Workload) -> Result<WorkloadInfo, String> {
        Ok(WorkloadInfo {
            ips: w
                .ips
                .iter()
                .map(|ip| {
                    ip.parse()
                        .map_err(|_| format!("workload {}: bad ip {ip:?}", w.name))
                })
                .collect::<Result<_, _>>()?,
            name: w.name,
            namespace: w.namespace,
            identity: w.identity,
            node: w.node,
            local: w.local,
            cgroup_id: w.cgroup_id,
            inbound_mode: w.inbound_mode,
        })
    }
}

impl From<&ConnectionInfo> for proto::Connection {
    fn from(c: &ConnectionInfo) -> proto::Connection {
        proto::Connection {
            id: c.id,
            direction: proto::Direction::from(c.direction).into(),
            source: c.source.clone(),
            destination: c.destination.clone(),
            source_principal: c.source_principal.clone(),
            destination_principal: c.destination_principal.clone(),
            started_unix_ms: c.started_unix_ms,
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
        }
    }
}

impl TryFrom<proto::Connection> for ConnectionInfo {
    type Error = String;

    fn try_from(c: proto::Connection) -> Result<ConnectionInfo, String> {
        Ok(ConnectionInfo {
            id: c.id,
            direction: direction(c.direction)?,
            source: c.source,
            destination: c.destination,
            source_principal: c.source_principal,
            destination_principal: c.destination_principal,
            started_unix_ms: c.started_unix_ms,
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
        })
    }
}

impl From<&CertificateInfo> for proto::Certificate {
    fn from(c: &CertificateInfo) -> proto::Certificate {
        proto::Certificate {
            identity: c.identity.clone(),
            serial: c.serial.clone(),
            not_before_unix: c.not_before,
            not_after_unix: c.not_after,
        }
    }
}

impl From<proto::Certificate> for CertificateInfo {
    fn from(c: proto::Certificate) -> CertificateInfo {
        CertificateInfo {
            identity: c.identity,
            serial: c.serial,
            not_before: c.not_before_unix,
            not_after: c.not_after_unix,
        }
    }
}

impl From<&FlowEvent> for proto::FlowEvent {
    fn from(e: &FlowEvent) -> proto::FlowEvent {
        proto::FlowEvent {
            time_unix_ms: e.time_unix_ms,
            kind: proto::FlowKind::from(e.kind).into(),
            direction: proto::Direction::from(e.direction).into(),
            source: e.source.clone(),
            destination: e.destination.clone(),
            source_principal: e.source_principal.clone(),
            destination_principal: e.destination_principal.clone(),
            bytes_sent: e.bytes_sent,
            bytes_received: e.bytes_received,
            duration_ms: e.duration_ms,
            reason: e.reason.clone(),
        }
    }
}

impl TryFrom<proto::FlowEvent> for FlowEvent {
    type Error = String;

    fn try_from(e: proto::FlowEvent) -> Result<FlowEvent, String> {
        Ok(FlowEvent {
            time_unix_ms: e.time_unix_ms,
            kind: flow_kind(e.kind)?.ok_or("flow event without a kind")?,
            direction: direction(e.direction)?,
            source: e.source,
            destination: e.destination,
            source_principal: e.source_principal,
            destination_principal: e.destination_principal,
            bytes_sent: e.bytes_sent,
            bytes_received: e.bytes_received,
            duration_ms: e.duration_ms,
            reason: e.reason,
        })
    }
}

impl From<&FlowFilter> for proto::FlowsRequest {
    fn from(f: &FlowFilter) -> proto::FlowsRequest {
        proto::FlowsRequest {
            source: f.source.clone().unwrap_or_default(),
            destination: f.destination.clone().unwrap_or_default(),
            kind: f.kind.map_or(proto::FlowKind::Unspecified, Into::into).into(),
        }
    }
}

impl TryFrom<&proto::FlowsRequest> for FlowFilter {
    type Error = String;

    fn try_from(r: &proto::FlowsRequest) -> Result<FlowFilter, String> {
        let non_empty = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        Ok(FlowFilter {
            source: non_empty(&r.source),
            destination: non_empty(&r.destination),
            kind: flow_kind(r.kind)?,
        })
    }
}
