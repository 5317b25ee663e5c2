//! The CA service: accepts mutual-TLS connections from node daemons, and signs SVIDs for
//! the workloads the mesh config places on the calling node.
//!
//! Connections are accepted and their TLS handshakes run here (tonic's own TLS feature
//! would bring aws-lc); each finished handshake becomes a [`NodeStream`] whose connect
//! info, [`NodePeer`], tonic attaches to every request of that connection.
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::{Request, Response, Status};

use super::auth::{AuthError, MeshAuth};
use super::proto::mesh_ca_server::{MeshCa, MeshCaServer};
use super::proto::{GetRootsRequest, GetRootsResponse, SignNodeRequest, SignResponse, SignWorkloadRequest};
use super::serving::{node_of, ServingCerts, ServingError};
use super::{DEFAULT_MAX_SVID_TTL, DEFAULT_NODE_TTL, DEFAULT_SVID_TTL};
use crate::config::Config;
use crate::identity::{CaError, CaRoot, Identity, TrustBundle};

/// How long a caller has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CaServerError {
    #[error("cannot load the ca root from {dir}: {source}")]
    Root { dir: PathBuf, source: CaError },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(
        "the mesh config is for trust domain {config:?} but the ca root in {dir} is for {root:?}: \
         point the ca at this mesh's config or its root (--dir)"
    )]
    TrustDomain {
        dir: PathBuf,
        config: String,
        root: String,
    },
    #[error(transparent)]
    Serving(#[from] ServingError),
    #[error("cannot listen on {addr}: {source} (is another ca or process using the port?)")]
    Bind { addr: String, source: std::io::Error },
    #[error("ca listener failed: {0}")]
    Listener(std::io::Error),
    #[error("ca grpc server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// What the CA signs and how.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// SVID lifetime when the request asks for 0.
    pub default_ttl: Duration,
    /// Longest SVID lifetime; longer requests are cut to it.
    pub max_ttl: Duration,
    /// Longest node credential renewal (SignNode).
    pub max_node_ttl: Duration,
    /// Extra names of the serving certificate (DNS names or IPs), besides the address each
    /// client connected to: the names nodes use to reach the CA, e.g. a DNS name or a
    /// load balancer's address.
    pub sans: Vec<String>,
    /// Roots trusted besides the CA's own (e.g. the previous root during a rotation): node
    /// credentials may chain to them, and GetRoots returns them after the CA's root.
    pub extra_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            default_ttl: DEFAULT_SVID_TTL,
            max_ttl: DEFAULT_MAX_SVID_TTL,
            max_node_ttl: DEFAULT_NODE_TTL,
            sans: Vec::new(),
            extra_roots: Vec::new(),
        }
    }
}

/// The caller of a request, as proven by its node credential; a request extension of every
/// request the service handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePeer {
    pub node: String,
    pub remote: SocketAddr,
    /// The credential's notAfter: a connection may outlive it, its requests may not.
    pub not_after: SystemTime,
}

/// The CA service, ready to serve.
pub struct CaServer {
    service: Service,
    serving: ServingCerts,
}

impl CaServer {
    /// Loads the root from the CA directory `dir` (`mesh-node ca init`). `mesh` must be for
    /// the root's trust domain; replace its content to change who may get what.
    pub fn load(
        dir: &Path,
        mesh: Arc<RwLock<MeshAuth>>,
        options: ServerOptions,
    ) -> Result<CaServer, CaServerError> {
        let root = CaRoot::load(dir).map_err(|source| CaServerError::Root {
            dir: dir.to_owned(),
            source,
        })?;
        let config_td = mesh
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .trust_domain()
            .to_owned();
        if config_td != root.trust_domain() {
            return Err(CaServerError::TrustDomain {
                dir: dir.to_owned(),
                config: config_td,
                root: root.trust_domain().to_owned(),
            });
        }
        let mut bundle = TrustBundle::new(vec![root.cert_der()]);
        for extra in &options.extra_roots {
            bundle.add(extra.clone());
        }
        let serving = ServingCerts::new(dir, &root, &bundle, &options.sans)?;
        Ok(CaServer {
            service: Service {
                root: Arc::new(root),
                bundle,
                mesh,
                options,
            },
            serving,
        })
    }

