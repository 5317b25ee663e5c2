//! Running the operator surfaces in the daemon: binding them before the kernel is touched
//! (a port in use fails the start-up), serving them until the daemon has drained, and the
//! upkeep that keeps readiness and the periodic metrics in step with the kernel.
use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{daemon::DaemonAdmin, grpc::AdminSocket, http, AdminError, AdminSource as _, LogControl};
use crate::{
    config::Config,
    ebpf::{flows::FlowLedger, Maps},
    metrics::Metrics,
};

/// The four listeners, bound.
pub struct Surfaces {
    admin: TcpListener,
    metrics: TcpListener,
    health: TcpListener,
    socket: AdminSocket,
}

impl Surfaces {
    pub fn bind(config: &Config) -> Result<Surfaces, AdminError> {
        Ok(Surfaces {
            admin: crate::proxy::bind(config.admin_addr())?,
            metrics: crate::proxy::bind(config.metrics_addr())?,
            health: crate::proxy::bind(config.health_addr())?,
            socket: AdminSocket::bind(&config.admin_socket())?,
        })
    }

    /// Serves until `stop` is cancelled; the returned set ends with the servers.
    pub fn serve(
        self,
        source: Arc<DaemonAdmin>,
        metrics: Arc<Metrics>,
        log: LogControl,
        stop: CancellationToken,
    ) -> JoinSet<()> {
        let mut servers = JoinSet::new();
        servers.spawn(http::serve_admin(self.admin, source.clone(), log, stop.clone()));
        servers.spawn(http::serve_metrics(self.metrics, metrics, stop.clone()));
        servers.spawn(http::serve_health(self.health, source.clone(), stop.clone()));
        servers.spawn(async move {
            if let Err(e) = self.socket.serve(source, stop).await {
                warn!(error = %e, "admin api stopped");
            }
        });
        servers
    }
}

/// The kernel's per-flow counters into `mesh_kernel_flow_*`, harvesting idle and
/// un-enrolled flows out of the map (see `ebpf::flows`).
fn export_flows(maps: &mut Maps, ledger: &mut FlowLedger, admin: &DaemonAdmin, metrics: &Metrics) {
    let state = admin.state();
    let live = maps.flows();
    let round = ledger.round(&state, &live);
    for (labels, totals) in &round.totals {
        metrics.set_kernel_flow(labels, totals);
    }
    let mut deleted = Vec::new();
    if !round.harvest.is_empty() {
        deleted = maps.harvest_flows(&round.harvest);
        ledger.harvested(&state, &deleted);
    }
    metrics.set_kernel_flow_keys(live.len() - deleted.len());
}

/// How often readiness and the kernel's counters are looked at.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Map fill is counted by walking the maps' keys: less often.
const MAP_FILL_EVERY: u32 = 5;

/// Until `stop`: checks that the programs are still attached (their link pins exist) and
/// logs every change of readiness; copies the kernel's absolute counters, the SVIDs'
/// expiry and the maps' fill into the metrics.
///
/// Kernel counters are copied as the kernel's running totals, never added: reading them
/// twice, or a restarted daemon reading maps it adopted, cannot count anything twice.
pub async fn upkeep(
    pin_dir: PathBuf,
    maps: Arc<Mutex<Maps>>,
    metrics: Arc<Metrics>,
    admin: Arc<DaemonAdmin>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    let mut last_reasons: Option<Vec<&'static str>> = None;
    let mut identities = BTreeSet::new();
    let mut round = 0u32;
    let mut flows = FlowLedger::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        admin.export_certificates(&metrics, &mut identities);
        {
            let mut maps = maps.lock().expect("maps lock poisoned");
            export_flows(&mut maps, &mut flows, &admin, &metrics);
            match maps.counters() {
                Ok(counters) => counters
                    .iter()
                    .for_each(|(name, v)| metrics.set_kernel_counter(name, *v)),
                Err(e) => warn!(error = %e, "reading kernel counters failed"),
            }
            if round.is_multiple_of(MAP_FILL_EVERY) {
                for (map, ratio) in maps.fill() {
                    metrics.set_bpf_map_fill(map, ratio);
                }
            }
        }
        round = round.wrapping_add(1);
        // Logged after the metrics are copied: once "readiness: ready" is in the log, the
        // metrics show the kernel's counters too.
        admin.set_programs_attached(crate::ebpf::attached_at(&pin_dir));
        let reasons = admin.ready().not_ready_reasons();
        if last_reasons.as_ref() != Some(&reasons) {
            if reasons.is_empty() {
                info!("readiness: ready");
            } else {
                warn!(reasons = %reasons.join(", "), "readiness: not ready");
            }
            last_reasons = Some(reasons);
        }
    }
}
