//! In-process tests of the CA service and its client, on 127.0.0.1:0.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;

use super::*;
use crate::config::Config;
use crate::identity::tls::provider;
use crate::identity::{generate_csr, generate_node_csr, CaRoot, Identity, Svid, TrustBundle};

/// node-a hosts shop/web, node-b hosts shop/db, node-c and node-d host nothing. (`node`
/// is the node whose daemon would run with this file; the CA does not use it.)
pub(super) const CONFIG: &str = "
node: node-c
trustDomain: cluster.local
capture: { ipv4: 10.0.0.3 }
nodes:
  - { name: node-a, addresses: [10.0.0.1] }
  - { name: node-b, addresses: [10.0.0.2] }
  - { name: node-c, addresses: [10.0.0.3] }
  - { name: node-d, addresses: [10.0.0.4] }
workloads:
  - { name: web, namespace: shop, serviceAccount: web, node: node-a, ips: [10.1.0.1] }
  - { name: db, namespace: shop, serviceAccount: db, node: node-b, ips: [10.1.0.2] }
";

const TD: &str = "cluster.local";

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new(TD, ns, sa).unwrap()
}

/// A running CA on loopback, stopped on drop.
struct TestCa {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    addr: SocketAddr,
    mesh: Arc<RwLock<MeshAuth>>,
    _stop: oneshot::Sender<()>,
}

async fn start_ca(options: ServerOptions) -> TestCa {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    CaRoot::init(&dir, TD).unwrap();
    let mesh = Arc::new(RwLock::new(
        MeshAuth::from_config(&Config::parse(CONFIG).unwrap()).unwrap(),
    ));
    let server = CaServer::load(&dir, mesh.clone(), options).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    TestCa {
        tmp,
        dir,
        addr,
        mesh,
        _stop: stop,
    }
}

/// Paths of a node credential directory.
struct Cred {
    cert: PathBuf,
    key: PathBuf,
    root: PathBuf,
}

impl Cred {
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from_pem_file(&self.cert).unwrap()]
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_file(&self.key).unwrap()
    }

    fn bundle(&self) -> TrustBundle {
        TrustBundle::load(&self.root).unwrap()
    }
}

impl TestCa {
    fn root(&self) -> CaRoot {
        CaRoot::load(&self.dir).unwrap()
    }

    fn node_cred(&self, node: &str) -> Cred {
        let issued = issue_node(
            &self.dir,
            node,
            &self.tmp.path().join(node),
            Duration::from_secs(3600),
        )
        .unwrap();
        Cred {
            cert: issued.cert,
            key: issued.key,
            root: issued.root,
        }
    }

    async fn client(&self, node: &str) -> CaClient {
        let cred = self.node_cred(node);
        CaClient::connect(&self.addr.to_string(), &cred.cert, &cred.key, &cred.root)
            .await
            .unwrap()
    }
}

fn lifetime(leaf: &CertificateDer<'_>) -> i64 {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()
}