    pub fn trust_domain(&self) -> &str {
        self.service.root.trust_domain()
    }

    /// Serves on `listener` until `shutdown` completes, then lets in-flight requests finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), CaServerError> {
        let CaServer { service, serving } = self;
        let (tx, rx) = mpsc::channel::<NodeStream>(64);
        let accept = AbortOnDrop(tokio::spawn(accept_loop(
            listener,
            Arc::new(serving),
            service.bundle.clone(),
            service.root.trust_domain().to_owned(),
            tx,
        )));
        let incoming = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|s| (Ok::<_, std::io::Error>(s), rx))
        });
        let result = tonic::transport::Server::builder()
            .serve_with_incoming_shutdown(MeshCaServer::new(service), incoming, shutdown)
            .await;
        drop(accept);
        Ok(result?)
    }
}

/// Binds `listen`, logs `mesh-ca ready` and serves until SIGTERM or SIGINT: the body of
/// `mesh-node ca serve`. The mesh config at `config` is reloaded when it changes.
pub async fn run(
    dir: &Path,
    config: &Path,
    listen: &str,
    options: ServerOptions,
) -> Result<(), CaServerError> {
    let mesh =
        MeshAuth::from_config(&Config::load(config).map_err(AuthError::from)?).map_err(AuthError::from)?;
    let trust_domain = mesh.trust_domain().to_owned();
    let mesh = Arc::new(RwLock::new(mesh));
    // Made now, so that the file as just loaded is the baseline of change detection.
    let watch = super::auth::watch(
        config.to_owned(),
        mesh.clone(),
        trust_domain.clone(),
        super::auth::DEFAULT_WATCH_INTERVAL,
    );
    let server = CaServer::load(dir, mesh, options)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| CaServerError::Bind {
            addr: listen.to_owned(),
            source,
        })?;
    let addr = listener.local_addr().map_err(CaServerError::Listener)?;
    let _watch = AbortOnDrop(tokio::spawn(watch));
    tracing::info!(%addr, %trust_domain, config = %config.display(), "mesh-ca ready");
    server.serve(listener, shutdown_signal()).await?;
    tracing::info!("mesh-ca stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot watch signals; stop with ctrl-c");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    serving: Arc<ServingCerts>,
    bundle: TrustBundle,
    trust_domain: String,
    tx: mpsc::Sender<NodeStream>,
) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: keep serving.
                tracing::warn!(error = %e, "ca accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let serving = serving.clone();
        let bundle = bundle.clone();
        let trust_domain = trust_domain.clone();
        let tx = tx.clone();
        // Handshakes run concurrently, so one slow caller holds up nobody.
        tokio::spawn(async move {
            match handshake(tcp, remote, &serving, &bundle, &trust_domain).await {
                Ok(stream) => {
                    tracing::debug!(node = %stream.peer.node, %remote, "node connected to the ca");
                    let _ = tx.send(stream).await;
                }
                Err(reason) => tracing::info!(%remote, %reason, "ca refused a connection"),
            }
        });
    }
}

async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    serving: &ServingCerts,
    bundle: &TrustBundle,
    trust_domain: &str,
) -> Result<NodeStream, String> {
    let local = tcp.local_addr().map_err(|e| e.to_string())?;
    let config = serving.config_for(local.ip()).map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsAcceptor::from(config).accept(tcp),
    )
    .await
    .map_err(|_| format!("tls handshake not finished within {HANDSHAKE_TIMEOUT:?}"))?
    .map_err(|e| format!("tls handshake failed: {e}"))?;
    // The verifier accepted the credential; this reads the node name out of it.
    let (node, not_after) = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| node_of(chain, bundle, trust_domain))
        .ok_or("no node credential after the handshake")?;
    Ok(NodeStream {
        inner: tls,
        peer: NodePeer {
            node,
            remote,
            not_after,
        },
    })
}

/// A caller's TLS connection, labelled with the node it proved to be.
type NodeStream = crate::labelled_io::Labelled<TlsStream<TcpStream>, NodePeer>;

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Service {
    root: Arc<CaRoot>,
    /// What GetRoots returns and node credentials may chain to; the CA's root first.
    bundle: TrustBundle,
    mesh: Arc<RwLock<MeshAuth>>,
    options: ServerOptions,
}

