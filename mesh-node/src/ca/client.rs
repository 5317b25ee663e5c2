//! A node daemon's client of the mesh CA: gRPC over mutual TLS 1.3, authenticated with the
//! node credential; the CA's serving certificate must chain to the mesh root and be valid
//! for the host or IP the client connects to.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::proto::mesh_ca_client::MeshCaClient;
use super::proto::{GetRootsRequest, SignNodeRequest, SignWorkloadRequest};
use super::uri_sans;
use crate::identity::tls::{provider, ALPN_H2};
use crate::identity::{parse_node_identity, verify_node_credential, Identity, TrustBundle};

/// Time to open the TCP connection and finish the TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error("invalid ca address {addr:?}: expected host:port, e.g. 10.0.0.1:15012")]
    Address { addr: String },
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("node credential {path} is not usable with the root in {root}: {reason}: issue a new one (mesh-node ca issue-node)")]
    Credential {
        path: String,
        root: String,
        reason: String,
    },
    #[error("cannot build the tls configuration for ca {addr}: {source}")]
    Tls { addr: String, source: rustls::Error },
    #[error("cannot reach ca {addr}: {reason}: is `mesh-node ca serve` running there, and the port open?")]
    Unreachable { addr: String, reason: String },
    #[error("ca {addr} refused the node credential ({reason}): was it issued by this ca (mesh-node ca issue-node), and is it still valid?")]
    CredentialRefused { addr: String, reason: String },
    #[error("ca {addr} presented a certificate not valid for {host:?}: connect by an address the ca serves, or add --san {host} to `mesh-node ca serve`")]
    WrongServerName { addr: String, host: String },
    #[error("ca {addr} presented a certificate that is not trusted ({reason}): is it this mesh's ca, and does the root file hold its current root?")]
    UntrustedServer { addr: String, reason: String },
    #[error("ca {addr} denied the request: {message} (check the mesh config the ca reads)")]
    PermissionDenied { addr: String, message: String },
    #[error("ca {addr} rejected the request as invalid: {message}")]
    InvalidArgument { addr: String, message: String },
    #[error("ca {addr} failed the request ({code:?}): {message}")]
    Rpc {
        addr: String,
        code: Code,
        message: String,
    },
    #[error("ca {addr} returned an unusable answer: {reason}")]
    BadResponse { addr: String, reason: String },
}

/// A connection to the mesh CA. Cheap to clone; requests may run concurrently, and a
/// broken connection is re-established on the next request. A renewed node credential
/// needs a new client.
#[derive(Clone, Debug)]
pub struct CaClient {
    addr: String,
    client: MeshCaClient<Channel>,
}