#[tokio::test]
async fn node_gets_an_svid_for_its_workload() {
    let ca = start_ca(ServerOptions::default()).await;
    let client = ca.client("node-a").await;
    let web = id("shop", "web");
    let (csr, key) = generate_csr(&web).unwrap();
    let chain = client.sign_workload(&csr, &web, Duration::ZERO).await.unwrap();
    assert_eq!(
        uri_sans(&chain[0]),
        vec!["spiffe://cluster.local/ns/shop/sa/web".to_owned()]
    );
    // A complete SVID: chains to the root, for both usages, with the node's key.
    let bundle = TrustBundle::new(vec![ca.root().cert_der()]);
    let svid = Svid::new(web.clone(), chain.clone(), key, &bundle, SystemTime::now()).unwrap();
    assert_eq!(svid.identity, web);
    // Default lifetime 24 h (plus the backdating minute).
    assert_eq!(lifetime(&chain[0]), 24 * 3600 + 60);

    // Asked lifetimes are honoured up to the maximum.
    let (csr, _) = generate_csr(&web).unwrap();
    let chain = client
        .sign_workload(&csr, &web, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(lifetime(&chain[0]), 660);
    let chain = client
        .sign_workload(&csr, &web, Duration::from_secs(90 * 86400))
        .await
        .unwrap();
    assert_eq!(lifetime(&chain[0]), DEFAULT_MAX_SVID_TTL.as_secs() as i64 + 60);
}

#[tokio::test]
async fn workload_of_another_node_is_denied() {
    let ca = start_ca(ServerOptions::default()).await;
    let client = ca.client("node-a").await;
    for wanted in [id("shop", "db"), id("shop", "nobody")] {
        let (csr, _) = generate_csr(&wanted).unwrap();
        let err = client
            .sign_workload(&csr, &wanted, Duration::ZERO)
            .await
            .unwrap_err();
        assert!(matches!(err, CaClientError::PermissionDenied { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("node-a") && msg.contains(&wanted.uri()), "{msg}");
        assert!(msg.contains(&ca.addr.to_string()), "{msg}");
    }
    // The node hosting it may.
    let db = id("shop", "db");
    let (csr, _) = generate_csr(&db).unwrap();
    ca.client("node-b")
        .await
        .sign_workload(&csr, &db, Duration::ZERO)
        .await
        .unwrap();
}

#[tokio::test]
async fn placements_follow_the_mesh_config() {
    let ca = start_ca(ServerOptions::default()).await;
    let client = ca.client("node-b").await;
    let web = id("shop", "web");
    let (csr, _) = generate_csr(&web).unwrap();
    assert!(client.sign_workload(&csr, &web, Duration::ZERO).await.is_err());
    let moved = CONFIG.replace("node: node-a, ips: [10.1.0.1]", "node: node-b, ips: [10.1.0.1]");
    *ca.mesh.write().unwrap() = MeshAuth::from_config(&Config::parse(&moved).unwrap()).unwrap();
    client.sign_workload(&csr, &web, Duration::ZERO).await.unwrap();
}

#[tokio::test]
async fn bad_csrs_are_invalid_arguments() {
    let ca = start_ca(ServerOptions::default()).await;
    let client = ca.client("node-a").await;
    let web = id("shop", "web");
    let err = client
        .sign_workload(b"not a csr", &web, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, CaClientError::InvalidArgument { .. }), "{err}");
    assert!(err.to_string().contains("cannot be parsed"), "{err}");

    let (mut csr, _) = generate_csr(&web).unwrap();
    let last = csr.len() - 1;
    csr[last] ^= 1;
    let err = client
        .sign_workload(&csr, &web, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, CaClientError::InvalidArgument { .. }), "{err}");
    assert!(err.to_string().contains("invalid self-signature"), "{err}");
}

#[tokio::test]
async fn get_roots_returns_the_root() {
    let ca = start_ca(ServerOptions::default()).await;
    let roots = ca.client("node-a").await.roots().await.unwrap();
    assert_eq!(roots, vec![ca.root().cert_der()]);
}

#[tokio::test]
async fn node_renews_its_own_credential() {
    let ca = start_ca(ServerOptions::default()).await;
    let client = ca.client("node-b").await;
    let (csr, _) = generate_node_csr(TD, "node-b").unwrap();
    let chain = client.sign_node(&csr, Duration::from_secs(600)).await.unwrap();
    let bundle = TrustBundle::new(vec![ca.root().cert_der()]);
    let node = crate::identity::verify_node_credential(&chain, &bundle, TD, SystemTime::now()).unwrap();
    assert_eq!(node, "node-b");
    // A node the config no longer lists cannot renew.
    let gone = CONFIG.replace("  - { name: node-d, addresses: [10.0.0.4] }\n", "");
    assert_ne!(gone, CONFIG);
    let client = ca.client("node-d").await;
    *ca.mesh.write().unwrap() = MeshAuth::from_config(&Config::parse(&gone).unwrap()).unwrap();
    let err = client.sign_node(&csr, Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, CaClientError::PermissionDenied { .. }), "{err}");
}

