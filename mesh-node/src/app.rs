//! Wiring of a running daemon: state, datapath, listeners, signals and drain.
use std::{collections::BTreeSet, net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context as _;
use tokio::{signal::unix::SignalKind, sync::watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    ca as mesh_ca,
    config::{Config, DEFAULT_METRICS_PORT},
    ebpf::Datapath,
    hbone::{
        client::Pool,
        server::{Inbound, InboundInputs},
    },
    identity::{
        self,
        ca::{self, CaRoot},
        tls::SharedBundle,
        Identity, TrustBundle,
    },
    proxy::{outbound::Outbound, ProxyInputs},
    secrets::{Issuer, SecretManager},
    state::MeshState,
};

/// Loads and checks the config file; any error rejects it whole.
pub fn load_state(path: &Path) -> anyhow::Result<(Config, MeshState)> {
    let config = Config::load(path)?;
    let state = MeshState::build(&config)?;
    Ok((config, state))
}

/// The identities of this node's workloads: the SVIDs the node must hold.
fn local_identities(state: &MeshState) -> anyhow::Result<BTreeSet<Identity>> {
    state
        .workloads
        .iter()
        .filter(|w| w.node == state.node)
        .map(|w| {
            w.identity(&state.trust_domain)
                .with_context(|| format!("identity of workload {}/{}", w.namespace, w.name))
        })
        .collect()
}

/// The in-process CA: its root is loaded from `dir`, or created there on first start.
fn in_process_ca(dir: &Path, trust_domain: &str) -> anyhow::Result<CaRoot> {
    let root = if dir.join(ca::ROOT_KEY_FILE).exists() {
        CaRoot::load(dir)?
    } else {
        info!(dir = %dir.display(), "no mesh CA root yet: creating one (in-process CA)");
        CaRoot::init(dir, trust_domain)?
    };
    anyhow::ensure!(
        root.trust_domain() == trust_domain,
        "the CA root in {} is for trust domain {:?}, the config says {:?}",
        dir.display(),
        root.trust_domain(),
        trust_domain
    );
    Ok(root)
}

/// The CA that signs this node's CSRs, and the trust bundle to start with.
async fn issuer(config: &Config, trust_domain: &str) -> anyhow::Result<(Issuer, SharedBundle)> {
    match &config.identity.ca {
        None => {
            let root = in_process_ca(&config.ca_dir(), trust_domain)?;
            let bundle = identity::shared_bundle(TrustBundle::new(vec![root.cert_der()]));
            Ok((Issuer::InProcess(Box::new(root)), bundle))
        }
        Some(remote) => {
            let dir = &remote.credential_dir;
            let root = dir.join(mesh_ca::ROOT_CERT_FILE);
            let client = mesh_ca::CaClient::connect(
                &remote.address,
                &dir.join(mesh_ca::NODE_CERT_FILE),
                &dir.join(mesh_ca::NODE_KEY_FILE),
                &root,
            )
            .await?;
            let roots = client.roots().await?;
            let bundle = identity::shared_bundle(TrustBundle::new(roots));
            info!(ca = %remote.address, "using the remote mesh CA");
            Ok((Issuer::Remote(Box::new(client)), bundle))
        }
    }
}

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let (config, state) = load_state(config_path)?;
    info!(config = %serde_json::to_string(&config).unwrap_or_default(), "config loaded");
    let state = Arc::new(state);

    // Bind before touching the kernel: a port conflict must not half-install anything.
    let outbound = Outbound::new(&state.capture)?;
    let hbone_addrs: Vec<SocketAddr> = state.nodes[&state.node]
        .iter()
        .map(|ip| SocketAddr::new(*ip, config.hbone_port()))
        .collect();
    let inbound = Inbound::new(&hbone_addrs)?;
    let metrics_listener = crate::proxy::bind(SocketAddr::from(([0, 0, 0, 0], DEFAULT_METRICS_PORT)))?;
    let metrics = crate::metrics::Metrics::new();

    let (issuer, bundle) = issuer(&config, &state.trust_domain).await?;
    let secrets = SecretManager::new(issuer, bundle.clone(), config.svid_ttl());
    secrets.sync(&local_identities(&state)?).await?;
    let server_tls =
        identity::tls::server_config(secrets.clone(), bundle.clone(), state.trust_domain.clone())?;

    let datapath = Datapath::install(&config.pin_dir(), &state.attach_cgroup, state.socket_map)?;
    datapath
        .maps
        .lock()
        .expect("maps lock poisoned")
        .sync(&state)
        .context("writing the state into the BPF maps")?;
    let (state_tx, state_rx) = watch::channel(state.clone());
    let inputs = Arc::new(ProxyInputs {
        state: state_rx.clone(),
        maps: datapath.maps.clone(),
        connect_timeout: config.connect_timeout(),
        trust_domain: state.trust_domain.clone(),
        secrets: secrets.clone(),
        pool: Pool::new(
            bundle.clone(),
            state.trust_domain.clone(),
            config.hbone.reuse_connections,
        ),
        hbone_port: config.hbone_port(),
        metrics: metrics.clone(),
        splice: state.splice,
    });
    let inbound_inputs = Arc::new(InboundInputs {
        state: state_rx,
        tls: server_tls,
        connect_timeout: config.connect_timeout(),
        metrics: metrics.clone(),
    });

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    // Serving metrics outlives the drain, so it gets a token of its own.
    let stop_serving = CancellationToken::new();
    let metrics_server = tokio::spawn(crate::admin::http::serve_metrics(
        metrics_listener,
        metrics.clone(),
        stop_serving.clone(),
    ));
    let kernel_counters = tokio::spawn(export_kernel_counters(
        datapath.maps.clone(),
        metrics,
        stop.clone(),
    ));
    let listeners = tokio::spawn(outbound.run(inputs, stop.clone(), tasks.clone()));
    let hbone = tokio::spawn(inbound.run(inbound_inputs, stop.clone(), tasks.clone()));
    let renewals = tokio::spawn(secrets.clone().run(stop.clone()));
    let reloader = tokio::spawn(watch_config(
        config_path.to_path_buf(),
        config.clone(),
        state_tx,
        datapath.maps.clone(),
        secrets.clone(),
        stop.clone(),
    ));
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
    let _ = tokio::join!(listeners, hbone, renewals, reloader, kernel_counters);
    tasks.close();
    let drain = config.drain_timeout();
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        warn!(
            remaining = tasks.len(),
            ?drain,
            "drain deadline passed, closing live connections"
        );
    }
    stop_serving.cancel();
    let _ = metrics_server.await;
    info!("mesh-node stopped");
    Ok(())
}

