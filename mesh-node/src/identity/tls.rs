//! rustls configurations for HBONE: TLS 1.3 only, the ring provider, ALPN `h2`, mutual
//! authentication with SVIDs checked by [`verify_svid`].
//!
//! The server picks the SVID to present from the SNI (`Identity::sni()` of the workload the
//! client expects) and verifies the client against the current bundle, which can be swapped
//! at run time ([`SharedBundle`] is an `ArcSwap`: handshakes read it without locking).
//! The client accepts only the identity it expected. Session resumption is off on both
//! sides: a resumed session would skip the bundle, window and identity checks.
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, DnsName, ServerName, UnixTime};

use super::bundle::TrustBundle;
use super::spiffe::Identity;
use super::svid::{leaf_identity, verify_svid, Svid, SvidError, Usage};

/// The one application protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// The trust bundle as the TLS verifiers see it; store a new bundle to rotate roots.
pub type SharedBundle = Arc<ArcSwap<TrustBundle>>;

pub fn shared_bundle(bundle: TrustBundle) -> SharedBundle {
    Arc::new(ArcSwap::from_pointee(bundle))
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot build the tls configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("peer certificate rejected: {0}")]
    PeerRejected(SvidError),
    #[error("server proved identity {actual}, but {expected} was expected")]
    UnexpectedPeer { expected: String, actual: String },
}

/// The ring provider, built once. Never installed process-wide.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The SVIDs a node serves, by SNI.
pub trait SvidSource: Send + Sync + fmt::Debug {
    fn svid_for_sni(&self, sni: &str) -> Option<Arc<CertifiedKey>>;
}

/// A simple [`SvidSource`]: the node's current SVIDs, replaced on renewal.
#[derive(Debug, Default)]
pub struct SvidStore {
    by_sni: RwLock<HashMap<String, (Identity, Arc<CertifiedKey>)>>,
}

impl SvidStore {
    pub fn new() -> SvidStore {
        SvidStore::default()
    }

    /// Adds or replaces the SVID of `svid.identity`.
    pub fn insert(&self, svid: &Svid) -> Result<(), SvidError> {
        let ck = svid.certified_key()?;
        let mut map = self.by_sni.write().unwrap_or_else(|e| e.into_inner());
        map.insert(svid.identity.sni(), (svid.identity.clone(), ck));
        Ok(())
    }

    pub fn remove(&self, identity: &Identity) -> bool {
        let mut map = self.by_sni.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&identity.sni()).is_some()
    }

    pub fn identities(&self) -> Vec<Identity> {
        let map = self.by_sni.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<Identity> = map.values().map(|(id, _)| id.clone()).collect();
        ids.sort();
        ids
    }
}

impl SvidSource for SvidStore {
    fn svid_for_sni(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.by_sni.read().unwrap_or_else(|e| e.into_inner());
        map.get(sni).map(|(_, ck)| ck.clone())
    }
}

/// Server side (port 15008): presents the SVID whose `identity.sni()` equals the client's
/// SNI (no SNI or an unknown one fails the handshake), requires a client certificate and
/// verifies it with `verify_svid(.., Usage::Client, ..)` against the bundle current at the
/// time of the handshake.
pub fn server_config(
    svids: Arc<dyn SvidSource>,
    bundle: SharedBundle,
    trust_domain: String,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(ClientVerifier {
            bundle,
            trust_domain,
            algs,
        }))
        .with_cert_resolver(Arc::new(SniResolver { svids }));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Client side: presents `svid`, verifies the server with `verify_svid(.., Usage::Server,
/// ..)` and requires that it proves `expected`. The caller connects with
/// [`server_name`]`(&expected)` as SNI, so that the server picks `expected`'s SVID.
pub fn client_config(
    svid: &Svid,
    bundle: SharedBundle,
    trust_domain: String,
    expected: Identity,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier {
            bundle,
            trust_domain,
            expected,
            algs,
        }))
        .with_client_auth_cert(svid.chain.clone(), svid.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The SNI to connect with when `expected` is the identity at the other end.
pub fn server_name(expected: &Identity) -> ServerName<'static> {
    // 32 hex digits and a fixed suffix: always a valid DNS name.
    let name = DnsName::try_from(expected.sni()).expect("Identity::sni is a DNS name");
    ServerName::DnsName(name)
}