/// A raw TLS 1.3 client trusting the CA's root, presenting `cred` (if any); returns what
/// the first read after the handshake gives, which is where a TLS 1.3 client learns that
/// the server refused its certificate.
async fn raw_tls(
    ca: &TestCa,
    cred: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> std::io::Error {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root().cert_der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let config = match cred {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(ca.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(ca.addr.ip().into());
    let mut tls = match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(tls) => tls,
        Err(e) => return e,
    };
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    match tls.read(&mut buf).await {
        Ok(n) => panic!("the ca accepted the connection and sent {n} bytes"),
        Err(e) => e,
    }
}

fn alert(e: &std::io::Error) -> Option<rustls::AlertDescription> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

#[tokio::test]
async fn client_without_credential_is_refused_by_tls() {
    let ca = start_ca(ServerOptions::default()).await;
    let err = raw_tls(&ca, None).await;
    assert_eq!(
        alert(&err),
        Some(rustls::AlertDescription::CertificateRequired),
        "{err}"
    );
}

#[tokio::test]
async fn credential_from_another_ca_is_refused() {
    let ca = start_ca(ServerOptions::default()).await;
    let other = start_ca(ServerOptions::default()).await;
    let foreign = other.node_cred("node-a");
    let err = raw_tls(&ca, Some((foreign.chain(), foreign.key()))).await;
    assert_eq!(alert(&err), Some(rustls::AlertDescription::UnknownCA), "{err}");

    // Through the client, trusting the right root for the server: the CA refuses us.
    let ours = ca.node_cred("node-a");
    let err = CaClient::connect_with(
        &ca.addr.to_string(),
        foreign.chain(),
        foreign.key(),
        &ours.bundle(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CaClientError::CredentialRefused { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("ca {} refused the node credential", ca.addr)) && msg.contains("issue-node"),
        "{msg}"
    );

    // connect() checks the files first and says which one is wrong.
    let err = CaClient::connect(&ca.addr.to_string(), &foreign.cert, &foreign.key, &ours.root)
        .await
        .unwrap_err();
    assert!(matches!(err, CaClientError::Credential { .. }), "{err}");
}

#[tokio::test]
async fn workload_svid_is_not_a_node_credential() {
    let ca = start_ca(ServerOptions::default()).await;
    let web = id("shop", "web");
    let (csr, key) = generate_csr(&web).unwrap();
    // Same CA, clientAuth usage: only the URI SAN makes it wrong.
    let leaf = ca.root().sign_csr(&csr, &web, Duration::from_secs(600)).unwrap();
    let err = raw_tls(&ca, Some((vec![leaf.clone()], key.clone_key()))).await;
    assert!(alert(&err).is_some(), "{err}");
    let bundle = TrustBundle::new(vec![ca.root().cert_der()]);
    let err = CaClient::connect_with(&ca.addr.to_string(), vec![leaf], key, &bundle)
        .await
        .unwrap_err();
    assert!(matches!(err, CaClientError::CredentialRefused { .. }), "{err}");
}

#[tokio::test]
async fn client_checks_the_ca_certificate() {
    let ca = start_ca(ServerOptions::default()).await;
    let other = start_ca(ServerOptions::default()).await;
    let cred = ca.node_cred("node-a");
    // The other mesh's CA does not chain to our root.
    let err = CaClient::connect_with(&other.addr.to_string(), cred.chain(), cred.key(), &cred.bundle())
        .await
        .unwrap_err();
    assert!(matches!(err, CaClientError::UntrustedServer { .. }), "{err}");

    // The serving certificate names the connected IP, not "localhost", unless told to.
    let by_name = format!("localhost:{}", ca.addr.port());
    let err = CaClient::connect_with(&by_name, cred.chain(), cred.key(), &cred.bundle())
        .await
        .unwrap_err();
    assert!(matches!(err, CaClientError::WrongServerName { .. }), "{err}");
    assert!(err.to_string().contains("--san localhost"), "{err}");
    let named = start_ca(ServerOptions {
        sans: vec!["localhost".into()],
        ..Default::default()
    })
    .await;
    let cred = named.node_cred("node-a");
    let by_name = format!("localhost:{}", named.addr.port());
    CaClient::connect(&by_name, &cred.cert, &cred.key, &cred.root)
        .await
        .unwrap();
}

#[tokio::test]
async fn unreachable_ca_is_named() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let ca = start_ca(ServerOptions::default()).await;
    let cred = ca.node_cred("node-a");
    let err = CaClient::connect(&addr.to_string(), &cred.cert, &cred.key, &cred.root)
        .await
        .unwrap_err();
    assert!(matches!(err, CaClientError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn serve_rejects_a_config_of_another_trust_domain() {
    let tmp = tempfile::tempdir().unwrap();
    CaRoot::init(tmp.path(), "other.local").unwrap();
    let mesh = Arc::new(RwLock::new(
        MeshAuth::from_config(&Config::parse(CONFIG).unwrap()).unwrap(),
    ));
    let err = CaServer::load(tmp.path(), mesh, ServerOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("other.local"), "{err}");
}
