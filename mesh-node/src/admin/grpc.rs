//! The admin API (`proto/admin.proto`) on a Unix socket, for `mesh-node status` and the
//! other operator commands.
//!
//! Only callers in the daemon's own network namespace are served: the socket file is mode
//! 0600, and on accept the caller's pid (SO_PEERCRED) must name a process whose
//! `/proc/<pid>/ns/net` is the daemon's. A pod that reaches the socket anyway (a hostPath
//! mount) gets PERMISSION_DENIED on every call.
use std::{
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use futures_util::Stream;
use tokio::{
    net::{UnixListener, UnixStream},
    sync::broadcast::error::RecvError,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::{
    proto::{
        self,
        mesh_admin_server::{MeshAdmin, MeshAdminServer},
    },
    AdminError, AdminSource, FlowFilter,
};

/// Who is calling, as read from the socket on accept.
#[derive(Clone, Debug)]
pub struct AdminPeer {
    pub pid: Option<i32>,
    pub uid: u32,
    /// Why the caller is refused; `None` when it is in the daemon's network namespace.
    pub refusal: Option<String>,
}

/// The admin socket, bound: a stale socket file is replaced, a live one is an error.
pub struct AdminSocket {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
}

impl AdminSocket {
    /// Binds now (no runtime needed), so that a socket in use fails the start-up. Creates
    /// the parent directory if needed.
    pub fn bind(path: &Path) -> Result<AdminSocket, AdminError> {
        let shown = || path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| AdminError::SocketDir {
                dir: dir.display().to_string(),
                source,
            })?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                // A socket file that nobody accepts on is left over from a daemon that died.
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(AdminError::SocketInUse { path: shown() });
                }
                std::fs::remove_file(path).map_err(|source| AdminError::Bind {
                    path: shown(),
                    source,
                })?;
            }
            Ok(_) => return Err(AdminError::NotASocket { path: shown() }),
            Err(_) => {}
        }
        let listener = std::os::unix::net::UnixListener::bind(path)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| AdminError::Bind {
                path: shown(),
                source,
            })?;
        // Between bind and chmod the file has the umask's mode; the namespace check on
        // accept covers that moment.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
            AdminError::Bind {
                path: shown(),
                source,
            }
        })?;
        Ok(AdminSocket {
            listener,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `stop` is cancelled (open `Flows` streams end then), and removes the
    /// socket file.
    pub async fn serve(
        self,
        source: Arc<dyn AdminSource>,
        stop: CancellationToken,
    ) -> Result<(), AdminError> {
        let AdminSocket { listener, path } = self;
        let listener = UnixListener::from_std(listener).map_err(|source| AdminError::Bind {
            path: path.display().to_string(),
            source,
        })?;
        info!(socket = %path.display(), "admin api listening");
        let incoming = futures_util::stream::unfold(
            (listener, stop.clone()),
            |(listener, stop)| async move {
                loop {
                    let accepted = tokio::select! {
                        _ = stop.cancelled() => return None,
                        accepted = listener.accept() => accepted,
                    };
                    match accepted {
                        Ok((inner, _)) => {
                            let peer = check_peer(&inner);
                            if let Some(reason) = &peer.refusal {
                                info!(pid = ?peer.pid, uid = peer.uid, %reason, "admin api: refusing a caller");
                            }
                            return Some((
                                Ok::<_, std::io::Error>(AdminStream { inner, peer }),
                                (listener, stop),
                            ));
                        }
                        Err(e) => {
                            warn!(error = %e, "admin api: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            },
        );
        let service = MeshAdminServer::with_interceptor(
            Service {
                source,
                stop: stop.clone(),
            },
            authorize,
        );
        let result = tonic::transport::Server::builder()
            .serve_with_incoming_shutdown(service, incoming, stop.cancelled_owned())
            .await;
        let _ = std::fs::remove_file(&path);
        Ok(result?)
    }
}

/// Binds `path` and serves the admin API on it until `stop` is cancelled.
pub async fn serve(
    path: &Path,
    source: Arc<dyn AdminSource>,
    stop: CancellationToken,
) -> Result<(), AdminError> {
    AdminSocket::bind(path)?.serve(source, stop).await
}

fn check_peer(stream: &UnixStream) -> AdminPeer {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            return AdminPeer {
                pid: None,
                uid: u32::MAX,
                refusal: Some(format!("cannot read the caller's credentials: {e}")),
            }
        }
    };
    let pid = cred.pid().filter(|p| *p > 0);
    let refusal = match pid {
        // 0: the caller is in a pid namespace the daemon cannot see into.
        None => Some("the caller's pid is not visible from the daemon's pid namespace".to_owned()),
        Some(pid) => match (netns(&format!("/proc/{pid}/ns/net")), netns("/proc/self/ns/net")) {
            (Ok(theirs), Ok(ours)) if theirs == ours => None,
            (Ok(_), Ok(_)) => Some(
                "the caller is in another network namespace: the admin api serves only the node \
                 (run mesh-node from the host, or from the daemon's pod)"
                    .to_owned(),
            ),
            (Err(e), _) | (_, Err(e)) => Some(format!("cannot read the caller's network namespace: {e}")),
        },
    };
    AdminPeer {
        pid,
        uid: cred.uid(),
        refusal,
    }
}

/// The identity of a network namespace: the (device, inode) of its nsfs file.
fn netns(path: &str) -> std::io::Result<(u64, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// Fails every call on a connection whose caller [`check_peer`] refused.
fn authorize(request: Request<()>) -> Result<Request<()>, Status> {
    match request.extensions().get::<AdminPeer>() {
        Some(AdminPeer { refusal: None, .. }) => Ok(request),
        Some(AdminPeer {
            refusal: Some(reason),
            ..
        }) => Err(Status::permission_denied(reason.clone())),
        None => Err(Status::permission_denied("unknown caller")),
    }
}

struct Service {
    source: Arc<dyn AdminSource>,
    stop: CancellationToken,
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<proto::FlowEvent, Status>> + Send>>;

#[tonic::async_trait]
impl MeshAdmin for Service {
    async fn status(
        &self,
        _: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        Ok(Response::new((&self.source.status()).into()))
    }

    async fn workloads(
        &self,
        _: Request<proto::WorkloadsRequest>,
    ) -> Result<Response<proto::WorkloadsResponse>, Status> {
        Ok(Response::new(proto::WorkloadsResponse {
            workloads: self.source.workloads().iter().map(Into::into).collect(),
        }))
    }

    async fn connections(
        &self,
        _: Request<proto::ConnectionsRequest>,
    ) -> Result<Response<proto::ConnectionsResponse>, Status> {
        Ok(Response::new(proto::ConnectionsResponse {
            connections: self.source.connections().iter().map(Into::into).collect(),
        }))
    }

    async fn certificates(
        &self,
        _: Request<proto::CertificatesRequest>,
    ) -> Result<Response<proto::CertificatesResponse>, Status> {
        Ok(Response::new(proto::CertificatesResponse {
            certificates: self.source.certificates().iter().map(Into::into).collect(),
        }))
    }

    type FlowsStream = FlowStream;

    async fn flows(&self, request: Request<proto::FlowsRequest>) -> Result<Response<FlowStream>, Status> {
        let filter = FlowFilter::try_from(&request.into_inner()).map_err(Status::invalid_argument)?;
        // Subscribed before the answer goes out, so the caller misses nothing after it.
        let events = self.source.flows();
        let state = (events, filter, self.stop.clone());
        let stream = futures_util::stream::unfold(state, |(mut events, filter, stop)| async move {
            loop {
                let event = tokio::select! {
                    // The server's graceful shutdown waits for open streams: end them.
                    _ = stop.cancelled() => return None,
                    event = events.recv() => event,
                };
                match event {
                    Ok(event) if filter.matches(&event) => {
                        return Some((Ok((&event).into()), (events, filter, stop)));
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        warn!(missed, "a flows subscriber fell behind: events dropped");
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A caller's connection, labelled with what [`check_peer`] found.
type AdminStream = crate::labelled_io::Labelled<UnixStream, AdminPeer>;