impl CaClient {
    /// Connects to the CA at `addr` (`ip:port` or `host:port`) with the node credential in
    /// `node_cert` (PEM chain, leaf first) and `node_key` (PEM), trusting the root(s) in
    /// `root` for the CA's serving certificate. Checks the credential locally first, then
    /// makes one GetRoots request, so that a CA that refuses the credential fails here.
    pub async fn connect(
        addr: &str,
        node_cert: &Path,
        node_key: &Path,
        root: &Path,
    ) -> Result<CaClient, CaClientError> {
        let display = |p: &Path| p.display().to_string();
        let read_err = |what, path: &Path| {
            let path = display(path);
            move |e: rustls_pki_types::pem::Error| CaClientError::Read {
                what,
                path,
                reason: e.to_string(),
            }
        };
        let chain = CertificateDer::pem_file_iter(node_cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(read_err("node credential", node_cert))?;
        let key = PrivateKeyDer::from_pem_file(node_key).map_err(read_err("node key", node_key))?;
        let bundle = TrustBundle::load(root).map_err(|e| CaClientError::Read {
            what: "mesh root",
            path: display(root),
            reason: e.to_string(),
        })?;
        let credential_err = |reason: String| CaClientError::Credential {
            path: display(node_cert),
            root: display(root),
            reason,
        };
        let uri = chain.first().map(|leaf| uri_sans(leaf)).unwrap_or_default();
        let [uri] = uri.as_slice() else {
            return Err(credential_err(
                "it needs exactly one URI SAN spiffe://<td>/node/<name>".into(),
            ));
        };
        let (trust_domain, _) = parse_node_identity(uri).map_err(|e| credential_err(e.to_string()))?;
        verify_node_credential(&chain, &bundle, &trust_domain, SystemTime::now())
            .map_err(|e| credential_err(e.to_string()))?;
        CaClient::connect_with(addr, chain, key, &bundle).await
    }

    /// Like [`CaClient::connect`], with the credential and the roots in memory.
    pub async fn connect_with(
        addr: &str,
        node_chain: Vec<CertificateDer<'static>>,
        node_key: PrivateKeyDer<'static>,
        roots: &TrustBundle,
    ) -> Result<CaClient, CaClientError> {
        let (target, server_name) = parse_addr(addr)?;
        let tls_err = |source| CaClientError::Tls {
            addr: addr.to_owned(),
            source,
        };
        let mut root_store = RootCertStore::empty();
        root_store.add_parsable_certificates(roots.roots().iter().cloned());
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(root_store)
            .with_client_auth_cert(node_chain, node_key)
            .map_err(tls_err)?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

        let endpoint = Endpoint::from_shared(format!("http://{}", target.authority()))
            .map_err(|_| CaClientError::Address {
                addr: addr.to_owned(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        let connect = tower::service_fn(move |_: http::Uri| {
            let (connector, target, server_name) = (connector.clone(), target.clone(), server_name.clone());
            async move {
                let tcp = match &target {
                    Target::Addr(addr) => TcpStream::connect(addr).await?,
                    Target::Host(host, port) => TcpStream::connect((host.as_str(), *port)).await?,
                };
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        });
        let channel = endpoint
            .connect_with_connector(connect)
            .await
            .map_err(|e| classify(addr, &e, Code::Unavailable, &e.to_string()))?;
        let client = CaClient {
            addr: addr.to_owned(),
            client: MeshCaClient::new(channel),
        };
        client.roots().await?;
        Ok(client)
    }

    /// The CA address as given to `connect`.
    pub fn address(&self) -> &str {
        &self.addr
    }

    /// Asks for an SVID for `identity` (a workload the mesh config places on this node),
    /// for the key of `csr_der` (from `identity::generate_csr`). `ttl` zero leaves the
    /// lifetime to the CA (24 h by default); the CA cuts it to its maximum. Returns the
    /// chain, leaf first, root not included.
    pub async fn sign_workload(
        &self,
        csr_der: &[u8],
        identity: &Identity,
        ttl: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaClientError> {
        let request = SignWorkloadRequest {
            csr_der: csr_der.to_vec(),
            namespace: identity.namespace.clone(),
            service_account: identity.service_account.clone(),
            ttl_seconds: ttl.as_secs(),
        };
        let response = self
            .client
            .clone()
            .sign_workload(request)
            .await
            .map_err(|s| self.status(s))?;
        let chain = self.chain(response.into_inner().cert_chain_der)?;
        let sans = uri_sans(&chain[0]);
        if sans != [identity.uri()] {
            return Err(self.bad_response(format!("asked for {identity}, got a certificate for {sans:?}")));
        }
        Ok(chain)
    }

    /// Renews this node's credential for the key of `csr_der` (from
    /// `identity::generate_node_csr`); `ttl` zero is the CA's maximum.
    pub async fn sign_node(
        &self,
        csr_der: &[u8],
        ttl: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaClientError> {
        let request = SignNodeRequest {
            csr_der: csr_der.to_vec(),
            ttl_seconds: ttl.as_secs(),
        };
        let response = self
            .client
            .clone()
            .sign_node(request)
            .await
            .map_err(|s| self.status(s))?;
        self.chain(response.into_inner().cert_chain_der)
    }

    /// The mesh's trust bundle: every root, the CA's current one first.
    pub async fn roots(&self) -> Result<Vec<CertificateDer<'static>>, CaClientError> {
        let response = self
            .client
            .clone()
            .get_roots(GetRootsRequest {})
            .await
            .map_err(|s| self.status(s))?;
        let roots: Vec<_> = response
            .into_inner()
            .roots_der
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        if roots.is_empty() {
            return Err(self.bad_response("no roots".into()));
        }
        Ok(roots)
    }

    fn chain(&self, ders: Vec<Vec<u8>>) -> Result<Vec<CertificateDer<'static>>, CaClientError> {
        if ders.is_empty() {
            return Err(self.bad_response("no certificate".into()));
        }
        Ok(ders.into_iter().map(CertificateDer::from).collect())
    }

    fn bad_response(&self, reason: String) -> CaClientError {
        CaClientError::BadResponse {
            addr: self.addr.clone(),
            reason,
        }
    }

    fn status(&self, status: Status) -> CaClientError {
        classify(&self.addr, &status, status.code(), status.message())
    }
}

#[derive(Clone, Debug)]
enum Target {
    Addr(SocketAddr),
    Host(String, u16),
}

impl Target {
    fn authority(&self) -> String {
        match self {
            Target::Addr(addr) => addr.to_string(),
            Target::Host(host, port) => format!("{host}:{port}"),
        }
    }
}

/// The address to connect to and the name the CA's certificate must be valid for.
fn parse_addr(addr: &str) -> Result<(Target, ServerName<'static>), CaClientError> {
    let bad = || CaClientError::Address {
        addr: addr.to_owned(),
    };
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok((Target::Addr(sa), ServerName::IpAddress(sa.ip().into())));
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let name = ServerName::try_from(host.to_owned()).map_err(|_| bad())?;
    Ok((Target::Host(host.to_owned(), port), name))
}

/// A failed call as the operator should read it: what the CA answered, or why the
/// connection failed, found in the error's causes.
fn classify(addr: &str, err: &(dyn std::error::Error + 'static), code: Code, message: &str) -> CaClientError {
    let addr = addr.to_owned();
    match code {
        Code::PermissionDenied => {
            return CaClientError::PermissionDenied {
                addr,
                message: message.to_owned(),
            }
        }
        Code::InvalidArgument => {
            return CaClientError::InvalidArgument {
                addr,
                message: message.to_owned(),
            }
        }
        _ => {}
    }
    let mut cause = Some(err);
    let mut reasons = Vec::new();
    while let Some(e) = cause {
        let io = e.downcast_ref::<std::io::Error>();
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            io.and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            return tls_error(addr, tls);
        }
        // An alert that arrives after the handshake (how a TLS 1.3 server refuses a client
        // certificate) reaches us through hyper and h2, which may keep only its text.
        if let Some((_, alert)) = e.to_string().split_once("received fatal alert: ") {
            return CaClientError::CredentialRefused {
                addr,
                reason: alert.to_owned(),
            };
        }
        if io.is_some_and(|io| io.kind() != std::io::ErrorKind::Other) {
            return CaClientError::Unreachable {
                addr,
                reason: e.to_string(),
            };
        }
        let text = e.to_string();
        if !reasons.iter().any(|r: &String| r.contains(&text)) {
            reasons.push(text);
        }
        cause = e.source();
    }
    let reason = reasons.join(": ");
    match code {
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded => {
            CaClientError::Unreachable { addr, reason }
        }
        _ => CaClientError::Rpc {
            addr,
            code,
            message: message.to_owned(),
        },
    }
}

fn tls_error(addr: String, e: &rustls::Error) -> CaClientError {
    match e {
        // Our handshake finished; the CA then refused what we presented.
        rustls::Error::AlertReceived(alert) => CaClientError::CredentialRefused {
            addr,
            reason: format!("{alert:?}"),
        },
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h).to_owned();
            CaClientError::WrongServerName { addr, host }
        }
        rustls::Error::InvalidCertificate(_) => CaClientError::UntrustedServer {
            addr,
            reason: e.to_string(),
        },
        other => CaClientError::Unreachable {
            addr,
            reason: format!("tls: {other}"),
        },
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn addresses() {
        let (t, name) = parse_addr("10.0.0.1:15012").unwrap();
        assert_eq!(t.authority(), "10.0.0.1:15012");
        assert_eq!(
            name,
            ServerName::IpAddress("10.0.0.1".parse::<std::net::IpAddr>().unwrap().into())
        );
        let (t, _) = parse_addr("[fd00::1]:15012").unwrap();
        assert_eq!(t.authority(), "[fd00::1]:15012");
        let (t, name) = parse_addr("mesh-ca.mesh-system.svc:15012").unwrap();
        assert_eq!(t.authority(), "mesh-ca.mesh-system.svc:15012");
        assert_eq!(name.to_str(), "mesh-ca.mesh-system.svc");
        for bad in ["10.0.0.1", "host:port", "bad host:1", ""] {
            let err = parse_addr(bad).unwrap_err().to_string();
            assert!(err.contains("host:port"), "{bad}: {err}");
        }
    }
}
