//! Connections the kernel refused (`MESH_FLOW_EV` ring buffer) as `deny` flow events:
//! the daemon never sees these connects, so without this `mesh-node flows` would miss
//! the policy fast path's denials and STRICT mode's dropped bypass attempts.
use std::{net::SocketAddr, sync::Arc};

use aya::maps::{MapData, RingBuf};
use mesh_common::{KernelEvent, DENY_POLICY, DENY_STRICT_BYPASS, DENY_UNCAPTURABLE, FLOW_INBOUND};
use tokio::{io::unix::AsyncFd, sync::watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::maps::key_ip;
use crate::{
    admin::{Direction, FlowEvent, FlowKind},
    proxy::connections::Connections,
    state::{CgroupId, MeshState},
};

/// Until `stop`: publishes every kernel event as it arrives.
pub async fn forward(
    ring: RingBuf<MapData>,
    state: watch::Receiver<Arc<MeshState>>,
    connections: Arc<Connections>,
    stop: CancellationToken,
) {
    // SAFETY: the ring buffer owns its map fd, which stays open (and the same) until the
    // AsyncFd drops it.
    let registered = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut ring = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "cannot poll the kernel's flow events: kernel denials are not shown by `flows`");
            return;
        }
    };
    loop {
        let mut guard = tokio::select! {
            _ = stop.cancelled() => return,
            g = ring.readable_mut() => match g {
                Ok(g) => g,
                Err(e) => {
                    warn!(error = %e, "polling the kernel's flow events failed");
                    return;
                }
            },
        };
        let state = state.borrow().clone();
        while let Some(item) = guard.get_inner_mut().next() {
            match decode(&item) {
                Some(event) => connections.publish(flow_event(&state, &event)),
                None => warn!(len = item.len(), "kernel flow event of an unknown size: skipped"),
            }
        }
        guard.clear_ready();
    }
}

fn decode(bytes: &[u8]) -> Option<KernelEvent> {
    if bytes.len() != size_of::<KernelEvent>() {
        return None;
    }
    // SAFETY: KernelEvent is plain repr(C) data for which any bit pattern is valid, and
    // the length was checked; read_unaligned needs no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<KernelEvent>()) })
}

fn flow_event(state: &MeshState, e: &KernelEvent) -> FlowEvent {
    let key = &e.key;
    let workload = state
        .workload_by_cgroup(CgroupId(key.cgroup_id))
        .map(|(_, w)| format!("{}/{}", w.namespace, w.name))
        .unwrap_or_else(|| format!("cgroup:{}", key.cgroup_id));
    let ip = key_ip(key.family, key.addr);
    let peer = ip
        .and_then(|ip| state.workload_by_ip(ip))
        .map(|(_, w)| format!("{}/{}", w.namespace, w.name));
    let reason = match e.reason {
        DENY_POLICY => "denied in the kernel by the policy fast path",
        DENY_UNCAPTURABLE => "refused in the kernel: the connect could not be captured (fail closed)",
        DENY_STRICT_BYPASS => "dropped in the kernel: STRICT workload, connection from outside the mesh",
        _ => "refused in the kernel",
    };
    let (direction, source, destination) = if key.direction == FLOW_INBOUND {
        let from = ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        (Direction::Inbound, peer.unwrap_or(from), workload)
    } else {
        let to = ip.map_or_else(
            || "unknown".to_owned(),
            |ip| SocketAddr::new(ip, key.port).to_string(),
        );
        (Direction::Outbound, workload, peer.unwrap_or(to))
    };
    FlowEvent {
        time_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        kind: FlowKind::Deny,
        direction,
        source,
        destination,
        source_principal: None,
        destination_principal: None,
        bytes_sent: 0,
        bytes_received: 0,
        duration_ms: 0,
        reason: Some(format!("{reason} (port {})", key.port)),
    }
}