/// The identity proven by the peer's certificate after a completed handshake (on the
/// server, the client's). It reads the leaf's URI SAN without re-verifying: only use it on
/// connections made with [`server_config`] or [`client_config`], whose verifiers have
/// already accepted that certificate with [`verify_svid`].
pub fn peer_identity(conn: &rustls::CommonState) -> Option<Identity> {
    leaf_identity(conn.peer_certificates()?.first()?).ok()
}

#[derive(Debug)]
struct SniResolver {
    svids: Arc<dyn SvidSource>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else {
            tracing::debug!("hbone client sent no SNI, so no SVID to present");
            return None;
        };
        let svid = self.svids.svid_for_sni(sni);
        if svid.is_none() {
            tracing::debug!(
                sni,
                "no SVID for this SNI: the expected workload is not served here"
            );
        }
        svid
    }
}

struct ClientVerifier {
    bundle: SharedBundle,
    trust_domain: String,
    algs: WebPkiSupportedAlgorithms,
}

struct ServerVerifier {
    bundle: SharedBundle,
    trust_domain: String,
    expected: Identity,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("trust_domain", &self.trust_domain)
            .finish()
    }
}

impl fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerVerifier")
            .field("trust_domain", &self.trust_domain)
            .field("expected", &self.expected.uri())
            .finish()
    }
}