/// How often the config file is checked for changes.
const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Fields that shape listeners, pins and the attach point: changing them needs a restart.
fn restart_needed(old: &Config, new: &Config) -> Option<&'static str> {
    fn differ<T: serde::Serialize>(a: &T, b: &T) -> bool {
        serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
    }
    [
        ("node", differ(&old.node, &new.node)),
        ("trustDomain", differ(&old.trust_domain, &new.trust_domain)),
        ("capture", differ(&old.capture, &new.capture)),
        ("bpf", differ(&old.bpf, &new.bpf)),
        ("identity", differ(&old.identity, &new.identity)),
        ("hbone", differ(&old.hbone, &new.hbone)),
        ("nodes", differ(&old.nodes, &new.nodes)),
    ]
    .into_iter()
    .find_map(|(field, changed)| changed.then_some(field))
}

/// Hot reload: a valid change of the config file takes effect at once (workloads,
/// enrollment, exclusions, SVIDs, policies, inbound modes); live connections that the
/// new policy denies are closed by their own tasks. An invalid file is rejected whole
/// and the config in force stays.
async fn watch_config(
    path: std::path::PathBuf,
    mut current: Config,
    state_tx: watch::Sender<Arc<MeshState>>,
    maps: Arc<std::sync::Mutex<crate::ebpf::Maps>>,
    secrets: Arc<SecretManager>,
    stop: CancellationToken,
) {
    let mut last = std::fs::read(&path).ok();
    let mut tick = tokio::time::interval(RELOAD_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let text = std::fs::read(&path).ok();
        if text == last {
            continue;
        }
        last = text;
        let (config, state) = match apply_change(&path, &current, &secrets, &maps).await {
            Ok(applied) => applied,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "config change rejected, the config in force stays");
                continue;
            }
        };
        let _ = state_tx.send(Arc::new(state));
        current = config;
        info!(
            policies = current.policies.len(),
            workloads = current.workloads.len(),
            "config reloaded"
        );
    }
}

/// Checks a changed config file and applies it to SVIDs and the BPF maps; the caller
/// then publishes the new state.
async fn apply_change(
    path: &Path,
    current: &Config,
    secrets: &SecretManager,
    maps: &std::sync::Mutex<crate::ebpf::Maps>,
) -> anyhow::Result<(Config, MeshState)> {
    let (config, state) = load_state(path)?;
    if let Some(field) = restart_needed(current, &config) {
        anyhow::bail!("field `{field}` only changes with a restart of mesh-node");
    }
    // SVIDs for new workloads first, so they are never enrolled without one.
    secrets.sync(&local_identities(&state)?).await?;
    maps.lock()
        .expect("maps lock poisoned")
        .sync(&state)
        .context("writing the new config into the BPF maps")?;
    Ok((config, state))
}

/// Copies the kernel's absolute counters into the metrics every few seconds (absolute
/// values: a restart never double counts, the pinned maps keep the totals).
async fn export_kernel_counters(
    maps: Arc<std::sync::Mutex<crate::ebpf::Maps>>,
    metrics: Arc<crate::metrics::Metrics>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let counters = maps.lock().expect("maps lock poisoned").counters();
        match counters {
            Ok(counters) => counters
                .iter()
                .for_each(|(name, v)| metrics.set_kernel_counter(name, *v)),
            Err(e) => warn!(error = %e, "reading kernel counters failed"),
        }
    }
}
