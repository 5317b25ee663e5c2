//! Wiring of a running daemon: state, datapath, listeners, signals and drain.
use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use tokio::{signal::unix::SignalKind, sync::watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    config::Config,
    ebpf::Datapath,
    proxy::{outbound::Outbound, ProxyInputs},
    state::MeshState,
};

/// Loads and checks the config file; any error rejects it whole.
pub fn load_state(path: &Path) -> anyhow::Result<(Config, MeshState)> {
    let config = Config::load(path)?;
    let state = MeshState::build(&config)?;
    Ok((config, state))
}

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let (config, state) = load_state(config_path)?;
    info!(config = %serde_json::to_string(&config).unwrap_or_default(), "config loaded");
    let state = Arc::new(state);

    // Bind before touching the kernel: a port conflict must not half-install anything.
    let outbound = Outbound::new(&state.capture)?;
    let datapath = Datapath::install(&config.pin_dir(), &state.attach_cgroup, state.socket_map)?;
    datapath
        .maps
        .lock()
        .expect("maps lock poisoned")
        .sync(&state)
        .context("writing the state into the BPF maps")?;
    let (state_tx, state_rx) = watch::channel(state.clone());
    let inputs = Arc::new(ProxyInputs {
        state: state_rx,
        maps: datapath.maps.clone(),
        connect_timeout: config.connect_timeout(),
    });

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let listeners = tokio::spawn(outbound.run(inputs, stop.clone(), tasks.clone()));
    info!(
        node = %state.node,
        workloads = state.workloads.len(),
        local = state.local_cgroups().count(),
        "mesh-node ready"
    );

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = int.recv() => info!("SIGINT: draining"),
    }
    // Stop accepting: from here on, captured connects are refused by the kernel (nothing
    // listens), never sent around the mesh.
    stop.cancel();
    let _ = listeners.await;
    tasks.close();
    let drain = config.drain_timeout();
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        warn!(
            remaining = tasks.len(),
            ?drain,
            "drain deadline passed, closing live connections"
        );
    }
    drop(state_tx);
    info!("mesh-node stopped");
    Ok(())
}