/// The handshake-signature half of both verifiers: TLS 1.3 only, the ring algorithms.
macro_rules! tls13_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::PeerIncompatible::Tls12NotOffered.into())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a client has exactly one SVID to offer.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let chain = chain(end_entity, intermediates);
        let bundle = self.bundle.load();
        match verify_svid(
            &chain,
            &bundle,
            &self.trust_domain,
            Usage::Client,
            system_time(now),
        ) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(e) => {
                tracing::debug!(error = %e, "hbone client certificate rejected");
                Err(rejected(TlsError::PeerRejected(e)))
            }
        }
    }

    tls13_signatures!();
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The SNI only selects the certificate; what counts is the identity it proves.
        let chain = chain(end_entity, intermediates);
        let bundle = self.bundle.load();
        let actual = verify_svid(
            &chain,
            &bundle,
            &self.trust_domain,
            Usage::Server,
            system_time(now),
        )
        .map_err(|e| rejected(TlsError::PeerRejected(e)))?;
        if actual != self.expected {
            return Err(rejected(TlsError::UnexpectedPeer {
                expected: self.expected.uri(),
                actual: actual.uri(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    tls13_signatures!();
}

fn chain<'a>(
    end_entity: &CertificateDer<'a>,
    intermediates: &[CertificateDer<'a>],
) -> Vec<CertificateDer<'a>> {
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.clone());
    chain.extend(intermediates.iter().cloned());
    chain
}

/// Keeps our message in the handshake error, so logs say what was wrong with the peer.
/// (rustls prints `InvalidCertificate(CertificateError::Other(..))` with `Debug`, losing the
/// message, so this is `Error::Other`; the peer gets a handshake_failure alert.)
fn rejected(e: TlsError) -> rustls::Error {
    rustls::Error::Other(OtherError(Arc::new(e)))
}

fn system_time(now: UnixTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::testing::{test_pki, TestPki};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

    type Handshake = (
        std::io::Result<server::TlsStream<TcpStream>>,
        std::io::Result<client::TlsStream<TcpStream>>,
    );

    /// Runs one handshake over loopback: the server with `server`, the client with `client`
    /// connecting as if to `expected`.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        expected: &Identity,
    ) -> Handshake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsAcceptor::from(server).accept(tcp).await
        };
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            TlsConnector::from(client)
                .connect(server_name(expected), tcp)
                .await
        };
        tokio::join!(accept, connect)
    }

    fn server_for(pki: &TestPki, svids: &[&Svid]) -> Arc<rustls::ServerConfig> {
        server_config(pki.store(svids), pki.shared_bundle(), pki.trust_domain()).unwrap()
    }

    fn client_for(pki: &TestPki, svid: &Svid, expected: &Identity) -> Arc<rustls::ClientConfig> {
        client_config(svid, pki.shared_bundle(), pki.trust_domain(), expected.clone()).unwrap()
    }

    #[tokio::test]
    async fn mutual_tls_proves_both_identities() {
        let pki = test_pki("cluster.local");
        let (a, b, c) = (
            pki.svid("default", "a"),
            pki.svid("default", "b"),
            pki.svid("client", "c"),
        );
        let server = server_for(&pki, &[&a, &b]);
        let (srv, cli) = handshake(server, client_for(&pki, &c, &b.identity), &b.identity).await;
        let (mut srv, mut cli) = (srv.unwrap(), cli.unwrap());

        assert_eq!(peer_identity(srv.get_ref().1), Some(c.identity.clone()));
        assert_eq!(peer_identity(cli.get_ref().1), Some(b.identity.clone()));
        assert_eq!(srv.get_ref().1.alpn_protocol(), Some(ALPN_H2));
        assert_eq!(
            cli.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );

        cli.write_all(b"ping").await.unwrap();
        cli.flush().await.unwrap();
        let mut buf = [0u8; 4];
        srv.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    /// Presents `svid` whatever the SNI: a server impersonating another workload.
    #[derive(Debug)]
    struct Always(Arc<CertifiedKey>);

    impl SvidSource for Always {
        fn svid_for_sni(&self, _: &str) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    #[tokio::test]
    async fn client_rejects_an_unexpected_server_identity() {
        let pki = test_pki("cluster.local");
        let (a, b, c) = (
            pki.svid("default", "a"),
            pki.svid("default", "b"),
            pki.svid("client", "c"),
        );
        let source = Arc::new(Always(b.certified_key().unwrap()));
        let server = server_config(source, pki.shared_bundle(), pki.trust_domain()).unwrap();
        let (mut srv, cli) = handshake(server, client_for(&pki, &c, &a.identity), &a.identity).await;

        let err = cli
            .expect_err("client must refuse B when it expects A")
            .to_string();
        assert!(
            err.contains(&a.identity.uri()) && err.contains(&b.identity.uri()),
            "{err}"
        );
        // The client sent its alert, never a byte of application data.
        if let Ok(srv) = srv.as_mut() {
            let mut buf = Vec::new();
            assert!(srv.read_to_end(&mut buf).await.is_err() || buf.is_empty());
        }
    }

    #[tokio::test]
    async fn server_rejects_a_client_from_another_trust_domain() {
        let pki = test_pki("cluster.local");
        let foreign = test_pki("other.local");
        let a = pki.svid("default", "a");
        let intruder = foreign.svid("default", "c");
        // The server even trusts the foreign root: the trust domain check alone decides.
        let mut both = pki.bundle.clone();
        both.add(foreign.ca.cert_der());
        let server = server_config(pki.store(&[&a]), shared_bundle(both), pki.trust_domain()).unwrap();
        let (srv, cli) = handshake(server, client_for(&pki, &intruder, &a.identity), &a.identity).await;

        let err = srv
            .expect_err("server must refuse the foreign client")
            .to_string();
        assert!(err.contains("other.local"), "{err}");
        // In TLS 1.3 the client may finish first; it learns of the refusal on its next read.
        if let Ok(mut cli) = cli {
            let mut buf = [0u8; 1];
            assert!(!matches!(cli.read(&mut buf).await, Ok(n) if n > 0));
        }
    }

    #[tokio::test]
    async fn unknown_sni_fails() {
        let pki = test_pki("cluster.local");
        let (a, c) = (pki.svid("default", "a"), pki.svid("client", "c"));
        let elsewhere = pki.identity("default", "not-here");
        let server = server_for(&pki, &[&a]);
        let (srv, cli) = handshake(server, client_for(&pki, &c, &elsewhere), &elsewhere).await;
        assert!(srv.is_err());
        assert!(cli.is_err());
    }

    #[tokio::test]
    async fn server_follows_bundle_swaps() {
        let pki = test_pki("cluster.local");
        let (a, c) = (pki.svid("default", "a"), pki.svid("client", "c"));
        let bundle = pki.shared_bundle();
        let server = server_config(pki.store(&[&a]), bundle.clone(), pki.trust_domain()).unwrap();
        let (srv, _) = handshake(server.clone(), client_for(&pki, &c, &a.identity), &a.identity).await;
        srv.unwrap();

        bundle.store(Arc::new(TrustBundle::default()));
        let (srv, _) = handshake(server, client_for(&pki, &c, &a.identity), &a.identity).await;
        let err = srv.expect_err("an empty bundle trusts no one").to_string();
        assert!(err.contains("empty"), "{err}");
    }
}