fn peer<T>(request: &Request<T>) -> Result<NodePeer, Status> {
    let peer = request
        .extensions()
        .get::<NodePeer>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no node credential on this connection"))?;
    if SystemTime::now() > peer.not_after {
        return Err(Status::unauthenticated(format!(
            "the credential of node {} has expired: issue a new one (mesh-node ca issue-node)",
            peer.node
        )));
    }
    Ok(peer)
}

/// `requested` seconds (0: `default`), no more than `max`.
fn ttl(requested: u64, default: Duration, max: Duration) -> Duration {
    match requested {
        0 => default.min(max),
        secs => Duration::from_secs(secs).min(max),
    }
}

/// A signing failure as the caller should see it: a bad request is the caller's
/// problem and says what is wrong with it; anything else is ours.
fn sign_status(e: CaError) -> Status {
    match e {
        CaError::Csr { .. } | CaError::CsrSignature | CaError::CsrKey { .. } | CaError::Ttl { .. } => {
            Status::invalid_argument(format!("invalid request: {e}"))
        }
        other => {
            tracing::error!(error = %other, "ca cannot sign");
            Status::internal(format!("the ca cannot sign: {other}"))
        }
    }
}

#[tonic::async_trait]
impl MeshCa for Service {
    async fn sign_workload(
        &self,
        request: Request<SignWorkloadRequest>,
    ) -> Result<Response<SignResponse>, Status> {
        let node = peer(&request)?.node;
        let req = request.into_inner();
        let identity = Identity::new(self.root.trust_domain(), &req.namespace, &req.service_account)
            .map_err(|e| Status::invalid_argument(format!("invalid workload identity: {e}")))?;
        let allowed = self
            .mesh
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .hosts(&node, &identity);
        if !allowed {
            tracing::warn!(%node, %identity, "svid request denied: workload not on that node");
            return Err(Status::permission_denied(format!(
                "node {node} may not obtain an svid for {identity}: the mesh config places no workload \
                 with that identity on node {node}"
            )));
        }
        let ttl = ttl(req.ttl_seconds, self.options.default_ttl, self.options.max_ttl);
        let leaf = self
            .root
            .sign_csr(&req.csr_der, &identity, ttl)
            .map_err(sign_status)?;
        tracing::info!(%node, %identity, ?ttl, "svid issued");
        Ok(Response::new(SignResponse {
            cert_chain_der: vec![leaf.to_vec()],
            root_der: self.root.cert_der().to_vec(),
        }))
    }

    async fn sign_node(&self, request: Request<SignNodeRequest>) -> Result<Response<SignResponse>, Status> {
        let node = peer(&request)?.node;
        let req = request.into_inner();
        let known = self
            .mesh
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .has_node(&node);
        if !known {
            return Err(Status::permission_denied(format!(
                "node {node} may not renew its credential: it is not in the mesh config's nodes"
            )));
        }
        let ttl = ttl(
            req.ttl_seconds,
            self.options.max_node_ttl,
            self.options.max_node_ttl,
        );
        let cert = self
            .root
            .sign_node_csr(&req.csr_der, &node, ttl)
            .map_err(sign_status)?;
        tracing::info!(%node, ?ttl, "node credential renewed");
        Ok(Response::new(SignResponse {
            cert_chain_der: vec![cert.to_vec()],
            root_der: self.root.cert_der().to_vec(),
        }))
    }

    async fn get_roots(
        &self,
        request: Request<GetRootsRequest>,
    ) -> Result<Response<GetRootsResponse>, Status> {
        peer(&request)?;
        Ok(Response::new(GetRootsResponse {
            roots_der: self.bundle.roots().iter().map(|r| r.to_vec()).collect(),
        }))
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn ttl_defaults_and_caps() {
        let (day, week) = (Duration::from_secs(86400), Duration::from_secs(7 * 86400));
        assert_eq!(ttl(0, day, week), day);
        assert_eq!(ttl(60, day, week), Duration::from_secs(60));
        assert_eq!(ttl(30 * 86400, day, week), week);
        assert_eq!(ttl(0, week, day), day);
    }
}
